//! Sweeps as a library: parsing against real plugins, errors with file positions, and the ranked
//! tables (running trials is the CLI's: tests/e2e/sweep.rs).

use std::fs;

use byol_train::sweep::{self, Goal, Sweep};
use byol_train::{Experiment, RunOptions};

const BASE: &str = r#"[run]
device = "cpu"
threads = 1
output_dir = "OUT"

[dataset]
type = "synthetic"
train_size = 64
test_size = 32
image_size = 16
classes = 4

[backbone]
type = "resnet18"
cifar_stem = true
width = 4

[augment]
type = "byol"
preset = "cifar"
image_size = 16

[optimizer]
type = "sgd"
lr = 0.1

[byol]
hidden_dim = 16
projection_dim = 8

[schedule]
epochs = 1
batch_size = 32
warmup_epochs = 0

[eval]
knn_k = 5
before_training = false
"#;

fn text(out: &tempfile::TempDir, sweep_table: &str) -> String {
    plugins_all::link();
    format!("{}\n{sweep_table}", BASE.replace("OUT", out.path().to_str().unwrap()))
}

fn error(text: &str, overrides: &[&str]) -> String {
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    format!("{:#}", Sweep::parse(text, &overrides, "x").unwrap_err())
}

#[test]
fn a_sweep_file_names_its_folder_and_trials() {
    let out = tempfile::tempdir().unwrap();
    let s = Sweep::parse(
        &text(&out, "[sweep]\n[sweep.parameters]\n\"optimizer.lr\" = [0.1, 0.2]\n"),
        &[],
        "lr",
    )
    .unwrap();
    assert_eq!(s.name, "lr");
    assert_eq!(s.dir, out.path().join("lr-sweep"));
    assert_eq!(s.goal, Goal::Max, "knn_top1 by default, higher is better");
    assert_eq!(s.trial_dir(&s.trials[1]), out.path().join("lr-sweep/trial-002"));
    let experiment = s.experiment(&s.trials[1], Some("cpu")).unwrap();
    assert_eq!(experiment.run.name.as_deref(), Some("lr-trial-002"));
    assert_eq!(experiment.optimizer.lr(), 0.2);
    assert!(!s.base_text().contains("[sweep"));
    let named = Sweep::parse(
        &text(&out, "[sweep]\n[sweep.parameters]\n\"optimizer.lr\" = [0.1]\n"),
        &["run.name=\"other\"".into()],
        "lr",
    )
    .unwrap();
    assert_eq!(named.dir, out.path().join("other-sweep"));
}

