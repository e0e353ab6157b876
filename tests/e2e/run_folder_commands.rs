//! `byol-run eval`, `export` and `embed` given a run folder instead of a checkpoint folder: they
//! use the newest intact checkpoint (skipping a damaged one, as a resume does, without moving
//! it) and say which; `eval knn` takes k and temperature from the run's config.toml unless flags
//! give them; wrong `--train`/`--test` folders are told in terms of those flags.

use std::path::Path;

use super::TINY;
use super::{byol_run, text};

fn png(path: &Path) {
    let image = tch::Tensor::randint(255, [3, 20, 24], (tch::Kind::Uint8, tch::Device::Cpu));
    tch::vision::image::save(&image, path).unwrap();
}

/// A one-epoch tiny run in `<dir>/r` (checkpoints at steps 8, 12 and 16) with a kNN temperature
/// of its own, and labelled images in `<dir>/train` and `<dir>/test` (three classes).
fn trained_run_and_images() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tiny.toml"), TINY).unwrap();
    let out = byol_run(
        dir.path(),
        &[
            "tiny.toml",
            "--run-dir",
            "r",
            "--quiet",
            "--set",
            "schedule.epochs=1",
            "--set",
            "eval.knn_temperature=0.07",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    for (split, per_class) in [("train", 6), ("test", 3)] {
        for class in ["a", "b", "c"] {
            let folder = dir.path().join(split).join(class);
            std::fs::create_dir_all(&folder).unwrap();
            for i in 0..per_class {
                png(&folder.join(format!("{i}.png")));
            }
        }
    }
    dir
}

fn eval(dir: &Path, protocol: &str, extra: &[&str]) -> (serde_json::Value, String) {
    let mut args = vec!["eval", protocol, "r", "--train", "train", "--test", "test"];
    args.extend_from_slice(extra);
    let out = byol_run(dir, &args);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    (serde_json::from_slice(&out.stdout).expect("JSON on stdout"), all)
}

#[test]
fn eval_on_a_run_folder_uses_its_newest_checkpoint_and_its_knn_settings() {
    let dir = trained_run_and_images();
    let (knn, all) = eval(dir.path(), "knn", &[]);
    assert!(
        all.contains("using checkpoint") && all.contains("step-000000016"),
        "{all}"
    );
    assert!(
        knn["checkpoint"]
            .as_str()
            .unwrap()
            .ends_with("r/checkpoints/step-000000016"),
        "{knn}"
    );
    assert_eq!(knn["k"], 5, "the run's eval.knn_k, not 200: {knn}");
    assert_eq!(
        (knn["train_images"].as_i64(), knn["test_images"].as_i64()),
        (Some(18), Some(9)),
        "{knn}"
    );
    assert_eq!(knn["temperature"], 0.07, "the run's eval.knn_temperature: {knn}");
    assert!(knn["k_from"].as_str().unwrap().contains("config.toml"), "{knn}");
    assert!(
        all.contains("kNN: k = 5 (eval.knn_k of") && all.contains("temperature = 0.07"),
        "{all}"
    );

    let (knn, all) = eval(dir.path(), "knn", &["--k", "3"]);
    assert_eq!(knn["k"], 3, "a flag wins: {knn}");
    assert_eq!(knn["k_from"], "--k", "{knn}");
    assert_eq!(knn["temperature"], 0.07, "{knn}");
    assert!(all.contains("k = 3 (--k)"), "{all}");
    assert!(
        knn["top5"].is_null(),
        "three classes: top-5 would be 100% whatever the features: {knn}"
    );
    assert!(all.contains("top-5 is not reported: with 3 classes"), "{all}");
    assert!(!all.contains("more than the"), "{all}");

    let (knn, all) = eval(dir.path(), "knn", &["--k", "40"]);
    assert_eq!(knn["k"], 18, "k is what voted: all 18 training images: {knn}");
    assert_eq!(knn["k_requested"], 40, "{knn}");
    assert!(
        all.contains("k = 40 is more than the 18 training images: each test image is voted on by all 18"),
        "{all}"
    );

    let (linear, all) = eval(dir.path(), "linear", &["--epochs", "2"]);
    assert!(all.contains("using checkpoint"), "{all}");
    assert_eq!(linear["lr_chosen_on"], "validation", "{linear}");
    assert_eq!(linear["validation_size"], 3, "one of each class's six: {linear}");
    assert!(all.contains("3 of 18 training images held out"), "{all}");
    assert_eq!(linear["train_images"], 18, "{linear}");
    assert_eq!(linear["sweep"].as_array().unwrap().len(), 4, "{linear}");
    assert!(all.contains("chosen on the validation split"), "{all}");
    assert!(linear["top5"].is_null(), "{linear}");
    assert!(!all.contains("the validation split is"), "{all}");
    // Two images per class: one of each held out is half of them, said.
    let (linear, all) = eval(dir.path(), "linear", &["--epochs", "2", "--limit-per-class", "2"]);
    assert_eq!(linear["validation_size"], 3, "{linear}");
    assert!(
        all.contains("warning: the validation split is 50% of the training images, not 10%"),
        "{all}"
    );

    // One lr is no grid: nothing lies beyond it; one named twice is tried once.
    let (linear, all) = eval(dir.path(), "linear", &["--epochs", "2", "--lrs", "0.1,0.1"]);
    assert!(!all.contains("a better one may lie beyond it"), "{all}");
    assert!(
        all.contains("warning: --lrs names 0.1 more than once: it is tried once"),
        "{all}"
    );
    assert_eq!(linear["sweep"].as_array().unwrap().len(), 1, "{linear}");
}

#[test]
fn export_and_embed_on_a_run_folder_skip_a_damaged_newest_checkpoint() {
    let dir = trained_run_and_images();
    let newest = dir.path().join("r/checkpoints/step-000000016/model.safetensors");
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();

    let out = byol_run(dir.path(), &["export", "r", "--out", "backbone.safetensors"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("warning: skipping damaged checkpoint"), "{all}");
    assert!(
        all.contains("using checkpoint") && all.contains("step-000000012"),
        "{all}"
    );
    assert!(dir.path().join("backbone.safetensors").is_file());
    assert!(newest.is_file(), "a reader leaves the damaged checkpoint where it is");

    let out = byol_run(dir.path(), &["embed", "r", "--images", "test", "--out", "emb.npy"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("step-000000012") && all.contains("embedded 9 images"),
        "{all}"
    );

    // Every checkpoint damaged: said in a reader's terms (no resume, no --fresh), nothing moved.
    for checkpoint in ["step-000000004", "step-000000008", "step-000000012"] {
        let model = dir
            .path()
            .join("r/checkpoints")
            .join(checkpoint)
            .join("model.safetensors");
        if model.is_file() {
            std::fs::write(model, "x").unwrap();
        }
    }
    let out = byol_run(dir.path(), &["embed", "r", "--images", "test", "--out", "emb2.npy"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("run folder r has no intact checkpoint to read; damaged:")
            && !all.contains("--fresh")
            && !all.contains("resume"),
        "{all}"
    );
    assert!(!dir.path().join("r/checkpoints/damaged").exists(), "{all}");

    let out = byol_run(dir.path(), &["export", "train", "--out", "x.safetensors"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("neither a checkpoint folder") && all.contains("nor a run folder"),
        "{all}"
    );
    let out = byol_run(dir.path(), &["export", "r/checkpoints", "--out", "x.safetensors"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("r/checkpoints is a run's checkpoints/ folder: give its run folder (r, "),
        "{all}"
    );
}

#[test]
fn eval_errors_name_its_flags_not_experiment_keys() {
    let dir = trained_run_and_images();
    let fails = |train: &str, test: &str| {
        let out = byol_run(dir.path(), &["eval", "knn", "r", "--train", train, "--test", test]);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{all}");
        assert!(!all.contains("dataset.") && !all.contains("eval.train"), "{all}");
        all
    };
    // Images without class sub-folders.
    let flat = dir.path().join("flat");
    std::fs::create_dir_all(&flat).unwrap();
    png(&flat.join("0.png"));
    let all = fails("flat", "test");
    assert!(
        all.contains("--train flat: no class sub-folders") && all.contains("<folder>/<class>/<image>"),
        "{all}"
    );
    let all = fails("train", "missing");
    assert!(all.contains("--test missing: this folder does not exist"), "{all}");
    // Other classes than the training images': the reader's message, in the flags' terms.
    std::fs::create_dir_all(dir.path().join("other/z")).unwrap();
    png(&dir.path().join("other/z/0.png"));
    let all = fails("train", "other");
    assert!(all.contains("--test: other has classes [z]"), "{all}");
    // Flags that would score nothing, or crash the classifier, are refused by name.
    for (protocol, flag, value) in [
        ("knn", "--k", "0"),
        ("knn", "--temperature", "0"),
        ("linear", "--epochs", "0"),
        ("linear", "--lrs", "0.1,-1"),
        ("linear", "--lrs", "1e39"),
    ] {
        let out = byol_run(
            dir.path(),
            &["eval", protocol, "r", "--train", "train", "--test", "test", flag, value],
        );
        let all = text(&out);
        assert_eq!(out.status.code(), Some(2), "{all}");
        assert!(
            all.contains(&format!("for '{flag} <")) && !all.contains("panicked"),
            "{all}"
        );
    }

    // An unreadable image is skipped with a warning that names no experiment key.
    std::fs::write(dir.path().join("train/a/bad.png"), "not a png").unwrap();
    let out = byol_run(dir.path(), &["eval", "knn", "r", "--train", "train", "--test", "test"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("warning: skipped 1 unreadable image(s)") && all.contains("bad.png"),
        "{all}"
    );
    assert!(!all.contains("dataset."), "{all}");
    assert!(all.contains("pass --strict to stop at the first one instead"), "{all}");
    // The result counts and names it; --strict stops at it instead.
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["skipped_images"], 1, "{result}");
    assert!(
        result["skipped"][0].as_str().unwrap().starts_with("train\t"),
        "{result}"
    );
    let out = byol_run(
        dir.path(),
        &["eval", "knn", "r", "--train", "train", "--test", "test", "--strict"],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("bad.png") && all.contains("leave out --strict"), "{all}");
}

/// A run folder whose checkpoints folder is a link, copied with the link (`cp -r`): the copy's
/// checkpoints are the original's by the folder's record, and a command reading them through
/// the copy warns that it reads the original's.
#[test]
fn commands_reading_a_copy_s_checkpoints_through_a_link_warn_that_they_are_another_run_s() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("tiny.toml"), TINY).unwrap();
    std::fs::create_dir_all(d.join("r")).unwrap();
    std::fs::create_dir_all(d.join("scratch")).unwrap();
    std::os::unix::fs::symlink(d.join("scratch"), d.join("r/checkpoints")).unwrap();
    let out = byol_run(
        d,
        &["tiny.toml", "--run-dir", "r", "--quiet", "--set", "schedule.epochs=1"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let copied = std::process::Command::new("cp")
        .args(["-r", "r", "copy"])
        .current_dir(d)
        .status();
    assert!(copied.unwrap().success());
    assert!(d.join("copy/checkpoints").is_symlink());

    let warning = "the checkpoints folder of";
    for args in [
        &["export", "copy", "--out", "b.safetensors"][..],
        &["compare", "copy"],
        &["eval", "knn", "copy", "--train", "nowhere", "--test", "nowhere"],
    ] {
        let all = text(&byol_run(d, args));
        assert!(
            all.contains("warning: copy/checkpoints leads to") && all.contains(warning),
            "byol-run {}: {all}",
            args.join(" ")
        );
    }
    // The original's own: no warning.
    let out = byol_run(d, &["export", "r", "--out", "a.safetensors"]);
    assert!(out.status.success() && !text(&out).contains(warning), "{}", text(&out));

    // An output into the linked checkpoints folder, by the link or by its target, is refused
    // before it can replace a checkpoint's file; so is a run folder made in there.
    let step = std::fs::read_dir(d.join("scratch"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().into_string().unwrap())
        .find(|name| name.starts_with("step-"))
        .expect("a checkpoint");
    let model = |base: &str| format!("{base}/{step}/model.safetensors");
    let kept = std::fs::read(d.join(model("scratch"))).unwrap();
    for out_path in [
        model("r/checkpoints"),
        model("scratch"),
        "scratch/other.safetensors".into(),
    ] {
        let out = byol_run(d, &["export", "r", "--out", &out_path]);
        assert!(
            !out.status.success() && text(&out).contains("a run's checkpoints: a file written there could replace"),
            "export --out {out_path}: {}",
            text(&out)
        );
    }
    assert!(
        std::fs::read(d.join(model("scratch"))).unwrap() == kept,
        "the checkpoint changed"
    );
    let out = byol_run(
        d,
        &["tiny.toml", "--run-dir", &format!("scratch/{step}/inner"), "--quiet"],
    );
    assert!(
        !out.status.success() && text(&out).contains("is inside the checkpoints folder"),
        "{}",
        text(&out)
    );
}
