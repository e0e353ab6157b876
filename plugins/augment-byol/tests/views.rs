//! The `byol` augment's two views: per-sample randomness, the per-sample probabilities of its
//! coin flips, flips that really mirror, and reproducibility under `tch::manual_seed`.

use std::sync::{Mutex, MutexGuard};

use augment_byol::{ByolAugment, ByolAugmentConfig};
use byol::Augment;
use tch::{Device, Kind, Tensor};

/// libtorch's CPU generator is global: tests that seed it hold this lock.
static RNG: Mutex<()> = Mutex::new(());

fn seeded(seed: i64) -> MutexGuard<'static, ()> {
    let guard = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    guard
}

fn augment(toml_text: &str) -> ByolAugment {
    let config: ByolAugmentConfig = toml::from_str(toml_text).expect("config parses");
    config.resolve().expect("config resolves")
}

/// `n` copies of one random uint8 image `[3, h, w]`.
fn identical_batch(seed: i64, n: i64, h: i64, w: i64) -> Tensor {
    let _rng = seeded(seed);
    Tensor::randint(256, [1, 3, h, w], (Kind::Uint8, Device::Cpu))
        .expand([n, 3, h, w], false)
        .contiguous()
}

/// The CIFAR preset with every random step switched off except those `extra` sets (TOML lines of
/// `[augment.view1]` / `[augment.view2]`): the crop is the whole image (scale and ratio 1), no
/// normalization. Both views are the identity where `extra` is empty.
fn only(extra1: &str, extra2: &str) -> ByolAugment {
    const OFF: [&str; 7] = [
        "crop_scale = [1.0, 1.0]",
        "crop_ratio = [1.0, 1.0]",
        "flip_p = 0.0",
        "jitter_p = 0.0",
        "grayscale_p = 0.0",
        "blur_p = 0.0",
        "solarize_p = 0.0",
    ];
    let table = |extra: &str| {
        let key = |line: &str| line.split('=').next().unwrap_or("").trim().to_string();
        let set: Vec<String> = extra.lines().map(key).collect();
        let mut lines: Vec<&str> = OFF.into_iter().filter(|l| !set.contains(&key(l))).collect();
        lines.extend(extra.lines());
        lines.join("\n")
    };
    augment(&format!(
        "preset = \"cifar\"\nimage_size = 8\nmean = [0.0, 0.0, 0.0]\nstd = [1.0, 1.0, 1.0]\n\
         [view1]\n{}\n[view2]\n{}\n",
        table(extra1),
        table(extra2)
    ))
}

fn unit(images: &Tensor) -> Tensor {
    images.to_kind(Kind::Float) / 255.0
}

/// Per sample: is `a[i]` equal to `b[i]` (max abs diff <= tol)?
fn per_sample_equal(a: &Tensor, b: &Tensor, tol: f64) -> Vec<bool> {
    let n = a.size()[0];
    let d = (a - b).abs().view([n, -1]).amax([1i64].as_slice(), false).le(tol);
    Vec::<bool>::try_from(&d).unwrap()
}

fn assert_frequency(name: &str, hits: usize, n: usize, p: f64) {
    let sigma = (n as f64 * p * (1.0 - p)).sqrt();
    println!(
        "{name}: {hits} of {n} (p = {p}, expected {:.0} +- {sigma:.1})",
        n as f64 * p
    );
    assert!(
        (hits as f64 - n as f64 * p).abs() <= 4.0 * sigma,
        "{name}: {hits} of {n}, expected p = {p}"
    );
}

#[test]
fn switched_off_views_are_the_identity() {
    let aug = only("", "");
    let x = identical_batch(1, 4, 8, 8);
    let (v1, v2) = {
        let _rng = seeded(2);
        aug.two_views(&x)
    };
    let d = byol_testkit::max_abs_diff(&v1, &unit(&x)).max(byol_testkit::max_abs_diff(&v2, &unit(&x)));
    assert!(d <= 1e-6, "identity views differ from the input by {d}");
}

