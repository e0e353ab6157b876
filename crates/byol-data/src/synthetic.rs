//! The embedded default dataset: coloured shapes on textured backgrounds, generated from a seed.
//!
//! The class is the shape; colours, position, size, background gradient and pixel noise are
//! random per image. A randomly initialized network mostly sees colour, so its kNN accuracy is
//! low; BYOL's colour jitter and grayscale views teach it to see shape instead, which makes this a
//! quick, download-free check that training learns.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::rng::SplitMix64;
use crate::{DataError, DatasetSpec, ImageSet, Splits};

pub const SHAPES: [&str; 10] = [
    "disk",
    "square",
    "triangle",
    "plus",
    "ring",
    "diamond",
    "bars",
    "cross",
    "frame",
    "half_disk",
];

/// `[dataset] type = "synthetic"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticConfig {
    /// Images to train BYOL on (also the labelled kNN bank).
    pub train_size: usize,
    /// Held-out labelled images the kNN monitor classifies.
    pub test_size: usize,
    /// Side of the square images, in pixels.
    pub image_size: usize,
    /// Number of shape classes, 2 to 10.
    pub classes: usize,
    /// Generation seed; the same seed gives the same images.
    pub seed: u64,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            train_size: 5000,
            test_size: 1000,
            image_size: 32,
            classes: 10,
            seed: 0,
        }
    }
}

byol::register_plugin! {
    kind: Dataset,
    name: "synthetic",
    description: "built-in coloured shapes (class = shape), generated from a seed; no download",
    example: "type = \"synthetic\"\ntrain_size = 5000\ntest_size = 1000\nimage_size = 32\nclasses = 10\nseed = 0\n",
    impl DatasetSpec for SyntheticConfig {
        fn build(&self) -> Result<Splits, DataError> {
            self.check()?;
            let train = Arc::new(generate(self, 0, self.train_size)?);
            let test = (self.test_size > 0).then(|| generate(self, 1, self.test_size)).transpose()?;
            Ok(Splits { train, test: test.map(|t| Arc::new(t) as _) })
        }

        fn check(&self) -> Result<(), DataError> {
            if !(2..=SHAPES.len()).contains(&self.classes) {
                return Err(DataError::Config(format!("dataset.classes = {} must be between 2 and {}", self.classes, SHAPES.len())));
            }
            if self.image_size < 8 || self.train_size == 0 {
                return Err(DataError::Config("dataset.image_size must be at least 8 and dataset.train_size positive".into()));
            }
            Ok(())
        }
    }
}

fn generate(config: &SyntheticConfig, split: u64, count: usize) -> Result<ImageSet, DataError> {
    let side = config.image_size;
    let mut pixels = vec![0u8; count * 3 * side * side];
    let mut labels = Vec::with_capacity(count);
    for (i, image) in pixels.chunks_mut(3 * side * side).enumerate() {
        let mut rng = SplitMix64::keyed(&[config.seed, split, i as u64]);
        let class = i % config.classes;
        draw(image, side, class, &mut rng);
        labels.push(class as i64);
    }
    let classes = SHAPES[..config.classes].iter().map(|s| s.to_string()).collect();
    ImageSet::new(pixels, labels, side, side, classes)
}

/// Shapes and backgrounds are gray levels with a faint random tint: colour carries no
/// information, so the network has to look at the shape.
fn random_colour(rng: &mut SplitMix64) -> [f32; 3] {
    let level = rng.uniform();
    [0, 1, 2].map(|_| (level + rng.range(-0.05, 0.05)).clamp(0.0, 1.0))
}

fn luminance(c: [f32; 3]) -> f32 {
    0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
}

/// Draws one CHW image of `class` into `out`.
fn draw(out: &mut [u8], side: usize, class: usize, rng: &mut SplitMix64) {
    let s = side as f32;
    let bg = random_colour(rng);
    // Keep the shape visible: at least 0.3 luminance apart.
    let mut fg = random_colour(rng);
    while (luminance(fg) - luminance(bg)).abs() < 0.3 {
        fg = random_colour(rng);
    }
    let bg2 = random_colour(rng);
    let radius = s * rng.range(0.28, 0.4);
    let cx = s / 2.0 + s * rng.range(-0.12, 0.12);
    let cy = s / 2.0 + s * rng.range(-0.12, 0.12);
    let (gx, gy) = (rng.range(-1.0, 1.0), rng.range(-1.0, 1.0));
    let plane = side * side;
    for y in 0..side {
        for x in 0..side {
            let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
            let inside = inside_shape(class, (px - cx) / radius, (py - cy) / radius);
            // Background: a gradient between two random colours.
            let t = (0.5 + 0.5 * (gx * (px / s - 0.5) + gy * (py / s - 0.5))).clamp(0.0, 1.0);
            for c in 0..3 {
                let base = if inside {
                    fg[c]
                } else {
                    bg[c] * (1.0 - 0.35 * t) + bg2[c] * 0.35 * t
                };
                let value = base + rng.range(-0.06, 0.06);
                out[c * plane + y * side + x] = (value.clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
    }
}

/// Point (u, v), in units of the shape's radius from its centre, inside shape `class`?
fn inside_shape(class: usize, u: f32, v: f32) -> bool {
    let (au, av) = (u.abs(), v.abs());
    let d = (u * u + v * v).sqrt();
    match class {
        0 => d < 1.0,
        1 => au.max(av) < 0.8,
        2 => v < 0.8 && au < (v + 1.0) * 0.55,
        3 => (au < 0.3 && av < 1.0) || (av < 0.3 && au < 1.0),
        4 => d < 1.0 && d > 0.6,
        5 => au + av < 1.0,
        6 => au < 1.0 && ((v - 0.5).abs() < 0.22 || (v + 0.5).abs() < 0.22),
        7 => au.max(av) < 0.85 && ((u - v).abs() < 0.35 || (u + v).abs() < 0.35),
        8 => au.max(av) < 0.9 && au.max(av) > 0.55,
        _ => d < 1.0 && v > 0.0,
    }
}
