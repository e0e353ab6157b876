//! `[augment] type = "..."`: the spec side of an augmentation plugin.

use crate::DataError;

#[typetag::serde(tag = "type")]
pub trait AugmentSpec: std::fmt::Debug + Send + Sync {
    fn build(&self) -> Result<Box<dyn byol::Augment>, DataError>;

    /// Side of the square views, in pixels.
    fn image_size(&self) -> i64;
}
