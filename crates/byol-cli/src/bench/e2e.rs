//! `byol-run bench e2e <experiment>`: training steps end to end (loader, augmentation, model
//! step, the experiment's optimizer) against the model step alone on device-resident views.

use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;

use byol::BuildContext;

use super::step::{step_row, StepEngine};
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

pub fn run(args: &E2eArgs) -> anyhow::Result<()> {
    use byol_train::train::{training_loader, two_views};

    if args.iters == 0 {
        bail!("--iters must be at least 1");
    }
    let experiment = args.common.experiment()?;
    if experiment.schedule.accumulate > 1 {
        bail!("bench e2e times whole batches: set schedule.accumulate = 1 (--set schedule.accumulate=1)");
    }
    let res = experiment.augment.image_size();
    let mut engine = StepEngine::new(&experiment, None)?;
    let device = engine.device;
    let context = BuildContext::new(device, res);
    let splits = experiment.dataset.build(&context).context("building [dataset]")?;
    let augment = experiment.augment.build(&context).context("building [augment]")?;
    let loader = training_loader(&experiment, &splits, device, 0, 1)?;
    let batch = loader.batch_size;
    let input = if loader.is_on_device() {
        "on the device"
    } else if loader.crops.is_some() {
        "loader crops"
    } else {
        "loader workers"
    };

    // Batches epoch after epoch, as training draws them.
    let mut epoch = 0;
    let mut batches = loader.prefetch(epoch, 0, device);
    let e2e = engine.time(args.warmup, args.iters, |engine| {
        let batch = loop {
            match batches.next() {
                Some(batch) => break batch.context("loading a batch")?,
                None => {
                    epoch += 1;
                    batches = loader.prefetch(epoch, 0, device);
                }
            }
        };
        let (view1, view2) = two_views(augment.as_ref(), &loader, &batch.images)?;
        engine.step(&view1, &view2)
    })?;
    drop(batches);
    let view1 = tch::Tensor::randn([batch as i64, 3, res, res], (tch::Kind::Float, device));
    let view2 = tch::Tensor::randn([batch as i64, 3, res, res], (tch::Kind::Float, device));
    let alone = engine.time(args.warmup, args.iters, |e| e.step(&view1, &view2))?;

    let mut report = Report::new("e2e");
    report.about("experiment", args.common.experiment.display().to_string());
    report.about("machine", machine(device));
    report.about("device", format!("{device:?}"));
    report.about("backbone", plugin_type(&experiment, "backbone")?);
    report.about("precision", format!("{:?}", experiment.run.precision).to_lowercase());
    report.about("batch", batch);
    report.about("res", res);
    report.about("layout", engine.layout());
    report.about("input", input);
    for (who, timing) in [("end to end", e2e), ("model step alone", alone)] {
        let mut row = step_row(who, batch as i64, timing);
        row.insert(
            1,
            ("input", json!(if who == "end to end" { input } else { "random views" })),
        );
        report.row(row);
    }
    let ratio = alone.seconds / e2e.seconds;
    report.note(format!(
        "end to end / model step alone: {ratio:.3}x img/s ({})",
        if ratio >= 0.9 {
            "the input path keeps up"
        } else {
            "the input path slows training: more loader workers, or a dataset kept in memory"
        }
    ));
    report.print(args.common.json);
    Ok(())
}
