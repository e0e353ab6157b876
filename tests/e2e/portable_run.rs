//! A run folder is self-contained: after the files it started from are gone (pretrained weights,
//! a TorchScript module) or the folder and its data moved, `embed`, `eval`, `export` and resume
//! work from any working directory, and a moved copy embeds bit for bit like the original.

use std::path::Path;

use byol_testkit::fixtures::{with_keys, with_table};

use super::TINY;
use super::{byol_run, text};

fn png(path: &Path) {
    let image = tch::Tensor::randint(255, [3, 20, 24], (tch::Kind::Uint8, tch::Device::Cpu));
    tch::vision::image::save(&image, path).unwrap();
}

/// Labelled PNGs in `<dir>/train` and `<dir>/test`, three classes.
fn labelled_images(dir: &Path, train_per_class: usize) {
    for (split, per_class) in [("train", train_per_class), ("test", 3)] {
        for class in ["a", "b", "c"] {
            let folder = dir.join(split).join(class);
            std::fs::create_dir_all(&folder).unwrap();
            for i in 0..per_class {
                png(&folder.join(format!("{i}.png")));
            }
        }
    }
}

fn ok(cwd: &Path, args: &[&str]) -> String {
    let out = byol_run(cwd, args);
    let all = text(&out);
    assert!(out.status.success(), "byol-run {}:\n{all}", args.join(" "));
    all
}

/// Copies a folder, symbolic links as links (a run folder's `checkpoints/last`).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path()).unwrap(), &target).unwrap();
        } else if kind.is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// embed, export and eval knn on `run`, from `cwd`, with the images in `images`.
fn use_the_run(cwd: &Path, run: &str, images: &str) {
    let train = format!("{images}/train");
    let test = format!("{images}/test");
    ok(cwd, &["embed", run, "--images", &test, "--out", "x.npy"]);
    ok(cwd, &["export", run, "--out", "backbone.safetensors"]);
    ok(cwd, &["eval", "knn", run, "--train", &train, "--test", &test]);
}

#[test]
fn pretrained_weights_are_read_only_when_a_run_starts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("tiny.toml"), TINY).unwrap();
    labelled_images(d, 2);
    let one_epoch = ["--quiet", "--set", "schedule.epochs=1"];
    ok(d, &[&["tiny.toml", "--run-dir", "first"][..], &one_epoch].concat());
    ok(d, &["export", "first", "--out", "start.safetensors"]);
    let pretrained = ["--set", "backbone.pretrained=start.safetensors"];
    ok(
        d,
        &[&["tiny.toml", "--run-dir", "run"][..], &one_epoch, &pretrained].concat(),
    );

    std::fs::remove_file(d.join("start.safetensors")).unwrap();
    use_the_run(d, "run", ".");
    let resumed = ok(
        d,
        &[
            "tiny.toml",
            "--run-dir",
            "run",
            "--set",
            "schedule.epochs=2",
            "--allow-change",
            "schedule.epochs",
            "--set",
            "backbone.pretrained=start.safetensors",
        ],
    );
    assert!(resumed.contains("resuming"), "{resumed}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("run/summary.json")).unwrap()).unwrap();
    assert_eq!(summary["steps"], 32, "two epochs of 16 steps: {summary}");

    // A new run from a missing file says so once, plainly.
    let out = byol_run(
        d,
        &[&["tiny.toml", "--run-dir", "other"][..], &one_epoch, &pretrained].concat(),
    );
    let all = text(&out);
    assert!(!out.status.success());
    assert_eq!(all.matches("start.safetensors").count(), 1, "{all}");
    assert!(all.contains("no such file"), "{all}");
}

/// TINY on the labelled image folders under `data/`.
fn tiny_on_folders() -> String {
    let folders = "type = \"image_folder\"\ntrain = \"data/train\"\ntest = \"data/test\"\nimage_size = 16\n";
    with_table(TINY, "dataset", folders)
}

