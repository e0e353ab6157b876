//! Random resized crops cut by the loader from full images: the crop + bicubic resize matches
//! torchvision on PIL images (what a torchvision DataLoader does), the box distribution matches
//! torchvision's `RandomResizedCrop.get_params`, and batches do not depend on the worker count.

mod common;

use std::path::Path;

use byol_data::crop::{crop_resize_into, sample_box, CropBox};
use byol_data::decode::Rgb;
use byol_data::rng::SplitMix64;
use byol_data::{BatchLoader, CropRange, LoaderCrops};
use byol_testkit::run_python;
use common::{build, python, quoted};
use tch::{Device, Kind, Tensor};

/// A photo-like RGB image: smooth gradients, edges and noise (fresh per run).
fn random_image(width: u32, height: u32) -> Rgb {
    let noise = Tensor::randint(40, [(width * height * 3) as i64], (Kind::Int64, Device::Cpu));
    let noise = Vec::<i64>::try_from(noise).unwrap();
    let mut pixels = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        for x in 0..width {
            let i = ((y * width + x) * 3) as usize;
            let edge = if (x / 37 + y / 23) % 2 == 0 { 60 } else { 0 };
            pixels.push(((x * 200 / width) as i64 + noise[i]).min(255) as u8);
            pixels.push(((y * 180 / height) as i64 + edge + noise[i + 1]).min(255) as u8);
            pixels.push((((x + y) % 256) as i64 / 2 + noise[i + 2]).min(255) as u8);
        }
    }
    Rgb { width, height, pixels }
}

#[test]
fn crop_and_bicubic_resize_match_torchvision_on_pil_images() {
    let seed = byol_testkit::fresh_seed("BICUBIC_SEED");
    let replay = format!("seed {seed} (BICUBIC_SEED={seed} replays it)");
    tch::manual_seed(seed);
    let image = random_image(500, 375);
    let hwc = Tensor::from_slice(&image.pixels).view([375, 500, 3]);
    let boxes = [
        CropBox {
            left: 17,
            top: 40,
            width: 301,
            height: 222,
        }, // downscale
        CropBox {
            left: 400,
            top: 300,
            width: 61,
            height: 50,
        }, // upscale a small crop
        CropBox {
            left: 0,
            top: 0,
            width: 500,
            height: 375,
        }, // whole image, aspect changes
    ];
    let size = 96u32;
    let mut ours = Vec::new();
    for b in &boxes {
        let mut out = vec![0u8; 3 * (size * size) as usize];
        crop_resize_into(&image, *b, size, &mut out).unwrap();
        ours.push(Tensor::from_slice(&out).view([3, size as i64, size as i64]));
    }
    let box_tensor = Tensor::from_slice(
        &boxes
            .iter()
            .flat_map(|b| [b.top as i64, b.left as i64, b.height as i64, b.width as i64])
            .collect::<Vec<_>>(),
    );
    let reference = run_python(
        &BICUBIC_REFERENCE.replace("SIZE", &size.to_string()),
        &[("hwc", &hwc), ("boxes", &box_tensor)],
    );
    for (i, ours) in ours.iter().enumerate() {
        let ours = ours.to_kind(Kind::Double);
        let (exact, bound) = (&reference[&format!("exact{i}")], &reference[&format!("bound{i}")]);
        let over = ((&ours - exact).abs() - bound).max().double_value(&[]);
        assert!(
            over <= 0.0,
            "{replay}: box {i}: {over} levels beyond the rounding bound of the exact bicubic resize"
        );
        let torchvision = reference[&format!("torchvision{i}")].to_kind(Kind::Double);
        let allowed = &reference[&format!("torchvision_bound{i}")];
        let over = ((&ours - &torchvision).abs() - allowed).max().double_value(&[]);
        assert!(
            over <= 0.0,
            "{replay}: box {i}: {over} levels beyond the bound to torchvision's resized_crop on the PIL image"
        );
    }
}

/// The reference for `crop_and_bicubic_resize_match_torchvision_on_pil_images`, per box `i`:
/// `torchvision{i}`, torchvision's `resized_crop` of the PIL image (PIL's BICUBIC, which is
/// Catmull-Rom); `exact{i}`, the same filter in real arithmetic (PIL's float images), in our
/// order of passes (vertical, then horizontal: fast_image_resize's order for bytes), each pass
/// clamped to [0, 255]; and the bounds, per pixel, that the rounding of byte images allows.
///
/// The bounds: a pass over bytes rounds its output (at most 0.5 level off) after summing with
/// weights quantised to `p` fraction bits (each at most 2^-(p+1) off, so at most
/// `taps * 255 * 2^-(p+1)` levels in all). The second pass carries the first pass's error times
/// the sum of its weights' magnitudes, `l1` (over 1 where Catmull-Rom's negative lobes are
/// read); clamping never widens an error. So ours is within `0.5 + q2 + l1_2 * (0.5 + q1)` of
/// `exact`, with fast_image_resize's i16 weights (`p` from its rule: the most bits that keep
/// the largest weight under 2^15), vertical first. PIL's byte path, horizontal first with 22
/// fraction bits, is within the same expression of the exact resize in its own order, which
/// differs from ours where a pass's clamp cuts an overshoot; so ours is within the sum of both
/// bounds and that difference of torchvision's output.
const BICUBIC_REFERENCE: &str = r#"
import numpy as np
from PIL import Image
import torchvision.transforms.v2.functional as F
from torchvision.transforms import InterpolationMode

