//! `byol-run bench e2e <experiment>`: training steps as `byol-run train` takes them (the loader,
//! the augmentation, the step with everything training adds to it: per-step seeding, the online
//! probe, the loss watch), against the same steps on one batch loaded once, and against the
//! model step alone on random views already on the device. The first two rows differ by the
//! loader; the last two by the views and what training adds.

use std::path::Path;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;

use byol_data::Batch;
use byol_train::train::Trainer;
use byol_train::Experiment;

use super::step::{step_row, time_steps, StepEngine, Timing};
use super::{machine, plugin_type, Common, Report};

#[derive(Args)]
pub struct E2eArgs {
    #[command(flatten)]
    common: Common,
    /// Steps run before timing.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 20)]
    iters: usize,
}

/// What the training steps measured, with how the loader feeds them.
struct TrainingTimings {
    end_to_end: Timing,
    one_batch: Timing,
    batch: usize,
    input: &'static str,
}

pub fn run(args: &E2eArgs) -> anyhow::Result<()> {
    if args.iters == 0 {
        bail!("--iters must be at least 1");
    }
    let experiment = args.common.experiment()?;
    if experiment.schedule.accumulate > 1 {
        bail!("bench e2e times whole batches: set schedule.accumulate = 1 (--set schedule.accumulate=1)");
    }
    // The trainer keeps its run folder's records as training does; this one is thrown away.
    let scratch = std::env::temp_dir().join(format!("byol-bench-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).with_context(|| format!("cannot create {}", scratch.display()))?;
    let timed = time_training(&experiment, &scratch, args);
    let _ = std::fs::remove_dir_all(&scratch);
    let TrainingTimings {
        end_to_end,
        one_batch,
        batch,
        input,
    } = timed?;

    let mut engine = StepEngine::new(&experiment, None)?;
    let device = engine.device;
    let res = experiment.augment.image_size();
    let view1 = tch::Tensor::randn([batch as i64, 3, res, res], (tch::Kind::Float, device));
    let view2 = tch::Tensor::randn([batch as i64, 3, res, res], (tch::Kind::Float, device));
    let alone = engine.time(args.warmup, args.iters, |e| e.step(&view1, &view2))?;

    let mut report = Report::new("e2e");
    report.about("experiment", args.common.experiment.display().to_string());
    report.about("machine", machine(device));
    report.about("device", byol_train::train::device_name(device));
    report.about("backbone", plugin_type(&experiment, "backbone")?);
    report.about("precision", format!("{:?}", experiment.run.precision).to_lowercase());
    report.about("batch", batch);
    report.about("res", res);
    report.about("layout", engine.layout());
    report.about("input", input);
    for (who, rows_input, timing) in [
        ("end to end", input, end_to_end),
        ("training step, one batch", "one batch loaded once", one_batch),
        ("model step alone", "random views", alone),
    ] {
        let mut row = step_row(who, batch as i64, timing);
        row.insert(1, ("input", json!(rows_input)));
        report.row(row);
    }
    let loader = one_batch.seconds / end_to_end.seconds;
    report.note(format!(
        "end to end / one batch: {loader:.3}x img/s ({})",
        if loader >= 0.9 {
            "the loader keeps up"
        } else {
            "the loader slows training: more loader workers, or a dataset kept in memory"
        }
    ));
    let views = alone.seconds / one_batch.seconds;
    // The trainer builds the probe only for labelled data of several classes.
    let probe = match experiment.eval.online_probe {
        true => "the online probe where the data has labels, ",
        false => "",
    };
    report.note(format!(
        "one batch / model step alone: {views:.3}x img/s (the views, {probe}the per-step seeding and the \
         rest of the training step)"
    ));
    report.print(args.common.json);
    Ok(())
}

/// Builds the experiment's trainer in `run_dir` and times its steps on the loader's batches
/// (epoch after epoch, as training draws them), then on the last of them over and over.
fn time_training(experiment: &Experiment, run_dir: &Path, args: &E2eArgs) -> anyhow::Result<TrainingTimings> {
    let mut trainer = Trainer::new(experiment, run_dir, &[])?;
    let device = trainer.device;
    let input = if trainer.loader.is_on_device() {
        "on the device"
    } else if trainer.loader.crops.is_some() {
        "loader crops"
    } else {
        "loader workers"
    };
    let total_steps = trainer.plan.total_steps.max(1);
    let mut step = 0;
    let mut epoch = 0;
    let mut batches = trainer.loader.prefetch(epoch, 0, device);
    let mut last: Vec<Batch> = Vec::new();
    let end_to_end = time_steps(device, args.warmup, args.iters, || {
        let batch = loop {
            match batches.next() {
                Some(batch) => break batch.context("loading a batch")?,
                None => {
                    epoch += 1;
                    batches = trainer.loader.prefetch(epoch, 0, device);
                }
            }
        };
        last = vec![batch];
        trainer.step(step % total_steps, &last, false)?;
        step += 1;
        Ok(())
    })?;
    drop(batches);
    let one_batch = time_steps(device, args.warmup, args.iters, || {
        trainer.step(step % total_steps, &last, false)?;
        step += 1;
        Ok(())
    })?;
    Ok(TrainingTimings {
        end_to_end,
        one_batch,
        batch: trainer.loader.batch_size,
        input,
    })
}
