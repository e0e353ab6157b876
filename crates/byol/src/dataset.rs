//! The dataset seam: `[dataset] type = "..."` names a [`DatasetSpec`], whose `build` gives the
//! [`Splits`]: a training split to learn from, and optionally a labelled split to evaluate the
//! representation on (kNN bank and queries).

use std::sync::Arc;

use tch::Tensor;

use crate::{BuildContext, DataError, LoaderCrops};

/// The label that images of an unlabelled split carry (their split has no classes).
pub const NO_LABEL: i64 = -1;

/// A file a split reads images from ([`Dataset::source_files`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub path: std::path::PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// How many of the split's images it holds (1 for an image file).
    pub images: usize,
}

/// A [`Dataset::content`]: a digest of the whole split, and the same per part of it (a
/// top-level folder, a shard, a batch file), so that a change can be told and then named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    /// Lowercase hex SHA-256.
    pub digest: String,
    /// In the split's order; empty where the source has no parts.
    pub parts: Vec<ContentPart>,
}

/// One part of a split's [`Content`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentPart {
    /// `cat/` (a folder under the split's), `train-000003.tar` (a shard).
    pub name: String,
    /// Its files (samples, images), unreadable ones included.
    pub files: usize,
    /// Lowercase hex SHA-256, as the whole split's.
    pub digest: String,
}

/// A split of images, all of one shape, with labels; an unlabelled split has no classes and
/// labels every image [`NO_LABEL`].
pub trait Dataset: std::fmt::Debug + Send + Sync {
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Class names, indexed by label; empty for an unlabelled split.
    fn classes(&self) -> &[String];

    /// Whether the images carry labels (kNN and the online probe need them).
    fn is_labelled(&self) -> bool {
        !self.classes().is_empty()
    }

    /// `[channels, height, width]` of every image.
    fn image_shape(&self) -> [usize; 3];

    /// What the split holds, told apart from where it lives (its files' names relative to its
    /// folder and their sizes, in order), so that a resume can tell the run's data moved
    /// elsewhere from other data of the same size, an image replaced under its name included;
    /// a source read whole anyway (CIFAR's files, generated images) digests its bytes instead;
    /// None where a source has neither.
    fn content(&self) -> Option<Content> {
        None
    }

    /// A digest of the images' labels, in order, for sources whose labels are not told by their
    /// files' names (a shard's `.cls` members), so that a resume can tell relabelled data from
    /// the same; None where [`Dataset::content`] covers them (class folders) or there is none.
    fn labels_digest(&self) -> Option<String> {
        None
    }

    /// The files the split reads its images from (an image file each, or the shards that hold
    /// them), so that images two splits share can be found; None for sources without files of
    /// their own (generated images, CIFAR's batch files).
    fn source_files(&self) -> Option<Vec<SourceFile>> {
        None
    }

    /// Writes image `index` into `out` (uint8 CHW, `image_shape` bytes) and returns its label.
    /// `Ok(None)`: the image is unreadable and the dataset skips such images (it counts them for
    /// [`Dataset::take_warning`]); the loader then repeats another image ([`fill_skipped`]). Called
    /// from several threads at once.
    fn read(&self, index: usize, out: &mut [u8]) -> Result<Option<i64>, DataError>;

    /// Writes image `index` as the two views' crops into `out` (view 1's CHW bytes, then view
    /// 2's; `crops.sample_bytes()` in all), cut from the full decoded image before resizing, with
    /// boxes drawn from (seed, epoch, index); returns the label as [`Dataset::read`] does. Only
    /// datasets that keep their files can ([`Dataset::reads_crops`]).
    fn read_crops(
        &self,
        index: usize,
        crops: &LoaderCrops,
        seed_epoch: (u64, u64),
        out: &mut [u8],
    ) -> Result<Option<i64>, DataError> {
        let _ = (index, crops, seed_epoch, out);
        Err(DataError::Config(
            "this dataset holds pre-sized images only; crops from full images need an image_folder \
             with cache = \"none\" or webdataset shards (or set augment.crop_on = \"device\")"
                .into(),
        ))
    }

