//! `[dataset] type = "webdataset"`: images in tar shards as the `webdataset` package writes them.
//! Members are grouped into samples by key (`000123.jpg` + `000123.cls`: key `000123`, the part
//! of the file name before its first dot); a sample's image is its `.jpg`, `.jpeg` or `.png`
//! member, its optional label the ASCII integer in `.cls`; other members are ignored.
//!
//! Sequential reads, random access where it is free. At start every shard's headers are read
//! once (seeking over the contents) into an index of where each sample's image lies. Training
//! then reads each shard front to back in one forward pass (large buffered reads, seeking only
//! forward over what it does not need), which is what shards are for: a network file system
//! serves a few long streams well and millions of small random reads badly. Evaluation reads in
//! index order, which is file order too. The index also gives what a pure stream could not: the
//! epoch's length before it starts (for the schedule), and the position of every sample, so that
//! a resumed run skips what it already trained on without reading or decoding it.
//!
//! The order of an epoch is a pure function of (seed, epoch, rank, world size): the shards are
//! shuffled with (seed, epoch) and laid end to end; process `rank` of `world` takes the
//! `rank`-th of `world` equal contiguous runs of that stream (whole shards, and at most a part of
//! one at each end; the few samples past `world` equal runs wait for another epoch); a buffer
//! shuffle (WebDataset's `shuffle(n)`: a buffer of `shuffle_buffer` samples, each new sample
//! replacing a random one, which is emitted) reorders the run, seeded by (seed, epoch, rank,
//! world). One reader thread per process feeds all decoder threads, so the order does not depend
//! on the worker count (`dataset.workers` may change on resume), and a sample is at most
//! `shuffle_buffer` positions away from where it is read: the reader holds about that many
//! undecoded samples in memory.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use byol::BuildContext;

use crate::dataset::resolve_threads;
use crate::decode::{center_square_into, decode_rgb};
use crate::image_folder::{OnBadImage, NO_LABEL};
use crate::rng::SplitMix64;
use crate::tar::{Member, TarReader, TarWriter};
use crate::EpochStream;
use crate::{DataError, Dataset, DatasetSpec, LoaderCrops, Splits};

/// Extensions of the members read as a sample's image (lower case; WebDataset lower-cases them).
const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// The file next to the shards that names the classes, one per line, label = line number.
pub const CLASSES_FILE: &str = "classes.txt";

/// Shard files: one pattern, or a list of patterns.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Urls {
    One(String),
    Many(Vec<String>),
}

impl Default for Urls {
    fn default() -> Self {
        Urls::One("data/shards/train-{000000..000009}.tar".into())
    }
}

impl Urls {
    /// Every shard path, brace patterns expanded, in order.
    pub fn expand(&self, key: &str) -> Result<Vec<PathBuf>, DataError> {
        let patterns = match self {
            Urls::One(p) => std::slice::from_ref(p),
            Urls::Many(ps) => ps.as_slice(),
        };
        let mut paths = Vec::new();
        for pattern in patterns {
            if let Some(scheme) = ["http://", "https://", "s3://", "gs://", "pipe:"]
                .iter()
                .find(|s| pattern.starts_with(**s))
            {
                return Err(DataError::Config(format!(
                    "dataset.{key} = {pattern:?}: {scheme} shards are not read here, only files; download or mount them \
                     and name the local paths"
                )));
            }
            let expanded =
                expand_braces(pattern).map_err(|e| DataError::Config(format!("dataset.{key} = {pattern:?}: {e}")))?;
            paths.extend(expanded.into_iter().map(PathBuf::from));
        }
        if paths.is_empty() {
            return Err(DataError::Config(format!("dataset.{key} names no shards")));
        }
        Ok(paths)
    }
}

