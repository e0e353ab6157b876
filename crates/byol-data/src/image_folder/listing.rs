//! Which files a split holds: class folders, unlabelled trees, file lists.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use crate::dataset::repeated_files_warning;
use crate::DataError;

use super::wording::{Split, Wording};
use super::{EXTENSIONS, NO_LABEL};

/// The files of one split and their labels (no classes and [`NO_LABEL`] when unlabelled).
#[derive(Debug)]
pub(super) struct Listing {
    pub(super) root: PathBuf,
    pub(super) classes: Vec<String>,
    pub(super) files: Vec<(PathBuf, i64)>,
    /// Each file's size in bytes, as listed.
    pub(super) sizes: Vec<u64>,
}

/// The part of a listing's [`byol::Content`] that holds the files directly in its folder.
const TOP_LEVEL_PART: &str = "(files at the top level)";

/// An image file found by a listing, with its size in bytes.
type Found = (PathBuf, u64);

impl Listing {
    fn new(root: &Path, classes: Vec<String>, found: impl IntoIterator<Item = (Found, i64)>) -> Self {
        let (files, sizes) = found
            .into_iter()
            .map(|((path, size), label)| ((path, label), size))
            .unzip();
        Self {
            root: root.to_path_buf(),
            classes,
            files,
            sizes,
        }
    }

    /// The split's [`crate::Dataset::source_files`]: each image file.
    pub(super) fn source_files(&self) -> Vec<byol::SourceFile> {
        self.files
            .iter()
            .zip(&self.sizes)
            .map(|((path, _), &size)| byol::SourceFile {
                path: path.clone(),
                size,
                images: 1,
            })
            .collect()
    }

    /// The split's [`crate::Dataset::content`]: its files' paths relative to `root`, and their
    /// sizes; its parts are the folders under `root` (the classes of a labelled split), and the
    /// files directly in it.
    pub(super) fn content(&self) -> byol::Content {
        crate::dataset::files_content(self.files.iter().zip(&self.sizes).map(|((path, _), &size)| {
            let relative = path.strip_prefix(&self.root).unwrap_or(path);
            let mut components = relative.components();
            let part = match (components.next(), components.next()) {
                (Some(folder), Some(_)) => format!("{}/", crate::name_text(folder.as_os_str())),
                _ => TOP_LEVEL_PART.to_string(),
            };
            (part, crate::name_text(relative.as_os_str()), size)
        }))
    }
}

/// The size of `path` when it is a file (following links), else None.
fn file_size(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().filter(|m| m.is_file()).map(|m| m.len())
}

/// Image files with their labels.
pub(crate) type LabelledFiles = Vec<(PathBuf, i64)>;

/// The images of `dir` as `byol-run shard` packs them: with class sub-folders, each one's images
/// (labels = folder order, as `image_folder` reads them); without, every image at any depth,
/// unlabelled ([`NO_LABEL`]). Returns the classes, the files, and warnings (empty class folders).
pub(crate) fn images_for_shards(
    dir: &Path,
    unlabelled: bool,
) -> Result<(Vec<String>, LabelledFiles, Vec<String>), DataError> {
    if !dir.is_dir() {
        return Err(DataError::Config(format!(
            "{} is not a folder; give a folder of images (one sub-folder per class, or any tree of images)",
            dir.display()
        )));
    }
    let mut warnings = Vec::new();
    let wording = Wording::argument("add --unlabelled");
    let split = Split::train(&wording);
    let listing = if !unlabelled && has_class_folders(dir)? {
        scan(split, dir, None, 0, &mut warnings)?
    } else {
        scan_unlabelled(split, dir, None, 0, &mut warnings)?
    };
    Ok((listing.classes, listing.files, warnings))
}

/// The error for a labelled split at `root` without class sub-folders.
pub(super) fn no_class_folders(split: Split, root: &Path) -> DataError {
    let has_images = has_images_under(root).unwrap_or(false);
    let (at, layout, train) = (split.at(), split.layout(), &split.wording.train.key);
    DataError::Config(match (split.test, has_images) {
        (true, true) => format!(
            "{at}{} holds images but no class sub-folders, and the kNN monitor's test split needs their \
             labels: put its images in one sub-folder per class, as in {train} ({layout})",
            root.display()
        ),
        (false, true) => format!(
            "{at}{} holds images but no class sub-folders; put them in one sub-folder per class ({layout}){}",
            root.display(),
            split.wording.or_unlabelled("for unlabelled training")
        ),
        (true, false) => format!(
            "{at}{} has no class sub-folders and no images; put the kNN monitor's test images in one \
             sub-folder per class, as in {train} ({layout})",
            root.display()
        ),
        (false, false) => format!(
            "{at}{} has no class sub-folders and no images; put the images in one sub-folder per class \
             ({layout}){}",
            root.display(),
            split.wording.unlabelled.as_ref().map_or(String::new(), |how| format!(
                ", or anywhere under it for unlabelled training ({how})"
            )) + &other_dataset_note(split, root)
        ),
    })
}