def catmull_rom(x):
    x = abs(x)
    if x < 1:
        return (1.5 * x - 2.5) * x * x + 1
    if x < 2:
        return ((-0.5 * x + 2.5) * x - 4) * x + 2
    return 0.0

def weights(n_in, n_out):
    # PIL's precompute_coeffs, which fast_image_resize follows: one normalised row per output.
    scale = n_in / n_out
    support = 2 * max(scale, 1)
    rows = []
    for o in range(n_out):
        centre = (o + 0.5) * scale
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n_in)
        w = [catmull_rom((x + 0.5 - centre) / max(scale, 1)) for x in range(lo, hi)]
        rows.append([v / sum(w) for v in w])
    return rows

def fir_bits(rows):
    # fast_image_resize's Normalizer16: the most bits below 22 that keep round(max * 2^p) under 2^15.
    largest = max(max(r) for r in rows)
    p = 0
    for p in range(22):
        if round(largest * 2 ** (p + 1)) >= 2 ** 15:
            break
    return p

def pass_stats(n_in, n_out, bits):
    rows = weights(n_in, n_out)
    bits = fir_bits(rows) if bits is None else bits
    l1 = max(sum(abs(v) for v in r) for r in rows)
    quantised = max(len(r) for r in rows) * 255 * 2.0 ** -(bits + 1)
    return l1, quantised

def bound(first, second):
    (_, q1), (l1, q2) = first, second
    return 0.5 + q2 + l1 * (0.5 + q1)

def exact(crop, vertical_first):
    h, w = crop.shape[:2]
    sizes = [(w, SIZE), (SIZE, SIZE)] if vertical_first else [(SIZE, h), (SIZE, SIZE)]
    planes = []
    for c in range(3):
        plane = crop[:, :, c].astype(np.float32)
        for size in sizes:  # a resize that keeps one side runs the other pass only
            plane = np.clip(np.asarray(Image.fromarray(plane, 'F').resize(size, Image.BICUBIC)), 0, 255)
        planes.append(plane.astype(np.float64))
    return np.stack(planes)

hwc = inputs['hwc'].numpy()
img = Image.fromarray(hwc)
# float32 planes hold each pass's real result to 255 * 2^-24; 1e-3 level covers that.
storage = 1e-3
for i, (t, l, h, w) in enumerate(inputs['boxes'].view(-1, 4).tolist()):
    crop = hwc[t:t + h, l:l + w]
    ours_order, pil_order = exact(crop, True), exact(crop, False)
    ours_bound = bound(pass_stats(h, SIZE, None), pass_stats(w, SIZE, None)) + storage
    pil_bound = bound(pass_stats(w, SIZE, 22), pass_stats(h, SIZE, 22)) + storage
    outputs[f'exact{i}'] = torch.from_numpy(ours_order)
    outputs[f'bound{i}'] = torch.tensor(ours_bound, dtype=torch.float64)
    out = F.resized_crop(img, t, l, h, w, [SIZE, SIZE], InterpolationMode.BICUBIC)
    outputs[f'torchvision{i}'] = F.pil_to_tensor(out)
    outputs[f'torchvision_bound{i}'] = torch.from_numpy(ours_bound + pil_bound + np.abs(ours_order - pil_order))
"#;

