//! Parity of the batched augmentation ops (`byol_data::ops`) with the venv's
//! `torchvision.transforms.v2.functional`, applied image by image with that image's parameter,
//! on fresh random uint8 images scaled to [0, 1] (`u8 / 255`); plus statistical tests of the
//! random draws (no Python needed for those).
//!
//! Tolerances, on the [0, 1] scale, fp32 on the CPU (both sides compute the same formulas, so
//! the differences are float rounding only; measured max abs in parentheses):
//! - brightness, contrast, saturation, grayscale, solarize, normalize: max abs <= 1e-5
//!   (measured 0 .. 1.5e-7); the flip mask mirrors the output exactly (0).
//! - hue (through HSV and back): max abs <= 1e-5 (1.3e-6; 9.5e-7 on images full of ties).
//! - gaussian blur, k = 3, 5, 23: max abs <= 1e-5 (1.1e-6); the 1-D kernels <= 1e-6 (1.2e-7).
//! - resized crop (bilinear, `antialias=False`), up- and downsampling, with and without flip:
//!   max abs <= 1e-5 (1.8e-6). Before `resized_crop` clamped its sampling grid to the box, the
//!   edge rows/columns of upsampled boxes blended in pixels from outside the box (max abs 0.445,
//!   mean abs 0.0136 on these boxes); torchvision interpolates the cropped image alone.
//! - resize_center_crop vs resize(antialias=True) + center_crop, down- and upsampling: <= 1e-5.
//! - Every op: mean abs <= 1e-6 (measured <= 1.3e-7), far below one uint8 level (1/255, the
//!   resolution of the images these ops see in training).
//!
//! torchvision's v2 `resized_crop` defaults to `antialias=True`: for crops that are *larger*
//! than the output (downsampling) it low-passes first, which our single `grid_sample` does not;
//! that difference is printed by `resized_crop_matches_torchvision`, not asserted.

use std::sync::{Mutex, MutexGuard};

use byol_data::ops::{self, CropBoxes, JitterStrength};
use byol_testkit::{max_abs_diff, run_python};
use tch::{Device, Kind, Tensor};

const CPU: Device = Device::Cpu;
/// Max abs tolerance of the ops that are exact up to fp32 rounding.
const EXACT: f64 = 1e-5;
/// Mean abs tolerance of every op.
const MEAN: f64 = 1e-6;

/// libtorch's CPU generator is global; tests that seed it and draw from it hold this lock, so
/// that tests running in parallel threads don't interleave their draws.
static RNG: Mutex<()> = Mutex::new(());

fn seeded(seed: i64) -> MutexGuard<'static, ()> {
    let guard = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    guard
}

/// `n` random uint8 images `[n, 3, h, w]` as float `u8 / 255`.
fn random_images(seed: i64, n: i64, h: i64, w: i64) -> Tensor {
    let _rng = seeded(seed);
    Tensor::randint(256, [n, 3, h, w], (Kind::Uint8, CPU)).to_kind(Kind::Float) / 255.0
}

fn floats(values: &[f32]) -> Tensor {
    Tensor::from_slice(values)
}

fn mean_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .mean(Kind::Double)
        .double_value(&[])
}

/// Asserts `max abs <= max_tol` and `mean abs <= MEAN`, printing both (`--nocapture`).
fn check(name: &str, ours: &Tensor, theirs: &Tensor, max_tol: f64) {
    assert_eq!(ours.size(), theirs.size(), "{name}: shapes differ");
    let max = max_abs_diff(ours, theirs);
    let mean = mean_abs_diff(ours, theirs);
    println!("{name}: max abs {max:.3e}, mean abs {mean:.3e}");
    assert!(max <= max_tol, "{name}: max abs diff {max:e} > {max_tol:e}");
    assert!(mean <= MEAN, "{name}: mean abs diff {mean:e} > {MEAN:e}");
}

const TV: &str = "
import torchvision.transforms.v2.functional as F
from torchvision.transforms import InterpolationMode
x = inputs['x']
";

/// torchvision's `fn(image, factor)` image by image, `inputs['f']` holding the factors.
fn per_image(function: &str, x: &Tensor, factors: &Tensor) -> Tensor {
    let script = format!(
        "{TV}f = inputs['f'].tolist()
outputs['y'] = torch.stack([F.{function}(x[i], f[i]) for i in range(len(f))])
"
    );
    run_python(&script, &[("x", x), ("f", factors)]).remove("y").expect("y")
}