#[test]
fn bad_sweeps_are_explained_with_positions() {
    let out = tempfile::tempdir().unwrap();
    let e = error(
        &text(
            &out,
            "[sweep]\nmetric = \"accuracy\"\n[sweep.parameters]\n\"optimizer.lr\" = [1]\n",
        ),
        &[],
    );
    assert!(
        e.contains("accuracy") && e.contains("knn_top1") && e.contains("(in table [sweep])"),
        "{e}"
    );
    let e = error(
        &text(&out, "[sweep]\nmethods = \"grid\"\n[sweep.parameters]\n\"a\" = [1]\n"),
        &[],
    );
    assert!(e.contains("methods"), "{e}");
    // A typo in a swept key fails before anything runs, naming the trial.
    let e = error(
        &text(&out, "[sweep]\n[sweep.parameters]\n\"optimizer.lrr\" = [0.1]\n"),
        &[],
    );
    assert!(e.contains("trial-001") && e.contains("lrr"), "{e}");
    // An error elsewhere in the file keeps its line number although [sweep] was cut out.
    let broken =
        text(&out, "[sweep]\n[sweep.parameters]\n\"optimizer.lr\" = [0.1]\n").replace("width = 4", "widht = 4");
    let e = error(&broken, &[]);
    let line = broken.lines().position(|l| l == "widht = 4").unwrap() + 1;
    assert!(e.contains(&format!("line {line}")) && e.contains("widht"), "{e}");
    let e = error(
        &text(&out, "[sweep]\n[sweep.parameters]\n\"optimizer.lr\" = [0.1]\n"),
        &["optimizer.lr=0.3"],
    );
    assert!(e.contains("'optimizer.lr' is set with --set"), "{e}");
    // [sweep] itself is the file's, whatever way its key is written.
    let lr = "[sweep]\n[sweep.parameters]\n\"optimizer.lr\" = [0.1]\n";
    for set in ["sweep.method=random", "sweep.parameters.\"optimizer.lr\"=[0.3]"] {
        let e = error(&text(&out, lr), &[set]);
        assert!(e.contains("not of [sweep]"), "{set}: {e}");
    }
    // A quoted part of a --set key is one key, as TOML reads it.
    let s = Sweep::parse(&text(&out, lr), &["\"optimizer\".\"momentum\"=0.8".into()], "x").unwrap();
    let experiment = s.experiment(&s.trials[0], None).unwrap();
    assert!(experiment.to_toml().unwrap().contains("momentum = 0.8"));
    // A key inside a table that is swept whole, and a table around a swept key: the trial's value
    // would win over the command line's unseen.
    let whole_table =
        "[sweep]\n[sweep.parameters]\n\"augment\" = [{ type = \"byol\", preset = \"cifar\", image_size = 16 }]\n";
    let e = error(&text(&out, whole_table), &["augment.image_size=32"]);
    assert!(
        e.contains("'augment.image_size' is set") && e.contains("'augment' is swept"),
        "{e}"
    );
    let swept_lr = text(&out, "[sweep]\n[sweep.parameters]\n\"optimizer.lr\" = [0.1, 0.3]\n");
    let e = error(&swept_lr, &["optimizer={ type = \"sgd\", lr = 0.1 }"]);
    assert!(e.contains("'optimizer.lr' is swept"), "{e}");
    // A table set without the swept key: each trial adds its value to it, as meant.
    let sgd = ["optimizer={ type = \"sgd\", momentum = 0.8 }".to_string()];
    let s = Sweep::parse(&swept_lr, &sgd, "x").unwrap();
    let trial = s.experiment(&s.trials[1], None).unwrap().to_toml().unwrap();
    let optimizer = &toml::from_str::<toml::Table>(&trial).unwrap()["optimizer"];
    assert_eq!(
        (
            optimizer["type"].as_str(),
            optimizer["lr"].as_float(),
            optimizer["momentum"].as_float()
        ),
        (Some("sgd"), Some(0.3), Some(0.8)),
        "{trial}"
    );
    let e = error(&text(&out, ""), &[]);
    assert!(e.contains("no [sweep] table"), "{e}");
    // The gain needs the measure before training, which BASE turns off.
    let e = error(
        &text(
            &out,
            "[sweep]
metric = \"knn_gain\"
[sweep.parameters]
\"optimizer.lr\" = [0.1]
",
        ),
        &[],
    );
    assert!(
        e.contains("trial-001 does not measure before (eval.before_training = false)"),
        "{e}"
    );
    // The probe's accuracy with the probe off.
    let e = error(
        &text(
            &out,
            "[sweep]\nmetric = \"probe_top1\"\n[sweep.parameters]\n\"optimizer.lr\" = [0.1]\n",
        ),
        &["eval.online_probe=false"],
    );
    assert!(
        e.contains("trial-001 trains no probe (eval.online_probe = false)"),
        "{e}"
    );
    // A key with spaces around a part would be a second column for the same key.
    let e = error(
        &text(
            &out,
            "[sweep]\n[sweep.parameters]\n\"optimizer.lr\" = [0.1]\n\"optimizer.lr \" = [0.3]\n",
        ),
        &[],
    );
    assert!(
        e.contains("\"optimizer.lr \": a part of the key is empty or has spaces"),
        "{e}"
    );
    // A table swept whole and a key inside it; the keys the sweep sets itself.
    let e = error(
        &text(
            &out,
            "[sweep]\n[sweep.parameters]\n\"optimizer.lr\" = [0.1, 0.3]\n\"optimizer\" = [{ type = \"sgd\", lr = 3.0 }]\n",
        ),
        &[],
    );
    assert!(
        e.contains("sweeps the table optimizer whole and optimizer.lr inside it"),
        "{e}"
    );
    for swept in ["\"run.name\" = [\"a\", \"b\"]", "\"run\" = [{ output_dir = \"o\" }]"] {
        let e = error(&text(&out, &format!("[sweep]\n[sweep.parameters]\n{swept}\n")), &[]);
        assert!(e.contains("which the sweep sets for each trial"), "{swept}: {e}");
    }
    // The plain runner refuses a sweep file, pointing at `byol-run sweep`.
    let e = format!(
        "{:#}",
        Experiment::parse(&text(&out, "[sweep]\nmethod = \"grid\"\n"), &[]).unwrap_err()
    );
    assert!(e.contains("byol-run sweep"), "{e}");
    assert!(sweep::is_sweep(&text(&out, "[sweep]\n")) && !sweep::is_sweep(BASE));
}

