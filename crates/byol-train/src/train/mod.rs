//! The training loop: data -> two views -> BYOL step -> target EMA -> log -> evaluate ->
//! checkpoint, resuming from the run folder and stopping cleanly on SIGINT/SIGTERM.
//!
//! The loop is [`train`]; what it holds is assembled in [`trainer`], one step is [`step`], the
//! run folder's checkpoints and records are [`state`].

pub mod curve;
mod data;
mod device;
mod graph;
mod guard;
mod journal;
mod loss_watch;
mod metrics;
mod model;
pub(crate) mod monitor;
mod progress;
pub mod state;
mod step;
mod stop_poll;
mod trainer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use byol_data::Batch;

use crate::checkpoint::CurveCost;
use crate::distributed::DataParallel;
use crate::knn::KnnAccuracy;
use crate::run_dir;
use crate::stop::StopOnSignals;
use crate::sweep::{Pruned, Pruner};
use crate::Experiment;

pub use byol::output::print_line;
pub use data::{training_loader, two_views};
pub use device::{device_name, parse_device, parse_device_flag, parse_device_for, prepare_for_steps, set_cpu_threads};
pub use graph::{check_cuda_graphs, graphed_step, GraphedOutputs, GraphedStep};
pub use guard::{embed_guarded, guarded, panic_message};
pub use model::{Model, Weights};
pub use monitor::{embed_split, embed_split_sharded, knn_classes_listed, Evaluation, NO_LABELS_NOTE};
pub use step::{check_precision, Plan, StepNumerics, StepReport};
pub use stop_poll::StopPoll;

use guard::{explain_error, explain_panic};
use journal::Journal;
pub use trainer::Trainer;

/// How to run, beyond what the experiment says.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Run folder (default: `<run.output_dir>/<run.name>`).
    pub run_dir: Option<PathBuf>,
    /// What the run folder is to the user (a sweep's trial folder), as messages name it.
    pub folder: run_dir::FolderKind,
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
    /// Signal handlers installed by the caller for longer than the run (a sweep training its
    /// trials one after another, so that a signal between two of them is not lost); by default
    /// the run installs its own.
    pub signals: Option<Arc<StopOnSignals>>,
}

/// What a finished (or interrupted) run reports; saved as `summary.json` in the run folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    pub run_dir: PathBuf,
    /// This process's rank in a data-parallel job (0 otherwise); only rank 0 reports.
    #[serde(default)]
    pub rank: usize,
    /// The processes that trained the run in its last start (a data-parallel job's size); None in
    /// summaries from before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<usize>,
    pub device: String,
    pub steps: u64,
    pub total_steps: u64,
    pub epochs: u64,
    pub resumed_from_step: Option<u64>,
    /// True when SIGINT/SIGTERM stopped the run early (it resumes from `checkpoint`).
    pub interrupted: bool,
    /// The signal that stopped this process, when one reached it (in a data-parallel job the
    /// others stop with the process that got it).
    #[serde(skip)]
    pub signal: Option<i32>,
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
    /// Wall time of the run's training, evaluations during training included, summed over its
    /// starts (a resumed run's includes the time before the kill).
    pub train_seconds: f64,
    pub images_per_second: f64,
    /// The kNN curve's evaluations during training (before and after training not counted) and
    /// the seconds they took, part of `train_seconds`, summed over the starts like it.
    #[serde(default)]
    pub curve_evaluations: u64,
    #[serde(default)]
    pub curve_seconds: f64,
    /// Unreadable images skipped under `dataset.on_bad_image = "skip"`, in every split this
    /// process read (the loader's share in a data-parallel run), each named in
    /// [`SKIPPED_FILE`].
    #[serde(default)]
    pub skipped_images: usize,
    /// How the training split made up for its skipped images: "left out" (decoded into memory
    /// without them) or "replaced" (read as training goes, each one's place in its batch taken
    /// by a readable image, so epochs keep their steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped_in_training: Option<String>,
    /// The changes its resumes allowed (`--allow-change`), each from the step it resumed at:
    /// empty for a run trained throughout with one experiment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes_allowed: Vec<crate::checkpoint::ChangesAllowed>,
    pub checkpoint: PathBuf,
}

