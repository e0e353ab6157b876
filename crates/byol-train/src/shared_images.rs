//! Test images that are also training images. The kNN monitor's accuracy on queries among its
//! bank's own images measures recall, not generalization; on queries BYOL trained on, it is not
//! of held-out images either. Found by file, among files of the same name and size: the same file
//! (a link to it of its name, one folder named twice or inside the other, a shard listed in both)
//! or a copy of it (the same bytes).

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use byol::{Dataset, SourceFile};

use crate::train::monitor::LabelledSplits;
use crate::train::state::DatasetFingerprint;

/// Query files checked at most: beyond, a sample of those with a candidate among the other
/// split's files, its count scaled to them all. The sample goes by a fixed hash of the file's
/// name and size (the same on every machine), not the listing's order, which a pattern of copies
/// may follow.
const QUERIES_CHECKED: usize = 1000;

/// Files of the other split a query is compared with at most (files of one name and size in
/// every class folder): a start reads at most this many files per query checked, and its own once.
const CANDIDATES_PER_QUERY: usize = 16;

/// Files up to this size are compared whole (every image); larger ones (shards) by their size,
/// their first and their last [`ENDS_COMPARED`] bytes.
const COMPARED_WHOLE: u64 = 64 << 20;
const ENDS_COMPARED: u64 = 4 << 20;

/// The images of one split found among another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shared {
    pub images: usize,
    /// The images of the split looked for.
    pub of: usize,
    /// Whether `images` was scaled from a sample of the files checked.
    pub estimated: bool,
}

impl Shared {
    /// `12 of the 40`, or `about 1200 of the 10000`.
    pub fn describe(&self) -> String {
        let about = if self.estimated { "about " } else { "" };
        format!("{about}{} of the {}", self.images, self.of)
    }
}

/// The images of `queries` that `bank` holds too, by file; None where either split has no files
/// of its own (generated images).
pub fn shared_images(bank: &dyn Dataset, queries: &dyn Dataset) -> Option<Shared> {
    Some(shared_files(&bank.source_files()?, &queries.source_files()?))
}

/// The images of `queries` that `bank` holds too: files of the same name and size that are one
/// file or hold the same bytes ([`same_file_or_bytes`]).
fn shared_files(bank: &[SourceFile], queries: &[SourceFile]) -> Shared {
    let mut by_name_and_size: HashMap<(&std::ffi::OsStr, u64), Vec<&SourceFile>> = HashMap::new();
    for file in bank {
        if let Some(name) = file.path.file_name() {
            by_name_and_size.entry((name, file.size)).or_default().push(file);
        }
    }
    let candidates: Vec<(&SourceFile, &[&SourceFile])> = queries
        .iter()
        .filter_map(|q| {
            let found = by_name_and_size.get(&(q.path.file_name()?, q.size))?;
            Some((q, found.as_slice()))
        })
        .collect();
    let of = queries.iter().map(|q| q.images).sum();
    let mut checked: Vec<_> = candidates.iter().collect();
    if checked.len() > QUERIES_CHECKED {
        checked.sort_by_cached_key(|(q, _)| sample_key(q));
        checked.truncate(QUERIES_CHECKED);
    }
    let shared: usize = checked
        .iter()
        .filter(|(q, found)| same_file_or_bytes(&q.path, found.iter().take(CANDIDATES_PER_QUERY).map(|b| &b.path)))
        .map(|(q, _)| q.images)
        .sum();
    let images_checked: usize = checked.iter().map(|(q, _)| q.images).sum();
    let images_with_candidates: usize = candidates.iter().map(|(q, _)| q.images).sum();
    let estimated = checked.len() < candidates.len();
    let images = match estimated {
        true => (shared as f64 * images_with_candidates as f64 / images_checked.max(1) as f64).round() as usize,
        false => shared,
    };
    Shared { images, of, estimated }
}

/// A query's place in the sample: FNV-1a of its file name and size.
fn sample_key(file: &SourceFile) -> u64 {
    let name = file.path.file_name().map_or(&[][..], |n| n.as_encoded_bytes());
    name.iter()
        .chain(&file.size.to_le_bytes())
        .fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// Whether `query` is one of `others` (files of its name and size) by device and inode, or holds
/// the same bytes as one ([`compared_bytes`]); a file that cannot be read is none.
fn same_file_or_bytes<'a>(query: &Path, others: impl Iterator<Item = &'a std::path::PathBuf>) -> bool {
    let Ok(meta) = std::fs::metadata(query) else {
        return false;
    };
    let mut bytes = None;
    for other in others {
        let Ok(other_meta) = std::fs::metadata(other) else {
            continue;
        };
        if (meta.dev(), meta.ino()) == (other_meta.dev(), other_meta.ino()) {
            return true;
        }
        let mine = bytes.get_or_insert_with(|| compared_bytes(query, meta.len()));
        if mine.is_some() && *mine == compared_bytes(other, other_meta.len()) {
            return true;
        }
    }
    false
}