#[test]
fn a_moved_run_folder_resumes_on_moved_data_and_embeds_bit_for_bit() {
    let (first, second, elsewhere) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (a, b) = (first.path(), second.path());
    std::fs::write(a.join("tiny.toml"), tiny_on_folders()).unwrap();
    labelled_images(&a.join("data"), 22);
    let quick = [
        "--quiet",
        "--set",
        "schedule.epochs=1",
        "--set",
        "schedule.batch_size=16",
    ];
    ok(a, &[&["tiny.toml", "--run-dir", "r"][..], &quick].concat());
    ok(a, &["embed", "r", "--images", "data/test", "--out", "original.npy"]);

    // The run folder moves to another machine's folder, the data to another path.
    copy_tree(&a.join("r"), &b.join("runs/r"));
    std::fs::rename(a.join("data"), b.join("data-here")).unwrap();
    std::fs::copy(a.join("tiny.toml"), b.join("tiny.toml")).unwrap();
    std::fs::remove_dir_all(a.join("r")).unwrap();

    let run = b.join("runs/r");
    let test = b.join("data-here/test");
    ok(
        elsewhere.path(),
        &[
            "embed",
            run.to_str().unwrap(),
            "--images",
            test.to_str().unwrap(),
            "--out",
            "copy.npy",
        ],
    );
    let original = std::fs::read(a.join("original.npy")).unwrap();
    let copy = std::fs::read(elsewhere.path().join("copy.npy")).unwrap();
    assert!(original == copy, "the moved run embeds differently");

    let moved_data = [
        "--set",
        "dataset.train=data-here/train",
        "--set",
        "dataset.test=data-here/test",
    ];
    let longer = ["--set", "schedule.epochs=2", "--allow-change", "schedule.epochs"];
    let resume = |extra: &[&str]| {
        let args = [
            &["tiny.toml", "--run-dir", "runs/r", "--set", "schedule.batch_size=16"][..],
            &moved_data,
            extra,
        ]
        .concat();
        byol_run(b, &args)
    };
    let out = resume(&longer);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("resuming") && all.contains("dataset.train"), "{all}");

    // Other data under the same keys is refused, with what differs: other files of the same
    // count and classes (here one renamed, as one replaced would be)...
    let (file, renamed) = (b.join("data-here/train/a/0.png"), b.join("data-here/train/a/zz.png"));
    std::fs::rename(&file, &renamed).unwrap();
    let out = resume(&["--set", "schedule.epochs=3", "--allow-change", "schedule.epochs"]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("other data") && all.contains("\n  train: 66 images of the same 3 classes (files "),
        "{all}"
    );
    // The class that changed is named, and no other.
    assert!(
        all.contains("\n    changed: a/ (22 images, not the same or not in the same order)\n") && !all.contains("b/ ("),
        "{all}"
    );
    std::fs::rename(&renamed, &file).unwrap();
    // ... or an image replaced under its own name (by a flat one, whose PNG is smaller than noise's)...
    let original = std::fs::read(&file).unwrap();
    let flat = tch::Tensor::zeros([3, 20, 24], (tch::Kind::Uint8, tch::Device::Cpu));
    tch::vision::image::save(&flat, &file).unwrap();
    assert_ne!(std::fs::metadata(&file).unwrap().len(), original.len() as u64);
    let out = resume(&["--set", "schedule.epochs=3", "--allow-change", "schedule.epochs"]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("other data") && all.contains("train: 66 images"), "{all}");
    std::fs::write(&file, &original).unwrap();
    // ... or fewer files.
    std::fs::remove_file(&file).unwrap();
    let out = resume(&["--set", "schedule.epochs=3", "--allow-change", "schedule.epochs"]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("other data") && all.contains("train: 66 images") && all.contains("65 images"),
        "{all}"
    );
    assert!(all.contains("\n    changed: a/ (22 -> 21 images)\n"), "{all}");
    // A key changed besides is named in the same refusal, with its flag.
    let out = resume(&["--set", "schedule.epochs=3", "--set", "optimizer.lr=0.3"]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("other data")
            && all.contains("these need --allow-change optimizer.lr --allow-change schedule.epochs too")
            && all.contains("  optimizer.lr: 0.5 -> 0.3"),
        "{all}"
    );
}

/// A start on other data (`--allow-change dataset.train`) that stops before its first checkpoint
/// leaves `dataset.json` describing that data, while the run's checkpoint holds a run on the
/// first. A resume is judged by the checkpoint's own record: the run's data still resumes, the
/// other data under the moved-data keys is refused.
#[test]
fn a_resume_checks_the_data_against_its_checkpoint_not_the_last_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("tiny.toml"), tiny_on_folders()).unwrap();
    labelled_images(&d.join("data"), 6);
    labelled_images(&d.join("other"), 7);
    let quick = [
        "--quiet",
        "--set",
        "schedule.epochs=1",
        "--set",
        "schedule.batch_size=8",
    ];
    ok(d, &[&["tiny.toml", "--run-dir", "r"][..], &quick].concat());
    // What the start on `other` leaves behind when killed before its first checkpoint: its
    // record of the data (the same file a finished run on `other` writes).
    let on_other = ["--set", "dataset.train=other/train", "--set", "dataset.test=other/test"];
    ok(d, &[&["tiny.toml", "--run-dir", "o"][..], &quick, &on_other].concat());
    std::fs::copy(d.join("o/dataset.json"), d.join("r/dataset.json")).unwrap();

    let longer = ["--set", "schedule.epochs=2", "--allow-change", "schedule.epochs"];
    let resume = |extra: &[&str]| {
        let args = [
            &["tiny.toml", "--run-dir", "r", "--set", "schedule.batch_size=8"][..],
            &longer,
            extra,
        ]
        .concat();
        byol_run(d, &args)
    };
    let out = resume(&on_other);
    let all = text(&out);
    assert!(!out.status.success(), "a run on `data` went on on `other`:\n{all}");
    assert!(
        all.contains("other data") && all.contains("manifest.json records it") && all.contains("train: 18 images"),
        "{all}"
    );
    let out = resume(&[]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("resuming"), "{all}");
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("r/dataset.json")).unwrap()).unwrap();
    assert_eq!(
        record["train"]["images"], 18,
        "the folder's record is the run's data again: {record}"
    );
}

