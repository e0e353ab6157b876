//! `byol-run bench curve <experiment>`: what the kNN curve costs. The experiment is trained
//! from scratch with its evaluations during training and without them (before and after only),
//! alternately, in the same call; each figure is the fastest of its repeats.

use anyhow::bail;
use clap::Args;
use serde_json::json;

use byol_train::{train, Experiment, RunOptions};

use super::{machine, Common, Report};

#[derive(Args)]
pub struct CurveArgs {
    #[command(flatten)]
    common: Common,
    /// Runs of each variant (alternating); the fastest of each counts.
    #[arg(long, default_value_t = 2)]
    repeats: usize,
}

pub fn run(args: &CurveArgs) -> anyhow::Result<()> {
    if args.repeats == 0 {
        bail!("--repeats must be at least 1");
    }
    let with_curve = args.common.experiment()?;
    let epochs = with_curve.schedule.epochs;
    let interval = with_curve.eval.interval_epochs(epochs);
    if interval == 0 {
        bail!(
            "{} evaluates only before and after training (eval.curve_points = 0): nothing to compare",
            args.common.experiment.display()
        );
    }
    // Evaluations during training: every `interval` epochs, the last epoch excepted (the final
    // evaluation happens in both variants).
    let points = (1..epochs).filter(|e| e % interval == 0).count();
    let mut overrides = args.common.overrides.clone();
    overrides.extend(["eval.curve_points=0".to_string(), "eval.every_epochs=0".to_string()]);
    let without = Experiment::load(&args.common.experiment, &overrides)?;

    let scratch = std::env::temp_dir().join(format!("byol-bench-curve-{}", std::process::id()));
    let mut best = [f64::INFINITY; 2];
    let mut images_per_second = [0.0; 2];
    for repeat in 0..args.repeats {
        for (i, experiment) in [&without, &with_curve].into_iter().enumerate() {
            let options = RunOptions {
                run_dir: Some(scratch.join(format!("{i}-{repeat}"))),
                quiet: true,
                ..Default::default()
            };
            let summary = train(experiment, &options);
            let _ = std::fs::remove_dir_all(scratch.join(format!("{i}-{repeat}")));
            let summary = summary?;
            if summary.train_seconds < best[i] {
                best[i] = summary.train_seconds;
                images_per_second[i] = summary.images_per_second;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);

    let device = byol_train::train::parse_device(&with_curve.run.device)?;
    let mut report = Report::new("curve");
    report.about("experiment", args.common.experiment.display().to_string());
    report.about("machine", machine(device));
    report.about("device", format!("{device:?}"));
    report.about("epochs", epochs);
    report.about("repeats", args.repeats);
    for (i, evaluations) in [0, points].into_iter().enumerate() {
        report.row(vec![
            ("kNN evaluations during training", json!(evaluations)),
            ("train seconds", json!(best[i])),
            ("img/s", json!(images_per_second[i])),
        ]);
    }
    report.note(format!(
        "the curve ({points} evaluations) costs {:+.1}% of training time (the fastest of {} runs each)",
        (best[1] / best[0] - 1.0) * 100.0,
        args.repeats
    ));
    report.print(args.common.json);
    Ok(())
}
