//! `[dataset] type = "image_folder"`: the ImageNet layout (`<split>/<class>/<image>`), labels from
//! folder names, JPEG (baseline, progressive) and PNG; grayscale, CMYK and alpha converted to RGB.
//! Unlabelled data (`labels = "none"`, or a `train` folder without class sub-folders) is every
//! image under `train`, recursively, sorted by path. Optionally a file list picks the images. Files with other extensions are ignored; unreadable
//! images are skipped with one counted warning, or stop the run (`on_bad_image = "error"`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use byol::BuildContext;
use serde::{Deserialize, Serialize};

use crate::crop::cut_views;
use crate::dataset::{read_parallel, resolve_threads};
use crate::decode::read_square_into;
use crate::{DataError, Dataset, DatasetSpec, ImageSet, Splits};

/// File extensions read as images (any case); every other file is ignored.
const EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// What to do with an image that cannot be decoded.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnBadImage {
    /// Skip it, count it, and warn once with the count.
    #[default]
    Skip,
    /// Stop with the file's path.
    Error,
}

/// Where the labels of the images come from.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Labels {
    /// One sub-folder per class (`<split>/<class>/<image>`). A `train` folder without class
    /// sub-folders that holds images is read as unlabelled instead, with a note.
    #[default]
    Folders,
    /// No labels: every image under `train`, at any depth, sorted by path. BYOL needs no labels;
    /// the kNN monitor and the online probe then use `[eval] train` and `test`.
    None,
}

pub use byol::dataset::NO_LABEL;

/// Where decoded images live.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Cache {
    /// Decode every image once, at start, into memory (small datasets such as CIFAR).
    #[default]
    Memory,
    /// Decode on the fly, batch by batch, on the loader's worker threads.
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ImageFolderConfig {
    /// Training images: one sub-folder per class, or any folder tree with `labels = "none"`.
    pub train: PathBuf,
    /// `"folders"` (class sub-folders) or `"none"` (unlabelled).
    pub labels: Labels,
    /// Labelled held-out images in the same layout, for the kNN monitor (optional; needs
    /// labelled training images).
    pub test: Option<PathBuf>,
    /// Optional text file naming the training images to use, one `<class>/<file>` path per
    /// line relative to `train` (blank lines and `#` comments ignored); classes are still all
    /// sub-folders of `train`. With `labels = "none"`, any path relative to `train`.
    pub file_list: Option<PathBuf>,
    /// The same for `test`.
    pub test_file_list: Option<PathBuf>,
    /// Images are resized (shorter side) and centre-cropped to this square size when decoded;
    /// smaller images are upscaled.
    pub image_size: u32,
    pub cache: Cache,
    /// Decoder threads: the loader's prefetching workers with `cache = "none"`, the threads that
    /// fill the cache with `cache = "memory"` (0: all cores).
    pub workers: usize,
    /// Use at most this many images per class (0: all), the first ones by file name; unlabelled
    /// images count as one class.
    pub limit_per_class: usize,
    pub on_bad_image: OnBadImage,
}

impl Default for ImageFolderConfig {
    fn default() -> Self {
        Self {
            train: PathBuf::from("data/train"),
            labels: Labels::Folders,
            test: None,
            file_list: None,
            test_file_list: None,
            image_size: 32,
            cache: Cache::Memory,
            workers: 0,
            limit_per_class: 0,
            on_bad_image: OnBadImage::Skip,
        }
    }
}

