use super::{byol_run, byol_run_command, random_pngs, repo_root, text};

#[test]
fn help_lists_the_subcommands() {
    let out = byol_run(&repo_root(), &["--help"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    for sub in ["train", "validate", "plugins", "doctor", "sweep"] {
        assert!(all.contains(sub), "--help lists {sub}: {all}");
    }
}

#[test]
fn doctor_runs_from_any_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = byol_run(dir.path(), &["doctor"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("libtorch         2.11.0"), "{all}");
    assert!(
        all.contains("libtorch_cuda    loaded"),
        "the CUDA backend is linked in: {all}"
    );
    assert!(all.contains("CUDA available"), "{all}");
    // Without CUDA, the reason this machine shows.
    if !tch::Cuda::is_available() {
        let without = ["no NVIDIA driver on this machine", "the NVIDIA driver is loaded"];
        assert!(without.iter().any(|why| all.contains(why)), "{all}");
    }
    assert!(all.contains("JPEG decoder     libjpeg-turbo"), "{all}");
}

/// Every TOML block of the README (but the Cargo manifest of "As a library") parses: its tables
/// laid over the tiny experiment, as an experiment, or as a sweep when it has `[sweep]`. A key
/// renamed or a plugin `type` changed in the code fails here until the README follows.
#[test]
fn every_toml_block_of_the_readme_parses() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let mut blocks = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        if line.trim_start() == "```toml" {
            let indent = line.len() - line.trim_start().len();
            let body: Vec<&str> = lines
                .by_ref()
                .take_while(|l| l.trim_start() != "```")
                .map(|l| {
                    assert!(l.trim().is_empty() || l.len() - l.trim_start().len() >= indent, "{l:?}");
                    l.get(indent..).unwrap_or("")
                })
                .collect();
            blocks.push(body.join("\n"));
        }
    }
    let manifests = blocks.iter().filter(|b| b.contains("[dependencies]")).count();
    assert_eq!(manifests, 1, "the one Cargo manifest block");
    let experiments: Vec<&String> = blocks.iter().filter(|b| !b.contains("[dependencies]")).collect();
    assert!(experiments.len() >= 7, "{} TOML blocks", experiments.len());
    for block in experiments {
        let tables: toml::Table = toml::from_str(block).unwrap_or_else(|e| panic!("not TOML: {e}\n{block}"));
        let mut experiment: toml::Table = toml::from_str(byol_testkit::fixtures::TINY_EXPERIMENT).unwrap();
        experiment.extend(tables);
        let text = toml::to_string(&experiment).unwrap();
        let parsed = if experiment.contains_key("sweep") {
            byol_train::sweep::Sweep::parse(&text, &[], "readme").map(|_| ())
        } else {
            byol_train::Experiment::parse(&text, &[]).map(|_| ())
        };
        if let Err(e) = parsed {
            panic!("a README block does not parse: {e:#}\n{block}");
        }
    }
}