pub(super) fn test_needs_labels(train: &Path) -> DataError {
    DataError::Config(format!(
        "dataset.test needs labelled training images as the kNN bank, and dataset.train = {} is unlabelled; \
         remove dataset.test and set eval.train and eval.test to labelled image folders (<split>/<class>/<image>)",
        train.display()
    ))
}

/// Whether `dir` has a sub-folder that can be a class (hidden ones cannot). False for a folder
/// that does not exist: `scan` reports that with the fix.
pub fn has_class_folders(dir: &Path) -> Result<bool, DataError> {
    if !dir.is_dir() {
        return Ok(false);
    }
    Ok(list(dir)?.iter().any(|p| p.is_dir() && !is_hidden(p)))
}

/// The class names of a labelled split's folder: its sub-folders but hidden ones, sorted.
pub(super) fn class_names(dir: &Path) -> Result<Vec<String>, DataError> {
    Ok(names_of(&class_folders(&list(dir)?)))
}

/// The class folders among a labelled split's sorted `entries`: hidden folders (.git,
/// .ipynb_checkpoints) are not classes.
fn class_folders(entries: &[PathBuf]) -> Vec<PathBuf> {
    entries
        .iter()
        .filter(|p| p.is_dir() && !is_hidden(p))
        .cloned()
        .collect()
}

fn names_of(dirs: &[PathBuf]) -> Vec<String> {
    dirs.iter()
        .map(|d| crate::name_text(d.file_name().unwrap_or_default()))
        .collect()
}

pub(super) fn has_images_under(dir: &Path) -> Result<bool, DataError> {
    if !dir.is_dir() {
        return Ok(false);
    }
    let tree = ImageTree::walk(dir).map_err(DataError::Config)?;
    Ok(!tree.images.is_empty())
}

/// What walks found besides images ([`ImageTree`]'s lists), gathered over the walks of one
/// split (its class folders) and told as warnings once.
#[derive(Debug, Default)]
pub struct PassedOver {
    other_formats: Vec<PathBuf>,
    revisits: Vec<PathBuf>,
    not_files: Vec<PathBuf>,
    linked_to_images_read: Vec<PathBuf>,
}

impl PassedOver {
    /// Takes what `tree` passed over (its images stay).
    pub fn take_from(&mut self, tree: &mut ImageTree) {
        self.other_formats.append(&mut tree.other_formats);
        self.revisits.append(&mut tree.revisits);
        self.not_files.append(&mut tree.not_files);
        self.linked_to_images_read.append(&mut tree.linked_to_images_read);
    }

    /// `; <the other formats warning>` when files of other formats were passed over: the reason
    /// a folder of images holds none that are read.
    fn other_formats_note(&self, root: &Path, purpose: &str) -> String {
        other_formats_warning(root, &self.other_formats, purpose).map_or(String::new(), |w| format!("; {w}"))
    }

    /// One warning each for files of other formats, folders not read again, links to images read
    /// where they are, and entries that are not files, found under `root`; the images are read
    /// to `purpose` (`train on them`), `labelled` by their class folders or not.
    pub fn warnings(&self, root: &Path, purpose: &str, labelled: bool) -> impl Iterator<Item = String> {
        let revisits = self.revisits.first().map(|first| match labelled {
            true => format!(
                "{} folder(s) under {} were not read there, to read each folder once, in the class folder that \
                 holds it: a link in a loop, to a folder above, into another class folder, a second path to a \
                 folder already read, or a folder another class folder links to (the first: {})",
                self.revisits.len(),
                root.display(),
                first.display()
            ),
            false => format!(
                "{} folder(s) under {} were not read there, to read each folder once: a link in a loop, to a \
                 folder above, or a second path to a folder already read (the first: {})",
                self.revisits.len(),
                root.display(),
                first.display()
            ),
        });
        let not_files = self.not_files.first().map(|first| {
            format!(
                "{} entries under {} named like images are not files (pipes, sockets or devices) and are left \
                 out (the first: {})",
                self.not_files.len(),
                root.display(),
                first.display()
            )
        });
        let linked = self.linked_to_images_read.first().map(|first| {
            let once = match labelled {
                true => "each image is read once, under the label of the class folder that holds it",
                false => "each image is read once",
            };
            format!(
                "{} image(s) under {} are links to images read where they are and are left out: {once} (the \
                 first: {})",
                self.linked_to_images_read.len(),
                root.display(),
                first.display()
            )
        });
        other_formats_warning(root, &self.other_formats, purpose)
            .into_iter()
            .chain(revisits)
            .chain(linked)
            .chain(not_files)
    }
}

/// The images of `tree` with their sizes; a folder under it that could not be listed is an
/// error. A name that cannot be followed (a link to a missing file) stays, with size 0: reading
/// it fails and `dataset.on_bad_image` decides, so it is counted or named, never lost without a
/// word.
fn found_images(mut tree: ImageTree, passed_over: &mut PassedOver) -> Result<Vec<Found>, DataError> {
    passed_over.take_from(&mut tree);
    match tree.unlistable.into_iter().next() {
        Some(why) => Err(DataError::Config(why)),
        None => Ok(tree
            .images
            .into_iter()
            .map(|p| {
                let size = std::fs::metadata(&p).map_or(0, |m| m.len());
                (p, size)
            })
            .collect()),
    }
}

