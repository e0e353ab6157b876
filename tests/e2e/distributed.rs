//! Data parallelism on c10d with Gloo, on localhost: two processes must train exactly like one
//! process holding the combined batch (synchronized batch norm on), under torchrun as well as
//! under a hand-set environment; losing a process ends the job clearly, and it resumes; a signal
//! to one process stops them all after the same step.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{byol_run, byol_run_command, repo_root, text};

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo_root().join("tests/e2e/data-parallel.toml"),
        dir.path().join("dp.toml"),
    )
    .unwrap();
    dir
}

/// Starts rank `rank` of `world` the way torchrun would, without torchrun.
fn spawn_rank(dir: &Path, rank: usize, world: usize, port: u16, args: &[&str]) -> Child {
    byol_run_command(dir)
        .args(args)
        .env("WORLD_SIZE", world.to_string())
        .env("RANK", rank.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start byol-run")
}

fn step_model(run_dir: &Path, step: u64) -> Vec<(String, tch::Tensor)> {
    let file = run_dir.join(format!("checkpoints/step-{step:09}/model.safetensors"));
    let mut tensors = tch::Tensor::read_safetensors(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors
}

fn max_difference(a: &[(String, tch::Tensor)], b: &[(String, tch::Tensor)]) -> (f64, String) {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            (byol_testkit::max_abs_diff(ta, tb), na.clone())
        })
        .fold((0.0, String::new()), |m, d| if d.0 > m.0 { d } else { m })
}

