use tch::{Kind, Tensor};

/// Crop windows in pixels, one per sample: `[N]` each of top, left, height, width.
#[derive(Debug)]
pub struct CropBoxes {
    pub top: Tensor,
    pub left: Tensor,
    pub height: Tensor,
    pub width: Tensor,
}

/// torchvision's `RandomResizedCrop.get_params`, for every sample at once: up to ten tries of a
/// random area fraction in `scale` and log-uniform aspect ratio in `ratio`; samples with no
/// fitting try fall back to the central crop of clamped aspect ratio.
pub fn random_resized_crop_boxes(
    n: i64,
    height: i64,
    width: i64,
    scale: (f64, f64),
    ratio: (f64, f64),
    device: tch::Device,
) -> CropBoxes {
    const TRIES: i64 = 10;
    let opts = (Kind::Float, device);
    let area = (height * width) as f64;
    let target_area = (Tensor::rand([n, TRIES], opts) * (scale.1 - scale.0) + scale.0) * area;
    let (log_lo, log_hi) = (ratio.0.ln(), ratio.1.ln());
    let aspect = (Tensor::rand([n, TRIES], opts) * (log_hi - log_lo) + log_lo).exp();
    let w = (&target_area * &aspect).sqrt().round();
    let h = (&target_area / &aspect).sqrt().round();
    let fits = w
        .gt(0.0)
        .logical_and(&w.le(width as f64))
        .logical_and(&h.gt(0.0))
        .logical_and(&h.le(height as f64));
    // The first fitting try of each sample (argmax of a bool picks the first true).
    let first = fits.to_kind(Kind::Int64).argmax(1, true);
    let any_fit = fits.any_dim(1, false);
    let w = w.gather(1, &first, false).squeeze_dim(1);
    let h = h.gather(1, &first, false).squeeze_dim(1);
    // Fallback: whole image, aspect clamped to `ratio`.
    let in_ratio = width as f64 / height as f64;
    let (fw, fh) = if in_ratio < ratio.0 {
        (width as f64, (width as f64 / ratio.0).round())
    } else if in_ratio > ratio.1 {
        ((height as f64 * ratio.1).round(), height as f64)
    } else {
        (width as f64, height as f64)
    };
    let w = w.where_self(&any_fit, &w.full_like(fw));
    let h = h.where_self(&any_fit, &h.full_like(fh));
    let top = (Tensor::rand([n], opts) * (-&h + (height + 1) as f64)).floor();
    let left = (Tensor::rand([n], opts) * (-&w + (width + 1) as f64)).floor();
    let top = top.where_self(&any_fit, &((-&h + height as f64) / 2.0).floor());
    let left = left.where_self(&any_fit, &((-&w + width as f64) / 2.0).floor());
    CropBoxes {
        top,
        left,
        height: h,
        width: w,
    }
}

/// Crops each sample's box and resizes it to `size` x `size` with bilinear interpolation
/// (`align_corners=False`), mirroring horizontally where `flip` is set. One `grid_sample`.
pub fn resized_crop(images: &Tensor, boxes: &CropBoxes, size: i64, flip: Option<&Tensor>) -> Tensor {
    let dims = images.size();
    let (n, h, w) = (dims[0], dims[2] as f64, dims[3] as f64);
    let device = images.device();
    // Output pixel centres as fractions of the box, [S].
    let u = (Tensor::arange(size, (Kind::Float, device)) + 0.5) / size as f64;
    let ux = match flip {
        Some(flip) => {
            let u = u.view([1, -1]).expand([n, size], false);
            (u.ones_like() - &u).where_self(&flip.view([-1, 1]), &u)
        }
        None => u.view([1, -1]).expand([n, size], false),
    };
    // Source pixel coordinates (pixel centres at integers) of the output pixel centres, clamped
    // to the box as `interpolate` clamps to the edge of the cropped image: an upsampled box's
    // edge rows/columns must not blend in pixels from outside the box.
    let source = |start: &Tensor, extent: &Tensor, u: &Tensor| {
        let (start, extent) = (start.view([-1, 1]), extent.view([-1, 1]));
        let last = &start + &extent - 1.0;
        (&start + u * &extent - 0.5).maximum(&start).minimum(&last)
    };
    // Normalized grid coordinates (align_corners=False): x_n = (2 * x_pixel + 1) / W - 1.
    let gx = (source(&boxes.left, &boxes.width, &ux) * (2.0 / w) + (1.0 / w - 1.0)).view([n, 1, size, 1]);
    let gy = (source(&boxes.top, &boxes.height, &u.view([1, -1])) * (2.0 / h) + (1.0 / h - 1.0)).view([n, size, 1, 1]);
    let grid = Tensor::cat(
        &[
            gx.expand([n, size, size, 1], false),
            gy.expand([n, size, size, 1], false),
        ],
        3,
    );
    // Bilinear; border padding only guards against rounding (the grid stays inside the image).
    images.grid_sampler(&grid.to_kind(images.kind()), 0, 1, false)
}

/// The evaluation transform, torchvision's `Resize(shorter_side)` then `CenterCrop(size)`: the
/// shorter side resized to `shorter_side` (the longer in proportion, truncated as torchvision
/// does; bilinear and antialiased, torchvision's defaults), then the central `size` square, its
/// offset rounded half to even as Python's `round` does. Float images; `shorter_side >= size`.
pub fn resize_center_crop(images: &Tensor, shorter_side: i64, size: i64) -> Tensor {
    assert!(
        shorter_side >= size,
        "resizing to {shorter_side} leaves no {size} px centre"
    );
    let dims = images.size();
    let (h, w) = (dims[2], dims[3]);
    let (nh, nw) = if h <= w {
        (shorter_side, shorter_side * w / h)
    } else {
        (shorter_side * h / w, shorter_side)
    };
    let resized = if (nh, nw) == (h, w) {
        images.shallow_clone()
    } else {
        images.internal_upsample_bilinear2d_aa([nh, nw], false, None, None)
    };
    resized
        .narrow(2, center_offset(nh, size), size)
        .narrow(3, center_offset(nw, size), size)
}

/// Where a centred `size` window starts in `side` pixels: `round((side - size) / 2)`, halves to
/// even (torchvision's `center_crop`).
fn center_offset(side: i64, size: i64) -> i64 {
    let excess = side - size;
    let half = excess / 2;
    if excess % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}
