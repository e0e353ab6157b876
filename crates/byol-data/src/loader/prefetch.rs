//! Worker threads that decode the batches of an epoch ahead of the consumer, in order.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tch::{Device, Kind, Tensor};

use crate::dataset::fill_skipped;
use crate::transfer::to_device_async;
use crate::{DataError, Dataset, LoaderCrops};

use super::Batch;

/// What the workers and the consumer share.
pub(super) struct Shared {
    pub(super) dataset: Arc<dyn Dataset>,
    /// The split read by index: `dataset` itself, or the split that `dataset` streams, which
    /// can read any sample, for filling a batch whose images were all skipped.
    pub(super) by_index: Arc<dyn Dataset>,
    pub(super) shape: [usize; 3],
    /// Crops to cut, with the (seed, epoch) their boxes derive from.
    pub(super) crops: Option<(LoaderCrops, u64, u64)>,
    pub(super) batches: Vec<Vec<usize>>,
    pub(super) ahead: usize,
    pub(super) state: Mutex<State>,
    /// Workers wait here for room (the consumer took a batch) or for the stop.
    pub(super) room: Condvar,
    /// The consumer waits here for the next batch.
    pub(super) ready: Condvar,
}

#[derive(Default)]
pub(super) struct State {
    /// The next image to decode: batch, position.
    pub(super) next_batch: usize,
    pub(super) next_position: usize,
    /// Batches handed to the consumer.
    pub(super) consumed: usize,
    /// Batches being decoded.
    pub(super) assembling: BTreeMap<usize, Assembly>,
    /// Decoded batches waiting for the consumer.
    pub(super) done: BTreeMap<usize, Result<(Tensor, Tensor), DataError>>,
    pub(super) stop: bool,
}

/// A batch being decoded: one slot per position.
pub(super) struct Assembly {
    pub(super) images: Vec<Option<Vec<u8>>>,
    pub(super) labels: Vec<Option<i64>>,
    pub(super) errors: Vec<Option<DataError>>,
    pub(super) remaining: usize,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn sample(&self) -> usize {
        self.shape.iter().product()
    }

    /// A worker: takes the next image while its batch is within `ahead` of the consumer,
    /// decodes it, files it; whoever files a batch's last image assembles the batch.
    pub(super) fn work(&self) {
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
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)).unwrap_or_else(|_| {
                Err(DataError::Config(format!(
                    "reading {} panicked",
                    self.dataset.describe(index)
                )))
            });
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
                // A panic here would leave the batch undone and its consumer waiting for good.
                let batch = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.assemble(b, assembly)))
                    .unwrap_or_else(|_| Err(DataError::Config(format!("assembling batch {b} panicked"))));
                let mut s = self.lock();
                s.done.insert(b, batch);
                self.ready.notify_all();
            }
        }
    }

    /// One tensor pair from batch `b`'s images; skipped images repeat another image
    /// ([`fill_skipped`]); the first error by position wins.
    ///
    /// Runs on a worker thread, so it must not run ATen kernels that parallelize: each thread
    /// that enters an OpenMP region gets its own team of spinning threads (measured: a
    /// `torch::zeros` fill per batch here doubled the loader's CPU time). Hence `empty` and a
    /// plain copy rather than `Tensor::from_slice` (zeros + memcpy); pinning happens on the
    /// consumer's thread.
    pub(super) fn assemble(&self, b: usize, assembly: Assembly) -> Result<(Tensor, Tensor), DataError> {
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
        let dataset = self.by_index.as_ref();
        let labels = fill_skipped(
            dataset,
            &self.batches[b],
            pixels,
            &assembly.labels,
            sample,
            |i, out| match &self.crops {
                Some((crops, seed, epoch)) => dataset.read_crops(i, crops, (*seed, *epoch), out),
                None => dataset.read(i, out),
            },
        )?;
        Ok((images, Tensor::f_from_slice(&labels)?))
    }
}

/// The iterator of [`BatchLoader::prefetch`].
pub struct Prefetch {
    pub(super) shared: Arc<Shared>,
    pub(super) workers: Vec<JoinHandle<()>>,
    pub(super) next: usize,
    pub(super) total: usize,
    pub(super) device: Device,
    pub(super) finished: bool,
    /// The device-resident dataset that batches are gathered from (no workers then).
    pub(super) resident: Option<(Tensor, Tensor)>,
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
    pub(super) fn resident(
        batches: Vec<Vec<usize>>,
        (images, labels): &(Tensor, Tensor),
        dataset: Arc<dyn Dataset>,
    ) -> Self {
        let shared = Arc::new(Shared {
            by_index: dataset.clone(),
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

    pub(super) fn finish(&mut self) {
        if !self.finished {
            self.finished = true;
            if let Some(w) = self.shared.dataset.take_warning() {
                byol::eprint_line!("warning: {w}");
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
                .and_then(|rows| to_device_async(&rows, self.device))
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
            Ok(Batch {
                indices,
                images: to_device_async(&images, self.device)?,
                labels: to_device_async(&labels, self.device)?,
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