/// Waits until the job in `dir/job` has written its first checkpoint (step 4).
fn wait_for_first_checkpoint(dir: &Path) {
    let first = dir.join("job/checkpoints/step-000000004/manifest.json");
    let started = Instant::now();
    while !first.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint after 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn torchrun(dir: &Path, args: &[&str]) -> Output {
    Command::new(byol_testkit::python())
        .args(["-m", "torch.distributed.run", "--nproc-per-node=2", "--master-port"])
        .arg(byol_testkit::free_port().to_string())
        .args(["--no-python", env!("CARGO_BIN_EXE_byol-run")])
        .args(args)
        .current_dir(dir)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run torchrun")
}

/// Seeds of the equivalence check. Two runs that are equal in exact arithmetic differ in
/// rounding (one process convolves and reduces 32 images where each of two handles 16), and a
/// pre-activation that lands within about 1e-6 of zero can take opposite sides of a ReLU in the
/// two runs: that one element's gradient is on in one and off in the other, and batch norm spreads
/// it to a few percent of a layer's update (traced for one case to a single element of
/// `layer3.1`; the statistics, counts and all-reduces themselves matched to float64 precision).
/// Which seeds hit such a kink depends on the data, the CPU's kernels and the order of the sums:
/// on a 2-core AMD EPYC, with checkpoints after every step, seeds 3, 4 and 11 of 3-14 kinked
/// within the 8 steps (at steps 1, 6 and 7, then doubling about every step to 1e-3), and the other
/// nine stayed within 1.4e-6 at every step. So the check asks the implementation to be exact on at
/// least one of six seeds: a real defect (a missing all-reduce, a wrong count, an unsynchronized
/// layer) moves every seed, and at one kink in four seeds all six kink on some other CPU with a
/// chance of about 0.25^6 = 2e-4.
const EQUIVALENCE_SEEDS: [u64; 6] = [3, 4, 5, 6, 7, 8];
const SMALL_BUCKETS: &str = "distributed.bucket_mb=0.01";

#[test]
fn two_processes_train_like_one_process_on_the_combined_batch() {
    let dir = setup();
    let mut differences = Vec::new();
    for seed in EQUIVALENCE_SEEDS {
        let seed_flag = format!("run.seed={seed}");
        let (single, parallel) = (format!("single-{seed}"), format!("torchrun-{seed}"));
        let out = byol_run(dir.path(), &["dp.toml", "--run-dir", &single, "--set", &seed_flag]);
        assert!(out.status.success(), "{}", text(&out));
        // 10 KiB buckets: the gradients are all-reduced in many buckets while backward runs.
        let args = [
            "dp.toml",
            "--run-dir",
            &parallel,
            "--set",
            &seed_flag,
            "--set",
            SMALL_BUCKETS,
        ];
        let out = torchrun(dir.path(), &args);
        let all = text(&out);
        assert!(out.status.success(), "{all}");
        assert!(
            all.contains("and 1 more process (c10d Gloo): 256 images, batch 32, 1 epoch = 8 steps"),
            "{all}"
        );
        assert_eq!(all.matches("== summary").count(), 1, "rank 0 alone reports: {all}");
        // Measured about 1e-6 after 8 LARS steps where no kink intervenes (the same sums in another
        // order): gradients averaged, batch-norm statistics and their gradients over the global
        // batch, one shard per process.
        let reference = step_model(&dir.path().join(&single), 8);
        let (difference, name) = max_difference(&reference, &step_model(&dir.path().join(&parallel), 8));
        differences.push((seed, difference, name));
    }
    eprintln!("one process vs two, max parameter difference after 8 steps: {differences:?}");
    assert!(
        differences.iter().any(|(_, d, _)| *d <= 1e-5),
        "no seed within 1e-5: {differences:?}"
    );
    let (seed, difference, _) = differences.iter().find(|(_, d, _)| *d <= 1e-5).cloned().unwrap();
    let single = format!("single-{seed}");
    let parallel = format!("torchrun-{seed}");
    let seed_flag = format!("run.seed={seed}");
    let reference = step_model(&dir.path().join(&single), 8);

    // The kNN monitor: each process embedded a share of the splits, all gathered the whole.
    let knn = |run: &str| {
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(run).join("summary.json")).unwrap()).unwrap();
        summary["knn_after"]["top1"].as_f64().unwrap()
    };
    assert!(
        (knn(&single) - knn(&parallel)).abs() <= 1.0 / 64.0,
        "{} vs {}",
        knn(&single),
        knn(&parallel)
    );

    // One all-reduce after backward instead: with two processes each gradient is one addition
    // of two halves either way, so the parameters are bit-equal.
    let args = [
        "dp.toml",
        "--run-dir",
        "after-backward",
        "--set",
        "distributed.overlap_gradients=false",
        "--set",
        &seed_flag,
    ];
    let out = torchrun(dir.path(), &args);
    assert!(out.status.success(), "{}", text(&out));
    let overlapped = step_model(&dir.path().join(&parallel), 8);
    let (after_backward, name) = max_difference(&overlapped, &step_model(&dir.path().join("after-backward"), 8));
    assert_eq!(after_backward, 0.0, "overlapped vs after backward, at '{name}'");

    // The control: per-process batch norm sees half the batch, and the parameters part ways.
    let port = byol_testkit::free_port();
    let args = [
        "dp.toml",
        "--run-dir",
        "unsynced",
        "--set",
        "distributed.sync_batch_norm=none",
        "--set",
        &seed_flag,
    ];
    let ranks: Vec<Child> = (0..2).map(|r| spawn_rank(dir.path(), r, 2, port, &args)).collect();
    for rank in ranks {
        let out = rank.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    let (unsynced, _) = max_difference(&reference, &step_model(&dir.path().join("unsynced"), 8));
    eprintln!("unsynchronized batch norm: {unsynced}");
    assert!(
        unsynced > 100.0 * difference.max(1e-6),
        "unsynchronized BN differs by only {unsynced}"
    );
}

