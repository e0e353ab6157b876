//! The run folder's integrity and identity on the real binary: damaged checkpoints are moved
//! aside and never cost a good one, one process owns a folder at a time, a changed experiment
//! does not resume silently, and write errors end the run cleanly.

use std::path::{Path, PathBuf};

use super::TINY;
use super::{byol_run, byol_run_command, text};

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tiny.toml"), TINY).unwrap();
    dir
}

fn run(dir: &Path, run_dir: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["tiny.toml", "--run-dir", run_dir];
    args.extend_from_slice(extra);
    byol_run(dir, &args)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn step_folders(run_dir: &Path) -> Vec<String> {
    names(&run_dir.join("checkpoints"))
        .into_iter()
        .filter(|n| n.starts_with("step-"))
        .collect()
}

/// Flips one byte in the middle of a checkpoint's weights (the SHA-256 no longer matches).
fn flip_a_byte(checkpoint: &Path) {
    let file = checkpoint.join("model.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();
}

fn last_target(run_dir: &Path) -> Option<PathBuf> {
    std::fs::read_link(run_dir.join("checkpoints/last")).ok()
}

fn finished_run(dir: &Path, run_dir: &str) -> PathBuf {
    let out = run(dir, run_dir, &["--quiet"]);
    assert!(out.status.success(), "{}", text(&out));
    dir.join(run_dir)
}

/// A run continued at another batch size counts the images each start trained at its own batch
/// size: images per second times the training time are the images trained.
#[test]
fn images_per_second_count_each_starts_own_batch_size() {
    let dir = setup();
    let run_dir = finished_run(dir.path(), "r");
    let larger = [
        "--set",
        "schedule.batch_size=64",
        "--set",
        "schedule.epochs=8",
        "--allow-change",
        "schedule.batch_size",
        "--allow-change",
        "schedule.epochs",
        "--quiet",
    ];
    // `validate` says what the start records, as the start then does.
    let validate = [&["validate", "tiny.toml", "--run-dir", "r"][..], &larger[..8]].concat();
    let all = text(&byol_run(dir.path(), &validate));
    assert!(
        all.contains("a start goes on from its checkpoint of step 48 and trains to step 64; it records the changes \
             allowed (schedule.batch_size: 32 -> 64, schedule.epochs: 3 -> 8) at step 48 in its checkpoints and summary"),
        "{all}"
    );
    let out = run(dir.path(), "r", &larger);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("note: continuing r with changes (--allow-change): schedule.batch_size: 32 -> 64"),
        "{all}"
    );
    let summary = summary(&run_dir);
    let value = |key: &str| summary[key].as_f64().unwrap();
    // 48 steps of 32 images, then 16 of 64 (8 epochs of 8 steps).
    let images = value("images_per_second") * value("train_seconds");
    assert!((images - 2560.0).abs() < 1e-6 * 2560.0, "{images} images: {summary}");
}

/// `validate` tells a finished run (a start reports it) from one whose checkpoint is its last step
/// with no summary of it (a start evaluates it and writes the summary), as the start then does.
#[test]
fn validate_tells_a_finished_run_from_one_stopped_at_its_last_step() {
    let dir = setup();
    let run_dir = finished_run(dir.path(), "r");
    // The run folder given as the experiment file: its config.toml is named.
    let out = byol_run(dir.path(), &["validate", "r"]);
    assert!(
        text(&out).contains("experiment file r is a folder: it is a run folder: its experiment is r/config.toml"),
        "{}",
        text(&out)
    );
    let validate = ["validate", "tiny.toml", "--run-dir", "r"];
    let out = byol_run(dir.path(), &validate);
    let all = text(&out);
    assert!(
        out.status.success() && all.contains("finished at step 48: a start reports it"),
        "{all}"
    );
    let other_lr = ["--set", "optimizer.lr=0.1", "--allow-change", "optimizer.lr"];
    let out = byol_run(dir.path(), &[&validate[..], &other_lr[..]].concat());
    let all = text(&out);
    assert!(
        out.status.success()
            && all.contains("trains nothing; the changes allowed (optimizer.lr: 0.5 -> 0.1) would not be recorded"),
        "{all}"
    );
    std::fs::remove_file(run_dir.join("summary.json")).unwrap();
    let out = byol_run(dir.path(), &validate);
    let all = text(&out);
    assert!(
        out.status.success()
            && all.contains("whose checkpoint of step 48 is its last: a start trains nothing more, evaluates it"),
        "{all}"
    );
    // Started with changes allowed, it evaluates with those of the evaluation and records them;
    // the others train nothing and are not recorded.
    let changed = [
        "--set",
        "optimizer.lr=0.1",
        "--set",
        "eval.knn_k=3",
        "--allow-change",
        "optimizer.lr",
        "--allow-change",
        "eval.knn_k",
    ];
    let all = text(&byol_run(dir.path(), &[&validate[..], &changed].concat()));
    assert!(
        all.contains(
            "evaluates it and writes its summary; it records the changes allowed (eval.knn_k: 5 -> 3) at step 48 in \
             its checkpoints and summary (`byol-run compare` marks the run as changed); the changes allowed (optimizer.lr: 0.5 -> 0.1) \
             would train nothing and not be recorded"
        ),
        "{all}"
    );
    let out = run(dir.path(), "r", &changed);
    let all = text(&out);
    assert!(out.status.success() && run_dir.join("summary.json").exists(), "{all}");
    assert!(
        all.contains("note: continuing r with changes (--allow-change): eval.knn_k: 5 -> 3")
            && all.contains(
                "note: r is at its last step and only evaluates it: the changes allowed (optimizer.lr: 0.5 -> 0.1) \
                 train nothing and are not recorded"
            ),
        "{all}"
    );
    assert_eq!(
        summary(&run_dir)["changes_allowed"],
        serde_json::json!([{"step": 48, "changes": ["eval.knn_k: 5 -> 3"]}])
    );
    let out = byol_run(dir.path(), &[&validate[..], &changed].concat());
    assert!(text(&out).contains("finished at step 48"), "{}", text(&out));
}

#[test]
fn a_damaged_newest_checkpoint_is_moved_aside_and_pruning_keeps_the_good_ones() {
    let dir = setup();
    let run_dir = finished_run(dir.path(), "r");
    assert_eq!(
        step_folders(&run_dir),
        ["step-000000040", "step-000000044", "step-000000048"]
    );
    flip_a_byte(&run_dir.join("checkpoints/step-000000048"));
    // keep_last = 1: before, the damaged folder sorted newest and pruning deleted each new save.
    let out = run(dir.path(), "r", &["--set", "checkpoint.keep_last=1"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("skipping damaged checkpoint") && all.contains("moved to"),
        "{all}"
    );
    assert!(all.contains("from step 44"), "{all}");
    assert_eq!(step_folders(&run_dir), ["step-000000048"], "{all}");
    assert_eq!(names(&run_dir.join("checkpoints/damaged")), ["step-000000048"]);
    assert_eq!(last_target(&run_dir), Some(PathBuf::from("step-000000048")));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("checkpoints/last/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["step"], 48);
    // The moved-aside copy is still the damaged one, and it stays out of the way.
    let again = run(dir.path(), "r", &["--quiet"]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(!text(&again).contains("damaged"), "{}", text(&again));
}

#[test]
fn when_every_checkpoint_is_damaged_the_run_stops_instead_of_starting_over() {
    let dir = setup();
    let run_dir = finished_run(dir.path(), "r");
    for name in step_folders(&run_dir) {
        flip_a_byte(&run_dir.join("checkpoints").join(name));
    }
    let out = run(dir.path(), "r", &[]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(!all.contains("panicked") && !all.contains("training tiny"), "{all}");
    assert!(all.contains("no intact checkpoint"), "{all}");
    for step in ["step-000000040", "step-000000044", "step-000000048"] {
        assert!(all.contains(step), "lists {step}: {all}");
    }
    assert!(all.contains("--fresh"), "{all}");
    assert!(step_folders(&run_dir).is_empty());
    assert_eq!(names(&run_dir.join("checkpoints/damaged")).len(), 3);
    assert_eq!(last_target(&run_dir), None, "`last` names no missing checkpoint");
    // A second attempt still refuses (the damaged ones are remembered), and trains nothing.
    let out = run(dir.path(), "r", &[]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("moved aside earlier"), "{all}");
}

fn spawn(dir: &Path, run_dir: &str, extra: &[&str]) -> std::process::Child {
    byol_run_command(dir)
        .args(["tiny.toml", "--run-dir", run_dir])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn kill(signal: &str, child: &std::process::Child) {
    std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
}

#[test]
fn a_second_process_on_the_same_run_folder_is_refused_naming_the_first() {
    let dir = setup();
    let long = ["--set", "schedule.epochs=40"];
    let run_dir = dir.path().join("r");
    let mut first = spawn(dir.path(), "r", &long);
    wait_for("the first checkpoint", || !step_folders(&run_dir).is_empty());
    let second = run(dir.path(), "r", &long);
    let all = text(&second);
    assert_eq!(second.status.code(), Some(1), "{all}");
    assert!(all.contains("is in use by another byol-run"), "{all}");
    assert!(
        all.contains(&format!("process {}", first.id())),
        "names the holder: {all}"
    );
    assert!(!all.contains("resuming"), "{all}");

    // kill -9: the kernel drops the lock; a write left half done is cleaned up by the next owner.
    kill("-9", &first);
    first.wait().unwrap();
    let stale = run_dir.join("checkpoints/.step-000000999.tmp-4194999");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("model.safetensors"), "half").unwrap();
    let third = spawn(dir.path(), "r", &long);
    wait_for("the stale write to be removed", || !stale.exists());
    kill("-TERM", &third);
    let out = third.wait_with_output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(143), "saved and stopped: {all}");
    assert!(
        all.contains("resuming") && all.contains(".step-000000999.tmp-4194999"),
        "{all}"
    );
}

fn config_value(run_dir: &Path, table: &str, key: &str) -> toml::Value {
    let config: toml::Table = toml::from_str(&std::fs::read_to_string(run_dir.join("config.toml")).unwrap()).unwrap();
    config[table][key].clone()
}

#[test]
fn a_changed_experiment_is_refused_with_a_diff_unless_allowed_or_fresh() {
    let dir = setup();
    let run_dir = finished_run(dir.path(), "r");
    let changed = ["--set", "optimizer.lr=0.1", "--set", "schedule.epochs=4"];
    let out = run(dir.path(), "r", &changed);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("optimizer.lr: 0.5 -> 0.1") && all.contains("schedule.epochs: 3 -> 4"),
        "{all}"
    );
    assert!(
        all.contains("--allow-change optimizer.lr --allow-change schedule.epochs"),
        "{all}"
    );
    assert!(all.contains("--fresh") && all.contains("logging.*"), "{all}");
    assert!(!all.contains("resuming r from"), "{all}");
    assert_eq!(
        config_value(&run_dir, "optimizer", "lr").as_float(),
        Some(0.5),
        "config.toml untouched"
    );

    // A misspelled --allow-change allows nothing, and says so; a table's name is a key.
    let out = run(
        dir.path(),
        "r",
        &["--allow-change", "optimizer.lrr", "--allow-change", "logging"],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("warning: --allow-change optimizer.lrr names no key")
            && !all.contains("--allow-change logging names"),
        "{all}"
    );

    // Keys that do not alter the run need nothing...
    let out = run(
        dir.path(),
        "r",
        &["--set", "logging.every_steps=8", "--set", "eval.batch_size=32"],
    );
    assert!(out.status.success(), "{}", text(&out));
    // ... but the kNN monitor's k does: a run's before and after are measured alike.
    let out = run(dir.path(), "r", &["--set", "eval.knn_k=3"]);
    let all = text(&out);
    assert!(!out.status.success() && all.contains("eval.knn_k: "), "{all}");

    // Shorter than what it has trained: refused even when allowed, and nothing is rewritten.
    let manifest = run_dir.join("checkpoints/last/manifest.json");
    let (manifest_before, summary_before) = (
        std::fs::read(&manifest).unwrap(),
        std::fs::read(run_dir.join("summary.json")).unwrap(),
    );
    let shorter = ["--set", "schedule.epochs=2", "--allow-change", "schedule.epochs"];
    let out = run(dir.path(), "r", &shorter);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("has trained 48 steps, more than the 32 of this experiment")
            && all.contains("Set schedule.epochs to 3 or more")
            && !all.contains("note: continuing"),
        "{all}"
    );
    assert_eq!(std::fs::read(&manifest).unwrap(), manifest_before);
    assert_eq!(std::fs::read(run_dir.join("summary.json")).unwrap(), summary_before);
    assert_eq!(config_value(&run_dir, "schedule", "epochs").as_integer(), Some(3));
    // Not allowed, the refusal of the changed key says so, and advises no --allow-change that
    // would be refused next; validate says the same beforehand.
    let refusal =
        "allowing the changes (--allow-change) does not continue it: r has trained 48 steps, more than the 32";
    let out = run(dir.path(), "r", &shorter[..2]);
    let all = text(&out);
    assert!(
        out.status.code() == Some(1)
            && all.contains("schedule.epochs: 3 -> 2")
            && all.contains(refusal)
            && !all.contains("--allow-change schedule.epochs"),
        "{all}"
    );
    let out = byol_run(dir.path(), &["validate", "r/config.toml", "--set", "schedule.epochs=2"]);
    let all = text(&out);
    assert!(
        out.status.success()
            && all.contains("a start as it is would be refused: r holds a run of another experiment")
            && all.contains(refusal)
            && all.contains("Set schedule.epochs to 3 or more")
            && !all.contains("--allow-change schedule.epochs"),
        "{all}"
    );
    // A larger batch shortens the epochs: the refusal names every flag that continues the run,
    // and with them a start would go on.
    let larger = ["validate", "r/config.toml", "--set", "schedule.batch_size=128"];
    let out = byol_run(dir.path(), &larger);
    let all = text(&out);
    let flags = "--set schedule.epochs=12 --allow-change schedule.batch_size --allow-change schedule.epochs";
    assert!(
        out.status.success()
            && all.contains("does not continue it: r has trained 48 steps, more than the 12 of this experiment")
            && all.contains(flags),
        "{all}"
    );
    let out = byol_run(
        dir.path(),
        &[&larger[..], &flags.split(' ').collect::<Vec<_>>()].concat(),
    );
    let all = text(&out);
    assert!(
        out.status.success() && !all.contains("refused") && all.contains("finished at step 48"),
        "{all}"
    );
    // Fewer images: the data's own allowance among them.
    let fewer = ["validate", "r/config.toml", "--set", "dataset.train_size=128"];
    let out = byol_run(dir.path(), &fewer);
    let all = text(&out);
    let flags = "--set schedule.epochs=12 --allow-change dataset --allow-change schedule.epochs";
    assert!(out.status.success() && all.contains(flags), "{all}");
    let out = byol_run(
        dir.path(),
        &[&fewer[..], &flags.split(' ').collect::<Vec<_>>()].concat(),
    );
    let all = text(&out);
    assert!(out.status.success() && !all.contains("refused"), "{all}");

    let mut allowed = changed.to_vec();
    allowed.extend(["--allow-change", "optimizer.lr", "--allow-change", "schedule.epochs"]);
    let out = run(dir.path(), "r", &allowed);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("from step 48 of 64") && all.contains("--allow-change"),
        "{all}"
    );
    assert_eq!(config_value(&run_dir, "optimizer", "lr").as_float(), Some(0.1));

    let out = run(dir.path(), "r", &["--fresh", "--set", "optimizer.lr=0.2"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        !all.contains("resuming") && all.contains("moved the previous run folder aside"),
        "{all}"
    );
    let old: Vec<String> = names(dir.path())
        .into_iter()
        .filter(|n| n.starts_with("r.old-"))
        .collect();
    assert_eq!(old.len(), 1, "{old:?}");
    assert_eq!(
        step_folders(&dir.path().join(&old[0])).len(),
        3,
        "the old run is kept whole"
    );
    assert_eq!(config_value(&run_dir, "optimizer", "lr").as_float(), Some(0.2));
}

#[test]
fn a_sweep_rerun_with_other_overrides_does_not_reuse_finished_trials() {
    let dir = setup();
    let sweep = format!("{TINY}\n[sweep]\nmetric = \"final_loss\"\n[sweep.parameters]\n\"byol.tau_base\" = [0.99]\n");
    std::fs::write(dir.path().join("s.toml"), sweep).unwrap();
    let first = byol_run(
        dir.path(),
        &["sweep", "s.toml", "--quiet", "--set", "schedule.epochs=1"],
    );
    assert!(first.status.success(), "{}", text(&first));
    let again = byol_run(
        dir.path(),
        &["sweep", "s.toml", "--quiet", "--set", "schedule.epochs=2"],
    );
    let all = text(&again);
    assert_eq!(again.status.code(), Some(1), "{all}");
    assert!(
        all.contains("trial-001") && all.contains("schedule.epochs: 1 -> 2"),
        "{all}"
    );
    assert!(!all.contains("skipped"), "{all}");
    let fresh = byol_run(
        dir.path(),
        &["sweep", "s.toml", "--quiet", "--fresh", "--set", "schedule.epochs=2"],
    );
    let all = text(&fresh);
    assert!(fresh.status.success(), "{all}");
    assert!(
        !all.contains("skipped") && all.contains("moved the previous sweep folder aside"),
        "{all}"
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("runs/s-sweep/trial-001/summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["steps"], 32, "two epochs: {summary}");
}

/// `byol-run tiny.toml --run-dir <run_dir> ...` where no file may grow beyond `blocks` blocks of
/// 512 bytes: a write past that fails with EFBIG, as one on a full disk fails with ENOSPC
/// (SIGXFSZ, which would kill the process instead, is ignored). No root or tmpfs needed.
fn run_with_file_size_limit(dir: &Path, run_dir: &str, blocks: u32, extra: &[&str]) -> std::process::Output {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("trap '' XFSZ; ulimit -f {blocks}; exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_byol-run"))
        .args(["tiny.toml", "--run-dir", run_dir])
        .args(extra)
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn a_failed_checkpoint_write_ends_the_run_cleanly_and_the_previous_one_resumes() {
    let dir = setup();
    let run_dir = dir.path().join("r");
    let mut first = spawn(dir.path(), "r", &[]);
    wait_for("the first checkpoint", || !step_folders(&run_dir).is_empty());
    kill("-TERM", &first);
    assert_eq!(first.wait().unwrap().code(), Some(143), "saved and stopped");
    let kept = step_folders(&run_dir).pop().unwrap();

    // Checkpoint files (about 200 KB) no longer fit; the lock, config and logs do.
    let out = run_with_file_size_limit(dir.path(), "r", 100, &[]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(!all.contains("panicked") && !all.contains("abort"), "{all}");
    let error = String::from_utf8_lossy(&out.stderr);
    let error = error
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("{all}"));
    assert!(error.contains("cannot save the checkpoint of step"), "{all}");
    assert!(
        error.contains("r/checkpoints/.step-") && error.contains("model.safetensors"),
        "names the file: {all}"
    );
    assert!(
        error.contains(&format!("the last good checkpoint is kept: r/checkpoints/{kept}"))
            && error.contains("free some space and run again to resume")
            && error.contains("a save needs room for one checkpoint more than the up to 3 kept (checkpoint.keep_last)"),
        "{all}"
    );
    assert_eq!(
        step_folders(&run_dir).last(),
        Some(&kept),
        "nothing half-written left: {all}"
    );
    assert!(
        !names(&run_dir.join("checkpoints")).iter().any(|n| n.contains(".tmp-")),
        "{all}"
    );

    // Space freed: the kept checkpoint resumes.
    let out = run(dir.path(), "r", &["--quiet"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert_eq!(
        step_folders(&run_dir).last().map(String::as_str),
        Some("step-000000048")
    );
}

#[test]
fn a_tensorboard_write_error_warns_and_never_panics() {
    let dir = setup();
    // 4 KB: the view grid (an image) already does not fit into the event file.
    let out = run_with_file_size_limit(dir.path(), "r", 8, &[]);
    let all = text(&out);
    assert!(
        all.contains("warning: TensorBoard logging stopped: cannot write r/tensorboard/events.out.tfevents."),
        "{all}"
    );
    // Then the first checkpoint fails too, with no earlier one to keep.
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("no checkpoint was saved in r/checkpoints yet"), "{all}");
    assert!(!all.contains("panicked") && !all.contains("abort"), "{all}");
    // Exporting it says why there is nothing to export.
    let out = byol_run(dir.path(), &["export", "r", "--out", "b.safetensors"]);
    let all = text(&out);
    assert!(
        all.contains("run folder r has no checkpoint yet")
            && all.contains("its run failed: ")
            && all.contains("no checkpoint was saved in r/checkpoints yet")
            && all.contains("(error.txt)"),
        "{all}"
    );
    // (A run that failed before it made its checkpoints folder: the same.)
    std::fs::remove_dir_all(dir.path().join("r/checkpoints")).unwrap();
    let out = byol_run(dir.path(), &["export", "r", "--out", "b.safetensors"]);
    let all = text(&out);
    assert!(
        all.contains("run folder r has no checkpoint: its run saved none; its run failed: "),
        "{all}"
    );
}

fn edit_manifest(checkpoint: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = checkpoint.join("manifest.json");
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut manifest);
    std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
}

#[test]
fn a_manifest_that_hashes_nothing_or_points_outside_is_damaged() {
    let dir = setup();
    let run_dir = finished_run(dir.path(), "r");
    let checkpoints = run_dir.join("checkpoints");
    edit_manifest(&checkpoints.join("step-000000048"), |m| {
        m["files"] = serde_json::json!({})
    });
    let outside = dir.path().join("outside.txt");
    std::fs::write(&outside, "not a checkpoint").unwrap();
    let digest = {
        use std::io::Write;
        let mut child = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"not a checkpoint").unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    // A correct hash of a file outside the checkpoint folder must not make it valid either.
    edit_manifest(&checkpoints.join("step-000000044"), |m| {
        m["files"]["../../../outside.txt"] = digest.into();
    });
    let out = byol_run(
        dir.path(),
        &["export", "r/checkpoints/step-000000048", "--out", "b.safetensors"],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("does not list model.safetensors"), "{all}");

    let out = run(dir.path(), "r", &[]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("does not list model.safetensors and optimizer.safetensors"),
        "{all}"
    );
    assert!(
        all.contains("'../../../outside.txt', which is not a plain file name"),
        "{all}"
    );
    assert!(all.contains("from step 40"), "{all}");
    assert_eq!(
        names(&checkpoints.join("damaged")),
        ["step-000000044", "step-000000048"]
    );
}

/// A signal that comes once the last step is saved, during the final kNN evaluation (of a large
/// test split here): the run finishes its evaluation and summary, as a finished run, and exits as
/// signalled, so that `byol-run train x.toml && next` stops there.
#[test]
fn a_signal_during_the_final_evaluation_finishes_the_run_and_exits_as_signalled() {
    let dir = setup();
    let d = dir.path();
    let child = spawn(
        d,
        "r",
        &[
            "--quiet",
            "--set",
            "schedule.epochs=1",
            "--set",
            "eval.curve_points=0",
            "--set",
            "dataset.test_size=60000",
        ],
    );
    let last = d.join("r/checkpoints/step-000000016/manifest.json");
    wait_for("the last checkpoint", || last.is_file());
    kill("-INT", &child);
    let out = child.wait_with_output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(130), "{all}");
    assert!(all.contains("finished: the signal came after the last step"), "{all}");
    let summary = summary(&d.join("r"));
    assert_eq!(summary["interrupted"], false, "{summary}");
    assert!(summary["knn_after"].is_object(), "{summary}");
}

/// The first SIGTERM waits for the next step, which can be far off (here a kNN evaluation of a
/// 100,000-image bank before training); it says so, and a second one ends the process at once
/// with the shell's code for SIGTERM (128 + 15).
#[test]
fn a_second_signal_quits_at_once_when_the_next_step_is_far_off() {
    let dir = setup();
    let run_dir = dir.path().join("r");
    let stderr = dir.path().join("stderr.txt");
    let mut child = byol_run_command(dir.path())
        .args(["tiny.toml", "--run-dir", "r", "--set", "dataset.train_size=100000"])
        .args(["--set", "eval.before_training=true"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    // dataset.json is written once the data is built, after the handlers are installed.
    wait_for("the data", || run_dir.join("dataset.json").is_file());
    kill("-TERM", &child);
    let said = || std::fs::read_to_string(&stderr).unwrap_or_default();
    wait_for("the first signal's message", || said().contains("signal again"));
    assert!(
        said().contains("stopping: the run finishes its step and saves a checkpoint"),
        "{}",
        said()
    );
    assert!(child.try_wait().unwrap().is_none(), "still evaluating: {}", said());

    kill("-TERM", &child);
    let second = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            second.elapsed().as_secs() < 20,
            "the second signal must end the run at once"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(128 + 15), "{}", said());
    assert!(!run_dir.join("summary.json").exists());
}

#[test]
fn a_key_added_since_a_run_was_saved_resumes_at_its_default_and_is_refused_at_another_value() {
    let dir = setup();
    let run_dir = finished_run(dir.path(), "r");
    // The record of a version without `run.tf32`, in config.toml and in every checkpoint.
    let without = |config: &str| {
        config
            .lines()
            .filter(|l| !l.starts_with("tf32 ="))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let config_file = run_dir.join("config.toml");
    let config = std::fs::read_to_string(&config_file).unwrap();
    assert!(config.contains("\ntf32 = true"), "{config}");
    std::fs::write(&config_file, without(&config)).unwrap();
    for step in step_folders(&run_dir) {
        edit_manifest(&run_dir.join("checkpoints").join(step), |m| {
            m["config"] = without(m["config"].as_str().unwrap()).into();
        });
    }
    let longer = ["--set", "schedule.epochs=4", "--allow-change", "schedule.epochs"];
    let out = run(dir.path(), "r", &[&longer[..], &["--set", "run.tf32=false"]].concat());
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("run.tf32: true -> false"), "{all}");
    let out = run(dir.path(), "r", &longer);
    let all = text(&out);
    assert!(out.status.success() && all.contains("from step 48 of 64"), "{all}");
    assert!(!all.contains("tf32"), "{all}");
}

/// An `[augment]` value written out as the preset has it draws the same views: no change to
/// allow (the preset itself changed too, where every value it decides is written out); a value
/// the views differ by is refused, and named alone.
#[test]
fn augment_values_spelled_out_as_the_preset_has_them_are_no_change() {
    let dir = setup();
    finished_run(dir.path(), "r");
    let longer = ["--set", "schedule.epochs=4", "--allow-change", "schedule.epochs"];
    let resume = |sets: &[&str]| {
        let sets: Vec<&str> = sets.iter().flat_map(|s| ["--set", *s]).collect();
        run(dir.path(), "r", &[&longer[..], &sets].concat())
    };
    // tiny.toml's preset is "cifar": view 2 solarizes at 0.2 and neither view blurs.
    let refused = resume(&["augment.view1.flip_p=0.5", "augment.view1.solarize_p=0.3"]);
    let all = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{all}");
    assert!(all.contains("augment.view1.solarize_p: (not set) -> 0.3"), "{all}");
    assert!(!all.contains("flip_p"), "{all}");
    // Under the imagenet preset, a blur written out as cifar's differs from imagenet's own.
    let refused = resume(&["augment.preset=\"imagenet\"", "augment.view1.blur_p=0.0"]);
    let all = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{all}");
    assert!(all.contains("augment.preset: \"cifar\" -> \"imagenet\""), "{all}");
    assert!(all.contains("augment.view1.blur_p: (not set) -> 0.0"), "{all}");
    let same = [
        "augment.preset=\"imagenet\"",
        "augment.view1.blur_p=0.0",
        "augment.view2.blur_p=0.0",
        "augment.eval_crop_fraction=1.0",
        "augment.mean=[0.4914, 0.4822, 0.4465]",
        "augment.std=[0.2470, 0.2435, 0.2616]",
        "augment.view2.solarize_p=0.2",
    ];
    let out = resume(&same);
    let all = text(&out);
    assert!(out.status.success() && all.contains("from step 48 of 64"), "{all}");
    assert!(!all.contains("augment"), "{all}");
}

fn summary(run_dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(run_dir.join("summary.json")).unwrap()).unwrap()
}

/// The steps at which `tag` was logged in `run_dir`'s TensorBoard folder, as TensorBoard's own
/// reader shows them.
fn tensorboard_steps(run_dir: &Path, tag: &str) -> Vec<i64> {
    let script = format!(
        "from tensorboard.backend.event_processing.event_accumulator import EventAccumulator\n\
         acc = EventAccumulator({:?})\n\
         acc.Reload()\n\
         outputs = {{'steps': torch.tensor([e.step for e in acc.Scalars({tag:?})], dtype=torch.int64)}}\n",
        run_dir.join("tensorboard").to_str().unwrap()
    );
    Vec::<i64>::try_from(&byol_testkit::run_python(&script, &[])["steps"]).unwrap()
}

#[test]
fn a_resumed_run_keeps_its_first_measures_and_tensorboard_shows_each_step_once() {
    let dir = setup();
    let before = ["--set", "eval.before_training=true"];
    let out = run(dir.path(), "r", &[&before[..], &["--quiet"]].concat());
    assert!(out.status.success(), "{}", text(&out));
    let run_dir = dir.path().join("r");
    let first = summary(&run_dir);
    assert!(first["knn_before"]["top1"].is_f64(), "{first}");
    // The newest checkpoint damaged: the run resumes from step 44 and trains 45..48 again, which
    // the first process logged too.
    flip_a_byte(&run_dir.join("checkpoints/step-000000048"));
    let out = run(dir.path(), "r", &[&before[..], &["--quiet"]].concat());
    assert!(out.status.success(), "{}", text(&out));
    let resumed = summary(&run_dir);
    assert_eq!(resumed["resumed_from_step"], 44, "{resumed}");
    assert_eq!(resumed["knn_before"], first["knn_before"], "measured at step 0, kept");
    assert!(resumed["final_loss"].is_f64(), "{resumed}");
    assert_eq!(
        tensorboard_steps(&run_dir, "train/loss"),
        (1..=12).map(|i| i * 4).collect::<Vec<_>>()
    );
    assert_eq!(tensorboard_steps(&run_dir, "knn/top1"), [0, 16, 32, 48]);

    // Every step trained: the run's summary and record stand, byte for byte, even when an
    // allowed change would have trained on with another experiment.
    let record = |name: &str| std::fs::read(run_dir.join(name)).unwrap();
    let (summary_bytes, config_bytes) = (record("summary.json"), record("config.toml"));
    let other_lr = ["--set", "optimizer.lr=0.1", "--allow-change", "optimizer.lr"];
    let out = run(dir.path(), "r", &[&before[..], &other_lr[..]].concat());
    let all = text(&out);
    assert!(
        out.status.success() && all.contains("has already trained all 48 steps"),
        "{all}"
    );
    assert!(
        all.contains("the changes allowed (optimizer.lr: 0.5 -> 0.1) train nothing and are not recorded")
            && !all.contains("with changes (--allow-change)"),
        "{all}"
    );
    assert_eq!(record("summary.json"), summary_bytes);
    assert_eq!(
        record("config.toml"),
        config_bytes,
        "config.toml describes the run that trained"
    );

    // Killed after its last checkpoint and its final evaluation, before its summary: started
    // again, the run trains nothing, reports the loss, the training time and the evaluation of
    // the steps before, and logs that evaluation (and the gain) once.
    let full = summary(&run_dir);
    std::fs::remove_file(run_dir.join("summary.json")).unwrap();
    let out = run(dir.path(), "r", &[&before[..], &["--quiet"]].concat());
    assert!(out.status.success(), "{}", text(&out));
    let again = summary(&run_dir);
    assert_eq!(again["final_loss"], full["final_loss"], "{again}");
    let seconds = |s: &serde_json::Value, key: &str| s[key].as_f64().unwrap();
    assert!(
        seconds(&again, "train_seconds") >= seconds(&full, "train_seconds"),
        "{again}\n{full}"
    );
    assert!(seconds(&again, "images_per_second") > 0.0, "{again}");
    assert_eq!(again["knn_after"], full["knn_after"], "{again}");
    assert_eq!(tensorboard_steps(&run_dir, "knn/top1"), [0, 16, 32, 48]);
    assert_eq!(tensorboard_steps(&run_dir, "knn/gain"), [48]);

    // Trained longer and stopped by kill -9: no summary of the shorter run is left to pass for
    // this one's.
    let longer = ["--set", "schedule.epochs=40", "--allow-change", "schedule.epochs"];
    let mut child = spawn(dir.path(), "r", &[&before[..], &longer[..]].concat());
    wait_for("a checkpoint past step 48", || {
        step_folders(&run_dir).iter().any(|s| s.as_str() > "step-000000048")
    });
    kill("-9", &child);
    child.wait().unwrap();
    assert!(!run_dir.join("summary.json").exists());
}

/// `byol-run sweep --fresh` moves the sweep folder aside only when none of its trials is in use
/// by a `byol-run train` of its own.
#[test]
fn fresh_refuses_to_move_a_sweep_folder_whose_trial_is_in_use() {
    let dir = setup();
    let sweep = format!("{TINY}\n[sweep]\nmethod = \"grid\"\n\n[sweep.parameters]\n\"optimizer.lr\" = [0.1]\n");
    std::fs::write(dir.path().join("sweep.toml"), sweep).unwrap();
    let fresh = [
        "sweep",
        "sweep.toml",
        "--set",
        "run.name=\"s\"",
        "--fresh",
        "--quiet",
        "--set",
        "schedule.epochs=1",
    ];
    let inner = dir.path().join("runs/s-sweep/trial-001");
    let mut child = spawn(dir.path(), inner.to_str().unwrap(), &["--set", "schedule.epochs=40"]);
    wait_for("the first checkpoint", || !step_folders(&inner).is_empty());
    let out = byol_run(dir.path(), &fresh);
    kill("-9", &child);
    child.wait().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("is in use by another byol-run") && all.contains("trial-001"),
        "{all}"
    );
    assert!(inner.join("checkpoints").is_dir(), "nothing moved");
    // Free again: --fresh moves the folder aside.
    let out = byol_run(dir.path(), &fresh);
    assert!(out.status.success(), "{}", text(&out));
    let moved: Vec<String> = names(&dir.path().join("runs"))
        .into_iter()
        .filter(|n| n.starts_with("s-sweep.old-"))
        .collect();
    assert_eq!(moved.len(), 1, "{:?}", names(&dir.path().join("runs")));
    assert!(dir
        .path()
        .join("runs")
        .join(&moved[0])
        .join("trial-001/checkpoints")
        .is_dir());
}

/// `--run-dir` at a folder that holds something else (data, a sweep's trials) is refused before
/// anything is written into it, `--fresh` included; an empty folder (hidden files and a mount
/// point's lost+found aside; a hidden folder is someone's), or one that a failed start left with only its lock, takes a run.
#[test]
fn a_run_folder_that_holds_other_files_or_a_sweep_is_refused_untouched() {
    let dir = setup();
    let d = dir.path();
    let data = d.join("data");
    std::fs::create_dir_all(data.join("train/cat")).unwrap();
    std::fs::write(data.join("labels.csv"), "x").unwrap();
    for extra in [&[][..], &["--fresh"][..]] {
        let out = run(d, "data", extra);
        let all = text(&out);
        assert!(!out.status.success(), "{all}");
        assert!(
            all.contains("holds labels.csv, train, not a run") && all.contains("Choose a new or empty folder"),
            "{all}"
        );
        assert_eq!(names(&data), ["labels.csv", "train"], "nothing written or moved");
    }

    // Files named like a run's records that are not a run's: someone's dataset.json, another
    // tool's checkpoints (alone, or beside their code). Neither written into nor moved aside.
    let foreign = [
        (
            "mydata",
            vec![("dataset.json", "{\"name\": \"my dataset\"}"), ("labels.csv", "a,b")],
        ),
        ("json-only", vec![("dataset.json", "{}")]),
        (
            "lightning",
            vec![("checkpoints/epoch=3.ckpt", "x"), ("train.py", "print(1)")],
        ),
        ("ckpt-only", vec![("checkpoints/epoch=3.ckpt", "x")]),
        // Another tool's logs and summary, named like a run's but with no record of a run: this
        // run's events would be mixed with theirs, their summary replaced.
        (
            "other-logs",
            vec![
                ("tensorboard/events.out.tfevents.1.host", "x"),
                ("summary.json", "{\"accuracy\": 0.9}"),
            ],
        ),
        ("other-sources", vec![("sources/train.py", "print(1)")]),
        ("named-like-ours", vec![("sources/backbone.py", "print(1)")]),
        // Named like a run's checkpoints, beside an experiment file: a checkpoint is a step
        // folder with its manifest.
        (
            "step-files",
            vec![("checkpoints/step-100.ckpt", "x"), ("config.toml", TINY)],
        ),
        (
            "step-folders",
            vec![("checkpoints/step-000000100/model.pt", "x"), ("config.toml", TINY)],
        ),
        (
            "step-manifest",
            vec![
                ("checkpoints/step-000000005/manifest.json", "{}"),
                ("config.toml", TINY),
            ],
        ),
    ];
    for (folder, files) in &foreign {
        for (file, contents) in files {
            let path = d.join(folder).join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, contents).unwrap();
        }
        for extra in [&[][..], &["--fresh"][..]] {
            let out = run(d, folder, extra);
            let all = text(&out);
            assert!(!out.status.success() && all.contains("not a run"), "{folder}: {all}");
            for (file, contents) in files {
                assert_eq!(std::fs::read_to_string(d.join(folder).join(file)).unwrap(), *contents);
            }
            assert!(!d.join(folder).join("run.lock").exists(), "{folder}: {all}");
            assert!(
                !names(d).iter().any(|n| n.starts_with(&format!("{folder}.old-"))),
                "{all}"
            );
        }
    }
    let out = run(d, "lightning", &[]);
    assert!(
        text(&out).contains("holds checkpoints/epoch=3.ckpt, train.py, not a run"),
        "{}",
        text(&out)
    );
    let out = run(d, "step-folders", &[]);
    assert!(
        text(&out).contains("holds checkpoints/step-000000100 (no manifest.json: not a byol-rs checkpoint)"),
        "{}",
        text(&out)
    );
    let out = run(d, "step-manifest", &[]);
    assert!(
        text(&out).contains("step-000000005 (its manifest.json is no checkpoint's: not a byol-rs checkpoint)"),
        "{}",
        text(&out)
    );
    let out = run(d, "other-logs", &[]);
    assert!(
        text(&out).contains("holds summary.json (with no dataset.json or checkpoint beside it: another tool's"),
        "{}",
        text(&out)
    );
    let out = run(d, "mydata", &[]);
    assert!(
        text(&out).contains("dataset.json (not a run's record: "),
        "{}",
        text(&out)
    );
    // A run's folder with files of the user's in its checkpoints/ is still the run's.
    let trained = finished_run(d, "trained");
    std::fs::write(trained.join("checkpoints/.DS_Store"), "x").unwrap();
    std::fs::write(trained.join("checkpoints/exported.safetensors"), "x").unwrap();
    std::fs::write(trained.join("checkpoints/step-100.ckpt"), "x").unwrap();
    // A step folder of another tool's, named like the newest checkpoint: never loaded, moved or
    // pruned.
    let stranger = trained.join("checkpoints/step-000000100");
    std::fs::create_dir_all(&stranger).unwrap();
    std::fs::write(stranger.join("model.pt"), "x").unwrap();
    let out = run(d, "trained", &["--quiet"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("step-000000100 holds no manifest.json, so it is no checkpoint of this run"),
        "{}",
        text(&out)
    );
    assert!(stranger.join("model.pt").is_file() && !trained.join("checkpoints/damaged").exists());
    // One named like a checkpoint the run goes on to save (then prune): moved out of its way,
    // with its files, never replaced.
    let in_the_way = trained.join("checkpoints/step-000000052");
    std::fs::create_dir_all(&in_the_way).unwrap();
    std::fs::write(in_the_way.join("notes.txt"), "mine").unwrap();
    let longer = [
        "--quiet",
        "--set",
        "schedule.epochs=4",
        "--allow-change",
        "schedule.epochs",
    ];
    let out = run(d, "trained", &longer);
    assert!(out.status.success(), "{}", text(&out));
    let moved = trained.join("checkpoints/not-checkpoints/step-000000052/notes.txt");
    assert_eq!(
        std::fs::read_to_string(&moved).ok().as_deref(),
        Some("mine"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("for the checkpoint of step 52 to take its name (its files are as they were)"),
        "{}",
        text(&out)
    );
    assert!(stranger.join("model.pt").is_file());

    let sweep = d.join("sweep");
    std::fs::create_dir_all(sweep.join("trial-001")).unwrap();
    std::fs::write(sweep.join("trial-001/sweep-trial.toml"), "").unwrap();
    std::fs::write(sweep.join("summary.md"), "").unwrap();
    let out = run(d, "sweep", &[]);
    assert!(text(&out).contains("is a sweep's folder"), "{}", text(&out));
    // The folder above a run: the run is named.
    finished_run(d, "runs/r");
    let out = run(d, "runs", &[]);
    assert!(
        text(&out)
            .contains("is a folder of runs, not a run: it holds the run folder runs/r (give that folder to resume it)"),
        "{}",
        text(&out)
    );

    std::fs::create_dir_all(d.join("empty/lost+found")).unwrap();
    std::fs::write(d.join("empty/.gitkeep"), "").unwrap();
    std::fs::create_dir_all(d.join("hidden/.git")).unwrap();
    std::fs::create_dir_all(d.join("failed-start")).unwrap();
    std::fs::write(d.join("failed-start/run.lock"), "123\n").unwrap();
    // A start stopped after copying its model's files, before its first record.
    std::fs::create_dir_all(d.join("failed-start/sources")).unwrap();
    std::fs::write(d.join("failed-start/sources/backbone.path-r50.pt"), "x").unwrap();
    std::fs::write(d.join("failed-start/sources/.DS_Store"), "x").unwrap();
    // A hidden folder is someone's (a repository, an environment).
    let out = run(d, "hidden", &[]);
    assert!(text(&out).contains("holds .git, not a run"), "{}", text(&out));
    // An experiment file named config.toml, alone or with notes, is not a run's record: it would
    // be overwritten by the run's.
    for (folder, extra) in [("experiment", None), ("notes", Some("notes.txt"))] {
        let folder = d.join(folder);
        std::fs::create_dir_all(&folder).unwrap();
        let experiment = format!("# my experiment\n{TINY}");
        std::fs::write(folder.join("config.toml"), &experiment).unwrap();
        if let Some(extra) = extra {
            std::fs::write(folder.join(extra), "x").unwrap();
        }
        let out = byol_run(
            d,
            &[
                folder.join("config.toml").to_str().unwrap(),
                "--run-dir",
                folder.to_str().unwrap(),
            ],
        );
        let all = text(&out);
        assert!(
            !out.status.success() && all.contains("config.toml") && all.contains("not a run"),
            "{all}"
        );
        assert_eq!(std::fs::read_to_string(folder.join("config.toml")).unwrap(), experiment);
    }
    for run_dir in ["empty", "failed-start"] {
        let out = run(d, run_dir, &["--quiet", "--set", "schedule.epochs=1"]);
        assert!(out.status.success(), "{run_dir}: {}", text(&out));
    }
    // A run folder given with a trailing slash is moved aside beside itself, not into itself.
    let out = run(d, "empty/", &["--quiet", "--fresh", "--set", "schedule.epochs=1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(names(d).iter().any(|n| n.starts_with("empty.old-")), "{:?}", names(d));
}

/// Training a run folder's own `config.toml` continues that run (a sweep's trial, a folder moved
/// since), not a new run from step 0 in the folder that its run.name names.
#[test]
fn training_a_run_folders_own_config_continues_that_run() {
    let dir = setup();
    let d = dir.path();
    let out = run(d, "first", &["--quiet", "--set", "schedule.epochs=1"]);
    assert!(out.status.success(), "{}", text(&out));
    std::fs::rename(d.join("first"), d.join("moved")).unwrap();
    let before = names(d);
    let out = byol_run(d, &["moved/config.toml"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("moved: continuing that run") && all.contains("has already trained all"),
        "{all}"
    );
    // The summary names where the run is now, not where it was trained.
    let folder_line = all.lines().find(|l| l.starts_with("run folder ")).unwrap_or_default();
    assert!(folder_line.ends_with("/moved"), "{all}");
    assert!(!all.contains(&d.join("first").display().to_string()), "{all}");
    assert_eq!(names(d), before, "no new run folder");
    // A run.name given on the command line is a variant: a new run in its own folder.
    let out = byol_run(d, &["moved/config.toml", "--quiet", "--set", "run.name=\"variant\""]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("continuing that run"), "{}", text(&out));
}

/// A start refused before it writes anything (here a batch larger than the data) takes away the
/// run folder it created, so no empty folder is left to look like a run; a folder that was
/// there before stays, and a refused `--fresh` start puts back the run it moved aside.
#[test]
fn a_refused_start_leaves_no_empty_run_folder_behind() {
    let dir = setup();
    let too_large = ["--set", "schedule.batch_size=4096"];
    let out = run(dir.path(), "r", &too_large);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("4096"), "{all}");
    assert!(!dir.path().join("r").exists(), "{:?}", names(dir.path()));

    std::fs::create_dir(dir.path().join("mine")).unwrap();
    let out = run(dir.path(), "mine", &too_large);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(dir.path().join("mine").is_dir(), "a folder that was there stays");

    let out = run(dir.path(), "done", &["--set", "schedule.epochs=1"]);
    assert!(out.status.success(), "{}", text(&out));
    let mut args = too_large.to_vec();
    args.extend(["--set", "schedule.epochs=1", "--fresh"]);
    let out = run(dir.path(), "done", &args);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let left = names(dir.path());
    assert!(
        left.contains(&"done".to_string()) && !left.iter().any(|n| n.starts_with("done.old-")),
        "a refused --fresh start puts the run it moved aside back: {left:?}"
    );
    assert!(dir.path().join("done/summary.json").is_file());
}

/// Starts a run in `run_dir` of many small steps, a checkpoint after each, its output piped.
fn long_run(dir: &Path, run_dir: &str) -> std::process::Child {
    byol_run_command(dir)
        .args(["tiny.toml", "--run-dir", run_dir, "--set", "schedule.epochs=400"])
        .args(["--set", "checkpoint.every_steps=1", "--set", "eval.curve_points=0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// A run folder moved while its run trains: the run stops at its next checkpoint, saying where
/// the folder went, instead of writing a new, unlocked folder at the old path (where a second
/// byol-run would then train beside it); the moved folder resumes there.
#[test]
fn a_run_folder_moved_while_it_trains_stops_the_run_instead_of_starting_a_folder_at_its_old_path() {
    let dir = setup();
    let (run_dir, moved) = (dir.path().join("r"), dir.path().join("moved"));
    let child = long_run(dir.path(), "r");
    wait_for("a checkpoint", || !step_folders(&run_dir).is_empty());
    std::fs::rename(&run_dir, &moved).unwrap();
    let out = child.wait_with_output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("was moved or replaced while this process trained in it")
            && all.contains(&format!("(it is now {})", moved.canonicalize().unwrap().display())),
        "{all}"
    );
    assert!(
        !run_dir.exists(),
        "nothing written at the old path: {:?}",
        names(&run_dir)
    );
    assert!(!step_folders(&moved).is_empty(), "{all}");

    // Its lock file removed (a clean-up): the run stops too, saying so.
    // (Waiting for a checkpoint newer than those there: keep_last prunes the folders' count.)
    let newest = |dir: &Path| step_folders(dir).into_iter().max();
    let child = long_run(dir.path(), "moved");
    let before = newest(&moved);
    wait_for("a checkpoint", || newest(&moved) > before);
    std::fs::remove_file(moved.join("run.lock")).unwrap();
    let out = child.wait_with_output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("lock file") && all.contains("was removed"), "{all}");

    // The whole folder removed: the run stops without promising a resume, and writes nothing.
    // (Removed while the run is stopped, so that no write of its races the removal.)
    let before = newest(&moved);
    let child = long_run(dir.path(), "moved");
    wait_for("a checkpoint", || newest(&moved) > before);
    let signal = |name: &str| {
        let sent = std::process::Command::new("kill")
            .args([name, &child.id().to_string()])
            .status();
        assert!(sent.unwrap().success());
    };
    signal("-STOP");
    std::fs::remove_dir_all(&moved).unwrap();
    signal("-CONT");
    let out = child.wait_with_output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("was removed (by a clean-up, an rm?): stopping; nothing of it is left there to resume")
            && !all.contains("Run again to resume"),
        "{all}"
    );
    assert!(!moved.exists(), "{all}");
}

/// A run folder whose checkpoints were removed, while its summary records steps trained, is not
/// trained again from step 0 into that run's records: refused, and `--fresh` starts anew.
#[test]
fn a_run_whose_checkpoints_were_removed_is_not_restarted_from_step_0_in_its_folder() {
    let dir = setup();
    let run_dir = finished_run(dir.path(), "r");
    std::fs::remove_dir_all(run_dir.join("checkpoints")).unwrap();
    let out = run(dir.path(), "r", &["--quiet"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("records a run trained to step 48 (its summary.json)")
            && all.contains("holds no checkpoint to resume it from")
            && all.contains("--fresh"),
        "{all}"
    );
    assert!(!run_dir.join("checkpoints").exists(), "{all}");
    let out = run(dir.path(), "r", &["--quiet", "--fresh"]);
    assert!(out.status.success(), "{}", text(&out));

    // An unfinished run (no summary yet) whose checkpoints were removed starts again from step 0,
    // as one stopped before its first checkpoint does; its kNN curve's steps are named first,
    // by validate and by the start.
    std::fs::remove_dir_all(run_dir.join("checkpoints")).unwrap();
    std::fs::remove_file(run_dir.join("summary.json")).unwrap();
    let said = "r/knn-curve.json records evaluations up to step 48, but r/checkpoints holds no checkpoint: \
                training starts again from step 0";
    let out = byol_run(dir.path(), &["validate", "tiny.toml", "--run-dir", "r"]);
    assert!(out.status.success() && text(&out).contains(said), "{}", text(&out));
    let out = run(dir.path(), "r", &[]);
    assert!(out.status.success() && text(&out).contains(said), "{}", text(&out));

    // A damaged kNN curve is refused before any step, from a checkpoint or from step 0 (where
    // the run's first evaluation, an epoch in, failed on it), and validate says so first.
    std::fs::remove_file(run_dir.join("summary.json")).unwrap();
    for checkpoints in [true, false] {
        if !checkpoints {
            std::fs::remove_dir_all(run_dir.join("checkpoints")).unwrap();
        }
        std::fs::write(run_dir.join("knn-curve.json"), "{broken").unwrap();
        let damaged = "r/knn-curve.json: invalid type: map, expected a sequence at line 1 column 0: the run \
                       folder's kNN curve cannot be used. Move it aside";
        let out = byol_run(dir.path(), &["validate", "tiny.toml", "--run-dir", "r"]);
        assert!(text(&out).contains(damaged), "{}", text(&out));
        let out = run(dir.path(), "r", &["--quiet"]);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{all}");
        assert!(all.contains(damaged), "{all}");
        assert_eq!(
            std::fs::read_to_string(run_dir.join("knn-curve.json")).unwrap(),
            "{broken"
        );
        assert_eq!(run_dir.join("checkpoints").exists(), checkpoints, "{all}");
    }
}

/// A run continued over another length (more epochs allowed, or other data) says that its
/// schedules stretch to the new length, and in which epoch its checkpoint's step now falls.
#[test]
fn a_run_continued_over_another_length_says_its_schedules_follow() {
    let dir = setup();
    finished_run(dir.path(), "r");
    let longer = [
        "--quiet",
        "--set",
        "schedule.epochs=4",
        "--allow-change",
        "schedule.epochs",
    ];
    let out = run(dir.path(), "r", &longer);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("goes on over 64 steps in all (16 per epoch), where its checkpoint was saved in a run of 48")
            && all.contains("from step 48, which is now in epoch 4"),
        "{all}"
    );
    // Resumed at the same length: nothing said.
    let out = run(dir.path(), "r", &["--set", "schedule.epochs=4"]);
    assert!(
        out.status.success() && !text(&out).contains("goes on over"),
        "{}",
        text(&out)
    );
}

/// A run folder inside another run's folder, or a run or sweep folder inside a sweep's, is
/// refused by the start and by `validate` before anything is written: `--fresh` on the outer
/// folder would carry the inner one away, and its next start would begin from step 0 unsaid. A
/// sweep's own trial, trained through its `config.toml`, is at home in its sweep's folder.
/// `validate` says what a start would do with a run folder that holds a run.
#[test]
fn a_run_inside_another_runs_or_a_sweeps_folder_is_refused() {
    let dir = setup();
    let one_epoch = ["--quiet", "--set", "schedule.epochs=1"];
    let out = run(dir.path(), "runs/outer", &one_epoch);
    assert!(out.status.success(), "{}", text(&out));
    let out = run(dir.path(), "runs/outer/inner", &one_epoch);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("runs/outer/inner is inside the run folder runs/outer") && all.contains("--fresh there"),
        "{all}"
    );
    assert!(!dir.path().join("runs/outer/inner").exists(), "{all}");
    // Through a folder that does not exist and `..`, or through a link into the run folder.
    std::fs::create_dir(dir.path().join("runs/outer/empty")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("runs/outer/empty"), dir.path().join("link")).unwrap();
    for around in ["runs/none/../outer/inner", "link"] {
        let out = run(dir.path(), around, &one_epoch);
        assert_eq!(out.status.code(), Some(1), "{around}: {}", text(&out));
        assert!(
            text(&out).contains("is inside the run folder"),
            "{around}: {}",
            text(&out)
        );
    }
    assert!(names(&dir.path().join("runs/outer/empty")).is_empty());
    let validate = |extra: &[&str]| byol_run(dir.path(), &[&["validate", "tiny.toml"][..], extra].concat());
    let out = validate(&["--set", "run.name=\"outer/inner\""]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("is inside the run folder runs/outer"),
        "{}",
        text(&out)
    );

    // What validate says of the folder that holds the run: resumed as it is, refused when changed.
    let out = validate(&["--set", "run.name=\"outer\"", "--set", "schedule.epochs=1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("runs/outer holds a run of this experiment"),
        "{}",
        text(&out)
    );
    // Another byol-run in the folder: a start now is refused; compare shows an unfinished run
    // there as running.
    let held = super::hold_lock(&dir.path().join("runs/outer"));
    let in_use = format!(
        "runs/outer is in use by another byol-run (process {})",
        std::process::id()
    );
    let out = validate(&["--set", "run.name=\"outer\"", "--set", "schedule.epochs=1"]);
    assert!(
        out.status.success() && text(&out).contains(&format!("warning: a start now would be refused: {in_use}")),
        "{}",
        text(&out)
    );
    let summary = dir.path().join("runs/outer/summary.json");
    let finished = std::fs::read(&summary).unwrap();
    std::fs::remove_file(&summary).unwrap();
    let out = byol_run(dir.path(), &["compare", "runs/outer"]);
    assert!(
        text(&out).contains(&format!("running (process {})", std::process::id())),
        "{}",
        text(&out)
    );
    drop(held);
    let out = byol_run(dir.path(), &["compare", "runs/outer"]);
    assert!(text(&out).contains("unfinished"), "{}", text(&out));
    std::fs::write(&summary, finished).unwrap();
    let out = validate(&["--set", "run.name=\"outer\"", "--set", "schedule.epochs=1"]);
    assert!(!text(&out).contains("in use"), "{}", text(&out));
    let out = validate(&["--set", "run.name=\"outer\"", "--set", "schedule.epochs=2"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("warning: a start as it is would be refused")
            && text(&out).contains("--allow-change schedule.epochs"),
        "{}",
        text(&out)
    );

    let sweep = format!("{TINY}\n[sweep]\nmethod = \"grid\"\n\n[sweep.parameters]\n\"optimizer.lr\" = [0.1]\n");
    std::fs::write(dir.path().join("sweep.toml"), sweep).unwrap();
    let out = byol_run(
        dir.path(),
        &[&["sweep", "sweep.toml", "--set", "run.name=\"s\""][..], &one_epoch].concat(),
    );
    assert!(out.status.success(), "{}", text(&out));
    for inside in ["runs/s-sweep/extra", "runs/s-sweep/old-attempts/x"] {
        let out = run(dir.path(), inside, &one_epoch);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            text(&out).contains("is inside the sweep folder runs/s-sweep"),
            "{inside}: {}",
            text(&out)
        );
    }
    let nested_sweep = ["validate", "sweep.toml", "--set", "run.name=\"outer/s\""];
    let out = byol_run(dir.path(), &nested_sweep);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("runs/outer/s-sweep is inside the run folder runs/outer"),
        "{}",
        text(&out)
    );
    let out = byol_run(dir.path(), &["runs/s-sweep/trial-001/config.toml", "--quiet"]);
    assert!(out.status.success(), "{}", text(&out));
    // A trial copied out beside the runs makes no sweep folder of theirs.
    let copied = std::process::Command::new("cp")
        .args(["-r", "runs/s-sweep/trial-001", "runs/best"])
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(copied.success());
    let out = run(dir.path(), "runs/next", &one_epoch);
    assert!(out.status.success(), "{}", text(&out));

    // A run trained in a folder before a sweep made it its own is refused by the sweep.
    let out = run(dir.path(), "runs/b-sweep/mine", &one_epoch);
    assert!(out.status.success(), "{}", text(&out));
    for command in ["validate", "sweep"] {
        let out = byol_run(dir.path(), &[command, "sweep.toml", "--set", "run.name=\"b\""]);
        assert_eq!(out.status.code(), Some(1), "{command}: {}", text(&out));
        assert!(
            text(&out).contains("holds a run that is none of its trials (runs/b-sweep/mine)"),
            "{command}: {}",
            text(&out)
        );
    }
    assert!(!dir.path().join("runs/b-sweep/trial-001").exists());
}

/// Another type of optimizer, allowed on a resume, goes on from the checkpoint's weights with
/// fresh state of its own (the old one's momentum is not its state), and says so; its own state
/// is what the next resume loads.
#[test]
fn another_optimizer_allowed_on_a_resume_starts_with_fresh_state() {
    let dir = setup();
    let run_dir = finished_run(dir.path(), "r");
    let adamw = [
        "--set",
        "optimizer={type=\"adamw\", lr=0.001}",
        "--set",
        "schedule.epochs=4",
    ];
    let out = run(dir.path(), "r", &adamw);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("optimizer.type: \"lars\" -> \"adamw\""),
        "{}",
        text(&out)
    );
    let allowed = [
        &adamw[..],
        &["--allow-change", "optimizer", "--allow-change", "schedule.epochs"],
    ]
    .concat();
    let out = run(dir.path(), "r", &allowed);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("note: another optimizer (optimizer.type: \"lars\" -> \"adamw\")")
            && all.contains("from the weights of step 48 with fresh state"),
        "{all}"
    );
    assert_eq!(summary(&run_dir)["steps"], 64, "{all}");
    assert_eq!(config_value(&run_dir, "optimizer", "type").as_str(), Some("adamw"));
    // The next resume is of an adamw run: its state loads, nothing to say.
    let out = run(
        dir.path(),
        "r",
        &[
            "--set",
            "optimizer={type=\"adamw\", lr=0.001}",
            "--set",
            "schedule.epochs=5",
        ],
    );
    let out_text = text(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "only the length changed, and was not allowed: {out_text}"
    );
    let out = run(
        dir.path(),
        "r",
        &[
            &adamw[..2],
            &["--set", "schedule.epochs=5", "--allow-change", "schedule.epochs"],
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("another optimizer"), "{}", text(&out));
}

/// The online probe, a monitor trained beside BYOL, turned on or off on a resume (allowed): the
/// BYOL networks go on from the checkpoint, a probe new to the run starts untrained (said), one
/// turned off is left out. validate predicts the start.
#[test]
fn the_online_probe_turned_on_or_off_on_a_resume_leaves_the_networks_going_on() {
    let dir = setup();
    let d = dir.path();
    let out = run(
        d,
        "r",
        &[
            "--quiet",
            "--set",
            "schedule.epochs=1",
            "--set",
            "eval.online_probe=false",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    for (probe, epochs) in [("true", "2"), ("false", "3")] {
        let longer = [
            "--set",
            &format!("schedule.epochs={epochs}"),
            "--set",
            &format!("eval.online_probe={probe}"),
            "--allow-change",
            "schedule.epochs",
            "--allow-change",
            "eval.online_probe",
        ];
        let out = byol_run(d, &[&["validate", "tiny.toml", "--run-dir", "r"][..], &longer].concat());
        assert!(
            text(&out).contains("a start goes on from its checkpoint") && !text(&out).contains("refused"),
            "{}",
            text(&out)
        );
        let out = run(d, "r", &longer);
        let all = text(&out);
        assert!(out.status.success(), "probe {probe}: {all}");
        assert_eq!(
            summary(&d.join("r"))["steps"],
            16 * epochs.parse::<u64>().unwrap(),
            "{all}"
        );
        assert_eq!(
            all.contains("note: the online probe starts untrained at step 16"),
            probe == "true",
            "{all}"
        );
        assert_eq!(
            summary(&d.join("r"))["probe_top1_after"].is_number(),
            probe == "true",
            "{all}"
        );
    }
}

/// A resume allowed onto other kNN images (here a larger test split) or settings (another k)
/// reports no kNN gain: the measure before training was of other images or made otherwise. The
/// same images and settings keep it.
#[test]
fn a_resume_on_other_knn_images_reports_no_gain() {
    let dir = setup();
    let measured_before = ["--quiet", "--set", "eval.before_training=true"];
    let finished = |name: &str| {
        let out = run(dir.path(), name, &measured_before);
        assert!(out.status.success(), "{}", text(&out));
        dir.path().join(name)
    };
    let run_dir = finished("r");
    assert!(summary(&run_dir)["knn_before"].is_object(), "{}", summary(&run_dir));
    let longer = ["--set", "schedule.epochs=4", "--allow-change", "schedule.epochs"];
    // Allowing the key alone is no allowance of other data: that takes the whole table.
    let test_size = ["--set", "dataset.test_size=32", "--allow-change", "dataset.test_size"];
    let out = run(dir.path(), "r", &[&longer[..], &test_size].concat());
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("was trained on other data") && all.contains("add --allow-change dataset to continue"),
        "{all}"
    );
    // Generated images of another seed: as many, of the same classes, and other images.
    let seed = ["--set", "dataset.seed=7", "--allow-change", "dataset.seed"];
    let out = run(dir.path(), "r", &[&longer[..], &seed].concat());
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("was trained on other data") && all.contains("train: 512 images of the same 10 classes (files "),
        "{all}"
    );
    let other_queries = ["--set", "dataset.test_size=32", "--allow-change", "dataset"];
    let out = run(dir.path(), "r", &[&longer[..], &other_queries].concat());
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("note: the kNN monitor's images or settings changed since this run measured them"),
        "{all}"
    );
    let after = summary(&run_dir);
    assert!(
        after["knn_before"].is_null() && after["knn_after"].is_object(),
        "{after}"
    );
    // Another k measures otherwise too.
    let other_k = finished("t");
    let k = ["--set", "eval.knn_k=3", "--allow-change", "eval.knn_k"];
    let out = run(dir.path(), "t", &[&longer[..], &k].concat());
    assert!(out.status.success(), "{}", text(&out));
    assert!(summary(&other_k)["knn_before"].is_null(), "{}", text(&out));

    let same_images = finished("s");
    let out = run(dir.path(), "s", &longer);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("images changed"), "{}", text(&out));
    assert!(summary(&same_images)["knn_before"].is_object());
}

/// `validate` takes the start's own flags (`--run-dir`, `--allow-change`, `--fresh`) and decides
/// as the start decides, reading only: where it goes on from, what it refuses and why, a folder
/// whose checkpoints are gone or all damaged, a run folder that is a file.
#[test]
fn validate_says_what_a_start_with_the_same_flags_does() {
    let dir = setup();
    let d = dir.path();
    finished_run(d, "r");
    let validate = |extra: &[&str]| {
        let out = byol_run(d, &[&["validate", "tiny.toml"][..], extra].concat());
        assert!(out.status.success(), "{extra:?}: {}", text(&out));
        text(&out)
    };
    let all = validate(&["--run-dir", "r"]);
    assert!(
        all.contains(
            "note: r holds a run of this experiment that finished at step 48: a start reports it and trains nothing"
        ) && !all.contains("warning"),
        "{all}"
    );
    // Longer: it goes on, to the new end. Shorter than trained by another batch (fewer steps per
    // epoch), as by fewer epochs: refused, whatever is allowed.
    let longer = [
        "--run-dir",
        "r",
        "--set",
        "schedule.epochs=4",
        "--allow-change",
        "schedule.epochs",
    ];
    let all = validate(&longer);
    assert!(
        all.contains("a start goes on from its checkpoint of step 48 and trains to step 64"),
        "{all}"
    );
    let larger_batch = [
        "--run-dir",
        "r",
        "--set",
        "schedule.batch_size=64",
        "--allow-change",
        "schedule",
    ];
    let all = validate(&larger_batch);
    assert!(
        all.contains("a start would be refused, --allow-change or not: r has trained 48 steps, more than the 24")
            && all
                .contains("go back to the batch size and data it trained with (its epochs were 16 steps, these are 8)"),
        "{all}"
    );
    // Not allowed, the batch's refusal advises no --allow-change that would be refused next:
    // only the whole set of flags that continues the run.
    let all = validate(&larger_batch[..4]);
    assert!(
        all.contains("schedule.batch_size: 32 -> 64")
            && all.contains(
                "allowing the changes (--allow-change) does not continue it: r has trained 48 steps, more than the 24"
            )
            && !all.contains("add --allow-change")
            && all.contains(
                "(--set schedule.epochs=6 --allow-change schedule.batch_size --allow-change schedule.epochs;"
            ),
        "{all}"
    );
    let out = run(d, "r", &larger_batch[2..]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("r has trained 48 steps, more than the 24"),
        "{}",
        text(&out)
    );
    let other_lr = ["--run-dir", "r", "--set", "optimizer.lr=0.9"];
    let all = validate(&other_lr);
    assert!(
        all.contains("warning: a start as it is would be refused") && all.contains("--allow-change optimizer.lr"),
        "{all}"
    );
    let all = validate(&[&other_lr[..], &["--allow-change", "optimizer.lr"]].concat());
    assert!(
        all.contains("holds a run of this experiment") && !all.contains("warning"),
        "{all}"
    );
    let all = validate(&[&other_lr[..], &["--allow-change", "optimiser.lr"]].concat());
    assert!(
        all.contains("warning: --allow-change optimiser.lr names no key") && all.contains("would be refused"),
        "{all}"
    );
    let all = validate(&[
        "--run-dir",
        "r",
        "--set",
        "schedule.epochs=2",
        "--allow-change",
        "schedule.epochs",
    ]);
    assert!(
        all.contains("warning: a start would be refused, --allow-change or not: r has trained 48 steps")
            && !all.contains("as it is would be refused"),
        "{all}"
    );
    let all = validate(&["--run-dir", "r", "--fresh"]);
    assert!(all.contains("note: --fresh: a start moves r aside"), "{all}");
    // Another width: the trained weights fit no network of it, whatever --allow-change allows;
    // said beside the refusal that names the flag, and with the flag.
    // Weights that fit no network of the experiment: no --allow-change continues the run, and
    // no refusal advises one, the start's or validate's.
    let wider = ["--run-dir", "r", "--set", "backbone.width=8"];
    let out = run(d, "r", &wider[2..]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let refusal = "allowing the changes (--allow-change) does not continue it: resuming from r/checkpoints/step-000000048: checkpoint's \
                   'online.backbone.bn1.bias' has shape [4], the model's [8]";
    assert!(text(&out).contains(refusal), "{}", text(&out));
    assert!(!text(&out).contains("add --allow-change"), "{}", text(&out));
    let all = validate(&wider);
    assert!(all.contains(refusal) && !all.contains("add --allow-change"), "{all}");
    assert_eq!(all.matches("has shape").count(), 1, "said once: {all}");
    let all = validate(&[&wider[..], &["--allow-change", "backbone.width"]].concat());
    assert!(
        all.contains(
            "warning: a start would be refused, --allow-change or not: resuming from r/checkpoints/step-000000048"
        ) && all.contains("has shape"),
        "{all}"
    );
    assert!(!all.contains("holds a run of this experiment"), "{all}");
    // The same on other data, the width allowed: the data refusal does not advise
    // --allow-change dataset either.
    let other_data = [
        "--set",
        "backbone.width=8",
        "--allow-change",
        "backbone.width",
        "--set",
        "dataset.train_size=256",
    ];
    let out = run(d, "r", &other_data);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("was trained on other data")
            && text(&out).contains("allowing the changes (--allow-change) does not continue it"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("add --allow-change dataset"), "{}", text(&out));

    // Checkpoints gone, or every one damaged: the start refuses, and validate says so, moving
    // nothing.
    let gone = finished_run(d, "gone");
    std::fs::remove_dir_all(gone.join("checkpoints")).unwrap();
    let all = validate(&["--run-dir", "gone"]);
    assert!(
        all.contains("warning: a start as it is would be refused: gone records a run trained to step 48"),
        "{all}"
    );
    let damaged = finished_run(d, "damaged");
    let checkpoints = step_folders(&damaged);
    let damage = |checkpoint: &String| {
        std::fs::write(
            damaged.join("checkpoints").join(checkpoint).join("model.safetensors"),
            "x",
        )
        .unwrap()
    };
    // The newest damaged: a start skips it (moving it aside) and goes on from the one before.
    damage(checkpoints.last().unwrap());
    let all = validate(&["--run-dir", "damaged"]);
    assert_eq!(
        all.matches("warning: a start would skip damaged checkpoint").count(),
        1,
        "{all}"
    );
    assert!(
        all.contains(", moving it into damaged/checkpoints/damaged") && all.contains("from its checkpoint of step 44"),
        "{all}"
    );
    assert!(
        !all.contains("warning: skipping"),
        "said once, as what a start would do: {all}"
    );
    checkpoints.iter().for_each(damage);
    let all = validate(&["--run-dir", "damaged"]);
    assert!(
        all.contains("warning: a start as it is would be refused") && all.contains("has no intact checkpoint"),
        "{all}"
    );
    assert!(!all.contains("warning: skipping"), "said once, in the refusal: {all}");
    assert!(
        !damaged.join("checkpoints/damaged").exists(),
        "validate moves nothing: {all}"
    );
    assert_eq!(step_folders(&damaged).len(), 3, "{all}");

    // Its config.toml lost: a start resumes from its checkpoints (and writes it again).
    let no_config = finished_run(d, "no-config");
    std::fs::remove_file(no_config.join("config.toml")).unwrap();
    let all = validate(&["--run-dir", "no-config"]);
    assert!(all.contains("that finished at step 48"), "{all}");

    std::fs::write(d.join("file"), "x").unwrap();
    let out = byol_run(d, &["validate", "tiny.toml", "--run-dir", "file"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("cannot use file as the run folder: it exists and is not a folder"),
        "{}",
        text(&out)
    );

    let sweep = format!("{TINY}\n[sweep]\nmethod = \"grid\"\n\n[sweep.parameters]\n\"optimizer.lr\" = [0.1]\n");
    std::fs::write(d.join("sweep.toml"), sweep).unwrap();
    let out = byol_run(d, &["validate", "sweep.toml", "--run-dir", "r"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("a sweep takes neither --run-dir nor --allow-change"),
        "{}",
        text(&out)
    );
}