/// A value out of range is named where it was set: the trial's parameter, a `--set`, or
/// `--devices`, not a `--set` the user never typed.
#[test]
fn a_bad_trial_value_is_named_where_it_was_set() {
    let out = tempfile::tempdir().unwrap();
    let s = Sweep::parse(
        &text(&out, "[sweep]\n[sweep.parameters]\n\"schedule.epochs\" = [0]\n"),
        &["optimizer.lr=-1".to_string()],
        "x",
    )
    .unwrap();
    let e = format!(
        "{:#}",
        s.experiment(&s.trials[0], Some("gpu0"))
            .unwrap()
            .validate()
            .unwrap_err()
    );
    assert!(
        e.contains("sweep.parameters.\"schedule.epochs\" = 0 (trial-001): schedule.epochs = 0 is out of range"),
        "{e}"
    );
    assert!(
        e.contains("--set optimizer.lr=-1: optimizer.lr = -1 is out of range"),
        "{e}"
    );
    assert!(e.contains("--devices gpu0: "), "{e}");
}

#[test]
fn tables_rank_by_the_goal_and_quote_csv_fields() {
    let out = tempfile::tempdir().unwrap();
    let s = Sweep::parse(
        &text(
            &out,
            "[sweep]\nmetric = \"final_loss\"\n[sweep.parameters]\n\"optimizer.lr\" = [0.1, 0.2, 0.3, 0.4]\n\"dataset.classes\" = [4]\n",
        ),
        &[],
        "x,y",
    )
    .unwrap();
    assert_eq!(s.goal, Goal::Min);
    // Trial 1 really runs; its summary, with the loss set to 0.5, and a copy for trial 2 with
    // 0.25 make the ranking known. Trial 3 never runs.
    let first = s.trial_dir(&s.trials[0]);
    let options = RunOptions {
        run_dir: Some(first.clone()),
        quiet: true,
        ..Default::default()
    };
    byol_train::train(&s.experiment(&s.trials[0], None).unwrap(), &options).unwrap();
    let mut summary: serde_json::Value =
        serde_json::from_slice(&fs::read(first.join("summary.json")).unwrap()).unwrap();
    // Trial 1 ends 10 points below its untrained network, trial 2 5 points above it.
    for (trial, loss, gain) in [(&s.trials[0], 0.5, -0.1), (&s.trials[1], 0.25, 0.05)] {
        let dir = s.trial_dir(trial);
        fs::create_dir_all(&dir).unwrap();
        summary["final_loss"] = loss.into();
        let mut before = summary["knn_after"].clone();
        before["top1"] = (summary["knn_after"]["top1"].as_f64().unwrap() - gain).into();
        summary["knn_before"] = before;
        fs::write(dir.join("summary.json"), serde_json::to_vec(&summary).unwrap()).unwrap();
    }
    // Trial 3 was pruned at epoch 1 (as its run records it); trial 4 never runs.
    summary["pruned"] = serde_json::json!({
        "epoch": 1, "step": 2, "metric": "final_loss", "value": 0.9, "median": 0.5, "trials": 2
    });
    summary["steps"] = 2.into();
    // Below its untrained network when it stopped, partway: not a result to warn of.
    summary["knn_before"]["top1"] = (summary["knn_after"]["top1"].as_f64().unwrap() + 0.2).into();
    let pruned_dir = s.trial_dir(&s.trials[2]);
    fs::create_dir_all(&pruned_dir).unwrap();
    fs::write(pruned_dir.join("summary.json"), serde_json::to_vec(&summary).unwrap()).unwrap();
    let rows = sweep::rank(&s);
    let order: Vec<(Option<usize>, usize)> = rows.iter().map(|r| (r.rank, r.trial.number)).collect();
    assert_eq!(order, [(Some(1), 2), (Some(2), 1), (None, 3), (None, 4)]);
    let csv = sweep::to_csv(&s, &rows).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "rank,trial,dataset.classes,optimizer.lr,final_loss,status,run_dir,knn_before,knn_after,knn_top5,knn_gain,probe_top1,train_seconds,images_per_second,pruned_epoch"
    );
    assert!(
        lines[1].starts_with("1,trial-002,4,0.2,0.25,done,\""),
        "the folder name has a comma: {csv}"
    );
    assert!(lines[3].starts_with(",trial-003,4,0.3,,pruned,"), "{csv}");
    assert!(lines[3].ends_with(",1"), "the epoch it was pruned at: {csv}");
    assert!(lines[4].starts_with(",trial-004,4,0.4,,pending,"), "{csv}");
    let md = sweep::to_markdown(&s, &rows, &Default::default());
    assert!(
        md.contains("2 of 4 trials done, 1 pruned, ranked by final_loss (lower is better)"),
        "{md}"
    );
    // A well-formed table: the rule has a cell per header.
    let cells = |line: &str| line.matches('|').count();
    let table: Vec<&str> = md.lines().filter(|l| l.starts_with('|')).collect();
    assert!(table.iter().all(|l| cells(l) == cells(table[0])), "{md}");
    let row = |id: &str| md.lines().find(|l| l.contains(id)).unwrap().to_string();
    assert!(
        row("trial-002").starts_with("| 1 | trial-002 | 4 | 0.2 | 0.2500 | "),
        "{md}"
    );
    assert!(
        row("trial-002").contains(" | +5.0 | ") && row("trial-002").contains(" | done | "),
        "{md}"
    );
    assert!(row("trial-001").contains(" | -10.0 | "), "{md}");
    assert!(
        row("trial-003").starts_with("| - | trial-003 | 4 | 0.3 | n/a | ")
            && row("trial-003").contains(" | pruned at epoch 1 | "),
        "{md}"
    );
    assert!(
        row("trial-004").starts_with("| - | trial-004 | 4 | 0.4 | n/a | - | - | - | - | - | - | - | - | pending |"),
        "{md}"
    );
    assert!(
        md.contains("Below their untrained network's kNN accuracy") && md.trim_end().ends_with("trial-001"),
        "{md}"
    );
    // The gain's column holds the float32 digits, not the float64 noise of a difference.
    let gain = lines[1].rsplit(',').nth(4).unwrap();
    assert_eq!(gain, (0.05f32).to_string(), "{csv}");

    // Trial 4 ties with trial 2: both rank 1, the next 3.
    let tied = s.trial_dir(&s.trials[3]);
    fs::create_dir_all(&tied).unwrap();
    fs::copy(
        s.trial_dir(&s.trials[1]).join("summary.json"),
        tied.join("summary.json"),
    )
    .unwrap();
    let order: Vec<(Option<usize>, usize)> = sweep::rank(&s).iter().map(|r| (r.rank, r.trial.number)).collect();
    assert_eq!(order, [(Some(1), 2), (Some(1), 4), (Some(3), 1), (None, 3)]);
}