#[test]
fn losing_a_process_ends_the_job_clearly_and_it_resumes() {
    let dir = setup();
    let args = ["dp.toml", "--run-dir", "job", "--set", "schedule.epochs=6"];
    let port = byol_testkit::free_port();
    let mut ranks: Vec<Child> = (0..2).map(|r| spawn_rank(dir.path(), r, 2, port, &args)).collect();
    // Kill rank 1 once the first checkpoint (step 4) is on disk.
    wait_for_first_checkpoint(dir.path());
    ranks[1].kill().unwrap();
    let _ = ranks.remove(1).wait();
    let survivor = ranks.remove(0).wait_with_output().unwrap();
    let all = text(&survivor);
    assert!(!survivor.status.success(), "{all}");
    assert!(
        all.contains("another process of this data-parallel job stopped")
            && all.contains("resumes from the last checkpoint"),
        "{all}"
    );
    assert!(!all.contains("panicked"), "a clear error, not a panic: {all}");

    let port = byol_testkit::free_port();
    let ranks: Vec<Child> = (0..2).map(|r| spawn_rank(dir.path(), r, 2, port, &args)).collect();
    let outputs: Vec<Output> = ranks.into_iter().map(|r| r.wait_with_output().unwrap()).collect();
    for out in &outputs {
        assert!(out.status.success(), "{}", text(out));
    }
    let resumed = text(&outputs[0]);
    assert!(resumed.contains("resuming job from step"), "{resumed}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("job/summary.json")).unwrap()).unwrap();
    assert_eq!(summary["steps"], 48);
    assert!(summary["resumed_from_step"].as_u64().unwrap() >= 4, "{summary}");
    assert_eq!(summary["processes"], 2, "{summary}");
    assert!(
        resumed.contains("(process 0 of 2, data parallel)") && !resumed.contains("was saved by"),
        "{resumed}"
    );

    // compare tells it from one process of the same settings.
    let single = byol_run(
        dir.path(),
        &[
            "dp.toml",
            "--run-dir",
            "single",
            "--set",
            "schedule.epochs=6",
            "--quiet",
        ],
    );
    assert!(single.status.success(), "{}", text(&single));
    let compared = byol_run(dir.path(), &["compare", "job", "single", "--json"]);
    let all = text(&compared);
    assert!(compared.status.success(), "{all}");
    let json: serde_json::Value = serde_json::from_slice(&compared.stdout).unwrap();
    assert!(
        json["differing_keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k == "processes"),
        "{all}"
    );
    let processes: Vec<&serde_json::Value> = json["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["config"]["processes"])
        .collect();
    assert_eq!(processes, [2, 1], "{all}");

    // Continued by one process: said, as its draws differ from the job's; the summary says 1.
    let longer = [
        "dp.toml",
        "--run-dir",
        "job",
        "--set",
        "schedule.epochs=7",
        "--allow-change",
        "schedule.epochs",
    ];
    let alone = byol_run(dir.path(), &longer);
    let all = text(&alone);
    assert!(alone.status.success(), "{all}");
    assert!(
        all.contains("was saved by 2 process(es) and the run goes on with 1"),
        "{all}"
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("job/summary.json")).unwrap()).unwrap();
    assert_eq!(summary["processes"], 1, "{summary}");
}

/// Processes that would start from different checkpoints (each node with its own copy of the run
/// folder) are refused together, naming where each would start; before, each loaded its own and
/// they averaged gradients across two runs. A first start on node-local folders is warned about.
#[test]
fn processes_that_find_different_checkpoints_are_refused_together() {
    let dir = setup();
    let port = byol_testkit::free_port();
    let args = |run: &'static str| ["dp.toml", "--quiet", "--run-dir", run];
    let trained: Vec<Child> = (0..2)
        .map(|r| spawn_rank(dir.path(), r, 2, port, &args("job")))
        .collect();
    for out in trained.into_iter().map(|r| r.wait_with_output().unwrap()) {
        let all = text(&out);
        assert!(out.status.success(), "{all}");
        assert!(!all.contains("see another folder"), "one shared folder: {all}");
    }
    // A first start on node-local folders (here two paths) trains, and rank 0 says at once that
    // the resume would find its checkpoints on its node only.
    let port = byol_testkit::free_port();
    let ranks = [
        spawn_rank(dir.path(), 0, 2, port, &args("local-0")),
        spawn_rank(dir.path(), 1, 2, port, &args("local-1")),
    ];
    let outputs: Vec<Output> = ranks.into_iter().map(|r| r.wait_with_output().unwrap()).collect();
    for out in &outputs {
        assert!(out.status.success(), "{}", text(out));
    }
    let all = text(&outputs[0]);
    assert!(
        all.contains("warning: process(es) 1 of this data-parallel job see another folder at local-0"),
        "{all}"
    );
    let port = byol_testkit::free_port();
    let ranks = [
        spawn_rank(dir.path(), 0, 2, port, &args("job")),
        spawn_rank(dir.path(), 1, 2, port, &args("elsewhere")),
    ];
    for out in ranks.into_iter().map(|r| r.wait_with_output().unwrap()) {
        let all = text(&out);
        assert!(!out.status.success(), "{all}");
        assert!(
            all.contains("found different checkpoints to start from")
                && all.contains("process 0: step 8")
                && all.contains("process 1: no checkpoint"),
            "{all}"
        );
    }
}

/// SIGTERM to one process of a data-parallel job: every process stops after the same step (the
/// request travels with the gradients and is read at steps every process agrees on), rank 0
/// saves it, all exit with the shell's status for SIGTERM, and the job resumes from there to the
/// end.
#[test]
fn a_signal_to_one_process_stops_every_process_after_the_same_step() {
    let dir = setup();
    let args = ["dp.toml", "--run-dir", "job", "--set", "schedule.epochs=12"];
    let port = byol_testkit::free_port();
    let ranks: Vec<Child> = (0..2).map(|r| spawn_rank(dir.path(), r, 2, port, &args)).collect();
    wait_for_first_checkpoint(dir.path());
    let status = Command::new("kill")
        .args(["-TERM", &ranks[1].id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let outputs: Vec<Output> = ranks.into_iter().map(|r| r.wait_with_output().unwrap()).collect();
    // Both stopped (128 + SIGTERM), neither failed (1): had they stopped after different steps,
    // the one still training would have lost its peer and failed.
    for out in &outputs {
        assert_eq!(out.status.code(), Some(143), "{}", text(out));
    }
    let report = text(&outputs[0]);
    let line = report
        .lines()
        .find(|l| l.contains("stopped by signal after step "))
        .unwrap_or_else(|| panic!("rank 0 does not say it stopped: {report}"));
    let step: u64 = line
        .split("after step ")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(step < 96, "stopped after step {step}");
    let saved = dir.path().join(format!("job/checkpoints/step-{step:09}/manifest.json"));
    assert!(saved.exists(), "{} is missing", saved.display());

    let port = byol_testkit::free_port();
    let ranks: Vec<Child> = (0..2).map(|r| spawn_rank(dir.path(), r, 2, port, &args)).collect();
    let outputs: Vec<Output> = ranks.into_iter().map(|r| r.wait_with_output().unwrap()).collect();
    for out in &outputs {
        assert!(out.status.success(), "{}", text(out));
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("job/summary.json")).unwrap()).unwrap();
    assert_eq!(summary["steps"], 96);
    assert_eq!(summary["resumed_from_step"].as_u64(), Some(step), "{summary}");
}

/// Two processes with synchronized batch norm and one image each: every batch norm's statistics
/// are over both images, so the run trains (where one process with one image is refused).
#[test]
fn one_image_per_process_trains_with_synchronized_batch_norm() {
    let dir = setup();
    let args = [
        "dp.toml",
        "--run-dir",
        "ones",
        "--set",
        "schedule.batch_size=2",
        "--set",
        "dataset.train_size=16",
    ];
    let out = torchrun(dir.path(), &args);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("ones/summary.json")).unwrap()).unwrap();
    assert!(summary["final_loss"].as_f64().is_some_and(f64::is_finite), "{summary}");
}

#[test]
fn asking_for_nccl_without_a_gpu_says_so() {
    if tch::Cuda::is_available() {
        eprintln!("SKIPPED asking_for_nccl_without_a_gpu_says_so: this machine has a GPU");
        return;
    }
    let dir = setup();
    let args = ["dp.toml", "--set", "distributed.backend=nccl"];
    let out = spawn_rank(dir.path(), 0, 1, byol_testkit::free_port(), &args)
        .wait_with_output()
        .unwrap();
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("joining the data-parallel job (c10d, Nccl)"), "{all}");
    assert!(all.contains("GPU"), "{all}");
}