#[test]
fn every_experiment_file_validates() {
    let root = repo_root();
    let mut checked = 0;
    for entry in std::fs::read_dir(root.join("experiments")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            // `validate` lists the data (it decodes none): give it folders of one class holding a
            // batch of copies of one image, where the file expects them, in a scratch working
            // directory.
            let scratch = tempfile::tempdir().unwrap();
            let file: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let dataset = file
                .get("dataset")
                .and_then(|d| d.as_table())
                .cloned()
                .unwrap_or_default();
            let batch = file
                .get("schedule")
                .and_then(|s| s.get("batch_size"))
                .and_then(|b| b.as_integer())
                .unwrap_or(256);
            for key in ["train", "test"] {
                // With one class folder each: a test split needs labels, the same as training's.
                if let Some(folder) = dataset.get(key).and_then(|v| v.as_str()) {
                    let class = scratch.path().join(folder).join("a");
                    random_pngs(&class, &[""], 1);
                    for i in 1..batch {
                        std::fs::copy(class.join("0.png"), class.join(format!("{i}.png"))).unwrap();
                    }
                }
            }
            // And WebDataset shards where it expects them, a batch of samples in all, each the
            // same small PNG of class 0 (validate reads their headers).
            for key in ["urls", "test_urls"] {
                if let Some(urls) = dataset.get(key) {
                    let urls: byol_data::webdataset::Urls = urls.clone().try_into().unwrap();
                    let shards = urls.expand(key).unwrap();
                    let per_shard = (batch as usize).div_ceil(shards.len());
                    let png = scratch.path().join("png");
                    random_pngs(&png, &[""], 1);
                    let png = std::fs::read(png.join("0.png")).unwrap();
                    for (n, shard) in shards.iter().enumerate() {
                        let shard = scratch.path().join(shard);
                        std::fs::create_dir_all(shard.parent().unwrap()).unwrap();
                        std::fs::write(shard.parent().unwrap().join("classes.txt"), "a\n").unwrap();
                        let mut tar = byol_data::tar::TarWriter::new(Vec::new());
                        for i in 0..per_shard {
                            tar.append(&format!("{n:06}-{i:03}.png"), &png).unwrap();
                            tar.append(&format!("{n:06}-{i:03}.cls"), b"0").unwrap();
                        }
                        std::fs::write(shard, tar.finish().unwrap()).unwrap();
                    }
                }
            }
            let out = byol_run(scratch.path(), &["validate", path.to_str().unwrap()]);
            let error = String::from_utf8_lossy(&out.stderr);
            let wants_cuda = file["run"].get("device").and_then(|d| d.as_str()) == Some("cuda");
            if wants_cuda && !tch::Cuda::is_available() {
                // Everything else passed: the device is the one problem reported.
                assert_eq!(out.status.code(), Some(1), "{}: {}", path.display(), text(&out));
                assert!(
                    error.lines().count() == 1 && error.contains("CUDA is not available"),
                    "{}: {}",
                    path.display(),
                    text(&out)
                );
                // And the rest, data included, on the CPU as the README runs such a file there.
                let on_the_cpu = ["--set", "run.device=\"cpu\"", "--set", "run.precision=\"bf16\""];
                let out = byol_run(
                    scratch.path(),
                    &[&["validate", path.to_str().unwrap()][..], &on_the_cpu].concat(),
                );
                assert!(out.status.success(), "{} on the CPU: {}", path.display(), text(&out));
            } else {
                assert!(out.status.success(), "{}: {}", path.display(), text(&out));
            }
            checked += 1;
        }
    }
    assert!(checked >= 1);
}

