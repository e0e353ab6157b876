//! What a dataset plugin provides: a training split to learn from, and optionally labelled
//! splits to evaluate the representation on (kNN bank and queries).

use std::sync::Arc;

use tch::Tensor;

use crate::DataError;

/// A split of images with labels.
pub trait Dataset: std::fmt::Debug + Send + Sync {
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn classes(&self) -> &[String];

    /// The images at `indices` as one uint8 `[N, 3, H, W]` CPU tensor, and their labels `[N]`.
    fn batch(&self, indices: &[usize]) -> Result<(Tensor, Tensor), DataError>;
}

/// The splits a dataset plugin builds.
#[derive(Debug, Clone)]
pub struct Splits {
    /// Images BYOL trains on (labels unused).
    pub train: Arc<dyn Dataset>,
    /// Labelled images evaluated against `train`'s labels by kNN; None disables the kNN monitor.
    pub test: Option<Arc<dyn Dataset>>,
}

/// `[dataset] type = "..."`.
#[typetag::serde(tag = "type")]
pub trait DatasetSpec: std::fmt::Debug + Send + Sync {
    fn build(&self) -> Result<Splits, DataError>;
}

/// A whole split held in memory as decoded uint8 CHW pixels: batching is a copy of rows.
#[derive(Debug)]
pub struct ImageSet {
    pixels: Vec<u8>,
    labels: Vec<i64>,
    height: usize,
    width: usize,
    classes: Vec<String>,
}

impl ImageSet {
    /// `pixels` holds `labels.len()` images of `3 x height x width` bytes each, CHW.
    pub fn new(
        pixels: Vec<u8>,
        labels: Vec<i64>,
        height: usize,
        width: usize,
        classes: Vec<String>,
    ) -> Result<Self, DataError> {
        if pixels.len() != labels.len() * 3 * height * width {
            return Err(DataError::Config(format!(
                "{} bytes do not hold {} images of 3x{height}x{width}",
                pixels.len(),
                labels.len()
            )));
        }
        Ok(Self {
            pixels,
            labels,
            height,
            width,
            classes,
        })
    }

    /// The whole split as one tensor pair (uint8 `[N, 3, H, W]`, int64 `[N]`).
    pub fn tensors(&self) -> (Tensor, Tensor) {
        let n = self.labels.len() as i64;
        let images = Tensor::from_slice(&self.pixels).view([n, 3, self.height as i64, self.width as i64]);
        (images, Tensor::from_slice(&self.labels))
    }
}

impl Dataset for ImageSet {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn batch(&self, indices: &[usize]) -> Result<(Tensor, Tensor), DataError> {
        let stride = 3 * self.height * self.width;
        let mut pixels = Vec::with_capacity(indices.len() * stride);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            if i >= self.labels.len() {
                return Err(DataError::Config(format!(
                    "index {i} out of range for {} images",
                    self.labels.len()
                )));
            }
            pixels.extend_from_slice(&self.pixels[i * stride..(i + 1) * stride]);
            labels.push(self.labels[i]);
        }
        let images = Tensor::from_slice(&pixels).view([indices.len() as i64, 3, self.height as i64, self.width as i64]);
        Ok((images, Tensor::from_slice(&labels)))
    }
}