#[test]
fn median_pruning_needs_evaluations_during_training_and_a_metric_measured_there() {
    let out = tempfile::tempdir().unwrap();
    let table = "[sweep]\nprune = \"median\"\n[sweep.parameters]\n\"optimizer.lr\" = [0.1, 0.2]\n";
    // One epoch: the only evaluation is the final one.
    let e = error(&text(&out, table), &[]);
    assert!(
        e.contains("prune = \"median\"") && e.contains("eval.curve_points"),
        "{e}"
    );
    let two_epochs = ["schedule.epochs=2"];
    let s = Sweep::parse(&text(&out, table), &two_epochs.map(String::from), "x").unwrap();
    let pruner = s.pruner().expect("prune = median");
    assert_eq!(pruner.prune_after, sweep::DEFAULT_PRUNE_AFTER);
    assert_eq!(
        pruner.trial_dirs,
        [s.trial_dir(&s.trials[0]), s.trial_dir(&s.trials[1])]
    );
    let e = error(
        &text(
            &out,
            &table.replace("[sweep]\n", "[sweep]\nmetric = \"train_seconds\"\n"),
        ),
        &two_epochs,
    );
    assert!(e.contains("train_seconds") && e.contains("knn_top1"), "{e}");
    let e = error(
        &text(&out, &table.replace("prune = \"median\"", "prune_after = 2")),
        &two_epochs,
    );
    assert!(e.contains("prune_after") && e.contains("pruning is off"), "{e}");
    let e = error(&text(&out, &table.replace("\"median\"", "\"mean\"")), &two_epochs);
    assert!(e.contains("mean") && e.contains("median"), "{e}");
    // Epoch 1 of 2 is not comparable with epoch 1 of 4: a swept schedule.epochs is refused, and
    // so is an evaluation interval that leaves one trial without evaluations during training.
    let e = error(
        &text(
            &out,
            &table.replace("[0.1, 0.2]", "[0.1]\n\"schedule.epochs\" = [2, 4]"),
        ),
        &[],
    );
    assert!(
        e.contains("different numbers of epochs (trial-001: 2, trial-002: 4)"),
        "{e}"
    );
    let e = error(
        &text(
            &out,
            &table.replace("[0.1, 0.2]", "[0.1]\n\"eval.every_epochs\" = [1, 2]"),
        ),
        &two_epochs,
    );
    assert!(e.contains("trial-002") && e.contains("eval.curve_points"), "{e}");
}