#[test]
fn plugins_lists_every_kind_with_examples() {
    let out = byol_run(&repo_root(), &["plugins"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    for needle in [
        "[dataset]",
        "[backbone]",
        "[augment]",
        "[optimizer]",
        "synthetic",
        "image_folder",
        "resnet50",
        "tiny_cnn",
        "vit_small_patch16",
        "byol",
        "lars",
        "sgd",
    ] {
        assert!(all.contains(needle), "plugins lists {needle}: {all}");
    }
}

#[test]
fn bench_step_times_ours_and_eager_pytorch_in_the_same_call() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("r18.toml"),
        "[run]\ndevice = \"cpu\"\nthreads = 1\n[dataset]\ntype = \"synthetic\"\n[backbone]\ntype = \"resnet18\"\n\
         cifar_stem = true\n[augment]\ntype = \"byol\"\npreset = \"cifar\"\nimage_size = 16\n[optimizer]\ntype = \"lars\"\n\
         [byol]\nhidden_dim = 64\nprojection_dim = 32\n[schedule]\nbatch_size = 4\n",
    )
    .unwrap();
    let python = byol_testkit::python();
    let out = super::byol_run(
        dir.path(),
        &[
            "bench",
            "step",
            "r18.toml",
            "--warmup",
            "1",
            "--iters",
            "2",
            "--against-torch",
            python.to_str().unwrap(),
        ],
    );
    let all = super::text(&out);
    assert!(out.status.success(), "{all}");
    // One table: what was measured on what, a header, ours and the reference, the ratio.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{all}");
    for expected in [
        "bench step: ",
        "backbone resnet18 (CIFAR stem)",
        "precision fp32",
        "batch 4",
        "res 16",
    ] {
        assert!(lines[0].contains(expected), "{expected}: {all}");
    }
    assert!(
        lines[1].starts_with("who") && lines[1].contains("img/s") && lines[1].contains("peak GiB"),
        "{all}"
    );
    assert!(
        lines[2].starts_with("byol-rs ") && lines[3].starts_with("eager PyTorch "),
        "{all}"
    );
    assert!(lines[4].starts_with("byol-rs / eager PyTorch: "), "{all}");

    // The same from outside the checkout, as JSON: the script is found from the executable.
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::copy(dir.path().join("r18.toml"), elsewhere.path().join("r18.toml")).unwrap();
    let out = super::byol_run(
        elsewhere.path(),
        &[
            "bench",
            "step",
            "r18.toml",
            "--warmup",
            "1",
            "--iters",
            "2",
            "--json",
            "--against-torch",
            python.to_str().unwrap(),
        ],
    );
    let all = super::text(&out);
    assert!(out.status.success(), "{all}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["bench"], "step", "{all}");
    assert_eq!(report["layout"], "contiguous", "{all}");
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{all}");
    for (row, who) in rows.iter().zip(["byol-rs", "eager PyTorch"]) {
        assert_eq!(row["who"], who, "{all}");
        assert!(row["img/s"].as_f64().unwrap() > 0.0, "{all}");
    }

    // A reference script that is not there, or a python that cannot run it, is named before
    // ours is timed: a million steps would not end within the minute.
    let refused = |reference: &[&str]| {
        let mut child = super::byol_run_command(elsewhere.path())
            .args(["bench", "step", "r18.toml", "--iters", "1000000"])
            .args(reference)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > std::time::Duration::from_secs(60) {
                child.kill().unwrap();
                panic!("{reference:?} was not refused before timing ours");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success(), "{}", super::text(&out));
        super::text(&out)
    };
    let all = refused(&["--against-torch", "python3", "--reference-script", "nope.py"]);
    assert!(all.contains("--reference-script nope.py does not exist"), "{all}");
    let all = refused(&["--against-torch", "/nonexistent/python"]);
    assert!(all.contains("--against-torch: cannot run /nonexistent/python"), "{all}");

    // Sizes no step can take are refused before anything is built.
    for (flag, message) in [
        ("--batch=1", "at least 2 images per view"),
        ("--res=0", "at least 1 pixel"),
    ] {
        let out = super::byol_run(elsewhere.path(), &["bench", "step", "r18.toml", flag]);
        let all = super::text(&out);
        assert_eq!(out.status.code(), Some(1), "{all}");
        assert!(all.contains(message) && !all.contains("panicked"), "{all}");
    }
}

#[test]
fn bench_e2e_times_training_steps_with_and_without_the_input_path() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tiny.toml"), super::TINY).unwrap();
    // The trainer's scratch run folder goes under TMPDIR.
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let out = super::byol_run_with_env(
        dir.path(),
        &["bench", "e2e", "tiny.toml", "--warmup", "1", "--iters", "2"],
        &[("TMPDIR", tmp.to_str().unwrap())],
    );
    let all = super::text(&out);
    assert!(out.status.success(), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 7, "{all}");
    assert!(
        lines[0].starts_with("bench e2e: ") && lines[0].contains("input loader workers"),
        "synthetic data on the CPU streams: {all}"
    );
    assert!(
        lines[2].starts_with("end to end ")
            && lines[3].starts_with("training step, one batch ")
            && lines[4].starts_with("model step alone "),
        "{all}"
    );
    assert!(lines[5].starts_with("end to end / one batch: "), "{all}");
    assert!(lines[6].starts_with("one batch / model step alone: "), "{all}");
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(left.is_empty(), "the trainer's scratch run folder is removed: {left:?}");

    let out = super::byol_run(
        dir.path(),
        &["bench", "e2e", "tiny.toml", "--warmup", "1", "--iters", "2", "--json"],
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{all}");
    assert!(rows.iter().all(|row| row["img/s"].as_f64().unwrap() > 0.0), "{all}");
}

/// `bench data`: a row per worker count, 0 shown as the cores it stands for.
#[test]
fn bench_data_times_the_loader_per_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tiny.toml"), super::TINY).unwrap();
    let args = [
        "bench",
        "data",
        "tiny.toml",
        "--workers",
        "0,1",
        "--warmup",
        "1",
        "--batches",
        "2",
        "--json",
    ];
    let out = super::byol_run(dir.path(), &args);
    let all = super::text(&out);
    assert!(out.status.success(), "{all}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let workers: Vec<u64> = rows.iter().map(|row| row["workers"].as_u64().unwrap()).collect();
    let cores = std::thread::available_parallelism().unwrap().get() as u64;
    assert_eq!(workers, [cores, 1], "{all}");
    assert!(
        rows.iter().all(|row| row["loader img/s"].as_f64().unwrap() > 0.0),
        "{all}"
    );
    assert!(
        rows.iter().all(|row| row["+augment img/s"].as_f64().unwrap() > 0.0),
        "{all}"
    );
}

/// `run.cuda_graphs` on a CPU is refused before anything trains, naming the key.
#[test]
fn cuda_graphs_on_a_cpu_are_refused_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tiny.toml"), super::TINY).unwrap();
    let args = [
        "train",
        "tiny.toml",
        "--run-dir",
        "run",
        "--set",
        "run.cuda_graphs=true",
    ];
    let out = super::byol_run(dir.path(), &args);
    let all = super::text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("run.cuda_graphs = true needs a CUDA device"), "{all}");
    assert!(!all.contains("panicked"), "{all}");
    assert!(
        !dir.path().join("run/checkpoints").exists(),
        "nothing trained, nothing saved"
    );
}

