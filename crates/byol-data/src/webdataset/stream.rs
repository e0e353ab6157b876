//! One reader thread per process streaming each shard front to back into a shuffle buffer.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::{DataError, Dataset, LoaderCrops};

use super::reader::Core;

/// Samples read by the reader thread and not yet taken: index -> bytes and how many times the
/// training order still takes them.
#[derive(Default)]
pub(super) struct Buffered {
    pub(super) ready: HashMap<usize, (Vec<u8>, usize)>,
    /// Decoder threads waiting for a sample the reader has not handed over.
    pub(super) waiting: usize,
    /// The reader waits for room: until no more than `low_water` samples are buffered (waking
    /// it for every sample taken would cost a context switch per sample).
    pub(super) reader_waiting: bool,
    pub(super) low_water: usize,
    pub(super) stop: bool,
    /// The reader has read every wanted sample, or failed (the reason).
    pub(super) finished: bool,
    pub(super) failure: Option<String>,
}

pub(super) struct StreamShared {
    pub(super) state: Mutex<Buffered>,
    pub(super) changed: Condvar,
    /// `Buffered::waiting`, readable without the lock: the reader hands its batch over early
    /// when a decoder waits.
    pub(super) waiting: std::sync::atomic::AtomicUsize,
}

impl StreamShared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Buffered> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The split seen through one forward pass over its shards: a thread reads the wanted samples
/// in file order, at most about `shuffle_buffer + lookahead` ahead of the decoders, which take
/// them by index. Dropping it stops the thread.
pub(super) struct StreamReader {
    pub(super) core: Arc<Core>,
    pub(super) shared: Arc<StreamShared>,
    pub(super) thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for StreamReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReader").finish_non_exhaustive()
    }
}

impl StreamReader {
    /// Reads `reads[p]` for every position `p` in `wanted`, in the order of `reads`.
    pub(super) fn start(core: Arc<Core>, reads: Vec<usize>, wanted: &[usize], lookahead: usize) -> Self {
        let mut is_wanted = vec![false; reads.len()];
        for &p in wanted {
            is_wanted[p] = true;
        }
        let shared = Arc::new(StreamShared {
            state: Mutex::new(Buffered::default()),
            changed: Condvar::new(),
            waiting: Default::default(),
        });
        let cap = core.shuffle_buffer + lookahead + 1;
        let thread = {
            let (core, shared) = (core.clone(), shared.clone());
            std::thread::Builder::new()
                .name("byol-shard-reader".into())
                .spawn(move || {
                    let result = read_stream(&core, &shared, &reads, &is_wanted, cap);
                    let mut state = shared.lock();
                    state.finished = true;
                    if let Err(e) = result {
                        state.failure = Some(e);
                    }
                    shared.changed.notify_all();
                })
                .expect("spawning the shard reader thread")
        };
        Self {
            core,
            shared,
            thread: Some(thread),
        }
    }