/// The run folder's list of every unreadable image skipped, one `<where>: <why>` per line
/// (warnings name the first few).
pub const SKIPPED_FILE: &str = "skipped-images.txt";

/// Trains `experiment` to the end, resuming from the run folder's newest intact checkpoint.
/// SIGINT/SIGTERM finish the current step, save a checkpoint and return early.
pub fn train(experiment: &Experiment, options: &RunOptions) -> anyhow::Result<RunSummary> {
    experiment.validate()?;
    let run_dir = options
        .run_dir
        .clone()
        .unwrap_or_else(|| experiment.run.output_dir.join(experiment.name()));
    // Held until the run returns; the kernel releases it if the process dies.
    let rendezvous = DataParallel::rendezvous(&experiment.distributed)?;
    let main = rendezvous.as_ref().is_none_or(|r| r.rank == 0);
    let (owner, moved_aside) = run_dir::take_ownership(&run_dir, options.folder, main, options.fresh)?;
    let handlers = || -> anyhow::Result<Arc<StopOnSignals>> {
        match &options.signals {
            Some(signals) => Ok(signals.clone()),
            None => Ok(Arc::new(StopOnSignals::for_run(None)?)),
        }
    };
    // A process of a data-parallel job waits for the others while it starts (a peer that
    // stopped at its start is never coming): until it has joined them, a signal ends it at once,
    // as before any handler, instead of asking for a step that may never be trained.
    let early = match rendezvous {
        None => Some(handlers()?),
        Some(_) => None,
    };
    let mut t = match Trainer::new(experiment, &run_dir, &options.allow_change) {
        Ok(t) => t,
        Err(e) => {
            if let Some(owner) = owner {
                owner.remove_if_unused();
            }
            // A refused --fresh start puts back the run it moved aside, where it can go.
            return match &moved_aside {
                Some(moved) if !run_dir.exists() && std::fs::rename(moved, &run_dir).is_ok() => Err(e),
                Some(moved) => Err(e.context(format!(
                    "--fresh moved the previous run folder aside to {} before this start was refused",
                    moved.display()
                ))),
                None => Err(e),
            };
        }
    };
    t.owner = owner;
    let stop = match early {
        Some(stop) => stop,
        None => handlers()?,
    };
    let step = t.resumed_from.unwrap_or(0);
    if let Some(summary) = already_trained(&t, &run_dir, step, options.quiet) {
        end_group(&t);
        return Ok(summary);
    }
    // From here on the folder holds a run in progress: a summary of an earlier end (of fewer
    // epochs, say) would describe another run should this one stop before writing its own.
    if t.is_main() {
        remove_if_present(&run_dir.join(SUMMARY_FILE))?;
    }
    t.record_run(&run_dir)?;
    if t.is_main() {
        if let Err(e) = retire_failure(&run_dir) {
            byol::eprint_line!("warning: the earlier failure's error stays: {e:#}");
        }
    }
    // Whatever ends it from here on is the run's failure, said in its folder.
    let summary = train_started(&mut t, &run_dir, options, &stop, moved_aside, step)
        .inspect_err(|e| record_failure(&t, &run_dir, e))?;
    end_group(&t);
    Ok(summary)
}