/// The image files under a folder, at any depth, as training reads a class folder or an
/// unlabelled split: hidden files and folders are left out, symbolic links are followed, and each
/// real folder is entered once (a link back up the tree would otherwise be followed round and
/// round). A folder that holds the root is not entered (it would read the root again, and what
/// lies beside it), nor, while walking one class folder of a split, a folder inside another
/// (its images have that class).
#[derive(Debug, Default)]
pub struct ImageTree {
    /// Every entry named like an image that is a file, or a link to a missing one (reading it
    /// says what is wrong), sorted by path (each folder's entries in order, sub-folders where
    /// they sort).
    pub images: Vec<PathBuf>,
    /// Folders reached through a symbolic link and not entered: walked before (a loop, a second
    /// path to one folder), holding the root, or inside another class folder.
    pub revisits: Vec<PathBuf>,
    /// Entries named like images that are neither files nor folders (pipes, sockets, devices):
    /// opening a pipe would wait forever, and a device could be read without end.
    pub not_files: Vec<PathBuf>,
    /// Links to images that the walk reads where they are (in this class folder or another),
    /// left out: read twice, an image would weigh double, and under another class's label.
    pub linked_to_images_read: Vec<PathBuf>,
    /// Folders below the root that could not be listed or resolved, with the reason; the walk
    /// goes on past them.
    pub unlistable: Vec<String>,
    /// Files named like images of formats that are not read (`.webp`, `.bmp`, `.tif`, ...: what
    /// torchvision's `ImageFolder` would have read beside JPEG and PNG), sorted by path.
    pub other_formats: Vec<PathBuf>,
}

impl ImageTree {
    /// Walks `root`, as training reads it. Only a root that cannot be resolved or listed is an
    /// error, whose message names it.
    pub fn walk(root: &Path) -> Result<Self, String> {
        let mut trees = Self::walk_classes(root, &[root.to_path_buf()])?;
        Ok(trees.pop().expect("one tree per folder"))
    }

    /// [`ImageTree::walk`] keeping every name of an image, links to images read elsewhere in the
    /// tree included: `embed` gives each file it is given a row, looked up by its name.
    pub fn walk_every_name(root: &Path) -> Result<Self, String> {
        let mut tree = Self::walk(root)?;
        tree.images.append(&mut tree.linked_to_images_read);
        tree.images.sort();
        Ok(tree)
    }

    /// One tree per folder of `class_dirs` (the class folders of the split at `root`), walked in
    /// order and sharing what they entered: a folder is read once, in the first class folder
    /// that reaches it, and never through a link from another class folder into it. A class
    /// folder that is another one, or holds the root (a link), is left empty. Only a folder that
    /// cannot be resolved or listed at the top is an error.
    fn walk_classes(root: &Path, class_dirs: &[PathBuf]) -> Result<Vec<Self>, String> {
        let resolve = |dir: &Path| {
            dir.canonicalize()
                .map_err(|e| format!("cannot resolve {}: {e}", dir.display()))
        };
        let root_real = resolve(root)?;
        // The real folder of each class folder walked; None for one that holds the root (a link
        // up the tree) or is another one (a second path to it; the folder itself is walked, not
        // the link, whichever sorts first): it stays empty.
        let reals: Vec<PathBuf> = class_dirs.iter().map(|d| resolve(d)).collect::<Result<_, _>>()?;
        let is_link = |dir: &Path| std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink());
        let walked: Vec<Option<PathBuf>> = class_dirs
            .iter()
            .zip(&reals)
            .enumerate()
            .map(|(i, (dir, real))| {
                let same: Vec<usize> = (0..reals.len()).filter(|&j| reals[j] == *real).collect();
                let owner = same
                    .iter()
                    .copied()
                    .find(|&j| !is_link(&class_dirs[j]))
                    .unwrap_or(same[0]);
                // The root itself is walked when it is the only folder (an unlabelled split).
                let walks = dir.as_path() == root || (!root_real.starts_with(real) && owner == i);
                walks.then(|| real.clone())
            })
            .collect();
        let mut walk = Walk {
            root: root_real.clone(),
            classes: walked.iter().flatten().cloned().collect(),
            own: root_real.clone(),
            entered: std::collections::BTreeSet::from([root_real]),
        };
        let mut trees = Vec::new();
        for (dir, real) in class_dirs.iter().zip(walked) {
            let mut tree = Self::default();
            match real {
                Some(real) => {
                    walk.entered.insert(real.clone());
                    walk.own = real;
                    let entries = sorted_entries(dir).map_err(|e| cannot_list(dir, &e))?;
                    tree.walk_entries(entries, &mut walk);
                }
                None => tree.revisits.push(dir.clone()),
            }
            trees.push(tree);
        }
        Ok(trees)
    }

    fn walk_entries(&mut self, entries: Vec<PathBuf>, walk: &mut Walk) {
        for path in entries {
            if is_hidden(&path) {
                continue;
            }
            // One lstat for an entry that is no link; a link is followed once more.
            let own = match std::fs::symlink_metadata(&path) {
                Ok(metadata) => Some(metadata),
                // Gone since it was listed, or an image whose reading will say what is wrong.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound || is_image(&path) => None,
                // An entry that cannot be looked at (one past the longest path the system takes,
                // 4096 bytes on Linux, say): a folder's images would be left out without a word.
                Err(e) => {
                    self.unlistable.push(format!("cannot look at {}: {e}", path.display()));
                    continue;
                }
            };
            let is_link = own.as_ref().is_some_and(|m| m.file_type().is_symlink());
            let target = if is_link { std::fs::metadata(&path).ok() } else { own };
            if !target.as_ref().is_some_and(|m| m.is_dir()) {
                // A name that cannot be followed counts as a file: reading it says what is wrong.
                let is_file_or_missing = target.as_ref().is_none_or(|m| m.is_file());
                if is_image(&path) && is_file_or_missing && is_link && walk.links_to_an_image_read(&path) {
                    self.linked_to_images_read.push(path);
                } else if is_image(&path) && is_file_or_missing {
                    self.images.push(path);
                } else if is_image(&path) {
                    self.not_files.push(path);
                } else if is_other_image_format(&path) {
                    self.other_formats.push(path);
                }
                continue;
            }
            let real = match path.canonicalize() {
                Ok(real) => real,
                Err(e) => {
                    self.unlistable.push(format!("cannot resolve {}: {e}", path.display()));
                    continue;
                }
            };
            if !walk.may_enter(&real) || !walk.entered.insert(real) {
                self.revisits.push(path);
                continue;
            }
            match sorted_entries(&path) {
                Ok(entries) => self.walk_entries(entries, walk),
                Err(e) => self.unlistable.push(cannot_list(&path, &e)),
            }
        }
    }
}