/// Expands brace patterns as WebDataset (the `braceexpand` package) does: `{000..127}` is a
/// numeric range, zero-padded to the width of its bounds when either has a leading zero;
/// `{a,b}` is a list of alternatives; several braces multiply.
pub fn expand_braces(pattern: &str) -> Result<Vec<String>, String> {
    let Some(open) = pattern.find('{') else {
        if pattern.contains('}') {
            return Err("a '}' without its '{'".into());
        }
        return Ok(vec![pattern.to_string()]);
    };
    let close = open
        + pattern[open..]
            .find('}')
            .ok_or_else(|| format!("the '{{' at character {} is never closed", open + 1))?;
    let (head, body, tail) = (&pattern[..open], &pattern[open + 1..close], &pattern[close + 1..]);
    if body.contains('{') {
        return Err("nested braces are not supported".into());
    }
    let choices: Vec<String> = if let Some((lo, hi)) = body.split_once("..") {
        let parse = |s: &str| {
            s.parse::<u64>()
                .map_err(|_| format!("{{{body}}}: a range needs two whole numbers, as in {{000000..000127}}"))
        };
        let (a, b) = (parse(lo)?, parse(hi)?);
        if a > b {
            return Err(format!("{{{body}}}: the range runs backwards"));
        }
        let padded = (lo.len() > 1 && lo.starts_with('0')) || (hi.len() > 1 && hi.starts_with('0'));
        let width = if padded { lo.len().max(hi.len()) } else { 0 };
        (a..=b).map(|n| format!("{n:0width$}")).collect()
    } else if body.contains(',') {
        body.split(',').map(str::to_string).collect()
    } else {
        // braceexpand leaves a brace without a range or a comma as it is.
        vec![format!("{{{body}}}")]
    };
    let rest = expand_braces(tail)?;
    let mut out = Vec::with_capacity(choices.len() * rest.len());
    for c in &choices {
        for r in &rest {
            out.push(format!("{head}{c}{r}"));
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WebDatasetConfig {
    /// Training shards: a pattern with brace ranges as WebDataset writes them
    /// (`"data/shards/train-{000000..000127}.tar"`), or a list of patterns and paths. Relative
    /// paths start from the working directory. A `classes.txt` next to the first shard names
    /// the classes (line n: label n), as `byol-run shard` writes it.
    pub urls: Urls,
    /// Labelled held-out shards for the kNN monitor (optional; needs labelled training shards).
    pub test_urls: Option<Urls>,
    /// Images are resized (shorter side) and centre-cropped to this square size when decoded,
    /// unless the loader cuts crops from the full image (`augment.crop_on = "loader"`).
    pub image_size: u32,
    /// Decoder threads of the loader, and threads that read the shards' headers at start
    /// (0: all cores).
    pub workers: usize,
    /// Samples in the shuffle buffer (held undecoded in memory): each sample is emitted at most
    /// this many positions away from where its shard holds it. 0 or 1: shard order only.
    pub shuffle_buffer: usize,
    pub on_bad_image: OnBadImage,
}

impl Default for WebDatasetConfig {
    fn default() -> Self {
        Self {
            urls: Urls::default(),
            test_urls: None,
            image_size: 32,
            workers: 0,
            shuffle_buffer: 1000,
            on_bad_image: OnBadImage::Skip,
        }
    }
}

byol::register_plugin! {
    name: "webdataset",
    description: "WebDataset tar shards (key.jpg/.jpeg/.png + optional key.cls), read sequentially, shuffled by shard and buffer",
    optional: "test_urls = \"data/shards/test-{000000..000009}.tar\"   # labelled, for the kNN monitor",
    impl DatasetSpec for WebDatasetConfig {
        fn build(&self, _: &BuildContext) -> Result<Splits, DataError> {
            let (splits, warnings) = self.load()?;
            for w in warnings {
                eprintln!("warning: {w}");
            }
            Ok(splits)
        }

        fn check(&self) -> Result<(), DataError> {
            if self.image_size == 0 {
                return Err(DataError::Config("dataset.image_size = 0 must be >= 1".into()));
            }
            check_shards("urls", &self.urls.expand("urls")?)?;
            if let Some(test) = &self.test_urls {
                check_shards("test_urls", &test.expand("test_urls")?)?;
            }
            Ok(())
        }

        fn keeps_image_files(&self) -> bool {
            true
        }
    }
}

fn check_shards(key: &str, shards: &[PathBuf]) -> Result<(), DataError> {
    let missing: Vec<&PathBuf> = shards.iter().filter(|p| !p.is_file()).collect();
    if let Some(first) = missing.first() {
        let cwd = std::env::current_dir().map_or_else(|_| "?".into(), |d| d.display().to_string());
        return Err(DataError::Config(format!(
            "dataset.{key}: {} of the {} shards do not exist, the first {}; relative paths start from the working \
             directory {cwd} (byol-run shard DIR --out PATTERN writes shards from an image folder)",
            missing.len(),
            shards.len(),
            first.display()
        )));
    }
    Ok(())
}

impl WebDatasetConfig {
    /// Builds the splits and returns the warnings `build` prints (samples without an image,
    /// partly labelled shards).
    pub fn load(&self) -> Result<(Splits, Vec<String>), DataError> {
        self.check()?;
        let mut warnings = Vec::new();
        let train = self.split("urls", &self.urls, &mut warnings)?;
        let test = match &self.test_urls {
            None => None,
            Some(urls) => {
                if !train.is_labelled() {
                    return Err(DataError::Config(
                        "dataset.test_urls needs labelled training shards (.cls members) as the kNN bank, and \
                         dataset.urls has none; remove dataset.test_urls and set eval.train and eval.test to \
                         labelled image folders (<split>/<class>/<image>)"
                            .into(),
                    ));
                }
                let test = self.split("test_urls", urls, &mut warnings)?;
                if test.classes() != train.classes() {
                    return Err(DataError::Config(format!(
                        "dataset.test_urls has classes [{}], dataset.urls has [{}]; both need the same {CLASSES_FILE}",
                        test.classes().join(", "),
                        train.classes().join(", ")
                    )));
                }
                Some(Arc::new(test) as Arc<dyn Dataset>)
            }
        };
        Ok((
            Splits {
                train: Arc::new(train),
                test,
            },
            warnings,
        ))
    }

    fn split(&self, key: &str, urls: &Urls, warnings: &mut Vec<String>) -> Result<WebDataset, DataError> {
        let shards = urls.expand(key)?;
        let index = Index::scan(key, shards, resolve_threads(self.workers), warnings)?;
        Ok(WebDataset(Arc::new(Core {
            index,
            size: self.image_size,
            workers: self.workers,
            shuffle_buffer: self.shuffle_buffer,
            on_bad_image: self.on_bad_image,
            bad: Mutex::default(),
        })))
    }
}

/// Where one sample's image lies.
#[derive(Debug, Clone)]
struct Sample {
    shard: u32,
    offset: u64,
    size: u64,
    label: i64,
    /// The member's name (`<key>.<ext>`), for messages.
    name: Box<str>,
}

/// Every sample of a split, shard after shard, each shard's in file order.
#[derive(Debug)]
struct Index {
    shards: Vec<PathBuf>,
    samples: Vec<Sample>,
    /// Samples of shard s: `starts[s]..starts[s + 1]`.
    starts: Vec<usize>,
    classes: Vec<String>,
}

/// What one shard's headers hold.
#[derive(Debug, Default)]
struct ShardListing {
    samples: Vec<Sample>,
    /// Samples with a label, and without an image (their key, and the extensions they had).
    labelled: usize,
    imageless: Vec<(String, Vec<String>)>,
}

/// `dir/name.ext` -> (`dir/name`, `ext`): the key is everything before the first dot of the
/// file name (WebDataset's `base_plus_ext`); the extension is lower-cased.
fn split_key(name: &str) -> Option<(&str, String)> {
    let file_start = name.rfind('/').map_or(0, |i| i + 1);
    let dot = file_start + name[file_start..].find('.')?;
    if dot == file_start {
        return None; // a hidden file such as `.DS_Store`, not a sample
    }
    Some((&name[..dot], name[dot + 1..].to_ascii_lowercase()))
}

fn list_shard(shard_id: u32, path: &Path) -> Result<ShardListing, DataError> {
    let fail = |message: String| DataError::Image {
        path: path.to_path_buf(),
        message,
    };
    let file = File::open(path).map_err(|e| fail(format!("cannot open: {e}")))?;
    let length = file.metadata().map_err(|e| fail(format!("cannot stat: {e}")))?.len();
    let mut tar = TarReader::new(file, length);
    let mut listing = ShardListing::default();
    // The sample being gathered: key, image member, label, other extensions.
    struct Pending {
        key: String,
        image: Option<Member>,
        label: Option<i64>,
        others: Vec<String>,
    }
    let mut pending: Option<Pending> = None;
    let flush = |p: Pending, listing: &mut ShardListing| match p.image {
        Some(image) => {
            listing.labelled += p.label.is_some() as usize;
            listing.samples.push(Sample {
                shard: shard_id,
                offset: image.offset,
                size: image.size,
                label: p.label.unwrap_or(NO_LABEL),
                name: image.name.into(),
            });
        }
        None => listing.imageless.push((p.key, p.others)),
    };
    loop {
        let member = tar
            .next_member()
            .map_err(|e| fail(format!("{e}; is it a tar shard, and was it written completely?")))?;
        let Some(member) = member else { break };
        let Some((key, ext)) = split_key(&member.name) else {
            continue;
        };
        if pending.as_ref().is_none_or(|p| p.key != key) {
            if let Some(p) = pending.take() {
                flush(p, &mut listing);
            }
            pending = Some(Pending {
                key: key.to_string(),
                image: None,
                label: None,
                others: Vec::new(),
            });
        }
        let p = pending.as_mut().expect("set above");
        if IMAGE_EXTENSIONS.contains(&ext.as_str()) {
            if p.image.is_none() {
                p.image = Some(member);
            }
        } else if ext == "cls" {
            let data = tar.read_member(&member).map_err(fail)?;
            let text = String::from_utf8_lossy(&data);
            let label = text.trim().parse::<i64>().ok().filter(|&l| l >= 0).ok_or_else(|| {
                fail(format!(
                    "sample {key}: {} holds {:?}, not a class number (an ASCII integer such as 3)",
                    member.name,
                    text.chars().take(40).collect::<String>()
                ))
            })?;
            p.label = Some(label);
        } else {
            p.others.push(ext);
        }
    }
    if let Some(p) = pending.take() {
        flush(p, &mut listing);
    }
    Ok(listing)
}

impl Index {
    /// Lists every shard (on up to `threads` threads) and joins them in shard order.
    fn scan(key: &str, shards: Vec<PathBuf>, threads: usize, warnings: &mut Vec<String>) -> Result<Self, DataError> {
        let threads = threads.clamp(1, shards.len());
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results: Mutex<Vec<Option<Result<ShardListing, DataError>>>> =
            Mutex::new((0..shards.len()).map(|_| None).collect());
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| loop {
                    let s = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if s >= shards.len() {
                        return;
                    }
                    let listing = list_shard(s as u32, &shards[s]);
                    results.lock().unwrap_or_else(|e| e.into_inner())[s] = Some(listing);
                });
            }
        });
        let mut samples = Vec::new();
        let mut starts = vec![0];
        let mut labelled = 0;
        let mut imageless: Vec<(usize, String, Vec<String>)> = Vec::new();
        let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
        for (s, listing) in results.into_iter().enumerate() {
            let listing = listing.expect("every shard listed")?;
            labelled += listing.labelled;
            samples.extend(listing.samples);
            starts.push(samples.len());
            imageless.extend(listing.imageless.into_iter().map(|(k, e)| (s, k, e)));
        }
        if let Some((s, k, exts)) = imageless.first() {
            let webp = imageless.iter().any(|(_, _, e)| e.iter().any(|e| e == "webp"));
            warnings.push(format!(
                "dataset.{key}: {} sample(s) have no .jpg, .jpeg or .png member and are left out (first: {} key {k}, \
                 with {}){}",
                imageless.len(),
                shards[*s].display(),
                if exts.is_empty() {
                    "no other members".to_string()
                } else {
                    exts.iter().map(|e| format!(".{e}")).collect::<Vec<_>>().join(", ")
                },
                if webp {
                    "; WebP is not decoded here: convert such images to JPEG or PNG"
                } else {
                    ""
                }
            ));
        }
        if samples.is_empty() {
            return Err(DataError::Config(format!(
                "dataset.{key}: the {} shard(s) hold no samples with a .jpg, .jpeg or .png member (first shard {})",
                shards.len(),
                shards[0].display()
            )));
        }
        let classes = if labelled == samples.len() {
            classes_of(key, &shards, &samples)?
        } else {
            if labelled > 0 {
                warnings.push(format!(
                    "dataset.{key}: {labelled} of {} samples have a .cls label, the others none; reading all as \
                     unlabelled (the kNN monitor and online probe then need eval.train and eval.test)",
                    samples.len()
                ));
                for s in &mut samples {
                    s.label = NO_LABEL;
                }
            }
            Vec::new()
        };
        Ok(Self {
            shards,
            samples,
            starts,
            classes,
        })
    }

    fn path(&self, sample: &Sample) -> &Path {
        &self.shards[sample.shard as usize]
    }
}

