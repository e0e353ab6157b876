//! Batches of a dataset in a seeded per-epoch order, loaded on demand ([`BatchLoader::load`]) or
//! decoded ahead by worker threads ([`BatchLoader::prefetch`]).

mod prefetch;

pub use prefetch::Prefetch;
use prefetch::{Shared, State};

use std::sync::{Arc, Condvar, Mutex};

use tch::{Device, Tensor};

use crate::dataset::{keep_readable, read_parallel, resolve_threads};
use crate::rng::permutation;
use crate::transfer::to_device_async;
use crate::{DataError, Dataset, EpochStream, LoaderCrops};

/// Iterates one epoch of `dataset` in the order of (seed, epoch): shuffled, or sequential for
/// evaluation; `drop_last` drops the final short batch. `rank`/`world_size` take every
/// `world_size`-th batch for data-parallel training.
#[derive(Debug)]
pub struct BatchLoader {
    dataset: Arc<dyn Dataset>,
    pub batch_size: usize,
    pub shuffle: bool,
    pub drop_last: bool,
    pub seed: u64,
    pub rank: usize,
    pub world_size: usize,
    /// Decoder threads of [`BatchLoader::prefetch`] (0: one per core); starts as the dataset's
    /// preference (`dataset.workers` for image folders, 1 for in-memory datasets).
    pub workers: usize,
    /// Batches that [`BatchLoader::prefetch`] may decode ahead of the one the consumer holds.
    pub batches_ahead: usize,
    /// [`BatchLoader::prefetch`] cuts both views' random resized crops from the full images
    /// (batches of `[N, 6, S, S]`: view 1's RGB, then view 2's) instead of reading the dataset's
    /// pre-sized squares.
    pub crops: Option<LoaderCrops>,
    /// An in-memory split copied to the training device once ([`BatchLoader::keep_on_device`]):
    /// [`BatchLoader::prefetch`] then batches by indexing there, with no threads or copies.
    resident: Option<(Tensor, Tensor)>,
}

/// A clone shares the dataset and, when kept on the device, the device copy.
impl Clone for BatchLoader {
    fn clone(&self) -> Self {
        Self {
            dataset: self.dataset.clone(),
            batch_size: self.batch_size,
            shuffle: self.shuffle,
            drop_last: self.drop_last,
            seed: self.seed,
            rank: self.rank,
            world_size: self.world_size,
            workers: self.workers,
            batches_ahead: self.batches_ahead,
            crops: self.crops,
            resident: self
                .resident
                .as_ref()
                .map(|(images, labels)| (images.shallow_clone(), labels.shallow_clone())),
        }
    }
}

/// One batch from [`BatchLoader::prefetch`].
#[derive(Debug)]
pub struct Batch {
    /// Dataset indices of the images, in batch order.
    pub indices: Vec<usize>,
    /// uint8 `[N, C, H, W]` on the requested device.
    pub images: Tensor,
    /// int64 `[N]` on the requested device.
    pub labels: Tensor,
}

impl BatchLoader {
    pub fn new(dataset: Arc<dyn Dataset>, batch_size: usize, shuffle: bool, drop_last: bool, seed: u64) -> Self {
        let workers = dataset.workers();
        Self {
            dataset,
            batch_size,
            shuffle,
            drop_last,
            seed,
            rank: 0,
            world_size: 1,
            workers,
            batches_ahead: 3,
            crops: None,
            resident: None,
        }
    }

    /// Copies an in-memory dataset (CIFAR with `cache = "memory"`, `cifar`, `synthetic`) to
    /// `device` once, so that training batches are gathered there (150 MB for CIFAR-10): no
    /// worker threads, no host-to-device copies per batch. Returns false, changing nothing, for
    /// datasets that decode files or when the loader cuts crops.
    pub fn keep_on_device(&mut self, device: Device) -> bool {
        if self.crops.is_some() {
            return false;
        }
        match self.dataset.as_tensors() {
            Some((images, labels)) => {
                self.resident = Some((images.to_device(device), labels.to_device(device)));
                true
            }
            None => false,
        }
    }

    /// Whether batches come from a device-resident copy of the dataset.
    pub fn is_on_device(&self) -> bool {
        self.resident.is_some()
    }

    pub fn dataset(&self) -> &Arc<dyn Dataset> {
        &self.dataset
    }

    /// The epoch's order from the dataset itself (sequentially stored shards), when it has one
    /// and the loader shuffles: already split between the processes.
    fn epoch_stream(&self, epoch: u64) -> Option<EpochStream> {
        self.shuffle
            .then(|| self.dataset.epoch_stream(self.seed, epoch, self.rank, self.world_size))
            .flatten()
    }

    /// Batches per epoch (for this rank).
    pub fn batches_per_epoch(&self) -> usize {
        let n = self.dataset.len();
        if self.shuffle && self.dataset.epoch_stream(self.seed, 0, 0, 1).is_some() {
            // Each process streams its own len / world samples.
            let mine = n / self.world_size;
            return if self.drop_last {
                mine / self.batch_size
            } else {
                mine.div_ceil(self.batch_size)
            };
        }
        let total = if self.drop_last {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        };
        total / self.world_size
    }

