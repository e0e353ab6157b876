//! Parity of the batched augmentation ops (`byol_data::ops`) with the venv's
//! `torchvision.transforms.v2.functional`, applied image by image with that image's parameter,
//! on fresh random uint8 images scaled to [0, 1] (`u8 / 255`) and fresh random factors, sigmas,
//! boxes and flips beside a few fixed edge cases; plus statistical tests of the random draws
//! against torchvision's own (`RandomResizedCrop.get_params`, `ColorJitter.get_params`).
//!
//! Every parity test draws from a seed of its run's own (printed on failure;
//! `OPS_PARITY_SEED=S` replays one, `OPS_DRAWS_SEED=S` a statistical test). The tolerance is
//! the float32 rounding bound of `byol_testkit::rounding`: torchvision computes each op in float32
//! and in float64 on the same inputs, and ours (float32) may be off the float64 result by 4 times
//! torchvision's float32 error plus 64 float32 ulps of the largest value (7.6e-6 on the [0, 1]
//! scale, about a five-hundredth of one uint8 level). Measured on a 2-core AMD EPYC, ours was
//! within 2.2e-6 of the float64 result on every op. Before `resized_crop` clamped its sampling
//! grid to the box, the edge rows/columns of upsampled boxes blended in pixels from outside the
//! box (max abs 0.445); torchvision interpolates the cropped image alone.
//!
//! torchvision's v2 `resized_crop` defaults to `antialias=True`: for crops that are *larger*
//! than the output (downsampling) it low-passes first, which our single `grid_sample` does not;
//! that difference is printed by `resized_crop_matches_torchvision`, not asserted.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use byol_data::ops::{self, CropBoxes, JitterStrength};
use byol_testkit::rounding::{assert_within_rounding, error_and_bound};
use byol_testkit::stats::{assert_frequency, ks_critical, ks_statistic};
use byol_testkit::{max_abs_diff, run_python};
use tch::{Device, Kind, Tensor};

const CPU: Device = Device::Cpu;

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

/// A fresh seed for a parity test, and how to replay it.
fn parity_seed() -> (i64, String) {
    let seed = byol_testkit::fresh_seed("OPS_PARITY_SEED");
    (seed, format!("seed {seed} (OPS_PARITY_SEED={seed} replays it)"))
}

/// A fresh seed for a statistical test, and how to replay it.
fn draws_seed() -> (i64, String) {
    let seed = byol_testkit::fresh_seed("OPS_DRAWS_SEED");
    (seed, format!("seed {seed} (OPS_DRAWS_SEED={seed} replays it)"))
}

/// `fixed` followed by `n` uniform draws from `[lo, hi)` (libtorch's generator, seeded).
fn with_draws(fixed: &[f32], n: i64, (lo, hi): (f64, f64)) -> Tensor {
    Tensor::cat(&[floats(fixed), ops::uniform(n, lo, hi, CPU)], 0)
}

/// Asserts `ours` within the float32 rounding bound of torchvision's float64 result
/// `reference[key + "_f64"]`, given its float32 one `reference[key]`; prints the error.
fn check(reference: &HashMap<String, Tensor>, key: &str, ours: &Tensor, replay: &str) {
    let (error, bound) = error_and_bound(ours, &reference[key], &reference[&format!("{key}_f64")]);
    println!("{key}: off float64 by {error:.3e} (bound {bound:.3e})");
    assert_within_rounding(reference, key, ours, (key, replay));
}

/// torchvision's functional ops as `F`, the images as `x`, and `both(key, fn)`: `fn(x, dtype)`
/// in float32 as `outputs[key]` and in float64 as `outputs[key + '_f64']`.
const TV: &str = "
import torchvision.transforms.v2.functional as F
from torchvision.transforms import InterpolationMode
x = inputs['x']
def both(key, fn):
    outputs[key] = fn(x, torch.float32)
    outputs[key + '_f64'] = fn(x.double(), torch.float64)
";