/// The run from its start on (its record written): the measure before training, the training,
/// the last checkpoint, the final evaluation and the summary.
fn train_started(
    t: &mut Trainer<'_>,
    run_dir: &std::path::Path,
    options: &RunOptions,
    stop: &StopOnSignals,
    moved_aside: Option<PathBuf>,
    mut step: u64,
) -> anyhow::Result<RunSummary> {
    if t.is_main() && step > 0 {
        curve::resume_at(run_dir, step)?;
    }
    let mut journal = Journal::open(t, run_dir, options.quiet, moved_aside)?;
    let before = measured_before(t, &mut journal, run_dir, step)?;

    journal.start_training(t, step);
    t.start_clock();
    let progress = train_epochs(t, &mut journal, stop, run_dir, options.pruner.as_ref(), &mut step)?;
    let train_seconds = t.train_seconds();
    let checkpoint = t.save(step, journal.final_loss)?;
    let Progress { interrupted, pruned } = progress;
    let CurveCost {
        evaluations: curve_evaluations,
        seconds: curve_seconds,
        ..
    } = t.curve_cost();
    announce_early_stop(&journal, step, &checkpoint, interrupted, pruned.as_ref());
    let stopped_early = interrupted || pruned.is_some();
    let measured = final_evaluation_measured(t, run_dir, step, &options.allow_change);
    let after = match measured {
        Some(evaluation) => Some(evaluation),
        None if stopped_early => None,
        None => journal.evaluation("", t.evaluate()?, step),
    };
    let final_loss = journal.final_loss;
    // TensorBoard (the evaluation, then the gain) before the curve: a point at the last step
    // says that both were logged.
    let logged_after = after.as_ref().filter(|_| measured.is_none());
    journal.finish(before.as_ref(), logged_after, step, !stopped_early);
    record_curve(t, run_dir, (&after, None), step, final_loss, None)?;

    let summary = RunSummary {
        run_dir: run_dir.to_path_buf(),
        rank: t.rank() as usize,
        processes: Some(t.processes()),
        device: device_name(t.device),
        steps: step,
        total_steps: t.plan.total_steps,
        epochs: t.experiment.schedule.epochs,
        resumed_from_step: t.resumed_from,
        interrupted,
        signal: stop.signal(),
        pruned,
        final_loss,
        knn_before: before.map(|e| e.knn),
        knn_after: after.map(|e| e.knn),
        probe_top1_after: after.and_then(|e| e.probe_top1),
        train_seconds,
        images_per_second: t.images_per_second(step, train_seconds),
        curve_evaluations,
        curve_seconds,
        skipped_images: 0,
        skipped_in_training: None,
        changes_allowed: t.carried.changes_allowed.clone(),
        checkpoint,
    };
    let summary = record_skipped(t, run_dir, summary)?;
    write_summary(t, run_dir, &summary)?;
    Ok(summary)
}

/// The final evaluation of a run that was resumed from its last checkpoint after measuring it
/// (stopped before writing its summary): its curve's point at the last step, in TensorBoard
/// already (with the gain), where measuring again would log it twice. Measured again when the
/// resume allowed changes (`allow_change`: the evaluation's settings or data may be others), and
/// in data parallel, where every process must take part and each reads the curve on its own.
fn final_evaluation_measured(
    t: &Trainer<'_>,
    run_dir: &std::path::Path,
    step: u64,
    allow_change: &[String],
) -> Option<Evaluation> {
    let same_run = allow_change.is_empty() && t.parallel.is_none();
    if !same_run || step != t.plan.total_steps || t.resumed_from != Some(step) {
        return None;
    }
    let curve = curve::read_curve(run_dir).ok()?;
    curve
        .iter()
        .find(|point| point.step == step)
        .map(|point| point.evaluation())
}

/// The summary of a run folder that has trained all its steps already (said so unless `quiet`).
fn already_trained(t: &Trainer<'_>, run_dir: &std::path::Path, step: u64, quiet: bool) -> Option<RunSummary> {
    let summary = finished_summary(run_dir, step, t.plan.total_steps)?;
    if !quiet && t.is_main() {
        // A finished run never said the changes allowed as continuing it: this says they train
        // nothing.
        let unused = match t.allowed_changes.as_slice() {
            [] => String::new(),
            changes => format!(
                "; the changes allowed ({}) train nothing and are not recorded: its config.toml and checkpoints \
                 keep the values it trained with",
                changes.join(", ")
            ),
        };
        print_line(format_args!(
            "{} has already trained all {step} steps; its summary.json stands{unused} (to train longer, raise \
             schedule.epochs with --allow-change schedule.epochs; to evaluate again, byol-run eval)",
            run_dir.display()
        ));
    }
    Some(summary)
}

