//! The index of a split's shards: where each sample's image lies, read from the tar headers.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::image_folder::NO_LABEL;
use crate::tar::{Member, TarReader};
use crate::DataError;

use super::{CLASSES_FILE, IMAGE_EXTENSIONS};

/// Where one sample's image lies.
#[derive(Debug, Clone)]
pub(super) struct Sample {
    pub(super) shard: u32,
    pub(super) offset: u64,
    pub(super) size: u64,
    pub(super) label: i64,
    /// The member's name (`<key>.<ext>`), for messages.
    pub(super) name: Box<str>,
}

/// Every sample of a split, shard after shard, each shard's in file order.
#[derive(Debug)]
pub(super) struct Index {
    pub(super) shards: Vec<PathBuf>,
    pub(super) samples: Vec<Sample>,
    /// Samples of shard s: `starts[s]..starts[s + 1]`.
    pub(super) starts: Vec<usize>,
    pub(super) classes: Vec<String>,
    /// Samples that had a `.cls` label: all of them in a labelled split; in a split read as
    /// unlabelled, the labels it set aside.
    pub(super) labelled: usize,
}

/// What one shard's headers hold.
#[derive(Debug, Default)]
pub(super) struct ShardListing {
    pub(super) samples: Vec<Sample>,
    /// Samples with a label, and without an image (their key, and the extensions they had).
    pub(super) labelled: usize,
    pub(super) imageless: Vec<(String, Vec<String>)>,
    /// Samples with more than one image member (their key, and those members' extensions).
    pub(super) several_images: Vec<(String, Vec<String>)>,
    /// Links named like images, left out: they hold no image.
    pub(super) image_links: Vec<String>,
}

/// `dir/name.ext` -> (`dir/name`, `ext`): the key is everything before the first dot of the
/// file name (WebDataset's `base_plus_ext`); the extension is lower-cased.
pub(super) fn split_key(name: &str) -> Option<(&str, String)> {
    let file_start = name.rfind('/').map_or(0, |i| i + 1);
    let dot = file_start + name[file_start..].find('.')?;
    if dot == file_start {
        return None; // a hidden file such as `.DS_Store`, not a sample
    }
    Some((&name[..dot], name[dot + 1..].to_ascii_lowercase()))
}