#[test]
fn colour_adjustments_match_torchvision() {
    let (seed, replay) = parity_seed();
    let x = random_images(seed, 8, 32, 32);
    let (factors, hues) = {
        let _rng = seeded(seed.wrapping_add(1));
        // Zero and identity, then darkening and brightening factors (clamped above 1).
        let factors = with_draws(&[0.0, 1.0], 6, (0.0, 2.5));
        let hues = with_draws(&[-0.5, 0.0, 0.5], 5, (-0.5, 0.5));
        (factors, hues)
    };
    let script = format!(
        "{TV}f = inputs['f'].tolist()
hue = inputs['hue'].tolist()
def each(fn, factors):
    return lambda x, _: torch.stack([fn(x[i], factors[i]) for i in range(len(factors))])
both('brightness', each(F.adjust_brightness, f))
both('contrast', each(F.adjust_contrast, f))
both('saturation', each(F.adjust_saturation, f))
both('hue', each(F.adjust_hue, hue))
both('grayscale', lambda x, _: F.rgb_to_grayscale(x, num_output_channels=3))
both('solarize', lambda x, _: F.solarize(x, 0.5))
"
    );
    let tv = run_python(&script, &[("x", &x), ("f", &factors), ("hue", &hues)]);
    check(&tv, "brightness", &ops::adjust_brightness(&x, &factors), &replay);
    check(&tv, "contrast", &ops::adjust_contrast(&x, &factors), &replay);
    check(&tv, "saturation", &ops::adjust_saturation(&x, &factors), &replay);
    check(&tv, "hue", &ops::adjust_hue(&x, &hues), &replay);
    check(&tv, "grayscale", &ops::grayscale(&x), &replay);
    check(&tv, "solarize", &ops::solarize(&x, 0.5), &replay);
}

/// Hue on images with many exact ties (grey pixels, two equal maximal channels, saturated
/// primaries), where the sextant logic of RGB -> HSV matters most.
#[test]
fn adjust_hue_matches_torchvision_on_ties() {
    let (seed, replay) = parity_seed();
    let levels = [0u8, 1, 64, 127, 128, 200, 254, 255];
    let n = 8i64;
    // Every pixel's three channels drawn from 8 levels: about 1 in 8 pixels has a tie.
    let (idx, hues) = {
        let _rng = seeded(seed);
        let idx = Tensor::randint(levels.len() as i64, [n, 3, 16, 16], (Kind::Int64, CPU));
        (
            idx,
            with_draws(&[-0.5, -1.0 / 6.0, 0.0, 1.0 / 3.0, 0.5], 3, (-0.5, 0.5)),
        )
    };
    let x = Tensor::from_slice(&levels.map(|v| v as f32 / 255.0)).index_select(0, &idx.view([-1]));
    let x = x.view([n, 3, 16, 16]);
    let script = format!(
        "{TV}hue = inputs['hue'].tolist()
both('hue_ties', lambda x, _: torch.stack([F.adjust_hue(x[i], hue[i]) for i in range(len(hue))]))
"
    );
    let tv = run_python(&script, &[("x", &x), ("hue", &hues)]);
    check(&tv, "hue_ties", &ops::adjust_hue(&x, &hues), &replay);
}

#[test]
fn gaussian_blur_matches_torchvision() {
    let (seed, replay) = parity_seed();
    let x = random_images(seed, 8, 32, 32);
    let sigma = {
        let _rng = seeded(seed.wrapping_add(1));
        with_draws(&[0.1, 2.0], 6, (0.1, 3.5))
    };
    for k in [3i64, 5, 23] {
        let script = format!(
            "{TV}from torchvision.transforms.v2.functional._misc import _get_gaussian_kernel1d
s = inputs['sigma'].tolist()
k = {k}
both('blur', lambda x, _: torch.stack([F.gaussian_blur(x[i], [k, k], [s[i], s[i]]) for i in range(len(s))]))
both('kernels', lambda _, dtype: torch.stack([_get_gaussian_kernel1d(k, s[i], dtype, 'cpu') for i in range(len(s))]))
"
        );
        let tv = run_python(&script, &[("x", &x), ("sigma", &sigma)]);
        let replay = format!("{replay}, kernel {k}");
        check(&tv, "kernels", &ops::gaussian_kernels(&sigma, k), &replay);
        check(&tv, "blur", &ops::gaussian_blur(&x, k, &sigma), &replay);
    }
}

#[test]
fn normalize_matches_torchvision() {
    let (seed, replay) = parity_seed();
    let x = random_images(seed, 8, 32, 32);
    let (mean, std) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
    let script = format!(
        "{TV}both('normalize', lambda x, _: F.normalize(x, {mean:?}, {std:?}))
"
    );
    let tv = run_python(&script, &[("x", &x)]);
    check(&tv, "normalize", &ops::normalize(&x, mean, std), &replay);
}

