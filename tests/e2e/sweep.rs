//! `byol-run sweep`: a 4-trial grid of the tiny CPU config gives 4 run folders and a ranked
//! summary; killed with -9 and run again, it skips the finished trials and resumes the unfinished one.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{byol_run, byol_run_command, random_pngs, text};

/// The tiny config of resume.rs, 1 epoch (16 steps, a checkpoint every 4), with a 2 x 2 grid.
const TINY_SWEEP: &str = r#"
[run]
device = "cpu"
threads = 1
seed = 5

[dataset]
type = "synthetic"
train_size = 512
test_size = 64
image_size = 16

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
lr = 0.5

[byol]
hidden_dim = 32
projection_dim = 16

[schedule]
epochs = 1
batch_size = 32
warmup_epochs = 0

[eval]
knn_k = 5
before_training = false

[logging]
every_steps = 4

[checkpoint]
every_steps = 4

[sweep]
method = "grid"
metric = "knn_top1"
goal = "max"

[sweep.parameters]
"optimizer.lr" = [0.2, 0.8]
"byol.tau_base" = [0.99, 0.996]
"#;

fn setup(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tiny.toml"), text).unwrap();
    dir
}

/// TINY_SWEEP with its grid replaced: `"optimizer.lr" = <values>` alone.
fn sweep_of_lr(values: &str) -> String {
    let start = TINY_SWEEP.find("[sweep.parameters]").unwrap();
    format!(
        "{}[sweep.parameters]\n\"optimizer.lr\" = {values}\n",
        &TINY_SWEEP[..start]
    )
}

/// TINY_SWEEP without its [sweep] table: a plain experiment.
fn plain_experiment() -> &'static str {
    &TINY_SWEEP[..TINY_SWEEP.find("[sweep]").unwrap()]
}

/// Starts python3 running `script` (which takes a trial folder's lock with `fcntl.flock` and
/// prints `locked`) with `args`, and returns once it holds the lock.
fn lock_holder(script: &str, args: &[&Path], stdin: Stdio) -> std::process::Child {
    let mut holder = Command::new("python3")
        .args(["-c", script])
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready.trim(), "locked");
    holder
}

fn has_checkpoint(run_dir: &Path) -> bool {
    std::fs::read_dir(run_dir.join("checkpoints"))
        .is_ok_and(|mut entries| entries.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("step-"))))
}

/// Waits until `done` (checked every 20 ms), failing after five minutes with `what` stalled.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(300), "{what} made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `kill -<signal> <target>` (a PID, or `-PGID` for a process group).
fn send(signal: &str, target: &str) {
    Command::new("kill").args([signal, "--", target]).status().unwrap();
}