pub(super) fn list_shard(shard_id: u32, path: &Path) -> Result<ShardListing, DataError> {
    let fail = |message: String| DataError::Image {
        path: path.to_path_buf(),
        message,
    };
    let file = File::open(path).map_err(|e| fail(format!("cannot open: {e}")))?;
    let length = file.metadata().map_err(|e| fail(format!("cannot stat: {e}")))?.len();
    let mut tar = TarReader::new(file, length);
    let mut listing = ShardListing::default();
    let mut pending: Option<PendingSample> = None;
    // The samples before the current one, with their members' extensions.
    let mut finished: HashMap<String, Vec<String>> = HashMap::new();
    loop {
        let member = tar.next_member().map_err(|e| {
            if e.ends_with(crate::tar::COMPRESSED_HINT) {
                return fail(e); // intact, only compressed
            }
            fail(format!(
                "{e}. If this is a tar shard, it was cut short or damaged (say by an interrupted copy or \
                     write): copy it again, or write it again"
            ))
        })?;
        let Some(member) = member else {
            let is_image =
                |name: &String| split_key(name).is_some_and(|(_, ext)| IMAGE_EXTENSIONS.contains(&ext.as_str()));
            listing.image_links = tar.links.into_iter().filter(is_image).collect();
            break;
        };
        let Some((key, ext)) = split_key(&member.name) else {
            continue;
        };
        if pending.as_ref().is_none_or(|p| p.key != key) {
            if let Some(p) = pending.take() {
                finished.insert(p.key.clone(), p.seen.clone());
                p.add_to(&mut listing, shard_id);
            }
            // Two samples of one key: extracted and packed again (`tar --sort=name`), one of each
            // pair would be lost under the other's names.
            let is_image = |ext: &str| IMAGE_EXTENSIONS.contains(&ext);
            let again =
                |seen: &Vec<String>| seen.contains(&ext) || (is_image(&ext) && seen.iter().any(|e| is_image(e)));
            if finished.get(key).is_some_and(again) {
                return Err(fail(format!(
                    "sample {key}: a second member named {} (its data at byte {}), after other samples: two \
                     samples share the key {key}; write the shard again with a unique key per sample (from the \
                     images, with `byol-run shard`; extracting this shard would keep one of each pair)",
                    member.name, member.offset
                )));
            }
            // WebDataset groups a sample's files by consecutive names, so a key met again after
            // other samples would split one sample in two (an image here, its label there).
            if finished.contains_key(key) {
                return Err(fail(format!(
                    "sample {key}: {} (its data at byte {}) comes after other samples' files, apart from the rest of \
                     sample {key}: the files of a sample must be next to each other in the shard; write the \
                     shard again with each sample's files together (e.g. `tar --sort=name`)",
                    member.name, member.offset
                )));
            }
            pending = Some(PendingSample::new(key));
        }
        let p = pending.as_mut().expect("set above");
        // Two members of one name would give one sample the image of the first and the label of
        // the second; WebDataset's reader stops there too ("duplicate file name").
        if p.seen.contains(&ext) {
            return Err(fail(format!(
                "sample {key}: a second member named {} (its data at byte {}): each file of a sample must \
                 be in the shard once; write the shard again with a unique key per sample",
                member.name, member.offset
            )));
        }
        p.seen.push(ext.clone());
        if let Some(rank) = IMAGE_EXTENSIONS.iter().position(|e| *e == ext) {
            // One image per sample, the same whatever the members' order in the shard: the
            // first of IMAGE_EXTENSIONS (WebDataset's `to_tuple("jpg;jpeg;png")`).
            p.image_extensions.push(ext.clone());
            if p.image.as_ref().is_none_or(|(kept, _)| rank < *kept) {
                p.image = Some((rank, member));
            }
        } else if ext == "cls" {
            let data = tar.read_member(&member).map_err(fail)?;
            p.label = Some(class_number(&data).ok_or_else(|| {
                fail(format!(
                    "sample {key}: {} holds {:?}, not a class number (an ASCII integer from 0 to 2^63 - 1, such as 3)",
                    member.name,
                    String::from_utf8_lossy(&data).chars().take(40).collect::<String>()
                ))
            })?);
        }
    }
    if let Some(p) = pending.take() {
        p.add_to(&mut listing, shard_id);
    }
    Ok(listing)
}

/// The `.cls` member's class number (a non-negative ASCII integer).
fn class_number(data: &[u8]) -> Option<i64> {
    String::from_utf8_lossy(data)
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|&l| l >= 0)
}

/// The sample [`list_shard`] is gathering: the members that share its key so far.
struct PendingSample {
    key: String,
    /// The image member read, with its extension's place in IMAGE_EXTENSIONS.
    image: Option<(usize, Member)>,
    /// The extensions of every image member.
    image_extensions: Vec<String>,
    label: Option<i64>,
    /// Every extension met, to refuse a second member of the same name (and to name an imageless
    /// sample's members).
    seen: Vec<String>,
}

impl PendingSample {
    fn new(key: &str) -> Self {
        Self {
            key: key.to_string(),
            image: None,
            image_extensions: Vec::new(),
            label: None,
            seen: Vec::new(),
        }
    }

    /// Adds the gathered sample to `listing`: a sample when it has an image, else a note of it.
    fn add_to(self, listing: &mut ShardListing, shard: u32) {
        if self.image_extensions.len() > 1 {
            listing.several_images.push((self.key.clone(), self.image_extensions));
        }
        match self.image {
            Some((_, image)) => {
                listing.labelled += self.label.is_some() as usize;
                listing.samples.push(Sample {
                    shard,
                    offset: image.offset,
                    size: image.size,
                    label: self.label.unwrap_or(NO_LABEL),
                    name: image.name.into(),
                });
            }
            None => listing.imageless.push((self.key, self.seen)),
        }
    }
}

/// Lists each shard on up to `threads` threads; the listings in shard order.
fn list_shards(shards: &[PathBuf], threads: usize) -> Vec<Result<ShardListing, DataError>> {
    let threads = threads.clamp(1, shards.len().max(1));
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
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.into_iter().map(|r| r.expect("every shard listed")).collect()
}