/// Boxes `(top, left, height, width)` on a 40 x 48 image, resized to 32 x 32: upsampling
/// (small boxes, at every edge and corner, a single pixel), downsampling (whole image) and
/// mixed (narrow in one direction, wide in the other). Random boxes join them in the test.
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
    const RANDOM: i64 = 6;
    let (seed, replay) = parity_seed();
    let n = BOXES.len() as i64 + RANDOM;
    let x = random_images(seed, n, 40, 48);
    let (b, flip) = {
        let _rng = seeded(seed.wrapping_add(1));
        let fixed = boxes(&BOXES);
        let random = ops::random_resized_crop_boxes(RANDOM, 40, 48, (0.02, 1.0), (0.25, 4.0), CPU);
        let cat = |a: &Tensor, b: &Tensor| Tensor::cat(&[a, b], 0);
        let b = CropBoxes {
            top: cat(&fixed.top, &random.top),
            left: cat(&fixed.left, &random.left),
            height: cat(&fixed.height, &random.height),
            width: cat(&fixed.width, &random.width),
        };
        (b, ops::bernoulli(n, 0.5, CPU))
    };
    let script = format!(
        "{TV}b = inputs['boxes'].long().tolist()
flip = inputs['flip'].tolist()
def crop(x, aa):
    return torch.stack([F.resized_crop(x[i], t, l, h, w, [{S}, {S}],
        interpolation=InterpolationMode.BILINEAR, antialias=aa) for i, (t, l, h, w) in enumerate(b)])
def flipped(y):
    return torch.stack([F.horizontal_flip(y[i]) if flip[i] else y[i] for i in range(len(b))])
both('crop', lambda x, _: crop(x, False))
both('crop_flip', lambda x, _: flipped(crop(x, False)))
outputs['antialias'] = crop(x, True)
"
    );
    let box_tensor = Tensor::stack(&[&b.top, &b.left, &b.height, &b.width], 1);
    let tv = run_python(
        &script,
        &[("x", &x), ("boxes", &box_tensor), ("flip", &flip.to_kind(Kind::Float))],
    );
    let ours = ops::resized_crop(&x, &b, S, None);
    check(&tv, "crop", &ours, &replay);
    let ours_flip = ops::resized_crop(&x, &b, S, Some(&flip));
    check(&tv, "crop_flip", &ours_flip, &replay);
    // The flip mask mirrors the output exactly: flipped samples are `ours` reversed along W.
    let mirrored = ops::select(&flip, &ours.flip([3]), &ours);
    assert_eq!(
        max_abs_diff(&ours_flip, &mirrored),
        0.0,
        "{replay}: flip mask != mirrored output"
    );
    // Informational: torchvision's default antialias=True low-passes the downsampled boxes.
    for i in 0..n {
        let d = max_abs_diff(&ours.get(i), &tv["antialias"].get(i));
        let bx = Vec::<f32>::try_from(box_tensor.get(i)).unwrap();
        println!("box {bx:?}: max abs vs antialias=True {d:.3e}");
    }
}

/// The evaluation transform: torchvision's `Resize(shorter_side)` (bilinear, antialiased, the
/// longer side truncated) then `CenterCrop(size)` (offsets rounded half to even), down- and
/// upsampling, square and not, even and odd margins, and no resize at all.
#[test]
fn resize_center_crop_matches_torchvision() {
    let (seed, replay) = parity_seed();
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
            "{TV}both('resize_crop', lambda x, _: F.center_crop(
    F.resize(x, {shorter_side}, interpolation=InterpolationMode.BILINEAR, antialias=True), [{size}, {size}]))
"
        );
        let tv = run_python(&script, &[("x", &x)]);
        let replay = format!("{replay}, {h}x{w} -> {shorter_side} -> {size}");
        check(
            &tv,
            "resize_crop",
            &ops::resize_center_crop(&x, shorter_side, size),
            &replay,
        );
    }
}

// ---- Statistical tests: ours' draws against torchvision's, or against their definition. ----

/// Checks boxes against `scale` and `ratio`, allowing for the rounding of width and height to
/// whole pixels (torchvision rounds `sqrt(area * aspect)` and `sqrt(area / aspect)`).
fn check_boxes(n: i64, h: i64, w: i64, scale: (f64, f64), ratio: (f64, f64), (seed, replay): (i64, &str)) {
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
        let ctx = format!("{replay}: box {i}: top {t} left {l} h {bh} w {bw} in {h}x{w}");
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
        "{replay}: {fallbacks} of {n} boxes out of range"
    );
}

