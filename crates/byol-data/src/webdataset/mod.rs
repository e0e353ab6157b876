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

mod index;
mod reader;
mod stream;
mod write;

pub use reader::{buffer_shuffle, WebDataset};
pub use write::{write_shards, ShardsWritten};

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use byol::BuildContext;

use crate::dataset::resolve_threads;
use crate::image_folder::OnBadImage;
use crate::{DataError, Dataset, DatasetSpec, Listing, Splits};

use index::Index;
use reader::Core;

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
/// numeric range (counting down where the first bound is the larger), zero-padded to the width
/// of its bounds when either has a leading zero;
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
        let padded = (lo.len() > 1 && lo.starts_with('0')) || (hi.len() > 1 && hi.starts_with('0'));
        let width = if padded { lo.len().max(hi.len()) } else { 0 };
        let numbers: Vec<u64> = match a <= b {
            true => (a..=b).collect(),
            // Counting down, as braceexpand does.
            false => (b..=a).rev().collect(),
        };
        numbers.iter().map(|n| format!("{n:0width$}")).collect()
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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, byol::KeyDocs)]
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
    /// A sample whose image cannot be decoded: "skip" it (one counted warning) or "error" (stop).
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
        fn stops_at_bad_images(&self) -> Option<bool> {
            Some(self.on_bad_image == OnBadImage::Error)
        }

        fn build(&self, _: &BuildContext) -> Result<Splits, DataError> {
            let (splits, warnings) = self.load()?;
            for w in warnings {
                byol::eprint_line!("warning: {w}");
            }
            Ok(splits)
        }

        fn build_listing(&self, _: &BuildContext) -> Result<Listing, DataError> {
            let (splits, warnings) = self.load()?;
            Ok(Listing { warnings, ..splits.into() })
        }

        fn image_size(&self) -> Option<u32> {
            Some(self.image_size)
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
    if let Some(folder) = shards.iter().find(|p| p.is_dir()) {
        return Err(DataError::Config(format!(
            "dataset.{key}: {} is a folder; give the shards themselves: a list of .tar files, or a brace \
             range such as \"{}/train-{{000000..000099}}.tar\"",
            folder.display(),
            folder.display()
        )));
    }
    if let Some(empty) = shards.iter().position(|p| p.as_os_str().is_empty()) {
        return Err(DataError::Config(format!(
            "dataset.{key}: shard {} of {} is an empty path; name each shard's .tar file, or a brace range such \
             as \"train-{{000000..000099}}.tar\"",
            empty + 1,
            shards.len()
        )));
    }
    // A pipe or a device is there, but no file to index and read at offsets.
    if let Some(other) = shards.iter().find(|p| p.exists() && !p.is_file()) {
        return Err(DataError::Config(format!(
            "dataset.{key}: {} exists but is not a regular file (a pipe, socket or device, or a link to one); \
             shards are .tar files read at offsets: copy the shard into a file",
            other.display()
        )));
    }
    let missing: Vec<&PathBuf> = shards.iter().filter(|p| !p.is_file()).collect();
    // A shell glob is no shard name: the pattern is expanded by byol-run, with brace ranges only.
    if let Some(glob) = missing.iter().find(|p| p.to_string_lossy().contains(['*', '?', '['])) {
        return Err(DataError::Config(format!(
            "dataset.{key}: {} does not exist: wildcards (*, ?, [...]) are not expanded; name the shards with a \
             brace range such as \"train-{{000000..000099}}.tar\", or list them",
            glob.display()
        )));
    }
    if let Some(first) = missing.first() {
        // `byol-run shard` writes each shard as `<shard>.partial` and renames it when whole.
        let stopped = missing.iter().map(|p| write::partial(p)).find(|p| p.is_file());
        let why = match stopped {
            Some(partial) => format!(
                "{} is there: a `byol-run shard` stopped before finishing that set. Remove the set (its \
                 shards, its sources.tsv and .tar.partial file, and classes.txt unless another set in that \
                 folder reads it) and run that command again",
                partial.display()
            ),
            None => {
                let cwd = std::env::current_dir().map_or_else(|_| "?".into(), |d| d.display().to_string());
                format!(
                    "relative paths start from the working directory {cwd} (byol-run shard DIR --out PATTERN \
                     writes shards from an image folder)"
                )
            }
        };
        return Err(DataError::Config(format!(
            "dataset.{key}: {} of the {} shards do not exist, the first {}; {why}",
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
        let mut train = self.split("urls", &self.urls, &mut warnings)?;
        let test = match &self.test_urls {
            None => None,
            Some(urls) => {
                if !train.is_labelled() {
                    let why = match train.0.index.labelled {
                        0 => "dataset.urls has none".to_string(),
                        n => format!("only {n} of {} samples have a .cls label in dataset.urls", train.len()),
                    };
                    return Err(DataError::Config(format!(
                        "dataset.test_urls needs labelled training shards (a .cls member in every sample) as the \
                         kNN bank, and {why}; label every sample, or remove dataset.test_urls and set eval.train \
                         and eval.test to labelled image folders (<split>/<class>/<image>)"
                    )));
                }
                let mut test = self.split("test_urls", urls, &mut warnings)?;
                // Without a classes.txt a split's classes are its labels up to its largest: a
                // test split without the top class is still the same classes.
                if test.is_labelled() && numbered(train.classes()) && numbered(test.classes()) {
                    let classes = train.classes().len().max(test.classes().len());
                    train = train.with_numbered_classes(classes);
                    test = test.with_numbered_classes(classes);
                }
                if !test.is_labelled() {
                    return Err(DataError::Config(
                        "dataset.test_urls holds unlabelled samples (no .cls member): the kNN monitor's test \
                         shards need labels; write them from class folders with `byol-run shard`, or set \
                         eval.train and eval.test to labelled image folders instead"
                            .into(),
                    ));
                }
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
        let what = format!("dataset.{key}");
        warnings.extend(crate::dataset::repeated_files_warning(
            &what,
            shards.iter().map(|p| p.as_path()),
        ));
        let index = Index::scan(key, shards, resolve_threads(self.workers), warnings)?;
        Ok(WebDataset(Arc::new(Core {
            index,
            size: self.image_size,
            workers: self.workers,
            shuffle_buffer: self.shuffle_buffer,
            on_bad_image: self.on_bad_image,
            skipped: Default::default(),
        })))
    }
}

/// Class names that are the label numbers themselves (shards without a classes.txt).
fn numbered(classes: &[String]) -> bool {
    classes.iter().enumerate().all(|(i, c)| *c == i.to_string())
}

impl WebDataset {
    /// This split (just read, not shared yet) with the classes `0..classes`.
    fn with_numbered_classes(mut self, classes: usize) -> Self {
        let core = Arc::get_mut(&mut self.0).expect("a split just read is not shared yet");
        core.index.classes = (0..classes).map(|l| l.to_string()).collect();
        self
    }
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
        // Down, and padded, as braceexpand 0.1.7 gives them.
        assert_eq!(expand_braces("x-{03..1}").unwrap(), ["x-03", "x-02", "x-01"]);
        assert_eq!(expand_braces("{10..8}").unwrap(), ["10", "9", "8"]);
        assert!(expand_braces("x-{0..").is_err());
    }
}
