//! `byol-run bench curve <experiment>`: what the kNN curve costs. The experiment is trained
//! from scratch with its evaluations during training and without them (before and after only),
//! alternately, in the same call, each run a `byol-run train` process of its own (runs in one
//! process were measured to slow each other down by more than the curve costs). The cost is the share of training time the runs with the
//! curve spent evaluating, timed inside each run (the median over repeats): whole runs on a
//! shared machine vary by more than the curve costs, so the difference of the median run of
//! each variant is shown too but is the noisier figure.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;

use byol_train::sweep::median;
use byol_train::RunSummary;

use super::{machine, Common, Report};

#[derive(Args)]
pub struct CurveArgs {
    #[command(flatten)]
    common: Common,
    /// Runs of each variant, alternating which goes first.
    #[arg(long, default_value_t = 2)]
    repeats: usize,
}

pub fn run(args: &CurveArgs) -> anyhow::Result<()> {
    if args.repeats == 0 {
        bail!("--repeats must be at least 1");
    }
    let with_curve = args.common.experiment()?;
    let epochs = with_curve.schedule.epochs;
    // Evaluations during training, the last epoch excepted (the final evaluation happens in both
    // variants).
    let points = with_curve.eval.curve_epochs(epochs).len();
    if points == 0 {
        bail!(
            "{} evaluates only before and after training ({epochs} epochs, eval.curve_points = {}, \
             eval.every_epochs = {}): nothing to compare",
            args.common.experiment.display(),
            with_curve.eval.curve_points,
            with_curve.eval.every_epochs
        );
    }
    let scratch = std::env::temp_dir().join(format!("byol-bench-curve-{}", std::process::id()));
    let no_curve = ["eval.curve_points=0", "eval.every_epochs=0"];
    let mut runs: [Vec<RunSummary>; 2] = [Vec::new(), Vec::new()];
    for repeat in 0..args.repeats {
        // Without, with, with, without, ...: neither variant always runs first.
        let mut order = [0, 1];
        if repeat % 2 == 1 {
            order.reverse();
        }
        for variant in order {
            let run_dir = scratch.join(format!("{variant}-{repeat}"));
            let extra: &[&str] = if variant == 0 { &no_curve } else { &[] };
            let summary = train_in_own_process(&args.common, extra, &run_dir);
            let _ = std::fs::remove_dir_all(&run_dir);
            runs[variant].push(summary?);
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);

    let share = |run: &RunSummary| run.curve_seconds / run.train_seconds.max(1e-9);
    let median_share = median(&mut runs[1].iter().map(share).collect::<Vec<_>>());
    let median_seconds = runs
        .each_ref()
        .map(|r| median(&mut r.iter().map(|run| run.train_seconds).collect::<Vec<_>>()));
    let device = byol_train::train::parse_device(&with_curve.run.device)?;
    let mut report = Report::new("curve");
    report.about("experiment", args.common.experiment.display().to_string());
    report.about("machine", machine(device));
    report.about("device", byol_train::train::device_name(device));
    report.about("epochs", epochs);
    report.about("repeats", args.repeats);
    for (i, evaluations) in [0, points].into_iter().enumerate() {
        report.row(vec![
            ("kNN evaluations during training", json!(evaluations)),
            ("train seconds (median)", json!(median_seconds[i])),
            ("evaluating (share of training)", json!([0.0, median_share][i])),
        ]);
    }
    report.note(format!(
        "the curve ({points} evaluations) took {:.1}% of training time, timed inside the runs with it \
         (median of {}); the median runs with and without it differ by {:+.1}%",
        median_share * 100.0,
        args.repeats,
        (median_seconds[1] / median_seconds[0] - 1.0) * 100.0,
    ));
    report.print(args.common.json);
    Ok(())
}

/// Trains the bench's experiment from scratch with the extra `overrides` as `byol-run train` in a
/// process of its own, into `run_dir`, and reads its summary back.
fn train_in_own_process(common: &Common, overrides: &[&str], run_dir: &Path) -> anyhow::Result<RunSummary> {
    let mut command = Command::new(std::env::current_exe().context("locating the byol-run binary")?);
    command
        .arg("train")
        .arg(&common.experiment)
        .arg("--run-dir")
        .arg(run_dir);
    command.args(["--quiet", "--fresh"]);
    for key_value in common
        .overrides
        .iter()
        .map(String::as_str)
        .chain(overrides.iter().copied())
    {
        command.args(["--set", key_value]);
    }
    let out = command.output().context("starting byol-run train")?;
    if !out.status.success() {
        bail!(
            "byol-run train {} failed ({}):\n{}",
            common.experiment.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let path = run_dir.join(byol_train::train::SUMMARY_FILE);
    let text = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("cannot parse {}", path.display()))
}