#[test]
fn colour_adjustments_match_torchvision() {
    let x = random_images(1, 8, 32, 32);
    // Zero, darkening, identity and brightening factors (clamped above 1).
    let factors = floats(&[0.0, 0.3, 0.6, 0.93, 1.0, 1.2, 1.4, 2.5]);
    let hues = floats(&[-0.5, -0.31, -0.1, 0.0, 0.03, 0.1, 0.27, 0.5]);
    let script = format!(
        "{TV}f = inputs['f'].tolist()
hue = inputs['hue'].tolist()
n = len(f)
outputs['brightness'] = torch.stack([F.adjust_brightness(x[i], f[i]) for i in range(n)])
outputs['contrast'] = torch.stack([F.adjust_contrast(x[i], f[i]) for i in range(n)])
outputs['saturation'] = torch.stack([F.adjust_saturation(x[i], f[i]) for i in range(n)])
outputs['hue'] = torch.stack([F.adjust_hue(x[i], hue[i]) for i in range(n)])
outputs['grayscale'] = F.rgb_to_grayscale(x, num_output_channels=3)
outputs['solarize'] = F.solarize(x, 0.5)
"
    );
    let tv = run_python(&script, &[("x", &x), ("f", &factors), ("hue", &hues)]);
    check(
        "adjust_brightness",
        &ops::adjust_brightness(&x, &factors),
        &tv["brightness"],
        EXACT,
    );
    check(
        "adjust_contrast",
        &ops::adjust_contrast(&x, &factors),
        &tv["contrast"],
        EXACT,
    );
    check(
        "adjust_saturation",
        &ops::adjust_saturation(&x, &factors),
        &tv["saturation"],
        EXACT,
    );
    check("adjust_hue", &ops::adjust_hue(&x, &hues), &tv["hue"], EXACT);
    check("grayscale", &ops::grayscale(&x), &tv["grayscale"], EXACT);
    check("solarize", &ops::solarize(&x, 0.5), &tv["solarize"], EXACT);
}

/// Hue on images with many exact ties (grey pixels, two equal maximal channels, saturated
/// primaries), where the sextant logic of RGB -> HSV matters most.
#[test]
fn adjust_hue_matches_torchvision_on_ties() {
    let levels = [0u8, 1, 64, 127, 128, 200, 254, 255];
    let n = 8i64;
    // Every pixel's three channels drawn from 8 levels: about 1 in 8 pixels has a tie.
    let idx = {
        let _rng = seeded(2);
        Tensor::randint(levels.len() as i64, [n, 3, 16, 16], (Kind::Int64, CPU))
    };
    let x = Tensor::from_slice(&levels.map(|v| v as f32 / 255.0)).index_select(0, &idx.view([-1]));
    let x = x.view([n, 3, 16, 16]);
    let hues = floats(&[-0.5, -0.25, -1.0 / 6.0, -0.01, 0.0, 1.0 / 3.0, 0.45, 0.5]);
    let tv = per_image("adjust_hue", &x, &hues);
    check("adjust_hue (ties)", &ops::adjust_hue(&x, &hues), &tv, EXACT);
}

#[test]
fn gaussian_blur_matches_torchvision() {
    let x = random_images(3, 8, 32, 32);
    let sigma = floats(&[0.1, 0.3, 0.5, 0.8, 1.0, 1.37, 2.0, 3.5]);
    for k in [3i64, 5, 23] {
        let script = format!(
            "{TV}from torchvision.transforms.v2.functional._misc import _get_gaussian_kernel1d
s = inputs['sigma'].tolist()
k = {k}
outputs['y'] = torch.stack([F.gaussian_blur(x[i], [k, k], [s[i], s[i]]) for i in range(len(s))])
outputs['kernels'] = torch.stack([_get_gaussian_kernel1d(k, s[i], torch.float32, 'cpu') for i in range(len(s))])
"
        );
        let tv = run_python(&script, &[("x", &x), ("sigma", &sigma)]);
        check(
            &format!("gaussian_kernels k={k}"),
            &ops::gaussian_kernels(&sigma, k),
            &tv["kernels"],
            1e-6,
        );
        check(
            &format!("gaussian_blur k={k}"),
            &ops::gaussian_blur(&x, k, &sigma),
            &tv["y"],
            EXACT,
        );
    }
}