byol::register_plugin! {
    name: "image_folder",
    description: "images in <split>/<class>/ folders (JPEG, PNG), labels from folder names; or unlabelled, any folder tree",
    optional: "test = \"data/test\"                # labelled split for the kNN monitor\n\
               file_list = \"subset.txt\"          # only these images: <class>/<file> lines relative to train\n\
               test_file_list = \"test-subset.txt\"",
    impl DatasetSpec for ImageFolderConfig {
        fn build(&self, _: &BuildContext) -> Result<Splits, DataError> {
            let (splits, warnings, notes) = self.load_with_notes()?;
            for note in notes {
                eprintln!("note: {note}");
            }
            for w in warnings {
                eprintln!("warning: {w}");
            }
            Ok(splits)
        }

        fn check(&self) -> Result<(), DataError> {
            let missing = |key: &str, path: &Path, what: &str| {
                DataError::Config(format!("dataset.{key} = {:?}: {what} does not exist (paths are relative to the working directory)", path.display().to_string()))
            };
            if !self.train.is_dir() {
                return Err(missing("train", &self.train, "this folder"));
            }
            if let Some(test) = self.test.as_deref().filter(|t| !t.is_dir()) {
                return Err(missing("test", test, "this folder"));
            }
            if self.labels == Labels::None && self.test.is_some() {
                return Err(test_needs_labels(&self.train));
            }
            for (key, list) in [("file_list", &self.file_list), ("test_file_list", &self.test_file_list)] {
                if let Some(list) = list.as_deref().filter(|l| !l.is_file()) {
                    return Err(missing(key, list, "this file"));
                }
            }
            if self.image_size == 0 {
                return Err(DataError::Config("dataset.image_size = 0 must be >= 1".into()));
            }
            Ok(())
        }

        fn keeps_image_files(&self) -> bool {
            self.cache == Cache::None
        }
    }
}

impl ImageFolderConfig {
    /// Builds the splits and returns the warnings that `build` prints (unreadable images skipped
    /// while filling the memory cache, class folders without images): one line each.
    pub fn load(&self) -> Result<(Splits, Vec<String>), DataError> {
        self.load_with_notes().map(|(splits, warnings, _)| (splits, warnings))
    }

    /// [`ImageFolderConfig::load`], and the notes that `build` prints (a `train` folder without
    /// class sub-folders read as unlabelled).
    pub fn load_with_notes(&self) -> Result<(Splits, Vec<String>, Vec<String>), DataError> {
        if self.image_size == 0 {
            return Err(DataError::Config("dataset.image_size must be at least 1".into()));
        }
        let mut warnings = Vec::new();
        let mut notes = Vec::new();
        let labels = match self.labels {
            Labels::Folders if !has_class_folders(&self.train)? && has_images_under(&self.train)? => {
                notes.push(format!(
                    "dataset.train = {}: no class sub-folders, so its images are read as unlabelled \
                     (labels = \"none\"; set it to silence this note)",
                    self.train.display()
                ));
                Labels::None
            }
            labels => labels,
        };
        if labels == Labels::None && self.test.is_some() {
            return Err(test_needs_labels(&self.train));
        }
        let train = self.split(
            "train",
            &self.train,
            self.file_list.as_deref(),
            labels,
            None,
            &mut warnings,
        )?;
        let test = match &self.test {
            Some(dir) => Some(self.split(
                "test",
                dir,
                self.test_file_list.as_deref(),
                Labels::Folders,
                Some(train.classes()),
                &mut warnings,
            )?),
            None => None,
        };
        Ok((Splits { train, test }, warnings, notes))
    }

    fn split(
        &self,
        key: &str,
        dir: &Path,
        file_list: Option<&Path>,
        labels: Labels,
        classes: Option<&[String]>,
        warnings: &mut Vec<String>,
    ) -> Result<Arc<dyn Dataset>, DataError> {
        let listing = match labels {
            Labels::Folders => scan(key, dir, file_list, self.limit_per_class, warnings)?,
            Labels::None => scan_unlabelled(key, dir, file_list, self.limit_per_class)?,
        };
        if let Some(expected) = classes {
            if expected != listing.classes.as_slice() {
                return Err(DataError::Config(format!(
                    "dataset.{key}: {} has classes [{}], the training split has [{}]; both splits need the same class folders",
                    dir.display(),
                    listing.classes.join(", "),
                    expected.join(", ")
                )));
            }
        }
        let folder = DecodingFolder {
            listing,
            size: self.image_size,
            workers: self.workers,
            on_bad_image: self.on_bad_image,
            bad: Mutex::default(),
        };
        Ok(match self.cache {
            Cache::Memory => {
                let (set, warning) = folder.decode_all()?;
                warnings.extend(warning);
                Arc::new(set)
            }
            Cache::None => Arc::new(folder),
        })
    }
}

