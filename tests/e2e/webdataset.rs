//! `[dataset] type = "webdataset"` end to end: `byol-run shard` packs image folders into tar
//! shards, an experiment trains on them with the kNN monitor on labelled test shards (or on
//! `[eval] train/test` when the shards are unlabelled), a run killed with `kill -9` in the middle
//! of an epoch resumes to the same final weights bit for bit (crops cut by the loader from the
//! shards), and two processes train on one set of shards.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{byol_run, byol_run_command, text};

/// 16 px images, `resnet18` at width 4, one CPU thread; `urls` and `test_urls` set by the tests.
const SHARDS: &str = r#"
[run]
device = "cpu"
threads = 1
seed = 4

[dataset]
type = "webdataset"
urls = "shards/train-{000000..000007}.tar"
test_urls = "shards/test-{000000..000001}.tar"
image_size = 16
shuffle_buffer = 20
workers = 2

[backbone]
type = "resnet18"
cifar_stem = true
width = 4

[augment]
type = "byol"
preset = "cifar"
image_size = 16

[optimizer]
type = "lars"
lr = 0.3

[byol]
hidden_dim = 32
projection_dim = 16

[schedule]
epochs = 2
batch_size = 8
warmup_epochs = 0

[eval]
knn_k = 5

[checkpoint]
every_steps = 5
keep_last = 20
"#;

/// A 16 px PNG: a square of the class's colour at a place drawn from `seed`.
fn write_image(path: &Path, class: usize, seed: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let colour = [[220, 40, 40], [40, 40, 220], [40, 200, 40]][class];
    let (ox, oy) = (seed % 7, (seed / 7) % 7);
    image::RgbImage::from_fn(16, 16, |x, y| {
        let inside = (ox..ox + 8).contains(&x) && (oy..oy + 8).contains(&y);
        image::Rgb(if inside { colour } else { [128, 128, 128] })
    })
    .save(path)
    .unwrap();
}

/// `images/{train,test}/<class>/` (128 and 24 images of 3 classes) packed into shards with
/// `byol-run shard`: 8 training shards of 16, 2 test shards of 12. A test image is no copy of
/// the training image of its name (its square lies elsewhere).
fn shards(dir: &Path) {
    for (split, count, seeds_from) in [("train", 128u32, 0), ("test", 24, 1)] {
        for i in 0..count {
            let class = (i % 3) as usize;
            write_image(
                &dir.join(format!("images/{split}/{}/{i:03}.png", ["red", "blue", "green"][class])),
                class,
                i + seeds_from,
            );
        }
        let per_shard = if split == "train" { "16" } else { "12" };
        let pattern = format!("shards/{split}-%06d.tar");
        let out = byol_run(
            dir,
            &[
                "shard",
                &format!("images/{split}"),
                "--out",
                &pattern,
                "--per-shard",
                per_shard,
            ],
        );
        let all = text(&out);
        assert!(out.status.success(), "{all}");
        let last = if split == "train" { 7 } else { 1 };
        assert!(
            all.contains(&format!("urls = \"shards/{split}-{{000000..00000{last}}}.tar\""))
                && all.contains("of 3 classes"),
            "{all}"
        );
    }
}