#[test]
fn normalize_matches_torchvision() {
    let x = random_images(4, 8, 32, 32);
    let (mean, std) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
    let script = format!(
        "{TV}outputs['y'] = F.normalize(x, {mean:?}, {std:?})
"
    );
    let tv = run_python(&script, &[("x", &x)]);
    // Outputs are about 4x the [0, 1] scale, so the same relative rounding.
    check("normalize", &ops::normalize(&x, mean, std), &tv["y"], EXACT);
}

/// Boxes `(top, left, height, width)` on a 40 x 48 image, resized to 32 x 32: upsampling
/// (small boxes, at every edge and corner, a single pixel), downsampling (whole image) and
/// mixed (narrow in one direction, wide in the other).
const BOXES: [(f32, f32, f32, f32); 10] = [
    (0.0, 0.0, 40.0, 48.0),
    (1.0, 1.0, 38.0, 46.0),
    (0.0, 0.0, 10.0, 12.0),
    (30.0, 36.0, 10.0, 12.0),
    (5.0, 7.0, 20.0, 9.0),
    (13.0, 2.0, 7.0, 40.0),
    (20.0, 40.0, 20.0, 8.0),
    (39.0, 47.0, 1.0, 1.0),
    (11.0, 17.0, 3.0, 5.0),
    (8.0, 9.0, 31.0, 31.0),
];

fn boxes(list: &[(f32, f32, f32, f32)]) -> CropBoxes {
    let col = |f: fn(&(f32, f32, f32, f32)) -> f32| Tensor::from_slice(&list.iter().map(f).collect::<Vec<_>>());
    CropBoxes {
        top: col(|b| b.0),
        left: col(|b| b.1),
        height: col(|b| b.2),
        width: col(|b| b.3),
    }
}

#[test]
fn resized_crop_matches_torchvision() {
    const S: i64 = 32;
    let n = BOXES.len() as i64;
    let x = random_images(5, n, 40, 48);
    let b = boxes(&BOXES);
    let flip = Tensor::from_slice(&[true, false, true, true, false, false, true, false, true, true]);
    let script = format!(
        "{TV}b = inputs['boxes'].long().tolist()
flip = inputs['flip'].tolist()
def crop(aa):
    return torch.stack([F.resized_crop(x[i], t, l, h, w, [{S}, {S}],
        interpolation=InterpolationMode.BILINEAR, antialias=aa) for i, (t, l, h, w) in enumerate(b)])
y = crop(False)
outputs['y'] = y
outputs['y_flip'] = torch.stack([F.horizontal_flip(y[i]) if flip[i] else y[i] for i in range(len(b))])
outputs['y_antialias'] = crop(True)
"
    );
    let box_tensor = Tensor::stack(&[&b.top, &b.left, &b.height, &b.width], 1);
    let tv = run_python(
        &script,
        &[("x", &x), ("boxes", &box_tensor), ("flip", &flip.to_kind(Kind::Float))],
    );
    let ours = ops::resized_crop(&x, &b, S, None);
    check("resized_crop", &ours, &tv["y"], EXACT);
    let ours_flip = ops::resized_crop(&x, &b, S, Some(&flip));
    check("resized_crop + flip", &ours_flip, &tv["y_flip"], EXACT);
    // The flip mask mirrors the output exactly: flipped samples are `ours` reversed along W.
    let mirrored = ops::select(&flip, &ours.flip([3]), &ours);
    check("flip mask == mirrored output", &ours_flip, &mirrored, 0.0);
    // Informational: torchvision's default antialias=True low-passes the downsampled boxes.
    for (i, bx) in BOXES.iter().enumerate() {
        let i = i as i64;
        let d = max_abs_diff(&ours.get(i), &tv["y_antialias"].get(i));
        println!("box {bx:?}: max abs vs antialias=True {d:.3e}");
    }
}

