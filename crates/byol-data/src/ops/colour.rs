use tch::{Kind, Tensor};

use super::{apply_where, Rows};
use crate::transfer::constant;

fn per_sample(factor: &Tensor) -> Tensor {
    factor.view([-1, 1, 1, 1])
}

/// torchvision's `_blend`: `factor * a + (1 - factor) * b`, clamped to [0, 1].
fn blend(a: &Tensor, b: &Tensor, factor: &Tensor) -> Tensor {
    let f = per_sample(factor);
    (a * &f + b * (f.ones_like() - &f)).clamp(0.0, 1.0)
}

/// ITU-R 601 luma with torchvision's weights, `[N, 1, H, W]`.
fn luma(images: &Tensor) -> Tensor {
    let weights = constant(&[0.2989f32, 0.587, 0.114], images.kind(), images.device());
    (images * weights.view([1, 3, 1, 1])).sum_dim_intlist([1i64].as_slice(), true, None)
}

/// Grayscale with three identical channels.
pub fn grayscale(images: &Tensor) -> Tensor {
    luma(images).expand_as(images)
}

pub fn adjust_brightness(images: &Tensor, factor: &Tensor) -> Tensor {
    blend(images, &images.zeros_like(), factor)
}

pub fn adjust_contrast(images: &Tensor, factor: &Tensor) -> Tensor {
    let mean = luma(images).mean_dim([1i64, 2, 3].as_slice(), true, None);
    blend(images, &mean, factor)
}

pub fn adjust_saturation(images: &Tensor, factor: &Tensor) -> Tensor {
    blend(images, &luma(images), factor)
}

/// Rotates hue by `factor` (in turns, [-0.5, 0.5]) through HSV, as torchvision does.
pub fn adjust_hue(images: &Tensor, factor: &Tensor) -> Tensor {
    let (h, s, v) = rgb_to_hsv(images);
    let h = (h + per_sample(factor).squeeze_dim(1)).remainder(1.0);
    hsv_to_rgb(&h, &s, &v)
}

fn rgb_to_hsv(images: &Tensor) -> (Tensor, Tensor, Tensor) {
    let rgb = images.unbind(1);
    let (r, g, b) = (&rgb[0], &rgb[1], &rgb[2]);
    let maxc = images.amax([1i64].as_slice(), false);
    let minc = images.amin([1i64].as_slice(), false);
    let equal = maxc.eq_tensor(&minc);
    let chroma = &maxc - &minc;
    let ones = maxc.ones_like();
    let s = &chroma / maxc.where_self(&equal.logical_not(), &ones);
    let divisor = chroma.where_self(&equal.logical_not(), &ones);
    let rc = (&maxc - r) / &divisor;
    let gc = (&maxc - g) / &divisor;
    let bc = (&maxc - b) / &divisor;
    let is_r = maxc.eq_tensor(r);
    let is_g = maxc.eq_tensor(g).logical_and(&is_r.logical_not());
    let is_b = maxc.eq_tensor(g).logical_not().logical_and(&is_r.logical_not());
    let hr = is_r.to_kind(images.kind()) * (&bc - &gc);
    let hg = is_g.to_kind(images.kind()) * (&rc - &bc + 2.0);
    let hb = is_b.to_kind(images.kind()) * (&gc - &rc + 4.0);
    let h = ((hr + hg + hb) / 6.0 + 1.0).remainder(1.0);
    (h, s, maxc)
}

