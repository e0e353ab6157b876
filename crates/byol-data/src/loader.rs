//! Batches of a dataset in a seeded per-epoch order.

use std::sync::Arc;

use tch::{Device, Tensor};

use crate::rng::permutation;
use crate::{DataError, Dataset};

/// Iterates one epoch of `dataset` in the order of (seed, epoch): shuffled, or sequential for
/// evaluation; `drop_last` drops the final short batch. `rank`/`world_size` take every
/// `world_size`-th batch for data-parallel training.
#[derive(Debug, Clone)]
pub struct BatchLoader {
    dataset: Arc<dyn Dataset>,
    pub batch_size: usize,
    pub shuffle: bool,
    pub drop_last: bool,
    pub seed: u64,
    pub rank: usize,
    pub world_size: usize,
}

impl BatchLoader {
    pub fn new(dataset: Arc<dyn Dataset>, batch_size: usize, shuffle: bool, drop_last: bool, seed: u64) -> Self {
        Self {
            dataset,
            batch_size,
            shuffle,
            drop_last,
            seed,
            rank: 0,
            world_size: 1,
        }
    }

    /// Batches per epoch (for this rank).
    pub fn batches_per_epoch(&self) -> usize {
        let n = self.dataset.len();
        let total = if self.drop_last {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        };
        total / self.world_size
    }

    /// The index lists of one epoch's batches.
    pub fn epoch_indices(&self, epoch: u64) -> Vec<Vec<usize>> {
        let n = self.dataset.len();
        let order = if self.shuffle {
            permutation(n, self.seed, epoch)
        } else {
            (0..n).collect()
        };
        let chunks: Vec<Vec<usize>> = order
            .chunks(self.batch_size)
            .filter(|c| !self.drop_last || c.len() == self.batch_size)
            .map(|c| c.to_vec())
            .collect();
        let per_rank = chunks.len() / self.world_size;
        chunks
            .into_iter()
            .skip(self.rank)
            .step_by(self.world_size)
            .take(per_rank)
            .collect()
    }

    /// Loads one batch to `device` (uint8 images, int64 labels).
    pub fn load(&self, indices: &[usize], device: Device) -> Result<(Tensor, Tensor), DataError> {
        let (images, labels) = self.dataset.batch(indices)?;
        let images = if device.is_cuda() {
            images.pin_memory(device).to_device_(device, images.kind(), true, false)
        } else {
            images
        };
        Ok((images, labels.to_device(device)))
    }
}
