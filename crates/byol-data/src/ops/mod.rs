//! Batched image ops on float `[N, 3, H, W]` images in [0, 1], with one parameter per sample.
//! Each mirrors `torchvision.transforms.v2.functional` (tested against it), so that a view drawn
//! here is a view torchvision could have drawn.

mod blur;
mod colour;
mod geometry;

pub use blur::{gaussian_blur, gaussian_kernels};
pub use colour::{
    adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation, color_jitter, grayscale, normalize, solarize,
    JitterStrength,
};
pub use geometry::{random_resized_crop_boxes, resize_center, resized_crop, CropBoxes};

use tch::{Device, Kind, Tensor};

/// Per-sample choice: `if_true` where `mask[n]`, else `if_false`.
pub fn select(mask: &Tensor, if_true: &Tensor, if_false: &Tensor) -> Tensor {
    if_true.where_self(&mask.view([-1, 1, 1, 1]), if_false)
}

/// `n` independent coin flips with probability `p`, as a bool tensor on `device`.
pub fn bernoulli(n: i64, p: f64, device: Device) -> Tensor {
    Tensor::rand([n], (Kind::Float, device)).lt(p)
}

/// `n` draws of U[lo, hi) on `device`.
pub fn uniform(n: i64, lo: f64, hi: f64, device: Device) -> Tensor {
    Tensor::rand([n], (Kind::Float, device)) * (hi - lo) + lo
}