/// The ranked rows of summary.csv (header dropped), as field lists.
fn csv_rows(sweep_dir: &Path) -> Vec<Vec<String>> {
    let csv = std::fs::read_to_string(sweep_dir.join("summary.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "rank,trial,byol.tau_base,optimizer.lr,knn_top1,status,run_dir,knn_before,knn_top5,knn_gain,probe_top1,final_loss,train_seconds,images_per_second,pruned_epoch",
        "{csv}"
    );
    lines.map(|l| l.split(',').map(String::from).collect()).collect()
}

#[test]
fn a_4_trial_grid_killed_and_rerun_skips_finished_trials_and_ranks_all() {
    let dir = setup(TINY_SWEEP);
    let sweep_dir = dir.path().join("runs/tiny-sweep");
    let child = byol_run_command(dir.path())
        .args(["sweep", "tiny.toml"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill it once trial 1 has finished and trial 2 has written a checkpoint.
    wait_until("the sweep", || {
        sweep_dir.join("trial-001/summary.json").is_file() && has_checkpoint(&sweep_dir.join("trial-002"))
    });
    send("-9", &child.id().to_string());
    let killed = child.wait_with_output().unwrap();
    assert!(!killed.status.success(), "kill -9 ends the sweep: {}", text(&killed));
    assert!(
        !sweep_dir.join("trial-002/summary.json").exists() && !has_checkpoint(&sweep_dir.join("trial-003")),
        "killed during trial 2"
    );

    let rerun = byol_run(dir.path(), &["sweep", "tiny.toml"]);
    let all = text(&rerun);
    assert!(rerun.status.success(), "{all}");
    assert!(
        all.contains("trial-001: finished before, skipped (knn_top1 = "),
        "{all}"
    );
    assert!(all.contains("== trial-002 of 4 (resuming): "), "{all}");
    assert!(
        all.contains("resuming ") && all.contains("from step "),
        "the runner resumed trial 2: {all}"
    );
    assert!(all.contains("== trial-004 of 4 (starting): "), "{all}");
    assert!(
        all.contains("skipped          1 trial that had finished or been pruned before"),
        "{all}"
    );
    assert!(
        all.contains("# Sweep tiny: 4 of 4 trials done, ranked by knn_top1 (higher is better)"),
        "{all}"
    );

    // Four run folders, each a complete run with its own TensorBoard log and its parameters.
    let grid = [
        (1, "0.99", "0.2"),
        (2, "0.99", "0.8"),
        (3, "0.996", "0.2"),
        (4, "0.996", "0.8"),
    ];
    for (n, tau, lr) in grid {
        let run = sweep_dir.join(format!("trial-00{n}"));
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
        assert_eq!(summary["steps"], 16, "trial {n} finished");
        assert_eq!(summary["interrupted"], false);
        let events = std::fs::read_dir(run.join("tensorboard")).unwrap().count();
        assert!(events >= 1, "trial {n} has a TensorBoard log");
        let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
        assert!(
            config.contains(&format!("lr = {lr}\n")) && config.contains(&format!("tau_base = {tau}\n")),
            "trial {n}: {config}"
        );
        assert!(config.contains(&format!("name = \"tiny-trial-00{n}\"")), "{config}");
    }

    // Ranked: knn_top1 descending, ties sharing a rank (1 + the trials that did better), every
    // grid point once.
    let rows = csv_rows(&sweep_dir);
    assert_eq!(rows.len(), 4, "{rows:?}");
    let metrics: Vec<f64> = rows.iter().map(|r| r[4].parse().unwrap()).collect();
    assert!(metrics.windows(2).all(|w| w[0] >= w[1]), "{metrics:?}");
    let mut points: Vec<(String, String)> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let better = metrics.iter().filter(|&&m| m > metrics[i]).count();
            assert_eq!(r[0], (better + 1).to_string(), "{rows:?}");
            assert_eq!(r[5], "done");
            (r[2].clone(), r[3].clone())
        })
        .collect();
    points.sort();
    let mut expected: Vec<(String, String)> = grid.iter().map(|(_, t, l)| (t.to_string(), l.to_string())).collect();
    expected.sort();
    assert_eq!(points, expected);
    let markdown = std::fs::read_to_string(sweep_dir.join("summary.md")).unwrap();
    assert_eq!(
        markdown.lines().filter(|l| l.starts_with("| ")).count(),
        5,
        "{markdown}"
    );

    // A third run has nothing left to do.
    let again = byol_run(dir.path(), &["sweep", "tiny.toml", "--quiet"]);
    let all = text(&again);
    assert!(again.status.success(), "{all}");
    assert_eq!(all.matches("finished before, skipped").count(), 4, "{all}");
    assert!(!all.contains("== trial-"), "nothing trains: {all}");
    assert_eq!(csv_rows(&sweep_dir), rows);

    // The sweep folder given where a run is wanted: its trials are named.
    let out = byol_run(dir.path(), &["export", "runs/tiny-sweep", "--out", "b.safetensors"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains(
            "runs/tiny-sweep is a sweep folder: give one of its trials' run folders (runs/tiny-sweep/trial-001, \
             runs/tiny-sweep/trial-002, ... and 2 more)"
        ),
        "{all}"
    );
}

#[test]
fn a_plain_run_of_a_sweep_file_points_to_byol_run_sweep_and_validate_checks_every_trial() {
    let dir = setup(TINY_SWEEP);
    let out = byol_run(dir.path(), &["tiny.toml"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("in experiment file tiny.toml") && all.contains("[sweep] table") && all.contains("byol-run sweep"),
        "{all}"
    );

    // Under torchrun every process would run the sweep: refused.
    let out = super::byol_run_with_env(dir.path(), &["sweep", "tiny.toml"], &[("WORLD_SIZE", "2")]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("start it without torchrun (WORLD_SIZE = 2 is set)"),
        "{all}"
    );
    assert!(!dir.path().join("runs/tiny-sweep").exists(), "{all}");
    // --devices would replace a swept run.device, and the summary would list the one not used.
    let swept_device = TINY_SWEEP.replace(
        "[sweep.parameters]\n",
        "[sweep.parameters]\n\"run.device\" = [\"cpu\"]\n",
    );
    std::fs::write(dir.path().join("device.toml"), swept_device).unwrap();
    let out = byol_run(dir.path(), &["sweep", "device.toml", "--devices", "cpu,cpu"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("--devices sets each trial's run.device, which [sweep.parameters] sweeps"),
        "{all}"
    );
    assert!(!dir.path().join("runs/device-sweep").exists(), "{all}");
    // So are the commands that are not training: each process would do the whole of it.
    for command in [
        &["validate", "tiny.toml"][..],
        &["export", "r", "--out", "b.safetensors"],
    ] {
        let out = super::byol_run_with_env(dir.path(), command, &[("WORLD_SIZE", "2")]);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{all}");
        assert!(
            all.contains("this command runs in one process: start it without torchrun (WORLD_SIZE = 2 is set)"),
            "{all}"
        );
    }

    let out = byol_run(dir.path(), &["validate", "tiny.toml"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("tiny.toml is valid: sweep 'tiny' of 4 trials"), "{all}");
    // A network that only building finds wrong, in the later trials only: built, and named.
    std::fs::write(
        dir.path().join("layers.toml"),
        TINY_SWEEP.replace(
            "\"byol.tau_base\" = [0.99, 0.996]",
            "\"byol.embedding_layer\" = [\"avgpool\", \"layer9\"]",
        ),
    )
    .unwrap();
    let out = byol_run(dir.path(), &["validate", "layers.toml"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("trial-003 (byol.embedding_layer = layer9") && all.contains("no feature tap"),
        "{all}"
    );

    std::fs::write(
        dir.path().join("typo.toml"),
        TINY_SWEEP.replace("\"byol.tau_base\"", "\"byol.tau_bse\""),
    )
    .unwrap();
    let out = byol_run(dir.path(), &["sweep", "typo.toml"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("in sweep file typo.toml") && all.contains("trial-001") && all.contains("tau_bse"),
        "{all}"
    );
    assert!(!dir.path().join("runs").exists(), "nothing ran: {all}");
    // A swept value out of range: named once, where it was set, in its file.
    std::fs::write(
        dir.path().join("range.toml"),
        TINY_SWEEP.replace("[0.2, 0.8]", "[0.2, -1.0]"),
    )
    .unwrap();
    let out = byol_run(dir.path(), &["validate", "range.toml"]);
    let all = text(&out);
    assert!(
        out.status.code() == Some(1)
            && all.contains(
                "error: in sweep file range.toml: sweep.parameters.\"optimizer.lr\" = -1.0 (trial-002): optimizer.lr \
                 = -1 is out of range"
            ),
        "{all}"
    );
    // A huge one in exponent form, as the check's own message writes it.
    std::fs::write(
        dir.path().join("huge.toml"),
        TINY_SWEEP.replace("[0.2, 0.8]", "[0.2, 1e300]"),
    )
    .unwrap();
    // A range of float bounds on a key of whole numbers: the way out is in the range.
    let float_range = TINY_SWEEP
        .replace("method = \"grid\"", "method = \"random\"\ntrials = 1")
        .replace(
            "\"optimizer.lr\" = [0.2, 0.8]",
            "\"byol.hidden_dim\" = { min = 16.0, max = 40.0 }",
        );
    std::fs::write(dir.path().join("floats.toml"), float_range).unwrap();
    let out = byol_run(dir.path(), &["validate", "floats.toml"]);
    assert!(
        text(&out).contains("write min and max as whole numbers (16) to draw whole numbers"),
        "{}",
        text(&out)
    );
    let out = byol_run(dir.path(), &["validate", "huge.toml"]);
    let all = text(&out);
    assert!(
        out.status.code() == Some(1)
            && all.contains("sweep.parameters.\"optimizer.lr\" = 1e300 (trial-002): optimizer.lr = 1e300 is beyond"),
        "{all}"
    );
}

#[test]
fn a_random_search_runs_one_trial_per_device_in_child_processes() {
    // Two "devices" that are both the CPU: the multi-GPU code path (a child process per trial,
    // run.device set per trial), on any machine.
    let small = TINY_SWEEP
        .replace("train_size = 512", "train_size = 128")
        .replace(
            "[sweep]\nmethod = \"grid\"",
            "[sweep]\nmethod = \"random\"\ntrials = 3\nseed = 1",
        )
        .replace(
            "\"optimizer.lr\" = [0.2, 0.8]",
            "\"optimizer.lr\" = { min = 0.1, max = 1.0, log = true }",
        );
    // Threads left to libtorch: each trial gets its share of the cores, not all of them.
    let small = small.replace("threads = 1\n", "threads = 0\n");
    let dir = setup(&small);
    // The sweep's own name and device set by hand too: each trial gets the sweep's values, once.
    let named = ["--set", "run.name=\"tiny\"", "--set", "run.device=\"cpu\""];
    let out = byol_run(
        dir.path(),
        &[&["sweep", "tiny.toml", "--devices", "cpu,cpu"][..], &named].concat(),
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert_eq!(all.matches(" on cpu: knn_top1 = ").count(), 3, "{all}");
    let share = (std::thread::available_parallelism().unwrap().get() / 2).max(1);
    let sweep_dir = dir.path().join("runs/tiny-sweep");
    assert!(sweep_dir.join("experiment.toml").is_file());
    for n in 1..=3 {
        let run = sweep_dir.join(format!("trial-00{n}"));
        assert!(run.join("summary.json").is_file(), "trial {n}: {all}");
        let log = std::fs::read_to_string(run.join("train.log")).unwrap();
        assert!(log.contains("== summary: tiny-trial-00"), "{log}");
        assert!(!log.contains("is given 2 times"), "{log}");
        // The trial's progress: a line at its logging interval (here its last step).
        assert!(
            log.contains("training tiny-trial-00") && log.contains("step      4/4 loss"),
            "{log}"
        );
        let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
        assert!(config.contains("device = \"cpu\""), "{config}");
        assert!(config.contains(&format!("threads = {share}\n")), "{config}");
    }
    let csv = std::fs::read_to_string(sweep_dir.join("summary.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    for line in csv.lines().skip(1) {
        let lr: f64 = line.split(',').nth(3).unwrap().parse().unwrap();
        assert!((0.1..=1.0).contains(&lr), "{line}");
    }
}

#[test]
fn a_failing_trial_is_recorded_the_others_run_and_a_changed_grid_is_refused() {
    // lr = 1e30 makes the loss NaN: that trial fails, the other one finishes.
    let file = sweep_of_lr("[1e30, 0.1]");
    let dir = setup(&file);
    let small = ["--quiet", "--set", "dataset.train_size=128"];
    let out = byol_run(dir.path(), &[&["sweep", "tiny.toml"][..], &small].concat());
    let all = text(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a sweep with a failed trial is not a success: {all}"
    );
    assert!(
        all.contains("1 of 2 trials failed (trial-001; each one's error.txt says why)"),
        "{all}"
    );
    let sweep_dir = dir.path().join("runs/tiny-sweep");
    let error = std::fs::read_to_string(sweep_dir.join("trial-001/error.txt")).unwrap();
    assert!(error.contains("the loss became"), "{error}");
    // A trial in a child process keeps the whole error it wrote, not the log's last lines.
    let apart = [
        &[
            "sweep",
            "tiny.toml",
            "--devices",
            "cpu,cpu",
            "--set",
            "run.name=\"apart\"",
        ][..],
        &small,
    ]
    .concat();
    let out = byol_run(dir.path(), &apart);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let apart_error = std::fs::read_to_string(dir.path().join("runs/apart-sweep/trial-001/error.txt")).unwrap();
    assert!(
        apart_error.starts_with(error.lines().next().unwrap().split("tiny").next().unwrap())
            && !apart_error.contains(" exited with "),
        "{apart_error}\nin process: {error}"
    );
    let markdown = std::fs::read_to_string(sweep_dir.join("summary.md")).unwrap();
    assert!(
        markdown.contains("| failed |") && markdown.contains("| done |"),
        "{markdown}"
    );
    let recorded = std::fs::read_to_string(sweep_dir.join("trial-002/sweep-trial.toml")).unwrap();
    assert!(recorded.contains("optimizer.lr"), "{recorded}");

    // The same folder with other values for the trials is refused, not mixed in.
    std::fs::write(dir.path().join("tiny.toml"), file.replace("1e30, 0.1", "1e30, 0.2")).unwrap();
    let out = byol_run(dir.path(), &[&["sweep", "tiny.toml"][..], &small].concat());
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("trial-002") && all.contains("other parameters") && all.contains("--fresh"),
        "{all}"
    );

    // Fewer values: the trial left over is named, not dropped from the summary without a word
    // (by validate too).
    std::fs::write(dir.path().join("tiny.toml"), file.replace("1e30, 0.1", "1e30")).unwrap();
    let out = byol_run(dir.path(), &[&["validate", "tiny.toml"][..], &small[1..]].concat());
    assert!(
        text(&out).contains("holds trial-002 (optimizer.lr = 0.1), which is not a trial of this sweep"),
        "{}",
        text(&out)
    );
    let out = byol_run(dir.path(), &[&["sweep", "tiny.toml"][..], &small].concat());
    let all = text(&out);
    assert!(
        all.contains("holds trial-002 (optimizer.lr = 0.1), which is not a trial of this sweep"),
        "{all}"
    );

    // The failed value mended: the failed trial, which left no checkpoint, starts anew (its old
    // attempt moved aside, not counted as a stray), and the finished one is kept.
    std::fs::write(dir.path().join("tiny.toml"), file.replace("1e30, 0.1", "0.05, 0.1")).unwrap();
    let out = byol_run(dir.path(), &[&["sweep", "tiny.toml"][..], &small].concat());
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("trial-001: its settings or data changed since its last attempt, which left no checkpoint")
            && all.contains("trial-002: finished before, skipped")
            && !all.contains("not a trial of this sweep"),
        "{all}"
    );
    let markdown = std::fs::read_to_string(sweep_dir.join("summary.md")).unwrap();
    assert_eq!(markdown.matches("| done |").count(), 2, "{markdown}");
    let moved_aside = std::fs::read_dir(sweep_dir.join("old-attempts"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("trial-001.old-")
        })
        .count();
    assert_eq!(moved_aside, 1, "{all}");
}

/// A sweep meets its trials as they trained: a failed trial that left checkpoints takes mended
/// values (moved aside, started anew); a finished trial keeps its result, with a note when a
/// setting that changes figures (threads) differs now; trials without a value of a metric chosen
/// since are named; and a finished trial whose config.toml is lost is still checked, against its
/// checkpoints, instead of taking the sweep's new values as its own.
#[test]
fn a_changed_sweep_meets_its_trials_as_they_trained() {
    let file = sweep_of_lr("[1e30, 0.1]");
    let dir = setup(&file);
    let small = [
        "--quiet",
        "--set",
        "dataset.train_size=128",
        "--set",
        "checkpoint.every_steps=1",
    ];
    let sweep = |extra: &[&str]| byol_run(dir.path(), &[&["sweep", "tiny.toml"][..], &small, extra].concat());
    let out = sweep(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let sweep_dir = dir.path().join("runs/tiny-sweep");
    assert!(
        has_checkpoint(&sweep_dir.join("trial-001")),
        "the diverging trial kept its checkpoint of step 1: {}",
        text(&out)
    );
    let markdown = std::fs::read_to_string(sweep_dir.join("summary.md")).unwrap();
    assert!(markdown.contains("| trial-001 | 1e30 |"), "{markdown}");
    assert!(
        markdown.contains("Run with `--set dataset.train_size=128`, `--set checkpoint.every_steps=1`.\n"),
        "the command line's settings: {markdown}"
    );
    // Run again without one of the first run's --set: the finished trial refuses it, and the
    // failed one, checked first, is still where it was (nothing moves before every trial passes).
    let out = byol_run(
        dir.path(),
        &["sweep", "tiny.toml", "--quiet", "--set", "checkpoint.every_steps=1"],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("trial-002") && all.contains("dataset.train_size"), "{all}");
    assert!(
        has_checkpoint(&sweep_dir.join("trial-001")) && !sweep_dir.join("old-attempts").exists(),
        "{all}"
    );
    // validate says so beforehand.
    let out = byol_run(
        dir.path(),
        &["validate", "tiny.toml", "--set", "checkpoint.every_steps=1"],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("warning: a start now would be refused: trial-002")
            && all.contains("dataset.train_size: 128 -> 512"),
        "{all}"
    );
    let out = sweep(&[]);
    assert!(
        text(&out).contains("== trial-001 of 2 (retrying after a failure, from its newest checkpoint)"),
        "{}",
        text(&out)
    );

    std::fs::write(dir.path().join("tiny.toml"), file.replace("1e30, 0.1", "0.05, 0.1")).unwrap();
    let validate = [&["validate", "tiny.toml"][..], &small[1..]].concat();
    let out = byol_run(dir.path(), &validate);
    let all = text(&out);
    assert!(out.status.success() && !all.contains("warning"), "{all}");
    assert!(
        all.contains(
            "note: trial-001: a start runs it anew, moving its last attempt aside into runs/tiny-sweep/old-attempts: \
             runs/tiny-sweep/trial-001 was run with other parameters (optimizer.lr = 1e30)"
        ) && all.contains("runs/tiny-sweep holds trials from before: a start skips trial-002 (finished)"),
        "{all}"
    );
    assert!(
        !sweep_dir.join("old-attempts").exists(),
        "validate moves nothing: {all}"
    );
    let out = sweep(&["--set", "run.threads=2"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("trial-001: its settings or data changed since its last attempt, which failed: starting it anew"),
        "{all}"
    );
    assert!(
        all.contains(
            "note: trial-002 finished with other settings than this sweep now gives them (run.threads: 1 -> 2)"
        ) && all.contains("trial-002: finished before, skipped"),
        "{all}"
    );
    // The summary says so too: its `--set` is not what every trial trained with.
    let markdown = std::fs::read_to_string(sweep_dir.join("summary.md")).unwrap();
    assert!(
        markdown.contains(
            "`--set run.threads=2`.\n\ntrial-002 finished before with other settings (`run.threads: 1 -> 2`), \
             which a resume may change: their results are as they trained."
        ),
        "{markdown}"
    );

    // A metric that needs what the finished trials did not measure (kNN before training): none
    // of them is ranked, then, beside a trial that measured it, they are not ranked.
    let none = file
        .replace("1e30, 0.1", "0.05, 0.1")
        .replace("before_training = false", "before_training = true")
        .replace("metric = \"knn_top1\"", "metric = \"knn_gain\"");
    std::fs::write(dir.path().join("tiny.toml"), none).unwrap();
    let out = sweep(&[]);
    let all = text(&out);
    assert!(
        all.contains(
            "(no kNN accuracy before training: eval.before_training was false when they trained), so none is \
             ranked; to train them again with it"
        ),
        "{all}"
    );
    let gain = file
        .replace("1e30, 0.1", "0.05, 0.1, 0.2")
        .replace("before_training = false", "before_training = true")
        .replace("metric = \"knn_top1\"", "metric = \"knn_gain\"");
    std::fs::write(dir.path().join("tiny.toml"), gain).unwrap();
    let out = sweep(&[]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains(
            "warning: trial-001, trial-002 finished without a value of sweep.metric = \"knn_gain\" (no kNN \
             accuracy before training"
        ),
        "{all}"
    );

    // trial-002's config.toml lost, and its value changed in the file: refused, as with it.
    std::fs::remove_file(sweep_dir.join("trial-002/config.toml")).unwrap();
    let changed = std::fs::read_to_string(dir.path().join("tiny.toml"))
        .unwrap()
        .replace("0.05, 0.1, 0.2", "0.05, 0.3, 0.2");
    std::fs::write(dir.path().join("tiny.toml"), changed).unwrap();
    let out = sweep(&[]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("trial-002") && all.contains("other parameters"), "{all}");
    let recorded = std::fs::read_to_string(sweep_dir.join("trial-002/sweep-trial.toml")).unwrap();
    assert!(
        recorded.contains("0.1"),
        "its record keeps the value it trained with: {recorded}"
    );
    // Its checkpoints lost too, its result kept: still refused, its record kept.
    std::fs::remove_dir_all(sweep_dir.join("trial-002/checkpoints")).unwrap();
    let out = sweep(&[]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("trial-002") && all.contains("other parameters"), "{all}");
    let recorded = std::fs::read_to_string(sweep_dir.join("trial-002/sweep-trial.toml")).unwrap();
    assert!(recorded.contains("0.1"), "{recorded}");
}

/// A sweep refused before any trial trains (a feature tap the backbone lacks) writes nothing; a
/// trial that never started takes mended values; values spelled otherwise (`0` for `0.0`) are
/// the same trial.
#[test]
fn mended_values_of_a_trial_that_never_ran_are_taken_and_respelled_values_are_the_same_trial() {
    let small = ["--quiet", "--set", "dataset.train_size=128"];
    let file = format!(
        "{}\"byol.embedding_layer\" = [\"avgpool\", \"block9\"]\n\"optimizer.weight_decay\" = [0]\n",
        sweep_of_lr("[0.1]")
    );
    let dir = setup(&file);
    let out = byol_run(dir.path(), &[&["sweep", "tiny.toml"][..], &small].concat());
    let all = text(&out);
    assert!(
        !out.status.success() && all.contains("no trial was run") && all.contains("block9"),
        "{all}"
    );
    let sweep_dir = dir.path().join("runs/tiny-sweep");
    assert!(
        !sweep_dir.join("trial-001").exists() && !sweep_dir.join("trial-002").exists(),
        "a refused sweep writes no trial folder: {all}"
    );

    // A trial recorded with other values that never started (its sweep was stopped before it)
    // takes the sweep's values now.
    std::fs::create_dir_all(sweep_dir.join("trial-002")).unwrap();
    std::fs::write(
        sweep_dir.join("trial-002/sweep-trial.toml"),
        "trial = 2\n[parameters]\n\"byol.embedding_layer\" = \"stem\"\n\"optimizer.lr\" = 0.1\n\"optimizer.weight_decay\" = 0\n",
    )
    .unwrap();
    let mended = file.replace("\"block9\"", "\"layer4\"");
    std::fs::write(dir.path().join("tiny.toml"), &mended).unwrap();
    let out = byol_run(dir.path(), &[&["sweep", "tiny.toml"][..], &small].concat());
    let all = text(&out);
    assert!(out.status.success(), "{all}");

    std::fs::write(dir.path().join("tiny.toml"), mended.replace("= [0]", "= [0.0]")).unwrap();
    let out = byol_run(dir.path(), &[&["sweep", "tiny.toml"][..], &small].concat());
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("trial-001: finished before, skipped") && all.contains("trial-002: finished before, skipped"),
        "{all}"
    );
}

/// Ctrl-C in a terminal signals the whole foreground process group. Trials in child processes
/// still get one signal (the sweep's), so they stop at a checkpoint instead of quitting at once,
/// and the sweep says how to resume.
#[test]
fn ctrl_c_to_a_sweep_in_child_processes_stops_every_trial_at_a_checkpoint() {
    use std::os::unix::process::CommandExt;

    let dir = setup(&TINY_SWEEP.replace("epochs = 1", "epochs = 40"));
    let sweep_dir = dir.path().join("runs/tiny-sweep");
    let child = byol_run_command(dir.path())
        .args(["sweep", "tiny.toml", "--devices", "cpu,cpu"])
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let trials = [sweep_dir.join("trial-001"), sweep_dir.join("trial-002")];
    wait_until("the trials", || trials.iter().all(|t| has_checkpoint(t)));
    send("-INT", &format!("-{}", child.id()));
    let out = child.wait_with_output().unwrap();
    let all = text(&out);
    // Stopped by Ctrl-C (128 + SIGINT), and no trial counted as failed for stopping when asked.
    assert_eq!(out.status.code(), Some(130), "{all}");
    assert!(!all.contains("failed"), "{all}");
    assert!(
        all.contains("interrupted: run the same command again to resume the sweep"),
        "{all}"
    );
    for trial in &trials {
        let log = std::fs::read_to_string(trial.join("train.log")).unwrap();
        assert!(log.contains("interrupted at step"), "saved at a step: {log}");
        assert!(!trial.join("error.txt").exists(), "{log}");
    }
}

/// The processes whose parent is `pid` (from /proc).
fn children_of(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // `pid (comm) state ppid ...`: the fields after the last ')'.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let after_name = &stat[stat.rfind(')').unwrap() + 1..];
        if after_name.split_whitespace().nth(1) == Some(pid.to_string().as_str()) {
            children.push(child);
        }
    }
    children
}

/// A job manager (Slurm's scancel, systemd's stop) sends SIGTERM to every process of the job: each
/// trial gets one directly and one passed on by the sweep. That is one request to stop, not two:
/// every trial still finishes its step and saves a checkpoint, and none is counted as failed.
/// (Steps of a quarter second or so, so that the sweep's signal comes while the trial is still in
/// its step.)
#[test]
fn sigterm_to_every_process_of_a_sweep_stops_every_trial_at_a_checkpoint() {
    let slow_steps = TINY_SWEEP
        .replace("epochs = 1", "epochs = 40")
        .replace("image_size = 16", "image_size = 32")
        .replace("width = 4", "width = 16");
    let dir = setup(&slow_steps);
    let sweep_dir = dir.path().join("runs/tiny-sweep");
    let child = byol_run_command(dir.path())
        .args(["sweep", "tiny.toml", "--devices", "cpu,cpu"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let trials = [sweep_dir.join("trial-001"), sweep_dir.join("trial-002")];
    wait_until("the trials", || trials.iter().all(|t| has_checkpoint(t)));
    let trial_processes = children_of(child.id());
    assert_eq!(trial_processes.len(), 2, "one process per trial: {trial_processes:?}");
    // One kill(1) for all three, trials first, as a job manager signals a job's processes.
    let mut targets: Vec<String> = trial_processes.iter().map(u32::to_string).collect();
    targets.push(child.id().to_string());
    Command::new("kill")
        .arg("-TERM")
        .arg("--")
        .args(&targets)
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(143), "{all}");
    assert!(!all.contains("failed"), "{all}");
    for trial in &trials {
        let log = std::fs::read_to_string(trial.join("train.log")).unwrap();
        assert!(log.contains("interrupted at step"), "saved at a step: {log}");
        assert!(!trial.join("error.txt").exists(), "{log}");
    }
}

/// SIGTERM to a sweep that trains its trials in its own process: the running trial saves a
/// checkpoint, the sweep says how to resume and exits as terminated (128 + 15), not 0, and the
/// trial is not counted as failed.
#[test]
fn sigterm_to_a_sweep_in_process_stops_the_trial_at_a_checkpoint() {
    let dir = setup(&TINY_SWEEP.replace("epochs = 1", "epochs = 40"));
    let trial = dir.path().join("runs/tiny-sweep/trial-001");
    // A trial that failed before: retried and stopped by the signal, it is unfinished again.
    std::fs::create_dir_all(&trial).unwrap();
    std::fs::write(trial.join("error.txt"), "an earlier failure\n").unwrap();
    let child = byol_run_command(dir.path())
        .args(["sweep", "tiny.toml"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the trial", || has_checkpoint(&trial));
    send("-TERM", &child.id().to_string());
    let out = child.wait_with_output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(143), "{all}");
    assert!(
        all.contains("trial-001: stopped by signal at step")
            && all.contains("interrupted: run the same command again to resume the sweep"),
        "{all}"
    );
    assert!(all.contains("retrying after a failure"), "{all}");
    assert!(
        !trial.join("error.txt").exists() && !all.contains("trials failed"),
        "{all}"
    );
    // The reason the trial was retried is kept beside it.
    let previous = std::fs::read_to_string(trial.join("previous-error.txt")).unwrap();
    assert_eq!(previous, "an earlier failure\n");
}

/// A file, or a link to a missing folder, where a trial's folder goes is named by `validate`
/// and refuses the start before any trial runs (the start failed on the OS's "File exists").
#[test]
fn a_file_in_the_way_of_a_trial_folder_is_named_before_any_trial_runs() {
    let dir = setup(&sweep_of_lr("[0.2, 0.8]"));
    let sweep_dir = dir.path().join("runs/tiny-sweep");
    std::fs::create_dir_all(&sweep_dir).unwrap();
    let in_the_way = "runs/tiny-sweep/trial-002 is in the way of trial-002: it exists and is not a folder";
    for make in ["file", "link"] {
        let trial = sweep_dir.join("trial-002");
        let _ = std::fs::remove_file(&trial);
        match make {
            "file" => std::fs::write(&trial, "notes").unwrap(),
            _ => std::os::unix::fs::symlink(dir.path().join("missing"), &trial).unwrap(),
        }
        let out = byol_run(dir.path(), &["validate", "tiny.toml"]);
        assert!(
            out.status.success() && text(&out).contains(&format!("a start now would be refused: {in_the_way}")),
            "{make}: {}",
            text(&out)
        );
        let out = byol_run(dir.path(), &["sweep", "tiny.toml"]);
        assert!(
            out.status.code() == Some(1) && text(&out).contains(in_the_way),
            "{make}: {}",
            text(&out)
        );
        assert!(!sweep_dir.join("trial-001").exists(), "{make}: {}", text(&out));
    }
}

/// A sweep folder moved while a trial trains (in process, and with trials in child processes)
/// stops the sweep: nothing is written at the old path again (no second sweep folder there with
/// the other trials and a summary), and the moved folder resumes where it is moved back.
#[test]
fn a_sweep_folder_moved_while_a_trial_trains_stops_the_sweep() {
    for devices in [&[][..], &["--devices", "cpu,cpu"]] {
        let dir = setup(&TINY_SWEEP.replace("epochs = 1", "epochs = 40"));
        let sweep_dir = dir.path().join("runs/tiny-sweep");
        let child = byol_run_command(dir.path())
            .args([&["sweep", "tiny.toml"][..], devices].concat())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_until("the first trial", || has_checkpoint(&sweep_dir.join("trial-001")));
        let moved = dir.path().join("runs/moved-sweep");
        std::fs::rename(&sweep_dir, &moved).unwrap();
        let out = child.wait_with_output().unwrap();
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{devices:?}: {all}");
        assert!(
            all.contains("the sweep folder runs/tiny-sweep was moved or replaced while this process trained in it"),
            "{devices:?}: {all}"
        );
        assert!(
            !sweep_dir.exists(),
            "{devices:?}: a sweep folder started again at the old path: {all}"
        );
        assert!(
            !moved.join("summary.csv").exists() && !moved.join("trial-001/error.txt").exists(),
            "{devices:?}: {all}"
        );
    }
}

/// A trial's folder moved while it trains: the trial stops saying so (in process, and from a
/// child process through its log, which moved with it), the other trials run, nothing is made
/// again at the old path, and the folder moved back resumes from its newest checkpoint.
#[test]
fn a_trial_folder_moved_while_it_trains_is_not_made_again_and_resumes_when_moved_back() {
    for devices in [&[][..], &["--devices", "cpu,cpu"]] {
        let dir = setup(&sweep_of_lr("[0.2, 0.8]").replace("epochs = 1", "epochs = 12"));
        let sweep_dir = dir.path().join("runs/tiny-sweep");
        let trial = sweep_dir.join("trial-001");
        let sweep = [&["sweep", "tiny.toml"][..], devices].concat();
        let child = byol_run_command(dir.path())
            .args(&sweep)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_until("the first trial", || has_checkpoint(&trial));
        let moved = dir.path().join("runs/moved-trial");
        std::fs::rename(&trial, &moved).unwrap();
        let out = child.wait_with_output().unwrap();
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{devices:?}: {all}");
        assert!(
            all.contains(
                "the trial folder runs/tiny-sweep/trial-001 was moved or replaced while this process trained in it"
            ) && all.contains("trial-001 is not there: it or its sweep folder was moved"),
            "{devices:?}: {all}"
        );
        assert!(
            !trial.exists(),
            "{devices:?}: trial-001 made again at the old path: {all}"
        );
        assert!(!moved.join("error.txt").exists(), "{devices:?}: {all}");
        assert!(has_checkpoint(&sweep_dir.join("trial-002")), "{devices:?}: {all}");
        let summary = std::fs::read_to_string(sweep_dir.join("summary.csv")).unwrap();
        let row = summary.lines().find(|l| l.contains("trial-001")).unwrap();
        assert!(row.contains(",failed,"), "{devices:?}: {summary}");

        std::fs::rename(&moved, &trial).unwrap();
        let out = byol_run(dir.path(), &sweep);
        let all = text(&out);
        assert!(
            out.status.success() && all.contains("trial-002: finished before, skipped"),
            "{devices:?}: {all}"
        );
        // Said on the console in either mode, not only in the trial's log.
        assert!(
            all.contains("trial-001 of 2") && all.contains("(resuming)"),
            "{devices:?}: {all}"
        );
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(trial.join("summary.json")).unwrap()).unwrap();
        assert!(
            summary["resumed_from_step"].as_u64().is_some_and(|step| step > 0),
            "{devices:?}: {summary}"
        );
    }
}

/// A finished trial is skipped only while the data it was trained on is the data the sweep reads:
/// ranked beside new trials, a result on other data would mix two datasets in one table.
#[test]
fn a_finished_trial_on_data_changed_since_is_refused_not_ranked() {
    let synthetic = "type = \"synthetic\"\ntrain_size = 512\ntest_size = 64\nimage_size = 16\n";
    let folder = "type = \"image_folder\"\ntrain = \"images\"\nimage_size = 16\n";
    // Without a test split there is no kNN figure to rank by.
    let file = sweep_of_lr("[0.2]").replace(synthetic, folder).replace(
        "metric = \"knn_top1\"\ngoal = \"max\"",
        "metric = \"final_loss\"\ngoal = \"min\"",
    );
    assert!(file.contains("final_loss"));
    assert!(file.contains("image_folder"));
    let dir = setup(&file);
    let image = |name: &str, width: i64| {
        let path = dir.path().join("images").join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let pixels = tch::Tensor::randint(255, [3, 20, width], (tch::Kind::Uint8, tch::Device::Cpu));
        tch::vision::image::save(&pixels, path).unwrap();
    };
    for class in ["a", "b"] {
        for i in 0..16 {
            image(&format!("{class}/{i}.png"), 20);
        }
    }
    let sweep = ["sweep", "tiny.toml", "--quiet", "--set", "schedule.batch_size=8"];
    let out = byol_run(dir.path(), &sweep);
    assert!(out.status.success(), "{}", text(&out));
    let out = byol_run(dir.path(), &sweep);
    let all = text(&out);
    assert!(
        out.status.success() && all.contains("trial-001: finished before, skipped"),
        "{all}"
    );

    // One image replaced under its own name by another of a different size.
    image("b/3.png", 28);
    let out = byol_run(dir.path(), &sweep);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("trial-001") && all.contains("finished on other data than this sweep reads now"),
        "{all}"
    );
    assert!(all.contains("train: 32 images"), "the message names the split: {all}");

    // Without its dataset.json, the data its checkpoint records is checked.
    let trial = dir.path().join("runs/tiny-sweep/trial-001");
    std::fs::remove_file(trial.join("dataset.json")).unwrap();
    let out = byol_run(dir.path(), &sweep);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("finished on other data than this sweep reads now"),
        "{all}"
    );
    // With no record of its data at all, it is ranked with a warning.
    std::fs::remove_dir_all(trial.join("checkpoints")).unwrap();
    let out = byol_run(dir.path(), &sweep);
    let all = text(&out);
    assert!(
        out.status.success() && all.contains("trial-001 finished, but its folder records no data"),
        "{all}"
    );
}

/// A trial whose folder another process owns (a `byol-run train` of that trial, here a stand-in
/// that holds its lock) fails in the sweep without the sweep writing its `error.txt` there: the
/// folder stays the other process's, and the sweep says why it left it.
#[test]
fn a_trial_folder_in_use_by_another_process_is_left_to_it() {
    let dir = setup(&sweep_of_lr("[0.2, 0.8]"));
    let trial = dir.path().join("runs/tiny-sweep/trial-001");
    std::fs::create_dir_all(&trial).unwrap();
    // An earlier failure's record, which the other process may be retrying: left as it is.
    std::fs::write(trial.join("error.txt"), "an earlier failure\n").unwrap();
    let holder_script = "import fcntl, sys\nf = open(sys.argv[1], 'a')\nfcntl.flock(f, fcntl.LOCK_EX)\n\
                  print('locked', flush=True)\nsys.stdin.read()\n";
    let mut holder = lock_holder(holder_script, &[&trial.join("run.lock")], Stdio::piped());

    // In this process, then in child processes (which write each trial's train.log).
    for devices in [None, Some("cpu,cpu")] {
        let mut args = vec!["sweep", "tiny.toml", "--quiet", "--set", "dataset.train_size=128"];
        args.extend(devices.map(|d| ["--devices", d]).into_iter().flatten());
        let out = byol_run(dir.path(), &args);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{all}");
        assert!(
            all.contains("trial-001: failed") && all.contains("in use by another byol-run"),
            "{all}"
        );
        // A sweep has no --run-dir: the way out it names is a new sweep folder.
        assert!(
            all.contains("trial folder") && all.contains("or set another run.name (a new sweep folder)"),
            "{all}"
        );
        assert!(!all.contains("--run-dir"), "{all}");
        assert!(all.contains("error.txt not written"), "{all}");
        assert!(
            all.contains("1 of 2 trials failed without a record (trial-001)"),
            "{all}"
        );
        let error = std::fs::read_to_string(trial.join("error.txt")).unwrap();
        assert_eq!(error, "an earlier failure\n", "{all}");
        // What validate and compare say meanwhile.
        let out = byol_run(dir.path(), &["validate", "tiny.toml"]);
        let all = text(&out);
        assert!(
            out.status.success()
                && all.contains(
                    "warning: trial-001: runs/tiny-sweep/trial-001 is in use by another byol-run (another process)"
                ),
            "{all}"
        );
        let out = byol_run(
            dir.path(),
            &["compare", "runs/tiny-sweep/trial-001", "runs/tiny-sweep/trial-002"],
        );
        assert!(
            text(&out).contains("runs/tiny-sweep/trial-001 is starting (another process holds it)"),
            "{}",
            text(&out)
        );
        assert!(!trial.join("previous-error.txt").exists(), "{all}");
        assert!(!trial.join("train.log").exists(), "{all}");
        assert!(
            dir.path().join("runs/tiny-sweep/trial-002/summary.json").is_file(),
            "the other trial ran: {all}"
        );
    }
    drop(holder.stdin.take());
    holder.wait().unwrap();

    // The sweep folder itself in use (another sweep): the way out is another run.name (a sweep
    // has no --run-dir).
    let sweep_dir = dir.path().join("runs/tiny-sweep");
    let mut holder = lock_holder(holder_script, &[&sweep_dir.join("run.lock")], Stdio::piped());
    let out = byol_run(dir.path(), &["validate", "tiny.toml"]);
    assert!(
        text(&out).contains(
            "warning: a start now would be refused: sweep folder runs/tiny-sweep is in use by another byol-run"
        ),
        "{}",
        text(&out)
    );
    let out = byol_run(dir.path(), &["validate", "tiny.toml", "--fresh"]);
    assert!(
        text(&out).contains("a start with --fresh now would be refused: runs/tiny-sweep is in use"),
        "{}",
        text(&out)
    );
    let out = byol_run(dir.path(), &["sweep", "tiny.toml", "--quiet"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("sweep folder runs/tiny-sweep is in use by another byol-run")
            && all.contains("or set another run.name")
            && !all.contains("--run-dir"),
        "{all}"
    );
    drop(holder.stdin.take());
    holder.wait().unwrap();
}

/// A trial whose summary records steps trained but whose checkpoints are gone: its start refuses
/// to mix a new run into those records, and validate says so for that trial, not "starts".
#[test]
fn validate_says_a_trial_whose_checkpoints_are_gone_would_fail() {
    let dir = setup(&sweep_of_lr("[0.2]"));
    let small = ["--quiet", "--set", "dataset.train_size=128"];
    let out = byol_run(dir.path(), &[&["sweep", "tiny.toml"][..], &small].concat());
    assert!(out.status.success(), "{}", text(&out));
    let trial = dir.path().join("runs/tiny-sweep/trial-001");
    let summary_file = trial.join("summary.json");
    let mut summary: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary_file).unwrap()).unwrap();
    summary["interrupted"] = serde_json::Value::Bool(true);
    std::fs::write(&summary_file, summary.to_string()).unwrap();
    std::fs::remove_dir_all(trial.join("checkpoints")).unwrap();
    let out = byol_run(dir.path(), &[&["validate", "tiny.toml"][..], &small[1..]].concat());
    let all = text(&out);
    assert!(
        all.contains(
            "warning: trial-001: a start would fail it: runs/tiny-sweep/trial-001 records a run trained to step"
        ) && !all.contains("a start starts trial-001"),
        "{all}"
    );
    let out = byol_run(dir.path(), &[&["sweep", "tiny.toml"][..], &small].concat());
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("records a run trained to step"), "{all}");
}

/// A trial that fails with --fresh as its way out (every checkpoint damaged) is started over
/// on its own as the sweep says, from its config.toml with `--fresh`, and stays its sweep's
/// trial: the old attempt goes where the sweep keeps them (not among the trials, where the sweep
/// would take it for a trial of another [sweep] table), and the new run keeps the trial's record.
#[test]
fn a_trial_trained_again_with_fresh_stays_the_sweeps_trial() {
    let dir = setup(&sweep_of_lr("[0.2]"));
    let small = ["--quiet", "--set", "dataset.train_size=128"];
    let out = byol_run(dir.path(), &[&["sweep", "tiny.toml"][..], &small].concat());
    assert!(out.status.success(), "{}", text(&out));
    let sweep_dir = dir.path().join("runs/tiny-sweep");
    let trial = sweep_dir.join("trial-001");
    std::fs::remove_file(trial.join("summary.json")).unwrap();
    for checkpoint in std::fs::read_dir(trial.join("checkpoints")).unwrap() {
        let model = checkpoint.unwrap().path().join("model.safetensors");
        if model.is_file() {
            std::fs::write(model, "damaged").unwrap();
        }
    }
    let out = byol_run(dir.path(), &[&["validate", "tiny.toml"][..], &small[1..]].concat());
    let all = text(&out);
    assert!(
        all.contains("warning: trial-001: a start would fail it again")
            && all.contains("has no intact checkpoint")
            && all.contains("`byol-run train runs/tiny-sweep/trial-001/config.toml --fresh` starts it over"),
        "{all}"
    );
    let out = byol_run(dir.path(), &[&["sweep", "tiny.toml"][..], &small].concat());
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let advice = "`byol-run train runs/tiny-sweep/trial-001/config.toml --fresh` starts trial-001 over";
    assert!(all.contains("no intact checkpoint") && all.contains(advice), "{all}");
    let out = byol_run(
        dir.path(),
        &["train", "runs/tiny-sweep/trial-001/config.toml", "--fresh", "--quiet"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("the record of the run folder")
            && text(&out).contains(": starting that run over (--fresh)"),
        "{}",
        text(&out)
    );
    let entries = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let aside = entries(&sweep_dir.join("old-attempts"));
    assert!(
        aside.len() == 1 && aside[0].starts_with("trial-001.old-"),
        "{aside:?}: {}",
        text(&out)
    );
    assert!(
        !entries(&sweep_dir).iter().any(|n| n.starts_with("trial-001.old-")),
        "{:?}",
        entries(&sweep_dir)
    );
    assert!(trial.join("sweep-trial.toml").is_file(), "{:?}", entries(&trial));
    let out = byol_run(dir.path(), &[&["sweep", "tiny.toml"][..], &small].concat());
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("trial-001: finished before, skipped") && !all.contains("not a trial"),
        "{all}"
    );
}

/// Another command that trains other settings to the end in a trial's folder while the sweep runs
/// (the sweep's own attempt found the folder in use) leaves a finished run there: its result is
/// not the trial's and is not ranked as such.
#[test]
fn a_run_of_other_settings_finished_in_a_trial_folder_during_the_sweep_is_not_ranked() {
    let dir = setup(&sweep_of_lr("[0.2, 0.8]"));
    std::fs::write(dir.path().join("plain.toml"), plain_experiment()).unwrap();
    let other = byol_run(
        dir.path(),
        &[
            "train",
            "plain.toml",
            "--quiet",
            "--set",
            "optimizer.lr=0.05",
            "--run-dir",
            "other",
        ],
    );
    assert!(other.status.success(), "{}", text(&other));

    // The other command: owns trial-001's folder from before the sweep until the sweep is at
    // trial-002, and leaves its finished run (other settings) there.
    let sweep_dir = dir.path().join("runs/tiny-sweep");
    let trial = sweep_dir.join("trial-001");
    std::fs::create_dir_all(&trial).unwrap();
    let holder = "import fcntl, os, shutil, sys, time\n\
                  trial, other, next_trial = sys.argv[1:4]\n\
                  f = open(os.path.join(trial, 'run.lock'), 'a')\n\
                  fcntl.flock(f, fcntl.LOCK_EX)\n\
                  print('locked', flush=True)\n\
                  while not os.path.isdir(os.path.join(next_trial, 'checkpoints')): time.sleep(0.01)\n\
                  for name in ['config.toml', 'summary.json']: shutil.copy(os.path.join(other, name), trial)\n";
    let other = dir.path().join("other");
    let mut holder = lock_holder(holder, &[&trial, &other, &sweep_dir.join("trial-002")], Stdio::null());

    let out = byol_run(dir.path(), &["sweep", "tiny.toml", "--quiet"]);
    assert!(holder.wait().unwrap().success());
    let all = text(&out);
    assert!(
        trial.join("summary.json").is_file(),
        "the other run is in the folder: {all}"
    );
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("trial-001: not ranked"), "{all}");
    let csv = std::fs::read_to_string(sweep_dir.join("summary.csv")).unwrap();
    let row = |id: &str| -> Vec<String> {
        let line = csv.lines().find(|l| l.split(',').nth(1) == Some(id)).unwrap();
        line.split(',').map(String::from).collect()
    };
    // rank,trial,optimizer.lr,knn_top1,status,...
    assert_eq!(row("trial-002")[0], "1", "{csv}");
    assert_eq!(
        &row("trial-001")[..5],
        ["", "trial-001", "0.2", "", "not ranked"],
        "{csv}"
    );
}

/// A run trained in the folder a sweep would use (`--run-dir runs/tiny-sweep`) is not a sweep: the
/// sweep refuses to write its trials among the run's files, and leaves it as it is.
#[test]
fn a_sweep_folder_that_holds_a_run_is_refused() {
    let dir = setup(TINY_SWEEP);
    std::fs::write(dir.path().join("plain.toml"), plain_experiment()).unwrap();
    let run = byol_run(
        dir.path(),
        &["train", "plain.toml", "--quiet", "--run-dir", "runs/tiny-sweep"],
    );
    assert!(run.status.success(), "{}", text(&run));
    let before = std::fs::read_dir(dir.path().join("runs/tiny-sweep")).unwrap().count();
    for fresh in [false, true] {
        let args: &[&str] = if fresh {
            &["sweep", "tiny.toml", "--fresh"]
        } else {
            &["sweep", "tiny.toml"]
        };
        let out = byol_run(dir.path(), args);
        let all = text(&out);
        assert!(!out.status.success(), "{all}");
        assert!(
            all.contains("sweep folder runs/tiny-sweep holds a run (its config.toml)"),
            "{all}"
        );
        let after = std::fs::read_dir(dir.path().join("runs/tiny-sweep")).unwrap().count();
        assert_eq!(after, before, "the run folder is left as it was: {all}");
    }
}

/// A `--fresh` sweep whose trials are all refused (a batch larger than the data) puts the sweep
/// folder it moved aside back: its finished trials are not lost to a start from nothing.
#[test]
fn a_refused_fresh_sweep_puts_the_previous_folder_back() {
    let dir = setup(TINY_SWEEP);
    let out = byol_run(dir.path(), &["sweep", "tiny.toml", "--quiet"]);
    assert!(out.status.success(), "{}", text(&out));
    let sweep_dir = dir.path().join("runs/tiny-sweep");
    let summary = std::fs::read(sweep_dir.join("summary.csv")).unwrap();
    let out = byol_run(
        dir.path(),
        &["sweep", "tiny.toml", "--fresh", "--set", "schedule.batch_size=100000"],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("no trial was run") && all.contains("--fresh: put the previous sweep folder back in place"),
        "{all}"
    );
    assert_eq!(std::fs::read(sweep_dir.join("summary.csv")).unwrap(), summary);
    let runs: Vec<_> = std::fs::read_dir(dir.path().join("runs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(runs, ["tiny-sweep"], "{all}");
    let out = byol_run(dir.path(), &["sweep", "tiny.toml"]);
    assert!(
        out.status.success() && !text(&out).contains("starting"),
        "every trial finished before: {}",
        text(&out)
    );
}

/// Images added to the data while a sweep runs, after trial-001 started and before trial-002 did:
/// the two trials trained on different data, and trial-001's result (on data the sweep no longer
/// reads) is not ranked beside trial-002's.
#[test]
fn a_trial_on_data_that_changed_while_the_sweep_ran_is_not_ranked() {
    let folders = "type = \"image_folder\"\ntrain = \"data/train\"\ntest = \"data/test\"\nimage_size = 16\n";
    let text_of_sweep = byol_testkit::fixtures::with_table(
        &sweep_of_lr("[0.2, 0.8]")
            .replace("epochs = 1", "epochs = 40")
            .replace("batch_size = 32", "batch_size = 8"),
        "dataset",
        folders,
    );
    let dir = setup(&text_of_sweep);
    let data = dir.path().join("data");
    random_pngs(&data.join("train"), &["a", "b"], 8);
    random_pngs(&data.join("test"), &["a", "b"], 2);
    let first = dir.path().join("runs/tiny-sweep/trial-001");
    let sweep = byol_run_command(dir.path())
        .args(["sweep", "tiny.toml", "--quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // trial-001 read the data when it started: at its first checkpoint (step 4 of 80) the sweep
    // is paused while the images change, so trial-002 starts on the new ones.
    wait_until("trial-001", || has_checkpoint(&first));
    send("-STOP", &sweep.id().to_string());
    random_pngs(&data.join("train"), &["a", "b"], 12);
    send("-CONT", &sweep.id().to_string());
    let out = sweep.wait_with_output().unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("trial-001: not ranked: it trained on data that changed while the sweep ran")
            && all.contains("train: 16 images of the same 2 classes")
            && all.contains("1 of 2 trials are not ranked (trial-001)"),
        "{all}"
    );
    let csv = std::fs::read_to_string(dir.path().join("runs/tiny-sweep/summary.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert_eq!(rows[0][..2], ["1", "trial-002"], "{csv}");
    assert_eq!(rows[1][..2], ["", "trial-001"], "{csv}");
    assert_eq!(rows[1][4], "not ranked", "{csv}");
}

/// A sweep of two learning rates over image folders in `data/`: 4 images of each of two classes
/// to train on, 2 of each to test on, a batch of 4.
fn sweep_over_image_folders() -> (tempfile::TempDir, PathBuf) {
    let folders = "type = \"image_folder\"\ntrain = \"data/train\"\ntest = \"data/test\"\nimage_size = 16\n";
    let dir = setup(&byol_testkit::fixtures::with_table(
        &sweep_of_lr("[0.2, 0.8]").replace("batch_size = 32", "batch_size = 4"),
        "dataset",
        folders,
    ));
    let data = dir.path().join("data");
    random_pngs(&data.join("train"), &["a", "b"], 4);
    random_pngs(&data.join("test"), &["a", "b"], 2);
    (dir, data)
}

/// A sweep run again over finished trials checks their data by listing it, not decoding it: a
/// folder cached in memory is not decoded a second time, and its unreadable image (skipped by the
/// trials, counted by a listing) does not make the trials look as if they trained on other data.
#[test]
fn finished_trials_are_checked_against_their_data_without_decoding_it() {
    let (dir, data) = sweep_over_image_folders();
    std::fs::write(data.join("train/a/broken.png"), b"not an image").unwrap();
    let out = byol_run(dir.path(), &["sweep", "tiny.toml", "--quiet"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert_eq!(all.matches("skipped 1 unreadable image(s) of 9").count(), 2, "{all}");

    let out = byol_run(dir.path(), &["sweep", "tiny.toml", "--quiet"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert_eq!(all.matches("finished before, skipped").count(), 2, "{all}");
    assert!(
        all.contains("reading the data to check the trials that trained before against it"),
        "{all}"
    );
    assert!(!all.contains("unreadable") && !all.contains("not ranked"), "{all}");
}

/// A trial with checkpoints is checked against the data at the sweep's start too, as a finished
/// one is: resumed on other data it would mix two datasets in one trial (and `train`'s refusal
/// would point at `--allow-change`, which a sweep does not have). One whose last attempt failed
/// starts anew instead, as it does when its settings changed.
#[test]
fn a_trial_to_resume_on_changed_data_is_refused_and_a_failed_one_starts_anew() {
    let (dir, data) = sweep_over_image_folders();
    let out = byol_run(dir.path(), &["sweep", "tiny.toml", "--quiet"]);
    assert!(out.status.success(), "{}", text(&out));

    // trial-001 stopped after its checkpoint (its summary gone), trial-002 never started; then
    // the data changed.
    let sweep_dir = dir.path().join("runs/tiny-sweep");
    let trial = sweep_dir.join("trial-001");
    std::fs::remove_file(trial.join("summary.json")).unwrap();
    std::fs::remove_dir_all(sweep_dir.join("trial-002")).unwrap();
    std::fs::copy(data.join("train/a/0.png"), data.join("train/a/extra.png")).unwrap();
    let out = byol_run(dir.path(), &["sweep", "tiny.toml", "--quiet"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("trial-001") && all.contains("trained on other data than this sweep reads now"),
        "{all}"
    );
    assert!(
        all.contains("train: 8 images") && !all.contains("--allow-change"),
        "{all}"
    );
    assert!(
        all.contains("Or move runs/tiny-sweep/trial-001 aside, and it starts anew"),
        "{all}"
    );
    assert!(has_checkpoint(&trial) && !sweep_dir.join("trial-002").exists(), "{all}");

    // The same trial after a failed attempt: moved aside and run on the data as it is now.
    std::fs::write(trial.join("error.txt"), "an earlier failure\n").unwrap();
    let out = byol_run(dir.path(), &["sweep", "tiny.toml", "--quiet"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("trial-001: its settings or data changed since its last attempt, which failed"),
        "{all}"
    );
    let attempts: Vec<_> = std::fs::read_dir(sweep_dir.join("old-attempts")).unwrap().collect();
    assert_eq!(attempts.len(), 1, "{all}");
    assert!(trial.join("summary.json").is_file(), "{all}");

    // Stopped before its first checkpoint (its data recorded), then the data changed again:
    // nothing to resume, so it starts anew on this data.
    std::fs::remove_file(trial.join("summary.json")).unwrap();
    std::fs::remove_dir_all(trial.join("checkpoints")).unwrap();
    std::fs::remove_dir_all(sweep_dir.join("trial-002")).unwrap();
    std::fs::copy(data.join("train/b/0.png"), data.join("train/b/extra.png")).unwrap();
    let out = byol_run(dir.path(), &["sweep", "tiny.toml", "--quiet"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("trial-001: its settings or data changed since its last attempt, which left no checkpoint"),
        "{all}"
    );
    assert!(trial.join("summary.json").is_file(), "{all}");
}

/// A value out of range in the last trial stops the sweep before the first trial trains (it
/// would otherwise fail only after the others trained).
#[test]
fn a_trial_of_invalid_values_stops_the_sweep_before_any_trial_trains() {
    let dir = setup(&sweep_of_lr("[0.2, -1.0]"));
    let out = byol_run(dir.path(), &["sweep", "tiny.toml", "--quiet"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("no trial was run: every trial to run must be a valid experiment")
            && all.contains("(trial-002): optimizer.lr = -1 is out of range: it must be >= 0"),
        "{all}"
    );
    // Nothing is left behind: no trial folder, and no sweep folder holding only its lock.
    let sweep_dir = dir.path().join("runs/tiny-sweep");
    assert!(!sweep_dir.exists(), "{all}");
    // A batch larger than generated data, whose size the file says, is refused so too.
    let batches = format!("{}\"schedule.batch_size\" = [32, 1024]\n", sweep_of_lr("[0.2]"));
    std::fs::write(dir.path().join("tiny.toml"), batches).unwrap();
    let out = byol_run(dir.path(), &["sweep", "tiny.toml", "--quiet"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("schedule.batch_size = 1024 must be between 1 and the 512 training images"),
        "{all}"
    );
    assert!(!sweep_dir.join("trial-001/checkpoints").exists(), "{all}");
    // Mended in the file, the trial runs with its new value.
    std::fs::write(dir.path().join("tiny.toml"), sweep_of_lr("[0.2, 0.8]")).unwrap();
    let out = byol_run(dir.path(), &["sweep", "tiny.toml", "--quiet"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// A sweep started with SIGTERM ignored keeps it ignored, but its trials do not inherit that:
/// SIGTERM is how it stops them, and how a trial stops itself at a checkpoint when the sweep is
/// killed outright (it notices within a second).
#[test]
fn trials_of_a_sweep_started_with_sigterm_ignored_still_stop_at_a_checkpoint() {
    let dir = setup(&TINY_SWEEP.replace("epochs = 1", "epochs = 40"));
    let sweep_dir = dir.path().join("runs/tiny-sweep");
    let mut sweep = super::byol_run_ignoring(dir.path(), libc::SIGTERM)
        .args(["sweep", "tiny.toml", "--devices", "cpu,cpu"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let trials = [sweep_dir.join("trial-001"), sweep_dir.join("trial-002")];
    wait_until("the trials", || trials.iter().all(|t| has_checkpoint(t)));
    let trial_processes = children_of(sweep.id());
    assert_eq!(trial_processes.len(), 2, "one process per trial: {trial_processes:?}");
    send("-9", &sweep.id().to_string());
    sweep.wait().unwrap();
    // Well before the two minutes after which a trial that cannot signal itself aborts. (An
    // orphan that exited may stay a zombie where nothing reaps it.)
    let exited = |pid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
            stat[stat.rfind(')').unwrap() + 1..].trim_start().starts_with('Z')
        })
    };
    wait_until("the trials to stop", || trial_processes.iter().all(exited));
    for trial in &trials {
        let log = std::fs::read_to_string(trial.join("train.log")).unwrap();
        assert!(log.contains("interrupted at step"), "saved at a step: {log}");
    }
}

/// A sweep ranked by top-5 kNN accuracy on data of 5 classes or fewer, where top-5 is not
/// measured: refused before any trial trains, saying why.
#[test]
fn a_sweep_whose_metric_no_trial_can_measure_is_refused_before_any_trains() {
    let three_classes = sweep_of_lr("[0.2, 0.8]")
        .replace("metric = \"knn_top1\"", "metric = \"knn_top5\"")
        .replace(
            "image_size = 16\n\n[backbone]",
            "image_size = 16\nclasses = 3\n\n[backbone]",
        );
    let dir = setup(&three_classes);
    let out = byol_run(dir.path(), &["sweep", "tiny.toml", "--quiet"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("no trial was run: sweep.metric = \"knn_top5\" cannot be measured by trial-001")
            && all.contains("5 classes or fewer"),
        "{all}"
    );
    assert!(
        !dir.path().join("runs/tiny-sweep/trial-001/config.toml").exists(),
        "{all}"
    );
    let out = byol_run(dir.path(), &["validate", "tiny.toml"]);
    assert!(text(&out).contains("cannot be measured by trial-001"), "{}", text(&out));

    // Labelled images of one class: every accuracy is 100%, whatever the metric.
    for split in ["one/train", "one/test"] {
        random_pngs(&dir.path().join(split), &["cat"], 2);
    }
    let one_class =
        sweep_of_lr("[0.2, 0.8]").replace("[eval]\n", "[eval]\ntrain = \"one/train\"\ntest = \"one/test\"\n");
    std::fs::write(dir.path().join("one.toml"), one_class).unwrap();
    let out = byol_run(dir.path(), &["validate", "one.toml"]);
    assert!(
        text(&out).contains("cannot be measured by trial-001") && text(&out).contains("of one class"),
        "{}",
        text(&out)
    );
}

/// A trial trained again outside the sweep (`byol-run train` on its folder, with a change
/// allowed): the sweep refuses it, and says that its summary files show the trial's earlier
/// result, which the trial's own summary no longer is.
#[test]
fn a_trial_trained_again_outside_the_sweep_is_said_to_be_ranked_as_it_was() {
    let dir = setup(&sweep_of_lr("[0.2]"));
    let out = byol_run(dir.path(), &["sweep", "tiny.toml", "--quiet"]);
    assert!(out.status.success(), "{}", text(&out));
    let trial = "runs/tiny-sweep/trial-001/config.toml";
    // Refused without the change allowed: --fresh would move it among its sweep's old attempts.
    let out = byol_run(dir.path(), &["train", trial, "--set", "schedule.epochs=2"]);
    assert!(
        text(&out).contains("runs/tiny-sweep/old-attempts/trial-001.old-<time>, nothing is deleted"),
        "{}",
        text(&out)
    );
    let longer = [
        "--set",
        "schedule.epochs=2",
        "--allow-change",
        "schedule.epochs",
        "--quiet",
    ];
    let out = byol_run(dir.path(), &[&["train", trial][..], &longer].concat());
    assert!(out.status.success(), "{}", text(&out));
    let out = byol_run(dir.path(), &["sweep", "tiny.toml", "--quiet"]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("schedule.epochs: 2 -> 1")
            && all.contains(
                "It was trained again after the sweep last ranked it: runs/tiny-sweep/summary.csv and summary.md \
                 show its earlier result."
            ),
        "{all}"
    );
    // Given the settings it ended with, the sweep takes it as finished but does not rank it: its
    // first epoch trained with others.
    let out = byol_run(dir.path(), &["sweep", "tiny.toml", "--set", "schedule.epochs=2"]);
    let all = text(&out);
    assert!(
        all.contains("trial-001: not ranked: it was continued with changes (--allow-change) from step")
            && all.contains("schedule.epochs: 1 -> 2, so its result is not of its parameters alone"),
        "{all}"
    );
    let markdown = std::fs::read_to_string(dir.path().join("runs/tiny-sweep/summary.md")).unwrap();
    assert!(
        markdown.contains("| - | trial-001 |") && markdown.contains("not ranked"),
        "{markdown}"
    );
    // Trained anew by hand (--fresh moves the attempt among the old ones): the way back is said.
    let fresh = ["--fresh", "--set", "schedule.epochs=2", "--quiet"];
    let out = byol_run(dir.path(), &[&["train", trial][..], &fresh].concat());
    assert!(out.status.success(), "{}", text(&out));
    let out = byol_run(dir.path(), &["sweep", "tiny.toml", "--quiet"]);
    let all = text(&out);
    assert!(
        !out.status.success()
            && all.contains("An earlier attempt of it is in runs/tiny-sweep/old-attempts/trial-001.old-"),
        "{all}"
    );
}
