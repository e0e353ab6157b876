//! The `image_folder` dataset without labels: every image under `train` at any depth, sorted by
//! path, from `labels = "none"` or detected when `train` has no class sub-folders; and the error
//! for a folder that holds neither images nor class folders.

mod common;

use std::path::Path;

use byol_data::image_folder::{ImageFolderConfig, NO_LABEL};
use byol_data::Dataset;
use common::quoted;

/// A small PNG or JPEG (by extension) whose pixels depend on `seed`.
fn write_image(path: &Path, seed: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_fn(12, 10, |x, y| image::Rgb([seed, (x * 20) as u8, (y * 20) as u8]))
        .save(path)
        .unwrap();
}

fn config(train: &Path, extra: &str) -> ImageFolderConfig {
    toml::from_str(&format!("train = {}\nimage_size = 8\n{extra}\n", quoted(train))).unwrap()
}

/// The red channel of every image of the split, in order: which file each index reads.
fn seeds(split: &dyn Dataset) -> Vec<u8> {
    let mut out = vec![0u8; 3 * 8 * 8];
    (0..split.len())
        .map(|i| {
            assert_eq!(split.read(i, &mut out).unwrap(), Some(NO_LABEL));
            out[0]
        })
        .collect()
}

/// `b/2.png`, `a/deep/1.jpg`, `0.png`, a hidden folder and a stray text file.
fn nested_tree(root: &Path) {
    write_image(&root.join("b/2.png"), 200);
    write_image(&root.join("a/deep/1.png"), 100);
    write_image(&root.join("0.png"), 10);
    write_image(&root.join(".hidden/9.png"), 250);
    std::fs::write(root.join("a/notes.txt"), "not an image").unwrap();
}

#[test]
fn labels_none_reads_every_image_recursively_sorted_by_path() {
    let tmp = tempfile::tempdir().unwrap();
    nested_tree(tmp.path());
    for cache in ["memory", "none"] {
        let (splits, warnings, notes) = config(tmp.path(), &format!("labels = \"none\"\ncache = \"{cache}\""))
            .load_with_notes()
            .unwrap();
        assert!(warnings.is_empty() && notes.is_empty(), "{warnings:?} {notes:?}");
        assert!(splits.test.is_none());
        assert!(!splits.train.is_labelled() && splits.train.classes().is_empty());
        // 0.png < a/deep/1.png < b/2.png; the hidden folder and the text file are skipped.
        assert_eq!(seeds(splits.train.as_ref()), [10, 100, 200], "cache = {cache}");
    }
}

#[test]
fn a_folder_without_class_folders_is_read_as_unlabelled_with_one_note() {
    let tmp = tempfile::tempdir().unwrap();
    for i in 0..3u8 {
        write_image(&tmp.path().join(format!("{i}.jpg")), 50 * i);
    }
    let (splits, _, notes) = config(tmp.path(), "").load_with_notes().unwrap();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].contains("no class sub-folders") && notes[0].contains("labels = \"none\""),
        "{notes:?}"
    );
    assert_eq!(splits.train.len(), 3);
    assert!(!splits.train.is_labelled());

    // A class layout keeps its labels, and no note.
    let classes = tmp.path().join("classes");
    write_image(&classes.join("cat/0.png"), 1);
    write_image(&classes.join("dog/0.png"), 2);
    let (splits, _, notes) = config(&classes, "").load_with_notes().unwrap();
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(splits.train.classes(), ["cat", "dog"]);
}