/// The evaluation transform: torchvision's `Resize(shorter_side)` (bilinear, antialiased, the
/// longer side truncated) then `CenterCrop(size)` (offsets rounded half to even), down- and
/// upsampling, square and not, even and odd margins, and no resize at all.
#[test]
fn resize_center_crop_matches_torchvision() {
    let seed = byol_testkit::fresh_seed("RESIZE_CROP_SEED");
    for (i, (h, w, shorter_side, size)) in [
        (256, 256, 256, 224),
        (300, 260, 256, 224),
        (24, 20, 37, 32),
        (40, 33, 39, 32),
        (33, 40, 39, 32),
        (32, 32, 32, 32),
    ]
    .into_iter()
    .enumerate()
    {
        let x = random_images(seed.wrapping_add(i as i64), 3, h, w);
        let script = format!(
            "{TV}y = F.resize(x, {shorter_side}, interpolation=InterpolationMode.BILINEAR, antialias=True)
outputs['y'] = F.center_crop(y, [{size}, {size}])
"
        );
        let tv = run_python(&script, &[("x", &x)]);
        let name = format!("resize_center_crop {h}x{w} -> {shorter_side} -> {size} (RESIZE_CROP_SEED={seed})");
        check(&name, &ops::resize_center_crop(&x, shorter_side, size), &tv["y"], EXACT);
    }
}

// ---- Statistical tests: no Python. ----

/// Checks boxes against `scale` and `ratio`, allowing for the rounding of width and height to
/// whole pixels (torchvision rounds `sqrt(area * aspect)` and `sqrt(area / aspect)`).
fn check_boxes(n: i64, h: i64, w: i64, scale: (f64, f64), ratio: (f64, f64), seed: i64) {
    let b = {
        let _rng = seeded(seed);
        ops::random_resized_crop_boxes(n, h, w, scale, ratio, CPU)
    };
    let vec = |t: &Tensor| Vec::<f32>::try_from(t).unwrap();
    let (top, left, bh, bw) = (vec(&b.top), vec(&b.left), vec(&b.height), vec(&b.width));
    let area = (h * w) as f64;
    let (mut fallbacks, mut area_sum) = (0usize, 0.0);
    for i in 0..n as usize {
        let (t, l, bh, bw) = (top[i] as f64, left[i] as f64, bh[i] as f64, bw[i] as f64);
        let ctx = format!("box {i}: top {t} left {l} h {bh} w {bw} in {h}x{w}");
        for v in [t, l, bh, bw] {
            assert_eq!(v, v.round(), "{ctx}: not whole pixels");
        }
        assert!(t >= 0.0 && l >= 0.0 && bh >= 1.0 && bw >= 1.0, "{ctx}");
        assert!(t + bh <= h as f64 && l + bw <= w as f64, "{ctx}: outside the image");
        // Some (target area, aspect) in range rounds to (bw, bh): bw = round(sqrt(A r)) and
        // bh = round(sqrt(A / r)) put A r in [(bw - .5)^2, (bw + .5)^2], A / r likewise.
        let (lo_w, hi_w, lo_h, hi_h) = (bw - 0.5, bw + 0.5, bh - 0.5, bh + 0.5);
        let area_ok = lo_w * lo_h <= scale.1 * area + 1e-6 && hi_w * hi_h >= scale.0 * area - 1e-6;
        let ratio_ok = lo_w / hi_h <= ratio.1 + 1e-6 && hi_w / lo_h >= ratio.0 - 1e-6;
        if !(area_ok && ratio_ok) {
            // Only the central fallback crop may break them: centred, aspect clamped.
            fallbacks += 1;
            assert_eq!(t, ((h as f64 - bh) / 2.0).floor(), "{ctx}: out of range, not central");
            assert_eq!(l, ((w as f64 - bw) / 2.0).floor(), "{ctx}: out of range, not central");
        }
        area_sum += bh * bw / area;
    }
    let mean_area = area_sum / n as f64;
    println!(
        "boxes {h}x{w} scale {scale:?} ratio {ratio:?}: mean area fraction {mean_area:.3}, \
         {fallbacks} out-of-range fallbacks of {n}"
    );
    assert!(
        fallbacks as f64 <= 0.01 * n as f64,
        "{fallbacks} of {n} boxes out of range"
    );
}

#[test]
fn random_resized_crop_boxes_stay_in_range() {
    check_boxes(20_000, 32, 32, (0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0), 10);
    check_boxes(20_000, 24, 40, (0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0), 11);
    check_boxes(20_000, 224, 224, (0.2, 0.5), (0.5, 2.0), 12);
    check_boxes(20_000, 50, 30, (0.5, 1.0), (1.0, 1.0), 13);
    // Nothing fits (area 1 at aspect at least 2 in a square): every box is the central fallback
    // of aspect 2: full width, half height.
    let b = {
        let _rng = seeded(14);
        ops::random_resized_crop_boxes(64, 32, 32, (1.0, 1.0), (2.0, 3.0), CPU)
    };
    for (t, v) in [(&b.width, 32.0), (&b.height, 16.0), (&b.left, 0.0), (&b.top, 8.0)] {
        assert!(t.eq(v).all().int64_value(&[]) == 1, "fallback box: {t:?} != {v}");
    }
}

