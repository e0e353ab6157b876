//! A split decoded image by image on the loader's threads, with unreadable images counted.

use std::path::Path;

use crate::crop::cut_views;
use crate::dataset::{keep_readable, read_parallel, resolve_threads};
use crate::decode::read_square_into;
use crate::skipped::SkippedImages;
use crate::{DataError, Dataset, ImageSet};

use super::listing::Listing;
use super::OnBadImage;

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

/// Refuses a memory cache of `n` images of `root` at `size` pixels that this machine cannot hold.
pub(super) fn check_cache_fits(n: usize, size: u32, root: &std::path::Path) -> Result<(), DataError> {
    crate::memory::check_fits(
        n as u128 * 3 * u128::from(size).pow(2),
        || format!("the {n} images of {} at {size}x{size} pixels", root.display()),
        "set dataset.cache = \"none\" to decode them as they are read, or a smaller dataset.image_size",
    )
}

/// A split decoded image by image, on the loader's threads.
#[derive(Debug)]
pub(super) struct DecodingFolder {
    pub(super) listing: Listing,
    pub(super) size: u32,
    pub(super) workers: usize,
    /// The split's `limit_per_class` (0: none), for messages.
    pub(super) limit_per_class: usize,
    pub(super) on_bad_image: OnBadImage,
    /// How to stop at an unreadable image, and how to skip it ([`super::Wording::on_bad_image`]).
    pub(super) on_bad_image_hints: Option<(String, String)>,
    pub(super) skipped: SkippedImages,
}

impl DecodingFolder {
    /// Decodes every image into memory; returns the set and the warnings about skipped images
    /// and the classes they left without any.
    pub(super) fn decode_all(self) -> Result<(ImageSet, Vec<String>), DataError> {
        let n = self.listing.files.len();
        let size = self.size as usize;
        check_cache_fits(n, self.size, &self.listing.root)?;
        // Where the memory could not be read: too large to address is refused as well.
        let sample = (size.checked_mul(size).and_then(|pixels| pixels.checked_mul(3)))
            .filter(|&sample| n.checked_mul(sample).is_some())
            .ok_or_else(|| {
                DataError::Config(format!(
                    "{n} images at {size}x{size} pixels are more bytes than this machine addresses"
                ))
            })?;
        let all: Vec<usize> = (0..n).collect();
        let mut pixels = vec![0u8; n * sample];
        let labels = read_parallel(&self, &all, &mut pixels, resolve_threads(self.workers))?;
        let kept_labels = keep_readable(&mut pixels, &labels, sample);
        if kept_labels.is_empty() {
            return Err(DataError::Config(format!(
                "none of the {n} images in {} could be decoded ({})",
                self.listing.root.display(),
                self.skipped.first(|i| self.describe(i)).unwrap_or_default()
            )));
        }
        let warnings = self
            .take_warning()
            .into_iter()
            .chain(self.emptied_classes(&kept_labels))
            .collect();
        let classes = self.listing.classes.clone();
        let set = ImageSet::new(pixels, kept_labels, size, size, classes)?
            .with_content(Some(self.listing.content()))
            .with_source_files(Some(self.listing.source_files()))
            .with_skipped(self.skipped());
        Ok((set, warnings))
    }

    /// The warning for classes whose listed images were all unreadable (with `limit_per_class`,
    /// the first files of a class folder may be all it has here): their labels still count, and
    /// the kNN monitor would measure without them.
    fn emptied_classes(&self, kept_labels: &[i64]) -> Option<String> {
        let classes = &self.listing.classes;
        if classes.is_empty() {
            return None; // unlabelled
        }
        let mut listed = vec![0usize; classes.len()];
        let mut kept = vec![0usize; classes.len()];
        for &(_, label) in &self.listing.files {
            listed[label as usize] += 1;
        }
        for &label in kept_labels {
            kept[label as usize] += 1;
        }
        let emptied: Vec<String> = (0..classes.len())
            .filter(|&c| listed[c] > 0 && kept[c] == 0)
            .map(|c| format!("{} ({} unreadable)", classes[c], listed[c]))
            .collect();
        if emptied.is_empty() {
            return None;
        }
        Some(format!(
            "{} of the {} classes of {} have no readable image left (labels still count them): {}{}{}",
            emptied.len(),
            classes.len(),
            self.listing.root.display(),
            emptied[..emptied.len().min(5)].join(", "),
            if emptied.len() > 5 { ", ..." } else { "" },
            if self.limit_per_class > 0 {
                "; limit_per_class takes the first files of each class folder, readable or not"
            } else {
                ""
            }
        ))
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

    fn content(&self) -> Option<byol::Content> {
        Some(self.listing.content())
    }

    fn source_files(&self) -> Option<Vec<byol::SourceFile>> {
        Some(self.listing.source_files())
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
        let cut = crate::decode::read_file(path)
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

    fn describe(&self, index: usize) -> String {
        match self.listing.files.get(index) {
            Some((path, _)) => crate::path_line(path),
            None => format!("image {index}"),
        }
    }

    fn skipped(&self) -> Vec<String> {
        self.skipped.all(|i| self.describe(i))
    }

    fn take_warning(&self) -> Option<String> {
        let place = self.listing.root.display().to_string();
        self.skipped
            // Each name on the warning's one line, escaped as in skipped-images.txt.
            .take_warning("image(s)", self.listing.files.len(), &place, self.stop_hint(), |i| {
                self.describe(i)
            })
    }
}

impl DecodingFolder {
    pub(super) fn path(&self, index: usize) -> Result<&std::path::Path, DataError> {
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

    fn stop_hint(&self) -> Option<&str> {
        self.on_bad_image_hints.as_ref().map(|(stop, _)| stop.as_str())
    }

    /// The label of a successfully read image, or the bad-image policy applied to `why`.
    pub(super) fn outcome(&self, index: usize, read: Result<(), String>) -> Result<Option<i64>, DataError> {
        let (path, label) = &self.listing.files[index];
        match read {
            Ok(()) => Ok(Some(*label)),
            Err(why) if self.on_bad_image == OnBadImage::Skip => {
                self.skipped.record(index, why);
                Ok(None)
            }
            Err(why) => Err(DataError::Image {
                path: path.clone(),
                message: match &self.on_bad_image_hints {
                    Some((_, skip)) => format!("{why} ({skip} to skip unreadable images)"),
                    None => why,
                },
            }),
        }
    }
}

impl Drop for DecodingFolder {
    /// Unreadable images not reported by the loader yet (read through `batch` only) are
    /// reported when the dataset goes away.
    fn drop(&mut self) {
        if let Some(w) = self.take_warning() {
            byol::eprint_line!("warning: {w}");
        }
    }
}
