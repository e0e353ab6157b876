//! `[dataset] type = "cifar"`: CIFAR-10 and CIFAR-100 (Krizhevsky 2009) in the official binary
//! format, held in memory.
//!
//! CIFAR-10 (`cifar-10-batches-bin`): `data_batch_1.bin` .. `data_batch_5.bin` (training) and
//! `test_batch.bin`, 10,000 records each of 1 label byte and 3,072 pixel bytes: the 1,024 red
//! values of the 32x32 image row by row, then green, then blue (so already CHW). Class names
//! from `batches.meta.txt`. CIFAR-100 (`cifar-100-binary`): `train.bin` (50,000) and
//! `test.bin` (10,000), records of a coarse label byte, a fine label byte and the same 3,072
//! bytes; the fine label (100 classes) is used, names from `fine_label_names.txt`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use byol::BuildContext;

use crate::{DataError, DatasetSpec, ImageSet, Listing, Splits};

const SIDE: usize = 32;
const PIXELS: usize = 3 * SIDE * SIDE;

pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

pub const CIFAR100_CLASSES: [&str; 100] = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
];

/// Which CIFAR.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CifarVariant {
    #[default]
    Cifar10,
    /// Fine labels (100 classes).
    Cifar100,
}

impl CifarVariant {
    fn folder(self) -> &'static str {
        match self {
            CifarVariant::Cifar10 => "cifar-10-batches-bin",
            CifarVariant::Cifar100 => "cifar-100-binary",
        }
    }

    fn train_files(self) -> Vec<&'static str> {
        match self {
            CifarVariant::Cifar10 => vec![
                "data_batch_1.bin",
                "data_batch_2.bin",
                "data_batch_3.bin",
                "data_batch_4.bin",
                "data_batch_5.bin",
            ],
            CifarVariant::Cifar100 => vec!["train.bin"],
        }
    }

    fn test_file(self) -> &'static str {
        match self {
            CifarVariant::Cifar10 => "test_batch.bin",
            CifarVariant::Cifar100 => "test.bin",
        }
    }

    /// Label bytes before the pixels; the last one is the label used.
    fn label_bytes(self) -> usize {
        match self {
            CifarVariant::Cifar10 => 1,
            CifarVariant::Cifar100 => 2,
        }
    }

    fn names_file(self) -> &'static str {
        match self {
            CifarVariant::Cifar10 => "batches.meta.txt",
            CifarVariant::Cifar100 => "fine_label_names.txt",
        }
    }

    fn default_classes(self) -> &'static [&'static str] {
        match self {
            CifarVariant::Cifar10 => &CIFAR10_CLASSES,
            CifarVariant::Cifar100 => &CIFAR100_CLASSES,
        }
    }

    /// Records in each file of the binary release: 10,000 per CIFAR-10 file, 50,000 in
    /// CIFAR-100's `train.bin`.
    fn release_records(self, file: &str) -> usize {
        match (self, file) {
            (CifarVariant::Cifar100, "train.bin") => 50_000,
            _ => 10_000,
        }
    }

    fn name(self) -> &'static str {
        match self {
            CifarVariant::Cifar10 => "CIFAR-10",
            CifarVariant::Cifar100 => "CIFAR-100",
        }
    }
}

/// `[dataset] type = "cifar"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, byol::KeyDocs)]
#[serde(deny_unknown_fields, default)]
pub struct CifarConfig {
    /// `"cifar10"` or `"cifar100"`.
    pub variant: CifarVariant,
    /// The extracted binary release: the `cifar-10-batches-bin` / `cifar-100-binary` folder, or
    /// the folder that holds it.
    pub root: PathBuf,
    /// Also load the test split, for the kNN monitor.
    pub test: bool,
}

impl Default for CifarConfig {
    fn default() -> Self {
        Self {
            variant: CifarVariant::Cifar10,
            root: PathBuf::from("data"),
            test: true,
        }
    }
}

