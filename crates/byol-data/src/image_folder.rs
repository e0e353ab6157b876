//! `[dataset] type = "image_folder"`: the ImageNet layout (`<split>/<class>/<image>`), labels from
//! folder names, JPEG and PNG (grayscale, CMYK and alpha converted to RGB).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::{DataError, Dataset, DatasetSpec, ImageSet, Splits};

const EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "JPEG"];

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

/// Where decoded images live.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Cache {
    /// Decode every image once, at start, into memory (small datasets such as CIFAR).
    #[default]
    Memory,
    /// Decode on the fly, batch by batch, on worker threads.
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ImageFolderConfig {
    /// Training images: one sub-folder per class.
    pub train: PathBuf,
    /// Labelled held-out images in the same layout, for the kNN monitor (optional).
    pub test: Option<PathBuf>,
    /// Images are resized (shorter side) and centre-cropped to this square size when decoded.
    pub image_size: u32,
    pub cache: Cache,
    /// Decoder threads (0: all cores).
    pub workers: usize,
    /// Use at most this many images per class (0: all), the first ones by file name.
    pub limit_per_class: usize,
    pub on_bad_image: OnBadImage,
}

impl Default for ImageFolderConfig {
    fn default() -> Self {
        Self {
            train: PathBuf::from("data/train"),
            test: None,
            image_size: 32,
            cache: Cache::Memory,
            workers: 0,
            limit_per_class: 0,
            on_bad_image: OnBadImage::Skip,
        }
    }
}

byol::register_plugin! {
    kind: Dataset,
    name: "image_folder",
    description: "images in <split>/<class>/ folders (JPEG, PNG), labels from folder names",
    example: "type = \"image_folder\"\ntrain = \"data/cifar10/train\"\ntest = \"data/cifar10/test\"\nimage_size = 32\ncache = \"memory\"    # or \"none\"\nworkers = 0\nlimit_per_class = 0\non_bad_image = \"skip\"   # or \"error\"\n",
    impl DatasetSpec for ImageFolderConfig {
        fn build(&self) -> Result<Splits, DataError> {
            let train = self.split(&self.train, None)?;
            let test = match &self.test {
                Some(dir) => Some(self.split(dir, Some(train.classes()))?),
                None => None,
            };
            Ok(Splits { train, test })
        }
    }
}

