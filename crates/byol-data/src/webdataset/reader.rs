//! The dataset over the index: random access for evaluation, the epoch order for training.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::decode::{center_square_into, decode_rgb};
use crate::image_folder::OnBadImage;
use crate::rng::SplitMix64;
use crate::EpochStream;
use crate::{DataError, Dataset, LoaderCrops};

use super::index::{Index, Sample};
use super::stream::StreamReader;
use crate::skipped::SkippedImages;

/// How a run stops at the first unreadable sample rather than skip it.
const STOP_AT_BAD_IMAGE: &str = "set dataset.on_bad_image = \"error\"";

#[derive(Debug)]
pub(super) struct Core {
    pub(super) index: Index,
    pub(super) size: u32,
    pub(super) workers: usize,
    pub(super) shuffle_buffer: usize,
    pub(super) on_bad_image: OnBadImage,
    pub(super) skipped: SkippedImages,
}

impl Core {
    pub(super) fn sample(&self, index: usize) -> Result<&Sample, DataError> {
        self.index.samples.get(index).ok_or_else(|| {
            DataError::Config(format!(
                "index {index} out of range for {} samples",
                self.index.samples.len()
            ))
        })
    }

    /// The image bytes of sample `index`, read where the index says they lie.
    pub(super) fn read_at(&self, index: usize) -> Result<Vec<u8>, String> {
        use std::os::unix::fs::FileExt;
        let sample = &self.index.samples[index];
        let file = File::open(self.index.path(sample)).map_err(|e| format!("cannot open the shard: {e}"))?;
        let mut bytes = vec![0u8; sample.size as usize];
        file.read_exact_at(&mut bytes, sample.offset)
            .map_err(|e| format!("cannot read {} bytes at byte {}: {e}", sample.size, sample.offset))?;
        Ok(bytes)
    }

    /// Decodes sample `index` from its bytes: the centre square, or both views' crops.
    pub(super) fn decode(
        &self,
        index: usize,
        bytes: Result<Vec<u8>, String>,
        crops: Option<(&LoaderCrops, u64, u64)>,
        out: &mut [u8],
    ) -> Result<Option<i64>, DataError> {
        let decoded = bytes.and_then(|b| decode_rgb(&b)).and_then(|image| match crops {
            Some((crops, seed, epoch)) => crate::crop::cut_views(crops, &image, seed, epoch, index, out),
            None => center_square_into(&image, self.size, out),
        });
        let sample = &self.index.samples[index];
        match decoded {
            Ok(()) => Ok(Some(sample.label)),
            Err(why) if self.on_bad_image == OnBadImage::Skip => {
                self.skipped.record(index, why);
                Ok(None)
            }
            Err(why) => Err(DataError::Image {
                path: self.index.path(sample).to_path_buf(),
                message: format!(
                    "member {} at byte {}: {why} (set dataset.on_bad_image = \"skip\" to skip unreadable samples)",
                    sample.name, sample.offset
                ),
            }),
        }
    }

    /// `shard member <key>.<ext>`, for messages.
    pub(super) fn describe(&self, index: usize) -> String {
        match self.index.samples.get(index) {
            Some(sample) => format!("{} member {}", crate::path_line(self.index.path(sample)), sample.name),
            None => format!("sample {index}"),
        }
    }

    pub(super) fn skipped(&self) -> Vec<String> {
        self.skipped.all(|i| self.describe(i))
    }

    pub(super) fn take_warning(&self) -> Option<String> {
        let place = format!("{} shard(s)", self.index.shards.len());
        self.skipped.take_warning(
            "sample(s)",
            self.index.samples.len(),
            &place,
            Some(STOP_AT_BAD_IMAGE),
            |i| self.describe(i),
        )
    }

    /// The epoch's stream for one process; see the module documentation.
    pub(super) fn epoch_stream(&self, seed: u64, epoch: u64, rank: usize, world: usize) -> EpochStream {
        let n = self.index.samples.len();
        let shard_order = shuffled(self.index.shards.len(), &[seed, epoch, SHARD_STREAM]);
        let per_rank = n / world.max(1);
        let reads: Vec<usize> = shard_order
            .iter()
            .flat_map(|&s| self.index.starts[s]..self.index.starts[s + 1])
            .skip(rank * per_rank)
            .take(per_rank)
            .collect();
        let order = buffer_shuffle(
            reads.len(),
            self.shuffle_buffer,
            &mut SplitMix64::keyed(&[seed, epoch, rank as u64, world as u64, BUFFER_STREAM]),
        );
        EpochStream { reads, order }
    }
}

/// Keep the shard and buffer draws apart from every other stream keyed by (seed, epoch, ...).
pub(super) const SHARD_STREAM: u64 = 0x7764_7368; // "wdsh"
pub(super) const BUFFER_STREAM: u64 = 0x7764_6266; // "wdbf"

pub(super) fn shuffled(n: usize, keys: &[u64]) -> Vec<usize> {
    let mut rng = SplitMix64::keyed(keys);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    order
}

