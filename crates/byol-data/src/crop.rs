//! Random resized crops on the loader's CPU threads, cut from the full decoded image before any
//! resizing (as torchvision's `RandomResizedCrop` on a PIL image), one per view. Used for image
//! folders of full-size photos, where cropping a pre-shrunk square would lose the image's edges
//! and the resolution of small crops. Each sample's boxes derive from (seed, epoch, index), so a
//! batch is the same whatever the worker count, and a resumed run cuts the same crops.

use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions};

use crate::decode::{resize_rgb_into, Rgb};
use crate::rng::SplitMix64;
use crate::{CropRange, LoaderCrops};

/// A crop box in pixels: left, top, width, height.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    pub left: u32,
    pub top: u32,
    pub width: u32,
    pub height: u32,
}

/// A box of `range` in a `width` x `height` image, as torchvision's
/// `RandomResizedCrop.get_params`: up to ten tries of an area fraction and a log-uniform aspect
/// ratio; when none fits, the central crop with the aspect ratio clamped.
pub fn sample_box(range: &CropRange, width: u32, height: u32, rng: &mut SplitMix64) -> CropBox {
    let (w_img, h_img) = (width as f64, height as f64);
    let area = w_img * h_img;
    let (log_lo, log_hi) = (range.ratio.0.ln(), range.ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.range(range.scale.0 as f32, range.scale.1 as f32) as f64;
        let aspect = (rng.range(log_lo as f32, log_hi as f32) as f64).exp();
        let w = (target * aspect).sqrt().round();
        let h = (target / aspect).sqrt().round();
        if w > 0.0 && w <= w_img && h > 0.0 && h <= h_img {
            let (w, h) = (w as u32, h as u32);
            return CropBox {
                left: rng.below((width - w + 1) as usize) as u32,
                top: rng.below((height - h + 1) as usize) as u32,
                width: w,
                height: h,
            };
        }
    }
    let in_ratio = w_img / h_img;
    let (w, h) = if in_ratio < range.ratio.0 {
        (w_img, (w_img / range.ratio.0).round())
    } else if in_ratio > range.ratio.1 {
        ((h_img * range.ratio.1).round(), h_img)
    } else {
        (w_img, h_img)
    };
    let (w, h) = (w.max(1.0) as u32, h.max(1.0) as u32);
    CropBox {
        left: (width - w) / 2,
        top: (height - h) / 2,
        width: w,
        height: h,
    }
}

/// Keeps the crop draws apart from any other stream keyed by (seed, epoch, index): "crop".
const CROP_STREAM: u64 = 0x6372_6f70;

/// Resizes `crop` of `image` to `size` x `size` with an antialiased bicubic filter (the paper's
/// bicubic; PIL's `BICUBIC`), writing planar CHW bytes into `out`.
pub fn crop_resize_into(image: &Rgb, crop: CropBox, size: u32, out: &mut [u8]) -> Result<(), String> {
    assert_eq!(
        out.len(),
        3 * (size * size) as usize,
        "output buffer of a {size}x{size} RGB image"
    );
    // Cut first, then resize (as torchvision does on PIL images): the filter never reads pixels
    // outside the box, which a resize with a crop window would.
    let row = 3 * image.width as usize;
    let mut cut = Rgb {
        width: crop.width,
        height: crop.height,
        pixels: Vec::with_capacity(3 * (crop.width * crop.height) as usize),
    };
    for y in crop.top..crop.top + crop.height {
        let start = y as usize * row + 3 * crop.left as usize;
        cut.pixels
            .extend_from_slice(&image.pixels[start..start + 3 * crop.width as usize]);
    }
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom));
    resize_rgb_into(&cut, size, &options, out)
}

/// Cuts both views' crops of `image` into `out` (view 1's CHW bytes, then view 2's), with boxes
/// drawn from (seed, epoch, index).
pub fn cut_views(
    crops: &LoaderCrops,
    image: &Rgb,
    seed: u64,
    epoch: u64,
    index: usize,
    out: &mut [u8],
) -> Result<(), String> {
    let mut rng = SplitMix64::keyed(&[seed, epoch, index as u64, CROP_STREAM]);
    let plane = out.len() / 2;
    for (range, out) in crops.views.iter().zip(out.chunks_mut(plane)) {
        let crop = sample_box(range, image.width, image.height, &mut rng);
        crop_resize_into(image, crop, crops.size, out)?;
    }
    Ok(())
}