#[test]
fn random_resized_crop_boxes_stay_in_range() {
    // The central fallback crop is itself in range in the first, second and fourth case; in the
    // third every attempt fits (area * aspect <= 224^2), so the 1% allowance is never near.
    let (seed, replay) = draws_seed();
    check_boxes(20_000, 32, 32, (0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0), (seed, &replay));
    check_boxes(
        20_000,
        24,
        40,
        (0.08, 1.0),
        (3.0 / 4.0, 4.0 / 3.0),
        (seed.wrapping_add(1), &replay),
    );
    check_boxes(
        20_000,
        224,
        224,
        (0.2, 0.5),
        (0.5, 2.0),
        (seed.wrapping_add(2), &replay),
    );
    check_boxes(20_000, 50, 30, (0.5, 1.0), (1.0, 1.0), (seed.wrapping_add(3), &replay));
    // Nothing fits (area 1 at aspect at least 2 in a square): every box is the central fallback
    // of aspect 2: full width, half height.
    let b = {
        let _rng = seeded(seed);
        ops::random_resized_crop_boxes(64, 32, 32, (1.0, 1.0), (2.0, 3.0), CPU)
    };
    for (t, v) in [(&b.width, 32.0), (&b.height, 16.0), (&b.left, 0.0), (&b.top, 8.0)] {
        assert!(
            t.eq(v).all().int64_value(&[]) == 1,
            "{replay}: fallback box: {t:?} != {v}"
        );
    }
}

/// The distribution of boxes matches torchvision's `RandomResizedCrop.get_params` (means of
/// top, left, height, width and area fraction within 5 standard errors: a false failure about
/// once in 350,000 runs).
#[test]
fn random_resized_crop_boxes_distribution_matches_torchvision() {
    const N: i64 = 20_000;
    let (seed, replay) = draws_seed();
    let (h, w) = (24i64, 40i64);
    let b = {
        let _rng = seeded(seed);
        ops::random_resized_crop_boxes(N, h, w, (0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0), CPU)
    };
    let script = format!(
        "import torchvision
torch.manual_seed({})
img = torch.empty(3, {h}, {w})
p = [torchvision.transforms.RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range({N})]
outputs['boxes'] = torch.tensor(p, dtype=torch.float64)
",
        seed.wrapping_add(1)
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
            "{replay}: {name}: mean {ma} vs torchvision {mb} (se {se})"
        );
    }
}

/// Frequencies within 5 binomial standard deviations, the uniform mean within 5 standard errors
/// (five checks that can fail: a false failure about once in 300,000 runs).
#[test]
fn bernoulli_and_uniform_draws_hold_their_parameters() {
    const N: i64 = 20_000;
    let (seed, replay) = draws_seed();
    let _rng = seeded(seed);
    for p in [0.0, 0.01, 0.2, 0.5, 0.8, 1.0] {
        let draws = ops::bernoulli(N, p, CPU);
        assert_eq!(draws.kind(), Kind::Bool);
        let hits = draws.sum(Kind::Int64).int64_value(&[]) as usize;
        assert_frequency(&format!("{replay}: bernoulli({p})"), hits, N as usize, p, 5.0);
    }
    let u = ops::uniform(N, -0.3, 0.7, CPU);
    let (lo, hi) = (u.min().double_value(&[]), u.max().double_value(&[]));
    assert!(lo >= -0.3 && hi < 0.7, "{replay}: uniform out of range: [{lo}, {hi}]");
    let mean = u.mean(Kind::Double).double_value(&[]);
    // Standard error of the mean of U[a, b): (b - a) / sqrt(12 N).
    assert!(
        (mean - 0.2).abs() <= 5.0 / (12.0 * N as f64).sqrt(),
        "{replay}: uniform mean {mean}"
    );
}

