//! Batched image ops on float `[N, 3, H, W]` images in [0, 1], with one parameter per sample.
//! Each mirrors `torchvision.transforms.v2.functional` (tested against it), so that a view drawn
//! here is a view torchvision could have drawn.

mod blur;
mod colour;
mod geometry;

pub use blur::{gaussian_blur, gaussian_kernels};
pub use colour::{
    adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation, apply_jitter, color_jitter, grayscale,
    normalize, solarize, JitterDraw, JitterStrength,
};
pub use geometry::{random_resized_crop_boxes, resize_center_crop, resized_crop, CropBoxes};

use tch::{Device, Kind, Tensor};

/// Per-sample choice: `if_true` where `mask[n]`, else `if_false`.
pub fn select(mask: &Tensor, if_true: &Tensor, if_false: &Tensor) -> Tensor {
    if_true.where_self(&mask.view([-1, 1, 1, 1]), if_false)
}

/// Per-sample `op` where `mask[n]`, the input elsewhere: `apply_where(mask, x, op)` equals
/// `select(mask, op(x, Rows::all()), x)`. `op` gets the rows to transform and a [`Rows`] that
/// picks the matching rows of per-sample parameters.
///
/// On the CPU only the chosen rows are computed (gathered, transformed, copied back): a view
/// pipeline applies each op to a fraction of the batch, and colour jitter tries four ops at
/// each of four positions, so this is most of the CPU's augmentation work. On accelerators the
/// whole batch is transformed and selected instead: gathering would need the number of chosen
/// rows on the host, a device sync per op.
pub fn apply_where(mask: &Tensor, x: &Tensor, op: impl FnOnce(&Tensor, &Rows) -> Tensor) -> Tensor {
    if x.device() != Device::Cpu {
        return select(mask, &op(x, &Rows::all()), x);
    }
    let index = mask.nonzero().squeeze_dim(1);
    match index.size()[0] {
        0 => x.shallow_clone(),
        chosen if chosen == x.size()[0] => op(x, &Rows::all()),
        _ => {
            let out = op(&x.index_select(0, &index), &Rows(Some(index.shallow_clone())));
            x.index_copy(0, &index, &out)
        }
    }
}

/// The rows of a batch that [`apply_where`] transforms.
#[derive(Debug)]
pub struct Rows(Option<Tensor>);

impl Rows {
    /// Every row.
    pub fn all() -> Self {
        Rows(None)
    }

    /// These rows of a per-sample tensor (images or parameters).
    pub fn of(&self, per_sample: &Tensor) -> Tensor {
        match &self.0 {
            Some(index) => per_sample.index_select(0, index),
            None => per_sample.shallow_clone(),
        }
    }
}

/// `n` independent coin flips with probability `p`, as a bool tensor on `device`.
pub fn bernoulli(n: i64, p: f64, device: Device) -> Tensor {
    Tensor::rand([n], (Kind::Float, device)).lt(p)
}

/// `n` draws of U[lo, hi) on `device`.
pub fn uniform(n: i64, lo: f64, hi: f64, device: Device) -> Tensor {
    Tensor::rand([n], (Kind::Float, device)) * (hi - lo) + lo
}
