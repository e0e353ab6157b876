//! The runtime side of an augmentation plugin, as seen by the model.

use tch::Tensor;

/// Turns a batch of images into BYOL's two views, on the images' device.
pub trait Augment: std::fmt::Debug + Send {
    /// `images`: uint8 `[N, 3, H, W]`. Returns two normalized float views `[N, 3, S, S]`, every
    /// random decision drawn per sample.
    fn two_views(&self, images: &Tensor) -> (Tensor, Tensor);

    /// The two views from crops already cut by the loader (uint8 `[N, 3, S, S]` each, see
    /// `AugmentSpec::loader_crops`): every step of [`Augment::two_views`] but the crop. `None`:
    /// the plugin crops on the device only.
    fn two_views_from_crops(&self, view1_crops: &Tensor, view2_crops: &Tensor) -> Option<(Tensor, Tensor)> {
        let _ = (view1_crops, view2_crops);
        None
    }

    /// The deterministic evaluation transform (resize/center-crop, normalize) to `[N, 3, S, S]`.
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