/// Class names from `classes.txt` next to the first shard, or the label numbers themselves.
fn classes_of(key: &str, shards: &[PathBuf], samples: &[Sample]) -> Result<Vec<String>, DataError> {
    let most = samples.iter().map(|s| s.label).max().unwrap_or(0) as usize;
    let file = shards[0].parent().unwrap_or(Path::new("")).join(CLASSES_FILE);
    if !file.is_file() {
        return Ok((0..=most).map(|l| l.to_string()).collect());
    }
    let text = std::fs::read_to_string(&file)
        .map_err(|e| DataError::Config(format!("dataset.{key}: cannot read {}: {e}", file.display())))?;
    let classes: Vec<String> = text
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    if most >= classes.len() {
        let s = samples
            .iter()
            .find(|s| s.label as usize >= classes.len())
            .expect("the largest");
        return Err(DataError::Config(format!(
            "dataset.{key}: {} names {} classes, and sample {} in {} has label {}; fix or remove the class list",
            file.display(),
            classes.len(),
            s.name,
            shards[s.shard as usize].display(),
            s.label
        )));
    }
    Ok(classes)
}

/// Unreadable samples met so far (index -> reason), and how many were already reported.
#[derive(Debug, Default)]
struct BadSamples {
    seen: BTreeMap<usize, String>,
    reported: usize,
}

