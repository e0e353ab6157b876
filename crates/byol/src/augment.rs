//! The augmentation seam: `[augment] type = "..."` names an [`AugmentSpec`], whose `build` gives
//! the [`Augment`] that draws BYOL's two views on the training device.

use tch::Tensor;

use crate::{BuildContext, DataError};

/// `[augment] type = "..."`: the TOML side of an augmentation plugin.
#[typetag::serde(tag = "type")]
pub trait AugmentSpec: std::fmt::Debug + Send + Sync {
    fn build(&self, context: &BuildContext) -> Result<Box<dyn Augment>, DataError>;

    /// Side of the square views, in pixels.
    fn image_size(&self) -> i64;

    /// The shorter side the evaluation transform ([`Augment::eval_view`]) resizes images to
    /// before its central `image_size` crop, and so the size to decode evaluation images at
    /// (default: `image_size`, the whole image).
    fn eval_resize(&self) -> i64 {
        self.image_size()
    }

    /// The random resized crops the loader should cut from full images on its CPU threads, one
    /// per view; `None` (the default): the plugin crops on the device from the dataset's squares.
    fn loader_crops(&self) -> Option<LoaderCrops> {
        None
    }

    /// The normalization that ends the evaluation transform, recorded with an exported backbone
    /// so that its users feed it the same inputs; `None` (the default): not known (the plugin
    /// does not say, or does not normalize by a per-channel mean and std).
    fn normalization(&self) -> Option<Normalization> {
        None
    }

    /// This spec with every value it leaves to a preset or a default written out, so that two
    /// specs that draw the same views serialize alike: a run resumed with a value spelled out as
    /// its preset has it continues the same run. `None` (the default): the keys as written are
    /// all there is to compare; also `None` for a spec that does not build.
    fn spelled_out(&self) -> Option<Box<dyn AugmentSpec>> {
        None
    }
}

/// Per-channel normalization of pixels scaled to [0, 1]: `(x - mean) / std` (torchvision's
/// `Normalize`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

/// The random-resized-crop distribution of one view.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropRange {
    /// Area fraction of the image, uniform in this range.
    pub scale: (f64, f64),
    /// Aspect ratio (width / height), log-uniform in this range.
    pub ratio: (f64, f64),
}

/// What the loader cuts from every image: one crop per view, resized to `size` x `size`. Batches
/// then hold six channels per image: view 1's RGB, then view 2's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoaderCrops {
    pub views: [CropRange; 2],
    pub size: u32,
}

impl LoaderCrops {
    /// Bytes per image in a batch: both views' CHW pixels.
    pub fn sample_bytes(&self) -> usize {
        2 * 3 * (self.size * self.size) as usize
    }
}

/// Turns a batch of images into BYOL's two views, on the images' device.
pub trait Augment: std::fmt::Debug + Send {
    /// `images`: uint8 `[N, 3, H, W]`. Returns two normalized float views `[N, 3, S, S]`, every
    /// random decision drawn per sample.
    fn two_views(&self, images: &Tensor) -> (Tensor, Tensor);

    /// The two views from crops already cut by the loader (uint8 `[N, 3, S, S]` each, see
    /// [`AugmentSpec::loader_crops`]): every step of [`Augment::two_views`] but the crop. `None`:
    /// the plugin crops on the device only.
    fn two_views_from_crops(&self, view1_crops: &Tensor, view2_crops: &Tensor) -> Option<(Tensor, Tensor)> {
        let _ = (view1_crops, view2_crops);
        None
    }

    /// The deterministic evaluation transform (resize, centre crop, normalize) to `[N, 3, S, S]`.
    fn eval_view(&self, images: &Tensor) -> Tensor;

    /// A picture of what the views do, for TensorBoard: uint8 `[3, H, W]` on the CPU, e.g. a grid
    /// whose rows are (original, view 1, view 2) of the first images of `images` (uint8
    /// `[N, 3, H, W]`). Draws from libtorch's generator. `None`: the plugin offers no picture.
    fn preview(&self, images: &Tensor) -> Option<Tensor> {
        let _ = images;
        None
    }

    /// [`Augment::preview`] of a run whose loader cuts the crops: `crops` (uint8 `[N, 6, S, S]`,
    /// view 1 RGB then view 2 RGB) were cut from the full images that `images` shows. `None`: the
    /// runner falls back to [`Augment::preview`].
    fn preview_of_crops(&self, images: &Tensor, crops: &Tensor) -> Option<Tensor> {
        let _ = (images, crops);
        None
    }
}
