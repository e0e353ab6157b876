//! `[augment] type = "..."`: the spec side of an augmentation plugin.

use crate::DataError;

#[typetag::serde(tag = "type")]
pub trait AugmentSpec: std::fmt::Debug + Send + Sync {
    fn build(&self) -> Result<Box<dyn byol::Augment>, DataError>;

    /// Side of the square views, in pixels.
    fn image_size(&self) -> i64;

    /// The random resized crops the loader should cut from full images on its CPU threads, one
    /// per view; `None` (the default): the plugin crops on the device from the dataset's squares.
    fn loader_crops(&self) -> Option<crate::LoaderCrops> {
        None
    }
}