    /// The whole split as one uint8 `[N, 3, H, W]` tensor and its int64 labels, for datasets
    /// held in memory: the loader can then keep it on the training device and batch by indexing.
    fn as_tensors(&self) -> Option<(Tensor, Tensor)> {
        None
    }

    /// Whether [`Dataset::read_crops`] works.
    fn reads_crops(&self) -> bool {
        false
    }

    /// Whether [`Dataset::len`] counts the images that decoded, not every file of its
    /// [`Dataset::content`]: a split decoded whole when built, its unreadable images left out.
    /// Then fewer images of the same files than a run decoded means some no longer decode.
    fn counts_decoded(&self) -> bool {
        false
    }

    /// The images at `indices` as one uint8 `[N, C, H, W]` CPU tensor, and their labels `[N]`.
    fn batch(&self, indices: &[usize]) -> Result<(Tensor, Tensor), DataError> {
        read_batch(self, indices, resolve_threads(self.workers()))
    }

    /// Threads the loader should decode with by default (0: one per core). 1 for datasets held
    /// in memory, where reading is a copy.
    fn workers(&self) -> usize {
        1
    }

    /// Where image `index` comes from (its file, or shard and member), for messages.
    fn describe(&self, index: usize) -> String {
        format!("image {index}")
    }

    /// One line about problems met since the last call (unreadable images skipped), for the
    /// loader to print once per epoch rather than once per file.
    fn take_warning(&self) -> Option<String> {
        None
    }

    /// Every image left out as unreadable so far, as `<where>: <why>` in index order: the whole
    /// list, of which [`Dataset::take_warning`] names a few.
    fn skipped(&self) -> Vec<String> {
        Vec::new()
    }

    /// For datasets stored as long sequential files (WebDataset tar shards): the training order
    /// of one epoch for process `rank` of `world`, which the loader takes instead of its global
    /// permutation; a pure function of its arguments, so a resumed run continues the same
    /// order. Every process gets `len() / world` samples, disjoint from the others'. None: the
    /// loader shuffles indices itself.
    fn epoch_stream(&self, seed: u64, epoch: u64, rank: usize, world: usize) -> Option<EpochStream> {
        let _ = (seed, epoch, rank, world);
        None
    }

    /// A view of this dataset whose `read`/`read_crops` take the samples `reads[p]`, for the
    /// positions `p` in `wanted` (in that order), from one forward pass over the files in the
    /// order of `reads`, reading at most about `lookahead` samples (plus the dataset's own
    /// shuffle buffer) ahead of the decoders. Only for datasets with an [`Dataset::epoch_stream`].
    fn stream_reader(&self, reads: &[usize], wanted: &[usize], lookahead: usize) -> Option<Arc<dyn Dataset>> {
        let _ = (reads, wanted, lookahead);
        None
    }
}

/// One epoch of a sequentially stored dataset for one process ([`Dataset::epoch_stream`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochStream {
    /// Sample indices in the order one pass over this process's part of the files meets them.
    pub reads: Vec<usize>,
    /// The training order: positions into `reads`.
    pub order: Vec<usize>,
}

impl EpochStream {
    /// The training order as sample indices.
    pub fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.order.iter().map(|&p| self.reads[p])
    }
}