#[test]
fn unlabelled_file_lists_and_limits() {
    let tmp = tempfile::tempdir().unwrap();
    nested_tree(tmp.path());
    let list = tmp.path().join("list.txt");
    std::fs::write(&list, "# picked\nb/2.png\n\n0.png\n").unwrap();
    let extra = format!("labels = \"none\"\nfile_list = {}", quoted(&list));
    let (splits, _) = config(tmp.path(), &extra).load().unwrap();
    assert_eq!(seeds(splits.train.as_ref()), [200, 10], "the list's order");

    std::fs::write(&list, "0.png\nmissing.png\n").unwrap();
    let err = config(tmp.path(), &extra).load().unwrap_err().to_string();
    assert!(err.contains("line 2") && err.contains("missing.png"), "{err}");

    let (splits, _) = config(tmp.path(), "labels = \"none\"\nlimit_per_class = 2")
        .load()
        .unwrap();
    assert_eq!(seeds(splits.train.as_ref()), [10, 100]);
}

#[test]
fn errors_name_the_folder_and_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    // Neither images nor class folders.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("readme.txt"), "x").unwrap();
    let err = config(&empty, "").load().unwrap_err().to_string();
    assert!(
        err.contains("dataset.train") && err.contains(&empty.display().to_string()),
        "{err}"
    );
    assert!(
        err.contains("no class sub-folders and no images") && err.contains("labels = \"none\""),
        "{err}"
    );
    let err = config(&empty, "labels = \"none\"").load().unwrap_err().to_string();
    assert!(
        err.contains("holds no .jpg, .jpeg (.jpe, .jfif, .jif) or .png files (at any depth)"),
        "{err}"
    );

    // A folder of what another dataset type reads says which type and keys read it.
    let shards = tmp.path().join("shards");
    std::fs::create_dir_all(&shards).unwrap();
    for i in 0..3 {
        std::fs::write(shards.join(format!("train-{i:06}.tar")), "x").unwrap();
    }
    let range = format!("urls = \"{}\"", shards.join("train-{000000..000002}.tar").display());
    for extra in ["", "labels = \"none\""] {
        let err = config(&shards, extra).load().unwrap_err().to_string();
        assert!(
            err.contains("it holds 3 .tar file(s)") && err.contains("type = \"webdataset\"") && err.contains(&range),
            "{err}"
        );
    }
    std::fs::write(shards.join("train-000007.tar"), "x").unwrap();
    let err = config(&shards, "").load().unwrap_err().to_string();
    let list = format!("urls = [\"{}\", ...]", shards.join("train-000000.tar").display());
    assert!(err.contains(&list), "{err}");
    let cifar = tmp.path().join("data");
    std::fs::create_dir_all(cifar.join("cifar-10-batches-bin")).unwrap();
    let err = config(&cifar, "").load().unwrap_err().to_string();
    assert!(
        err.contains("CIFAR's binary release") && err.contains("type = \"cifar\", variant = \"cifar10\""),
        "{err}"
    );
    let pickles = tmp.path().join("cifar-10-batches-py");
    std::fs::create_dir_all(&pickles).unwrap();
    std::fs::write(pickles.join("data_batch_1"), "x").unwrap();
    let err = config(&pickles, "").load().unwrap_err().to_string();
    assert!(
        err.contains("CIFAR's Python release (pickles), which is not read"),
        "{err}"
    );

    // A test split needs a labelled training split as its kNN bank.
    let flat = tmp.path().join("flat");
    write_image(&flat.join("0.png"), 1);
    let labelled = tmp.path().join("labelled");
    write_image(&labelled.join("cat/0.png"), 1);
    for extra in ["", "labels = \"none\"\n"] {
        let config = config(&flat, &format!("{extra}test = {}", quoted(&labelled)));
        let err = config.load().unwrap_err().to_string();
        assert!(
            err.contains("dataset.test") && err.contains("eval.train and eval.test"),
            "{err}"
        );
    }
}

#[test]
fn a_symbolic_link_loop_is_walked_once() {
    let tmp = tempfile::tempdir().unwrap();
    write_image(&tmp.path().join("a/0.png"), 7);
    std::os::unix::fs::symlink("..", tmp.path().join("a/up")).unwrap();
    let (splits, _) = config(tmp.path(), "labels = \"none\"").load().unwrap();
    assert_eq!(seeds(splits.train.as_ref()), [7]);
}
