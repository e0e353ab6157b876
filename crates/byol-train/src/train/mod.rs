//! The training loop: data -> two views -> BYOL step -> target EMA -> log -> evaluate ->
//! checkpoint, resuming from the run folder and stopping cleanly on SIGINT/SIGTERM.
//!
//! The loop is [`train`]; what it holds is assembled in [`trainer`], one step is [`step`], the
//! run folder's checkpoints and records are [`state`].

pub mod curve;
mod data;
mod device;
mod guard;
mod metrics;
mod model;
mod monitor;
mod progress;
pub mod state;
mod step;
mod trainer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use byol_data::Batch;

use crate::distributed::DataParallel;
use crate::knn::KnnAccuracy;
use crate::run_dir;
use crate::sweep::{Pruned, Pruner};
use crate::tensorboard::{HParamValue, ScalarLogger};
use crate::Experiment;

pub use data::{training_loader, two_views};
pub use device::{parse_device, parse_device_for};
pub use guard::panic_message;
pub use model::{Model, Weights};
pub use monitor::{embed_split, embed_split_sharded, Evaluation, NO_LABELS_NOTE};
pub use step::{Plan, StepNumerics, StepReport};

use guard::{explain_panic, guarded};
use progress::Progress;
use trainer::Trainer;

/// How to run, beyond what the experiment says.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Run folder (default: `<run.output_dir>/<run.name>`).
    pub run_dir: Option<PathBuf>,
    /// Print nothing but warnings.
    pub quiet: bool,
    /// Keys (or whole tables) allowed to differ from the experiment the run folder was trained
    /// with (`--allow-change`); see [`run_dir::check_identity`].
    pub allow_change: Vec<String>,
    /// Move an existing run folder aside (`<run>.old-<time>`) and start a new run (`--fresh`).
    pub fresh: bool,
    /// A sweep trial with median pruning: after each kNN evaluation during training, stop (with
    /// a checkpoint) when the other trials did better at the same evaluation.
    pub pruner: Option<Pruner>,
}

/// What a finished (or interrupted) run reports; saved as `summary.json` in the run folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    pub run_dir: PathBuf,
    /// This process's rank in a data-parallel job (0 otherwise); only rank 0 reports.
    #[serde(default)]
    pub rank: usize,
    pub device: String,
    pub steps: u64,
    pub total_steps: u64,
    pub epochs: u64,
    pub resumed_from_step: Option<u64>,
    /// True when SIGINT/SIGTERM stopped the run early (it resumes from `checkpoint`).
    pub interrupted: bool,
    /// Set when a sweep's median pruning stopped the run early (it resumes from `checkpoint`
    /// when trained again with `byol-run train`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned: Option<Pruned>,
    pub final_loss: Option<f64>,
    /// Absent when the run has no labelled images to evaluate on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knn_before: Option<KnnAccuracy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knn_after: Option<KnnAccuracy>,
    /// The online probe's top-1 on the kNN queries (held-out images) at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_top1_after: Option<f64>,
    pub train_seconds: f64,
    pub images_per_second: f64,
    pub checkpoint: PathBuf,
}

