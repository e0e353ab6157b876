//! Training on a flat folder of unlabelled images: without a labelled evaluation split the kNN
//! monitor and the online probe are off with one note and the summary has no kNN figures; with
//! `eval.train` and `eval.test` they measure on that split.

use std::path::Path;

use super::{byol_run, text};

/// A tiny experiment: 16 px images, `tiny_cnn`, one epoch on one CPU thread.
const UNLABELLED: &str = r#"
[run]
device = "cpu"
threads = 1
seed = 3

[dataset]
type = "image_folder"
train = "unlabelled"
image_size = 16

[backbone]
type = "tiny_cnn"

[augment]
type = "byol"
preset = "cifar"
image_size = 16

[optimizer]
type = "lars"
lr = 0.2

[byol]
hidden_dim = 32
projection_dim = 16

[schedule]
epochs = 1
batch_size = 16
warmup_epochs = 0

[eval]
knn_k = 5
"#;

/// A 16 px PNG: a square of one of two colours (the class) at a place drawn from `seed`.
fn write_image(path: &Path, class: usize, seed: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let colour = if class == 0 { [220, 40, 40] } else { [40, 40, 220] };
    let (ox, oy) = (seed % 7, (seed / 7) % 7);
    image::RgbImage::from_fn(16, 16, |x, y| {
        let inside = (ox..ox + 8).contains(&x) && (oy..oy + 8).contains(&y);
        image::Rgb(if inside { colour } else { [128, 128, 128] })
    })
    .save(path)
    .unwrap();
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("run/summary.json")).unwrap()).unwrap()
}