/// Lists the images the run skipped as unreadable in [`SKIPPED_FILE`], `<split>\t<where>: <why>`
/// a line (`train`, `test`, or `eval` for the kNN monitor's own folders), and counts them in
/// `summary`. A resumed run adds what this start met to what the earlier ones listed (a split
/// read as training goes meets an image again only in a later epoch), unless its data keys
/// changed (other data, or the same under other paths, which the lines name). Written by the
/// process that owns the run folder: in a data-parallel run that reads as training goes, its
/// share.
fn record_skipped(t: &Trainer<'_>, run_dir: &std::path::Path, mut summary: RunSummary) -> anyhow::Result<RunSummary> {
    let path = run_dir.join(SKIPPED_FILE);
    let mut lines: Vec<String> = match t.resumed_from {
        Some(_) if t.data_in_place => std::fs::read_to_string(&path)
            .map(|text| text.lines().map(str::to_string).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let mut read: Vec<(&str, &Arc<dyn byol::Dataset>)> = vec![("train", &t.splits.train)];
    read.extend(t.splits.test.iter().map(|test| ("test", test)));
    read.extend(t.monitor.datasets().into_iter().map(|d| ("eval", d)));
    let mut listed: std::collections::HashSet<String> = lines.iter().cloned().collect();
    let mut seen: Vec<&Arc<dyn byol::Dataset>> = Vec::new();
    for (split, data) in read {
        // The monitor's bank is the training split itself unless eval.train is set.
        if seen
            .iter()
            .any(|s| std::ptr::addr_eq(Arc::as_ptr(s), Arc::as_ptr(data)))
        {
            continue;
        }
        seen.push(data);
        for skipped in data.skipped() {
            let line = format!("{split}\t{skipped}");
            if listed.insert(line.clone()) {
                lines.push(line);
            }
        }
    }
    summary.skipped_images = lines.len();
    if lines.iter().any(|line| line.starts_with("train\t")) {
        let in_memory = t.splits.train.as_tensors().is_some();
        summary.skipped_in_training = Some(if in_memory { "left out" } else { "replaced" }.to_string());
    }
    if t.is_main() {
        if lines.is_empty() {
            remove_if_present(&path)?;
        } else {
            let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
            t.in_place(|| run_dir::replace_file(&path, text.as_bytes()))?;
        }
    }
    Ok(summary)
}

/// `summary.json`, written by the process that owns the run folder.
fn write_summary(t: &Trainer<'_>, run_dir: &std::path::Path, summary: &RunSummary) -> anyhow::Result<()> {
    if !t.is_main() {
        return Ok(());
    }
    let path = run_dir.join(SUMMARY_FILE);
    t.in_place(|| run_dir::replace_file(&path, &serde_json::to_vec_pretty(summary)?))
}

/// The kNN evaluation before training: measured now at step 0 (and added to the curve, with the
/// grid of views), or, on a resume, the one the run's first start measured, kept in its curve.
fn measured_before(
    t: &Trainer<'_>,
    journal: &mut Journal,
    run_dir: &std::path::Path,
    step: u64,
) -> anyhow::Result<Option<Evaluation>> {
    if step > 0 {
        let first = curve::read_curve(run_dir)
            .unwrap_or_default()
            .into_iter()
            .find(|p| p.step == 0);
        let now = t.fingerprint.knn_data(t.experiment);
        return Ok(match first {
            // Measured on other labelled images or with other settings (a change allowed on a
            // resume): no gain can be told from it.
            Some(point) if point.knn_data.zip(now).is_some_and(|(then, now)| then != now) => {
                if t.is_main() {
                    byol::eprint_line!(
                        "note: the kNN monitor's images or settings changed since this run measured them before \
                         training: no kNN gain is reported, as before and after would be measured differently"
                    );
                }
                None
            }
            point => point.map(|p| p.evaluation()),
        });
    }
    let before = evaluate_before_training(t, journal)?;
    record_curve(t, run_dir, (&before, None), 0, None, None)?;
    if t.experiment.logging.view_grid && t.is_main() {
        t.log_view_grid(journal.logger())?;
    }
    Ok(before)
}

/// Says why training stopped before its last step, and where it resumes from.
fn announce_early_stop(
    journal: &Journal,
    step: u64,
    checkpoint: &std::path::Path,
    interrupted: bool,
    pruned: Option<&Pruned>,
) {
    if interrupted {
        journal.say(format!(
            "stopped by signal after step {step}; saved {} (run again to resume)",
            checkpoint.display()
        ));
    }
    if let Some(p) = pruned {
        journal.say(format!("pruned: {}", p.describe()));
        journal.say(format!(
            "stopped after step {step} by the sweep's median pruning; saved {} (train again to go on)",
            checkpoint.display()
        ));
    }
}

/// Ends this process's part in a data-parallel job, after its last collective. The run is saved
/// and summarized by then: a group that does not end cleanly changes nothing.
fn end_group(t: &Trainer<'_>) {
    if let Some(parallel) = &t.parallel {
        if let Err(e) = parallel.finish() {
            byol::eprint_line!("warning: {e:#}");
        }
    }
}

/// A run folder's `summary.json`: what its run reported when it ended.
pub const SUMMARY_FILE: &str = "summary.json";

/// The summary of a run that has already trained all `total_steps` steps (resumed at `step`),
/// when its folder holds one that says so; training it again would only evaluate it again and
/// overwrite what its own run measured.
pub fn finished_summary(run_dir: &std::path::Path, step: u64, total_steps: u64) -> Option<RunSummary> {
    if step < total_steps {
        return None;
    }
    let bytes = std::fs::read(run_dir.join(SUMMARY_FILE)).ok()?;
    let mut summary: RunSummary = serde_json::from_slice(&bytes).ok()?;
    // A folder copied or moved since names where it is now, not where it was trained.
    if let Ok(inside) = summary.checkpoint.strip_prefix(&summary.run_dir) {
        summary.checkpoint = run_dir.join(inside);
    }
    summary.run_dir = run_dir.to_path_buf();
    (summary.steps == step && summary.total_steps == total_steps && !summary.interrupted && summary.pruned.is_none())
        .then_some(summary)
}

/// Records why a run that had started failed, in its folder's `error.txt` (by which `compare`
/// and a sweep's summary show it as failed, with why), while the folder at `run_dir` is still
/// the one this process owns (one moved away, and perhaps another run's since, is left alone).
fn record_failure(t: &Trainer<'_>, run_dir: &std::path::Path, error: &anyhow::Error) {
    if !t.is_main() {
        return;
    }
    let path = run_dir.join(crate::sweep::ERROR_FILE);
    let written = t.in_place(|| run_dir::replace_file(&path, format!("{error:#}\n").as_bytes()));
    if let Err(e) = written {
        // A run that failed because its folder moved says so itself, once.
        let why = format!("{e:#}");
        if why != format!("{error:#}") {
            byol::eprint_line!("warning: {} not written: {why}", path.display());
        }
    }
}

/// Moves an earlier failure's `error.txt` to `previous-error.txt` as the run starts again: a
/// start that is then killed outright is unfinished, not failed, and the reason of the failure
/// it retried is kept. Nothing to move is no error. The caller holds the folder's lock.
pub fn retire_failure(run_dir: &std::path::Path) -> anyhow::Result<()> {
    let error = run_dir.join(crate::sweep::ERROR_FILE);
    if !error.is_file() {
        return Ok(());
    }
    let previous = run_dir.join(crate::sweep::PREVIOUS_ERROR_FILE);
    std::fs::rename(&error, &previous)
        .with_context(|| format!("cannot move {} to {}", error.display(), previous.display()))
}

fn remove_if_present(path: &std::path::Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// The kNN evaluation of a run at step 0 (None when `eval.before_training` is off or the run
/// has no labelled images).
fn evaluate_before_training(t: &Trainer<'_>, journal: &mut Journal) -> anyhow::Result<Option<Evaluation>> {
    if !t.experiment.eval.before_training {
        return Ok(None);
    }
    // Said first: on a CPU, embedding a large bank takes minutes before anything else shows.
    if let Some((bank, queries)) = t.monitor.images() {
        journal.say(format!(
            "kNN before training: embedding {bank} bank images and {queries} queries"
        ));
    }
    Ok(journal.evaluation("before training", t.evaluate()?, 0))
}

/// How the epochs of [`train_epochs`] ended.
struct Progress {
    interrupted: bool,
    pruned: Option<Pruned>,
}

/// Trains epoch after epoch from `step` to the end of the plan, adding a point to the kNN curve
/// on its interval, until a signal stops the run or `pruner` does.
fn train_epochs(
    t: &mut Trainer<'_>,
    journal: &mut Journal,
    stop: &StopOnSignals,
    run_dir: &std::path::Path,
    pruner: Option<&Pruner>,
    step: &mut u64,
) -> anyhow::Result<Progress> {
    let mut progress = Progress {
        interrupted: false,
        pruned: None,
    };
    // A run resumed where it evaluates: the run that saved this checkpoint was stopped before
    // that evaluation ended (killed during it, or signalled in the step before it), or after it,
    // before a pruned trial wrote its summary. Without this the point would be missing for good,
    // and the trial never judged there.
    if *step > 0 && t.evaluates_after(*step) {
        // An unreadable curve counts as one without the point: measuring again only replaces it.
        let curve = curve::read_curve(run_dir).ok();
        let point = curve.iter().flatten().find(|p| p.step == *step).copied();
        if !measured_by_all(t, point.is_some())? {
            evaluate_into_curve(t, journal, run_dir, pruner, *step, &mut progress)?;
        } else {
            // Measured by the start that saved this checkpoint: after saving it (at an epoch's
            // end), its record could not count the evaluation, whose seconds the point keeps;
            // before (a pruned trial's last save), it did.
            if t.curve_cost().last_step != Some(*step) {
                t.count_curve_evaluation(*step, point.and_then(|p| p.seconds).unwrap_or(0.0));
            }
            if let Some(pruner) = pruner.filter(|_| t.is_main() && t.parallel.is_none()) {
                progress.pruned = pruner.judge(run_dir, curve.as_deref().unwrap_or_default())?;
            }
        }
    }
    while *step < t.plan.total_steps && !progress.interrupted && progress.pruned.is_none() {
        progress.interrupted = train_epoch(t, journal, stop.flag(), step)?;
        if !progress.interrupted && t.evaluates_after(*step) {
            evaluate_into_curve(t, journal, run_dir, pruner, *step, &mut progress)?;
        }
    }
    Ok(progress)
}

/// Whether every process of the run found the point measured (one process: whether it did).
/// The evaluation gathers from all processes, so all must make the same choice, even where a
/// network file system shows one node an older curve.
fn measured_by_all(t: &Trainer<'_>, measured: bool) -> anyhow::Result<bool> {
    let Some(parallel) = &t.parallel else {
        return Ok(measured);
    };
    let flag = tch::Tensor::from_slice(&[f32::from(u8::from(measured))]).to_device(t.device);
    Ok(parallel.all_gather(&flag)?.min().double_value(&[]) > 0.5)
}

/// The evaluation after the epoch that ends at `step`, added to the curve and judged by `pruner`.
fn evaluate_into_curve(
    t: &mut Trainer<'_>,
    journal: &mut Journal,
    run_dir: &std::path::Path,
    pruner: Option<&Pruner>,
    step: u64,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    let evaluating = Instant::now();
    let when = format!("after epoch {}", t.plan.epoch_of(step));
    let evaluation = journal.evaluation(&when, t.evaluate()?, step);
    let seconds = Some(evaluating.elapsed().as_secs_f64());
    progress.pruned = record_curve(t, run_dir, (&evaluation, seconds), step, journal.final_loss, pruner)?;
    let spent = evaluating.elapsed();
    t.count_curve_evaluation(step, spent.as_secs_f64());
    journal.leave_out_of_throughput(spent);
    Ok(())
}

/// Trains the rest of the epoch that `step` is in, advancing `step`; true when a signal stopped
/// the run (the step that saw it is trained and counted).
fn train_epoch(t: &mut Trainer<'_>, journal: &mut Journal, stop: &AtomicBool, step: &mut u64) -> anyhow::Result<bool> {
    let plan = t.plan.clone();
    let done_in_epoch = *step % plan.steps_per_epoch;
    // Worker threads decode the next batches while the device trains on this one.
    let mut batches = t
        .loader
        .prefetch(plan.epoch_of(*step), done_in_epoch as usize * plan.accumulate, t.device);
    for _ in done_in_epoch..plan.steps_per_epoch {
        let group = batches
            .by_ref()
            .take(plan.accumulate)
            .collect::<Result<Vec<Batch>, _>>()
            .with_context(|| format!("loading the batches of step {}", *step + 1))?;
        if group.len() < plan.accumulate {
            break;
        }
        let report = match guarded(|| t.step(*step, &group, stop.load(Ordering::Relaxed))) {
            Ok(report) => report.map_err(explain_error)?,
            Err(panic) => {
                return Err(explain_panic(panic, t.experiment.schedule.batch_size, plan.accumulate));
            }
        };
        *step += 1;
        let every = t.experiment.checkpoint.every_steps;
        let saves = every > 0 && step.is_multiple_of(every) && *step < plan.total_steps;
        if report.stop || saves || journal.logs_at(t, *step) {
            t.check_loss()?;
        }
        journal.step_done(t, *step, &report)?;
        if report.stop {
            return Ok(true);
        }
        if saves {
            t.save(*step, journal.final_loss)?;
        }
    }
    t.check_loss()?;
    Ok(false)
}

/// Adds an evaluation to the run folder's kNN curve (rank 0 of a data-parallel run does), then
/// asks `pruner` whether the run stops here. A data-parallel run is never pruned: rank 0 alone
/// would stop while its peers wait for it.
fn record_curve(
    t: &Trainer<'_>,
    run_dir: &std::path::Path,
    (evaluation, seconds): (&Option<Evaluation>, Option<f64>),
    step: u64,
    loss: Option<f64>,
    pruner: Option<&Pruner>,
) -> anyhow::Result<Option<Pruned>> {
    let Some(evaluation) = evaluation.as_ref().filter(|_| t.is_main()) else {
        return Ok(None);
    };
    let knn_data = t.fingerprint.knn_data(t.experiment);
    let point = curve::CurvePoint::new(evaluation, (t.plan.epoch_of(step), step), loss, knn_data, seconds);
    let curve = t.in_place(|| curve::record_point(run_dir, point)).map_err(|e| {
        // A failed write (not a folder moved away, which says its own way out).
        match e.chain().any(|cause| cause.is::<std::io::Error>()) {
            true => anyhow::anyhow!(
                "{e:#}; {} ({})",
                t.kept(),
                crate::checkpoint::way_out_of_a_failed_write(&e)
            ),
            false => e,
        }
    })?;
    match pruner {
        Some(pruner) if t.parallel.is_none() => pruner.judge(run_dir, &curve),
        _ => Ok(None),
    }
}