/// WebDataset's buffer shuffle of positions `0..n`: the first `buffer` fill the buffer; each
/// later one replaces a random buffered one, which is emitted; the rest leave in random order.
/// So the sample emitted at position j was read at a position <= j + buffer.
pub fn buffer_shuffle(n: usize, buffer: usize, rng: &mut SplitMix64) -> Vec<usize> {
    if buffer <= 1 {
        return (0..n).collect();
    }
    let mut held: Vec<usize> = Vec::with_capacity(buffer.min(n));
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        if held.len() < buffer {
            held.push(i);
            continue;
        }
        let k = rng.below(held.len());
        out.push(std::mem::replace(&mut held[k], i));
    }
    while !held.is_empty() {
        let k = rng.below(held.len());
        out.push(held.swap_remove(k));
    }
    out
}

/// A WebDataset split: the index of its shards, read by position ([`Dataset::read`], evaluation)
/// or streamed ([`Dataset::stream_reader`], training).
#[derive(Debug, Clone)]
pub struct WebDataset(pub(super) Arc<Core>);

impl WebDataset {
    /// The shard files, in the order of the configuration.
    pub fn shards(&self) -> &[PathBuf] {
        &self.0.index.shards
    }

    /// The member name (`<key>.<ext>`) and shard of sample `index`.
    pub fn sample_name(&self, index: usize) -> Option<(&str, &Path)> {
        let s = self.0.index.samples.get(index)?;
        Some((&s.name, self.0.index.path(s)))
    }
}

impl Dataset for WebDataset {
    fn len(&self) -> usize {
        self.0.index.samples.len()
    }

    fn classes(&self) -> &[String] {
        &self.0.index.classes
    }

    fn image_shape(&self) -> [usize; 3] {
        [3, self.0.size as usize, self.0.size as usize]
    }

    /// Its shards, with the samples each holds (and each one's size now: 0 for one gone since).
    fn source_files(&self) -> Option<Vec<byol::SourceFile>> {
        let index = &self.0.index;
        let files = index.shards.iter().enumerate().map(|(s, path)| byol::SourceFile {
            path: path.clone(),
            size: std::fs::metadata(path).map_or(0, |m| m.len()),
            images: index.starts[s + 1] - index.starts[s],
        });
        Some(files.collect())
    }

    /// The samples' shard file names, member names and image sizes; each shard is a part.
    fn content(&self) -> Option<byol::Content> {
        let index = &self.0.index;
        Some(crate::dataset::files_content(index.samples.iter().map(|s| {
            let shard = crate::name_text(index.path(s).file_name().unwrap_or_default());
            let name = format!("{shard}/{}", s.name);
            (shard, name, s.size)
        })))
    }

    /// The `.cls` labels: another label under the same member names and sizes is other data.
    fn labels_digest(&self) -> Option<String> {
        use sha2::Digest;
        let mut digest = sha2::Sha256::new();
        for sample in &self.0.index.samples {
            digest.update(sample.label.to_le_bytes());
        }
        Some(crate::dataset::hex(&digest.finalize()))
    }

    fn read(&self, index: usize, out: &mut [u8]) -> Result<Option<i64>, DataError> {
        self.0.sample(index)?;
        self.0.decode(index, self.0.read_at(index), None, out)
    }

    fn read_crops(
        &self,
        index: usize,
        crops: &LoaderCrops,
        (seed, epoch): (u64, u64),
        out: &mut [u8],
    ) -> Result<Option<i64>, DataError> {
        self.0.sample(index)?;
        self.0
            .decode(index, self.0.read_at(index), Some((crops, seed, epoch)), out)
    }

    fn reads_crops(&self) -> bool {
        true
    }

    fn workers(&self) -> usize {
        self.0.workers
    }

    fn describe(&self, index: usize) -> String {
        self.0.describe(index)
    }

    fn take_warning(&self) -> Option<String> {
        self.0.take_warning()
    }

    fn skipped(&self) -> Vec<String> {
        self.0.skipped()
    }

    fn epoch_stream(&self, seed: u64, epoch: u64, rank: usize, world: usize) -> Option<EpochStream> {
        Some(self.0.epoch_stream(seed, epoch, rank, world))
    }

    fn stream_reader(&self, reads: &[usize], wanted: &[usize], lookahead: usize) -> Option<Arc<dyn Dataset>> {
        Some(Arc::new(StreamReader::start(
            self.0.clone(),
            reads.to_vec(),
            wanted,
            lookahead,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_shuffle_is_a_permutation_within_reach_of_the_buffer() {
        for (n, buffer) in [(0, 10), (5, 10), (1000, 10), (1000, 1), (97, 96)] {
            let order = buffer_shuffle(n, buffer, &mut SplitMix64::keyed(&[1, 2]));
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..n).collect::<Vec<_>>());
            for (j, &p) in order.iter().enumerate() {
                assert!(p <= j + buffer.max(1), "position {p} emitted at {j}");
            }
        }
        let order = buffer_shuffle(1000, 10, &mut SplitMix64::keyed(&[1, 2]));
        assert_ne!(order, (0..1000).collect::<Vec<_>>());
    }
}