#[test]
fn the_all_reduce_during_backward_matches_the_one_after_it_with_micro_batches_and_layers_left_out() {
    // With the embedding at layer3, layer4 takes no part in the loss: both ways of averaging
    // leave it alone. With two micro-batches, the first backward accumulates locally and the
    // second's averages the sum. Two processes train alike bit for bit either way.
    let dir = setup();
    let tap = ["--set", "byol.embedding_layer=layer3", "--set", "schedule.accumulate=2"];
    let overlapped = torchrun(
        dir.path(),
        &[&["dp.toml", "--run-dir", "overlapped"][..], &tap].concat(),
    );
    assert!(overlapped.status.success(), "{}", text(&overlapped));
    let after = [
        "dp.toml",
        "--run-dir",
        "after",
        "--set",
        "distributed.overlap_gradients=false",
    ];
    let after = torchrun(dir.path(), &[&after[..], &tap].concat());
    assert!(after.status.success(), "{}", text(&after));
    let (difference, name) = max_difference(
        &step_model(&dir.path().join("overlapped"), 8),
        &step_model(&dir.path().join("after"), 8),
    );
    assert_eq!(difference, 0.0, "at '{name}'");
}

/// A conv net with a parameter that forward uses from its third call on: from the second step on
/// (forward runs once per view).
const NET_WITH_A_LATE_PARAMETER: &str = r#"
import torch

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.late = torch.nn.Parameter(torch.zeros(8))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        self.calls += 1
        y = self.conv(x).relu().mean((2, 3))
        if bool(self.calls > 2):
            y = y + self.late
        return y
