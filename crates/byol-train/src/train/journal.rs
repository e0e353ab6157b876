//! What a run tells: lines on the terminal (or in the log), TensorBoard scalars, text and hparams,
//! and the progress bar. Only the main process of a data-parallel job writes anything.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;

use crate::tensorboard::{HParamValue, ScalarLogger};
use crate::Experiment;

use super::monitor::{monitor_off_note, Evaluation};
use super::progress::Progress;
use super::step::StepReport;
use super::trainer::Trainer;

pub struct Journal {
    logger: ScalarLogger,
    progress: Option<Progress>,
    quiet: bool,
    /// Start of the current throughput window and the images trained in it.
    window: (Instant, u64),
    /// The loss at the last log point.
    pub final_loss: Option<f64>,
}

impl Journal {
    /// Opens the run's TensorBoard log (config as text, hparams session) and says what the run
    /// starts from.
    pub fn open(t: &Trainer<'_>, run_dir: &Path, quiet: bool, moved_aside: Option<PathBuf>) -> anyhow::Result<Self> {
        let quiet = quiet || !t.is_main();
        let mut logger = if t.is_main() {
            let dir = run_dir.join(crate::tensorboard::LOG_DIR);
            ScalarLogger::create(&dir).with_context(|| format!("cannot open a TensorBoard log in {}", dir.display()))?
        } else {
            ScalarLogger::disabled()
        };
        let step = t.resumed_from.unwrap_or(0);
        // From a checkpoint of step S the run logs S + 1 on; from none, everything again.
        logger.restart_at(if step == 0 { 0 } else { step + 1 });
        logger.text("config", &format!("```toml\n{}\n```", t.experiment.to_toml()?), step);
        logger.session_start(&hparams(t.experiment)?);
        let journal = Self {
            logger,
            progress: None,
            quiet,
            window: (Instant::now(), 0),
            final_loss: t.carried.last_loss,
        };
        if let Some(why) = monitor_off_note(t.experiment, &t.splits, t.monitor.has_knn()) {
            journal.say(format!("note: {why}"));
        }
        if let Some(old) = moved_aside {
            journal.say(format!(
                "--fresh: moved the previous run folder aside to {}",
                old.display()
            ));
        }
        if let Some(step) = t.resumed_from {
            let total = t.plan.total_steps;
            journal.say(format!("resuming {} from step {step} of {total}", run_dir.display()));
        }
        Ok(journal)
    }

    pub fn say(&self, line: String) {
        match &self.progress {
            Some(progress) => progress.line(line),
            None if !self.quiet => byol::output::print_line(line),
            None => {}
        }
    }

    pub fn logger(&mut self) -> &mut ScalarLogger {
        &mut self.logger
    }

    /// Prints what the run is about to do and starts the progress bar at `step`.
    pub fn start_training(&mut self, t: &Trainer<'_>, step: u64) {
        self.say(describe_run(t));
        self.progress = Some(Progress::new(t.plan.total_steps, step, self.quiet));
        self.window = (Instant::now(), 0);
    }

    /// Step `step` (steps done) is trained: at log points, its scalars and the progress line.
    pub fn step_done(&mut self, t: &mut Trainer<'_>, step: u64, report: &StepReport) -> anyhow::Result<()> {
        let (experiment, plan) = (t.experiment, &t.plan);
        self.window.1 += experiment.schedule.batch_size as u64;
        let progress = self.progress.as_ref().expect("training started");
        if !self.logs_at(t, step) {
            progress.tick(step);
            return Ok(());
        }
        let loss = report.loss.double_value(&[]);
        let images_per_second = self.window.1 as f64 / self.window.0.elapsed().as_secs_f64().max(1e-9);
        self.window = (Instant::now(), 0);
        let line = format!(
            "epoch {:>3}/{} step {step:>6}/{} loss {:.4} lr {:.4} tau {:.5} img/s {images_per_second:.0}",
            plan.epoch_of(step - 1) + 1,
            experiment.schedule.epochs,
            plan.total_steps,
            loss,
            report.lr,
            report.tau,
        );
        progress.update(step, line);
        self.final_loss = Some(loss);
        t.log_scalars(&mut self.logger, step, report, loss, images_per_second)
    }