/// The state of [`ImageTree::walk_classes`]: real (canonical) paths.
struct Walk {
    root: PathBuf,
    /// The class folders walked.
    classes: Vec<PathBuf>,
    /// The class folder being walked.
    own: PathBuf,
    entered: std::collections::BTreeSet<PathBuf>,
}

impl Walk {
    /// Whether the folder at `real` may be entered from the class folder being walked: not one
    /// holding the root (a link up the tree), nor one that belongs to another class folder (the
    /// deepest class folder that holds it: a class folder may lie inside another through links).
    fn may_enter(&self, real: &Path) -> bool {
        !self.root.starts_with(real) && self.owner_of(real).is_none_or(|class| *class == self.own)
    }

    /// Whether the link `link` leads to an image that the walk reads where it is: one inside a
    /// class folder walked, not hidden there.
    fn links_to_an_image_read(&self, link: &Path) -> bool {
        let Ok(real) = link.canonicalize() else {
            return false;
        };
        let read_there = |class: &PathBuf| {
            let inside = real.strip_prefix(class).expect("the owner holds it");
            is_image(&real) && !inside.components().any(|c| is_hidden(Path::new(c.as_os_str())))
        };
        self.owner_of(&real).is_some_and(read_there)
    }

    /// The class folder that `real` belongs to: the deepest walked one that holds it (a class
    /// folder may lie inside another through links).
    fn owner_of(&self, real: &Path) -> Option<&PathBuf> {
        self.classes
            .iter()
            .filter(|class| real.starts_with(class))
            .max_by_key(|class| class.components().count())
    }
}

