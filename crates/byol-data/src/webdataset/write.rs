//! `byol-run shard`: packing labelled image folders into shards.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::image_folder::NO_LABEL;
use crate::tar::TarWriter;
use crate::DataError;

use super::reader::shuffled;
use super::CLASSES_FILE;

/// What [`write_shards`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardsWritten {
    pub samples: usize,
    pub shards: Vec<PathBuf>,
    /// The `urls` pattern that names them (`dir/train-{000000..000012}.tar`).
    pub urls: String,
    /// Class names when the folder has class sub-folders (written to `classes.txt`).
    pub classes: Vec<String>,
    /// Class folders without images (their labels still count), files left out.
    pub warnings: Vec<String>,
    /// Where each sample came from: `<key>\t<shard>\t<source file>` lines, one per sample.
    pub sources: PathBuf,
}

/// The file beside the shards that names each sample's source, for the shard `pattern`'s
/// prefix (`shards/train-%06d.tar` -> `shards/train-sources.tsv`).
fn sources_file(head: &str) -> PathBuf {
    PathBuf::from(format!("{head}sources.tsv"))
}

/// Writes the images under `source` into tar shards of `per_shard` samples each, named by
/// `pattern` with one printf-style `%06d` (or `%d`) for the shard number, as WebDataset's
/// `ShardWriter` names them. Class sub-folders become `.cls` labels and a `classes.txt` next to
/// the shards; a folder without class sub-folders, or any folder when `unlabelled`, gives
/// unlabelled samples (every image at any depth). Image files are copied as they are, not re-encoded. With `shuffle_seed`, samples are
/// written in a random order, so that each shard mixes the classes (a shard shuffle and a buffer
/// shuffle cannot mix shards that each hold one class); keys number the samples as written.
pub fn write_shards(
    source: &Path,
    pattern: &str,
    per_shard: usize,
    shuffle_seed: Option<u64>,
    unlabelled: bool,
) -> Result<ShardsWritten, DataError> {
    if per_shard == 0 {
        return Err(DataError::Config("--per-shard must be at least 1".into()));
    }
    let (head, width, tail) = parse_pattern(pattern)?;
    let (classes, mut files, mut warnings) = crate::image_folder::images_for_shards(source, unlabelled)?;
    if let Some(seed) = shuffle_seed {
        let order = shuffled(files.len(), &[seed, 0x7764_7772]);
        files = order.into_iter().map(|i| files[i].clone()).collect();
    }
    check_number_width(pattern, width, files.len().div_ceil(per_shard))?;
    let shard_name = |n: usize| PathBuf::from(format!("{head}{n:0width$}{tail}"));
    let first = shard_name(0);
    let sources = sources_file(head);
    // Overwritten in part, an earlier set would mix with this one: a shorter set leaves the
    // earlier one's later shards beside it, under the same `urls` pattern. Its sources file is
    // checked too: a set named with another number width shares it.
    if let Some(there) = [&first, &sources].into_iter().find(|p| p.exists()) {
        return Err(DataError::Config(format!(
            "--out {pattern:?}: {} already exists; shards written there before would mix with these. \
             Remove the old shards (with their sources.tsv, any .tar.partial file that a stopped `shard` \
             left, and classes.txt unless another set in that folder reads it) or write to another folder",
            there.display()
        )));
    }
    let dir = first
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let class_list = class_list(source, dir, &classes)?;
    std::fs::create_dir_all(dir)
        .map_err(|e| DataError::Config(format!("cannot create the folder {}: {e}", dir.display())))?;
    let key_width = 6.max(files.len().saturating_sub(1).to_string().len());
    let sources_out = File::create_new(&sources)
        .map_err(|e| DataError::Config(format!("cannot create {}: {e}", sources.display())))?;
    let mut shards = ShardsInProgress {
        name: &shard_name,
        per_shard,
        key_width,
        open: None,
        written: Vec::new(),
        samples: 0,
        sources: (sources.clone(), sources_out),
        class_list: None,
    };
    // Written before the first shard, so that shards whose writing stopped part way (an error,
    // a kill) are still whole with their class names and sources.
    if let Some(text) = class_list {
        let list = dir.join(CLASSES_FILE);
        if !list.exists() {
            std::fs::write(&list, text)
                .map_err(|e| DataError::Config(format!("cannot write {}: {e}", list.display())))?;
            shards.class_list = Some(list);
        }
    }
    let mut left_out = Vec::new();
    for (image, label) in &files {
        // A file that cannot be read (a link to a missing file) is left out as training skips it.
        match std::fs::read(image) {
            Ok(bytes) if looks_like_an_image(&bytes) => shards.add(image, &bytes, *label)?,
            _ => left_out.push(image),
        }
    }
    shards.close()?;
    let (samples, shards) = (shards.samples, shards.written.clone());
    let left_out = left_out.first().map(|first| {
        format!(
            "{} file(s) named like images cannot be read or are neither JPEG nor PNG (empty, text, another \
             format) and are left out of the shards (the first: {})",
            left_out.len(),
            first.display()
        )
    });
    if samples == 0 {
        let why = left_out.unwrap_or_default();
        return Err(DataError::Config(format!("no shard written, no image left: {why}")));
    }
    warnings.extend(left_out);
    let last = shards.len() - 1;
    let urls = if last == 0 {
        shard_name(0).display().to_string()
    } else {
        format!("{head}{{{:0width$}..{last:0width$}}}{tail}", 0)
    };
    Ok(ShardsWritten {
        samples,
        shards,
        urls,
        classes,
        warnings,
        sources,
    })
}