    /// Leaves `spent` (an evaluation between steps) out of the throughput logged next: the
    /// images per second of training, not of training and evaluating.
    pub fn leave_out_of_throughput(&mut self, spent: std::time::Duration) {
        self.window.0 += spent;
    }

    /// Whether step `step` (steps done) is a log point: every `logging.every_steps`, and the last.
    pub fn logs_at(&self, t: &Trainer<'_>, step: u64) -> bool {
        step.is_multiple_of(t.experiment.logging.every_steps.max(1)) || step == t.plan.total_steps
    }

    /// Logs an evaluation at `step` (`knn/`, `probe/`) and prints it as "kNN `when`: ...".
    pub fn evaluation(&mut self, when: &str, evaluation: Option<Evaluation>, step: u64) -> Option<Evaluation> {
        let e = evaluation.as_ref()?;
        self.logger.scalar("knn/top1", e.knn.top1, step);
        if let Some(top5) = e.knn.top5 {
            self.logger.scalar("knn/top5", top5, step);
        }
        // Before training the probe has seen nothing: its accuracy would be noise.
        let probe = e.probe_top1.filter(|_| step > 0);
        if let Some(top1) = probe {
            self.logger.scalar("probe/top1", top1, step);
        }
        let detail = match probe {
            Some(p) => format!(", online probe {:.1}%", p * 100.0),
            None => match e.knn.top5 {
                Some(top5) if step == 0 => format!("  top-5 {:.1}%", top5 * 100.0),
                _ => String::new(),
            },
        };
        if !when.is_empty() {
            self.say(format!("kNN {when}: top-1 {:.1}%{detail}", e.knn.top1 * 100.0));
        }
        evaluation
    }

    /// Ends the progress bar and, for a finished run, the hparams session (with the kNN gain).
    pub fn finish(mut self, before: Option<&Evaluation>, after: Option<&Evaluation>, step: u64, finished: bool) {
        if let Some(progress) = self.progress.take() {
            progress.finish();
        }
        if let (Some(before), Some(after)) = (before, after) {
            self.logger.scalar("knn/gain", after.knn.top1 - before.knn.top1, step);
        }
        if finished {
            self.logger.session_end();
        }
    }
}

/// "training NAME on DEVICE: N images, batch B, E epochs = S steps".
fn describe_run(t: &Trainer<'_>) -> String {
    let schedule = &t.experiment.schedule;
    let processes = match &t.parallel {
        Some(p) => {
            let others = p.world_size() as u64 - 1;
            let noun = noun(others, "process", "processes");
            format!(" and {others} more {noun} (c10d {:?})", p.group().backend())
        }
        None => String::new(),
    };
    let micro_batches = match schedule.accumulate {
        0 | 1 => String::new(),
        n => format!(" ({n} micro-batches)"),
    };
    format!(
        "training {} on {}{processes}: {} images, batch {}{micro_batches}, {} {} = {} {}",
        t.experiment.name(),
        super::device::device_name(t.device),
        t.splits.train.len(),
        schedule.batch_size,
        schedule.epochs,
        noun(schedule.epochs, "epoch", "epochs"),
        t.plan.total_steps,
        noun(t.plan.total_steps, "step", "steps"),
    )
}

/// The noun for `n` things: `one` for 1, `many` otherwise.
fn noun<'a>(n: u64, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 {
        one
    } else {
        many
    }
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

#[cfg(test)]
mod tests {
    use super::noun;

    #[test]
    fn the_singular_is_for_one_only() {
        assert_eq!(noun(1, "epoch", "epochs"), "epoch");
        assert_eq!(noun(0, "step", "steps"), "steps");
        assert_eq!(noun(200, "epoch", "epochs"), "epochs");
    }
}