/// The images of an unlabelled split: every image under `root` (or the ones `file_list` names,
/// paths relative to `root`), at most `limit` of them (0: all).
pub(super) fn scan_unlabelled(
    split: Split,
    root: &Path,
    file_list: Option<&Path>,
    limit: usize,
    warnings: &mut Vec<String>,
) -> Result<Listing, DataError> {
    let (at, key, purpose) = (split.at(), &split.words().key, &split.wording.purpose);
    if !root.is_dir() {
        let cwd = std::env::current_dir().map_or_else(|_| "?".into(), |d| d.display().to_string());
        return Err(DataError::Config(format!(
            "{at}folder {} does not exist (or is not a folder); read unlabelled, it should hold the images, \
             at any depth; relative paths start from the working directory {cwd}",
            root.display()
        )));
    }
    let mut passed_over = PassedOver::default();
    let mut paths = match file_list {
        None => {
            let tree = ImageTree::walk(root).map_err(DataError::Config)?;
            let images = found_images(tree, &mut passed_over)?;
            warnings.extend(passed_over.warnings(root, purpose, false));
            images
        }
        Some(list_path) => {
            let mut paths = Vec::new();
            let list_key = &split.words().file_list;
            let text = std::fs::read_to_string(list_path)
                .map_err(|e| DataError::Config(format!("{list_key}: cannot read {}: {e}", list_path.display())))?;
            for (n, line) in list_lines(&text) {
                let path =
                    root.join(relative_path(line).map_err(|why| {
                        DataError::Config(format!("{} line {n}: '{line}' {why}", list_path.display()))
                    })?);
                let Some(size) = file_size(&path) else {
                    let what = if path.is_dir() {
                        "is a folder, not an image file"
                    } else {
                        "does not exist"
                    };
                    return Err(DataError::Config(format!(
                        "{} line {n}: {} {what}; lines are image paths relative to {key}",
                        list_path.display(),
                        path.display()
                    )));
                };
                if let Some(refusal) =
                    not_named_like_an_image(&path, line, || format!("{} line {n}", list_path.display()))
                {
                    return Err(refusal);
                }
                paths.push((path, size));
            }
            let what = format!("{list_key} {}", list_path.display());
            warnings.extend(repeated_files_warning(&what, paths.iter().map(|(p, _)| p.as_path())));
            paths
        }
    };
    if limit > 0 {
        paths.truncate(limit);
    }
    if paths.is_empty() {
        return Err(DataError::Config(match file_list {
            None => format!(
                "{at}{} holds no .jpg, .jpeg (.jpe, .jfif, .jif) or .png files (at any depth){}{}",
                root.display(),
                passed_over.other_formats_note(root, purpose),
                other_dataset_note(split, root)
            ),
            Some(l) => format!("{at}the file list {} names no images", l.display()),
        }));
    }
    Ok(Listing::new(root, Vec::new(), paths.into_iter().map(|p| (p, NO_LABEL))))
}

/// Whether `path` has an image extension (.jpg, .jpeg, .png, any case).
pub fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// The warning for files in formats that are not read (`others`, found under `root`), if any:
/// without it a folder of mixed formats would lose part of its images without a word. The
/// images are read to `purpose` (`train on them`).
pub fn other_formats_warning(root: &Path, others: &[PathBuf], purpose: &str) -> Option<String> {
    let first = others.first()?;
    let mut kinds: Vec<String> = others
        .iter()
        .filter_map(|p| {
            p.extension()
                .map(|e| format!(".{}", e.to_string_lossy().to_lowercase()))
        })
        .collect();
    kinds.sort();
    kinds.dedup();
    Some(format!(
        "{} holds {} image(s) in formats that are not read ({}; the first: {}), left out: convert them \
         to JPEG or PNG to {purpose}",
        root.display(),
        others.len(),
        kinds.join(", "),
        first.display()
    ))
}

/// What `root`, the experiment's `dataset.train` holding no images to read, holds instead that
/// another dataset type reads: tar shards (`webdataset`) or CIFAR's release (`cifar`), as
/// `; ...` to end a message; "" for other folders (the kNN monitor's, which can only be image
/// folders).
pub(super) fn other_dataset_note(split: Split, root: &Path) -> String {
    if split.test || split.words().key != "dataset.train" {
        return String::new();
    }
    let Ok(entries) = sorted_entries(root) else {
        return String::new();
    };
    let name = |p: &PathBuf| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let names: Vec<String> = entries.iter().map(name).collect();
    let shards: Vec<&String> = names
        .iter()
        .filter(|n| n.len() > 4 && n.get(n.len() - 4..).is_some_and(|e| e.eq_ignore_ascii_case(".tar")))
        .collect();
    if let Some(first) = shards.first() {
        let urls = match (brace_range(&shards), shards.len()) {
            (Some(pattern), _) => format!("\"{}\"", root.join(pattern).display()),
            (None, 1) => format!("\"{}\"", root.join(first).display()),
            (None, _) => format!("[\"{}\", ...]", root.join(first).display()),
        };
        return format!(
            "; it holds {} .tar file(s): for WebDataset shards, set [dataset] type = \"webdataset\" and urls = {urls}",
            shards.len()
        );
    }
    let has = |file: &str| names.iter().any(|n| n == file);
    let binary = [
        ("cifar10", "cifar-10-batches-bin", "data_batch_1.bin"),
        ("cifar100", "cifar-100-binary", "train.bin"),
    ];
    for (variant, folder, file) in binary {
        if has(folder) || has(file) {
            return format!(
                "; it holds CIFAR's binary release: set [dataset] type = \"cifar\", variant = \"{variant}\" and root = \"{}\"",
                root.display()
            );
        }
    }
    if ["cifar-10-batches-py", "cifar-100-python", "data_batch_1"]
        .iter()
        .any(|n| has(n))
    {
        return "; it holds CIFAR's Python release (pickles), which is not read: download the binary release \
                (cifar-10-binary.tar.gz or cifar-100-binary.tar.gz) and set [dataset] type = \"cifar\""
            .to_string();
    }
    String::new()
}

