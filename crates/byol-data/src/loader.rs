//! Batches of a dataset in a seeded per-epoch order, loaded on demand ([`BatchLoader::load`]) or
//! decoded ahead by worker threads ([`BatchLoader::prefetch`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tch::{Device, Kind, Tensor};

use crate::dataset::{fill_skipped, resolve_threads};
use crate::rng::permutation;
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
        let images = if device.is_cuda() {
            images.pin_memory(device).to_device_(device, images.kind(), true, false)
        } else {
            images
        };
        Ok((images, labels.to_device(device)))
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

/// What the workers and the consumer share.
struct Shared {
    dataset: Arc<dyn Dataset>,
    shape: [usize; 3],
    /// Crops to cut, with the (seed, epoch) their boxes derive from.
    crops: Option<(LoaderCrops, u64, u64)>,
    batches: Vec<Vec<usize>>,
    ahead: usize,
    state: Mutex<State>,
    /// Workers wait here for room (the consumer took a batch) or for the stop.
    room: Condvar,
    /// The consumer waits here for the next batch.
    ready: Condvar,
}

#[derive(Default)]
struct State {
    /// The next image to decode: batch, position.
    next_batch: usize,
    next_position: usize,
    /// Batches handed to the consumer.
    consumed: usize,
    /// Batches being decoded.
    assembling: BTreeMap<usize, Assembly>,
    /// Decoded batches waiting for the consumer.
    done: BTreeMap<usize, Result<(Tensor, Tensor), DataError>>,
    stop: bool,
}

/// A batch being decoded: one slot per position.
struct Assembly {
    images: Vec<Option<Vec<u8>>>,
    labels: Vec<Option<i64>>,
    errors: Vec<Option<DataError>>,
    remaining: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sample(&self) -> usize {
        self.shape.iter().product()
    }

    /// A worker: takes the next image while its batch is within `ahead` of the consumer,
    /// decodes it, files it; whoever files a batch's last image assembles the batch.
    fn work(&self) {
        loop {
            let (b, p) = {
                let mut s = self.lock();
                loop {
                    if s.stop || s.next_batch >= self.batches.len() {
                        return;
                    }
                    if s.next_batch < s.consumed + self.ahead {
                        break;
                    }
                    s = self.room.wait(s).unwrap_or_else(|e| e.into_inner());
                }
                let (b, p) = (s.next_batch, s.next_position);
                let len = self.batches[b].len();
                if p == 0 {
                    s.assembling.insert(
                        b,
                        Assembly {
                            images: vec![None; len],
                            labels: vec![None; len],
                            errors: (0..len).map(|_| None).collect(),
                            remaining: len,
                        },
                    );
                }
                if p + 1 == len {
                    s.next_batch += 1;
                    s.next_position = 0;
                } else {
                    s.next_position += 1;
                }
                (b, p)
            };
            let mut pixels = vec![0u8; self.sample()];
            let index = self.batches[b][p];
            let read = || match &self.crops {
                Some((crops, seed, epoch)) => self.dataset.read_crops(index, crops, (*seed, *epoch), &mut pixels),
                None => self.dataset.read(index, &mut pixels),
            };
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(read))
                .unwrap_or_else(|_| Err(DataError::Config(format!("reading image {index} panicked"))));
            let mut s = self.lock();
            if s.stop {
                return;
            }
            let assembly = s.assembling.get_mut(&b).expect("batch being assembled");
            match result {
                Ok(Some(label)) => {
                    assembly.images[p] = Some(pixels);
                    assembly.labels[p] = Some(label);
                }
                Ok(None) => {}
                Err(e) => assembly.errors[p] = Some(e),
            }
            assembly.remaining -= 1;
            if assembly.remaining == 0 {
                let assembly = s.assembling.remove(&b).expect("batch being assembled");
                drop(s);
                let batch = self.assemble(assembly);
                let mut s = self.lock();
                s.done.insert(b, batch);
                self.ready.notify_all();
            }
        }
    }

    /// One tensor pair from a batch's images; skipped images repeat another image of the batch
    /// ([`fill_skipped`]); the first error by position wins.
    ///
    /// Runs on a worker thread, so it must not run ATen kernels that parallelize: each thread
    /// that enters an OpenMP region gets its own team of spinning threads (measured: a
    /// `torch::zeros` fill per batch here doubled the loader's CPU time). Hence `empty` and a
    /// plain copy rather than `Tensor::from_slice` (zeros + memcpy); pinning happens on the
    /// consumer's thread.
    fn assemble(&self, assembly: Assembly) -> Result<(Tensor, Tensor), DataError> {
        if let Some(e) = assembly.errors.into_iter().flatten().next() {
            return Err(e);
        }
        let n = assembly.labels.len();
        let sample = self.sample();
        let [c, h, w] = self.shape;
        let images = Tensor::f_empty([n as i64, c as i64, h as i64, w as i64], (Kind::Uint8, Device::Cpu))?;
        assert!(images.is_contiguous() && images.numel() == n * sample && n > 0);
        // SAFETY: `images` was just allocated here: a contiguous uint8 CPU tensor of exactly
        // `n * sample` bytes whose storage no other handle or thread can reach yet.
        let pixels = unsafe { std::slice::from_raw_parts_mut(images.data_ptr() as *mut u8, n * sample) };
        for (image, out) in assembly.images.iter().zip(pixels.chunks_mut(sample)) {
            if let Some(image) = image {
                out.copy_from_slice(image);
            }
        }
        let labels = fill_skipped(pixels, &assembly.labels, sample)?;
        Ok((images, Tensor::f_from_slice(&labels)?))
    }
}