#[derive(Debug)]
struct Core {
    index: Index,
    size: u32,
    workers: usize,
    shuffle_buffer: usize,
    on_bad_image: OnBadImage,
    bad: Mutex<BadSamples>,
}

const SKIP_HINT: &str = "set dataset.on_bad_image = \"error\" to stop at the first one instead";

impl Core {
    fn sample(&self, index: usize) -> Result<&Sample, DataError> {
        self.index.samples.get(index).ok_or_else(|| {
            DataError::Config(format!(
                "index {index} out of range for {} samples",
                self.index.samples.len()
            ))
        })
    }

    /// The image bytes of sample `index`, read where the index says they lie.
    fn read_at(&self, index: usize) -> Result<Vec<u8>, String> {
        use std::os::unix::fs::FileExt;
        let sample = &self.index.samples[index];
        let file = File::open(self.index.path(sample)).map_err(|e| format!("cannot open the shard: {e}"))?;
        let mut bytes = vec![0u8; sample.size as usize];
        file.read_exact_at(&mut bytes, sample.offset)
            .map_err(|e| format!("cannot read {} bytes at byte {}: {e}", sample.size, sample.offset))?;
        Ok(bytes)
    }

    /// Decodes sample `index` from its bytes: the centre square, or both views' crops.
    fn decode(
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
                let mut bad = self.bad.lock().unwrap_or_else(|e| e.into_inner());
                bad.seen.entry(index).or_insert(why);
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

    fn take_warning(&self) -> Option<String> {
        let mut bad = self.bad.lock().unwrap_or_else(|e| e.into_inner());
        let total = bad.seen.len();
        if total == bad.reported {
            return None;
        }
        let (&first, why) = bad.seen.iter().next().expect("at least one");
        let sample = &self.index.samples[first];
        let line = format!(
            "skipped {total} unreadable sample(s) of {} in {} shard(s) (first: {} member {}: {why}); {SKIP_HINT}",
            self.index.samples.len(),
            self.index.shards.len(),
            self.index.path(sample).display(),
            sample.name
        );
        bad.reported = total;
        Some(line)
    }

    /// The epoch's stream for one process; see the module documentation.
    fn epoch_stream(&self, seed: u64, epoch: u64, rank: usize, world: usize) -> EpochStream {
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
const SHARD_STREAM: u64 = 0x7764_7368; // "wdsh"
const BUFFER_STREAM: u64 = 0x7764_6266; // "wdbf"

fn shuffled(n: usize, keys: &[u64]) -> Vec<usize> {
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
pub struct WebDataset(Arc<Core>);

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

    fn take_warning(&self) -> Option<String> {
        self.0.take_warning()
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

/// Samples read by the reader thread and not yet taken: index -> bytes and how many times the
/// training order still takes them.
#[derive(Default)]
struct Buffered {
    ready: HashMap<usize, (Vec<u8>, usize)>,
    /// Decoder threads waiting for a sample the reader has not handed over.
    waiting: usize,
    /// The reader waits for room: until no more than `low_water` samples are buffered (waking
    /// it for every sample taken would cost a context switch per sample).
    reader_waiting: bool,
    low_water: usize,
    stop: bool,
    /// The reader has read every wanted sample, or failed (the reason).
    finished: bool,
    failure: Option<String>,
}

struct StreamShared {
    state: Mutex<Buffered>,
    changed: Condvar,
    /// `Buffered::waiting`, readable without the lock: the reader hands its batch over early
    /// when a decoder waits.
    waiting: std::sync::atomic::AtomicUsize,
}

impl StreamShared {
    fn lock(&self) -> MutexGuard<'_, Buffered> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The split seen through one forward pass over its shards: a thread reads the wanted samples
/// in file order, at most about `shuffle_buffer + lookahead` ahead of the decoders, which take
/// them by index. Dropping it stops the thread.
struct StreamReader {
    core: Arc<Core>,
    shared: Arc<StreamShared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for StreamReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReader").finish_non_exhaustive()
    }
}

impl StreamReader {
    /// Reads `reads[p]` for every position `p` in `wanted`, in the order of `reads`.
    fn start(core: Arc<Core>, reads: Vec<usize>, wanted: &[usize], lookahead: usize) -> Self {
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
    fn take(&self, index: usize) -> Result<Vec<u8>, DataError> {
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
fn read_stream(
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
        let at = |e: std::io::Error| format!("{}: cannot read member {}: {e}", path.display(), sample.name);
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

    fn take_warning(&self) -> Option<String> {
        self.core.take_warning()
    }
}

/// What [`write_shards`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardsWritten {
    pub samples: usize,
    pub shards: Vec<PathBuf>,
    /// The `urls` pattern that names them (`dir/train-{000000..000012}.tar`).
    pub urls: String,
    /// Class names when the folder has class sub-folders (written to `classes.txt`).
    pub classes: Vec<String>,
    /// Class folders without images (their labels still count).
    pub warnings: Vec<String>,
}

/// Writes the images under `source` into tar shards of `per_shard` samples each, named by
/// `pattern` with one printf-style `%06d` (or `%d`) for the shard number, as WebDataset's
/// `ShardWriter` names them. Class sub-folders become `.cls` labels and a `classes.txt` next to
/// the shards; a folder without class sub-folders gives unlabelled samples (every image at any
/// depth). Image files are copied as they are, not re-encoded. With `shuffle_seed`, samples are
/// written in a random order, so that each shard mixes the classes (a shard shuffle and a buffer
/// shuffle cannot mix shards that each hold one class); keys number the samples as written.
pub fn write_shards(
    source: &Path,
    pattern: &str,
    per_shard: usize,
    shuffle_seed: Option<u64>,
) -> Result<ShardsWritten, DataError> {
    if per_shard == 0 {
        return Err(DataError::Config("--per-shard must be at least 1".into()));
    }
    let (head, width, tail) = parse_pattern(pattern)?;
    let (classes, mut files, warnings) = crate::image_folder::images_for_shards(source)?;
    if let Some(seed) = shuffle_seed {
        let order = shuffled(files.len(), &[seed, 0x7764_7772]);
        files = order.into_iter().map(|i| files[i].clone()).collect();
    }
    let shard_name = |n: usize| PathBuf::from(format!("{head}{n:0width$}{tail}"));
    let first = shard_name(0);
    let dir = first
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(|e| DataError::Config(format!("cannot create the folder {}: {e}", dir.display())))?;
    let key_width = 6.max(files.len().saturating_sub(1).to_string().len());
    let mut shards = Vec::new();
    for (n, chunk) in files.chunks(per_shard).enumerate() {
        let path = shard_name(n);
        let partial = path.with_extension("tar.partial");
        let write_err = |e: std::io::Error| DataError::Config(format!("cannot write {}: {e}", partial.display()));
        let file = File::create(&partial).map_err(write_err)?;
        let mut tar = TarWriter::new(std::io::BufWriter::with_capacity(1 << 20, file));
        for (i, (image, label)) in chunk.iter().enumerate() {
            let key = format!("{:0key_width$}", n * per_shard + i);
            let ext = image
                .extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase())
                .unwrap_or_default();
            let bytes =
                std::fs::read(image).map_err(|e| DataError::Config(format!("cannot read {}: {e}", image.display())))?;
            tar.append(&format!("{key}.{ext}"), &bytes).map_err(write_err)?;
            if *label != NO_LABEL {
                tar.append(&format!("{key}.cls"), label.to_string().as_bytes())
                    .map_err(write_err)?;
            }
        }
        let file = tar
            .finish()
            .map_err(write_err)?
            .into_inner()
            .map_err(|e| write_err(e.into_error()))?;
        file.sync_all().map_err(write_err)?;
        // Renamed when complete, so that a killed run never leaves a short shard under the name.
        std::fs::rename(&partial, &path).map_err(|e| {
            DataError::Config(format!(
                "cannot rename {} to {}: {e}",
                partial.display(),
                path.display()
            ))
        })?;
        shards.push(path);
    }
    if !classes.is_empty() {
        let list = dir.join(CLASSES_FILE);
        let text: String = classes.iter().map(|c| format!("{c}\n")).collect();
        std::fs::write(&list, text).map_err(|e| DataError::Config(format!("cannot write {}: {e}", list.display())))?;
    }
    let last = shards.len() - 1;
    let urls = if last == 0 {
        shard_name(0).display().to_string()
    } else {
        format!("{head}{{{:0width$}..{last:0width$}}}{tail}", 0)
    };
    Ok(ShardsWritten {
        samples: files.len(),
        shards,
        urls,
        classes,
        warnings,
    })
}

/// `train-%06d.tar` -> (`train-`, 6, `.tar`).
fn parse_pattern(pattern: &str) -> Result<(&str, usize, &str), DataError> {
    let bad = || {
        DataError::Config(format!(
            "--out {pattern:?} needs one %06d (or %d) where the shard number goes, as in shards/train-%06d.tar"
        ))
    };
    let start = pattern.find('%').ok_or_else(bad)?;
    let rest = &pattern[start + 1..];
    let d = rest.find('d').ok_or_else(bad)?;
    let spec = &rest[..d];
    if !spec.chars().all(|c| c.is_ascii_digit()) || rest[d + 1..].contains('%') {
        return Err(bad());
    }
    let width = if spec.is_empty() {
        0
    } else {
        spec.parse().map_err(|_| bad())?
    };
    Ok((&pattern[..start], width, &rest[d + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn braces_expand_as_webdataset_writes_them() {
        assert_eq!(
            expand_braces("d/train-{000000..000002}.tar").unwrap(),
            ["d/train-000000.tar", "d/train-000001.tar", "d/train-000002.tar"]
        );
        assert_eq!(expand_braces("{8..10}").unwrap(), ["8", "9", "10"]);
        assert_eq!(expand_braces("{a,b}-{0..1}").unwrap(), ["a-0", "a-1", "b-0", "b-1"]);
        assert_eq!(expand_braces("plain.tar").unwrap(), ["plain.tar"]);
        assert!(expand_braces("x-{3..1}").is_err());
        assert!(expand_braces("x-{0..").is_err());
    }

    #[test]
    fn keys_are_the_name_before_the_first_dot() {
        assert_eq!(split_key("000001.jpg"), Some(("000001", "jpg".into())));
        assert_eq!(
            split_key("a.b/x/000001.seg.PNG"),
            Some(("a.b/x/000001", "seg.png".into()))
        );
        assert_eq!(split_key("dir/.hidden"), None);
        assert_eq!(split_key("noext"), None);
    }

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

    #[test]
    fn patterns_take_one_printf_number() {
        assert_eq!(parse_pattern("s/train-%06d.tar").unwrap(), ("s/train-", 6, ".tar"));
        assert_eq!(parse_pattern("%d.tar").unwrap(), ("", 0, ".tar"));
        assert!(parse_pattern("train.tar").is_err());
        assert!(parse_pattern("%06d-%06d.tar").is_err());
    }
}
