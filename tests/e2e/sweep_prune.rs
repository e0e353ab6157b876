//! `[sweep] prune = "median"`: a trial that is certainly worse than the others at a kNN
//! evaluation during training stops there with a checkpoint, shows as pruned in the sweep's
//! tables and its summary, is skipped when the sweep runs again, and trains on when resumed.

use std::path::Path;

use byol_testkit::fixtures::tiny_experiment;

use super::{byol_run, text};

/// Two epochs with a kNN evaluation after the first (the pruning point) on labelled folders
/// written by the test; the swept key is the folder of kNN queries.
fn pruned_sweep(queries: &str) -> String {
    let experiment = tiny_experiment(&[
        ("dataset.train_size", "64"),
        ("dataset.test_size", "0"),
        ("schedule.epochs", "2"),
        ("schedule.warmup_epochs", "0"),
        ("eval.every_epochs", "1"),
        ("eval.train", "\"bank\""),
        ("eval.test", "\"right-labels\""),
    ]);
    format!(
        "{experiment}\n[sweep]\nprune = \"median\"\nprune_after = 1\n\n[sweep.parameters]\n\"eval.test\" = {queries}\n"
    )
}

/// Writes the kNN folders. Why the bad trial is certainly worse, whatever the seed, the CPU or
/// the thread count: the bank's images are all of class `a` (class `b` is an empty folder), so
/// every neighbour votes `a`, only `a` gets a score, and every query is predicted `a`. Queries
/// labelled `a` (`right-labels*`) score exactly 100%, queries labelled `b` (`wrong-labels`)
/// exactly 0%, at every evaluation, however the network trains.
fn write_knn_folders(root: &Path) {
    let folders = [
        ("bank", "a"),
        ("right-labels", "a"),
        ("right-labels-2", "a"),
        ("wrong-labels", "b"),
    ];
    for (n, (folder, class)) in folders.iter().enumerate() {
        for c in ["a", "b"] {
            std::fs::create_dir_all(root.join(folder).join(c)).unwrap();
        }
        for i in 0..4u8 {
            let shade = 40 * i + 10 * n as u8;
            let image = image::RgbImage::from_fn(16, 16, |x, _| image::Rgb([shade, 255 - shade, (x * 16) as u8]));
            image
                .save(root.join(folder).join(class).join(format!("{i}.png")))
                .unwrap();
        }
    }
}