impl ImageFolderConfig {
    fn split(&self, dir: &Path, classes: Option<&[String]>) -> Result<Arc<dyn Dataset>, DataError> {
        let listing = scan(dir, self.limit_per_class)?;
        if let Some(expected) = classes {
            if expected != listing.classes.as_slice() {
                return Err(DataError::Config(format!(
                    "{} has classes [{}], the training split has [{}]",
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
        };
        Ok(match self.cache {
            Cache::Memory => Arc::new(folder.decode_all()?),
            Cache::None => Arc::new(folder),
        })
    }
}

/// The files of one split and their labels.
#[derive(Debug)]
struct Listing {
    root: PathBuf,
    classes: Vec<String>,
    files: Vec<(PathBuf, i64)>,
}

fn scan(root: &Path, limit_per_class: usize) -> Result<Listing, DataError> {
    let config_error = |message: String| DataError::Config(message);
    if !root.is_dir() {
        return Err(config_error(format!(
            "dataset folder {} does not exist or is not a folder",
            root.display()
        )));
    }
    let read = |dir: &Path| -> Result<Vec<PathBuf>, DataError> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| config_error(format!("cannot list {}: {e}", dir.display())))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        entries.sort();
        Ok(entries)
    };
    let class_dirs: Vec<PathBuf> = read(root)?.into_iter().filter(|p| p.is_dir()).collect();
    if class_dirs.is_empty() {
        return Err(config_error(format!(
            "{} has no class sub-folders (expected <split>/<class>/<image>)",
            root.display()
        )));
    }
    let mut classes = Vec::new();
    let mut files = Vec::new();
    for (label, class_dir) in class_dirs.iter().enumerate() {
        classes.push(class_dir.file_name().unwrap_or_default().to_string_lossy().into_owned());
        let images = read(class_dir)?.into_iter().filter(|p| {
            p.extension()
                .is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
        });
        let limit = if limit_per_class == 0 {
            usize::MAX
        } else {
            limit_per_class
        };
        files.extend(images.take(limit).map(|p| (p, label as i64)));
    }
    if files.is_empty() {
        return Err(config_error(format!(
            "{} holds no JPEG or PNG images in its class folders",
            root.display()
        )));
    }
    Ok(Listing {
        root: root.to_path_buf(),
        classes,
        files,
    })
}

/// Decodes `path` to RGB, resizes the shorter side to `size` and centre-crops: CHW bytes.
pub fn decode_square(path: &Path, size: u32) -> Result<Vec<u8>, DataError> {
    let bad = |message: String| DataError::Image {
        path: path.to_path_buf(),
        message,
    };
    let image = image::ImageReader::open(path)
        .map_err(|e| bad(e.to_string()))?
        .with_guessed_format()
        .map_err(|e| bad(e.to_string()))?
        .decode()
        .map_err(|e| bad(e.to_string()))?
        .to_rgb8();
    let (w, h) = image.dimensions();
    let image = if (w, h) == (size, size) {
        image
    } else {
        let scale = size as f64 / w.min(h) as f64;
        let (nw, nh) = (
            ((w as f64 * scale).round() as u32).max(size),
            ((h as f64 * scale).round() as u32).max(size),
        );
        let resized = image::imageops::resize(&image, nw, nh, image::imageops::FilterType::Triangle);
        image::imageops::crop_imm(&resized, (nw - size) / 2, (nh - size) / 2, size, size).to_image()
    };
    let plane = (size * size) as usize;
    let mut chw = vec![0u8; 3 * plane];
    for (i, pixel) in image.pixels().enumerate() {
        for c in 0..3 {
            chw[c * plane + i] = pixel[c];
        }
    }
    Ok(chw)
}

/// A split decoded batch by batch on worker threads.
#[derive(Debug)]
struct DecodingFolder {
    listing: Listing,
    size: u32,
    workers: usize,
    on_bad_image: OnBadImage,
}

impl DecodingFolder {
    fn threads(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// Decodes `indices` in parallel; bad images are `None` (or an error, per `on_bad_image`).
    fn decode(&self, indices: &[usize]) -> Result<Vec<Option<Vec<u8>>>, DataError> {
        let threads = self.threads().min(indices.len()).max(1);
        // Thread t decodes positions t, t + threads, ...: no shared state, deterministic output.
        let per_thread: Vec<Vec<Result<Vec<u8>, DataError>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    scope.spawn(move || {
                        (t..indices.len())
                            .step_by(threads)
                            .map(|i| decode_square(&self.listing.files[indices[i]].0, self.size))
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("decoder thread")).collect()
        });
        let mut iters: Vec<_> = per_thread.into_iter().map(|v| v.into_iter()).collect();
        (0..indices.len())
            .map(|i| match iters[i % threads].next().expect("one result per index") {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if self.on_bad_image == OnBadImage::Skip => {
                    eprintln!("warning: skipping {e}");
                    Ok(None)
                }
                Err(e) => Err(DataError::Config(format!(
                    "{e}\n(set dataset.on_bad_image = \"skip\" to skip unreadable images)"
                ))),
            })
            .collect()
    }

    fn decode_all(self) -> Result<ImageSet, DataError> {
        let all: Vec<usize> = (0..self.listing.files.len()).collect();
        let decoded = self.decode(&all)?;
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        let mut skipped = 0;
        for (bytes, (_, label)) in decoded.into_iter().zip(&self.listing.files) {
            match bytes {
                Some(b) => {
                    pixels.extend_from_slice(&b);
                    labels.push(*label);
                }
                None => skipped += 1,
            }
        }
        if skipped > 0 {
            eprintln!(
                "warning: skipped {skipped} unreadable image(s) in {}",
                self.listing.root.display()
            );
        }
        if labels.is_empty() {
            return Err(DataError::Config(format!(
                "no image in {} could be decoded",
                self.listing.root.display()
            )));
        }
        let size = self.size as usize;
        ImageSet::new(pixels, labels, size, size, self.listing.classes)
    }
}

impl Dataset for DecodingFolder {
    fn len(&self) -> usize {
        self.listing.files.len()
    }

    fn classes(&self) -> &[String] {
        &self.listing.classes
    }

    fn batch(&self, indices: &[usize]) -> Result<(Tensor, Tensor), DataError> {
        let decoded = self.decode(indices)?;
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        // A bad image is replaced by the next good one of the batch, so batch shapes stay fixed.
        let good: Vec<(usize, &Vec<u8>)> = decoded
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.as_ref().map(|b| (i, b)))
            .collect();
        if good.is_empty() {
            return Err(DataError::Config(format!(
                "no image of a batch in {} could be decoded",
                self.listing.root.display()
            )));
        }
        for k in 0..indices.len() {
            let (i, bytes) = good[k % good.len()];
            pixels.extend_from_slice(bytes);
            labels.push(self.listing.files[indices[i]].1);
        }
        let s = self.size as i64;
        Ok((
            Tensor::from_slice(&pixels).view([indices.len() as i64, 3, s, s]),
            Tensor::from_slice(&labels),
        ))
    }
}