#[test]
fn solarize_is_drawn_per_sample_with_the_preset_probability() {
    // The CIFAR preset's solarize probabilities (view 1: 0, view 2: 0.2) are left alone.
    let aug = augment(
        "preset = \"cifar\"\nimage_size = 8\nmean = [0.0, 0.0, 0.0]\nstd = [1.0, 1.0, 1.0]\n\
         [view1]\ncrop_scale = [1.0, 1.0]\ncrop_ratio = [1.0, 1.0]\nflip_p = 0.0\njitter_p = 0.0\n\
         grayscale_p = 0.0\n\
         [view2]\ncrop_scale = [1.0, 1.0]\ncrop_ratio = [1.0, 1.0]\nflip_p = 0.0\njitter_p = 0.0\n\
         grayscale_p = 0.0\n",
    );
    assert_eq!((aug.view1.solarize_p, aug.view2.solarize_p), (0.0, 0.2));
    const N: i64 = 20_000;
    // Random pixels in [0, 255] (both sides of the 0.5 threshold).
    let x = {
        let _rng = seeded(3);
        Tensor::randint(256, [N, 3, 8, 8], (Kind::Uint8, Device::Cpu))
    };
    let (v1, v2) = {
        let _rng = seeded(4);
        aug.two_views(&x)
    };
    let plain = unit(&x);
    let solarized = byol_data::ops::solarize(&plain, 0.5);
    let v1_plain = per_sample_equal(&v1, &plain, 1e-6);
    assert!(v1_plain.iter().all(|&e| e), "view 1 is never solarized");
    let v2_plain = per_sample_equal(&v2, &plain, 1e-6);
    let v2_solarized = per_sample_equal(&v2, &solarized, 1e-6);
    // Whole samples, never single pixels: each view-2 sample is one or the other.
    for i in 0..N as usize {
        assert!(v2_plain[i] != v2_solarized[i], "sample {i} is partly solarized");
    }
    let hits = v2_solarized.iter().filter(|&&s| s).count();
    assert_frequency("view 2 solarized", hits, N as usize, 0.2);
}

#[test]
fn flip_grayscale_and_jitter_probabilities() {
    const N: i64 = 20_000;
    let x = {
        let _rng = seeded(5);
        Tensor::randint(256, [N, 3, 8, 8], (Kind::Uint8, Device::Cpu))
    };
    let plain = unit(&x);
    // flip_p = 1 and 0: the output is (not) the mirrored image, for every sample.
    let aug = only("flip_p = 1.0", "flip_p = 0.0");
    let (v1, v2) = {
        let _rng = seeded(6);
        aug.two_views(&x)
    };
    let mirrored = plain.flip([3]);
    assert!(per_sample_equal(&v1, &mirrored, 1e-6).iter().all(|&e| e));
    assert!(per_sample_equal(&v2, &plain, 1e-6).iter().all(|&e| e));
    // flip_p = 0.5 in view 1, grayscale_p = 0.2 in view 2.
    let aug = only("flip_p = 0.5", "grayscale_p = 0.2");
    let (v1, v2) = {
        let _rng = seeded(7);
        aug.two_views(&x)
    };
    let flipped = per_sample_equal(&v1, &mirrored, 1e-6);
    let unflipped = per_sample_equal(&v1, &plain, 1e-6);
    assert!((0..N as usize).all(|i| flipped[i] != unflipped[i]));
    assert_frequency(
        "view 1 flipped",
        flipped.iter().filter(|&&f| f).count(),
        N as usize,
        0.5,
    );
    let gray = per_sample_equal(&v2, &byol_data::ops::grayscale(&plain), 1e-6);
    let not_gray = per_sample_equal(&v2, &plain, 1e-6);
    assert!((0..N as usize).all(|i| gray[i] != not_gray[i]));
    assert_frequency("view 2 grayscale", gray.iter().filter(|&&g| g).count(), N as usize, 0.2);
    // jitter_p = 0.8 (strengths of the preset): a jittered sample differs from the input.
    let aug = only("jitter_p = 0.8", "");
    let (v1, _) = {
        let _rng = seeded(8);
        aug.two_views(&x)
    };
    let jittered = per_sample_equal(&v1, &plain, 1e-6).iter().filter(|&&e| !e).count();
    assert_frequency("view 1 jittered", jittered, N as usize, 0.8);
}

#[test]
fn views_differ_per_sample_and_between_views() {
    const N: i64 = 32;
    let x = identical_batch(9, N, 32, 32);
    for preset in ["cifar", "imagenet"] {
        let aug = augment(&format!("preset = \"{preset}\"\nimage_size = 32\n"));
        let (v1, v2) = {
            let _rng = seeded(10);
            aug.two_views(&x)
        };
        assert_eq!(v1.size(), [N, 3, 32, 32]);
        assert_eq!(v2.size(), [N, 3, 32, 32]);
        for (name, v) in [("view 1", &v1), ("view 2", &v2)] {
            let flat = v.view([N, -1]);
            let dist = Tensor::cdist(&flat, &flat, 1.0, None).to_kind(Kind::Double)
                + Tensor::eye(N, (Kind::Double, Device::Cpu)) * 1e9;
            let closest = dist.min().double_value(&[]);
            assert!(closest > 1e-3, "{preset} {name}: two samples coincide (L1 {closest})");
        }
        let same = per_sample_equal(&v1, &v2, 1e-4);
        assert!(same.iter().all(|&s| !s), "{preset}: a sample's two views coincide");
    }
}