fn hsv_to_rgb(h: &Tensor, s: &Tensor, v: &Tensor) -> Tensor {
    let h6 = h * 6.0;
    let i = h6.floor();
    let f = &h6 - &i;
    let i = i.to_kind(Kind::Int64).remainder(6);
    let p = (v * (s.ones_like() - s)).clamp(0.0, 1.0);
    let q = (v * (s.ones_like() - s * &f)).clamp(0.0, 1.0);
    let t = (v * (s.ones_like() - s * (f.ones_like() - &f))).clamp(0.0, 1.0);
    // Sextant i takes (r, g, b) = (v, q, p, p, t, v)[i], (t, v, v, q, p, p)[i],
    // (p, p, t, v, v, q)[i]: one gather from the planes [v, q, p, t] (torchvision sums
    // one-hot masks over six stacked planes per channel; picking is exact and cheaper).
    const PLANE_OF_SEXTANT: [i64; 18] = [0, 1, 2, 2, 3, 0, 3, 0, 0, 1, 2, 2, 2, 2, 3, 0, 0, 1];
    let device = h.device();
    let table = constant(&PLANE_OF_SEXTANT, Kind::Int64, device);
    let channel_offset = constant(&[0i64, 6, 12], Kind::Int64, device).view([1, 3, 1, 1]);
    let plane = table.take(&(i.unsqueeze(1) + channel_offset));
    Tensor::stack(&[v, &q, &p, &t], 1).gather(1, &plane, false)
}

/// Solarize: pixels at or above `threshold` are inverted.
pub fn solarize(images: &Tensor, threshold: f64) -> Tensor {
    images
        .ones_like()
        .g_sub(images)
        .where_self(&images.ge(threshold), images)
}

/// `(x - mean) / std` per channel.
pub fn normalize(images: &Tensor, mean: [f64; 3], std: [f64; 3]) -> Tensor {
    let device = images.device();
    let m = constant(&mean.map(|x| x as f32), Kind::Float, device).view([1, 3, 1, 1]);
    let s = constant(&std.map(|x| x as f32), Kind::Float, device).view([1, 3, 1, 1]);
    (images - m) / s
}

/// Colour-jitter strengths: factors are drawn from [1 - x, 1 + x] (hue: [-x, x]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JitterStrength {
    pub brightness: f64,
    pub contrast: f64,
    pub saturation: f64,
    pub hue: f64,
}

/// The random draws of [`color_jitter`] for a batch: the four factors of every sample (hue in
/// turns) and the order in which it applies the four adjustments (a permutation per sample).
#[derive(Debug)]
pub struct JitterDraw {
    pub brightness: Tensor,
    pub contrast: Tensor,
    pub saturation: Tensor,
    pub hue: Tensor,
    /// `[N, 4]`: `order[n, k]` is the adjustment sample n applies k-th (0 brightness,
    /// 1 contrast, 2 saturation, 3 hue).
    pub order: Tensor,
}

impl JitterDraw {
    pub fn new(n: i64, strength: JitterStrength, device: tch::Device) -> Self {
        let factor = |x: f64| super::uniform(n, (1.0 - x).max(0.0), 1.0 + x, device);
        Self {
            brightness: factor(strength.brightness),
            contrast: factor(strength.contrast),
            saturation: factor(strength.saturation),
            hue: super::uniform(n, -strength.hue, strength.hue, device),
            order: Tensor::rand([n, 4], (Kind::Float, device)).argsort(1, false),
        }
    }

    /// The draws of these rows.
    pub fn rows(&self, rows: &Rows) -> Self {
        Self {
            brightness: rows.of(&self.brightness),
            contrast: rows.of(&self.contrast),
            saturation: rows.of(&self.saturation),
            hue: rows.of(&self.hue),
            order: rows.of(&self.order),
        }
    }
}

/// torchvision's ColorJitter with every draw per sample: the four factors, and the order in
/// which the four adjustments are applied (a random permutation per image).
pub fn color_jitter(images: &Tensor, strength: JitterStrength) -> Tensor {
    apply_jitter(images, &JitterDraw::new(images.size()[0], strength, images.device()))
}

/// Colour jitter with given draws: at each of the four positions, every sample gets the
/// adjustment its order names there.
pub fn apply_jitter(images: &Tensor, draw: &JitterDraw) -> Tensor {
    let mut out = images.shallow_clone();
    for position in 0..4 {
        let op_at = draw.order.select(1, position);
        for op in 0..4i64 {
            out = apply_where(&op_at.eq(op), &out, |x, rows| match op {
                0 => adjust_brightness(x, &rows.of(&draw.brightness)),
                1 => adjust_contrast(x, &rows.of(&draw.contrast)),
                2 => adjust_saturation(x, &rows.of(&draw.saturation)),
                _ => adjust_hue(x, &rows.of(&draw.hue)),
            });
        }
    }
    out
}
