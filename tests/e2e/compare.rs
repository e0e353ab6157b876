//! `byol-run compare RUN...`: two tiny runs with different settings in one table (and as JSON),
//! and a folder that is not a run named in the error.

use std::process::Stdio;
use std::time::{Duration, Instant};

use byol_testkit::fixtures::{tiny_experiment, with_table};

use super::{byol_run, byol_run_command, random_pngs, text};

/// One epoch of the tiny experiment on 128 images (4 steps), with kNN before and after.
fn tiny() -> String {
    tiny_experiment(&[
        ("dataset.train_size", "128"),
        ("dataset.test_size", "32"),
        ("schedule.epochs", "1"),
        ("schedule.warmup_epochs", "0"),
        ("eval.before_training", "true"),
    ])
}

#[test]
fn two_runs_show_the_keys_that_differ_and_their_final_metrics() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tiny.toml"), tiny()).unwrap();
    // View 1's flip written out as the cifar preset has it (0.5) is no difference; view 2's
    // solarization at 0.1 is one, shown against the preset's 0.2.
    for (name, lr, augment) in [
        ("slow", "0.2", "augment.view1.flip_p=0.5"),
        ("fast", "0.8", "augment.view2.solarize_p=0.1"),
    ] {
        let lr = format!("optimizer.lr={lr}");
        let name = format!("run.name=\"{name}\"");
        let sets = ["--set", &lr, "--set", &name, "--set", augment];
        let out = byol_run(dir.path(), &[&["tiny.toml", "--quiet"][..], &sets].concat());
        assert!(out.status.success(), "{}", text(&out));
    }

    let out = byol_run(dir.path(), &["compare", "runs/slow", "runs/fast"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0],
        "| run | `augment.view2.solarize_p` | `optimizer.lr` | `run.name` | kNN before | kNN after | kNN top-5 | gain | probe | final loss | time (s) | img/s | status |",
        "only the differing keys: {all}"
    );
    assert!(lines[2].starts_with("| runs/slow | 0.2 | 0.2 | slow | "), "{all}");
    assert!(lines[3].starts_with("| runs/fast | 0.1 | 0.8 | fast | "), "{all}");
    for row in &lines[2..4] {
        let cells: Vec<&str> = row.split(" | ").collect();
        assert!(
            cells[4].ends_with('%') && cells[5].ends_with('%'),
            "kNN before and after: {row}"
        );
        assert!(row.ends_with("| done |"), "{row}");
    }

    // A folder named twice is one run, shown once.
    let out = byol_run(
        dir.path(),
        &["compare", "runs/slow", "runs/fast", "runs/slow/", "--json"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("note: runs/slow/ is a folder named before: shown once"),
        "{}",
        text(&out)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["differing_keys"],
        serde_json::json!(["augment.view2.solarize_p", "optimizer.lr", "run.name"])
    );
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["run"], "runs/slow");
    assert_eq!(runs[1]["config"]["optimizer.lr"], 0.8);
    // An edited config.toml says nothing of what a run trained: its newest checkpoint does.
    let config = dir.path().join("runs/fast/config.toml");
    let edited = std::fs::read_to_string(&config)
        .unwrap()
        .replace("lr = 0.8", "lr = 5.0");
    assert!(edited.contains("lr = 5.0"));
    std::fs::write(&config, edited).unwrap();
    let out = byol_run(dir.path(), &["compare", "runs/slow", "runs/fast", "--json"]);
    let edited: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(edited["runs"][1]["config"]["optimizer.lr"], 0.8, "{}", text(&out));
    for run in runs {
        let summary: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join(run["run"].as_str().unwrap()).join("summary.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(run["knn_after"], summary["knn_after"]["top1"], "{run}");
        assert_eq!(run["final_loss"], summary["final_loss"], "{run}");
        assert_eq!(run["knn_top5"], summary["knn_after"]["top5"], "{run}");
        assert_eq!(run["images_per_second"], summary["images_per_second"], "{run}");
        assert_eq!(run["status"], "done");
        assert!(run["probe_top1"].is_f64() && run["knn_gain"].is_f64(), "{run}");
    }

    // `compare ... | head`: a reader that goes away ends it quietly, table or JSON.
    for form in [None, Some("--json")] {
        let mut child = byol_run_command(dir.path())
            .args(["compare", "runs/slow", "runs/fast"])
            .args(form)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{form:?}: {}", text(&out));
        assert!(out.stderr.is_empty(), "{form:?}: {}", text(&out));
    }

    // A folder without config.toml is named, with what a run folder is.
    std::fs::create_dir(dir.path().join("notes")).unwrap();
    let out = byol_run(dir.path(), &["compare", "runs/slow", "notes"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("error: notes is not a run folder: it has no config.toml and no checkpoint"),
        "{all}"
    );
    // A checkpoint (which export, embed and eval take) is named as one, with its run.
    let out = byol_run(dir.path(), &["compare", "runs/slow/checkpoints/last"]);
    assert!(
        out.status.code() == Some(1)
            && text(&out)
                .contains("runs/slow/checkpoints/last is a checkpoint, not a run folder: compare its run, runs/slow"),
        "{}",
        text(&out)
    );
    // A run folder that lost its config.toml is compared from its checkpoint, as a resume
    // reads it.
    let copy = dir.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    std::process::Command::new("cp")
        .args(["-a", "runs/fast/.", "copy/"])
        .current_dir(dir.path())
        .status()
        .unwrap();
    std::fs::remove_file(copy.join("config.toml")).unwrap();
    let out = byol_run(dir.path(), &["compare", "runs/fast", "copy"]);
    assert!(
        out.status.success() && text(&out).contains("The runs have the same settings."),
        "{}",
        text(&out)
    );
    // A sweep's trial that has not started (`compare runs/x-sweep/trial-*` of a stopped sweep)
    // is left out with a note.
    std::fs::create_dir(dir.path().join("trial-003")).unwrap();
    std::fs::write(dir.path().join("trial-003/sweep-trial.toml"), "[parameters]\n").unwrap();
    let out = byol_run(dir.path(), &["compare", "runs/slow", "trial-003"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("note: trial-003 not started yet (a sweep's pending trial): left out"),
        "{all}"
    );
    assert!(all.contains("| runs/slow |") && !all.contains("| trial-003 |"), "{all}");
    let out = byol_run(dir.path(), &["compare", "trial-003"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("none of the folders holds a run yet"),
        "{}",
        text(&out)
    );
    let out = byol_run(dir.path(), &["compare", "runs/slow", "runs/missing"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("runs/missing is not a folder"), "{all}");
    // Someone's config.toml is no run's; a run whose summary cannot be read is shown without
    // figures, the others with theirs.
    std::fs::write(dir.path().join("notes/config.toml"), "title = \"my blog\"\n").unwrap();
    let out = byol_run(dir.path(), &["compare", "runs/slow", "notes"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("its config.toml is not beside any record a run writes"),
        "{all}"
    );
    std::fs::write(dir.path().join("runs/fast/summary.json"), "{}").unwrap();
    let out = byol_run(dir.path(), &["compare", "runs/slow", "runs/fast", "--json"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("warning: cannot parse runs/fast/summary.json"), "{all}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = report["runs"].as_array().unwrap();
    assert!(runs[0]["knn_after"].is_f64() && runs[1]["knn_after"].is_null(), "{all}");
    assert_eq!(runs[1]["status"], "unfinished", "{all}");
}

/// Runs of the same settings on other data (images added to the folder between them) show the
/// data as a differing key, `data.<split>`; a run stopped by a signal shows no results, only
/// that it is unfinished.
#[test]
fn other_data_is_a_difference_and_an_interrupted_run_has_no_results() {
    let dir = tempfile::tempdir().unwrap();
    let folders = "type = \"image_folder\"\ntrain = \"data/train\"\ntest = \"data/test\"\nimage_size = 16\n";
    let experiment = with_table(
        &tiny_experiment(&[
            ("schedule.epochs", "1"),
            ("schedule.batch_size", "8"),
            ("schedule.warmup_epochs", "0"),
        ]),
        "dataset",
        folders,
    );
    std::fs::write(dir.path().join("tiny.toml"), experiment).unwrap();
    random_pngs(&dir.path().join("data/train"), &["a", "b"], 8);
    random_pngs(&dir.path().join("data/test"), &["a", "b"], 2);
    let train = |run: &str| {
        let out = byol_run(dir.path(), &["tiny.toml", "--quiet", "--run-dir", run]);
        assert!(out.status.success(), "{}", text(&out));
    };
    train("runs/before");
    random_pngs(&dir.path().join("data/train"), &["a", "b"], 12);
    train("runs/after");
    let out = byol_run(dir.path(), &["compare", "runs/before", "runs/after", "--json"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The kNN bank is the training split; the test split did not change.
    assert_eq!(
        report["differing_keys"],
        serde_json::json!(["data.knn_bank", "data.train"]),
        "{all}"
    );
    let data = |i: usize| report["runs"][i]["config"]["data.train"].as_str().unwrap().to_string();
    assert!(data(0).starts_with("16 images of classes [a, b] (files "), "{all}");
    assert!(data(1).starts_with("24 images of classes [a, b] (files "), "{all}");

    // Copies of `before`: one whose record has no file digests (as runs recorded before digests
    // existed), one with no record at all. Neither shows as other data.
    for (copy, record) in [("runs/undigested", true), ("runs/unrecorded", false)] {
        let copy = dir.path().join(copy);
        std::fs::create_dir_all(&copy).unwrap();
        for file in ["config.toml", "summary.json"] {
            std::fs::copy(dir.path().join("runs/before").join(file), copy.join(file)).unwrap();
        }
        if record {
            let text = std::fs::read_to_string(dir.path().join("runs/before/dataset.json")).unwrap();
            let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
            for split in json.as_object_mut().unwrap().values_mut() {
                split.as_object_mut().unwrap().remove("files_digest").unwrap();
            }
            std::fs::write(copy.join("dataset.json"), json.to_string()).unwrap();
        }
    }
    for (copy, note) in [("runs/undigested", false), ("runs/unrecorded", true)] {
        let out = byol_run(dir.path(), &["compare", "runs/before", copy]);
        let all = text(&out);
        assert!(out.status.success(), "{all}");
        assert!(all.contains("The runs have the same settings."), "{all}");
        assert_eq!(all.contains("record no data"), note, "{all}");
    }

    // Stopped by SIGTERM after its first checkpoint: its summary.json holds a loss and a time so
    // far, which are not results.
    let long = dir.path().join("long.toml");
    std::fs::write(&long, tiny_experiment(&[("schedule.epochs", "40")])).unwrap();
    let child = byol_run_command(dir.path())
        .args(["long.toml", "--quiet", "--run-dir", "runs/stopped"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while std::fs::read_dir(dir.path().join("runs/stopped/checkpoints")).map_or(true, |mut e| e.next().is_none()) {
        assert!(started.elapsed() < Duration::from_secs(120), "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let stopped = child.wait_with_output().unwrap();
    assert_eq!(stopped.status.code(), Some(143), "{}", text(&stopped));
    let summary = std::fs::read_to_string(dir.path().join("runs/stopped/summary.json")).unwrap();
    assert!(summary.contains("\"interrupted\": true"), "{summary}");
    let out = byol_run(dir.path(), &["compare", "runs/before", "runs/stopped"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let row = all.lines().find(|l| l.starts_with("| runs/stopped |")).unwrap();
    assert!(row.ends_with("| - | - | - | - | - | - | unfinished |"), "{all}");
}

/// A run continued with changes (`--allow-change`) records each resume's changes and its step:
/// its summary says them, and `compare` marks its row, whose settings are those of its last
/// steps only. A resume back to the values the checkpoint has records nothing.
#[test]
fn a_run_continued_with_changes_says_so_in_its_summary_and_in_compare() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tiny.toml"), tiny()).unwrap();
    let train = |sets: &[&str]| {
        let out = byol_run(dir.path(), &[&["tiny.toml", "--run-dir", "runs/r"][..], sets].concat());
        assert!(out.status.success(), "{}", text(&out));
        text(&out)
    };
    train(&[]);
    let first = ["--set", "optimizer.lr=0.1", "--set", "schedule.epochs=2"];
    let allow = ["--allow-change", "optimizer.lr", "--allow-change", "schedule.epochs"];
    let all = train(&[&first[..], &allow].concat());
    let said = "changed          from step 4: optimizer.lr: 0.5 -> 0.1, schedule.epochs: 1 -> 2 (--allow-change; \
                the steps before trained with the values before)";
    assert!(all.contains(said), "{all}");
    // Back to lr 0.5 for a third epoch: a change again, recorded after the first.
    let second = ["--set", "optimizer.lr=0.5", "--set", "schedule.epochs=3"];
    train(&[&second[..], &allow].concat());
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("runs/r/summary.json")).unwrap()).unwrap();
    assert_eq!(
        summary["changes_allowed"],
        serde_json::json!([
            {"step": 4, "changes": ["optimizer.lr: 0.5 -> 0.1", "schedule.epochs: 1 -> 2"]},
            {"step": 8, "changes": ["optimizer.lr: 0.1 -> 0.5", "schedule.epochs: 2 -> 3"]},
        ]),
        "{summary}"
    );
    // A run trained throughout with one experiment has none.
    let out = byol_run(dir.path(), &["tiny.toml", "--run-dir", "runs/plain", "--quiet"]);
    assert!(out.status.success(), "{}", text(&out));
    let plain = std::fs::read_to_string(dir.path().join("runs/plain/summary.json")).unwrap();
    assert!(!plain.contains("changes_allowed"), "{plain}");

    let out = byol_run(dir.path(), &["compare", "runs/plain", "runs/r"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("\n| runs/r * | ") && all.contains("\n| runs/plain | "),
        "{all}"
    );
    assert!(
        all.contains(
            "* runs/r was continued with changes (--allow-change) from step 4: optimizer.lr: 0.5 -> 0.1, \
             schedule.epochs: 1 -> 2; from step 8: optimizer.lr: 0.1 -> 0.5, schedule.epochs: 2 -> 3; the steps \
             before each trained with the values before it"
        ),
        "{all}"
    );
    let out = byol_run(dir.path(), &["compare", "runs/plain", "runs/r", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["runs"][0]["changes_allowed"], serde_json::json!([]));
    assert_eq!(json["runs"][1]["changes_allowed"], summary["changes_allowed"]);
}
