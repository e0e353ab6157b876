//! `byol-run compare RUN...`: two tiny runs with different settings in one table (and as JSON),
//! and a folder that is not a run named in the error.

use byol_testkit::fixtures::tiny_experiment;

use super::{byol_run, text};

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
    for (name, lr) in [("slow", "0.2"), ("fast", "0.8")] {
        let lr = format!("optimizer.lr={lr}");
        let name = format!("run.name=\"{name}\"");
        let out = byol_run(dir.path(), &["tiny.toml", "--quiet", "--set", &lr, "--set", &name]);
        assert!(out.status.success(), "{}", text(&out));
    }

    let out = byol_run(dir.path(), &["compare", "runs/slow", "runs/fast"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0],
        "| run | `optimizer.lr` | `run.name` | kNN before | kNN after | gain | probe | final loss | time (s) | status |",
        "only the differing keys: {all}"
    );
    assert!(lines[2].starts_with("| runs/slow | 0.2 | slow | "), "{all}");
    assert!(lines[3].starts_with("| runs/fast | 0.8 | fast | "), "{all}");
    for row in &lines[2..4] {
        let cells: Vec<&str> = row.split(" | ").collect();
        assert!(
            cells[3].ends_with('%') && cells[4].ends_with('%'),
            "kNN before and after: {row}"
        );
        assert!(row.ends_with("| done |"), "{row}");
    }

    let out = byol_run(dir.path(), &["compare", "runs/slow", "runs/fast", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["differing_keys"],
        serde_json::json!(["optimizer.lr", "run.name"])
    );
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["run"], "runs/slow");
    assert_eq!(runs[1]["config"]["optimizer.lr"], 0.8);
    for run in runs {
        let summary: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join(run["run"].as_str().unwrap()).join("summary.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(run["knn_after"], summary["knn_after"]["top1"], "{run}");
        assert_eq!(run["final_loss"], summary["final_loss"], "{run}");
        assert_eq!(run["status"], "done");
        assert!(run["probe_top1"].is_f64() && run["knn_gain"].is_f64(), "{run}");
    }

    // A folder without config.toml is named, with what a run folder is.
    std::fs::create_dir(dir.path().join("notes")).unwrap();
    let out = byol_run(dir.path(), &["compare", "runs/slow", "notes"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("error: notes is not a run folder: it has no config.toml"),
        "{all}"
    );
    let out = byol_run(dir.path(), &["compare", "runs/slow", "runs/missing"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("runs/missing is not a folder"), "{all}");
}