/// `0` means one thread per core.
pub fn resolve_threads(threads: usize) -> usize {
    if threads > 0 {
        threads
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// Reads `indices` into `pixels` (`image_shape` bytes per image) on up to `threads` threads,
/// each taking a contiguous run. Labels are `None` for skipped images. On failure, the error of
/// the first failing position, whatever the thread count.
pub fn read_parallel<D: Dataset + ?Sized>(
    dataset: &D,
    indices: &[usize],
    pixels: &mut [u8],
    threads: usize,
) -> Result<Vec<Option<i64>>, DataError> {
    let sample: usize = dataset.image_shape().iter().product();
    assert_eq!(pixels.len(), indices.len() * sample, "pixel buffer size");
    if indices.is_empty() {
        return Ok(Vec::new());
    }
    let run = indices.len().div_ceil(threads.clamp(1, indices.len()));
    let read_run = |ids: &[usize], out: &mut [u8]| -> Result<Vec<Option<i64>>, DataError> {
        ids.iter()
            .zip(out.chunks_mut(sample))
            .map(|(&i, out)| dataset.read(i, out))
            .collect()
    };
    if run == indices.len() {
        return read_run(indices, pixels);
    }
    let runs: Vec<Result<Vec<Option<i64>>, DataError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = indices
            .chunks(run)
            .zip(pixels.chunks_mut(run * sample))
            .map(|(ids, out)| scope.spawn(move || read_run(ids, out)))
            .collect();
        handles
            .into_iter()
            .zip(indices.chunks(run))
            .map(|(h, ids)| {
                h.join().unwrap_or_else(|_| {
                    Err(DataError::Config(format!(
                        "a decoder thread panicked reading one of {} to {}",
                        dataset.describe(ids[0]),
                        dataset.describe(ids[ids.len() - 1])
                    )))
                })
            })
            .collect()
    });
    let mut labels = Vec::with_capacity(indices.len());
    for run in runs {
        labels.extend(run?);
    }
    Ok(labels)
}

/// Gives each skipped image (label `None`) of the batch `indices` the pixels and label of the
/// next readable image of the batch (cyclically), so that batches keep their size. When no image
/// of the batch is readable, the first readable image after the batch's first index (in dataset
/// order, cyclically), read by `read`, fills them all: a stretch of unreadable files only stops a
/// run when the whole split has none left to read. Either way the result depends on the indices
/// and the files alone, not on how many threads decode.
pub fn fill_skipped<D: Dataset + ?Sized>(
    dataset: &D,
    indices: &[usize],
    pixels: &mut [u8],
    labels: &[Option<i64>],
    sample: usize,
    mut read: impl FnMut(usize, &mut [u8]) -> Result<Option<i64>, DataError>,
) -> Result<Vec<i64>, DataError> {
    let n = labels.len();
    assert_eq!(indices.len(), n, "one label per index");
    if labels.iter().all(Option::is_some) {
        return Ok(labels.iter().map(|l| l.expect("all some")).collect());
    }
    let mut labels = labels.to_vec();
    if labels.iter().all(Option::is_none) {
        labels[0] = Some(first_readable_outside(
            dataset,
            indices,
            &mut pixels[..sample],
            &mut read,
        )?);
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let j = (0..n)
            .map(|k| (i + k) % n)
            .find(|&j| labels[j].is_some())
            .expect("one is readable");
        if j != i {
            pixels.copy_within(j * sample..(j + 1) * sample, i * sample);
        }
        out.push(labels[j].expect("readable"));
    }
    Ok(out)
}

/// The label of the first readable image after `batch[0]` that is not in `batch` (whose images
/// were all skipped), written into `out`.
fn first_readable_outside<D: Dataset + ?Sized>(
    dataset: &D,
    batch: &[usize],
    out: &mut [u8],
    read: &mut impl FnMut(usize, &mut [u8]) -> Result<Option<i64>, DataError>,
) -> Result<i64, DataError> {
    let len = dataset.len();
    let mut in_batch = batch.to_vec();
    in_batch.sort_unstable();
    for k in 1..len {
        let j = (batch[0] + k) % len;
        if in_batch.binary_search(&j).is_ok() {
            continue;
        }
        if let Some(label) = read(j, out)? {
            return Ok(label);
        }
    }
    Err(DataError::Config(format!(
        "none of the {len} images of the split could be read (one of them: {}); check that the files are \
         complete JPEG or PNG images",
        dataset.describe(batch[0])
    )))
}