#[test]
fn unlabelled_flat_folder_trains_with_and_without_an_evaluation_split() {
    let dir = tempfile::tempdir().unwrap();
    // 32 flat images, some in a nested folder: no class sub-folders at the top, only images.
    for i in 0..32u32 {
        let name = if i < 24 {
            format!("unlabelled/{i:02}.png")
        } else {
            format!("unlabelled/more/{i:02}.png")
        };
        write_image(&dir.path().join(name), (i % 2) as usize, i);
    }
    // The flat folder has a sub-folder, so it needs labels = "none" to be read as unlabelled.
    let experiment = UNLABELLED.replace(
        "image_size = 16\n\n[backbone]",
        "image_size = 16\nlabels = \"none\"\n\n[backbone]",
    );
    std::fs::write(dir.path().join("flat.toml"), &experiment).unwrap();

    let out = byol_run(dir.path(), &["flat.toml", "--run-dir", "run"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert_eq!(
        all.matches("kNN monitor and online probe off: the training images have no labels; set eval.train and eval.test to labelled image folders").count(),
        1,
        "{all}"
    );
    assert!(
        !all.contains("kNN top-1") && !all.contains("kNN gain") && !all.contains("did not improve"),
        "{all}"
    );
    assert!(!all.contains("NaN") && !all.contains("panicked"), "{all}");
    let without = summary(dir.path());
    assert!(
        without.get("knn_before").is_none() && without.get("knn_after").is_none(),
        "{without}"
    );
    assert_eq!(without["steps"], 2, "{without}");
    // An evaluation interval with the monitor off: no evaluation is counted or timed.
    let every_epoch = ["--set", "schedule.epochs=3", "--set", "eval.every_epochs=1"];
    let out = byol_run(
        dir.path(),
        &[&["flat.toml", "--run-dir", "curve"][..], &every_epoch].concat(),
    );
    let all = text(&out);
    assert!(out.status.success() && !all.contains("kNN curve"), "{all}");
    let curve: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("curve/summary.json")).unwrap()).unwrap();
    assert_eq!(curve["curve_evaluations"], 0, "{curve}");

    // A labelled split in class folders: kNN measures on it, the probe learns from it.
    for (split, count) in [("labelled/train", 12u32), ("labelled/test", 6)] {
        for i in 0..count {
            for (class, name) in ["red", "blue"].iter().enumerate() {
                write_image(&dir.path().join(format!("{split}/{name}/{i:02}.png")), class, i * 3 + 1);
            }
        }
    }
    // An image beside the class folders is left out with a warning in [eval]'s own terms.
    write_image(&dir.path().join("labelled/train/loose.png"), 0, 5);
    let out = byol_run(
        dir.path(),
        &[
            "flat.toml",
            "--run-dir",
            "run",
            "--fresh",
            "--set",
            "eval.train=\"labelled/train\"",
            "--set",
            "eval.test=\"labelled/test\"",
        ],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(!all.contains("kNN monitor and online probe off"), "{all}");
    assert!(
        all.contains("warning: eval.train: 1 image(s) directly in labelled/train are in no class folder")
            && all.contains("(first: labelled/train/loose.png); move them into a class folder\n"),
        "{all}"
    );
    assert!(all.contains("kNN top-1 before") && all.contains("kNN gain"), "{all}");
    let with = summary(dir.path());
    for key in ["knn_before", "knn_after"] {
        let top1 = with[key]["top1"].as_f64().unwrap_or(f64::NAN);
        assert!((0.0..=1.0).contains(&top1), "{key}: {with}");
    }
    let events = std::fs::read_dir(dir.path().join("run/tensorboard")).unwrap().count();
    assert!(events > 0);

    // Only one of the two keys, or a folder that does not exist, is refused by name.
    let out = byol_run(
        dir.path(),
        &["validate", "flat.toml", "--set", "eval.train=\"labelled/train\""],
    );
    let all = text(&out);
    assert!(!out.status.success() && all.contains("eval.test is not"), "{all}");
    let out = byol_run(
        dir.path(),
        &[
            "validate",
            "flat.toml",
            "--set",
            "eval.train=\"nowhere\"",
            "--set",
            "eval.test=\"labelled/test\"",
        ],
    );
    let all = text(&out);
    assert!(
        !out.status.success() && all.contains("eval.train = \"nowhere\": this folder does not exist"),
        "{all}"
    );
    // A test split of other classes is named by its own key, not the dataset's.
    write_image(&dir.path().join("labelled/other/zebra/0.jpg"), 0, 0);
    let out = byol_run(
        dir.path(),
        &[
            "validate",
            "flat.toml",
            "--set",
            "eval.train=\"labelled/train\"",
            "--set",
            "eval.test=\"labelled/other\"",
        ],
    );
    let all = text(&out);
    assert!(
        !out.status.success() && all.contains("eval.test: labelled/other has classes") && !all.contains("dataset.test"),
        "{all}"
    );
}

#[test]
fn a_flat_folder_is_detected_as_unlabelled_with_one_note() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..16u32 {
        write_image(&dir.path().join(format!("unlabelled/{i:02}.jpg")), (i % 2) as usize, i);
    }
    std::fs::write(dir.path().join("auto.toml"), UNLABELLED).unwrap();
    let out = byol_run(dir.path(), &["auto.toml", "--run-dir", "run"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert_eq!(
        all.matches("no class sub-folders, so its images are read as unlabelled")
            .count(),
        1,
        "{all}"
    );
    assert_eq!(all.matches("kNN monitor and online probe off").count(), 1, "{all}");
    assert!(summary(dir.path()).get("knn_after").is_none());
    // The note followed (labels = "none" set): the same data, read as before, so the run goes on
    // (here, finished, it is reported), without the note.
    let out = byol_run(
        dir.path(),
        &["auto.toml", "--run-dir", "run", "--set", "dataset.labels=\"none\""],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(!all.contains("no class sub-folders"), "{all}");
}

/// Labelled training images without a split to measure on: the monitor is off, and a note says
/// why and what to set (before, the run went without kNN figures silently).
#[test]
fn labelled_images_without_a_test_split_say_the_monitor_is_off() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tiny.toml"), super::TINY).unwrap();
    let args = [
        "tiny.toml",
        "--run-dir",
        "run",
        "--set",
        "dataset.test_size=0",
        "--set",
        "schedule.epochs=1",
    ];
    let out = byol_run(dir.path(), &args);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert_eq!(
        all.matches("note: kNN monitor and online probe off: the dataset has no test split to measure on; give it one")
            .count(),
        1,
        "{all}"
    );
    assert!(!all.contains("kNN top-1") && !all.contains("no labels"), "{all}");
    // validate says it as the start does.
    let out = byol_run(dir.path(), &[&["validate"][..], &args].concat());
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("note: kNN monitor and online probe off: the dataset has no test split to measure on"),
        "{all}"
    );
}

/// Unreadable images are all named in the run folder's `skipped-images.txt` (the warnings name
/// three), counted in `summary.json` and the printed summary with what training did about them:
/// left out when the split is decoded into memory, replaced by readable images in the batches
/// when it is read as training goes. A run that skips nothing has no such file.
#[test]
fn every_skipped_image_is_named_in_the_run_folder_and_counted_in_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..20u32 {
        write_image(&dir.path().join(format!("unlabelled/{i:02}.png")), (i % 2) as usize, i);
    }
    for i in 0..7 {
        std::fs::write(dir.path().join(format!("unlabelled/bad{i}.jpg")), b"").unwrap();
    }
    std::fs::write(dir.path().join("flat.toml"), UNLABELLED).unwrap();
    // Batches of 9: read as training goes, the epoch's 3 steps read all 27 files.
    for (cache, what) in [("memory", "left out"), ("none", "replaced")] {
        let cache = format!("dataset.cache=\"{cache}\"");
        let args = [
            "flat.toml",
            "--run-dir",
            "run",
            "--fresh",
            "--set",
            &cache,
            "--set",
            "schedule.batch_size=9",
        ];
        let out = byol_run(dir.path(), &args);
        let all = text(&out);
        assert!(out.status.success(), "{all}");
        assert!(all.contains("and 4 more"), "the warning names three: {all}");
        let listed = std::fs::read_to_string(dir.path().join("run/skipped-images.txt")).unwrap();
        let lines: Vec<&str> = listed.lines().collect();
        assert_eq!(lines.len(), 7, "{listed}");
        assert!(
            lines
                .iter()
                .all(|l| l.starts_with("train\tunlabelled/bad") && l.ends_with(": empty file")),
            "{listed}"
        );
        let summary = summary(dir.path());
        assert_eq!(summary["skipped_images"], 7, "{summary}");
        assert_eq!(summary["skipped_in_training"], what, "{summary}");
        assert!(
            all.contains("unreadable       7 images skipped, each named in") && all.contains("skipped-images.txt"),
            "{all}"
        );
    }
    for i in 0..7 {
        std::fs::remove_file(dir.path().join(format!("unlabelled/bad{i}.jpg"))).unwrap();
    }
    let out = byol_run(dir.path(), &["flat.toml", "--run-dir", "run", "--fresh"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!dir.path().join("run/skipped-images.txt").exists());
    assert_eq!(summary(dir.path())["skipped_images"], 0);
}

/// Images that decoded when the run trained and no longer do, damaged in place at the same size
/// (the same names and sizes: the same files by the record), are a change of data: a resume is
/// refused saying how many, not continued on the images left.
#[test]
fn images_that_no_longer_decode_are_a_change_of_data() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..20u32 {
        write_image(&dir.path().join(format!("unlabelled/{i:02}.png")), (i % 2) as usize, i);
    }
    std::fs::write(dir.path().join("flat.toml"), UNLABELLED).unwrap();
    let out = byol_run(dir.path(), &["flat.toml", "--run-dir", "run"]);
    assert!(out.status.success(), "{}", text(&out));
    for i in 0..3 {
        let file = dir.path().join(format!("unlabelled/{i:02}.png"));
        let size = std::fs::metadata(&file).unwrap().len() as usize;
        std::fs::write(&file, vec![0u8; size]).unwrap();
    }
    let longer = [
        "flat.toml",
        "--run-dir",
        "run",
        "--set",
        "schedule.epochs=2",
        "--allow-change",
        "schedule.epochs",
    ];
    let out = byol_run(dir.path(), &longer);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("train: 20 images -> 17 images") && all.contains("the same files, but 3 fewer of them decode"),
        "{all}"
    );
    assert!(all.contains("--allow-change dataset"), "{all}");
    // Allowed, the run goes on.
    let out = byol_run(dir.path(), &[&longer[..], &["--allow-change", "dataset"]].concat());
    assert!(out.status.success(), "{}", text(&out));
}