fn copy_folder(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn summary(run_dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(run_dir.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn shards_from_byol_run_shard_train_with_the_knn_monitor() {
    let dir = tempfile::tempdir().unwrap();
    shards(dir.path());
    std::fs::write(dir.path().join("wds.toml"), SHARDS).unwrap();
    let out = byol_run(dir.path(), &["wds.toml", "--run-dir", "run"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("128 images") && all.contains("kNN top-1 before"), "{all}");
    // No sample skipped or left out (the classes' colours make kNN perfect from the start,
    // so the "did not improve" warning may appear).
    assert!(
        !all.contains("unreadable") && !all.contains("left out") && !all.contains("NaN"),
        "{all}"
    );
    let s = summary(&dir.path().join("run"));
    assert_eq!(s["steps"], 32, "2 epochs of 128 / 8: {s}");
    let top1 = s["knn_after"]["top1"].as_f64().unwrap_or(f64::NAN);
    assert!((0.0..=1.0).contains(&top1), "{s}");

    // The shards moved: the run goes on from them where its data is found to be the same.
    let moved = dir.path().join("moved");
    copy_folder(&dir.path().join("shards"), &moved);
    let out = byol_run(
        dir.path(),
        &[
            "wds.toml",
            "--run-dir",
            "run",
            "--set",
            "dataset.urls=\"moved/train-{000000..000007}.tar\"",
            "--set",
            "dataset.test_urls=\"moved/test-{000000..000001}.tar\"",
            "--set",
            "schedule.epochs=3",
            "--allow-change",
            "schedule.epochs",
        ],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("on the same data (dataset.json matches), found or read otherwise"),
        "{all}"
    );
    assert_eq!(summary(&dir.path().join("run"))["steps"], 48);

    // A kNN monitor tested on its own training shards, and a test split that [eval] replaces: said.
    let once = |run: &str, set: &[&str]| {
        let mut args = vec!["wds.toml", "--run-dir", run, "--set", "schedule.epochs=1"];
        for s in set {
            args.extend(["--set", s]);
        }
        let out = byol_run(dir.path(), &args);
        assert!(out.status.success(), "{}", text(&out));
        text(&out)
    };
    let all = once("leak", &["dataset.test_urls=\"shards/train-{000000..000007}.tar\""]);
    assert!(
        all.contains("warning: the kNN monitor's test images are its training images"),
        "{all}"
    );
    // One training shard and a test shard as the test split: the first's images are the bank's,
    // and counted.
    let all = once(
        "shard",
        &["dataset.test_urls=\"shards/{train-000001,test-000000}.tar\""],
    );
    let shared = "kNN test images are among the kNN monitor's training images";
    assert!(all.contains(&format!("warning: 16 of the 28 {shared}")), "{all}");
    let all = once("both", &["eval.train=\"images/train\"", "eval.test=\"images/test\""]);
    assert!(all.contains("warning: the dataset's test split is not used"), "{all}");
    assert!(
        !all.contains("are its training images") && !all.contains("kNN test images are among"),
        "{all}"
    );

    // The same shards unlabelled (a flat folder): kNN needs [eval] train and test.
    let flat = byol_run(
        dir.path(),
        &[
            "shard",
            "images/train/red",
            "--out",
            "flat/u-%03d.tar",
            "--per-shard",
            "20",
        ],
    );
    assert!(
        flat.status.success() && text(&flat).contains("unlabelled"),
        "{}",
        text(&flat)
    );
    let unlabelled = SHARDS
        .replace("shards/train-{000000..000007}.tar", "flat/u-{000..002}.tar")
        .replace("test_urls = \"shards/test-{000000..000001}.tar\"\n", "");
    std::fs::write(dir.path().join("flat.toml"), unlabelled).unwrap();
    let out = byol_run(dir.path(), &["flat.toml", "--run-dir", "flat-run"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert_eq!(all.matches("kNN monitor and online probe off").count(), 1, "{all}");
    let out = byol_run(
        dir.path(),
        &[
            "flat.toml",
            "--run-dir",
            "flat-run",
            "--fresh",
            "--set",
            "eval.train=\"images/train\"",
            "--set",
            "eval.test=\"images/test\"",
        ],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("kNN top-1 before") && !all.contains("kNN monitor and online probe off"),
        "{all}"
    );

    // Asking for kNN test shards next to unlabelled training shards says what to do instead.
    let out = byol_run(
        dir.path(),
        &[
            "flat.toml",
            "--set",
            "dataset.test_urls=\"shards/test-{000000..000001}.tar\"",
        ],
    );
    let all = text(&out);
    assert!(
        !out.status.success() && all.contains("set eval.train and eval.test"),
        "{all}"
    );
}

/// An unreadable image in the kNN monitor's test shards is left out of every evaluation, and
/// said, naming the shard and member (a reader without the loader's prefetch said it never).
#[test]
fn an_unreadable_test_sample_is_left_out_of_the_knn_monitor_and_named() {
    let dir = tempfile::tempdir().unwrap();
    shards(dir.path());
    // A PNG's signature and nothing after it: `shard` packs it (it looks like a PNG), training
    // cannot decode it.
    std::fs::write(
        dir.path().join("images/test/red/999.png"),
        b"\x89PNG\r\n\x1a\nnothing more",
    )
    .unwrap();
    let out = byol_run(
        dir.path(),
        &[
            "shard",
            "images/test",
            "--out",
            "damaged/test-%06d.tar",
            "--per-shard",
            "25",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    std::fs::write(dir.path().join("wds.toml"), SHARDS).unwrap();
    let out = byol_run(
        dir.path(),
        &[
            "wds.toml",
            "--run-dir",
            "run",
            "--set",
            "schedule.epochs=1",
            "--set",
            "dataset.test_urls=\"damaged/test-000000.tar\"",
        ],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    // Once, though every evaluation leaves it out; `shard` renamed the member.
    assert_eq!(all.matches("skipped 1 unreadable sample(s)").count(), 1, "{all}");
    assert!(
        all.contains("unreadable       1 image skipped, named in run/skipped-images.txt"),
        "{all}"
    );
    assert!(
        all.contains(
            "warning: evaluation: skipped 1 unreadable sample(s) of 25 in 1 shard(s) (damaged/test-000000.tar member"
        ),
        "{all}"
    );
}

fn checkpoints(run_dir: &Path) -> usize {
    std::fs::read_dir(run_dir.join("checkpoints")).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("step-"))
            .count()
    })
}

fn final_model(run_dir: &Path) -> Vec<(String, tch::Tensor)> {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("checkpoints/last/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["step"], 32, "the run finished");
    let mut tensors = tch::Tensor::read_safetensors(run_dir.join("checkpoints/last/model.safetensors")).unwrap();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors
}

#[test]
fn kill_9_in_the_middle_of_an_epoch_then_resume_ends_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    shards(dir.path());
    // Crops cut by the loader from the shards' full images; 16 steps per epoch and a checkpoint
    // every 5 steps, so every checkpoint before the end lies inside an epoch.
    let experiment = SHARDS.replace(
        "image_size = 16\n\n[optimizer]",
        "image_size = 16\ncrop_on = \"loader\"\n\n[optimizer]",
    );
    assert!(experiment.contains("crop_on"));
    std::fs::write(dir.path().join("wds.toml"), experiment).unwrap();
    let reference = byol_run(dir.path(), &["wds.toml", "--run-dir", "reference", "--quiet"]);
    assert!(reference.status.success(), "{}", text(&reference));

    let child = byol_run_command(dir.path())
        .args(["wds.toml", "--run-dir", "killed"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while checkpoints(&dir.path().join("killed")) < 1 {
        assert!(started.elapsed() < Duration::from_secs(120), "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
    Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status()
        .unwrap();
    let killed = child.wait_with_output().unwrap();
    assert!(!killed.status.success(), "kill -9 ends the process: {}", text(&killed));

    let resumed = byol_run(dir.path(), &["wds.toml", "--run-dir", "killed"]);
    let all = text(&resumed);
    assert!(resumed.status.success(), "{all}");
    let from: u64 = all
        .split("from step ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resume line: {all}"));
    assert!(
        !from.is_multiple_of(16),
        "resumed at step {from}, inside an epoch of 16 steps"
    );
    let (a, b) = (
        final_model(&dir.path().join("reference")),
        final_model(&dir.path().join("killed")),
    );
    assert_eq!(a.len(), b.len());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(
            x.equal(y),
            "{name} differs between the uninterrupted and the resumed run"
        );
    }

    // Two shards that trade names hold other samples under each name: a resume is refused and
    // names those two shards.
    let shard = |i: usize| dir.path().join(format!("shards/train-{i:06}.tar"));
    for (from, to) in [(shard(1), shard(9)), (shard(2), shard(1)), (shard(9), shard(2))] {
        std::fs::rename(from, to).unwrap();
    }
    let longer = [
        "wds.toml",
        "--run-dir",
        "reference",
        "--set",
        "schedule.epochs=3",
        "--allow-change",
        "schedule.epochs",
    ];
    let out = byol_run(dir.path(), &longer);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains(
            "\n    changed: train-000001.tar (16 images, not the same or not in the same order), \
             train-000002.tar (16 images, not the same or not in the same order)\n"
        ),
        "{all}"
    );

    // The shards back in place, with the labels of one rewritten (same names, same sizes): the
    // labels are the data too, and the resume is refused.
    for (from, to) in [(shard(1), shard(9)), (shard(2), shard(1)), (shard(9), shard(2))] {
        std::fs::rename(from, to).unwrap();
    }
    let relabel = "import sys, tarfile\npath = sys.argv[1]\ndata = bytearray(open(path, 'rb').read())\n\
                   for m in tarfile.open(path).getmembers():\n    if m.name.endswith('.cls'):\n        \
                   o = m.offset_data\n        data[o:o + 1] = str((int(data[o:o + 1]) + 1) % 3).encode()\n\
                   open(path, 'wb').write(data)\n";
    let relabelled = std::process::Command::new(byol_testkit::python())
        .args(["-c", relabel])
        .arg(shard(3))
        .status();
    assert!(relabelled.unwrap().success());
    let out = byol_run(dir.path(), &longer);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("(labels ") && all.contains("train:") && all.contains("the same files, with other labels"),
        "{all}"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn two_processes_train_on_one_set_of_shards() {
    let dir = tempfile::tempdir().unwrap();
    shards(dir.path());
    std::fs::write(dir.path().join("wds.toml"), SHARDS).unwrap();
    let port = free_port();
    // Started the way torchrun starts ranks (as tests/e2e/distributed.rs does).
    let children: Vec<_> = (0..2)
        .map(|rank| {
            byol_run_command(dir.path())
                .args(["wds.toml", "--run-dir", "dp", "--set", "schedule.batch_size=16"])
                .env("WORLD_SIZE", "2")
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (rank, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "rank {rank}: {}", text(&out));
    }
    // Each process streams its own 64 of the 128 samples: 8 steps of 2 x 8 per epoch.
    let s = summary(&dir.path().join("dp"));
    assert_eq!(s["steps"], 16, "{s}");
    assert!(s["final_loss"].as_f64().is_some_and(f64::is_finite), "{s}");
}

/// `shard`'s errors speak of its own arguments: a folder mixing loose images with class folders
/// points at `--unlabelled` (which works), not at the image folder's `labels` key.
#[test]
fn shard_errors_name_its_own_flags() {
    let dir = tempfile::tempdir().unwrap();
    let mixed = dir.path().join("mixed");
    super::random_pngs(&mixed, &[""], 4);
    super::random_pngs(&mixed, &["sub"], 1);
    let args = ["shard", "mixed", "--out", "out/s-%02d.tar", "--per-shard", "10"];
    let out = byol_run(dir.path(), &args);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("add --unlabelled"), "{all}");
    assert!(
        !all.contains("dataset.train") && !all.contains("labels =") && !all.contains("dataset configuration"),
        "{all}"
    );
    let out = byol_run(dir.path(), &[&args[..], &["--unlabelled"]].concat());
    assert!(out.status.success(), "{}", text(&out));
}
