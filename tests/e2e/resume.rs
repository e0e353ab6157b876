//! Checkpoints, resume, signals and guards, on a tiny CPU run in deterministic mode (one thread,
//! per-step seeding): a resumed run must end bit for bit where an uninterrupted one ends.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use byol_testkit::fixtures::with_table;

use super::{byol_run, byol_run_command, text, TINY};

fn setup() -> tempfile::TempDir {
    setup_with(TINY)
}

/// A folder with `experiment` as its tiny.toml.
fn setup_with(experiment: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tiny.toml"), experiment).unwrap();
    dir
}

fn run(dir: &Path, run_dir: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["tiny.toml", "--run-dir", run_dir];
    args.extend_from_slice(extra);
    byol_run(dir, &args)
}

pub(crate) fn final_model(run_dir: &Path) -> Vec<(String, tch::Tensor)> {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("checkpoints/last/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["step"], 48, "the run finished");
    let mut tensors = tch::Tensor::read_safetensors(run_dir.join("checkpoints/last/model.safetensors")).unwrap();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors
}

fn assert_identical(a: &Path, b: &Path) {
    let (ma, mb) = (final_model(a), final_model(b));
    assert_eq!(ma.len(), mb.len());
    for ((na, ta), (nb, tb)) in ma.iter().zip(&mb) {
        assert_eq!(na, nb);
        assert!(
            ta.equal(tb),
            "{na} differs between the uninterrupted and the resumed run"
        );
    }
}

fn checkpoints(run_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(run_dir.join("checkpoints")) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("step-"))
        .collect();
    v.sort();
    v
}