/// The warning about samples without an image (shard, key, their other extensions), if any.
fn imageless_warning(key: &str, shards: &[PathBuf], imageless: &[(usize, String, Vec<String>)]) -> Option<String> {
    let (s, k, exts) = imageless.first()?;
    let webp = imageless.iter().any(|(_, _, e)| e.iter().any(|e| e == "webp"));
    Some(format!(
        "dataset.{key}: {} sample(s) have no .jpg, .jpeg or .png member and are left out (first: {} key {k}, \
         whose members are {}){}{}",
        imageless.len(),
        shards[*s].display(),
        exts.iter().map(|e| format!(".{e}")).collect::<Vec<_>>().join(", "),
        if webp {
            "; WebP is not decoded here: convert such images to JPEG or PNG"
        } else {
            ""
        },
        dotted_keys(imageless).unwrap_or_default()
    ))
}

/// Why samples with image members named `img.0000.jpg` have no image: the key ends at the first
/// dot, so the extension is `0000.jpg`.
fn dotted_keys(imageless: &[(usize, String, Vec<String>)]) -> Option<String> {
    imageless.iter().find_map(|(_, k, e)| {
        let ext = e
            .iter()
            .find(|e| IMAGE_EXTENSIONS.iter().any(|i| e.ends_with(&format!(".{i}"))))?;
        Some(format!(
            "; a sample's key is its member's name up to the first dot (as WebDataset reads it), so {k}.{ext} is \
             key {k} with extension .{ext}: name the members <key>.jpg with no dot in the key"
        ))
    })
}