/// The files of one split and their labels (no classes and [`NO_LABEL`] when unlabelled).
#[derive(Debug)]
struct Listing {
    root: PathBuf,
    classes: Vec<String>,
    files: Vec<(PathBuf, i64)>,
}

/// Image files with their labels.
pub(crate) type LabelledFiles = Vec<(PathBuf, i64)>;

/// The images of `dir` as `byol-run shard` packs them: with class sub-folders, each one's images
/// (labels = folder order, as `image_folder` reads them); without, every image at any depth,
/// unlabelled ([`NO_LABEL`]). Returns the classes, the files, and warnings (empty class folders).
pub(crate) fn images_for_shards(dir: &Path) -> Result<(Vec<String>, LabelledFiles, Vec<String>), DataError> {
    if !dir.is_dir() {
        return Err(DataError::Config(format!(
            "{} is not a folder; give a folder of images (one sub-folder per class, or any tree of images)",
            dir.display()
        )));
    }
    let mut warnings = Vec::new();
    let listing = if has_class_folders(dir)? {
        scan("train", dir, None, 0, &mut warnings)?
    } else {
        scan_unlabelled("train", dir, None, 0)?
    };
    Ok((listing.classes, listing.files, warnings))
}

fn test_needs_labels(train: &Path) -> DataError {
    DataError::Config(format!(
        "dataset.test needs labelled training images as the kNN bank, and dataset.train = {} is unlabelled; \
         remove dataset.test and set eval.train and eval.test to labelled image folders (<split>/<class>/<image>)",
        train.display()
    ))
}

/// Whether `dir` has a sub-folder that can be a class (hidden ones cannot). False for a folder
/// that does not exist: `scan` reports that with the fix.
fn has_class_folders(dir: &Path) -> Result<bool, DataError> {
    if !dir.is_dir() {
        return Ok(false);
    }
    Ok(list(dir)?.iter().any(|p| p.is_dir() && !is_hidden(p)))
}

fn has_images_under(dir: &Path) -> Result<bool, DataError> {
    if !dir.is_dir() {
        return Ok(false);
    }
    Ok(!collect_images(dir)?.is_empty())
}

/// Every image file under `dir`, at any depth, skipping hidden files and folders; each folder's
/// entries in sorted order, so that the whole list is sorted by path.
fn collect_images(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut images = Vec::new();
    let mut entered = std::collections::BTreeSet::new();
    walk(dir, &mut entered, &mut images)?;
    Ok(images)
}

/// [`collect_images`] below `dir`; `entered` holds the folders walked so far, by canonical path,
/// so that a symbolic link back up the tree is not followed round and round.
fn walk(
    dir: &Path,
    entered: &mut std::collections::BTreeSet<PathBuf>,
    images: &mut Vec<PathBuf>,
) -> Result<(), DataError> {
    let canonical = dir
        .canonicalize()
        .map_err(|e| DataError::Config(format!("cannot resolve {}: {e}", dir.display())))?;
    if !entered.insert(canonical) {
        return Ok(());
    }
    for path in list(dir)? {
        if is_hidden(&path) {
            continue;
        }
        if path.is_dir() {
            walk(&path, entered, images)?;
        } else if is_image(&path) && path.is_file() {
            images.push(path);
        }
    }
    Ok(())
}