/// The bytes two files of one size are compared by: all of them up to [`COMPARED_WHOLE`], else
/// the first and the last [`ENDS_COMPARED`].
fn compared_bytes(path: &Path, size: u64) -> Option<Vec<u8>> {
    let mut file = std::fs::File::open(path).ok()?;
    let mut bytes = Vec::new();
    if size <= COMPARED_WHOLE {
        file.read_to_end(&mut bytes).ok()?;
        return Some(bytes);
    }
    (&mut file).take(ENDS_COMPARED).read_to_end(&mut bytes).ok()?;
    file.seek(std::io::SeekFrom::Start(size - ENDS_COMPARED)).ok()?;
    file.take(ENDS_COMPARED).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

/// What says the kNN monitor's test images are not held out: the same files as its bank (by the
/// data's digest), some of its bank's images, or images BYOL trains on (`train`, where it is
/// not the bank).
pub(crate) fn test_images_seen(
    train: &Arc<dyn Dataset>,
    labelled: Option<&LabelledSplits>,
    fingerprint: &DatasetFingerprint,
) -> Vec<String> {
    let Some(LabelledSplits { bank, queries }) = labelled else {
        return Vec::new();
    };
    const HELD_OUT: &str = "point the test split (dataset.test, dataset.test_urls or eval.test) at held-out images";
    let digest = |split: &str| fingerprint.0.get(split).and_then(|s| s.files_digest.clone());
    const ALL_OF_THEM: &str = "the kNN monitor's test images are its training images";
    let mut warnings = Vec::new();
    match shared_images(bank.as_ref(), queries.as_ref()) {
        Some(shared) if shared.images > 0 && shared.images == shared.of && !shared.estimated => {
            warnings.push(format!(
                "{ALL_OF_THEM} (the same files, or copies of the same name, size and bytes): its accuracy measures \
                 recall of images it has seen, not generalization; {HELD_OUT}"
            ));
        }
        Some(shared) if shared.images > 0 => warnings.push(format!(
            "{} kNN test images are among the kNN monitor's training images (the same files, or copies of the \
             same name, size and bytes): its accuracy partly measures recall of images it has seen; {HELD_OUT}, \
             or take them out of its training images",
            shared.describe()
        )),
        Some(_) => {}
        // Sources without files of their own: their digest is of their bytes (CIFAR's files).
        None => {
            if let (Some(b), Some(q)) = (digest("knn_bank"), digest("knn_queries")) {
                if b == q {
                    warnings.push(format!(
                        "{ALL_OF_THEM} (the same data): its accuracy measures recall of images it has seen, not \
                         generalization; {HELD_OUT}"
                    ));
                }
            }
        }
    }
    // BYOL's own training images, where they are not the bank.
    if !Arc::ptr_eq(train, bank) {
        if let Some(shared) = shared_images(train.as_ref(), queries.as_ref()).filter(|s| s.images > 0) {
            warnings.push(format!(
                "{} kNN test images are among the images BYOL trains on (dataset.train; the same files, or copies \
                 of the same name, size and bytes): the network has seen them, so the kNN accuracy is not one of \
                 held-out images; take them out of the training images",
                shared.describe()
            ));
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(paths: &[std::path::PathBuf]) -> Vec<SourceFile> {
        paths
            .iter()
            .map(|path| SourceFile {
                path: path.clone(),
                size: std::fs::metadata(path).unwrap().len(),
                images: 1,
            })
            .collect()
    }

    /// Writes `name` under `dir` with `bytes`, and returns its path.
    fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn the_same_file_and_copies_are_shared_and_namesakes_of_the_same_size_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let train = [
            write(dir.path(), "train/cat/1.jpg", b"cat one"),
            write(dir.path(), "train/cat/2.jpg", b"cat two"),
            write(dir.path(), "train/dog/3.jpg", b"dog three"),
        ];
        // A link to a training image, a copy of one under its name elsewhere, and an image of
        // the same name and size with other bytes.
        std::fs::create_dir_all(dir.path().join("test/cat")).unwrap();
        std::os::unix::fs::symlink(&train[0], dir.path().join("test/cat/1.jpg")).unwrap();
        let test = [
            dir.path().join("test/cat/1.jpg"),
            write(dir.path(), "test/dog/3.jpg", b"dog three"),
            write(dir.path(), "test/cat/2.jpg", b"cat TWO"),
            write(dir.path(), "test/dog/4.jpg", b"dog four"),
        ];
        let shared = shared_files(&listed(&train), &listed(&test));
        assert_eq!(
            shared,
            Shared {
                images: 2,
                of: 4,
                estimated: false
            }
        );
        // The same folder named for both: every image.
        let all = shared_files(&listed(&train), &listed(&train));
        assert_eq!((all.images, all.of), (3, 3));
    }

    #[test]
    fn many_candidates_are_sampled_and_scaled() {
        let dir = tempfile::tempdir().unwrap();
        // 3000 test images of training names and sizes, every third a copy.
        let (mut train, mut test) = (Vec::new(), Vec::new());
        for i in 0..3000 {
            let name = format!("{i:05}.jpg");
            train.push(write(
                dir.path(),
                &format!("train/{name}"),
                format!("a{i:05}").as_bytes(),
            ));
            let bytes = if i % 3 == 0 {
                format!("a{i:05}")
            } else {
                format!("b{i:05}")
            };
            test.push(write(dir.path(), &format!("test/{name}"), bytes.as_bytes()));
        }
        let shared = shared_files(&listed(&train), &listed(&test));
        assert!(shared.estimated, "{shared:?}");
        assert_eq!(shared.of, 3000);
        // 1000 of 3000 drawn without replacement, a third of them copies: the scaled count has a
        // standard deviation of 3000 * sqrt(1/3 * 2/3 / 1000) * sqrt(2000 / 2999) = 36.5; five
        // of them bound it (the sample is one fixed draw by the hash of names and sizes; the
        // bound holds for the draws of 1000 other name patterns, checked when it was written).
        // A sample in listing order, as every third file, would be off by 2000.
        assert!(shared.images.abs_diff(1000) <= 183, "{shared:?}");
        assert!(shared.describe().starts_with("about "), "{}", shared.describe());
    }
}