/// The colour jitter's draws against `ColorJitter.get_params` with the paper's strengths: each
/// factor's distribution by a two-sample Kolmogorov-Smirnov test, and the order of the four
/// adjustments uniform over the 24 permutations, as `get_params`'s `torch.randperm(4)` draws it
/// (each within 5 binomial standard deviations). A false failure about once in 50,000 runs (4
/// KS tests at 1e-6, 24 frequencies at about 6e-7 each).
#[test]
fn color_jitter_draws_match_torchvisions_get_params() {
    const N: i64 = 20_000;
    const ALPHA: f64 = 1e-6;
    let (seed, replay) = draws_seed();
    let strength = JitterStrength {
        brightness: 0.4,
        contrast: 0.4,
        saturation: 0.2,
        hue: 0.1,
    };
    let ours = {
        let _rng = seeded(seed);
        ops::JitterDraw::new(N, strength, CPU)
    };
    let script = format!(
        "import torchvision
torch.manual_seed({})
jitter = torchvision.transforms.ColorJitter(0.4, 0.4, 0.2, 0.1)
draws = [jitter.get_params(jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) for _ in range({N})]
for k, name in enumerate(('brightness', 'contrast', 'saturation', 'hue')):
    outputs[name] = torch.tensor([d[k + 1] for d in draws], dtype=torch.float64)
",
        seed.wrapping_add(1)
    );
    let theirs = run_python(&script, &[]);
    let values = |t: &Tensor| Vec::<f64>::try_from(t.to_kind(Kind::Double)).unwrap();
    for (name, drawn) in [
        ("brightness", &ours.brightness),
        ("contrast", &ours.contrast),
        ("saturation", &ours.saturation),
        ("hue", &ours.hue),
    ] {
        let (a, b) = (values(drawn), values(&theirs[name]));
        let (d, critical) = (ks_statistic(&a, &b), ks_critical(a.len(), b.len(), ALPHA));
        println!("{name}: KS statistic {d:.4} (critical {critical:.4})");
        assert!(
            d <= critical,
            "{replay}: the {name} factor is drawn from another distribution than torchvision's: \
             KS statistic {d:.4} > {critical:.4}"
        );
    }
    // Each permutation as a base-4 number.
    let code = ours
        .order
        .to_kind(Kind::Int64)
        .matmul(&Tensor::from_slice(&[64i64, 16, 4, 1]));
    let counts = Vec::<i64>::try_from(code.bincount(None::<Tensor>, 256)).unwrap();
    let permutations: Vec<i64> = counts.into_iter().filter(|&c| c > 0).collect();
    assert_eq!(
        permutations.len(),
        24,
        "{replay}: the orders are not the 24 permutations"
    );
    for hits in permutations {
        assert_frequency(
            &format!("{replay}: an order"),
            hits as usize,
            N as usize,
            1.0 / 24.0,
            5.0,
        );
    }
}

/// `apply_jitter` with drawn factors and orders vs torchvision's ColorJitter body image by
/// image (`for fn_id in order: F.adjust_*(img, factor)`), on a batch where the CPU path computes
/// each adjustment only on the samples that take it at that position.
#[test]
fn color_jitter_matches_torchvision_in_each_samples_order() {
    // With 96 samples every op comes first in some sample but about once in 2e11 runs.
    const N: i64 = 96;
    let (seed, replay) = parity_seed();
    let x = random_images(seed, N, 16, 16);
    let draw = {
        let _rng = seeded(seed.wrapping_add(1));
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
def jitter(x, _):
    out = []
    for i in range(len(order)):
        img = x[i]
        for op in order[i]:
            if op == 0: img = F.adjust_brightness(img, b[i])
            elif op == 1: img = F.adjust_contrast(img, c[i])
            elif op == 2: img = F.adjust_saturation(img, s[i])
            else: img = F.adjust_hue(img, h[i])
        out.append(img)
    return torch.stack(out)
both('jitter', jitter)
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
    check(&tv, "jitter", &ours, &replay);
    // Every order position mixes adjustments across samples (else the test checks less).
    let first = draw.order.select(1, 0);
    assert!(
        (0..4).all(|op| first.eq(op).any().int64_value(&[]) == 1),
        "{replay}: order[:, 0] = {first}"
    );
}

/// `apply_where` on a subset (the CPU path) equals transforming the whole batch and selecting.
#[test]
fn apply_where_equals_select_of_whole_batch() {
    let (seed, replay) = parity_seed();
    let x = random_images(seed, 6, 8, 8);
    let factors = floats(&[0.5, 1.5, 0.7, 1.2, 0.9, 1.1]);
    let whole = ops::adjust_contrast(&x, &factors);
    for mask in [[true, false, true, false, false, true], [false; 6], [true; 6]] {
        let mask = Tensor::from_slice(&mask);
        let ours = ops::apply_where(&mask, &x, |x, rows| ops::adjust_contrast(x, &rows.of(&factors)));
        assert_eq!(
            max_abs_diff(&ours, &ops::select(&mask, &whole, &x)),
            0.0,
            "{replay}: mask {mask}"
        );
    }
}

/// Every sample draws its own factors and order: a batch of one image repeated comes out as
/// different images (the draws' distributions are compared with torchvision's above, and
/// `apply_jitter` with given per-sample draws with torchvision's ops).
#[test]
fn color_jitter_is_per_sample() {
    const N: i64 = 64;
    let (seed, replay) = draws_seed();
    let one = random_images(seed, 1, 16, 16);
    let batch = one.expand([N, 3, 16, 16], false).contiguous();
    let out = {
        let _rng = seeded(seed.wrapping_add(1));
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
    assert!(closest > 1e-3, "{replay}: two jittered samples coincide (L1 {closest})");
    let (lo, hi) = (out.min().double_value(&[]), out.max().double_value(&[]));
    assert!(lo >= 0.0 && hi <= 1.0, "{replay}: values in [{lo}, {hi}]");
}
