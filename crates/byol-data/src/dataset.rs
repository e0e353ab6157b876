//! Datasets held in memory as decoded pixels. The dataset seam itself ([`Dataset`],
//! [`DatasetSpec`], [`Splits`]) lives in `byol` with the other plugin traits, so that a plugin
//! crate depends on one crate for all of them; it is re-exported here for this crate's datasets.

use tch::Tensor;

pub use byol::dataset::{fill_skipped, read_batch, read_parallel, resolve_threads, Dataset, DatasetSpec, Splits};
use byol::{Content, ContentPart, SourceFile};

use crate::DataError;

/// A whole split held in memory as decoded uint8 CHW pixels: batching is a copy of rows.
#[derive(Debug)]
pub struct ImageSet {
    pixels: Vec<u8>,
    labels: Vec<i64>,
    height: usize,
    width: usize,
    classes: Vec<String>,
    /// See [`Dataset::content`].
    content: Option<Content>,
    /// See [`Dataset::source_files`].
    sources: Option<Vec<SourceFile>>,
    /// See [`Dataset::skipped`]: the images left out when the set was decoded.
    skipped: Vec<String>,
}

impl ImageSet {
    /// `pixels` holds `labels.len()` images of `3 x height x width` bytes each, CHW.
    pub fn new(
        pixels: Vec<u8>,
        labels: Vec<i64>,
        height: usize,
        width: usize,
        classes: Vec<String>,
    ) -> Result<Self, DataError> {
        if pixels.len() != labels.len() * 3 * height * width {
            return Err(DataError::Config(format!(
                "{} bytes do not hold {} images of 3x{height}x{width}",
                pixels.len(),
                labels.len()
            )));
        }
        Ok(Self {
            pixels,
            labels,
            height,
            width,
            classes,
            content: None,
            sources: None,
            skipped: Vec::new(),
        })
    }

    /// The set with `content` as its [`Dataset::content`] (that of the files it was decoded
    /// from).
    pub fn with_content(mut self, content: Option<Content>) -> Self {
        self.content = content;
        self
    }

    /// The set with `sources` as its [`Dataset::source_files`] (the files it was decoded from).
    pub fn with_source_files(mut self, sources: Option<Vec<SourceFile>>) -> Self {
        self.sources = sources;
        self
    }

    /// The set with `skipped` as its [`Dataset::skipped`] (the images its decoding left out).
    pub fn with_skipped(mut self, skipped: Vec<String>) -> Self {
        self.skipped = skipped;
        self
    }

    /// The whole split as one tensor pair (uint8 `[N, 3, H, W]`, int64 `[N]`).
    pub fn tensors(&self) -> (Tensor, Tensor) {
        let n = self.labels.len() as i64;
        let images = Tensor::from_slice(&self.pixels).view([n, 3, self.height as i64, self.width as i64]);
        (images, Tensor::from_slice(&self.labels))
    }
}

/// Moves the readable images of a batch (those with a label) to its front, in order, drops the
/// rest, and returns their labels: `pixels` holds `labels.len()` images of `sample` bytes.
pub fn keep_readable(pixels: &mut Vec<u8>, labels: &[Option<i64>], sample: usize) -> Vec<i64> {
    let mut kept = Vec::with_capacity(labels.len());
    for (i, label) in labels.iter().enumerate() {
        if let Some(label) = label {
            let to = kept.len();
            if to != i {
                pixels.copy_within(i * sample..(i + 1) * sample, to * sample);
            }
            kept.push(*label);
        }
    }
    pixels.truncate(kept.len() * sample);
    kept
}

/// A [`Dataset::content`]: the SHA-256 of `files`, each a part, a name (an image's path
/// relative to its split's folder, or its shard's file name and member name) and a size in
/// bytes, one `name<TAB>size` line per file, in the split's order; and the same per part, in the
/// order parts first appear. The size costs nothing (listing a file reads it) and tells an image
/// replaced under the same name.
pub fn files_content(files: impl IntoIterator<Item = (impl AsRef<str>, impl AsRef<str>, u64)>) -> Content {
    use sha2::Digest;
    let mut whole = sha2::Sha256::new();
    let mut parts: Vec<(String, usize, sha2::Sha256)> = Vec::new();
    let mut part_at = std::collections::HashMap::new();
    for (part, name, size) in files {
        let line = format!("{}\t{size}\n", name.as_ref());
        whole.update(line.as_bytes());
        let at = *part_at.entry(part.as_ref().to_string()).or_insert_with(|| {
            parts.push((part.as_ref().to_string(), 0, sha2::Sha256::new()));
            parts.len() - 1
        });
        parts[at].1 += 1;
        parts[at].2.update(line.as_bytes());
    }
    Content {
        digest: hex(&whole.finalize()),
        parts: parts
            .into_iter()
            .map(|(name, files, hasher)| ContentPart {
                name,
                files,
                digest: hex(&hasher.finalize()),
            })
            .collect(),
    }
}

