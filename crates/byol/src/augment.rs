//! The runtime side of an augmentation plugin, as seen by the model.

use tch::Tensor;

/// Turns a batch of images into BYOL's two views, on the images' device.
pub trait Augment: std::fmt::Debug + Send {
    /// `images`: uint8 `[N, 3, H, W]`. Returns two normalized float views `[N, 3, S, S]`, every
    /// random decision drawn per sample.
    fn two_views(&self, images: &Tensor) -> (Tensor, Tensor);

    /// The deterministic evaluation transform (resize/center-crop, normalize) to `[N, 3, S, S]`.
    fn eval_view(&self, images: &Tensor) -> Tensor;
}