/// `bench optim`: per-tensor and fused rows for the experiment's network and the small tensors.
#[test]
fn bench_optim_times_the_per_tensor_and_the_fused_update() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tiny.toml"), super::TINY).unwrap();
    let args = [
        "bench",
        "optim",
        "tiny.toml",
        "--iters",
        "2",
        "--repeats",
        "1",
        "--small-tensors",
        "30",
        "--json",
    ];
    // The experiment's own optimizer, then Adam (PyTorch's fused kernel against per tensor).
    for optimizer in [&[][..], &["--set", "optimizer={type=\"adam\"}"]] {
        let out = super::byol_run(dir.path(), &[&args[..], optimizer].concat());
        let all = super::text(&out);
        assert!(out.status.success(), "{all}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let rows = report["rows"].as_array().unwrap();
        let updates: Vec<&str> = rows.iter().map(|r| r["update"].as_str().unwrap()).collect();
        assert_eq!(updates, ["per tensor", "fused", "per tensor", "fused"], "{all}");
        assert_eq!(rows[2]["tensors"], 30, "{all}");
        assert!(rows.iter().all(|r| r["ms/step"].as_f64().unwrap() > 0.0), "{all}");
        assert_eq!(report["notes"].as_array().unwrap().len(), 2, "{all}");
    }
}

/// `bench curve`: the run with its kNN curve against the same run without, in one call.
#[test]
fn bench_curve_times_training_with_and_without_the_knn_curve() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tiny.toml"), super::TINY).unwrap();
    let out = super::byol_run(
        dir.path(),
        &[
            "bench",
            "curve",
            "tiny.toml",
            "--repeats",
            "1",
            "--json",
            "--set",
            "schedule.epochs=2",
            "--set",
            "eval.every_epochs=1",
        ],
    );
    let all = super::text(&out);
    assert!(out.status.success(), "{all}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let evaluations: Vec<i64> = rows
        .iter()
        .map(|r| r["kNN evaluations during training"].as_i64().unwrap())
        .collect();
    assert_eq!(evaluations, [0, 1], "2 epochs, one evaluation after the first: {all}");
    assert!(
        rows.iter().all(|r| r["train seconds (median)"].as_f64().unwrap() > 0.0),
        "{all}"
    );
    // The share is timed inside the run with the curve: some, never all, of its training time.
    let share: Vec<f64> = rows
        .iter()
        .map(|r| r["evaluating (share of training)"].as_f64().unwrap())
        .collect();
    assert!(share[0] == 0.0 && share[1] > 0.0 && share[1] < 1.0, "{all}");
    assert!(
        report["notes"][0].as_str().unwrap().contains("of training time"),
        "{all}"
    );
}