#[test]
fn same_seed_same_views() {
    let aug = augment("preset = \"imagenet\"\nimage_size = 48\n");
    let x = {
        let _rng = seeded(11);
        Tensor::randint(256, [8, 3, 64, 80], (Kind::Uint8, Device::Cpu))
    };
    let draw = |seed: i64| {
        let _rng = seeded(seed);
        aug.two_views(&x)
    };
    let (a1, a2) = draw(12);
    let (b1, b2) = draw(12);
    let (c1, c2) = draw(13);
    assert!(a1.equal(&b1) && a2.equal(&b2), "same seed, different views");
    assert!(!a1.equal(&c1) && !a2.equal(&c2), "different seeds, same views");
}

/// Values outside what the operations mean are refused naming the key, before training (a zero
/// std made the loss NaN, blamed on the learning rate).
#[test]
fn out_of_range_settings_are_refused_naming_the_key() {
    for (table, message) in [
        (
            "std = [0.0, 0.2, 0.2]",
            "augment.std = [0.0, 0.2, 0.2]: 0 is not above 0",
        ),
        (
            "[view1]\ncrop_ratio = [-1.0, 1.0]",
            "augment.view1.crop_ratio = (-1.0, 1.0) must satisfy 0 < lo <= hi",
        ),
        (
            "[view2]\nbrightness = -3.0",
            "augment.view2.brightness = -3 must be >= 0",
        ),
        ("[view1]\nhue = 2.0", "augment.view1.hue = 2 must be in [0, 0.5]"),
        (
            "[view1]\nblur_kernel_fraction = -1.0",
            "augment.view1.blur_kernel_fraction = -1 must be in (0, 1]",
        ),
        (
            "[view2]\nsolarize_threshold = 1.5",
            "augment.view2.solarize_threshold = 1.5 must be in [0, 1]",
        ),
        (
            "eval_crop_fraction = 0.001",
            "augment.eval_crop_fraction = 0.001 is not in [0.25, 1]",
        ),
        (
            "eval_crop_fraction = 1.2",
            "augment.eval_crop_fraction = 1.2 is not in [0.25, 1]",
        ),
    ] {
        let config: ByolAugmentConfig = toml::from_str(&format!("preset = \"cifar\"\n{table}")).unwrap();
        let e = config.resolve().unwrap_err().to_string();
        assert!(e.contains(message), "{table}: {e}");
    }
}

/// The evaluation view is the paper's on ImageNet (shorter side 256, central 224) and the whole
/// image on CIFAR; `eval_crop_fraction` sets another share of the centre.
#[test]
fn the_evaluation_view_crops_the_presets_share_of_the_centre() {
    use byol::AugmentSpec;
    for (text, views, resize) in [
        ("preset = \"imagenet\"", 224, 256),
        ("preset = \"cifar\"", 32, 32),
        ("preset = \"cifar\"\neval_crop_fraction = 0.8", 32, 40),
        (
            "preset = \"imagenet\"\nimage_size = 96\neval_crop_fraction = 1.0",
            96,
            96,
        ),
    ] {
        let config: ByolAugmentConfig = toml::from_str(text).unwrap();
        assert_eq!((config.image_size(), config.eval_resize()), (views, resize), "{text}");
        // A square decoded at the resize side: the view is its centre, pixel for pixel (as the
        // whole-image view, fraction 1, of that centre).
        let whole_image = ByolAugmentConfig {
            eval_crop_fraction: Some(1.0),
            ..config.clone()
        };
        let images = identical_batch(3, 2, resize, resize);
        let margin = (resize - views) / 2;
        let centre = whole_image
            .resolve()
            .unwrap()
            .eval_view(&images.narrow(2, margin, views).narrow(3, margin, views));
        let whole = config.resolve().unwrap().eval_view(&images);
        assert_eq!(whole.size(), [2, 3, views, views], "{text}");
        assert!(whole.equal(&centre), "{text}: not the central {views} px of {resize}");
    }
}