    /// The bytes of sample `index`, once the reader has them.
    pub(super) fn take(&self, index: usize) -> Result<Vec<u8>, DataError> {
        let mut state = self.shared.lock();
        loop {
            if let Some((bytes, left)) = state.ready.get_mut(&index) {
                *left -= 1;
                let bytes = if *left == 0 {
                    state.ready.remove(&index).expect("present").0
                } else {
                    bytes.clone()
                };
                if state.reader_waiting && state.ready.len() <= state.low_water {
                    self.shared.changed.notify_all();
                }
                return Ok(bytes);
            }
            if let Some(why) = &state.failure {
                return Err(DataError::Config(why.clone()));
            }
            if state.finished {
                return Err(DataError::Config(format!(
                    "sample {index} was asked of the shard reader, which does not read it this epoch"
                )));
            }
            state.waiting += 1;
            self.shared.waiting.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.shared.changed.notify_all();
            state = self.shared.changed.wait(state).unwrap_or_else(|e| e.into_inner());
            state.waiting -= 1;
            self.shared.waiting.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// The reader thread: one forward pass, shard by shard, through a large buffer. Samples are
/// handed over in groups (one lock and one wake-up per group rather than per sample), or at
/// once when a decoder waits.
pub(super) fn read_stream(
    core: &Core,
    shared: &StreamShared,
    reads: &[usize],
    is_wanted: &[bool],
    cap: usize,
) -> Result<(), String> {
    // Reads of a few MiB keep a network file system streaming; seeks within the buffer (over
    // headers, labels and samples not wanted) cost nothing.
    const READ_BUFFER: usize = 4 << 20;
    const GROUP: usize = 32;
    let mut open: Option<(u32, BufReader<File>, u64)> = None;
    let mut group: Vec<(usize, Vec<u8>)> = Vec::with_capacity(GROUP);
    // Hands the group over; then waits for room, unless a decoder waits for a sample not read
    // yet (which is ahead). Returns false when the loader stopped.
    let hand_over = |group: &mut Vec<(usize, Vec<u8>)>, wait_for_room: bool| -> bool {
        let mut state = shared.lock();
        let handed = !group.is_empty();
        for (index, bytes) in group.drain(..) {
            state.ready.entry(index).or_insert((bytes, 0)).1 += 1;
        }
        if handed && state.waiting > 0 {
            shared.changed.notify_all();
        }
        if wait_for_room && state.ready.len() >= cap {
            state.low_water = cap.saturating_sub(4 * GROUP);
            while state.ready.len() > state.low_water && state.waiting == 0 && !state.stop {
                state.reader_waiting = true;
                state = shared.changed.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            state.reader_waiting = false;
        }
        !state.stop
    };
    for (&index, _) in reads.iter().zip(is_wanted).filter(|(_, &w)| w) {
        let sample = &core.index.samples[index];
        let path = core.index.path(sample);
        let at = |e: std::io::Error| {
            // The member was listed whole at the start: a shard that ends before it now was cut
            // or written again since.
            let why = match e.kind() {
                std::io::ErrorKind::UnexpectedEof => {
                    " (the shard is shorter than when the run listed it: it changed since the start; copy it \
                     again, or write it again)"
                }
                _ => "",
            };
            format!("{}: cannot read member {}: {e}{why}", path.display(), sample.name)
        };
        if open
            .as_ref()
            .is_none_or(|(s, _, pos)| *s != sample.shard || *pos > sample.offset)
        {
            let file = File::open(path).map_err(|e| format!("{}: cannot open: {e}", path.display()))?;
            open = Some((sample.shard, BufReader::with_capacity(READ_BUFFER, file), 0));
        }
        let (_, reader, pos) = open.as_mut().expect("opened above");
        reader.seek_relative((sample.offset - *pos) as i64).map_err(at)?;
        let mut bytes = vec![0u8; sample.size as usize];
        reader.read_exact(&mut bytes).map_err(at)?;
        *pos = sample.offset + sample.size;
        group.push((index, bytes));
        let someone_waits = shared.waiting.load(std::sync::atomic::Ordering::SeqCst) > 0;
        if (group.len() >= GROUP || someone_waits) && !hand_over(&mut group, true) {
            return Ok(());
        }
    }
    hand_over(&mut group, false);
    Ok(())
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        {
            let mut state = self.shared.lock();
            state.stop = true;
            self.shared.changed.notify_all();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Dataset for StreamReader {
    fn len(&self) -> usize {
        self.core.index.samples.len()
    }

    fn classes(&self) -> &[String] {
        &self.core.index.classes
    }

    fn image_shape(&self) -> [usize; 3] {
        [3, self.core.size as usize, self.core.size as usize]
    }

    fn read(&self, index: usize, out: &mut [u8]) -> Result<Option<i64>, DataError> {
        self.core.sample(index)?;
        let bytes = self.take(index)?;
        self.core.decode(index, Ok(bytes), None, out)
    }

    fn read_crops(
        &self,
        index: usize,
        crops: &LoaderCrops,
        (seed, epoch): (u64, u64),
        out: &mut [u8],
    ) -> Result<Option<i64>, DataError> {
        self.core.sample(index)?;
        let bytes = self.take(index)?;
        self.core.decode(index, Ok(bytes), Some((crops, seed, epoch)), out)
    }

    fn reads_crops(&self) -> bool {
        true
    }

    fn workers(&self) -> usize {
        self.core.workers
    }

    fn describe(&self, index: usize) -> String {
        self.core.describe(index)
    }

    fn take_warning(&self) -> Option<String> {
        self.core.take_warning()
    }

    fn skipped(&self) -> Vec<String> {
        self.core.skipped()
    }
}