/// Labelled images of one class measure nothing (any network is 100% right): the kNN monitor is
/// off with a warning, said by validate too, and `eval` refuses such a folder.
#[test]
fn a_labelled_split_of_one_class_turns_the_monitor_off() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..32u32 {
        write_image(&dir.path().join(format!("unlabelled/{i:02}.png")), (i % 2) as usize, i);
    }
    for (split, count) in [("one/train", 12u32), ("one/test", 6)] {
        for i in 0..count {
            write_image(&dir.path().join(format!("{split}/cat/{i:02}.png")), 0, i);
        }
    }
    std::fs::write(dir.path().join("flat.toml"), UNLABELLED).unwrap();
    let one_class = ["--set", "eval.train=\"one/train\"", "--set", "eval.test=\"one/test\""];
    let warning = "warning: the kNN monitor's labelled images are of one class (cat)";
    let out = byol_run(dir.path(), &[&["validate", "flat.toml"][..], &one_class].concat());
    assert!(out.status.success() && text(&out).contains(warning), "{}", text(&out));
    let out = byol_run(
        dir.path(),
        &[&["flat.toml", "--run-dir", "run"][..], &one_class].concat(),
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert_eq!(all.matches(warning).count(), 1, "{all}");
    assert!(summary(dir.path()).get("knn_after").is_none(), "{all}");
    let out = byol_run(
        dir.path(),
        &["eval", "knn", "run", "--train", "one/train", "--test", "one/test"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("--train one/train: its images are of one class (cat)"),
        "{}",
        text(&out)
    );
    // So too where the test folder has more classes: the training folder is what is wrong.
    for (class, name) in [(0, "cat"), (1, "dog")] {
        write_image(&dir.path().join(format!("two/{name}/0.png")), class, 5);
    }
    let out = byol_run(
        dir.path(),
        &["eval", "knn", "run", "--train", "one/train", "--test", "two"],
    );
    assert!(
        text(&out).contains("--train one/train: its images are of one class (cat)"),
        "{}",
        text(&out)
    );
    // A second class folder that is empty, or whose images are unreadable, leaves one class:
    // the monitor says so, and eval refuses it.
    std::fs::create_dir_all(dir.path().join("one/train/dog")).unwrap();
    write_image(&dir.path().join("one/test/dog/0.png"), 1, 0);
    let emptied = "the kNN monitor's bank holds images of one class only (cat; its other class folders hold no \
                   readable image): every query is predicted cat";
    let out = byol_run(dir.path(), &[&["validate", "flat.toml"][..], &one_class].concat());
    assert!(out.status.success() && text(&out).contains(emptied), "{}", text(&out));
    let out = byol_run(
        dir.path(),
        &[&["flat.toml", "--run-dir", "run", "--fresh"][..], &one_class].concat(),
    );
    let all = text(&out);
    assert!(out.status.success() && all.contains(emptied), "{all}");
    for command in ["knn", "linear"] {
        let out = byol_run(
            dir.path(),
            &["eval", command, "run", "--train", "one/train", "--test", "two"],
        );
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            text(&out).contains("--train one/train: only class cat has readable images"),
            "{command}: {}",
            text(&out)
        );
    }
    std::fs::write(dir.path().join("one/train/dog/0.png"), b"not an image").unwrap();
    let out = byol_run(
        dir.path(),
        &["eval", "knn", "run", "--train", "one/train", "--test", "two"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("only class cat has readable images"),
        "{}",
        text(&out)
    );
}

/// The online probe learns from `[eval] train` when the training images have no labels. Resumed
/// (allowed) on eval folders of as many classes under other names, it starts untrained: its
/// weights for "cat" would score the images now labelled "dog".
#[test]
fn the_online_probe_starts_untrained_when_its_classes_are_renamed() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..32u32 {
        write_image(&dir.path().join(format!("unlabelled/{i:02}.png")), (i % 2) as usize, i);
    }
    for (folder, classes) in [("first", ["cat", "dog"]), ("renamed", ["ant", "bee"])] {
        for (split, count) in [("train", 8u32), ("test", 4)] {
            for (c, class) in classes.iter().enumerate() {
                for i in 0..count {
                    write_image(&dir.path().join(format!("{folder}/{split}/{class}/{i:02}.png")), c, i);
                }
            }
        }
    }
    std::fs::write(dir.path().join("flat.toml"), UNLABELLED).unwrap();
    let eval = |folder: &str| {
        [
            "--set".to_string(),
            format!("eval.train=\"{folder}/train\""),
            "--set".to_string(),
            format!("eval.test=\"{folder}/test\""),
        ]
    };
    let run = |extra: &[String]| {
        let mut args = vec![
            "flat.toml".to_string(),
            "--run-dir".into(),
            "run".into(),
            "--quiet".into(),
        ];
        args.extend_from_slice(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        byol_run(dir.path(), &args)
    };
    let out = run(&eval("first"));
    assert!(out.status.success(), "{}", text(&out));
    let longer: Vec<String> = ["--set", "schedule.epochs=2", "--allow-change", "schedule.epochs"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let other_data = ["--allow-change", "eval", "--allow-change", "dataset"].map(String::from);
    let renamed = [&eval("renamed")[..], &longer, &other_data].concat();
    let out = run(&renamed);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("note: the online probe starts untrained at step 2"),
        "{all}"
    );
}

/// Test images that are not held out are said, by validate and the start alike: some of the
/// kNN monitor's test images copied from its training images, or a training folder that holds
/// the test folder (an unlabelled tree, or a class folder linked to it). `eval knn` says the
/// same of its folders.
#[test]
fn test_images_among_the_training_images_are_said() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for i in 0..12u32 {
        for (class, name) in ["red", "blue"].iter().enumerate() {
            write_image(&d.join(format!("data/train/{name}/{i:02}.png")), class, i * 3 + 1);
            if i < 6 {
                write_image(&d.join(format!("data/test/{name}/{i:02}.png")), class, i * 3 + 2);
            }
        }
    }
    std::fs::write(d.join("flat.toml"), UNLABELLED).unwrap();
    let labelled = [
        "--set",
        "eval.train=\"data/train\"",
        "--set",
        "eval.test=\"data/test\"",
        "--set",
        "dataset.labels=\"none\"",
    ];
    let validate = |train: &str| {
        let train = format!("dataset.train=\"{train}\"");
        let args = [&["validate", "flat.toml", "--set", &train][..], &labelled].concat();
        let out = byol_run(d, &args);
        assert!(out.status.success(), "{}", text(&out));
        text(&out)
    };
    // Held out: nothing said.
    std::fs::create_dir_all(d.join("unlabelled")).unwrap();
    for i in 0..16u32 {
        write_image(&d.join(format!("unlabelled/{i:02}.png")), (i % 2) as usize, i + 40);
    }
    let all = validate("unlabelled");
    assert!(!all.contains("kNN test images are among"), "{all}");

    // BYOL trains on the whole tree, the test images in it.
    let all = validate("data");
    assert!(
        all.contains(
            "warning: 12 of the 12 kNN test images are among the images BYOL trains on (dataset.train; the same \
             files, or copies"
        ),
        "{all}"
    );
    // A class folder of the test images linked into the training tree.
    std::os::unix::fs::symlink(d.join("data/test/red"), d.join("unlabelled/linked")).unwrap();
    let all = validate("unlabelled");
    assert!(
        all.contains("warning: 6 of the 12 kNN test images are among the images BYOL trains on"),
        "{all}"
    );
    std::fs::remove_file(d.join("unlabelled/linked")).unwrap();

    // Four training images copied into the test folder, under their names: the monitor's bank
    // holds them, as the start says too. Namesakes of other bytes are no copies.
    for i in 0..4 {
        let name = format!("red/{i:02}.png");
        std::fs::copy(d.join("data/train").join(&name), d.join("data/test").join(&name)).unwrap();
    }
    let bank = "warning: 4 of the 12 kNN test images are among the kNN monitor's training images (the same files, \
                or copies of the same name, size and bytes)";
    let all = validate("unlabelled");
    assert!(all.contains(bank), "{all}");
    assert!(!all.contains("among the images BYOL trains on"), "{all}");
    let out = byol_run(d, &[&["flat.toml", "--run-dir", "run"][..], &labelled].concat());
    let all = text(&out);
    assert!(out.status.success() && all.matches(bank).count() == 1, "{all}");

    let knn = |test: &str| {
        let out = byol_run(d, &["eval", "knn", "run", "--train", "data/train", "--test", test]);
        assert!(out.status.success(), "{}", text(&out));
        text(&out)
    };
    assert!(knn("data/test").contains("warning: 4 of the 12 --test images are among the --train images"));
    assert!(knn("data/train").contains("warning: 24 of the 24 --test images are among the --train images"));
}