impl CifarConfig {
    /// Both splits, with what `build` warns about added to `warnings`.
    fn read_splits(&self, warnings: &mut Vec<String>) -> Result<Splits, DataError> {
        let dir = self.folder()?;
        let classes = self.classes(&dir)?;
        let train_files: Vec<PathBuf> = self.variant.train_files().iter().map(|f| dir.join(f)).collect();
        let missing: Vec<&str> = self
            .variant
            .train_files()
            .iter()
            .copied()
            .filter(|f| !dir.join(f).exists())
            .collect();
        if !missing.is_empty() {
            // A partial extraction (or a file removed to train on less) would otherwise fail with
            // the operating system's bare "No such file".
            return Err(DataError::Config(format!(
                "dataset.root = {}: {} lacks {} of the {} release's training files: extract the whole release \
                 there",
                self.root.display(),
                dir.display(),
                missing.join(", "),
                self.variant.name()
            )));
        }
        let train = Arc::new(self.read(&train_files, &classes, warnings)?);
        let test = if self.test {
            let file = dir.join(self.variant.test_file());
            if !file.exists() {
                return Err(DataError::Config(format!(
                    "dataset.root = {}: {} has its training files but no {}, the test split the kNN monitor \
                     measures on; extract it there from the release, or set dataset.test = false to train without \
                     it (or evaluate on [eval] train and test)",
                    self.root.display(),
                    dir.display(),
                    self.variant.test_file()
                )));
            }
            Some(Arc::new(self.read(&[file], &classes, warnings)?) as _)
        } else {
            None
        };
        Ok(Splits { train, test })
    }
}

byol::register_plugin! {
    name: "cifar",
    description: "CIFAR-10 / CIFAR-100 (fine labels) from the official binary release, in memory",
    impl DatasetSpec for CifarConfig {
        fn build(&self, _: &BuildContext) -> Result<Splits, DataError> {
            let mut warnings = Vec::new();
            let splits = self.read_splits(&mut warnings)?;
            for w in warnings {
                byol::eprint_line!("warning: {w}");
            }
            Ok(splits)
        }

        // The files are read: their digest is of their bytes.
        fn build_listing(&self, _: &BuildContext) -> Result<Listing, DataError> {
            let mut warnings = Vec::new();
            let splits = self.read_splits(&mut warnings)?;
            Ok(Listing { warnings, ..splits.into() })
        }

        fn check(&self) -> Result<(), DataError> {
            self.folder().map(|_| ())
        }

        fn image_size(&self) -> Option<u32> {
            Some(32)
        }
    }
}

impl CifarConfig {
    /// The folder with the `.bin` files: `root` itself or its `cifar-10-batches-bin` /
    /// `cifar-100-binary` sub-folder.
    fn folder(&self) -> Result<PathBuf, DataError> {
        let first = self.variant.train_files()[0];
        for dir in [self.root.clone(), self.root.join(self.variant.folder())] {
            if dir.join(first).is_file() {
                return Ok(dir);
            }
        }
        let other = match self.variant {
            CifarVariant::Cifar10 => CifarVariant::Cifar100,
            CifarVariant::Cifar100 => CifarVariant::Cifar10,
        };
        let hint = if self.root.join(other.train_files()[0]).is_file()
            || self.root.join(other.folder()).join(other.train_files()[0]).is_file()
        {
            format!(
                "; it holds {} files: set dataset.variant = \"{}\"",
                other.name(),
                format!("{other:?}").to_lowercase()
            )
        } else if self.root.join("data_batch_1").is_file() || self.root.join("cifar-10-batches-py").is_dir() {
            "; that is the Python (pickle) release: download the binary version (cifar-10-binary.tar.gz)".into()
        } else {
            format!(
                "; download the binary version ({}) and extract it there",
                match self.variant {
                    CifarVariant::Cifar10 => "cifar-10-binary.tar.gz",
                    CifarVariant::Cifar100 => "cifar-100-binary.tar.gz",
                }
            )
        };
        Err(DataError::Config(format!(
            "dataset.root = {}: no {first} there or in {}/ ({} binary release){hint}",
            self.root.display(),
            self.variant.folder(),
            self.variant.name()
        )))
    }

