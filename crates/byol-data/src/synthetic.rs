//! The embedded default dataset: coloured shapes on gray backgrounds, generated from a seed.
//!
//! The class is the shape; the shape's hue, the background's gray level, position, size and pixel
//! noise are random per image. A randomly initialized network mostly sees colour, so its kNN
//! accuracy is low; BYOL learns to see the shape because every other factor is one that the
//! views' augmentations redraw independently (a full-circle hue jitter makes the hue of two views
//! of one image unrelated), which makes this a quick, download-free check that training learns.
//!
//! Nothing else is shared by two views: an earlier version drew gray shapes on gray gradients, and
//! there the light-or-dark polarity and the gradient's direction, which no augmentation changes,
//! were easier to match across views than the shape; depending on the seed BYOL learned them
//! instead and kNN accuracy fell below the untrained network's.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::rng::SplitMix64;
use byol::BuildContext;

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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, byol::KeyDocs)]
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
    name: "synthetic",
    description: "built-in coloured shapes on gray (class = shape), generated from a seed; no download",
    impl DatasetSpec for SyntheticConfig {
        fn build(&self, _: &BuildContext) -> Result<Splits, DataError> {
            self.check()?;
            let train = Arc::new(generate(self, 0, self.train_size)?);
            let test = (self.test_size > 0).then(|| generate(self, 1, self.test_size)).transpose()?;
            Ok(Splits { train, test: test.map(|t| Arc::new(t) as _) })
        }

        fn check(&self) -> Result<(), DataError> {
            if !(2..=SHAPES.len()).contains(&self.classes) {
                return Err(DataError::Config(format!("dataset.classes = {} must be between 2 and {}", self.classes, SHAPES.len())));
            }
            if self.image_size < 8 {
                return Err(DataError::Config(format!("dataset.image_size = {} must be at least 8", self.image_size)));
            }
            if self.train_size == 0 {
                return Err(DataError::Config("dataset.train_size = 0: generate at least one training image".into()));
            }
            let images = self.train_size as u128 + self.test_size as u128;
            crate::memory::check_fits(
                images * 3 * (self.image_size as u128).pow(2),
                || {
                    format!(
                        "dataset.train_size = {} and test_size = {}: {images} images of {2}x{2} pixels",
                        self.train_size, self.test_size, self.image_size
                    )
                },
                "generate fewer or smaller images",
            )
        }

        fn image_size(&self) -> Option<u32> {
            Some(self.image_size as u32)
        }

        fn train_images(&self) -> Option<(usize, &'static str)> {
            Some((self.train_size, "train_size"))
        }
    }
}

fn generate(config: &SyntheticConfig, split: u64, count: usize) -> Result<ImageSet, DataError> {
    let side = config.image_size;
    // (Checked where the memory could not be read, and `check` let it through.)
    let bytes = (side.checked_mul(side).and_then(|p| p.checked_mul(3 * count))).ok_or_else(|| {
        DataError::Config(format!(
            "{count} images of {side}x{side} pixels are more bytes than this machine addresses"
        ))
    })?;
    let mut pixels = vec![0u8; bytes];
    let mut labels = Vec::with_capacity(count);
    for (i, image) in pixels.chunks_mut(3 * side * side).enumerate() {
        let mut rng = SplitMix64::keyed(&[config.seed, split, i as u64]);
        let class = i % config.classes;
        draw(image, side, class, &mut rng);
        labels.push(class as i64);
    }
    let classes = SHAPES[..config.classes].iter().map(|s| s.to_string()).collect();
    // The images' own digest: another seed (or generator) is other data to a resume and to the
    // kNN curve's points, as other files are. About a second per GB, a fraction of generating.
    let digest = {
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        hasher.update(&pixels);
        hasher.update(labels.iter().flat_map(|l| l.to_le_bytes()).collect::<Vec<u8>>());
        crate::dataset::hex(&hasher.finalize())
    };
    let content = byol::Content {
        digest,
        parts: Vec::new(),
    };
    Ok(ImageSet::new(pixels, labels, side, side, classes)?.with_content(Some(content)))
}

/// A bright colour of random hue: the hue wheel (HSV with value 1), mixed with white so that its
/// luminance (0.6 to 0.95) stays above every background's (at most 0.35).
fn random_hue(rng: &mut SplitMix64) -> [f32; 3] {
    let hue = rng.uniform() * 6.0;
    let channel = |offset: f32| (((offset + hue) % 6.0 - 3.0).abs() - 1.0).clamp(0.0, 1.0);
    [channel(0.0), channel(4.0), channel(2.0)].map(|v| 0.55 + 0.45 * v)
}

/// Draws one CHW image of `class` into `out`.
fn draw(out: &mut [u8], side: usize, class: usize, rng: &mut SplitMix64) {
    let s = side as f32;
    let bg = rng.range(0.15, 0.35);
    let fg = random_hue(rng);
    let radius = s * rng.range(0.28, 0.4);
    let cx = s / 2.0 + s * rng.range(-0.12, 0.12);
    let cy = s / 2.0 + s * rng.range(-0.12, 0.12);
    let plane = side * side;
    for y in 0..side {
        for x in 0..side {
            let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
            let inside = inside_shape(class, (px - cx) / radius, (py - cy) / radius);
            for c in 0..3 {
                let base = if inside { fg[c] } else { bg };
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

#[cfg(test)]
mod tests {
    use super::*;
    use byol::DatasetSpec;

    /// More images than memory holds are refused from the configuration, before generating.
    #[test]
    fn more_images_than_memory_are_refused_before_generating() {
        let config = SyntheticConfig {
            train_size: 1 << 40,
            ..Default::default()
        };
        let err = config.check().unwrap_err().to_string();
        assert!(
            err.contains("more than the") && err.contains("fewer or smaller"),
            "{err}"
        );
        let err = SyntheticConfig {
            image_size: 7,
            ..Default::default()
        }
        .check()
        .unwrap_err()
        .to_string();
        assert!(err.contains("dataset.image_size = 7 must be at least 8"), "{err}");
    }
}