    /// The index lists of one epoch's batches.
    pub fn epoch_indices(&self, epoch: u64) -> Vec<Vec<usize>> {
        if let Some(stream) = self.epoch_stream(epoch) {
            let order: Vec<usize> = stream.indices().collect();
            return self.stream_batches(&order);
        }
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

    /// [`BatchLoader::load`] without the batch's unreadable images (fewer rows, perhaps none),
    /// for evaluation: `load` repeats a readable image in their place, which a kNN bank or its
    /// queries would count twice.
    pub fn load_readable(&self, indices: &[usize], device: Device) -> Result<(Tensor, Tensor), DataError> {
        let [c, h, w] = self.dataset.image_shape();
        let sample = c * h * w;
        let mut pixels = vec![0u8; indices.len() * sample];
        let threads = resolve_threads(self.dataset.workers());
        let labels = read_parallel(self.dataset.as_ref(), indices, &mut pixels, threads)?;
        let labels = keep_readable(&mut pixels, &labels, sample);
        let images = Tensor::from_slice(&pixels).view([labels.len() as i64, c as i64, h as i64, w as i64]);
        Ok((
            to_device_async(&images, device)?,
            to_device_async(&Tensor::from_slice(&labels), device)?,
        ))
    }

    /// One process's stream order cut into batches (the processes split the samples already).
    fn stream_batches(&self, order: &[usize]) -> Vec<Vec<usize>> {
        order
            .chunks(self.batch_size)
            .filter(|c| !self.drop_last || c.len() == self.batch_size)
            .map(|c| c.to_vec())
            .collect()
    }

    /// Loads one batch to `device` (uint8 images, int64 labels), decoding on the calling thread
    /// (and the dataset's own threads).
    pub fn load(&self, indices: &[usize], device: Device) -> Result<(Tensor, Tensor), DataError> {
        let (images, labels) = self.dataset.batch(indices)?;
        Ok((to_device_async(&images, device)?, to_device_async(&labels, device)?))
    }

    /// The batches of `epoch` from batch `skip` on (`epoch_indices(epoch)[skip..]`), decoded by
    /// `workers` threads up to `batches_ahead` batches ahead of the consumer, and copied to
    /// `device` as the iterator hands them out (for CUDA: through pinned memory, asynchronously
    /// on the current stream). Batches are exactly those of [`BatchLoader::load`]: order and
    /// content depend on (seed, epoch, index) only, never on the worker count. After an error
    /// the iterator ends. Dropping it stops the workers; at the end of the epoch (or drop) the
    /// dataset's warning about skipped images, if any, is printed once.
    ///
    /// A dataset with its own [`Dataset::epoch_stream`] (tar shards) is read through its
    /// [`Dataset::stream_reader`]: one forward pass over this process's files that skips, without
    /// reading or decoding them, the samples of the `skip` batches already trained on.
    pub fn prefetch(&self, epoch: u64, skip: usize, device: Device) -> Prefetch {
        let mut dataset = self.dataset.clone();
        let batches: Vec<Vec<usize>> = match self.epoch_stream(epoch) {
            Some(stream) => {
                let order: Vec<usize> = stream.indices().collect();
                let batches: Vec<Vec<usize>> = self.stream_batches(&order).into_iter().skip(skip).collect();
                let from = (skip * self.batch_size).min(stream.order.len());
                let to = from + batches.iter().map(Vec::len).sum::<usize>();
                let lookahead = (self.batches_ahead.max(1) + 1) * self.batch_size + resolve_threads(self.workers);
                if let Some(reader) = self
                    .dataset
                    .stream_reader(&stream.reads, &stream.order[from..to], lookahead)
                {
                    dataset = reader;
                }
                batches
            }
            None => self.epoch_indices(epoch).into_iter().skip(skip).collect(),
        };
        if let Some(resident) = &self.resident {
            return Prefetch::resident(batches, resident, self.dataset.clone());
        }
        let items: usize = batches.iter().map(Vec::len).sum();
        let threads = resolve_threads(self.workers).min(items).max(1);
        let shape = match &self.crops {
            Some(c) => [6, c.size as usize, c.size as usize],
            None => self.dataset.image_shape(),
        };
        let shared = Arc::new(Shared {
            dataset,
            by_index: self.dataset.clone(),
            shape,
            crops: self.crops.map(|c| (c, self.seed, epoch)),
            batches,
            ahead: self.batches_ahead.max(1),
            state: Mutex::new(State::default()),
            room: Condvar::new(),
            ready: Condvar::new(),
        });
        let workers = if items == 0 {
            Vec::new()
        } else {
            (0..threads)
                .map(|t| {
                    let shared = shared.clone();
                    std::thread::Builder::new()
                        .name(format!("byol-loader-{t}"))
                        .spawn(move || shared.work())
                        .expect("spawning a loader thread")
                })
                .collect()
        };
        Prefetch {
            next: 0,
            total: shared.batches.len(),
            shared,
            workers,
            device,
            finished: false,
            resident: None,
        }
    }
}