/// The images of an unlabelled split: every image under `root` (or the ones `file_list` names,
/// paths relative to `root`), at most `limit` of them (0: all).
fn scan_unlabelled(key: &str, root: &Path, file_list: Option<&Path>, limit: usize) -> Result<Listing, DataError> {
    if !root.is_dir() {
        let cwd = std::env::current_dir().map_or_else(|_| "?".into(), |d| d.display().to_string());
        return Err(DataError::Config(format!(
            "dataset.{key}: folder {} does not exist (or is not a folder); with labels = \"none\" it should \
             hold the images, at any depth; relative paths start from the working directory {cwd}",
            root.display()
        )));
    }
    let mut paths = match file_list {
        None => collect_images(root)?,
        Some(list_path) => {
            let mut paths = Vec::new();
            let text = std::fs::read_to_string(list_path).map_err(|e| {
                DataError::Config(format!("dataset.file_list: cannot read {}: {e}", list_path.display()))
            })?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let path = root.join(line);
                if !path.is_file() {
                    return Err(DataError::Config(format!(
                        "{} line {}: {} does not exist; lines are image paths relative to dataset.{key}",
                        list_path.display(),
                        n + 1,
                        path.display()
                    )));
                }
                paths.push(path);
            }
            paths
        }
    };
    if limit > 0 {
        paths.truncate(limit);
    }
    if paths.is_empty() {
        return Err(DataError::Config(match file_list {
            None => format!(
                "dataset.{key}: {} holds no .jpg, .jpeg or .png files (at any depth)",
                root.display()
            ),
            Some(l) => format!("dataset.{key}: the file list {} names no images", l.display()),
        }));
    }
    Ok(Listing {
        root: root.to_path_buf(),
        classes: Vec::new(),
        files: paths.into_iter().map(|p| (p, NO_LABEL)).collect(),
    })
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn is_hidden(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// Sorted entries of `dir`.
fn list(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| DataError::Config(format!("cannot list {}: {e}", dir.display())))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    Ok(entries)
}

fn scan(
    key: &str,
    root: &Path,
    file_list: Option<&Path>,
    limit_per_class: usize,
    warnings: &mut Vec<String>,
) -> Result<Listing, DataError> {
    let config_error = |message: String| DataError::Config(format!("dataset.{key}: {message}"));
    if !root.is_dir() {
        let cwd = std::env::current_dir().map_or_else(|_| "?".into(), |d| d.display().to_string());
        return Err(config_error(format!(
            "folder {} does not exist (or is not a folder); it should hold one sub-folder of images per \
             class (<{key}>/<class>/<image>); relative paths start from the working directory {cwd}",
            root.display()
        )));
    }
    // Hidden folders (.git, .ipynb_checkpoints) are not classes.
    let class_dirs: Vec<PathBuf> = list(root)?
        .into_iter()
        .filter(|p| p.is_dir() && !is_hidden(p))
        .collect();
    if class_dirs.is_empty() {
        return Err(config_error(format!(
            "{} has no class sub-folders and no images; put the images in one sub-folder per class \
             (<{key}>/<class>/<image>), or anywhere under it for unlabelled training (labels = \"none\")",
            root.display()
        )));
    }
    let classes: Vec<String> = class_dirs
        .iter()
        .map(|d| d.file_name().unwrap_or_default().to_string_lossy().into_owned())
        .collect();
    let limit = if limit_per_class == 0 {
        usize::MAX
    } else {
        limit_per_class
    };
    let mut per_class: Vec<Vec<PathBuf>> = vec![Vec::new(); classes.len()];
    match file_list {
        None => {
            for (files, dir) in per_class.iter_mut().zip(&class_dirs) {
                *files = list(dir)?
                    .into_iter()
                    .filter(|p| is_image(p) && !is_hidden(p) && p.is_file())
                    .collect();
            }
        }
        Some(list_path) => read_file_list(key, root, list_path, &classes, &mut per_class)?,
    }
    let empty: Vec<&str> = classes
        .iter()
        .zip(&per_class)
        .filter(|(_, f)| f.is_empty())
        .map(|(c, _)| c.as_str())
        .collect();
    let files: Vec<(PathBuf, i64)> = per_class
        .into_iter()
        .enumerate()
        .flat_map(|(label, files)| files.into_iter().take(limit).map(move |p| (p, label as i64)))
        .collect();
    if files.is_empty() {
        return Err(config_error(match file_list {
            None => format!(
                "{} holds no .jpg, .jpeg or .png files in its {} class folder(s) ({}, ...)",
                root.display(),
                classes.len(),
                classes[0]
            ),
            Some(l) => format!("the file list {} names no images", l.display()),
        }));
    }
    if !empty.is_empty() {
        let shown = empty.iter().take(5).copied().collect::<Vec<_>>().join(", ");
        warnings.push(format!(
            "{} of the {} class folders of {} hold no images (labels still count them): {shown}{}",
            empty.len(),
            classes.len(),
            root.display(),
            if empty.len() > 5 { ", ..." } else { "" }
        ));
    }
    Ok(Listing {
        root: root.to_path_buf(),
        classes,
        files,
    })
}