/// `prefix{000000..000041}.tar` for shard names that count up from their first, one apart, in
/// equally wide numbers after one prefix (as `byol-run shard` and WebDataset's writer name them).
fn brace_range(names: &[&String]) -> Option<String> {
    let split = |n: &str| {
        let stem = &n[..n.len() - 4];
        let digits = stem.len() - stem.bytes().rev().take_while(u8::is_ascii_digit).count();
        (
            stem[..digits].to_string(),
            stem[digits..].to_string(),
            n[n.len() - 4..].to_string(),
        )
    };
    let parts: Vec<(String, String, String)> = names.iter().map(|n| split(n)).collect();
    let (prefix, first, extension) = parts.first()?.clone();
    let start: u64 = first.parse().ok()?;
    let same_form = |(i, (p, d, e)): (usize, &(String, String, String))| {
        *p == prefix && *e == extension && d.len() == first.len() && d.parse::<u64>().ok() == Some(start + i as u64)
    };
    (parts.len() > 1 && parts.iter().enumerate().all(same_form))
        .then(|| format!("{prefix}{{{first}..{}}}{extension}", parts.last().unwrap().1))
}

/// Whether `path` has the extension of an image format that is not read.
fn is_other_image_format(path: &Path) -> bool {
    const OTHER: [&str; 11] = [
        "webp", "bmp", "tif", "tiff", "ppm", "pgm", "gif", "avif", "heic", "heif", "jxl",
    ];
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| OTHER.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// Whether `path` names a hidden file or folder (`.git`, `.DS_Store`, the `._photo.jpg` resource
/// forks macOS leaves on other file systems): never read as images.
pub fn is_hidden(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// Sorted entries of `dir`.
pub(super) fn list(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    sorted_entries(dir).map_err(|e| DataError::Config(cannot_list(dir, &e)))
}

fn sorted_entries(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    // An entry that cannot be read fails the listing: dropping it would leave images out unsaid.
    let mut entries = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<PathBuf>>>()?;
    entries.sort();
    Ok(entries)
}

fn cannot_list(dir: &Path, e: &std::io::Error) -> String {
    format!("cannot list {}: {e}", dir.display())
}

pub(super) fn scan(
    split: Split,
    root: &Path,
    file_list: Option<&Path>,
    limit_per_class: usize,
    warnings: &mut Vec<String>,
) -> Result<Listing, DataError> {
    let (at, purpose) = (split.at(), &split.wording.purpose);
    let config_error = |message: String| DataError::Config(format!("{at}{message}"));
    if !root.is_dir() {
        let cwd = std::env::current_dir().map_or_else(|_| "?".into(), |d| d.display().to_string());
        return Err(config_error(format!(
            "folder {} does not exist (or is not a folder); it should hold one sub-folder of images per \
             class ({}); relative paths start from the working directory {cwd}",
            root.display(),
            split.layout()
        )));
    }
    let entries = list(root)?;
    let class_dirs = class_folders(&entries);
    if class_dirs.is_empty() {
        return Err(no_class_folders(split, root));
    }
    let classes = names_of(&class_dirs);
    let limit = if limit_per_class == 0 {
        usize::MAX
    } else {
        limit_per_class
    };
    let mut per_class: Vec<Vec<Found>> = vec![Vec::new(); classes.len()];
    let mut passed_over = PassedOver::default();
    match file_list {
        None => {
            // A class is every image under its folder, at any depth (torchvision's ImageFolder).
            let trees = ImageTree::walk_classes(root, &class_dirs).map_err(DataError::Config)?;
            for (files, tree) in per_class.iter_mut().zip(trees) {
                *files = found_images(tree, &mut passed_over)?;
            }
            warnings.extend(passed_over.warnings(root, purpose, true));
            let in_classes = per_class.iter().map(Vec::len).sum();
            warnings.extend(loose_images_warning(split, root, &entries, in_classes)?);
        }
        Some(list_path) => {
            read_file_list(split, root, list_path, &classes, &mut per_class)?;
            let what = format!("{} {}", split.words().file_list, list_path.display());
            let listed = per_class.iter().flatten().map(|(p, _)| p.as_path());
            warnings.extend(repeated_files_warning(&what, listed));
        }
    }
    warnings.extend(empty_classes_warning(root, file_list, &classes, &per_class));
    let files: Vec<(Found, i64)> = per_class
        .into_iter()
        .enumerate()
        .flat_map(|(label, files)| files.into_iter().take(limit).map(move |p| (p, label as i64)))
        .collect();
    if files.is_empty() {
        return Err(config_error(match file_list {
            None => format!(
                "{} holds no .jpg, .jpeg (.jpe, .jfif, .jif) or .png files in its {} class folder(s) ({}, ...){}{}",
                root.display(),
                classes.len(),
                classes[0],
                passed_over.other_formats_note(root, purpose),
                other_dataset_note(split, root)
            ),
            Some(l) => format!("the file list {} names no images", l.display()),
        }));
    }
    Ok(Listing::new(root, classes, files))
}

/// The warning for class folders that hold no images, or of which `file_list` names none (their
/// labels still count).
fn empty_classes_warning(
    root: &Path,
    file_list: Option<&Path>,
    classes: &[String],
    per_class: &[Vec<Found>],
) -> Option<String> {
    let empty: Vec<&str> = classes
        .iter()
        .zip(per_class)
        .filter(|(_, f)| f.is_empty())
        .map(|(c, _)| c.as_str())
        .collect();
    if empty.is_empty() {
        return None;
    }
    let shown = empty.iter().take(5).copied().collect::<Vec<_>>().join(", ");
    let hold = match file_list {
        Some(list) => format!("have no images in the file list {}", list.display()),
        None => "hold no images".to_string(),
    };
    Some(format!(
        "{} of the {} class folders of {} {hold} (labels still count them): {shown}{}",
        empty.len(),
        classes.len(),
        root.display(),
        if empty.len() > 5 { ", ..." } else { "" }
    ))
}

/// The warning for images directly in a labelled split's folder (whose sorted `entries` are
/// given), beside its class folders (which hold `in_classes` images): they have no class, so
/// they are left out. An error when they outnumber the images in class folders: most likely an
/// unlabelled folder that gained a sub-folder (a second batch of images, shards written inside
/// it), whose reading as labelled would train on a fraction of it.
fn loose_images_warning(
    split: Split,
    root: &Path,
    entries: &[PathBuf],
    in_classes: usize,
) -> Result<Option<String>, DataError> {
    let loose: Vec<&PathBuf> = entries
        .iter()
        .filter(|p| is_image(p) && !is_hidden(p) && p.is_file())
        .collect();
    let Some(first) = loose.first() else {
        return Ok(None);
    };
    let fix = format!(
        "move them into a class folder{}",
        split.wording.or_unlabelled("to read every image unlabelled")
    );
    let at = split.at();
    if loose.len() > in_classes {
        return Err(DataError::Config(format!(
            "{at}{} image(s) directly in {} are in no class folder, more than the {in_classes} in \
             its class folders: read with labels from the folders, it would leave most of its images out \
             (first: {}); {fix}",
            loose.len(),
            root.display(),
            first.display()
        )));
    }
    Ok(Some(format!(
        "{at}{} image(s) directly in {} are in no class folder and are left out (first: {}); {fix}",
        loose.len(),
        root.display(),
        first.display()
    )))
}

/// Reads `<class>/<file>` lines into `per_class`, in the list's order.
pub(super) fn read_file_list(
    split: Split,
    root: &Path,
    list_path: &Path,
    classes: &[String],
    per_class: &mut [Vec<Found>],
) -> Result<(), DataError> {
    let (key, list_key) = (&split.words().key, &split.words().file_list);
    let text = std::fs::read_to_string(list_path)
        .map_err(|e| DataError::Config(format!("{list_key}: cannot read {}: {e}", list_path.display())))?;
    let label_of: BTreeMap<&str, usize> = classes.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect();
    let linked_into = linked_class_folders(root, classes);
    let real_classes: Vec<Option<PathBuf>> = classes.iter().map(|c| root.join(c).canonicalize().ok()).collect();
    // Another class than `label` whose folder holds `real`, where `label`'s does not hold it as
    // deep (a class folder may lie inside another through links).
    let other_class_holding = |real: &Path, label: usize| {
        let depth = |j: usize| match &real_classes[j] {
            Some(folder) if real.starts_with(folder) => folder.components().count(),
            _ => 0,
        };
        let deepest = (0..classes.len()).map(depth).max().unwrap_or(0);
        (deepest > 0 && depth(label) < deepest).then(|| (0..classes.len()).find(|&j| depth(j) == deepest))?
    };
    for (n, line) in list_lines(&text) {
        let at = || format!("{} line {n}", list_path.display());
        let relative = relative_path(line).map_err(|why| DataError::Config(format!("{}: '{line}' {why}", at())))?;
        let class = relative
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .and_then(|p| p.components().next())
            .and_then(|c| c.as_os_str().to_str());
        let Some(&label) = class.and_then(|c| label_of.get(c)) else {
            return Err(DataError::Config(format!(
                "{}: '{line}' {}; lines are <class>/<file> paths relative to {key}",
                at(),
                not_in_a_class(&relative, root, classes)
            )));
        };
        if let Some(other) = linked_into[label] {
            return Err(DataError::Config(format!(
                "{}: '{line}' is in {}, a link to the class folder {}: its images would be of two classes at \
                 once (the folder read alone leaves it out); list them under {}, or make {} a folder of its own",
                at(),
                classes[label],
                classes[other],
                classes[other],
                classes[label]
            )));
        }
        let path = root.join(&relative);
        let Some(size) = file_size(&path) else {
            return Err(DataError::Config(format!(
                "{}: {} {}; fix the list or {key}",
                at(),
                path.display(),
                not_a_file(&path)
            )));
        };
        if let Some(refusal) = not_named_like_an_image(&path, line, at) {
            return Err(refusal);
        }
        // A link to an image of another class folder would give that image a second label (the
        // folder read alone leaves such a link out). Only a line that is a link is resolved: a
        // list may name millions of files on a network file system.
        let is_link = path.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink());
        if let Some(other) = is_link
            .then(|| path.canonicalize().ok())
            .flatten()
            .and_then(|real| other_class_holding(&real, label))
        {
            return Err(DataError::Config(format!(
                "{}: '{line}' is a link to {}, an image of the class folder {}: it would be of two classes at \
                 once (the folder read alone leaves the link out); list it under {}, or make it a copy",
                at(),
                path.canonicalize()
                    .map_or_else(|_| "?".into(), |real| real.display().to_string()),
                classes[other],
                classes[other]
            )));
        }
        per_class[label].push((path, size));
    }
    Ok(())
}

/// The refusal of a file list's `line` (at `at`) that names a file without an image's
/// extension: the folder read alone leaves it out, and a text file would stop the run at its
/// first epoch (a `.webp` of JPEG bytes would be read by its content).
fn not_named_like_an_image(path: &Path, line: &str, at: impl FnOnce() -> String) -> Option<DataError> {
    (!is_image(path)).then(|| {
        DataError::Config(format!(
            "{}: '{line}' is not named like a JPEG or PNG image (.{}), the formats read: the folder read alone \
             leaves it out; remove it from the list (or convert the image to PNG)",
            at(),
            super::EXTENSIONS.join(", .")
        ))
    })
}

/// Why a file list's line `relative` names no image of a class: a class folder itself, a class
/// spelled in another case, a folder that is not one of the classes, or no folder at all.
fn not_in_a_class(relative: &Path, root: &Path, classes: &[String]) -> String {
    let first = relative
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned());
    let is_only_folder = relative.components().count() == 1;
    match first {
        Some(first) if is_only_folder && classes.contains(&first) => {
            format!("names the class folder {first}, not an image in it")
        }
        Some(first) if !is_only_folder => match classes.iter().find(|c| c.eq_ignore_ascii_case(&first)) {
            Some(class) => format!(
                "is in {first}, which is no class folder of {}; the class folder {class} differs from it in case \
                 only (names are case-sensitive)",
                root.display()
            ),
            None => format!(
                "is in {first}, which is no class folder of {} (its {} classes: {}{})",
                root.display(),
                classes.len(),
                classes.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                if classes.len() > 5 { ", ..." } else { "" }
            ),
        },
        _ => format!("is not inside a class folder of {}", root.display()),
    }
}