/// The iterator of [`BatchLoader::prefetch`].
pub struct Prefetch {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    next: usize,
    total: usize,
    device: Device,
    finished: bool,
    /// The device-resident dataset that batches are gathered from (no workers then).
    resident: Option<(Tensor, Tensor)>,
}

impl std::fmt::Debug for Prefetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefetch")
            .field("next", &self.next)
            .field("total", &self.total)
            .field("workers", &self.workers.len())
            .finish()
    }
}

impl Prefetch {
    /// Batches gathered from a dataset already on the device.
    fn resident(batches: Vec<Vec<usize>>, (images, labels): &(Tensor, Tensor), dataset: Arc<dyn Dataset>) -> Self {
        let shared = Arc::new(Shared {
            dataset,
            shape: [0; 3],
            crops: None,
            batches,
            ahead: 1,
            state: Mutex::new(State::default()),
            room: Condvar::new(),
            ready: Condvar::new(),
        });
        Prefetch {
            next: 0,
            total: shared.batches.len(),
            shared,
            workers: Vec::new(),
            device: images.device(),
            finished: false,
            resident: Some((images.shallow_clone(), labels.shallow_clone())),
        }
    }

    fn finish(&mut self) {
        if !self.finished {
            self.finished = true;
            if let Some(w) = self.shared.dataset.take_warning() {
                eprintln!("warning: {w}");
            }
        }
    }
}

impl Iterator for Prefetch {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished || self.next >= self.total {
            self.finish();
            return None;
        }
        if let Some((images, labels)) = &self.resident {
            let indices = self.shared.batches[self.next].clone();
            self.next += 1;
            let rows: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
            let gathered = Tensor::f_from_slice(&rows)
                .and_then(|rows| rows.f_to_device(self.device))
                .and_then(|rows| Ok((images.f_index_select(0, &rows)?, labels.f_index_select(0, &rows)?)));
            return Some(
                gathered
                    .map(|(images, labels)| Batch {
                        indices,
                        images,
                        labels,
                    })
                    .map_err(DataError::from),
            );
        }
        let b = self.next;
        let result = {
            let mut s = self.shared.lock();
            let result = loop {
                if let Some(result) = s.done.remove(&b) {
                    break result;
                }
                s = self.shared.ready.wait(s).unwrap_or_else(|e| e.into_inner());
            };
            s.consumed = b + 1;
            self.shared.room.notify_all();
            result
        };
        self.next += 1;
        let indices = self.shared.batches[b].clone();
        let moved = result.and_then(|(images, labels)| {
            let images = if self.device.is_cuda() {
                images
                    .f_pin_memory(self.device)?
                    .f_to_device_(self.device, Kind::Uint8, true, false)?
            } else {
                images
            };
            Ok(Batch {
                indices,
                images,
                labels: labels.f_to_device(self.device)?,
            })
        });
        if moved.is_err() {
            self.finish();
        }
        Some(moved)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = if self.finished { 0 } else { self.total - self.next };
        (0, Some(left))
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        {
            let mut s = self.shared.lock();
            s.stop = true;
            self.shared.room.notify_all();
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
        self.finish();
    }
}