"#;

#[test]
fn a_parameter_that_joins_the_loss_after_the_first_step_is_averaged_after_backward() {
    let dir = setup();
    let d = dir.path();
    std::fs::write(d.join("net_def.py"), NET_WITH_A_LATE_PARAMETER).unwrap();
    let script = format!(
        "sys.path.insert(0, {dir:?})\nfrom net_def import Net\ntorch.jit.script(Net()).save({module:?})\n",
        dir = d.to_str().unwrap(),
        module = d.join("net.pt").to_str().unwrap()
    );
    byol_testkit::run_python(&script, &[]);
    let experiment = std::fs::read_to_string(d.join("dp.toml")).unwrap().replace(
        "type = \"resnet18\"\ncifar_stem = true\nwidth = 4\n",
        "type = \"torchscript\"\npath = \"net.pt\"\ninput_size = 16\n",
    );
    let experiment = experiment.replace("[byol]\n", "[byol]\nembedding_layer = \"output\"\n");
    std::fs::write(d.join("ts.toml"), experiment).unwrap();

    // The first step leaves `late` out of the buckets; from the second on, its gradient is
    // averaged after backward, so the run matches the one that averages everything then.
    for (run, overlap) in [("overlapped", "true"), ("after", "false")] {
        let overlap = format!("distributed.overlap_gradients={overlap}");
        let out = torchrun(d, &["ts.toml", "--run-dir", run, "--set", &overlap]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let (difference, name) = max_difference(&step_model(&d.join("overlapped"), 8), &step_model(&d.join("after"), 8));
    assert_eq!(difference, 0.0, "at '{name}'");
    let late = step_model(&d.join("overlapped"), 8)
        .into_iter()
        .find(|(n, _)| n == "online.backbone.late")
        .expect("the parameter is saved")
        .1;
    assert!(
        late.abs().max().double_value(&[]) > 0.0,
        "it trained from the second step on"
    );
}

/// Processes started with different experiments (another `--set` on one node) are refused at the
/// start, process 0 naming each difference, instead of training diverging copies of the model or
/// waiting in different collectives until the timeout. Threads may differ, and the data's path
/// when the data is the same.
#[test]
fn processes_started_with_different_experiments_are_refused() {
    let dir = setup();
    let port = byol_testkit::free_port();
    let base = ["dp.toml", "--run-dir", "job", "--set", "run.threads=1"];
    let other = [
        "dp.toml",
        "--run-dir",
        "job",
        "--set",
        "run.threads=2",
        "--set",
        "optimizer.lr=0.123",
        "--set",
        "checkpoint.every_steps=5",
    ];
    let ranks = [
        spawn_rank(dir.path(), 0, 2, port, &base),
        spawn_rank(dir.path(), 1, 2, port, &other),
    ];
    let [zero, one] = ranks.map(|r| r.wait_with_output().unwrap());
    let (zero_text, one_text) = (text(&zero), text(&one));
    assert_eq!(zero.status.code(), Some(1), "{zero_text}");
    assert_eq!(one.status.code(), Some(1), "{one_text}");
    assert!(
        zero_text.contains("were started with different experiments")
            && zero_text.contains("process 1: checkpoint.every_steps: ")
            && zero_text.contains("process 1: optimizer.lr: ")
            && zero_text.contains("-> 0.123")
            && !zero_text.contains("run.threads"),
        "{zero_text}"
    );
    assert!(one_text.contains("process 0 lists the differences"), "{one_text}");

    // Node-local copies of the data under other paths are accepted when they hold the same
    // files, refused when they do not (their batches would not line up).
    super::random_pngs(&dir.path().join("a/train"), &["x", "y"], 8);
    let copied = Command::new("cp")
        .args(["-r", "a", "b"])
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(copied.success());
    super::random_pngs(&dir.path().join("c/train"), &["x", "y"], 9);
    let folder =
        |root: &str| format!("dataset={{ type = \"image_folder\", train = \"{root}/train\", image_size = 16 }}");
    let job = |other: &str, run: &str| {
        let port = byol_testkit::free_port();
        let (zero, one) = (folder("a"), folder(other));
        let args = |data: &str| {
            [
                "dp.toml",
                "--run-dir",
                run,
                "--set",
                data,
                "--set",
                "schedule.batch_size=8",
            ]
            .map(String::from)
        };
        let (zero_args, one_args) = (args(&zero), args(&one));
        let ranks = [
            spawn_rank(
                dir.path(),
                0,
                2,
                port,
                &zero_args.iter().map(String::as_str).collect::<Vec<_>>(),
            ),
            spawn_rank(
                dir.path(),
                1,
                2,
                port,
                &one_args.iter().map(String::as_str).collect::<Vec<_>>(),
            ),
        ];
        ranks.map(|r| r.wait_with_output().unwrap())
    };
    let [zero, one] = job("b", "same-data");
    assert!(
        zero.status.success() && one.status.success(),
        "{}\n{}",
        text(&zero),
        text(&one)
    );
    let [zero, _] = job("c", "other-data");
    let all = text(&zero);
    assert_eq!(zero.status.code(), Some(1), "{all}");
    assert!(
        all.contains("started with different data") && all.contains("process 1: train: 16 images"),
        "{all}"
    );
    assert!(
        !dir.path().join("job/checkpoints").exists()
            || std::fs::read_dir(dir.path().join("job/checkpoints")).unwrap().count() == 0
    );
}

/// A TorchScript module under another path on one node (a node-local copy) is accepted when it is
/// the same file, and refused naming its key when its contents differ: that process would train
/// another network under the same run. A module with batch norms of its own is said to keep their
/// statistics per process.
#[test]
fn node_local_copies_of_a_torchscript_module_must_hold_the_same_module() {
    let dir = setup();
    let d = dir.path();
    std::fs::write(d.join("net_def.py"), NET_WITH_A_LATE_PARAMETER).unwrap();
    let script = format!(
        "sys.path.insert(0, {dir:?})\nfrom net_def import Net\nfor name in ['a', 'b']:\n    \
         torch.jit.script(Net()).save({dir:?} + '/net_' + name + '.pt')\n\
         bn = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), \
         torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())\n\
         torch.jit.script(bn).save({dir:?} + '/net_bn.pt')\n",
        dir = d.to_str().unwrap(),
    );
    byol_testkit::run_python(&script, &[]);
    std::fs::copy(d.join("net_a.pt"), d.join("net_copy.pt")).unwrap();
    let experiment = std::fs::read_to_string(d.join("dp.toml")).unwrap().replace(
        "type = \"resnet18\"\ncifar_stem = true\nwidth = 4\n",
        "type = \"torchscript\"\npath = \"net_a.pt\"\ninput_size = 16\n",
    );
    let experiment = experiment.replace("[byol]\n", "[byol]\nembedding_layer = \"output\"\n");
    std::fs::write(d.join("ts.toml"), experiment).unwrap();
    let job = |other: &str, run: &str| {
        let port = byol_testkit::free_port();
        let other = format!("backbone.path=\"{other}\"");
        let ranks = [
            spawn_rank(d, 0, 2, port, &["ts.toml", "--run-dir", run]),
            spawn_rank(d, 1, 2, port, &["ts.toml", "--run-dir", run, "--set", &other]),
        ];
        ranks.map(|r| r.wait_with_output().unwrap())
    };
    let [zero, one] = job("net_copy.pt", "same");
    assert!(
        zero.status.success() && one.status.success(),
        "{}\n{}",
        text(&zero),
        text(&one)
    );
    // The batch norms inside a module run its own code: synchronized batch norm stops at them.
    assert!(!text(&zero).contains("the module's batch norms"), "{}", text(&zero));
    let [zero, _] = job("net_b.pt", "other");
    let all = text(&zero);
    assert_eq!(zero.status.code(), Some(1), "{all}");
    assert!(
        all.contains("were started with different experiments")
            && all.contains("process 1: contents.backbone.path (SHA-256): "),
        "{all}"
    );
    let port = byol_testkit::free_port();
    let with_bn = ["ts.toml", "--run-dir", "bn", "--set", "backbone.path=\"net_bn.pt\""];
    let [zero, one] = [0, 1]
        .map(|rank| spawn_rank(d, rank, 2, port, &with_bn))
        .map(|r| r.wait_with_output().unwrap());
    let all = text(&zero);
    assert!(zero.status.success() && one.status.success(), "{all}\n{}", text(&one));
    assert!(
        all.contains(
            "warning: backbone.path = net_bn.pt: the module's batch norms compute their statistics on each \
             process's share of the batch"
        ),
        "{all}"
    );
}

/// A process waiting for peers that never come (one that stopped at its start, say) ends at
/// the first SIGTERM, as torchrun sends when a worker fails, instead of waiting for a step it
/// will never train until `distributed.timeout_s`.
#[test]
fn a_process_waiting_for_its_peers_ends_at_the_first_signal() {
    let dir = setup();
    let args = ["dp.toml", "--run-dir", "job", "--set", "distributed.timeout_s=120"];
    let mut lone = spawn_rank(dir.path(), 1, 2, byol_testkit::free_port(), &args);
    // Long enough to be waiting for process 0, whose store it cannot reach.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let status = Command::new("kill")
        .args(["-TERM", &lone.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let exited = loop {
        if let Some(status) = lone.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    if exited.is_none() {
        lone.kill().unwrap();
    }
    let out = lone.wait_with_output().unwrap();
    let all = text(&out);
    assert!(exited.is_some(), "still waiting a minute after SIGTERM: {all}");
    assert!(!out.status.success(), "{all}");
    assert!(!all.contains("finishes its step"), "{all}");
}