/// Reads `<class>/<file>` lines into `per_class`, in the list's order.
fn read_file_list(
    key: &str,
    root: &Path,
    list_path: &Path,
    classes: &[String],
    per_class: &mut [Vec<PathBuf>],
) -> Result<(), DataError> {
    let text = std::fs::read_to_string(list_path).map_err(|e| {
        DataError::Config(format!(
            "dataset.{}file_list: cannot read {}: {e}",
            if key == "test" { "test_" } else { "" },
            list_path.display()
        ))
    })?;
    let label_of: BTreeMap<&str, usize> = classes.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = || format!("{} line {}", list_path.display(), n + 1);
        let relative = Path::new(line);
        let class = relative
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .and_then(|p| p.components().next())
            .and_then(|c| c.as_os_str().to_str());
        let Some(&label) = class.and_then(|c| label_of.get(c)) else {
            return Err(DataError::Config(format!(
                "{}: '{line}' is not inside a class folder of {}; lines are <class>/<file> paths relative to dataset.{key}",
                at(),
                root.display()
            )));
        };
        let path = root.join(relative);
        if !path.is_file() {
            return Err(DataError::Config(format!(
                "{}: {} does not exist; fix the list or dataset.{key}",
                at(),
                path.display()
            )));
        }
        per_class[label].push(path);
    }
    Ok(())
}

/// Decodes `path`, resizes its shorter side to `size` and centre-crops: `3 * size * size` CHW
/// bytes. Images smaller than `size` are upscaled.
pub fn decode_square(path: &Path, size: u32) -> Result<Vec<u8>, DataError> {
    let mut out = vec![0u8; 3 * (size * size) as usize];
    read_square_into(path, size, &mut out).map_err(|message| DataError::Image {
        path: path.to_path_buf(),
        message,
    })?;
    Ok(out)
}

/// Unreadable images met so far (index -> reason), and how many were already reported.
#[derive(Debug, Default)]
struct BadImages {
    seen: BTreeMap<usize, String>,
    reported: usize,
}

/// A split decoded image by image, on the loader's threads.
#[derive(Debug)]
struct DecodingFolder {
    listing: Listing,
    size: u32,
    workers: usize,
    on_bad_image: OnBadImage,
    bad: Mutex<BadImages>,
}

const SKIP_HINT: &str = "set dataset.on_bad_image = \"error\" to stop at the first one instead";

impl DecodingFolder {
    /// Decodes every image into memory; returns the set and the warning about skipped images.
    fn decode_all(self) -> Result<(ImageSet, Option<String>), DataError> {
        let n = self.listing.files.len();
        let size = self.size as usize;
        let sample = 3 * size * size;
        let all: Vec<usize> = (0..n).collect();
        let mut pixels = vec![0u8; n * sample];
        let labels = read_parallel(&self, &all, &mut pixels, resolve_threads(self.workers))?;
        // Drop the skipped images, keeping the order of the others.
        let mut kept = 0;
        let mut kept_labels = Vec::with_capacity(n);
        for (i, label) in labels.iter().enumerate() {
            if let Some(label) = label {
                if kept != i {
                    pixels.copy_within(i * sample..(i + 1) * sample, kept * sample);
                }
                kept += 1;
                kept_labels.push(*label);
            }
        }
        pixels.truncate(kept * sample);
        if kept == 0 {
            return Err(DataError::Config(format!(
                "none of the {n} images in {} could be decoded ({})",
                self.listing.root.display(),
                self.first_bad().unwrap_or_default()
            )));
        }
        let warning = self.take_warning();
        let classes = self.listing.classes.clone();
        Ok((ImageSet::new(pixels, kept_labels, size, size, classes)?, warning))
    }