/// Starts a run, waits until it has written `wait_for` checkpoints, then sends `signal`.
fn interrupt(dir: &Path, run_dir: &str, signal: &str, wait_for: usize) -> std::process::Output {
    let child = byol_run_command(dir)
        .args(["tiny.toml", "--run-dir", run_dir])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while checkpoints(&dir.join(run_dir)).len() < wait_for {
        assert!(started.elapsed() < Duration::from_secs(120), "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A little later than the checkpoint, so the kill lands at some step in between.
    std::thread::sleep(Duration::from_millis(50 + (started.elapsed().as_nanos() % 150) as u64));
    Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn kill_9_then_resume_matches_the_uninterrupted_run_bit_for_bit() {
    kill_9_then_resume_matches(&setup());
}

/// Fused AdamW keeps its step count on the parameters' device, where the kernel reads it for
/// the bias corrections: it must come back from the checkpoint too.
#[test]
fn kill_9_then_resume_with_fused_adamw_matches_bit_for_bit() {
    let adamw = with_table(TINY, "optimizer", "type = \"adamw\"\nlr = 1e-3\nfused = true\n");
    kill_9_then_resume_matches(&setup_with(&adamw));
}

/// Trains tiny.toml in `dir` without a break and, in another run folder, killed with -9 after
/// its first checkpoint and run again: both must end with the same model, bit for bit.
fn kill_9_then_resume_matches(dir: &tempfile::TempDir) {
    let reference = run(dir.path(), "reference", &["--quiet"]);
    assert!(reference.status.success(), "{}", text(&reference));

    let killed = interrupt(dir.path(), "killed", "-9", 1);
    assert!(!killed.status.success(), "kill -9 ends the process");
    let resumed = run(dir.path(), "killed", &[]);
    let all = text(&resumed);
    assert!(resumed.status.success(), "{all}");
    assert!(all.contains("resuming"), "{all}");
    assert_identical(&dir.path().join("reference"), &dir.path().join("killed"));
}

/// A run started with SIGINT ignored (as a non-interactive shell starts a background job, so
/// that a Ctrl-C meant for the script leaves the job alone) leaves it ignored, as Unix programs do,
/// and trains to the end.
#[test]
fn a_run_started_with_sigint_ignored_keeps_ignoring_it() {
    let dir = setup();
    let child = super::byol_run_ignoring(dir.path(), libc::SIGINT)
        .args(["tiny.toml", "--run-dir", "r"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while checkpoints(&dir.path().join("r")).is_empty() {
        assert!(started.elapsed() < Duration::from_secs(120), "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..2 {
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(!all.contains("stopping"), "{all}");
    final_model(&dir.path().join("r")); // asserts the last step's checkpoint
}

/// SIGTERM: the run saves a checkpoint and exits with the shell's status for SIGTERM (128 + 15),
/// not 0: its work is kept, not done, and a `&&` chain must stop there.
#[test]
fn sigterm_saves_a_checkpoint_and_exits_as_terminated() {
    let dir = setup();
    let stopped = interrupt(dir.path(), "stopped", "-TERM", 1);
    let all = text(&stopped);
    assert_eq!(stopped.status.code(), Some(143), "{all}");
    assert!(!all.contains("error:"), "a stop is not an error: {all}");
    assert!(all.contains("stopped by signal after step"), "{all}");
    let resumed = run(dir.path(), "stopped", &["--quiet"]);
    assert!(resumed.status.success(), "{}", text(&resumed));
    let reference = run(dir.path(), "reference", &["--quiet"]);
    assert!(reference.status.success(), "{}", text(&reference));
    assert_identical(&dir.path().join("reference"), &dir.path().join("stopped"));
}

#[test]
fn a_corrupted_latest_checkpoint_falls_back_to_the_previous_one() {
    let dir = setup();
    let first = run(dir.path(), "damaged", &["--quiet", "--set", "schedule.epochs=3"]);
    assert!(first.status.success(), "{}", text(&first));
    let saved = checkpoints(&dir.path().join("damaged"));
    assert_eq!(saved.len(), 3, "keeps the last 3: {saved:?}");
    // Truncate the newest checkpoint's weights, then ask for a longer run.
    let newest = saved.last().unwrap().join("model.safetensors");
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
    let again = run(dir.path(), "damaged", &[]);
    let all = text(&again);
    assert!(again.status.success(), "{all}");
    assert!(
        all.contains("warning: skipping damaged checkpoint") && all.contains("step-000000048"),
        "{all}"
    );
    assert!(all.contains("SHA-256"), "{all}");
    assert!(
        all.contains("from step 44"),
        "resumes from the previous checkpoint: {all}"
    );
    let reference = run(dir.path(), "reference", &["--quiet"]);
    assert!(reference.status.success());
    assert_identical(&dir.path().join("reference"), &dir.path().join("damaged"));
}

/// Stopped after the evaluation that follows its epoch-end checkpoint (saved before it): the
/// resumed run keeps that point and counts it, as the uninterrupted run does.
#[test]
fn an_evaluation_after_the_newest_checkpoint_is_counted_once() {
    let dir = setup();
    let every_epoch = ["--quiet", "--set", "checkpoint.every_steps=16"];
    let out = run(dir.path(), "whole", &every_epoch);
    assert!(out.status.success(), "{}", text(&out));
    let whole = dir.path().join("whole");
    let counted = |run_dir: &Path| {
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run_dir.join("summary.json")).unwrap()).unwrap();
        summary["curve_evaluations"].as_u64().unwrap()
    };
    assert_eq!(counted(&whole), 2, "after epochs 1 and 2");
    // As a kill after the evaluation of epoch 2 leaves it: the checkpoint of step 32 newest,
    // the curve holding that evaluation, no summary.
    std::fs::remove_dir_all(whole.join("checkpoints/step-000000048")).unwrap();
    std::fs::remove_file(whole.join("summary.json")).unwrap();
    let out = run(dir.path(), "whole", &every_epoch);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(counted(&whole), 2, "{}", text(&out));
}

/// A resume with other CPU threads goes on (where it runs is no part of the experiment) and says
/// that the run no longer matches, bit for bit, one trained throughout with either count.
#[test]
fn a_resume_with_other_threads_says_it_rounds_otherwise() {
    let dir = setup();
    let one_epoch = ["--set", "schedule.epochs=1"];
    let first = run(dir.path(), "threads", &one_epoch);
    assert!(first.status.success(), "{}", text(&first));
    assert!(
        !text(&first).contains("sum and round in another order"),
        "{}",
        text(&first)
    );
    let saved = checkpoints(&dir.path().join("threads"));
    let newest = saved.last().unwrap().join("model.safetensors");
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
    let again = run(
        dir.path(),
        "threads",
        &[&one_epoch[..], &["--set", "run.threads=2"]].concat(),
    );
    let all = text(&again);
    assert!(again.status.success(), "{all}");
    assert!(
        all.contains("with run.threads: 1 -> 2: the steps from here sum and round in another order"),
        "{all}"
    );
}

/// Killed while it evaluated after epoch 2 (its checkpoint of that step already saved): the
/// resumed run measures that evaluation first, to the same figures, and the curve that other
/// trials' pruning reads holds no point of the run that went past the checkpoint.
#[test]
fn a_run_killed_during_an_evaluation_measures_it_when_resumed() {
    let dir = setup();
    let settings = [
        "--quiet",
        "--set",
        "eval.every_epochs=1",
        "--set",
        "checkpoint.keep_last=20",
    ];
    let out = run(dir.path(), "r", &settings);
    assert!(out.status.success(), "{}", text(&out));
    let run_dir = dir.path().join("r");
    let curve_file = run_dir.join("knn-curve.json");
    let curve =
        |file: &Path| -> Vec<serde_json::Value> { serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap() };
    let steps =
        |points: &[serde_json::Value]| -> Vec<u64> { points.iter().map(|p| p["step"].as_u64().unwrap()).collect() };
    let measured = curve(&curve_file);
    assert_eq!(steps(&measured), [16, 32, 48]);
    // The state of a kill during the evaluation at step 32, but with the final point of a run
    // that went further kept, as a stale point.
    let evaluated = run_dir.join("checkpoints/step-000000032");
    for later in checkpoints(&run_dir).into_iter().filter(|c| *c > evaluated) {
        std::fs::remove_dir_all(later).unwrap();
    }
    std::fs::remove_file(run_dir.join("summary.json")).unwrap();
    let killed: Vec<&serde_json::Value> = measured.iter().filter(|p| p["step"] != 32).collect();
    std::fs::write(&curve_file, serde_json::to_vec(&killed).unwrap()).unwrap();

    let resumed = run(dir.path(), "r", &settings[1..]);
    let all = text(&resumed);
    assert!(resumed.status.success(), "{all}");
    assert!(all.contains("from step 32") && all.contains("after epoch 2"), "{all}");
    let again = curve(&curve_file);
    assert_eq!(steps(&again), [16, 32, 48], "{all}");
    // The run's cost of its curve counts both starts' evaluations (the first's, at step 16, in
    // its checkpoint's record), as its training time does.
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["curve_evaluations"], 2, "{summary}");
    assert!(
        all.contains("kNN curve        2 evaluations during training took"),
        "{all}"
    );
    for (a, b) in measured.iter().zip(&again) {
        assert_eq!(
            a["knn_top1"], b["knn_top1"],
            "the same weights, the same figures: {a} {b}"
        );
    }

    // Killed after the evaluation at step 32 was recorded, before the next checkpoint: the
    // resumed run keeps that point, and counts the seconds it records in the curve's cost.
    for later in checkpoints(&run_dir).into_iter().filter(|c| *c > evaluated) {
        std::fs::remove_dir_all(later).unwrap();
    }
    std::fs::remove_file(run_dir.join("summary.json")).unwrap();
    let seconds = |points: &[serde_json::Value], step: u64| {
        let point = points.iter().find(|p| p["step"] == step).unwrap();
        point["seconds"]
            .as_f64()
            .unwrap_or_else(|| panic!("no seconds: {point}"))
    };
    let (at_16, at_32) = (seconds(&again, 16), seconds(&again, 32));
    assert!(at_16 > 0.0 && at_32 > 0.0, "{again:?}");
    let resumed = run(dir.path(), "r", &settings[1..]);
    let all = text(&resumed);
    assert!(resumed.status.success(), "{all}");
    assert!(all.contains("from step 32") && !all.contains("after epoch 2"), "{all}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["curve_evaluations"], 2, "{summary}");
    let counted = summary["curve_seconds"].as_f64().unwrap();
    assert!(
        counted >= at_16 + at_32,
        "{counted} s counted, {at_16} + {at_32} s measured: {summary}"
    );
}

#[test]
fn a_nan_loss_stops_the_run_naming_the_step() {
    let dir = setup();
    let out = run(
        dir.path(),
        "nan",
        &[
            "--set",
            "optimizer.type=\"sgd\"",
            "--set",
            "optimizer.lr=1e30",
            "--set",
            "optimizer.weight_decay=0.0",
        ],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("the loss became") && all.contains("at step"), "{all}");
    // It failed before its first checkpoint: nothing may claim one is kept.
    assert!(all.contains("no checkpoint was saved in nan/checkpoints yet"), "{all}");
    assert!(!all.contains("last good checkpoint"), "{all}");
    assert!(!all.contains("panicked"), "{all}");
    // The folder says why, and `compare` shows the run as failed, not unfinished.
    let error = std::fs::read_to_string(dir.path().join("nan/error.txt")).unwrap();
    assert!(error.contains("the loss became"), "{error}");
    let out = byol_run(dir.path(), &["compare", "nan", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let table: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(table["runs"][0]["status"], "failed", "{table}");
}

#[test]
fn export_writes_torchvision_names_and_embed_writes_one_row_per_image() {
    let dir = setup();
    let out = run(dir.path(), "done", &["--quiet", "--set", "schedule.epochs=1"]);
    assert!(out.status.success(), "{}", text(&out));
    // A name that promises a torch.load file is refused before anything is written.
    let out = byol_run(dir.path(), &["export", "done", "--out", "backbone.pt"]);
    assert!(
        !out.status.success() && text(&out).contains("--out backbone.pt must end in .safetensors"),
        "{}",
        text(&out)
    );
    assert!(!dir.path().join("backbone.pt").exists());
    let exported = dir.path().join("backbone.safetensors");
    let out = byol_run(
        dir.path(),
        &["export", "done/checkpoints/last", "--out", exported.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out));
    let names: Vec<String> = tch::Tensor::read_safetensors(&exported)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(
        names.contains(&"conv1.weight".to_string()) && names.contains(&"layer4.1.bn2.running_var".to_string()),
        "{names:?}"
    );
    assert!(
        names.iter().all(|n| !n.starts_with("online.") && !n.starts_with("fc.")),
        "{names:?}"
    );

    let images = dir.path().join("images/sub");
    std::fs::create_dir_all(&images).unwrap();
    for i in 0..3 {
        let image = tch::Tensor::randint(255, [3, 20, 24], (tch::Kind::Uint8, tch::Device::Cpu));
        tch::vision::image::save(&image, images.join(format!("{i}.png"))).unwrap();
    }
    std::fs::write(images.join("notes.txt"), "not an image").unwrap();
    let out = byol_run(
        dir.path(),
        &[
            "embed",
            "done/checkpoints/last",
            "--images",
            "images",
            "--out",
            "emb.npy",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let emb = tch::Tensor::read_npy(dir.path().join("emb.npy")).unwrap();
    assert_eq!(emb.size(), [3, 32]);
    let names = std::fs::read_to_string(dir.path().join("emb.npy.names.txt")).unwrap();
    assert_eq!(names, "sub/0.png\nsub/1.png\nsub/2.png\n");
}

#[test]
fn gradient_accumulation_keeps_the_step_count_and_trains() {
    let dir = setup();
    let out = run(
        dir.path(),
        "accumulated",
        &["--quiet", "--set", "schedule.accumulate=4"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("accumulated/summary.json")).unwrap()).unwrap();
    assert_eq!(
        summary["steps"], 48,
        "one optimizer step per 4 micro-batches of 8: {summary}"
    );
    assert!(summary["final_loss"].as_f64().unwrap().is_finite());
    let out = run(dir.path(), "bad", &["--set", "schedule.accumulate=5"]);
    assert!(
        text(&out).contains("not a multiple of schedule.accumulate"),
        "{}",
        text(&out)
    );
}