impl Index {
    /// Lists every shard (on up to `threads` threads) and joins them in shard order.
    pub(super) fn scan(
        key: &str,
        shards: Vec<PathBuf>,
        threads: usize,
        warnings: &mut Vec<String>,
    ) -> Result<Self, DataError> {
        let mut samples = Vec::new();
        let mut starts = vec![0];
        let mut labelled = 0;
        let mut imageless: Vec<(usize, String, Vec<String>)> = Vec::new();
        let mut several_images: Vec<(usize, String, Vec<String>)> = Vec::new();
        let mut image_links: Vec<(usize, String)> = Vec::new();
        for (s, listing) in list_shards(&shards, threads).into_iter().enumerate() {
            let listing = listing?;
            image_links.extend(listing.image_links.into_iter().map(|name| (s, name)));
            labelled += listing.labelled;
            samples.extend(listing.samples);
            starts.push(samples.len());
            imageless.extend(listing.imageless.into_iter().map(|(k, e)| (s, k, e)));
            several_images.extend(listing.several_images.into_iter().map(|(k, e)| (s, k, e)));
        }
        warnings.extend(imageless_warning(key, &shards, &imageless));
        if let Some((s, name)) = image_links.first() {
            warnings.push(format!(
                "dataset.{key}: {} member(s) named like images are links, which hold no image, and are left out \
                 (first: {} member {name}); write the shards from the images themselves (GNU tar's --dereference \
                 for symbolic links, --hard-dereference for hard ones, or `byol-run shard`)",
                image_links.len(),
                shards[*s].display(),
            ));
        }
        if let Some((s, k, exts)) = several_images.first() {
            warnings.push(format!(
                "dataset.{key}: {} sample(s) have more than one image member (first: {} key {k}, with {}); each is \
                 read from its .jpg, else .jpeg, else .png, and its other images are left out",
                several_images.len(),
                shards[*s].display(),
                exts.iter().map(|e| format!(".{e}")).collect::<Vec<_>>().join(", ")
            ));
        }
        if samples.is_empty() {
            return Err(DataError::Config(format!(
                "dataset.{key}: the {} shard(s) hold no samples with a .jpg, .jpeg or .png member (first shard {}){}",
                shards.len(),
                shards[0].display(),
                dotted_keys(&imageless).unwrap_or_default()
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
            labelled,
        })
    }

    pub(super) fn path(&self, sample: &Sample) -> &Path {
        &self.shards[sample.shard as usize]
    }
}

/// The most classes label numbers may name without a `classes.txt` (ImageNet-21k has 21,841).
const MAX_NUMBERED_CLASSES: usize = 100_000;

/// Class names from the `classes.txt` next to the shards, or the label numbers themselves.
/// Shards from several folders must name their labels alike: the same label number is another
/// class in two sets written from different class folders.
pub(super) fn classes_of(key: &str, shards: &[PathBuf], samples: &[Sample]) -> Result<Vec<String>, DataError> {
    let most = samples.iter().map(|s| s.label).max().unwrap_or(0) as usize;
    let mut folders: Vec<&Path> = Vec::new();
    for shard in shards {
        let folder = shard.parent().unwrap_or(Path::new(""));
        if !folders.contains(&folder) {
            folders.push(folder);
        }
    }
    let lists = folders
        .iter()
        .map(|folder| class_list(key, &folder.join(CLASSES_FILE)))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(other) = lists.iter().position(|list| *list != lists[0]) {
        let show = |i: usize| match &lists[i] {
            Some(names) => format!(
                "{} names [{}]",
                folders[i].join(CLASSES_FILE).display(),
                names.join(", ")
            ),
            None => format!(
                "{} has no {CLASSES_FILE} (labels are numbers)",
                display_folder(folders[i])
            ),
        };
        return Err(DataError::Config(format!(
            "dataset.{key}: shards from two folders number their classes differently ({}; {}), so one label \
             number would mean two classes. Shard the data as one set (`byol-run shard` of one folder holding \
             every class), or give both folders the same {CLASSES_FILE}",
            show(0),
            show(other)
        )));
    }
    let Some(classes) = lists.into_iter().next().flatten() else {
        if most >= MAX_NUMBERED_CLASSES {
            // Label numbers name classes 0 to the largest: an ID (a taxon's, a hash) taken for a
            // label would make millions of classes, and a name for each.
            let s = samples.iter().find(|s| s.label as usize == most).expect("the largest");
            return Err(DataError::Config(format!(
                "dataset.{key}: sample {} in {} has label {most}, and labels number the classes from 0 (without a \
                 {CLASSES_FILE}, classes 0 to {most}): more than {MAX_NUMBERED_CLASSES} classes. Number the \
                 classes from 0 in the .cls files, or name them in a {CLASSES_FILE} beside the shards",
                s.name,
                shards[s.shard as usize].display(),
            )));
        }
        return Ok((0..=most).map(|l| l.to_string()).collect());
    };
    let file = folders[0].join(CLASSES_FILE);
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

/// The class names of a `classes.txt` (one a line, label 0 first); None where there is none.
fn class_list(key: &str, file: &Path) -> Result<Option<Vec<String>>, DataError> {
    if !file.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| DataError::Config(format!("dataset.{key}: cannot read {}: {e}", file.display())))?;
    // Line n names label n: a blank line among them would shift every name after it if dropped.
    // A byte-order mark (an editor's) is no part of the first name.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut classes: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
    while classes.last().is_some_and(String::is_empty) {
        classes.pop();
    }
    if let Some(blank) = classes.iter().position(String::is_empty) {
        return Err(DataError::Config(format!(
            "dataset.{key}: line {} of {} is blank, so label {blank} has no name (one class name per \
             line, label 0 first); name it or remove the line",
            blank + 1,
            file.display()
        )));
    }
    Ok(Some(classes))
}

/// A folder as messages name it: "the working directory" for the empty path.
fn display_folder(folder: &Path) -> String {
    match folder.as_os_str().is_empty() {
        true => "the working directory".to_string(),
        false => folder.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_label_number_past_the_numbered_classes_is_refused_naming_its_sample() {
        let dir = tempfile::tempdir().unwrap();
        let shards = [dir.path().join("train-000000.tar")];
        let sample = |label: i64, name: &str| Sample {
            shard: 0,
            offset: 0,
            size: 1,
            label,
            name: name.into(),
        };
        let classes = classes_of("urls", &shards, &[sample(0, "a.jpg"), sample(2, "b.jpg")]).unwrap();
        assert_eq!(classes, ["0", "1", "2"]);
        let id = sample(1_000_000_000_000, "c.jpg");
        let Err(DataError::Config(e)) = classes_of("urls", &shards, &[sample(0, "a.jpg"), id]) else {
            panic!("a label of 10^12 named 10^12 classes");
        };
        assert!(
            e.contains("sample c.jpg in") && e.contains("has label 1000000000000"),
            "{e}"
        );
    }
}