/// The `classes.txt` to write beside the shards in `dir` (None when unlabelled). Refused before
/// any shard is written: a class name that would not read back as itself (one line, trimmed),
/// and a `classes.txt` already there with other classes, which the shards written with it (the
/// other split, say) share: one of the two sets would then read the other's names for its labels.
fn class_list(source: &Path, dir: &Path, classes: &[String]) -> Result<Option<String>, DataError> {
    if classes.is_empty() {
        return Ok(None);
    }
    if let Some(bad) = classes
        .iter()
        .find(|c| c.trim() != c.as_str() || c.contains(['\n', '\r']))
    {
        return Err(DataError::Config(format!(
            "class folder {:?} of {}: {CLASSES_FILE} holds one class name a line, trimmed, so this name would \
             not read back as itself; rename the folder",
            bad,
            source.display()
        )));
    }
    let text: String = classes.iter().map(|c| format!("{c}\n")).collect();
    let list = dir.join(CLASSES_FILE);
    match std::fs::read_to_string(&list) {
        Ok(there)
            if there
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .ne(classes.iter().map(String::as_str)) =>
        {
            Err(DataError::Config(format!(
                "{} already names other classes ({} of them) than the class folders of {} ({}): both sets of \
                 shards would read it, and one would give its labels the other's names. Write these shards to \
                 another folder, or give both splits the same class folders",
                list.display(),
                there.lines().filter(|l| !l.trim().is_empty()).count(),
                source.display(),
                classes.len()
            )))
        }
        _ => Ok(Some(text)),
    }
}

/// Whether `bytes` start as a JPEG or a PNG file does: the formats training reads. Checked on
/// the bytes copied anyway (decoding every image would cost the packing's time many times over).
fn looks_like_an_image(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xff, 0xd8, 0xff]) || bytes.starts_with(b"\x89PNG\r\n\x1a\n")
}

/// Shards being written: samples go into the open one until it holds `per_shard`.
struct ShardsInProgress<'a> {
    /// The path of shard n.
    name: &'a dyn Fn(usize) -> PathBuf,
    per_shard: usize,
    key_width: usize,
    open: Option<OpenShard>,
    written: Vec<PathBuf>,
    samples: usize,
    /// The sources file.
    sources: (PathBuf, File),
    /// `classes.txt`, when this run wrote it.
    class_list: Option<PathBuf>,
}

/// The shard being written.
struct OpenShard {
    path: PathBuf,
    tar: TarWriter<std::io::BufWriter<File>>,
    held: usize,
    /// Its samples' source lines (`<key>\t<shard>\t<source file>`), added to the sources file
    /// once the shard is whole.
    sources: String,
}

impl ShardsInProgress<'_> {
    fn add(&mut self, image: &Path, bytes: &[u8], label: i64) -> Result<(), DataError> {
        if self.open.is_none() {
            let path = (self.name)(self.written.len());
            let file = File::create(partial(&path)).map_err(|e| write_error(&path, e))?;
            let tar = TarWriter::new(std::io::BufWriter::with_capacity(1 << 20, file));
            self.open = Some(OpenShard {
                path,
                tar,
                held: 0,
                sources: String::new(),
            });
        }
        let OpenShard {
            path,
            tar,
            held,
            sources,
        } = self.open.as_mut().expect("opened above");
        let key = format!("{:0width$}", self.samples, width = self.key_width);
        let ext = match image.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()) {
            // JPEG's other names: WebDataset readers look for `.jpg`, `.jpeg` or `.png`.
            Some(e) if ["jpe", "jfif", "jif"].contains(&e.as_str()) => "jpg".to_string(),
            e => e.unwrap_or_default(),
        };
        tar.append(&format!("{key}.{ext}"), bytes)
            .map_err(|e| write_error(path, e))?;
        if label != NO_LABEL {
            tar.append(&format!("{key}.cls"), label.to_string().as_bytes())
                .map_err(|e| write_error(path, e))?;
        }
        let shard = path.file_name().unwrap_or_default().to_string_lossy();
        sources.push_str(&format!("{key}\t{shard}\t{}\n", crate::path_line(image)));
        self.samples += 1;
        *held += 1;
        if *held == self.per_shard {
            self.close()?;
        }
        Ok(())
    }

    /// Ends the open shard: synced, its samples' sources added to the sources file, then renamed
    /// to its name, so that a killed run never leaves a short shard under the name, nor a whole
    /// one that the sources file does not name (it may name one that a kill left unrenamed).
    fn close(&mut self) -> Result<(), DataError> {
        let Some(OpenShard { path, tar, sources, .. }) = self.open.take() else {
            return Ok(());
        };
        let file = tar
            .finish()
            .map_err(|e| write_error(&path, e))?
            .into_inner()
            .map_err(|e| write_error(&path, e.into_error()))?;
        file.sync_all().map_err(|e| write_error(&path, e))?;
        let (sources_path, sources_file) = &mut self.sources;
        let listed = std::io::Write::write_all(sources_file, sources.as_bytes())
            .and_then(|()| sources_file.sync_data())
            .map_err(|e| DataError::Config(format!("cannot write {}: {e}", sources_path.display())));
        let renamed = listed.and_then(|()| {
            std::fs::rename(partial(&path), &path).map_err(|e| {
                DataError::Config(format!(
                    "cannot rename {} to {}: {e}",
                    partial(&path).display(),
                    path.display()
                ))
            })
        });
        if renamed.is_err() {
            let _ = std::fs::remove_file(partial(&path));
        }
        renamed?;
        self.written.push(path);
        Ok(())
    }
}