/// The blur against `torchvision.transforms.v2.GaussianBlur` with the paper's sigma range: on
/// white noise, a blur's strength shows as the share of the variance it keeps (the sum of the
/// squared kernel weights, falling with sigma), so the shares of view 1 (always blurred) and of
/// torchvision's transform, applied to the same images, are two samples of one distribution when
/// the kernel side, sigma's range and its per-sample draw are the same (a two-sample
/// Kolmogorov-Smirnov test, failing by chance with probability 1e-6). View 2 blurs a tenth of
/// its samples (with sigma of at least 1 here: a sigma under about 0.2 leaves the image within the
/// 1e-6 that tells a blurred sample from a plain one; the 4-sigma frequency check fails by chance
/// about once in 16,000 runs). From a seed of each run's own (`BLUR_SEED` replays ours).
#[test]
fn the_blur_draws_sigma_as_torchvisions_gaussian_blur_and_view_2_blurs_a_tenth() {
    const N: i64 = 2_000;
    const SIZE: i64 = 64;
    let aug = augment(&format!(
        "preset = \"imagenet\"\nimage_size = {SIZE}\nmean = [0.0, 0.0, 0.0]\nstd = [1.0, 1.0, 1.0]\n\
         [view1]\ncrop_scale = [1.0, 1.0]\ncrop_ratio = [1.0, 1.0]\nflip_p = 0.0\njitter_p = 0.0\n\
         grayscale_p = 0.0\nsolarize_p = 0.0\n\
         [view2]\ncrop_scale = [1.0, 1.0]\ncrop_ratio = [1.0, 1.0]\nflip_p = 0.0\njitter_p = 0.0\n\
         grayscale_p = 0.0\nsolarize_p = 0.0\nblur_sigma = [1.0, 2.0]\n"
    ));
    assert_eq!((aug.view1.blur_p, aug.view2.blur_p), (1.0, 0.1));
    assert_eq!(aug.view1.blur_sigma, (0.1, 2.0));
    let kernel = aug.view1.blur_kernel(SIZE);
    let seed = byol_testkit::fresh_seed("BLUR_SEED");
    let replay = format!("seed {seed} (BLUR_SEED={seed} replays it)");
    let (x, (v1, v2)) = {
        let _rng = seeded(seed);
        let x = Tensor::randint(256, [N, 3, SIZE, SIZE], (Kind::Uint8, Device::Cpu));
        let views = aug.two_views(&x);
        (x, views)
    };
    let plain = unit(&x);
    let kept = |views: &Tensor| {
        let variance = |t: &Tensor| t.view([N, -1]).var_dim([1i64].as_slice(), false, false);
        variance(views) / variance(&plain)
    };
    let reference = byol_testkit::run_python(
        &format!(
            "import math\nimport numpy as np\nfrom torchvision.transforms import v2\n\
             torch.manual_seed({})\n\
             blur = v2.GaussianBlur(kernel_size={kernel}, sigma=(0.1, 2.0))\n\
             x = inputs['x']\n\
             blurred = torch.stack([blur(image) for image in x])\n\
             var = lambda t: t.flatten(1).var(1, unbiased=False)\n\
             theirs = (var(blurred) / var(x)).double().numpy()\n\
             ours = inputs['kept'].double().numpy()\n\
             both = np.concatenate([np.sort(ours), np.sort(theirs)])\n\
             cdf = lambda s: np.searchsorted(np.sort(s), both, side='right') / len(s)\n\
             outputs['d'] = torch.tensor(float(np.abs(cdf(ours) - cdf(theirs)).max()))\n\
             outputs['critical'] = torch.tensor(math.sqrt(-math.log(1e-6 / 2) / 2) * math.sqrt(2 / len(ours)))\n",
            seed.wrapping_add(1)
        ),
        &[("x", &plain), ("kept", &kept(&v1))],
    );
    let (d, critical) = (
        reference["d"].double_value(&[]),
        reference["critical"].double_value(&[]),
    );
    assert!(
        d <= critical,
        "{replay}: view 1's blur keeps another share of the variance than torchvision's GaussianBlur \
         (kernel {kernel}, sigma in [0.1, 2]): KS statistic {d:.4} > {critical:.4}"
    );
    let blurred = per_sample_equal(&v2, &plain, 1e-6)
        .iter()
        .filter(|&&same| !same)
        .count();
    assert_frequency("view 2 blurred", blurred, N as usize, 0.1);
}
