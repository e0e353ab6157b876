//! `[dataset] type = "image_folder"`: the ImageNet layout (`<split>/<class>/<image>`), labels from
//! folder names, JPEG (baseline, progressive) and PNG; grayscale, CMYK and alpha converted to RGB.
//! Unlabelled data (`labels = "none"`, or a `train` folder without class sub-folders) is every
//! image under `train`, recursively, sorted by path. Optionally a file list picks the images. Files with other extensions are ignored; unreadable
//! images are skipped with one counted warning, or stop the run (`on_bad_image = "error"`).

mod decoding;
mod listing;
mod wording;

pub use decoding::decode_square;
use decoding::DecodingFolder;
pub(crate) use listing::images_for_shards;
use listing::{class_names, has_images_under, no_class_folders, scan, scan_unlabelled, test_needs_labels};
pub use listing::{has_class_folders, is_hidden, is_image, other_formats_warning, ImageTree, PassedOver};
use wording::Split;
pub use wording::{SplitWording, Wording};

use std::path::{Path, PathBuf};
use std::sync::Arc;

use byol::BuildContext;
use serde::{Deserialize, Serialize};

use crate::{DataError, Dataset, DatasetSpec, Listing, Splits};

/// File extensions read as images (any case; `.jpe`, `.jfif` and `.jif` are JPEG's too); every
/// other file is ignored.
const EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "jpe", "jfif", "jif", "png"];

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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, byol::KeyDocs)]
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
    /// Where decoded images live: "memory" (decoded once, at start) or "none" (decoded each epoch).
    pub cache: Cache,
    /// Decoder threads: the loader's prefetching workers with `cache = "none"`, the threads that
    /// fill the cache with `cache = "memory"` (0: all cores).
    pub workers: usize,
    /// Use at most this many images per class (0: all), the first ones by file name; unlabelled
    /// images count as one class.
    pub limit_per_class: usize,
    /// An image that cannot be decoded: "skip" it (one counted warning) or "error" (stop).
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
        fn image_size(&self) -> Option<u32> {
            Some(self.image_size)
        }

        fn stops_at_bad_images(&self) -> Option<bool> {
            Some(self.on_bad_image == OnBadImage::Error)
        }

        fn build(&self, _: &BuildContext) -> Result<Splits, DataError> {
            let (splits, warnings, notes) = self.load_with_notes()?;
            for note in notes {
                byol::eprint_line!("note: {note}");
            }
            for w in warnings {
                byol::eprint_line!("warning: {w}");
            }
            Ok(splits)
        }

        fn check(&self) -> Result<(), DataError> {
            let missing = |key: &str, path: &Path, what: &str| {
                let problem = match (path.exists(), what) {
                    (true, "this folder") => "this is a file, not a folder of images",
                    (true, _) => "this is not a file",
                    (false, "this folder") => "this folder does not exist",
                    (false, _) => "this file does not exist",
                };
                DataError::Config(format!(
                    "dataset.{key} = {:?}: {problem} (paths are relative to the working directory)",
                    path.display().to_string()
                ))
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
            // Classes are folders whatever the file lists pick: comparing them costs two listings.
            if let Some(test) = &self.test {
                let wording = Wording::default();
                if !has_class_folders(test)? {
                    return Err(no_class_folders(Split::test(&wording), test));
                }
                // Without class folders, training reads train's images unlabelled.
                if !has_class_folders(&self.train)? {
                    return Err(match has_images_under(&self.train)? {
                        true => test_needs_labels(&self.train),
                        false => no_class_folders(Split::train(&wording), &self.train),
                    });
                }
                let train_classes = class_names(&self.train)?;
                let train = (self.train.as_path(), train_classes.as_slice());
                check_same_classes(Split::test(&wording), test, &class_names(test)?, train)?;
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

        fn build_listing(&self, _: &BuildContext) -> Result<Listing, DataError> {
            let (splits, warnings, notes) = self.listing().load_with_notes()?;
            // What the start's memory cache would refuse, refused here too (validate).
            if self.cache == Cache::Memory {
                let test = splits.test.as_ref().zip(self.test.as_ref());
                for (split, root) in [(&splits.train, &self.train)].into_iter().chain(test) {
                    decoding::check_cache_fits(split.len(), self.image_size, root)?;
                }
            }
            Ok(Listing { splits, notes, warnings })
        }

        fn keeps_image_files(&self) -> bool {
            self.cache == Cache::None
        }
    }
}

impl ImageFolderConfig {
    /// This folder read without decoding its images (`cache = "none"`): building it lists the files.
    pub fn listing(&self) -> Self {
        Self {
            cache: Cache::None,
            ..self.clone()
        }
    }

    /// Builds the splits and returns the warnings that `build` prints (unreadable images skipped
    /// while filling the memory cache, class folders without images): one line each.
    pub fn load(&self) -> Result<(Splits, Vec<String>), DataError> {
        self.load_worded(&Wording::default())
    }

    /// [`ImageFolderConfig::load`] for folders that are not the experiment's `[dataset]`: its
    /// messages name them and their settings as `wording` does.
    pub fn load_worded(&self, wording: &Wording) -> Result<(Splits, Vec<String>), DataError> {
        self.read(wording).map(|(splits, warnings, _)| (splits, warnings))
    }

    /// [`ImageFolderConfig::load`], and the notes that `build` prints (a `train` folder without
    /// class sub-folders read as unlabelled).
    pub fn load_with_notes(&self) -> Result<(Splits, Vec<String>, Vec<String>), DataError> {
        self.read(&Wording::default())
    }

    fn read(&self, wording: &Wording) -> Result<(Splits, Vec<String>, Vec<String>), DataError> {
        if self.image_size == 0 {
            return Err(DataError::Config("dataset.image_size must be at least 1".into()));
        }
        let mut warnings = Vec::new();
        let mut notes = Vec::new();
        let labels = match self.labels {
            // Only where unlabelled reading is a choice: [eval]'s folders and a command's flags
            // must be labelled, and are refused as such.
            Labels::Folders
                if wording.unlabelled.is_some()
                    && !has_class_folders(&self.train)?
                    && has_images_under(&self.train)? =>
            {
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
            Split::train(wording),
            &self.train,
            self.file_list.as_deref(),
            labels,
            None,
            &mut warnings,
        )?;
        let test = match &self.test {
            Some(dir) => Some(self.split(
                Split::test(wording),
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
        split: Split,
        dir: &Path,
        file_list: Option<&Path>,
        labels: Labels,
        classes: Option<&[String]>,
        warnings: &mut Vec<String>,
    ) -> Result<Arc<dyn Dataset>, DataError> {
        let listing = match labels {
            Labels::Folders => scan(split, dir, file_list, self.limit_per_class, warnings)?,
            Labels::None => scan_unlabelled(split, dir, file_list, self.limit_per_class, warnings)?,
        };
        if let Some(expected) = classes {
            check_same_classes(split, dir, &listing.classes, (&self.train, expected))?;
        }
        let folder = DecodingFolder {
            listing,
            size: self.image_size,
            workers: self.workers,
            limit_per_class: self.limit_per_class,
            on_bad_image: self.on_bad_image,
            on_bad_image_hints: split.wording.on_bad_image.clone(),
            skipped: Default::default(),
        };
        // Known unreadable from the listing alone: an empty file, or a link to a missing one. A
        // run set to stop at a bad image stops at its start (and `validate` says so), not once
        // the loader reaches the image, mid-epoch.
        if self.on_bad_image == OnBadImage::Error {
            if let Some(i) = folder.listing.sizes.iter().position(|&size| size == 0) {
                let path = &folder.listing.files[i].0;
                // Said as a skip says it (a broken link names where it leads).
                let why = match std::fs::metadata(path) {
                    Ok(_) => "empty file".to_string(),
                    Err(e) => crate::decode::read_file(path)
                        .err()
                        .unwrap_or_else(|| format!("cannot be read: {e}")),
                };
                folder.outcome(i, Err(why))?;
            }
        }
        Ok(match self.cache {
            Cache::Memory => {
                let (set, decoding_warnings) = folder.decode_all()?;
                warnings.extend(decoding_warnings);
                Arc::new(set)
            }
            Cache::None => Arc::new(folder),
        })
    }
}

/// Refuses a split (folder `dir`) whose classes are not the training split's. Names that
/// differ only in how their letters are encoded (`é` as one code point, or `e` and a combining
/// accent, as macOS writes names) or in a trailing space look the same: they are quoted, with
/// their code points.
fn check_same_classes(
    split: Split,
    dir: &Path,
    classes: &[String],
    (train_dir, train): (&Path, &[String]),
) -> Result<(), DataError> {
    if classes == train {
        return Ok(());
    }
    // A class folder left empty is the most common cause; it is still a class.
    let only_in = |names: &[String], others: &[String], dir: &Path| -> Vec<String> {
        names
            .iter()
            .filter(|name| !others.contains(name) && dir.join(name).is_dir())
            .filter(|name| !has_images_under(&dir.join(name)).unwrap_or(true))
            .map(|name| dir.join(name).display().to_string())
            .collect()
    };
    let empty = [only_in(classes, train, dir), only_in(train, classes, train_dir)].concat();
    let hint = match empty.as_slice() {
        [] => String::new(),
        [one] => format!(" ({one} holds no images: remove it, or put that class's images in it)"),
        many => format!(
            " ({} hold no images: remove them, or put their classes' images in them)",
            many.join(", ")
        ),
    };
    // A name only one split has is quoted where spaces or other characters could hide in it.
    let spelled = |names: &[String], others: &[String]| -> String {
        names
            .iter()
            .map(|name| {
                let plain = name.is_ascii() && name.trim() == name && !name.chars().any(|c| c.is_control());
                match (others.contains(name) || plain, name.is_ascii()) {
                    (true, _) => name.clone(),
                    (false, true) => format!("{name:?}"),
                    (false, false) => format!("{name:?} ({})", code_points(name)),
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(DataError::Config(format!(
        "{}{} has classes [{}], the training split has [{}]; both splits need the same class folders{hint}",
        split.at(),
        dir.display(),
        spelled(classes, train),
        spelled(train, classes)
    )))
}

/// `c a f U+00E9`: each character of `name`, those outside ASCII as code points.
fn code_points(name: &str) -> String {
    name.chars()
        .map(|c| match c.is_ascii() {
            true => c.to_string(),
            false => format!("U+{:04X}", c as u32),
        })
        .collect::<Vec<_>>()
        .join(" ")
}