    /// Class names from the release's names file, else the official list.
    fn classes(&self, dir: &Path) -> Result<Vec<String>, DataError> {
        let expected = self.variant.default_classes();
        let path = dir.join(self.variant.names_file());
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(expected.iter().map(|s| s.to_string()).collect());
        };
        let names: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        if names.len() != expected.len() {
            return Err(DataError::Config(format!(
                "{} names {} classes, {} has {}",
                path.display(),
                names.len(),
                self.variant.name(),
                expected.len()
            )));
        }
        Ok(names)
    }

    /// Reads the records of `files` into memory. The set's content digest is the SHA-256 of the
    /// files' names and bytes, and each file is a part: they are read whole anyway, and it tells
    /// any change to them apart, which their fixed names and sizes cannot.
    /// Files whose record count is not the release's add a warning to `warnings`.
    fn read(&self, files: &[PathBuf], classes: &[String], warnings: &mut Vec<String>) -> Result<ImageSet, DataError> {
        use sha2::Digest;
        let skip = self.variant.label_bytes();
        let record = skip + PIXELS;
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        let mut digest = sha2::Sha256::new();
        let mut parts = Vec::new();
        for path in files {
            let bad = |message: String| DataError::Image {
                path: path.clone(),
                message,
            };
            let bytes = crate::decode::read_file(path).map_err(bad)?;
            if bytes.is_empty() {
                return Err(bad(format!(
                    "the file is empty, not a {} batch (a download that stopped at its start): download it again",
                    self.variant.name()
                )));
            }
            if !bytes.len().is_multiple_of(record) {
                return Err(bad(format!(
                    "{} bytes is not a whole number of {record}-byte {} records (a damaged download, \
                     or the other variant: check dataset.variant)",
                    bytes.len(),
                    self.variant.name()
                )));
            }
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let (count, expected) = (bytes.len() / record, self.variant.release_records(&name));
            if count != expected {
                // A cut download ends on a record boundary as often as not; a trimmed copy is
                // legitimate, so it is said, not refused.
                warnings.push(format!(
                    "{} holds {count} records where the {} binary release's holds {expected} \
                     (a cut download? the release's file is {} bytes)",
                    path.display(),
                    self.variant.name(),
                    expected * record
                ));
            }
            let mut part = sha2::Sha256::new();
            for hasher in [&mut digest, &mut part] {
                hasher.update(format!("{name}\t{}\n", bytes.len()).as_bytes());
                hasher.update(&bytes);
            }
            parts.push(byol::ContentPart {
                name,
                files: count,
                digest: crate::dataset::hex(&part.finalize()),
            });
            pixels.reserve(bytes.len() / record * PIXELS);
            for (i, r) in bytes.chunks_exact(record).enumerate() {
                let label = r[skip - 1] as usize;
                if label >= classes.len() {
                    return Err(bad(format!(
                        "record {} (at byte offset {}) has label {label}, but {} has {} classes (check dataset.variant)",
                        i + 1,
                        i * record,
                        self.variant.name(),
                        classes.len()
                    )));
                }
                labels.push(label as i64);
                pixels.extend_from_slice(&r[skip..]);
            }
        }
        let content = byol::Content {
            digest: crate::dataset::hex(&digest.finalize()),
            parts,
        };
        Ok(ImageSet::new(pixels, labels, SIDE, SIDE, classes.to_vec())?.with_content(Some(content)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use byol::Dataset;

    /// Writes `count` CIFAR-10 records of label 0, pixels `fill`, as `data_batch_1.bin`.
    fn batch(dir: &Path, count: usize, fill: u8) -> PathBuf {
        let mut bytes = Vec::new();
        for _ in 0..count {
            bytes.push(0);
            bytes.extend(std::iter::repeat_n(fill, PIXELS));
        }
        let path = dir.join("data_batch_1.bin");
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn read(path: &Path) -> (ImageSet, Vec<String>) {
        let config = CifarConfig::default();
        let classes: Vec<String> = CIFAR10_CLASSES.map(String::from).to_vec();
        let mut warnings = Vec::new();
        let set = config.read(&[path.to_path_buf()], &classes, &mut warnings).unwrap();
        (set, warnings)
    }

    #[test]
    fn the_digest_tells_a_changed_pixel_from_the_same_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let digest = |fill| read(&batch(tmp.path(), 3, fill)).0.content().expect("a digest").digest;
        let first = digest(7);
        assert_eq!(first, digest(7));
        let path = batch(tmp.path(), 3, 7);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[2 * (PIXELS + 1) + 100] = 8;
        std::fs::write(&path, bytes).unwrap();
        assert_ne!(
            first,
            read(&path).0.content().unwrap().digest,
            "same count and size, one pixel changed"
        );
    }

    #[test]
    fn a_file_cut_at_a_record_boundary_is_read_and_said() {
        let tmp = tempfile::tempdir().unwrap();
        let (set, warnings) = read(&batch(tmp.path(), 9, 0));
        assert_eq!(set.len(), 9);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("data_batch_1.bin holds 9 records where the CIFAR-10 binary release's holds 10000"),
            "{warnings:?}"
        );
        let (_, warnings) = read(&batch(tmp.path(), 10_000, 0));
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn a_partial_release_names_the_files_it_lacks() {
        let tmp = tempfile::tempdir().unwrap();
        batch(tmp.path(), 2, 0);
        std::fs::copy(tmp.path().join("data_batch_1.bin"), tmp.path().join("data_batch_3.bin")).unwrap();
        let config = CifarConfig {
            root: tmp.path().to_path_buf(),
            ..Default::default()
        };
        let Err(DataError::Config(e)) = config.read_splits(&mut Vec::new()) else {
            panic!("a partial release was read");
        };
        assert!(
            e.contains("lacks data_batch_2.bin, data_batch_4.bin, data_batch_5.bin of the CIFAR-10 release's"),
            "{e}"
        );
    }
}