impl Drop for ShardsInProgress<'_> {
    /// A shard left open by an error is removed: no partial file stays beside the shards. With
    /// no shard written, the sources file and the `classes.txt` this run wrote go too.
    fn drop(&mut self) {
        if let Some(open) = self.open.take() {
            let _ = std::fs::remove_file(partial(&open.path));
        }
        if self.written.is_empty() {
            let _ = std::fs::remove_file(&self.sources.0);
            if let Some(list) = &self.class_list {
                let _ = std::fs::remove_file(list);
            }
        }
    }
}

/// Where shard `path` is written until it is whole.
pub(super) fn partial(path: &Path) -> PathBuf {
    path.with_extension("tar.partial")
}

fn write_error(path: &Path, e: std::io::Error) -> DataError {
    DataError::Config(format!("cannot write {}: {e}", partial(path).display()))
}

/// Refuses a zero-padded number too narrow for `shards` shards, before any is written: with
/// `%02d`, shard 100 takes three digits where shard 0 has two, and no `{00..199}` range names
/// both (a range pads every number to its bounds' width, as braceexpand does). `%d` pads nothing,
/// and its `{0..199}` range names every shard.
fn check_number_width(pattern: &str, width: usize, shards: usize) -> Result<(), DataError> {
    let digits = shards.saturating_sub(1).to_string().len();
    if width >= 2 && digits > width {
        return Err(DataError::Config(format!(
            "--out {pattern:?}: the {shards} shards this writes need {digits}-digit numbers, which %0{width}d \
             does not pad to one width (shard 0 would take {width} digits, the last {digits}), and no \
             `urls` range could name them all; use %0{digits}d or wider (%06d is usual)"
        )));
    }
    Ok(())
}

/// `train-%06d.tar` -> (`train-`, 6, `.tar`).
pub(super) fn parse_pattern(pattern: &str) -> Result<(&str, usize, &str), DataError> {
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
    let tail = &rest[d + 1..];
    if tail.contains('/') {
        // One folder per shard: a `urls` range names files, and the sources file and classes.txt
        // go beside the shards, in one folder.
        return Err(DataError::Config(format!(
            "--out {pattern:?}: the shard number is in a folder's name; put every shard in one folder, numbered \
             in the file's name, as in shards/train-%06d.tar"
        )));
    }
    Ok((&pattern[..start], width, tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_take_one_printf_number() {
        assert_eq!(parse_pattern("s/train-%06d.tar").unwrap(), ("s/train-", 6, ".tar"));
        assert_eq!(parse_pattern("%d.tar").unwrap(), ("", 0, ".tar"));
        assert!(parse_pattern("train.tar").is_err());
        assert!(parse_pattern("%06d-%06d.tar").is_err());
        let e = parse_pattern("out/s-%02d/train.tar").unwrap_err().to_string();
        assert!(e.contains("the shard number is in a folder's name"), "{e}");
    }

    #[test]
    fn a_number_too_narrow_for_the_shards_is_refused() {
        assert!(check_number_width("o-%02d.tar", 2, 100).is_ok(), "00..99");
        let e = check_number_width("o-%02d.tar", 2, 200).unwrap_err().to_string();
        assert!(
            e.contains("the 200 shards this writes need 3-digit numbers") && e.contains("%03d"),
            "{e}"
        );
        assert!(
            check_number_width("o-%d.tar", 0, 5000).is_ok(),
            "%d pads nothing: {{0..4999}}"
        );
        assert!(check_number_width("o-%1d.tar", 1, 5000).is_ok(), "nor does %1d");
        assert!(check_number_width("o-%06d.tar", 6, 1_000_000).is_ok());
    }
}
