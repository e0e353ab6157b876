//! `byol-run bench optim <experiment>`: the experiment's optimizer step, per tensor against fused
//! (`optimizer.fused`: over flat buffers for lars and sgd, PyTorch's fused kernel for adam), in
//! the same call: on the experiment's online network (ResNet-50 with BYOL's heads: 171 tensors)
//! and on many small tensors, where the per-tensor update is launch-bound. Each figure is the
//! fastest of `--repeats`, the two updates taking turns which runs first.

use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;
use tch::{Kind, Tensor};

use byol::{BuildContext, NamedParameter};
use byol_train::train::{parse_device, Model, StepNumerics, Weights};
use byol_train::Experiment;

use super::{machine, Common, Report};

#[derive(Args)]
pub struct OptimArgs {
    #[command(flatten)]
    common: Common,
    /// Steps run before timing.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// Timings of each update on each parameter set; the fastest counts.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// How many small tensors the second parameter set has.
    #[arg(long, default_value_t = 1000)]
    small_tensors: usize,
}

pub fn run(args: &OptimArgs) -> anyhow::Result<()> {
    if args.iters == 0 || args.repeats == 0 {
        bail!("--iters and --repeats must be at least 1");
    }
    let experiment = args.common.experiment()?;
    let variant = |fused: bool| -> anyhow::Result<Experiment> {
        let mut overrides = args.common.overrides.clone();
        overrides.push(format!("optimizer.fused={fused}"));
        Experiment::load(&args.common.experiment, &overrides).with_context(|| {
            format!(
                "optimizer type \"{}\" has no `fused` key: bench optim compares the per-tensor and the \
                 fused update of lars, sgd, adam and adamw",
                super::plugin_type(&experiment, "optimizer").unwrap_or_default()
            )
        })
    };
    let updates = [("per tensor", variant(false)?), ("fused", variant(true)?)];

    let device = parse_device(&experiment.run.device)?;
    let numerics = StepNumerics::resolve(experiment.run.precision, experiment.run.memory_format, device)?;
    tch::manual_seed(experiment.run.seed as i64);
    let context = BuildContext::new(device, experiment.augment.image_size());
    let mut model = Model::build(&experiment, &context, Weights::Initial)?;
    if numerics.channels_last {
        model = model.into_channels_last()?;
    }
    let backbone = super::plugin_type(&experiment, "backbone")?;
    let sets = [
        (format!("{backbone} online network"), model.parameters.clone()),
        (
            format!("{} small tensors", args.small_tensors),
            small_tensors(args.small_tensors, device),
        ),
    ];

    let mut report = Report::new("optim");
    report.about("experiment", args.common.experiment.display().to_string());
    report.about("machine", machine(device));
    report.about("device", byol_train::train::device_name(device));
    report.about("optimizer", super::plugin_type(&experiment, "optimizer")?);
    report.about("repeats", args.repeats);
    for (name, parameters) in &sets {
        let mut best = [f64::INFINITY; 2];
        for repeat in 0..args.repeats {
            let order = if repeat % 2 == 0 { [0, 1] } else { [1, 0] };
            for u in order {
                let seconds = time_update(&updates[u].1, parameters, &context, args)?;
                best[u] = best[u].min(seconds);
            }
        }
        let elements: i64 = parameters.iter().map(|p| p.tensor.numel() as i64).sum();
        for (u, (update, _)) in updates.iter().enumerate() {
            report.row(vec![
                ("parameters", json!(name)),
                ("tensors", json!(parameters.len())),
                ("elements", json!(elements)),
                ("update", json!(update)),
                ("ms/step", json!(best[u] * 1e3)),
            ]);
        }
        report.note(format!(
            "{name}: the fused update is {:.2}x the per-tensor one's speed",
            best[0] / best[1]
        ));
    }
    report.print(args.common.json);
    Ok(())
}

/// Seconds per optimizer step of `experiment`'s optimizer over `parameters`, after warm-up, on
/// random gradients given once. `zero_grad` is left out: it sets per-tensor gradients to None
/// (no kernel), and would leave the next step nothing to update.
fn time_update(
    experiment: &Experiment,
    parameters: &[NamedParameter],
    context: &BuildContext,
    args: &OptimArgs,
) -> anyhow::Result<f64> {
    for p in parameters {
        torch_ext::foreach::clear_grad(&p.tensor)?;
        (&p.tensor * Tensor::randn_like(&p.tensor)).sum(Kind::Float).backward();
    }
    let mut optimizer = experiment
        .optimizer
        .build(parameters.to_vec(), context)
        .context("building [optimizer]")?;
    let sync = || {
        if let tch::Device::Cuda(i) = context.device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let step = |optimizer: &mut Box<dyn byol_train::Optimizer>| optimizer.step(1e-3);
    for _ in 0..args.warmup {
        step(&mut optimizer);
    }
    sync();
    let started = Instant::now();
    for _ in 0..args.iters {
        step(&mut optimizer);
    }
    sync();
    Ok(started.elapsed().as_secs_f64() / args.iters as f64)
}

/// `count` small trainable tensors, as a model with many layers has: two in three are weight
/// matrices (decayed and, under LARS, adapted), one in three a bias (excluded).
fn small_tensors(count: usize, device: tch::Device) -> Vec<NamedParameter> {
    (0..count)
        .map(|i| {
            let shape: Vec<i64> = if i % 3 == 2 {
                vec![16 + (i % 48) as i64]
            } else {
                vec![16, 8 + (i % 56) as i64]
            };
            NamedParameter {
                name: format!("small.{i}"),
                tensor: Tensor::randn(shape.as_slice(), (Kind::Float, device)).set_requires_grad(true),
            }
        })
        .collect()
}