/// [`Dataset::batch`] by [`read_parallel`] and [`fill_skipped`].
pub fn read_batch<D: Dataset + ?Sized>(
    dataset: &D,
    indices: &[usize],
    threads: usize,
) -> Result<(Tensor, Tensor), DataError> {
    let [c, h, w] = dataset.image_shape();
    let sample = c * h * w;
    let mut pixels = vec![0u8; indices.len() * sample];
    let labels = read_parallel(dataset, indices, &mut pixels, threads)?;
    let labels = fill_skipped(dataset, indices, &mut pixels, &labels, sample, |i, out| {
        dataset.read(i, out)
    })?;
    let images = Tensor::from_slice(&pixels).view([indices.len() as i64, c as i64, h as i64, w as i64]);
    Ok((images, Tensor::from_slice(&labels)))
}

/// The splits a dataset plugin builds.
#[derive(Debug, Clone)]
pub struct Splits {
    /// Images BYOL trains on (labels unused).
    pub train: Arc<dyn Dataset>,
    /// Labelled images evaluated against `train`'s labels by kNN; None disables the kNN monitor.
    pub test: Option<Arc<dyn Dataset>>,
}

/// The splits of [`DatasetSpec::build_listing`], and what building them would say about the
/// data found: one line each, without their `note: ` or `warning: ` prefix.
#[derive(Debug, Clone)]
pub struct Listing {
    pub splits: Splits,
    /// What is worth knowing and needs no change (a folder read as unlabelled).
    pub notes: Vec<String>,
    /// What is most likely not meant (files of other formats passed over, images beside class
    /// folders, class folders without images).
    pub warnings: Vec<String>,
}

impl From<Splits> for Listing {
    fn from(splits: Splits) -> Self {
        Self {
            splits,
            notes: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

/// `[dataset] type = "..."`.
#[typetag::serde(tag = "type")]
pub trait DatasetSpec: std::fmt::Debug + Send + Sync {
    fn build(&self, context: &BuildContext) -> Result<Splits, DataError>;

    /// The splits of [`DatasetSpec::build`] without decoding the images where the source can list
    /// them (a folder cached in memory is listed, not decoded), and the notes and warnings that
    /// `build` prints about what it found, returned instead: enough for their count, classes and
    /// [`Dataset::content`], to check what a run read cheaply, and for `byol-run validate` to say
    /// what a start would. A listed split counts every image, unreadable ones included. Default:
    /// `build` (which prints its own notes), with none returned.
    fn build_listing(&self, context: &BuildContext) -> Result<Listing, DataError> {
        self.build(context).map(Listing::from)
    }

    /// What can be checked without reading the data (folders and files exist, sizes in range),
    /// for `byol-run validate` and before training starts. Default: nothing.
    fn check(&self) -> Result<(), DataError> {
        Ok(())
    }

    /// The side of the squares its images are decoded to, which evaluation resizes from (the
    /// kNN monitor's images): `byol-run embed` and `eval` decode other images to this size
    /// first, so that they see what the monitor saw. None (the default): they decode straight to
    /// the evaluation's resize.
    fn image_size(&self) -> Option<u32> {
        None
    }

    /// How many training images there are and the key of this table that says so, where the
    /// configuration alone says it (generated data: `(2000, "train_size")`), so that a batch
    /// larger than the data is refused before a run or a sweep starts. None (the default): known
    /// once the data is read.
    fn train_images(&self) -> Option<(usize, &'static str)> {
        None
    }

    /// Whether an unreadable image stops the run (`on_bad_image = "error"`) or is skipped, for a
    /// source with that setting: `[eval]`'s labelled folders are read the same way. None (the
    /// default): the source has no such setting, and `[eval]`'s folders skip unreadable images.
    fn stops_at_bad_images(&self) -> Option<bool> {
        None
    }

    /// Whether the built training split keeps its image files, so that the loader can cut
    /// crops from them (`augment.crop_on = "loader"`, [`Dataset::reads_crops`]).
    fn keeps_image_files(&self) -> bool {
        false
    }
}