/// The distribution of boxes matches torchvision's `RandomResizedCrop.get_params` (means of
/// top, left, height, width and area fraction within 5 standard errors).
#[test]
fn random_resized_crop_boxes_distribution_matches_torchvision() {
    const N: i64 = 20_000;
    let (h, w) = (24i64, 40i64);
    let b = {
        let _rng = seeded(20);
        ops::random_resized_crop_boxes(N, h, w, (0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0), CPU)
    };
    let script = format!(
        "import torchvision
torch.manual_seed(0)
img = torch.empty(3, {h}, {w})
p = [torchvision.transforms.RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range({N})]
outputs['boxes'] = torch.tensor(p, dtype=torch.float64)
"
    );
    let tv = run_python(&script, &[]).remove("boxes").unwrap();
    let ours = Tensor::stack(&[&b.top, &b.left, &b.height, &b.width], 1).to_kind(Kind::Double);
    let with_area = |t: &Tensor| {
        let area = (t.select(1, 2) * t.select(1, 3) / (h * w) as f64).unsqueeze(1);
        Tensor::cat(&[t.shallow_clone(), area], 1)
    };
    let (ours, tv) = (with_area(&ours), with_area(&tv));
    for (k, name) in ["top", "left", "height", "width", "area"].iter().enumerate() {
        let (a, b) = (ours.select(1, k as i64), tv.select(1, k as i64));
        let (ma, mb) = (
            a.mean(Kind::Double).double_value(&[]),
            b.mean(Kind::Double).double_value(&[]),
        );
        let se = ((a.var(true).double_value(&[]) + b.var(true).double_value(&[])) / N as f64).sqrt();
        println!("{name}: ours {ma:.4}, torchvision {mb:.4}, se {se:.4}");
        assert!(
            (ma - mb).abs() <= 5.0 * se,
            "{name}: mean {ma} vs torchvision {mb} (se {se})"
        );
    }
}

#[test]
fn bernoulli_frequency_within_4_sigma() {
    const N: i64 = 20_000;
    let _rng = seeded(30);
    for p in [0.0, 0.01, 0.2, 0.5, 0.8, 1.0] {
        let draws = ops::bernoulli(N, p, CPU);
        assert_eq!(draws.kind(), Kind::Bool);
        let hits = draws.sum(Kind::Int64).int64_value(&[]) as f64;
        let sigma = (N as f64 * p * (1.0 - p)).sqrt();
        println!(
            "bernoulli({p}): {hits} of {N} (expected {}, sigma {sigma:.1})",
            N as f64 * p
        );
        assert!(
            (hits - N as f64 * p).abs() <= 4.0 * sigma,
            "bernoulli({p}): {hits} hits of {N}"
        );
    }
    let u = ops::uniform(N, -0.3, 0.7, CPU);
    let (lo, hi) = (u.min().double_value(&[]), u.max().double_value(&[]));
    assert!(lo >= -0.3 && hi < 0.7, "uniform out of range: [{lo}, {hi}]");
    let mean = u.mean(Kind::Double).double_value(&[]);
    // Standard error of the mean of U[a, b): (b - a) / sqrt(12 N).
    assert!(
        (mean - 0.2).abs() <= 4.0 / (12.0 * N as f64).sqrt(),
        "uniform mean {mean}"
    );
}