fn setup(queries: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_knn_folders(dir.path());
    std::fs::write(dir.path().join("tiny.toml"), pruned_sweep(queries)).unwrap();
    dir
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn a_certainly_worse_trial_is_pruned_at_the_first_evaluation_and_resumes_on_request() {
    // One trial at a time: the good trial has passed epoch 1 (100%) when the bad one gets there.
    let dir = setup(r#"["right-labels", "wrong-labels"]"#);
    let out = byol_run(dir.path(), &["sweep", "tiny.toml", "--quiet"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains(
            "trial-002: pruned after 2 of 4 steps: knn_top1 0.0000 worse than the median 1.0000 of 1 other trial at epoch 1"
        ),
        "{all}"
    );
    let sweep_dir = dir.path().join("runs/tiny-sweep");
    let trial = sweep_dir.join("trial-002");
    let summary = json(&trial.join("summary.json"));
    assert_eq!(summary["steps"], 2, "{summary}");
    assert_eq!(summary["pruned"]["epoch"], 1, "{summary}");
    assert_eq!(summary["pruned"]["trials"], 1, "{summary}");
    assert_eq!(summary["curve_evaluations"], 1, "{summary}");
    assert!(
        trial.join("checkpoints/step-000000002").is_dir(),
        "stopped with a checkpoint"
    );
    assert_eq!(
        json(&sweep_dir.join("trial-001/summary.json"))["knn_after"]["top1"],
        1.0
    );

    let markdown = std::fs::read_to_string(sweep_dir.join("summary.md")).unwrap();
    assert!(markdown.contains("1 of 2 trials done, 1 pruned"), "{markdown}");
    let row = markdown.lines().find(|l| l.contains("| trial-002 |")).unwrap();
    assert!(
        row.starts_with("| - | trial-002 | wrong-labels | n/a |") && row.contains("| pruned at epoch 1 |"),
        "{markdown}"
    );
    let csv = std::fs::read_to_string(sweep_dir.join("summary.csv")).unwrap();
    let line = csv.lines().find(|l| l.contains(",trial-002,")).unwrap();
    assert!(
        line.starts_with(",trial-002,wrong-labels,,pruned,") && line.ends_with(",1"),
        "{csv}"
    );

    // `compare` shows the two trials side by side: the swept key (and the query images it names),
    // and the pruned status.
    let out = byol_run(&sweep_dir, &["compare", "trial-001", "trial-002"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("| trial-002 | 4 images of classes [")
            && all.contains(" | wrong-labels | ")
            && all.contains("| pruned at epoch 1 |"),
        "{all}"
    );
    let out = byol_run(&sweep_dir, &["compare", "trial-001", "trial-002", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["differing_keys"],
        serde_json::json!(["data.knn_queries", "eval.test", "run.name"])
    );
    assert_eq!(report["runs"][1]["status"], "pruned", "{report}");
    assert_eq!(report["runs"][1]["pruned_epoch"], 1, "{report}");
    assert_eq!(report["runs"][0]["knn_after"], 1.0, "{report}");

    // Run again, the sweep leaves the pruned trial alone.
    let out = byol_run(dir.path(), &["sweep", "tiny.toml"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("trial-002: pruned before, skipped (knn_top1 0.0000 worse"),
        "{all}"
    );
    assert!(!all.contains("== trial-"), "nothing trains: {all}");
    assert!(!all.contains("another pruning rule"), "{all}");
    // Under a rule that would not have pruned it, it stays pruned, and the way to finish it is said.
    let file = std::fs::read_to_string(dir.path().join("tiny.toml")).unwrap();
    std::fs::write(
        dir.path().join("tiny.toml"),
        file.replace("prune_after = 1", "prune_after = 3"),
    )
    .unwrap();
    let out = byol_run(dir.path(), &["sweep", "tiny.toml"]);
    let all = text(&out);
    assert!(
        out.status.success()
            && all.contains("note: 1 trial(s) were pruned under another pruning rule than this sweep's now")
            && all.contains("`byol-run train runs/tiny-sweep/trial-002/config.toml`"),
        "{all}"
    );
    std::fs::write(dir.path().join("tiny.toml"), file).unwrap();

    // Killed after the evaluation that pruned it and before its summary: the resumed trial finds
    // the point in its curve, judges it again, and is pruned there without a step.
    std::fs::remove_file(trial.join("summary.json")).unwrap();
    let out = byol_run(dir.path(), &["sweep", "tiny.toml", "--quiet"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("trial-002: pruned after 2 of 4 steps: knn_top1 0.0000 worse than the median 1.0000"),
        "{all}"
    );
    let summary = json(&trial.join("summary.json"));
    assert!(summary["steps"] == 2 && summary["pruned"]["epoch"] == 1, "{summary}");
    assert_eq!(summary["curve_evaluations"], 1, "counted once: {summary}");
    assert!(!trial.join("checkpoints/step-000000003").exists(), "no step trained");

    // Its own config.toml trained as a plain run (as the README says and the log suggests), it
    // goes on in its folder from its checkpoint to the end.
    let config = trial.join("config.toml");
    let args = ["train", config.to_str().unwrap()];
    let out = byol_run(dir.path(), &args);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("from step 2 of 4"), "resumed: {all}");
    let summary = json(&trial.join("summary.json"));
    assert!(summary["steps"] == 4 && summary.get("pruned").is_none(), "{summary}");
}

#[test]
fn trials_in_child_processes_prune_from_each_others_files() {
    // Two devices, three trials: the bad third trial starts only once a device is free, that
    // is once one of the good trials has finished (and so passed epoch 1 at 100%); whether the
    // other good trial has passed it too, the median is 100%.
    let dir = setup(r#"["right-labels", "right-labels-2", "wrong-labels"]"#);
    let out = byol_run(dir.path(), &["sweep", "tiny.toml", "--devices", "cpu,cpu"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let sweep_dir = dir.path().join("runs/tiny-sweep");
    assert!(sweep_dir.join("pruner.json").is_file());
    assert!(
        all.contains("trial-003 on cpu: pruned after 2 of 4 steps: knn_top1 0.0000 worse than the median 1.0000"),
        "{all}"
    );
    assert_eq!(all.matches(" on cpu: knn_top1 = 1.0000").count(), 2, "{all}");
    let log = std::fs::read_to_string(sweep_dir.join("trial-003/train.log")).unwrap();
    assert!(
        log.contains("pruned at step 2 of 4") && log.contains("byol-run train runs/tiny-sweep/trial-003/config.toml"),
        "{log}"
    );
    let markdown = std::fs::read_to_string(sweep_dir.join("summary.md")).unwrap();
    assert!(markdown.contains("2 of 3 trials done, 1 pruned"), "{markdown}");
}