/// A small conv net, in a file of its own: `torch.jit.script` reads the class's source.
const NET: &str = r#"
import torch

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU())

    def forward(self, x):
        return self.features(x).mean((2, 3))
"#;

#[test]
fn a_torchscript_run_keeps_its_module() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let module = d.join("net.pt");
    std::fs::write(d.join("net_def.py"), NET).unwrap();
    let script = format!(
        "sys.path.insert(0, {dir:?})\nfrom net_def import Net\ntorch.jit.script(Net()).save({module:?})\n",
        dir = d.to_str().unwrap(),
        module = module.to_str().unwrap()
    );
    byol_testkit::run_python(&script, &[]);
    let torchscript = "type = \"torchscript\"\npath = \"net.pt\"\ninput_size = 16\n";
    let experiment = with_keys(
        &with_table(TINY, "backbone", torchscript),
        &[("byol.embedding_layer", "\"output\"")],
    );
    std::fs::write(d.join("ts.toml"), &experiment).unwrap();
    labelled_images(d, 2);
    ok(
        d,
        &["ts.toml", "--run-dir", "r", "--quiet", "--set", "schedule.epochs=1"],
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("r/checkpoints/last/manifest.json")).unwrap()).unwrap();
    let kept = manifest["sources"]["backbone.path"]
        .as_str()
        .expect("the manifest names the module");
    assert!(manifest["files"][kept].is_string(), "its SHA-256 is listed: {manifest}");

    std::fs::remove_file(&module).unwrap();
    use_the_run(d, "r", ".");
    let resumed = ok(
        d,
        &[
            "ts.toml",
            "--run-dir",
            "r",
            "--set",
            "schedule.epochs=2",
            "--allow-change",
            "schedule.epochs",
        ],
    );
    assert!(resumed.contains("resuming"), "{resumed}");
    assert!(!resumed.contains("now holds another file"), "{resumed}");

    // Another module saved under the original name: the run goes on with its copy, and says so.
    let other = format!(
        "sys.path.insert(0, {dir:?})\nfrom net_def import Net\ntorch.manual_seed(1)\ntorch.jit.script(Net()).save({module:?})\n",
        dir = d.to_str().unwrap(),
        module = module.to_str().unwrap()
    );
    byol_testkit::run_python(&other, &[]);
    let resumed = ok(
        d,
        &[
            "ts.toml",
            "--run-dir",
            "r",
            "--set",
            "schedule.epochs=3",
            "--allow-change",
            "schedule.epochs",
        ],
    );
    assert!(
        resumed.contains("note: backbone.path = net.pt now holds another file than the one this run trains"),
        "{resumed}"
    );

    // The run's copy changed in place (every checkpoint links that one file): the resume stops
    // and says how to mend it, moving no checkpoint aside; mended, it goes on.
    let last = d.join("r/checkpoints/last");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(last.join("manifest.json")).unwrap()).unwrap();
    let copy = last.join(manifest["sources"]["backbone.path"].as_str().unwrap());
    let original = std::fs::read(&copy).unwrap();
    std::fs::write(&copy, std::fs::read(&module).unwrap()).unwrap();
    let more = [
        "ts.toml",
        "--run-dir",
        "r",
        "--set",
        "schedule.epochs=4",
        "--allow-change",
        "schedule.epochs",
    ];
    let out = byol_run(d, &more);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("one file linked into every checkpoint, and it was changed in place"),
        "{all}"
    );
    assert!(!d.join("r/checkpoints/damaged").exists(), "{all}");
    std::fs::write(&copy, original).unwrap();
    ok(d, &more);
}