/// Lowercase hex of a digest.
pub(crate) fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl Dataset for ImageSet {
    fn skipped(&self) -> Vec<String> {
        self.skipped.clone()
    }

    fn len(&self) -> usize {
        self.labels.len()
    }

    fn counts_decoded(&self) -> bool {
        true
    }

    fn content(&self) -> Option<Content> {
        self.content.clone()
    }

    fn source_files(&self) -> Option<Vec<SourceFile>> {
        self.sources.clone()
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn image_shape(&self) -> [usize; 3] {
        [3, self.height, self.width]
    }

    fn as_tensors(&self) -> Option<(Tensor, Tensor)> {
        Some(self.tensors())
    }

    fn read(&self, index: usize, out: &mut [u8]) -> Result<Option<i64>, DataError> {
        let stride = 3 * self.height * self.width;
        let label = *self
            .labels
            .get(index)
            .ok_or_else(|| DataError::Config(format!("index {index} out of range for {} images", self.labels.len())))?;
        out.copy_from_slice(&self.pixels[index * stride..(index + 1) * stride]);
        Ok(Some(label))
    }

    fn batch(&self, indices: &[usize]) -> Result<(Tensor, Tensor), DataError> {
        let stride = 3 * self.height * self.width;
        let mut pixels = Vec::with_capacity(indices.len() * stride);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            if i >= self.labels.len() {
                return Err(DataError::Config(format!(
                    "index {i} out of range for {} images",
                    self.labels.len()
                )));
            }
            pixels.extend_from_slice(&self.pixels[i * stride..(i + 1) * stride]);
            labels.push(self.labels[i]);
        }
        let images = Tensor::from_slice(&pixels).view([indices.len() as i64, 3, self.height as i64, self.width as i64]);
        Ok((images, Tensor::from_slice(&labels)))
    }
}

/// The warning for files named more than once (`what`: "dataset.file_list x.txt"), told apart
/// by device and inode (`./a/1.jpg` and `a/1.jpg`, a link, a hard link are one file; one `stat`
/// each, as listing them costs already): each naming is read, so the file counts, and trains, as
/// often as it is named.
pub(crate) fn repeated_files_warning<'a>(
    what: &str,
    files: impl IntoIterator<Item = &'a std::path::Path>,
) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut repeats = 0usize;
    let mut first = None;
    for path in files {
        let Ok(metadata) = std::fs::metadata(path) else {
            continue;
        };
        if !seen.insert((metadata.dev(), metadata.ino())) {
            repeats += 1;
            first.get_or_insert_with(|| path.to_path_buf());
        }
    }
    first.map(|first| {
        format!(
            "{what} names {repeats} file(s) again that it named before (the first: {}); each naming is \
             read, so such a file counts, and trains, as often as it is named",
            first.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256(text: &str) -> String {
        use sha2::Digest;
        hex(&sha2::Sha256::digest(text.as_bytes()))
    }

    #[test]
    fn content_digests_the_whole_as_before_parts_and_each_part_alone() {
        let files = [("b/", "b/2.jpg", 7), ("a/", "a/1.jpg", 10), ("b/", "b/0.jpg", 3)];
        let content = files_content(files);
        // The whole split's digest is the one runs recorded before parts were kept, so their
        // records still match.
        assert_eq!(content.digest, sha256("b/2.jpg\t7\na/1.jpg\t10\nb/0.jpg\t3\n"));
        let parts: Vec<(&str, usize, String)> = content
            .parts
            .iter()
            .map(|p| (p.name.as_str(), p.files, p.digest.clone()))
            .collect();
        assert_eq!(
            parts,
            [
                ("b/", 2, sha256("b/2.jpg\t7\nb/0.jpg\t3\n")),
                ("a/", 1, sha256("a/1.jpg\t10\n"))
            ]
        );
    }
}