/// `apply_jitter` with drawn factors and orders vs torchvision's ColorJitter body image by
/// image (`for fn_id in order: F.adjust_*(img, factor)`), on a batch where the CPU path computes
/// each adjustment only on the samples that take it at that position.
#[test]
fn color_jitter_matches_torchvision_in_each_samples_order() {
    const N: i64 = 24;
    let x = random_images(50, N, 16, 16);
    let draw = {
        let _rng = seeded(51);
        let strength = JitterStrength {
            brightness: 0.4,
            contrast: 0.4,
            saturation: 0.2,
            hue: 0.1,
        };
        ops::JitterDraw::new(N, strength, CPU)
    };
    let ours = ops::apply_jitter(&x, &draw);
    let script = format!(
        "{TV}order = inputs['order'].tolist()
b, c, s, h = (inputs[k].tolist() for k in ('b', 'c', 's', 'h'))
out = []
for i in range(len(order)):
    img = x[i]
    for op in order[i]:
        if op == 0: img = F.adjust_brightness(img, b[i])
        elif op == 1: img = F.adjust_contrast(img, c[i])
        elif op == 2: img = F.adjust_saturation(img, s[i])
        else: img = F.adjust_hue(img, h[i])
    out.append(img)
outputs['y'] = torch.stack(out)
"
    );
    let tv = run_python(
        &script,
        &[
            ("x", &x),
            ("order", &draw.order),
            ("b", &draw.brightness),
            ("c", &draw.contrast),
            ("s", &draw.saturation),
            ("h", &draw.hue),
        ],
    );
    check("apply_jitter", &ours, &tv["y"], EXACT);
    // Every order position mixes adjustments across samples (else the test checks less).
    let first = draw.order.select(1, 0);
    assert!(
        (0..4).all(|op| first.eq(op).any().int64_value(&[]) == 1),
        "order[:, 0] = {first}"
    );
}

/// `apply_where` on a subset (the CPU path) equals transforming the whole batch and selecting.
#[test]
fn apply_where_equals_select_of_whole_batch() {
    let x = random_images(60, 6, 8, 8);
    let factors = floats(&[0.5, 1.5, 0.7, 1.2, 0.9, 1.1]);
    let whole = ops::adjust_contrast(&x, &factors);
    for mask in [[true, false, true, false, false, true], [false; 6], [true; 6]] {
        let mask = Tensor::from_slice(&mask);
        let ours = ops::apply_where(&mask, &x, |x, rows| ops::adjust_contrast(x, &rows.of(&factors)));
        assert_eq!(max_abs_diff(&ours, &ops::select(&mask, &whole, &x)), 0.0, "mask {mask}");
    }
}

#[test]
fn color_jitter_is_per_sample() {
    const N: i64 = 64;
    let one = random_images(40, 1, 16, 16);
    let batch = one.expand([N, 3, 16, 16], false).contiguous();
    let out = {
        let _rng = seeded(41);
        ops::color_jitter(
            &batch,
            JitterStrength {
                brightness: 0.4,
                contrast: 0.4,
                saturation: 0.2,
                hue: 0.1,
            },
        )
    };
    assert_eq!(out.size(), batch.size());
    let flat = out.view([N, -1]);
    // Every pair of samples differs (per-sample factors and order).
    let dist = Tensor::cdist(&flat, &flat, 1.0, None).to_kind(Kind::Double);
    let off_diag = dist + Tensor::eye(N, (Kind::Double, CPU)) * 1e9;
    let closest = off_diag.min().double_value(&[]);
    assert!(closest > 1e-3, "two jittered samples coincide (L1 {closest})");
    assert!(out.min().double_value(&[]) >= 0.0 && out.max().double_value(&[]) <= 1.0);

    // Brightness alone: each sample is the image times its own factor in [0.6, 1.4] (pixels
    // kept below 0.7 so nothing clips; the other three ops are identities at zero strength).
    let dim = &batch * 0.7;
    let out = {
        let _rng = seeded(42);
        ops::color_jitter(
            &dim,
            JitterStrength {
                brightness: 0.4,
                contrast: 0.0,
                saturation: 0.0,
                hue: 0.0,
            },
        )
    };
    let factors = out
        .view([N, -1])
        .sum_dim_intlist([1i64].as_slice(), false, Kind::Double)
        / dim
            .view([N, -1])
            .sum_dim_intlist([1i64].as_slice(), false, Kind::Double);
    let reconstructed = &dim * factors.to_kind(Kind::Float).view([N, 1, 1, 1]);
    check("brightness-only jitter == image * factor", &out, &reconstructed, 1e-5);
    let (lo, hi) = (factors.min().double_value(&[]), factors.max().double_value(&[]));
    assert!(lo >= 0.6 - 1e-4 && hi <= 1.4 + 1e-4, "factors in [{lo}, {hi}]");
    assert!(
        lo < 0.7 && hi > 1.3,
        "factors don't spread over [0.6, 1.4]: [{lo}, {hi}]"
    );
}