/// Trains `experiment` to the end, resuming from the run folder's newest intact checkpoint.
/// SIGINT/SIGTERM finish the current step, save a checkpoint and return early.
pub fn train(experiment: &Experiment, options: &RunOptions) -> anyhow::Result<RunSummary> {
    experiment.validate()?;
    let run_dir = options
        .run_dir
        .clone()
        .unwrap_or_else(|| experiment.run.output_dir.join(experiment.name()));
    // Held until the run returns; the kernel releases it if the process dies.
    let main = DataParallel::rendezvous(&experiment.distributed)?.is_none_or(|r| r.rank == 0);
    let (_owner, moved_aside) = run_dir::take_ownership(&run_dir, main, options.fresh)?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing the signal handler")?;
    }
    let mut t = Trainer::new(experiment, &run_dir, &options.allow_change)?;
    let quiet = options.quiet || !t.is_main();
    let say = |line: String| {
        if !quiet {
            println!("{line}");
        }
    };
    if !t.monitor.has_knn() && !t.splits.train.is_labelled() {
        say(format!("note: {NO_LABELS_NOTE}"));
    }
    if let Some(old) = moved_aside {
        say(format!(
            "--fresh: moved the previous run folder aside to {}",
            old.display()
        ));
    }
    let (plan, schedule) = (t.plan.clone(), &experiment.schedule);
    let mut step = t.resumed_from.unwrap_or(0);
    if let Some(step) = t.resumed_from {
        say(format!(
            "resuming {} from step {step} of {}",
            run_dir.display(),
            plan.total_steps
        ));
    }
    let mut logger = if t.is_main() {
        let dir = run_dir.join("tensorboard");
        ScalarLogger::create(&dir).with_context(|| format!("cannot open a TensorBoard log in {}", dir.display()))?
    } else {
        ScalarLogger::disabled()
    };
    logger.text("config", &format!("```toml\n{}\n```", experiment.to_toml()?), step);
    logger.session_start(&hparams(experiment)?);
    let log_evaluation = |logger: &mut ScalarLogger, evaluation: &Option<Evaluation>, step: u64| {
        if let Some(e) = evaluation {
            logger.scalar("knn/top1", e.knn.top1, step);
            logger.scalar("knn/top5", e.knn.top5, step);
            if let Some(top1) = e.probe_top1.filter(|_| step > 0) {
                logger.scalar("probe/top1", top1, step);
            }
        }
    };
    let before = if experiment.eval.before_training && step == 0 {
        let evaluation = t.evaluate()?;
        if let Some(a) = evaluation.map(|e| e.knn) {
            say(format!(
                "kNN before training: top-1 {:.1}%  top-5 {:.1}%",
                a.top1 * 100.0,
                a.top5 * 100.0
            ));
        }
        log_evaluation(&mut logger, &evaluation, 0);
        record_curve(&t, &run_dir, &evaluation, 0, None, None)?;
        evaluation
    } else {
        None
    };
    if experiment.logging.view_grid && step == 0 && t.is_main() {
        t.log_view_grid(&mut logger)?;
    }
    say(describe_run(&t));

    let progress = Progress::new(plan.total_steps, step, quiet);
    let (started, start_step) = (Instant::now(), step);
    let mut final_loss = None;
    let mut window = (Instant::now(), 0u64);
    let every = |n: u64, step: u64| n > 0 && step.is_multiple_of(n);
    let mut interrupted = false;
    let mut pruned = None;
    'epochs: while step < plan.total_steps {
        let epoch = plan.epoch_of(step);
        // Worker threads decode the next batches while the device trains on this one.
        let done_in_epoch = step % plan.steps_per_epoch;
        let mut batches = t
            .loader
            .prefetch(epoch, done_in_epoch as usize * plan.accumulate, t.device);
        for _ in done_in_epoch..plan.steps_per_epoch {
            let group = batches
                .by_ref()
                .take(plan.accumulate)
                .collect::<Result<Vec<Batch>, _>>()
                .with_context(|| format!("loading the batches of step {}", step + 1))?;
            if group.len() < plan.accumulate {
                break;
            }
            let stop_requested = stop.load(Ordering::Relaxed);
            let report = match guarded(|| t.step(step, &group, stop_requested)) {
                Ok(report) => report?,
                Err(panic) => return Err(explain_panic(panic, schedule.batch_size, plan.accumulate)),
            };
            if !report.loss.is_finite() {
                bail!(
                    "the loss became {} at step {}; {} (lower optimizer.lr, or check the data)",
                    report.loss,
                    step + 1,
                    t.kept()
                );
            }
            step += 1;
            window.1 += schedule.batch_size as u64;
            if every(experiment.logging.every_steps.max(1), step) || step == plan.total_steps {
                let images_per_second = window.1 as f64 / window.0.elapsed().as_secs_f64().max(1e-9);
                window = (Instant::now(), 0);
                t.log_scalars(&mut logger, step, &report, images_per_second)?;
                progress.update(
                    step,
                    format!(
                        "epoch {:>3}/{} step {step:>6}/{} loss {:.4} lr {:.4} tau {:.5} img/s {images_per_second:.0}",
                        epoch + 1,
                        schedule.epochs,
                        plan.total_steps,
                        report.loss,
                        report.lr,
                        report.tau,
                    ),
                );
                final_loss = Some(report.loss);
            } else {
                progress.tick(step);
            }
            if report.stop {
                interrupted = true;
                break 'epochs;
            }
            if every(experiment.checkpoint.every_steps, step) && step < plan.total_steps {
                t.save(step)?;
            }
        }
        let epochs_done = plan.epoch_of(step);
        let epoch_end = step.is_multiple_of(plan.steps_per_epoch);
        let interval = experiment.eval.interval_epochs(schedule.epochs);
        if epoch_end && every(interval, epochs_done) && step < plan.total_steps {
            let evaluation = t.evaluate()?;
            if let Some(e) = &evaluation {
                let probe = e
                    .probe_top1
                    .map_or(String::new(), |p| format!(", online probe {:.1}%", p * 100.0));
                progress.line(format!(
                    "kNN after epoch {epochs_done}: top-1 {:.1}%{probe}",
                    e.knn.top1 * 100.0
                ));
            }
            log_evaluation(&mut logger, &evaluation, step);
            pruned = record_curve(&t, &run_dir, &evaluation, step, final_loss, options.pruner.as_ref())?;
            if let Some(p) = &pruned {
                progress.line(format!("pruned: {}", p.describe()));
                break 'epochs;
            }
        }
    }
    progress.finish();
    let train_seconds = started.elapsed().as_secs_f64();
    let checkpoint = t.save(step)?;
    if interrupted {
        say(format!(
            "stopped by signal after step {step}; saved {} (run again to resume)",
            checkpoint.display()
        ));
    }
    if pruned.is_some() {
        say(format!(
            "stopped after step {step} by the sweep's median pruning; saved {} (train again to go on)",
            checkpoint.display()
        ));
    }
    let stopped_early = interrupted || pruned.is_some();
    let after = if stopped_early { None } else { t.evaluate()? };
    log_evaluation(&mut logger, &after, step);
    record_curve(&t, &run_dir, &after, step, final_loss, None)?;
    if let (Some(before), Some(after)) = (&before, &after) {
        logger.scalar("knn/gain", after.knn.top1 - before.knn.top1, step);
    }
    if !stopped_early {
        logger.session_end();
    }
    drop(logger);
    let summary = RunSummary {
        run_dir: run_dir.clone(),
        rank: t.rank() as usize,
        device: format!("{:?}", t.device),
        steps: step,
        total_steps: plan.total_steps,
        epochs: schedule.epochs,
        resumed_from_step: t.resumed_from,
        interrupted,
        pruned,
        final_loss,
        knn_before: before.map(|e| e.knn),
        knn_after: after.map(|e| e.knn),
        probe_top1_after: after.and_then(|e| e.probe_top1),
        train_seconds,
        images_per_second: ((step - start_step) * schedule.batch_size as u64) as f64 / train_seconds.max(1e-9),
        checkpoint,
    };
    if t.is_main() {
        let path = run_dir.join("summary.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(summary)
}

/// Adds an evaluation to the run folder's kNN curve (rank 0 of a data-parallel run does), then
/// asks `pruner` whether the run stops here. A data-parallel run is never pruned: rank 0 alone
/// would stop while its peers wait for it.
fn record_curve(
    t: &Trainer<'_>,
    run_dir: &std::path::Path,
    evaluation: &Option<Evaluation>,
    step: u64,
    loss: Option<f64>,
    pruner: Option<&Pruner>,
) -> anyhow::Result<Option<Pruned>> {
    let Some(evaluation) = evaluation.as_ref().filter(|_| t.is_main()) else {
        return Ok(None);
    };
    let point = curve::CurvePoint::new(evaluation, t.plan.epoch_of(step), step, loss);
    let curve = curve::record_point(run_dir, point)?;
    match pruner {
        Some(pruner) if t.parallel.is_none() => pruner.judge(run_dir, &curve),
        _ => Ok(None),
    }
}

/// "training NAME on DEVICE: N images, batch B, E epochs = S steps".
fn describe_run(t: &Trainer<'_>) -> String {
    let schedule = &t.experiment.schedule;
    let processes = match &t.parallel {
        Some(p) => format!(
            " and {} more processes (c10d {:?})",
            p.world_size() - 1,
            p.group().backend()
        ),
        None => String::new(),
    };
    let micro_batches = match schedule.accumulate {
        0 | 1 => String::new(),
        n => format!(" ({n} micro-batches)"),
    };
    format!(
        "training {} on {:?}{processes}: {} images, batch {}{micro_batches}, {} epochs = {} steps",
        t.experiment.name(),
        t.device,
        t.splits.train.len(),
        schedule.batch_size,
        schedule.epochs,
        t.plan.total_steps
    )
}

/// Keys every run shows in TensorBoard's HParams dashboard, besides those set with `--set` (a
/// sweep's parameters among them).
const HPARAM_KEYS: &[&str] = &[
    "dataset.type",
    "backbone.type",
    "augment.type",
    "optimizer.type",
    "optimizer.lr",
    "optimizer.weight_decay",
    "schedule.batch_size",
    "schedule.epochs",
    "byol.tau_base",
    "byol.projection_dim",
    "run.seed",
    "run.precision",
];

/// The run's hyperparameters: [`HPARAM_KEYS`] and every key given with `--set`, from the
/// resolved experiment.
fn hparams(experiment: &Experiment) -> anyhow::Result<Vec<(String, HParamValue)>> {
    let resolved: toml::Table = toml::from_str(&experiment.to_toml()?)?;
    let overridden = experiment
        .overrides
        .iter()
        .filter_map(|a| a.split_once('=').map(|(key, _)| key.trim()))
        .filter(|key| *key != "run.output_dir");
    let resolved = toml::Value::Table(resolved);
    let lookup = |key: &str| key.split('.').try_fold(&resolved, |value, part| value.get(part));
    let mut seen = std::collections::BTreeSet::new();
    Ok(HPARAM_KEYS
        .iter()
        .copied()
        .chain(overridden)
        .filter(|key| seen.insert(*key))
        .filter_map(|key| Some((key.to_string(), HParamValue::from_toml(lookup(key)?)?)))
        .collect())
}