/// For each class, the other class whose folder its folder is a link into (`kitty -> cat`), if
/// any: one image would then be of two classes.
fn linked_class_folders(root: &Path, classes: &[String]) -> Vec<Option<usize>> {
    let real: Vec<Option<PathBuf>> = classes.iter().map(|c| root.join(c).canonicalize().ok()).collect();
    (0..classes.len())
        .map(|i| {
            let linked = root
                .join(&classes[i])
                .symlink_metadata()
                .is_ok_and(|m| m.file_type().is_symlink());
            let into = |j: usize| j != i && matches!((&real[i], &real[j]), (Some(a), Some(b)) if a.starts_with(b));
            linked.then(|| (0..classes.len()).find(|&j| into(j))).flatten()
        })
        .collect()
}

/// Why `path`, named by a file list, is no image file to read.
fn not_a_file(path: &Path) -> String {
    if path.is_dir() {
        return "is a folder, not an image file".into();
    }
    match std::fs::symlink_metadata(path) {
        Err(_) => "does not exist".into(),
        Ok(m) if m.file_type().is_symlink() => match std::fs::metadata(path) {
            Ok(_) => "is a link to something that is not a file (a pipe, a socket or a device)".into(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match std::fs::read_link(path) {
                Ok(target) => format!(
                    "is a broken link: it leads to {}, which does not exist",
                    target.display()
                ),
                Err(e) => format!("is a link that cannot be read: {e}"),
            },
            // ELOOP (40 on Linux, where this runs): the error a loop of links gives.
            Err(e) if e.raw_os_error() == Some(40) => "is a link that leads round in a loop".into(),
            Err(e) => format!("is a link that cannot be followed: {e}"),
        },
        Ok(_) => "is not a file (a pipe, a socket or a device), which would never be read to its end".into(),
    }
}

/// A file list's entries with their 1-based line numbers: blank lines and `#` comments skipped,
/// surrounding spaces and a leading byte-order mark removed.
fn list_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.strip_prefix('\u{feff}')
        .unwrap_or(text)
        .lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
}

/// A file list's path relative to the split's folder, without `./` parts (what `find .` prints);
/// refused when it is absolute or climbs out with `..`, which would put it outside the folder
/// (or, labelled, in another class than its first folder says).
fn relative_path(line: &str) -> Result<PathBuf, &'static str> {
    let mut relative = PathBuf::new();
    for component in Path::new(line).components() {
        match component {
            Component::CurDir => {}
            Component::Normal(part) => relative.push(part),
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err("leaves the folder (an absolute path or ..); lines are paths inside the split's folder")
            }
        }
    }
    Ok(relative)
}