    fn first_bad(&self) -> Option<String> {
        let bad = self.bad.lock().unwrap_or_else(|e| e.into_inner());
        bad.seen
            .iter()
            .next()
            .map(|(&i, why)| format!("{}: {why}", self.listing.files[i].0.display()))
    }
}

impl Dataset for DecodingFolder {
    fn len(&self) -> usize {
        self.listing.files.len()
    }

    fn classes(&self) -> &[String] {
        &self.listing.classes
    }

    fn image_shape(&self) -> [usize; 3] {
        [3, self.size as usize, self.size as usize]
    }

    fn read(&self, index: usize, out: &mut [u8]) -> Result<Option<i64>, DataError> {
        let path = self.path(index)?;
        self.outcome(index, read_square_into(path, self.size, out))
    }

    fn read_crops(
        &self,
        index: usize,
        crops: &crate::LoaderCrops,
        (seed, epoch): (u64, u64),
        out: &mut [u8],
    ) -> Result<Option<i64>, DataError> {
        let path = self.path(index)?;
        let cut = std::fs::read(path)
            .map_err(|e| format!("cannot read: {e}"))
            .and_then(|bytes| crate::decode::decode_rgb(&bytes))
            .and_then(|image| cut_views(crops, &image, seed, epoch, index, out));
        self.outcome(index, cut)
    }

    fn reads_crops(&self) -> bool {
        true
    }

    fn workers(&self) -> usize {
        self.workers
    }

    fn take_warning(&self) -> Option<String> {
        let mut bad = self.bad.lock().unwrap_or_else(|e| e.into_inner());
        let total = bad.seen.len();
        if total == bad.reported {
            return None;
        }
        let (&first, why) = bad.seen.iter().next().expect("at least one");
        let line = format!(
            "skipped {total} unreadable image(s) of {} in {} (first: {}: {why}); {SKIP_HINT}",
            self.listing.files.len(),
            self.listing.root.display(),
            self.listing.files[first].0.display()
        );
        bad.reported = total;
        Some(line)
    }
}

impl DecodingFolder {
    fn path(&self, index: usize) -> Result<&std::path::Path, DataError> {
        self.listing
            .files
            .get(index)
            .map(|(path, _)| path.as_path())
            .ok_or_else(|| {
                DataError::Config(format!(
                    "index {index} out of range for {} images",
                    self.listing.files.len()
                ))
            })
    }

    /// The label of a successfully read image, or the bad-image policy applied to `why`.
    fn outcome(&self, index: usize, read: Result<(), String>) -> Result<Option<i64>, DataError> {
        let (path, label) = &self.listing.files[index];
        match read {
            Ok(()) => Ok(Some(*label)),
            Err(why) if self.on_bad_image == OnBadImage::Skip => {
                let mut bad = self.bad.lock().unwrap_or_else(|e| e.into_inner());
                bad.seen.entry(index).or_insert(why);
                Ok(None)
            }
            Err(why) => Err(DataError::Image {
                path: path.clone(),
                message: format!("{why} (set dataset.on_bad_image = \"skip\" to skip unreadable images)"),
            }),
        }
    }
}

impl Drop for DecodingFolder {
    /// Unreadable images not reported by the loader yet (read through `batch` only) are
    /// reported when the dataset goes away.
    fn drop(&mut self) {
        if let Some(w) = self.take_warning() {
            eprintln!("warning: {w}");
        }
    }
}