/// A metric the trials' data cannot give (top-5 of 4 classes, kNN without test images) is
/// refused before any trial trains: they would train and rank nothing.
#[test]
fn a_metric_the_data_cannot_give_is_refused_before_any_trial_trains() {
    let out = tempfile::tempdir().unwrap();
    let parse = |metric: &str, overrides: &[&str]| {
        let table = format!("[sweep]\nmetric = \"{metric}\"\n[sweep.parameters]\n\"optimizer.lr\" = [0.1, 0.3]\n");
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        let s = Sweep::parse(&text(&out, &table), &overrides, "x").unwrap();
        let trials: Vec<&sweep::Trial> = s.trials.iter().collect();
        s.check_metric_measured(&trials).map_err(|e| format!("{e:#}"))
    };
    let e = parse("knn_top5", &[]).unwrap_err();
    assert!(
        e.contains("sweep.metric = \"knn_top5\" cannot be measured by trial-001") && e.contains("5 classes or fewer"),
        "{e}"
    );
    parse("knn_top5", &["dataset.classes=6"]).unwrap();
    let e = parse("knn_top1", &["dataset.test_size=0"]).unwrap_err();
    assert!(e.contains("it has no labelled test images"), "{e}");
    parse("knn_top1", &[]).unwrap();
    parse("final_loss", &["dataset.test_size=0"]).unwrap();
}

/// A grid cut short by `trials`, trials that repeat another's values, and pruning that can never
/// happen are warned about.
#[test]
fn a_grid_cut_short_and_repeated_values_are_warned_about() {
    let out = tempfile::tempdir().unwrap();
    let parse = |table: &str| Sweep::parse(&text(&out, table), &[], "x").unwrap().warnings;
    let warnings = parse("[sweep]\ntrials = 2\n[sweep.parameters]\n\"optimizer.lr\" = [0.1, 0.2, 0.3]\n");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("runs the first 2 of the grid's 3 combinations"),
        "{warnings:?}"
    );
    let warnings = parse("[sweep]\n[sweep.parameters]\n\"optimizer.lr\" = [0.1, 0.1]\n");
    assert_eq!(
        warnings,
        ["trial-002 has the values of trial-001 (optimizer.lr = 0.1): it trains the same experiment again"]
    );
    // 1 and 1.0 make the same experiment.
    let warnings = parse("[sweep]\n[sweep.parameters]\n\"optimizer.lr\" = [1, 1.0]\n");
    assert!(
        warnings[0].starts_with("trial-002 has the values of trial-001"),
        "{warnings:?}"
    );
    assert!(parse("[sweep]\n[sweep.parameters]\n\"optimizer.lr\" = [0.1, 0.2]\n").is_empty());
    // Median pruning that needs more other trials than the sweep has never prunes.
    let lrs = "[sweep.parameters]\n\"optimizer.lr\" = [0.1, 0.2, 0.3]\n";
    let parse = |table: &str| {
        Sweep::parse(&text(&out, table), &["schedule.epochs=4".into()], "x")
            .unwrap()
            .warnings
    };
    let warnings = parse(&format!("[sweep]\nprune = \"median\"\n{lrs}"));
    assert_eq!(
        warnings,
        [
            "sweep.prune = \"median\" judges a trial once 3 other trials have passed its evaluation, and the sweep \
          has 3 trials: none will be pruned (lower sweep.prune_after, 3 by default)"
        ]
    );
    assert!(parse(&format!("[sweep]\nprune = \"median\"\nprune_after = 2\n{lrs}")).is_empty());
}