#[test]
fn crop_boxes_follow_torchvisions_distribution() {
    let range = CropRange {
        scale: (0.08, 1.0),
        ratio: (3.0 / 4.0, 4.0 / 3.0),
    };
    let seed = byol_testkit::fresh_seed("CROP_BOXES_SEED");
    let replay = format!("seed {seed} (CROP_BOXES_SEED={seed} replays it)");
    let (w, h, n) = (500u32, 375u32, 20_000usize);
    let mut rng = SplitMix64::keyed(&[seed as u64]);
    // Per statistic (area fraction, log aspect, centre x, centre y): the sum and the sum of squares.
    let mut sums = [[0f64; 2]; 4];
    for _ in 0..n {
        let b = sample_box(&range, w, h, &mut rng);
        assert!(b.left + b.width <= w && b.top + b.height <= h && b.width > 0 && b.height > 0);
        let values = [
            (b.width * b.height) as f64 / (w * h) as f64,
            (b.width as f64 / b.height as f64).ln(),
            (b.left as f64 + b.width as f64 / 2.0) / w as f64,
            (b.top as f64 + b.height as f64 / 2.0) / h as f64,
        ];
        for (sum, v) in sums.iter_mut().zip(values) {
            sum[0] += v;
            sum[1] += v * v;
        }
    }
    let mean_and_variance = |[sum, squares]: [f64; 2]| {
        let mean = sum / n as f64;
        (mean, (squares / n as f64 - mean * mean) * n as f64 / (n - 1) as f64)
    };
    let reference = run_python(
        &format!(
            "import math, torchvision.transforms as T\n\
             from PIL import Image\n\
             torch.manual_seed({seed})\n\
             img = Image.new('RGB', (500, 375))\n\
             s = torch.zeros(20000, 4, dtype=torch.float64)\n\
             for i in range(20000):\n\
             \x20   t, l, h, w = T.RandomResizedCrop.get_params(img, (0.08, 1.0), (3/4, 4/3))\n\
             \x20   s[i] = torch.tensor([w * h / (500 * 375), math.log(w / h), (l + w / 2) / 500, (t + h / 2) / 375], dtype=torch.float64)\n\
             outputs['mean'] = s.mean(0)\n\
             outputs['variance'] = s.var(0)\n"
        ),
        &[],
    );
    let their_mean = Vec::<f64>::try_from(&reference["mean"]).unwrap();
    let their_variance = Vec::<f64>::try_from(&reference["variance"]).unwrap();
    // Two independent means of 20,000 draws each: their difference has the standard error
    // sqrt(var_a / n + var_b / n). Five of them either way leave a false failure about once in
    // 1.7 million per statistic, once in 440,000 for the four (a normal tail, which means of
    // 20,000 bounded draws follow closely); a crop sampler that drew its scale or its aspect
    // ratio otherwise (not log-uniform, say) misses by far more.
    for (i, what) in ["area fraction", "log aspect", "centre x", "centre y"]
        .iter()
        .enumerate()
    {
        let (a, var_a) = mean_and_variance(sums[i]);
        let (b, var_b) = (their_mean[i], their_variance[i]);
        let standard_error = (var_a / n as f64 + var_b / n as f64).sqrt();
        assert!(
            (a - b).abs() <= 5.0 * standard_error,
            "{replay}: {what}: ours {a:.4}, torchvision {b:.4}, {:.1} standard errors apart",
            (a - b).abs() / standard_error
        );
    }
}

fn photo_folder(root: &Path) {
    python(
        "import sys, os, torch\n\
         from PIL import Image\n\
         root = sys.argv[1]\n\
         for c in range(2):\n\
         \x20   os.makedirs(f'{root}/c{c}', exist_ok=True)\n\
         \x20   for i in range(10):\n\
         \x20       w, h = 120 + 13 * i, 90 + 7 * c + 5 * i\n\
         \x20       px = (torch.rand(h, w, 3) * 255).byte().numpy()\n\
         \x20       Image.fromarray(px).save(f'{root}/c{c}/{i:02}.jpg', quality=90)\n",
        &[root],
    );
}

#[test]
fn loader_crops_are_the_same_whatever_the_worker_count() {
    let tmp = tempfile::tempdir().unwrap();
    photo_folder(tmp.path());
    let train = build(&format!(
        "type = \"image_folder\"\ntrain = {}\nimage_size = 16\ncache = \"none\"\n",
        quoted(tmp.path())
    ))
    .unwrap()
    .train;
    assert!(train.reads_crops());
    let mut loader = BatchLoader::new(train, 6, true, true, 11);
    loader.crops = Some(LoaderCrops {
        views: [
            CropRange {
                scale: (0.08, 1.0),
                ratio: (0.75, 4.0 / 3.0),
            },
            CropRange {
                scale: (0.5, 1.0),
                ratio: (1.0, 1.0),
            },
        ],
        size: 24,
    });
    let batches = |workers: usize, epoch: u64| -> Vec<Tensor> {
        let mut loader = loader.clone();
        loader.workers = workers;
        loader
            .prefetch(epoch, 0, Device::Cpu)
            .map(|b| b.unwrap().images)
            .collect()
    };
    let one = batches(1, 3);
    assert_eq!(one.len(), 3);
    assert_eq!(
        one[0].size(),
        vec![6, 6, 24, 24],
        "N x (view 1 RGB, view 2 RGB) x S x S"
    );
    for (a, b) in one.iter().zip(&batches(4, 3)) {
        assert!(a.equal(b), "4 workers cut other crops than 1");
    }
    // Another epoch cuts other crops; the two views of an image differ.
    assert!(!one[0].equal(&batches(1, 4)[0]));
    assert!(!one[0].narrow(1, 0, 3).equal(&one[0].narrow(1, 3, 3)));
}

#[test]
fn in_memory_datasets_cannot_cut_crops_and_say_so() {
    let tmp = tempfile::tempdir().unwrap();
    photo_folder(tmp.path());
    let train = build(&format!(
        "type = \"image_folder\"\ntrain = {}\nimage_size = 16\ncache = \"memory\"\n",
        quoted(tmp.path())
    ))
    .unwrap()
    .train;
    assert!(!train.reads_crops());
    let crops = LoaderCrops {
        views: [CropRange {
            scale: (0.5, 1.0),
            ratio: (1.0, 1.0),
        }; 2],
        size: 8,
    };
    let err = train
        .read_crops(0, &crops, (0, 0), &mut vec![0; crops.sample_bytes()])
        .unwrap_err();
    assert!(err.to_string().contains("cache = \"none\""), "{err}");
}