/// `byol-run plugins | head -2`: the reader goes away; the listing ends quietly, no panic.
#[test]
fn a_closed_pipe_ends_listings_quietly() {
    let commands: [&[&str]; 4] = [
        &["plugins"],
        &["doctor"],
        &["config", "--defaults"],
        &["validate", "experiments/quickstart.toml"],
    ];
    for args in commands {
        let command = args.join(" ");
        let mut child = byol_run_command(&repo_root())
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // closed before the first line is written
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{command}: {stderr}");
        assert!(stderr.is_empty(), "{command}: {stderr}");
    }
}

/// `byol-run exp.toml | head`: a run whose reader went away trains to the end, saves and
/// reports in summary.json, and exits 0 without a panic.
#[test]
fn a_run_whose_output_reader_went_away_trains_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tiny.toml"), super::TINY).unwrap();
    let mut child = byol_run_command(dir.path())
        .args(["tiny.toml", "--run-dir", "r", "--set", "schedule.epochs=1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(dir.path().join("r/summary.json").is_file());

    // `2>&1 | head`: warnings (a warm-up longer than the run) find no reader either.
    let mut child = byol_run_command(dir.path())
        .args(["tiny.toml", "--run-dir", "r2", "--set", "schedule.epochs=1"])
        .args(["--set", "schedule.warmup_epochs=5"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    drop(child.stderr.take());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "a panic exits 101");
    assert!(dir.path().join("r2/summary.json").is_file());
}

/// `config --defaults` shows every key the experiment parser accepts, set or commented out with
/// a value, and with those uncommented it is an experiment that parses. (The commented [sweep]
/// block at its end, for sweep files, is held to the sweep's keys by byol-train's unit tests.)
#[test]
fn config_defaults_shows_every_key_the_parser_accepts() {
    plugins_all::link();
    let out = byol_run(&repo_root(), &["config", "--defaults"]);
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8(out.stdout).unwrap();
    let (defaults, sweep) = printed
        .split_once("\n# [sweep]\n")
        .expect("the commented [sweep] block");
    assert!(sweep.contains("# [sweep.parameters]"), "{sweep}");
    let parse = |whole: toml::Table| -> Result<(), String> {
        let text = toml::to_string(&whole).map_err(|e| e.to_string())?;
        byol_train::Experiment::parse(&text, &[])
            .map(drop)
            .map_err(|e| format!("{e:#}"))
    };
    let missing = byol_testkit::keys::missing_keys(defaults, &[], &parse);
    assert!(
        missing.is_empty(),
        "config --defaults does not show {missing:?}:\n{defaults}"
    );
}

/// A mistyped command is named as one, with the closest command, not taken for the experiment
/// file (clap then blamed the next word); a second experiment file is named as one; `config`
/// needs no flag.
#[test]
fn a_mistyped_command_is_named_with_the_closest_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tiny.toml"), super::TINY).unwrap();
    let out = byol_run(dir.path(), &["trian", "tiny.toml"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("'trian' is neither a command nor an experiment file; did you mean 'train'?"),
        "{}",
        text(&out)
    );
    // Two experiment files: one at a time, said as such (clap took the second for a subcommand).
    for args in [
        &["tiny.toml", "b.toml"][..],
        &["train", "tiny.toml", "b.toml"],
        &["validate", "tiny.toml", "b.toml"],
    ] {
        let out = byol_run(dir.path(), args);
        assert!(
            out.status.code() == Some(2)
                && text(&out).contains("'b.toml' is a second experiment file: byol-run takes one experiment at a time"),
            "{args:?}: {}",
            text(&out)
        );
    }
    let out = byol_run(dir.path(), &["config"]);
    assert!(
        out.status.success() && text(&out).contains("[optimizer]"),
        "{}",
        text(&out)
    );
    // A folder given as the experiment: named as one.
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let out = byol_run(dir.path(), &["data"]);
    assert!(
        text(&out).contains("experiment file data is a folder: give the experiment's .toml file"),
        "{}",
        text(&out)
    );
}
