//! Running a sweep's trials: one at a time in this process, or one per device at a time as
//! child processes (`byol-run train` with the trial's overrides), each resumable; a signal to the
//! sweep is passed on to its children, and a child stops when the sweep's process is gone.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs;
use std::io::{Read, Seek};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use byol_train::checkpoint;
use byol_train::run_dir::{self, FolderKind, FolderLock};
use byol_train::stop::StopOnSignals;
use byol_train::sweep::{
    data_key, goal_name, rank_with, result_line, to_csv, to_markdown, Metric, Pruned, Pruner, Row, Sweep, Trial,
    TrialStatus, BASE_EXPERIMENT_FILE, ERROR_FILE, LOG_FILE, OLD_ATTEMPTS_DIR, PRUNER_FILE, SUMMARY_CSV, SUMMARY_MD,
    TRIAL_FILE,
};
use byol_train::train::panic_message;
use byol_train::train::state::{DatasetFingerprint, Remarks, FINGERPRINT_FILE};
use byol_train::{train, RunOptions, RunSummary};

/// Set in the environment of trials run as child processes: the sweep's process id.
pub const PARENT_ENV: &str = "BYOL_RS_SWEEP_PARENT";

/// How to run a sweep.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// Print only the sweep's own lines and the summary (trials train with `quiet`).
    pub quiet: bool,
    /// Devices to run trials on, one trial per device at a time (`run.device` of each trial).
    /// Empty: one trial at a time on the experiment's own device. More than one: trials run as
    /// child processes of `program`.
    pub devices: Vec<String>,
    /// The `byol-run` binary, for child processes (`byol-run train <base> --set ... --run-dir ...`).
    pub program: PathBuf,
    /// Move an existing sweep folder aside (`<folder>.old-<time>`) and run every trial anew.
    pub fresh: bool,
}

/// The CUDA devices to spread trials over by default: every GPU when the experiment's device is
/// "auto" or "cuda" and there are several; none (one trial at a time, as configured) otherwise,
/// and none when `run.device` is swept (each trial then runs on the device it names).
pub fn default_devices(sweep: &Sweep) -> Vec<String> {
    if sweep.sweeps("run.device") {
        return Vec::new();
    }
    let device = sweep
        .experiment(&sweep.trials[0], None)
        .map(|e| e.run.device)
        .unwrap_or_default();
    let count = tch::Cuda::device_count();
    if matches!(device.as_str(), "auto" | "cuda") && count > 1 {
        (0..count).map(|i| format!("cuda:{i}")).collect()
    } else {
        Vec::new()
    }
}

/// The result of [`run`].
#[derive(Debug)]
pub struct SweepOutcome {
    /// Trials skipped because they had finished before.
    pub skipped: usize,
    /// The signal that stopped the sweep, if one did; run it again to go on.
    pub interrupted: Option<i32>,
    /// Trials whose last attempt failed (`error.txt` in their folder says why).
    pub failed: Vec<String>,
    /// Trials that failed without their `error.txt` (another process owned their folder, or it
    /// could not be written).
    pub unrecorded: Vec<String>,
    /// Finished trials whose results are not this sweep's (another command's settings, or data
    /// that changed while the sweep ran), shown as `not ranked`.
    pub not_ranked: Vec<String>,
    pub csv: PathBuf,
    pub markdown: PathBuf,
}

/// Runs every trial that has not finished, then writes and returns the ranked summary.
pub fn run(sweep: &Sweep, options: &SweepOptions) -> anyhow::Result<SweepOutcome> {
    check_sweep_folder(&sweep.dir, options.fresh)?;
    let moved = if options.fresh {
        run_dir::move_aside(&sweep.dir, FolderKind::Sweep)?
    } else {
        None
    };
    // Two sweeps over one folder would train the same trials twice and mark each other's running
    // trials as failed. Each trial's folder has its own lock besides (child processes take it).
    let owner = FolderLock::create_and_acquire(&sweep.dir, FolderKind::Sweep)?;
    let outcome = run_holding_the_folder(sweep, options, moved.clone(), &|| owner.check_still_at(&sweep.dir));
    let Err(error) = outcome else { return outcome };
    // Refused before any trial folder was written: no sweep folder left with only its lock, and
    // a --fresh start puts back the sweep it moved aside (whose trials would otherwise all
    // start anew on the next run).
    let removed = owner.remove_if_unused();
    match moved {
        Some(moved) if removed && fs::rename(&moved, &sweep.dir).is_ok() => {
            byol::eprint_line!(
                "--fresh: put the previous sweep folder back in place ({}), as this sweep was refused",
                sweep.dir.display()
            );
            Err(error)
        }
        Some(moved) if removed => Err(error.context(format!(
            "--fresh moved the previous sweep folder aside to {} before this sweep was refused",
            moved.display()
        ))),
        _ => Err(error),
    }
}

/// Whether the sweep's folder is still where this process locked it: one moved (or replaced)
/// while its trials run stops the sweep before it writes at the old path again, where it would
/// start a second sweep folder beside the moved one.
type StillInPlace<'a> = &'a (dyn Fn() -> anyhow::Result<()> + Sync);

/// [`run`] once the sweep's folder is this process's (`moved`: where `--fresh` moved the one
/// before).
fn run_holding_the_folder(
    sweep: &Sweep,
    options: &SweepOptions,
    moved: Option<PathBuf>,
    still_in_place: StillInPlace<'_>,
) -> anyhow::Result<SweepOutcome> {
    let say = |line: String| say!("{line}");
    if let Some(old) = moved {
        say(format!(
            "--fresh: moved the previous sweep folder aside to {}",
            old.display()
        ));
    }
    say(format!(
        "sweep {}: {} ({}) ranked by {} ({}), in {}",
        sweep.name,
        super::count_of_trials(sweep.trials.len()),
        sweep.config.method.name(),
        sweep.config.metric.name(),
        goal_name(sweep.goal),
        sweep.dir.display()
    ));
    // The trials to run are checked before any trial folder is written: a sweep refused here
    // leaves every folder as it was.
    let statuses: Vec<(&Trial, TrialStatus)> = sweep
        .trials
        .iter()
        .map(|trial| (trial, TrialStatus::read(&sweep.trial_dir(trial))))
        .collect();
    let is_finished = |status: &TrialStatus| matches!(status, TrialStatus::Pruned(_) | TrialStatus::Done(_));
    let to_run: Vec<&Trial> = statuses
        .iter()
        .filter(|(_, status)| !is_finished(status))
        .map(|(trial, _)| *trial)
        .collect();
    let mut invalid: Vec<String> = to_run
        .iter()
        .filter_map(|trial| check_values(sweep, trial, &options.devices).err())
        .flatten()
        .collect();
    invalid.dedup();
    if !invalid.is_empty() {
        bail!(
            "no trial was run: every trial to run must be a valid experiment, and these are not:\n{}",
            invalid.join("\n")
        );
    }
    super::check_builds(sweep, &to_run)
        .and_then(|()| sweep.check_metric_measured(&to_run))
        .context("no trial was run")?;
    // Each trial's start says what it finds in its data.
    let (listed, _) = super::check_data(sweep, &to_run).context("no trial was run")?;
    // Every trial is checked before any folder is moved: a trial refused after another's old
    // attempt was moved aside would leave that one to start from nothing on the next run.
    let mut data_now = DataNow::of(listed);
    let mut trained_otherwise: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut checked = Vec::new();
    for (trial, status) in statuses {
        let dir = sweep.trial_dir(trial);
        let finished = is_finished(&status);
        if let TrialFolder::StartsAnew(changed) = check_trial_folder(sweep, trial, &status, &mut data_now)? {
            checked.push((trial, status, Some(changed)));
            continue;
        }
        if finished {
            match checkpoint::trained_experiment(&dir) {
                Some(trained) => {
                    let changes = settings_since(sweep, trial, &trained, &options.devices);
                    if !changes.is_empty() {
                        trained_otherwise
                            .entry(changes.join(", "))
                            .or_default()
                            .push(trial.id());
                    }
                }
                None => byol::eprint_line!(
                    "warning: {} finished, but its folder records no experiment (no config.toml, no \
                     checkpoint): its result is ranked without checking that it trained this sweep's settings",
                    trial.id()
                ),
            }
        }
        checked.push((trial, status, None));
    }
    // Every trial checked: now the records of those that have none (or take new values).
    for (trial, _, changed) in &checked {
        if changed.is_none() {
            check_or_record(sweep, trial, &sweep.trial_dir(trial))?;
        }
    }
    let mut todo = VecDeque::new();
    let mut skipped = 0;
    let pruner = sweep.pruner();
    let mut pruned_otherwise = Vec::new();
    for (trial, status, changed) in checked {
        let status = match changed {
            Some(changed) => start_anew(sweep, trial, &changed)?,
            None => status,
        };
        match status {
            TrialStatus::Pruned(summary) => {
                skipped += 1;
                let why = summary.pruned.as_ref().map_or(String::new(), |p| p.describe());
                say(format!("{}: pruned before, skipped ({why})", trial.id()));
                // A verdict the rule now would not have given: no pruning, another metric, or
                // fewer other trials than it asks for.
                let holds = |p: &Pruned, rule: &Pruner| p.metric == rule.metric.name() && p.trials >= rule.prune_after;
                if !summary
                    .pruned
                    .as_ref()
                    .zip(pruner.as_ref())
                    .is_some_and(|(p, rule)| holds(p, rule))
                {
                    pruned_otherwise.push(sweep.trial_dir(trial));
                }
            }
            TrialStatus::Done(summary) => {
                skipped += 1;
                say(format!(
                    "{}: finished before, skipped ({} = {})",
                    trial.id(),
                    sweep.config.metric.name(),
                    sweep
                        .config
                        .metric
                        .of(&summary)
                        .map_or("n/a".into(), |v| format!("{v:.4}"))
                ));
            }
            status => todo.push_back((trial, status)),
        }
    }
    if !pruned_otherwise.is_empty() {
        let commands: Vec<String> = pruned_otherwise
            .iter()
            .map(|dir| format!("`byol-run train {}`", dir.join(run_dir::CONFIG_FILE).display()))
            .collect();
        byol::eprint_line!(
            "note: {} trial(s) were pruned under another pruning rule than this sweep's now (another metric, \
             prune_after, or none), and stay pruned: to train one to the end, {}; then run the sweep again",
            pruned_otherwise.len(),
            commands.join(", ")
        );
    }
    for (changes, trials) in &trained_otherwise {
        byol::eprint_line!(
            "note: {} finished with other settings than this sweep now gives them ({changes}): settings a \
             resume may change, but that change figures, so their results are reported as they trained. \
             To train them with the new ones, set another run.name (a new sweep folder) or add --fresh",
            trials.join(", ")
        );
    }
    for stray in trials_outside(sweep) {
        byol::eprint_line!(
            "warning: {} holds {stray}, which is not a trial of this sweep (the [sweep] table changed \
             since it ran): it is left out of the summary. Set another run.name to keep sweeps apart",
            sweep.dir.display()
        );
    }
    let unrecorded = Mutex::new(Vec::new());
    let in_children = options.devices.len() > 1;
    // Held until the summary is written: a signal after the trials (during the checks before
    // ranking, which may read the data) must not go unheard, and a second one still quits.
    let signals = Arc::new(StopOnSignals::install(if in_children {
        "stopping the sweep: running trials finish their step and save a checkpoint"
    } else {
        "stopping the sweep: the running trial finishes its step and saves a checkpoint"
    })?);
    let interrupted = if in_children {
        run_parallel(sweep, options, todo, (&signals, still_in_place), &unrecorded)?
    } else {
        run_in_process(sweep, options, todo, (&signals, still_in_place), &unrecorded)?
    };
    still_in_place()?;
    let mut unrecorded = unrecorded.into_inner().unwrap_or_else(|e| e.into_inner());
    unrecorded.sort();
    // A sweep that was stopped, also by a signal after its last trial, ranks what it has without
    // reading the data again and says it was stopped: the next run's start checks the data.
    let interrupted = interrupted.or_else(|| signals.signal());
    let not_ranked = results_not_of_this_sweep(sweep, interrupted.is_none());
    let rows = rank_with(sweep, |trial, dir| match not_ranked.get(&trial.id()) {
        Some(why) => TrialStatus::NotRanked(why.clone()),
        // Failed, not pending: its folder went while it trained, and its error with it.
        None if unrecorded.contains(&trial.id()) && fs::symlink_metadata(dir).is_err() => TrialStatus::Failed(
            "its folder was moved or removed while it trained (its error is not recorded)".to_string(),
        ),
        None => TrialStatus::read(dir),
    });
    say_what_is_not_ranked(sweep, &rows);
    let csv = sweep.dir.join(SUMMARY_CSV);
    let markdown = sweep.dir.join(SUMMARY_MD);
    // One ranking in two files: never one of them beside another ranking's other.
    let (csv_text, markdown_text) = (to_csv(sweep, &rows)?, to_markdown(sweep, &rows, &trained_otherwise));
    let write = |text: String| -> run_dir::FileWriter<'_> { Box::new(move |path| Ok(std::fs::write(path, text)?)) };
    run_dir::replace_files_with(vec![
        (&csv, Some(write(csv_text))),
        (&markdown, Some(write(markdown_text))),
    ])?;
    // A trial the other process (a `train` of its folder) finished since is its result, not a
    // failure.
    unrecorded.retain(|id| {
        !rows
            .iter()
            .any(|row| row.trial.id() == *id && matches!(row.status, TrialStatus::Done(_) | TrialStatus::Pruned(_)))
    });
    // Those without their error.txt are told apart.
    let mut failed: Vec<String> = rows
        .iter()
        .filter(|row| matches!(row.status, TrialStatus::Failed(_)))
        .filter(|row| !unrecorded.contains(&row.trial.id()))
        .map(|row| row.trial.id())
        .collect();
    failed.sort();
    Ok(SweepOutcome {
        skipped,
        interrupted,
        failed,
        unrecorded,
        not_ranked: not_ranked.into_keys().collect(),
        csv,
        markdown,
    })
}

/// What a start finds in a trial's folder.
enum TrialFolder {
    /// Nothing, or the trial's own attempt: it is run, resumed or skipped as its status says.
    Fits,
    /// An attempt with other settings or data (why) that failed or left no checkpoint: it is
    /// moved aside, and the trial starts anew.
    StartsAnew(anyhow::Error),
}

/// Checks a trial's folder against the trial, writing nothing: an error when a start must
/// refuse it (another experiment or other data trained there).
fn check_trial_folder(
    sweep: &Sweep,
    trial: &Trial,
    status: &TrialStatus,
    data_now: &mut DataNow,
) -> anyhow::Result<TrialFolder> {
    let dir = sweep.trial_dir(trial);
    if fs::symlink_metadata(&dir).is_ok() && !dir.is_dir() {
        bail!(
            "{} is in the way of {}: it exists and is not a folder (a file, or a link to a missing folder); \
             remove it or move it elsewhere, and run the sweep again",
            dir.display(),
            trial.id()
        );
    }
    let finished = matches!(status, TrialStatus::Pruned(_) | TrialStatus::Done(_));
    let failed = matches!(status, TrialStatus::Failed(_));
    // A trial that started (its data recorded) is checked against the data too: resumed by
    // `train`, a trial on other data would be refused with a way out (`--allow-change
    // dataset`) that a sweep does not have.
    let trained = finished || dir.join(FINGERPRINT_FILE).exists();
    let checks = check_record(sweep, trial, &dir)
        .and_then(|_| check_trial_identity(sweep, trial, &dir))
        .and_then(|()| match trained {
            true => data_now.check(sweep, trial, &dir, finished),
            false => Ok(()),
        });
    match checks {
        // Nothing trained to resume (it stopped before its first checkpoint), or an attempt
        // that failed (a value that made it diverge, say): its settings, mended in the sweep
        // file, are taken, and the old attempt moved aside.
        Err(changed) if changed.is::<SettingsChanged>() && !finished && (failed || !has_checkpoint(&dir)) => {
            Ok(TrialFolder::StartsAnew(changed))
        }
        result => result.map(|()| TrialFolder::Fits),
    }
}

/// What a start of `sweep` with `--fresh` would do with its folder, as `validate` says it: move
/// it aside, unless it or one of its trials is in use (a folder in use is never moved).
pub fn preview_fresh(sweep: &Sweep) -> Remarks {
    let mut said = Remarks::default();
    let trials = fs::read_dir(&sweep.dir)
        .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default();
    let in_use = std::iter::once(sweep.dir.clone())
        .chain(trials)
        .find_map(|dir| run_dir::in_use_by(&dir).map(|holder| (dir, holder)));
    match in_use {
        Some((dir, holder)) => said.warnings.push(format!(
            "a start with --fresh now would be refused: {} is in use by another byol-run ({holder}), and a \
             folder in use is never moved; wait for it to finish (or stop it)",
            dir.display()
        )),
        None => said.notes.push(format!(
            "--fresh: a start moves {} aside (beside it, as .old-<UTC time>) and runs every trial anew",
            sweep.dir.display()
        )),
    }
    said
}

/// What a start of `sweep` would find in its folder, as `validate` says it: the folder or a
/// trial in use, trials it would refuse, start anew, resume or skip. `listed` is the data the
/// trials read now ([`super::check_data`]).
pub fn preview(sweep: &Sweep, listed: HashMap<String, DatasetFingerprint>) -> anyhow::Result<Remarks> {
    let mut said = Remarks::default();
    if !sweep.dir.is_dir() {
        return Ok(said);
    }
    let refused = "a start now would be refused";
    let sweep_in_use = run_dir::in_use_by(&sweep.dir);
    if let Some(holder) = &sweep_in_use {
        said.warnings.push(format!(
            "{refused}: sweep folder {} is in use by another byol-run ({holder}); wait for it to finish (or \
             stop it), or {}",
            sweep.dir.display(),
            FolderKind::Sweep.elsewhere()
        ));
    }
    let mut data_now = DataNow::of(listed);
    let mut counts: BTreeMap<(&str, &str), Vec<String>> = BTreeMap::new();
    for trial in &sweep.trials {
        let dir = sweep.trial_dir(trial);
        // (A link to a missing folder is in the way: the check below says so.)
        if fs::symlink_metadata(&dir).is_err() {
            continue;
        }
        let status = TrialStatus::read(&dir);
        // (A sweep that runs holds its trials too: said once, above.)
        if sweep_in_use.is_none() {
            if let Some(holder) = run_dir::in_use_by(&dir) {
                said.warnings.push(format!(
                    "{}: {} is in use by another byol-run ({holder}): a start now would fail that trial",
                    trial.id(),
                    dir.display()
                ));
            }
        }
        let what = match check_trial_folder(sweep, trial, &status, &mut data_now) {
            Err(refusal) => {
                said.warnings.push(format!("{refused}: {refusal:#}"));
                continue;
            }
            Ok(TrialFolder::StartsAnew(changed)) => {
                let what = changed
                    .downcast_ref::<SettingsChanged>()
                    .map_or_else(|| format!("{changed:#}"), |c| c.what.clone());
                said.notes.push(format!(
                    "{}: a start runs it anew, moving its last attempt aside into {}: {}",
                    trial.id(),
                    sweep.dir.join(OLD_ATTEMPTS_DIR).display(),
                    what.replace('\n', "\n  ")
                ));
                continue;
            }
            Ok(TrialFolder::Fits) => match status {
                TrialStatus::Done(_) => ("skips", " (finished)"),
                TrialStatus::Pruned(_) => ("skips", " (pruned)"),
                _ if has_checkpoint(&dir) => {
                    // As the trial's start decides: a checkpoint to go on from, or none intact.
                    let checkpoints = checkpoint::Checkpointer::new(dir.join(run_dir::CHECKPOINTS_DIR), 0);
                    if let Err(e) = checkpoints.resume_point(false) {
                        said.warnings.push(format!(
                            "{}: a start would fail it again: {e:#}\nFor this trial alone, `byol-run train {} \
                             --fresh` starts it over (its attempt moved into {})",
                            trial.id(),
                            dir.join(run_dir::CONFIG_FILE).display(),
                            sweep.dir.join(OLD_ATTEMPTS_DIR).display()
                        ));
                        continue;
                    }
                    match status {
                        TrialStatus::Failed(_) => ("retries", " (failed) from a checkpoint"),
                        _ => ("resumes", " from a checkpoint"),
                    }
                }
                _ => {
                    // No checkpoint: a start trains from step 0, where no steps trained are on
                    // record (the trial's start refuses to mix a new run into their records).
                    let checkpoints = checkpoint::Checkpointer::new(dir.join(run_dir::CHECKPOINTS_DIR), 0);
                    if let Err(lost) = byol_train::train::state::check_no_checkpoints_lost(&dir, &checkpoints) {
                        said.warnings
                            .push(format!("{}: a start would fail it: {lost:#}", trial.id()));
                        continue;
                    }
                    match status {
                        TrialStatus::Failed(_) => ("retries", " (failed)"),
                        _ => ("starts", ""),
                    }
                }
            },
        };
        counts.entry(what).or_default().push(trial.id());
    }
    for stray in trials_outside(sweep) {
        said.warnings.push(format!(
            "{} holds {stray}, which is not a trial of this sweep (the [sweep] table changed since it ran): a \
             start leaves it out of the summary",
            sweep.dir.display()
        ));
    }
    if !counts.is_empty() {
        let parts: Vec<String> = counts
            .iter()
            .map(|((does, why), trials)| format!("{does} {}{why}", trials.join(", ")))
            .collect();
        said.notes.push(format!(
            "{} holds trials from before: a start {}",
            sweep.dir.display(),
            parts.join("; ")
        ));
    }
    Ok(said)
}

/// A trial whose last attempt failed or left no checkpoint, and whose settings changed since:
/// that attempt is moved aside (into [`OLD_ATTEMPTS_DIR`]) and the trial recorded with its new
/// settings, to start anew.
fn start_anew(sweep: &Sweep, trial: &Trial, changed: &anyhow::Error) -> anyhow::Result<TrialStatus> {
    let dir = sweep.trial_dir(trial);
    let which = match has_checkpoint(&dir) {
        true => "failed",
        false => "left no checkpoint",
    };
    let attempts = sweep.dir.join(OLD_ATTEMPTS_DIR);
    if let Some(moved) = run_dir::move_aside_into(&dir, &attempts, FolderKind::Trial)? {
        say!(
            "{}: its settings or data changed since its last attempt, which {which}: starting it anew \
             (the old attempt moved aside to {})\n  {}",
            trial.id(),
            moved.display(),
            changed
                .downcast_ref::<SettingsChanged>()
                .map_or_else(|| format!("{changed:#}"), |c| c.what.clone())
                .replace('\n', "\n  ")
        );
    }
    check_or_record(sweep, trial, &dir)?;
    Ok(TrialStatus::Pending)
}

/// The error of a trial folder that holds another experiment or other data than the sweep now
/// gives it (its parameters, settings or data changed since), as opposed to one that cannot be
/// read or written.
#[derive(Debug)]
struct SettingsChanged {
    /// What differs (what a trial started anew says of its old attempt).
    what: String,
    /// What to do, when the sweep stops for it.
    advice: String,
}

impl std::fmt::Display for SettingsChanged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A list of differences ends on its own line.
        let between = if self.what.contains('\n') { "\n" } else { ". " };
        write!(f, "{}{between}{}", self.what, self.advice)
    }
}

/// The way out of a sweep folder whose trial holds another experiment or other data.
fn new_sweep_advice(sweep: &Sweep) -> String {
    format!(
        "Set another run.name (a new sweep folder), or add --fresh to move {} aside and run every trial anew \
         (nothing is deleted)",
        sweep.dir.display()
    )
}

impl std::error::Error for SettingsChanged {}

/// Says which finished trials have no value of the sweep's metric, and why, as they are left out
/// of the ranking: all of them, or some (trained before the metric was chosen, without what it
/// needs), which would leave the best of the others "best".
fn say_what_is_not_ranked(sweep: &Sweep, rows: &[Row]) {
    let (trials, unmeasured): (Vec<String>, Vec<&RunSummary>) = rows
        .iter()
        .filter(|row| row.metric.is_none())
        .filter_map(|row| match &row.status {
            TrialStatus::Done(summary) => Some((row.trial.id(), summary.as_ref())),
            _ => None,
        })
        .unzip();
    if unmeasured.is_empty() {
        return;
    }
    let metric = sweep.config.metric;
    // kNN accuracy after training but none before: measured without eval.before_training.
    let without_before = metric == Metric::KnnGain && unmeasured.iter().any(|s| s.knn_after.is_some());
    let (why, remedy) = match metric {
        _ if without_before => (
            " (no kNN accuracy before training: eval.before_training was false when they trained)",
            "to train them again with it, set another run.name (a new sweep folder) or add --fresh",
        ),
        Metric::KnnTop5 => (
            " (top-5 needs labelled images of more than 5 classes)",
            "choose another metric",
        ),
        Metric::KnnTop1 | Metric::KnnGain => (" (the kNN monitor needs labelled images)", "choose another metric"),
        Metric::ProbeTop1 => (
            " (the online probe needs labelled images and eval.online_probe)",
            "choose another metric",
        ),
        _ => ("", "choose another metric"),
    };
    let ranked = match rows.iter().any(|row| row.metric.is_some()) {
        true => "they are not ranked beside the others",
        false => "none is ranked",
    };
    byol::eprint_line!(
        "warning: {} finished without a value of sweep.metric = \"{}\"{why}, so {ranked}; {remedy}",
        trials.join(", "),
        metric.name()
    );
}

/// Refuses a sweep folder that a sweep cannot use: one that is a run's, lies inside a run's or
/// another sweep's folder, or holds a run that is none of its trials (unless `fresh` moves the
/// folder aside, said, with everything in it: a sweep's later `--fresh` would carry it away
/// with the trials unsaid). A run in a folder named like a trial (`trial-001`) is the trials'
/// own check's: it must hold that trial.
pub fn check_sweep_folder(dir: &Path, fresh: bool) -> anyhow::Result<()> {
    check_not_a_run(dir)?;
    run_dir::check_not_inside_a_run(dir, FolderKind::Sweep)?;
    if fresh {
        return Ok(());
    }
    let strangers: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| !e.file_name().to_string_lossy().starts_with("trial-"))
                .map(|e| e.path())
                .filter(|p| run_dir::holds_run_records(p) && !p.join(TRIAL_FILE).is_file())
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    if let Some(first) = strangers.first() {
        bail!(
            "sweep folder {} holds a run that is none of its trials ({first}{}): the sweep's --fresh would move \
             it aside with them. Move it out of the folder, or set another run.name for the sweep",
            dir.display(),
            match strangers.len() {
                1 => String::new(),
                n => format!(" and {} more", n - 1),
            }
        );
    }
    Ok(())
}

/// Refuses a sweep folder that holds a run's own records (trained with `--run-dir` there, or
/// named like it): the trials' folders and the summaries would be written among its files, and
/// `--fresh` would move the run aside with them.
fn check_not_a_run(dir: &Path) -> anyhow::Result<()> {
    let Some(found) = [run_dir::CONFIG_FILE, run_dir::CHECKPOINTS_DIR]
        .into_iter()
        .find(|name| dir.join(name).exists())
    else {
        return Ok(());
    };
    bail!(
        "sweep folder {} holds a run (its {found}), not a sweep: the trials would be written among its \
         files. Set another run.name for the sweep (its folder is <run.output_dir>/<run.name>-sweep)",
        dir.display()
    )
}

/// The finished trials whose results are not this sweep's, each with why, said on stderr. The
/// start checked every finished trial; this catches what happened while the sweep ran: another
/// command that trained other settings to the end in a trial's folder (the sweep's own attempt
/// then found it in use), and data that changed between two trials' starts.
fn results_not_of_this_sweep(sweep: &Sweep, check_data: bool) -> BTreeMap<String, String> {
    let finished: Vec<(&Trial, PathBuf)> = sweep
        .trials
        .iter()
        .map(|trial| (trial, sweep.trial_dir(trial)))
        .filter(|(_, dir)| matches!(TrialStatus::read(dir), TrialStatus::Done(_) | TrialStatus::Pruned(_)))
        .collect();
    let mut not_ranked = BTreeMap::new();
    for (trial, dir) in &finished {
        if let Err(e) = check_trial_identity(sweep, trial, dir) {
            not_ranked.insert(trial.id(), format!("{e:#}"));
        } else if let Some(changes) = continued_with_changes(dir) {
            not_ranked.insert(
                trial.id(),
                format!(
                    "it was continued with changes (--allow-change) {changes}, so its result is not of its \
                     parameters alone; byol-run train {} --fresh trains it anew",
                    dir.join(run_dir::CONFIG_FILE).display()
                ),
            );
        }
    }
    let ours: Vec<(&Trial, PathBuf)> = finished
        .into_iter()
        .filter(|(trial, _)| !not_ranked.contains_key(&trial.id()))
        .collect();
    if check_data {
        not_ranked.extend(trained_on_changed_data(sweep, &ours));
    }
    for (id, why) in &not_ranked {
        byol::eprint_line!("{id}: not ranked: {why}");
    }
    not_ranked
}

/// The changes a finished trial's resumes allowed (`byol-run train` on its folder with
/// `--allow-change`), as its summary records them; None for a trial trained with one experiment.
fn continued_with_changes(dir: &Path) -> Option<String> {
    let (TrialStatus::Done(summary) | TrialStatus::Pruned(summary)) = TrialStatus::read(dir) else {
        return None;
    };
    let changes: Vec<String> = summary.changes_allowed.iter().map(ToString::to_string).collect();
    (!changes.is_empty()).then(|| changes.join("; "))
}

/// Among finished trials of one `[dataset]` (most sweeps have one), those whose record of the data
/// they trained on ([`DatasetFingerprint::trained_on`]) differs from the data the sweep reads now. The data is read
/// only when the trials' records disagree with each other.
fn trained_on_changed_data(sweep: &Sweep, finished: &[(&Trial, PathBuf)]) -> BTreeMap<String, String> {
    let mut groups: HashMap<String, Vec<(&Trial, DatasetFingerprint)>> = HashMap::new();
    for (trial, dir) in finished {
        let Ok(experiment) = sweep.experiment(trial, None) else {
            continue;
        };
        if let Ok(Some(recorded)) = DatasetFingerprint::trained_on(dir) {
            groups.entry(data_key(&experiment)).or_default().push((trial, recorded));
        }
    }
    let mut changed = BTreeMap::new();
    for group in groups.values() {
        // By their differences: records written before parts were kept hold none.
        if group
            .iter()
            .all(|(_, recorded)| recorded.differences(&group[0].1).is_empty())
        {
            continue;
        }
        let (first, _) = group[0];
        say!("the trials' records of their data disagree: reading the data again to tell which trained on it");
        let now = sweep
            .experiment(first, None)
            .and_then(|experiment| DatasetFingerprint::of_experiment(&experiment));
        let now = match now {
            Ok(now) => now,
            Err(e) => {
                byol::eprint_line!(
                    "warning: the trials of this sweep started on different data (it changed while the sweep \
                     ran), and it cannot be read now to tell which trials trained on it: {e:#}"
                );
                continue;
            }
        };
        for (trial, recorded) in group {
            let differences = recorded.differences(&now);
            if !differences.is_empty() {
                let why = format!(
                    "it trained on data that changed while the sweep ran; its record of its data against the \
                     data now:\n{}\nRun the sweep with --fresh to train every trial on the data as it is now",
                    differences.join("\n")
                );
                changed.insert(trial.id(), why);
            }
        }
    }
    changed
}

/// The problems of `trial`'s values, checked as a run checks them at its start, on each of
/// `devices` (a trial may run on any of them; none: the experiment's own), one line each: before
/// any trial trains, as a value out of range in the last trial would otherwise stop it only after
/// the others trained.
fn check_values(sweep: &Sweep, trial: &Trial, devices: &[String]) -> Result<(), Vec<String>> {
    let devices: Vec<Option<&str>> = match devices {
        [] => vec![None],
        devices => devices.iter().map(|d| Some(d.as_str())).collect(),
    };
    let mut problems: Vec<String> = devices
        .into_iter()
        .filter_map(|device| {
            let checked = sweep
                .experiment(trial, device)
                .and_then(|experiment| experiment.validate());
            checked.err().map(|e| format!("{e:#}"))
        })
        .collect();
    problems.dedup();
    match problems.is_empty() {
        true => Ok(()),
        false => Err(problems),
    }
}

/// The trial folders in the sweep folder that are not among the sweep's trials (fewer values or
/// trials than when they ran), with their parameters when recorded.
fn trials_outside(sweep: &Sweep) -> Vec<String> {
    let ours: Vec<String> = sweep.trials.iter().map(Trial::id).collect();
    let Ok(entries) = fs::read_dir(&sweep.dir) else {
        return Vec::new();
    };
    let mut stray: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().join(TRIAL_FILE).is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !ours.contains(name))
        .collect();
    stray.sort();
    stray
        .into_iter()
        .map(|name| {
            let recorded = fs::read_to_string(sweep.dir.join(&name).join(TRIAL_FILE))
                .ok()
                .and_then(|text| text.parse::<toml::Table>().ok())
                .and_then(|record| match record.get("parameters") {
                    Some(toml::Value::Table(parameters)) => Some(
                        parameters
                            .iter()
                            .map(|(k, v)| format!("{k} = {}", byol_train::sweep::show(v)))
                            .collect::<Vec<_>>()
                            .join(", "),
                    ),
                    _ => None,
                })
                .map(|values| format!(" ({values})"));
            format!("{name}{}", recorded.unwrap_or_default())
        })
        .collect()
}

/// Keys a resume may change (`run_dir::SAFE_TO_CHANGE`) that change a finished trial's figures:
/// threads, devices and the fused update round differently (and time differently); the kNN
/// cadence says what was measured.
const CHANGES_FIGURES: &[&str] = &[
    "run.threads",
    "run.device",
    "optimizer.fused",
    "eval.before_training",
    "eval.every_epochs",
    "eval.curve_points",
];

/// The keys of [`CHANGES_FIGURES`] whose values a finished trial trained with (`trained`, its
/// experiment) differ from what this sweep now gives it (`key: trained -> now`). Left out: two
/// names of one device (`auto` and `cpu` on a machine without a GPU), and where trials run as
/// child processes (`--devices` with several), the device the sweep picks and the threads it
/// shares out (`run.threads = 0`).
fn settings_since(sweep: &Sweep, trial: &Trial, trained: &str, devices: &[String]) -> Vec<String> {
    let in_process = devices.len() <= 1;
    let device = devices.first().map(String::as_str).filter(|_| in_process);
    let Ok(now) = sweep.experiment(trial, device).and_then(|e| e.to_toml()) else {
        return Vec::new();
    };
    byol_train::train::state::changes_among(CHANGES_FIGURES, trained, &now)
        .into_iter()
        .filter(|c| in_process || c.key != "run.device")
        .filter(|c| !(c.key == "run.threads" && !in_process && c.now.as_deref() == Some("0")))
        .map(|c| c.to_string())
        .collect()
}

/// Whether a trial folder holds a checkpoint to resume from.
fn has_checkpoint(dir: &Path) -> bool {
    !byol_train::checkpoint::Checkpointer::new(dir.join(run_dir::CHECKPOINTS_DIR), 0)
        .list()
        .is_empty()
}

/// Writes the trial's parameters into its folder, or checks them against what is there (see
/// [`check_record`]).
fn check_or_record(sweep: &Sweep, trial: &Trial, dir: &Path) -> anyhow::Result<()> {
    if !check_record(sweep, trial, dir)? {
        return Ok(());
    }
    run_dir::create_dir_in_place(dir)?;
    let text = format!(
        "# The parameters of this trial of `byol-run sweep` (checked when the sweep resumes).\n{}",
        toml::to_string(&trial.record())?
    );
    run_dir::replace_file(&dir.join(TRIAL_FILE), text.as_bytes())
}

/// Checks the trial's parameters recorded in its folder against the trial, writing nothing:
/// true when the record is to be written (none yet; a trial that never started, with neither a
/// run's records nor a result, takes the values
/// the sweep now gives it, and values spelled otherwise, `1` for `1.0`, that make the same
/// experiment are the same trial's).
fn check_record(sweep: &Sweep, trial: &Trial, dir: &Path) -> anyhow::Result<bool> {
    let file = dir.join(TRIAL_FILE);
    let record = trial.record();
    let Ok(text) = fs::read_to_string(&file) else {
        return Ok(true);
    };
    let before: toml::Table = toml::from_str(&text).with_context(|| format!("cannot parse {}", file.display()))?;
    if before == record {
        return Ok(false);
    }
    let recorded = Trial::from_record(&before).with_context(|| format!("cannot read {}", file.display()))?;
    let same_experiment = || -> anyhow::Result<bool> {
        Ok(sweep.experiment(&recorded, None)?.to_toml()? == sweep.experiment(trial, None)?.to_toml()?)
    };
    // A result without its run's records (a folder copied with its summary only) is still the
    // recorded values' result: never the new values'.
    let never_started =
        checkpoint::trained_experiment(dir).is_none() && !dir.join(byol_train::train::SUMMARY_FILE).exists();
    if never_started || same_experiment().unwrap_or(false) {
        return Ok(true);
    }
    Err(SettingsChanged {
        what: format!(
            "{} was run with other parameters ({}) than the sweep now gives {} ({}): the [sweep] table \
             changed since",
            dir.display(),
            recorded.describe(),
            trial.id(),
            trial.describe()
        ),
        advice: new_sweep_advice(sweep),
    }
    .into())
}

/// A trial folder that already holds a run (a checkpoint or its `config.toml`) must hold this
/// trial's experiment, `--set` overrides included: otherwise a finished trial would report the
/// result of other settings, and an unfinished one would resume them.
fn check_trial_identity(sweep: &Sweep, trial: &Trial, dir: &Path) -> anyhow::Result<()> {
    let Some(saved) = checkpoint::trained_experiment(dir) else {
        return Ok(());
    };
    let now = sweep.experiment(trial, None)?.to_toml()?;
    let changes = run_dir::unsafe_changes(&saved, &now)
        .with_context(|| format!("cannot read {}", dir.join(run_dir::CONFIG_FILE).display()))?;
    if changes.is_empty() {
        return Ok(());
    }
    let diff: Vec<String> = changes.iter().map(|c| format!("  {c}")).collect();
    // Trained again since the sweep last ranked it (`byol-run train` on its folder): the ranking
    // on disk shows it as it was.
    let modified = |path: &Path| fs::metadata(path).and_then(|m| m.modified()).ok();
    let ranked_before = match (
        modified(&dir.join(byol_train::train::SUMMARY_FILE)),
        modified(&sweep.dir.join(SUMMARY_CSV)),
    ) {
        (Some(trained), Some(ranked)) if trained > ranked => format!(
            "\nIt was trained again after the sweep last ranked it: {} and summary.md show its earlier result.",
            sweep.dir.join(SUMMARY_CSV).display()
        ),
        _ => String::new(),
    };
    // A `train --fresh` of its folder moved the sweep's own attempt among the old attempts: put
    // back, it is the trial again.
    let own_attempt = fs::read_dir(sweep.dir.join(OLD_ATTEMPTS_DIR))
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{}.old-", trial.id())))
        })
        .max();
    let ranked_before = match own_attempt {
        Some(attempt) => format!(
            "{ranked_before}\nAn earlier attempt of it is in {}: if it is the sweep's own, moving {} aside and \
             that folder back to {} makes it the trial again.",
            attempt.display(),
            dir.display(),
            dir.display()
        ),
        None => ranked_before,
    };
    Err(SettingsChanged {
        what: format!(
            "{} ({}) was run with other settings than this sweep now gives it (different --set \
             overrides, or an edited file), so its result or checkpoints are not this sweep's:\n{}{ranked_before}",
            trial.id(),
            dir.display(),
            diff.join("\n")
        ),
        advice: new_sweep_advice(sweep),
    }
    .into())
}

/// The data the sweep's trials read now, to check trials that trained against: a trial trained on
/// other data (files added, replaced or removed since) must not be ranked beside trials trained on
/// this, nor resumed on this. The data is read once per distinct `[dataset]` and `[eval]` splits
/// (in most sweeps, once), and only when a trial has trained.
#[derive(Default)]
struct DataNow(HashMap<String, Option<DatasetFingerprint>>);

impl DataNow {
    /// The data listed at the start ([`super::check_data`]), by [`data_key`].
    fn of(listed: HashMap<String, DatasetFingerprint>) -> Self {
        DataNow(listed.into_iter().map(|(key, data)| (key, Some(data))).collect())
    }

    /// A [`SettingsChanged`] error when the trial in `dir` (`finished`, or started) trained on
    /// other data than its experiment reads now.
    fn check(&mut self, sweep: &Sweep, trial: &Trial, dir: &Path, finished: bool) -> anyhow::Result<()> {
        let experiment = sweep.experiment(trial, None)?;
        let now = match self.0.entry(data_key(&experiment)) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                say!("reading the data to check the trials that trained before against it");
                // Data that cannot be read (moved, gone) still leaves the results to rank; a trial
                // to resume then stops at its start, naming what it cannot read.
                let read = DatasetFingerprint::of_experiment(&experiment).inspect_err(|e| {
                    byol::eprint_line!(
                        "warning: cannot read the data of trials such as {} to check it, so the results of \
                         finished ones are ranked unchecked: {e:#}",
                        trial.id()
                    )
                });
                entry.insert(read.ok())
            }
        };
        let Some(now) = now else {
            return Ok(());
        };
        let Some(recorded) = DatasetFingerprint::trained_on(dir)? else {
            if finished {
                byol::eprint_line!(
                    "warning: {} finished, but its folder records no data (no checkpoint, no {FINGERPRINT_FILE}): its \
                     result is ranked without checking the data it trained on",
                    trial.id()
                );
            }
            return Ok(());
        };
        let differences = recorded.differences(now);
        if differences.is_empty() {
            return Ok(());
        }
        let (what, why) = match finished {
            true => (
                "finished",
                "Its result would be ranked beside trials trained on this data",
            ),
            false => (
                "trained",
                "Resumed on this data, it would mix two datasets in one trial",
            ),
        };
        // An unfinished trial alone may also be moved aside: it then starts anew on this data.
        let alone = match finished {
            true => String::new(),
            false => format!(". Or move {} aside, and it starts anew", dir.display()),
        };
        Err(SettingsChanged {
            what: format!(
                "{} ({}) {what} on other data than this sweep reads now (its newest checkpoint, or its {} \
                 where it has none, records it):\n{}",
                trial.id(),
                dir.display(),
                FINGERPRINT_FILE,
                differences.join("\n")
            ),
            advice: format!(
                "{why}. Point the data keys at the data the sweep started on. {}{alone}",
                new_sweep_advice(sweep)
            ),
        }
        .into())
    }
}

/// One trial at a time in this process. Returns the signal that stopped the sweep, if one did;
/// failed trials whose error could not be recorded go to `unrecorded`.
fn run_in_process(
    sweep: &Sweep,
    options: &SweepOptions,
    todo: VecDeque<(&Trial, TrialStatus)>,
    (signals, still_in_place): (&Arc<StopOnSignals>, StillInPlace<'_>),
    unrecorded: &Mutex<Vec<String>>,
) -> anyhow::Result<Option<i32>> {
    let device = options.devices.first().map(String::as_str);
    let total = sweep.trials.len();
    // The sweep's handlers, held across the trials: a signal while one trial ends and the next
    // is set up stops the sweep too, where per-trial handlers would leave it unheard.
    for (trial, status) in todo {
        if let Some(signal) = signals.signal() {
            say!("stopped by signal before {}; run the sweep again to go on", trial.id());
            return Ok(Some(signal));
        }
        still_in_place()?;
        let dir = sweep.trial_dir(trial);
        let how = how_it_starts(&status, &dir);
        say!("\n== {} of {total} ({how}): {} ==", trial.id(), trial.describe());
        retire_error(&dir);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let experiment = sweep.experiment(trial, device)?;
            train(
                &experiment,
                &RunOptions {
                    run_dir: Some(dir.clone()),
                    folder: FolderKind::Trial,
                    quiet: options.quiet,
                    pruner: sweep.pruner(),
                    signals: Some(signals.clone()),
                    ..Default::default()
                },
            )
        }));
        let error = match result {
            Ok(Ok(summary)) if summary.interrupted => {
                say!(
                    "{}: stopped by signal at step {} of {}; run the sweep again to resume",
                    trial.id(),
                    summary.steps,
                    summary.total_steps
                );
                return Ok(Some(summary.signal.unwrap_or(libc::SIGTERM)));
            }
            Ok(Ok(summary)) => {
                say!("{}: {}", trial.id(), result_line(sweep, &summary));
                // A signal during the trial's last evaluation: the trial is done, the sweep stops.
                if let Some(signal) = summary.signal {
                    return Ok(Some(signal));
                }
                continue;
            }
            Ok(Err(e)) => format!("{e:#}"),
            // libtorch's message, without the C++ backtrace under it.
            Err(panic) => panic_message(panic.as_ref())
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
        };
        byol::eprint_line!("{}: failed: {error}", trial.id());
        // (A trial stopped by its folder's move: nothing written at the old path.)
        still_in_place()?;
        record_failure(trial, &dir, &error, unrecorded);
    }
    // Every trial ended: a signal after the last one is for the caller to report.
    Ok(None)
}

/// Moves the error of a trial's earlier attempt to `previous-error.txt` as a new one starts: a new
/// attempt killed outright (no error of its own) is unfinished, with checkpoints to resume, not
/// failed, and the reason of the failure it retried is kept. Holds the trial folder's lock: a
/// folder another process trains is left as it is (this attempt fails on that lock, unrecorded).
fn retire_error(dir: &Path) {
    let error = dir.join(ERROR_FILE);
    if !error.is_file() {
        return;
    }
    let retired = FolderLock::acquire(dir, FolderKind::Trial).and_then(|_lock| byol_train::train::retire_failure(dir));
    if let Err(e) = retired {
        byol::eprint_line!("warning: the earlier failure's {} stays: {e:#}", error.display());
    }
}

/// Writes a failed trial's `error.txt`, which ranks it as failed, holding the trial folder's
/// lock: a trial that failed because another process (a `byol-run train` of that folder) owns
/// it is that process's to record, and is left as it is. A trial whose error is not written
/// goes to `unrecorded`.
fn record_failure(trial: &Trial, dir: &Path, error: &str, unrecorded: &Mutex<Vec<String>>) {
    let path = dir.join(ERROR_FILE);
    // Not made again where it is missing: moved or removed while the trial ran.
    let written = FolderLock::create_and_acquire(dir, FolderKind::Trial)
        .and_then(|_lock| {
            fs::write(&path, format!("{error}\n")).with_context(|| format!("cannot write {}", path.display()))
        })
        .inspect_err(|e| byol::eprint_line!("warning: {} not written: {e:#}", path.display()));
    if written.is_err() {
        unrecorded.lock().unwrap_or_else(|e| e.into_inner()).push(trial.id());
    }
}

/// A trial folder's `error.txt` as it is now (its text and when it was written), to tell one
/// the child wrote from one left before, the same text written again included.
fn error_file_state(dir: &Path) -> Option<(Vec<u8>, Option<std::time::SystemTime>)> {
    let path = dir.join(ERROR_FILE);
    let text = fs::read(&path).ok()?;
    Some((text, fs::metadata(&path).and_then(|m| m.modified()).ok()))
}

/// How a trial of `status` in `dir` starts, for its console line.
fn how_it_starts(status: &TrialStatus, dir: &Path) -> &'static str {
    match status {
        TrialStatus::Unfinished if has_checkpoint(dir) => "resuming",
        TrialStatus::Unfinished => "starting again, no checkpoint to resume from",
        TrialStatus::Failed(_) if has_checkpoint(dir) => "retrying after a failure, from its newest checkpoint",
        TrialStatus::Failed(_) => "retrying after a failure",
        _ => "starting",
    }
}

/// One child process per device at a time. Returns the signal that stopped the sweep, if one did;
/// failed trials whose error could not be recorded go to `unrecorded`.
fn run_parallel(
    sweep: &Sweep,
    options: &SweepOptions,
    todo: VecDeque<(&Trial, TrialStatus)>,
    (signals, still_in_place): (&StopOnSignals, StillInPlace<'_>),
    unrecorded: &Mutex<Vec<String>>,
) -> anyhow::Result<Option<i32>> {
    let program = options.program.clone();
    // The children train the base experiment (without [sweep]) with each trial's --set overrides.
    let base = sweep.dir.join(BASE_EXPERIMENT_FILE);
    run_dir::replace_file(&base, sweep.base_text().as_bytes())?;
    if let Some(pruner) = sweep.pruner() {
        pruner.save(&sweep.dir.join(PRUNER_FILE))?;
    }
    let stop = signals.flag();
    let queue = Mutex::new(todo);
    let interrupted = AtomicBool::new(false);
    // The first thread to find the sweep's folder moved stops the others, its error the sweep's.
    let moved = Mutex::new(None);
    let total = sweep.trials.len();
    std::thread::scope(|scope| {
        for device in &options.devices {
            let (queue, interrupted, program, base) = (&queue, &interrupted, &program, &base);
            let (unrecorded, moved) = (&unrecorded, &moved);
            let in_place = move || match still_in_place() {
                Ok(()) => true,
                Err(e) => {
                    interrupted.store(true, Ordering::Relaxed);
                    moved.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
                    false
                }
            };
            scope.spawn(move || loop {
                if stop.load(Ordering::Relaxed) || interrupted.load(Ordering::Relaxed) || !in_place() {
                    return;
                }
                let Some((trial, status)) = queue.lock().expect("queue lock").pop_front() else {
                    return;
                };
                let dir = sweep.trial_dir(trial);
                say!(
                    "{} of {total} on {device} ({}): {} (log: {})",
                    trial.id(),
                    how_it_starts(&status, &dir),
                    trial.describe(),
                    dir.join(LOG_FILE).display()
                );
                retire_error(&dir);
                // One left (another process held the folder) is not this attempt's error; the
                // child's own is told from it by its text and time.
                let error_left = error_file_state(&dir);
                let outcome = run_child(program, base, sweep, trial, (device, &options.devices), &dir, stop);
                match outcome.and_then(|()| match TrialStatus::read(&dir) {
                    TrialStatus::Done(summary) | TrialStatus::Pruned(summary) => {
                        say!("{} on {device}: {}", trial.id(), result_line(sweep, &summary));
                        Ok(())
                    }
                    _ if stop.load(Ordering::Relaxed) => {
                        interrupted.store(true, Ordering::Relaxed);
                        say!("{}: stopped by signal; run the sweep again to resume", trial.id());
                        Ok(())
                    }
                    _ => bail!("the run ended without finishing (see {})", dir.join(LOG_FILE).display()),
                }) {
                    Ok(()) => {}
                    Err(e) => {
                        byol::eprint_line!("{}: failed: {e:#}", trial.id());
                        // A trial that failed once training had started wrote its whole error;
                        // the log's last lines stand in only for one that could not (refused at
                        // its start, killed, crashed).
                        let error_now = error_file_state(&dir);
                        let wrote_its_own = error_now.is_some() && error_now != error_left;
                        if in_place() && !wrote_its_own {
                            record_failure(trial, &dir, &format!("{e:#}"), unrecorded);
                        }
                    }
                }
            });
        }
    });
    if let Some(moved) = moved.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(moved);
    }
    let stopped = interrupted.load(Ordering::Relaxed) || stop.load(Ordering::Relaxed);
    Ok(stopped.then(|| signals.signal().unwrap_or(libc::SIGTERM)))
}

/// The threads of a trial on the CPU beside others (`--devices cpu,cpu`) whose experiment leaves
/// `run.threads` to libtorch (0): each would take every core, and together they would run tens of
/// times slower than one after another. So each gets its share of the cores.
fn cpu_share(sweep: &Sweep, trial: &Trial, device: &str, devices: &[String]) -> Option<usize> {
    let on_cpu = devices.iter().filter(|d| *d == "cpu").count();
    let automatic = sweep.experiment(trial, Some(device)).is_ok_and(|e| e.run.threads == 0);
    (device == "cpu" && on_cpu > 1 && automatic).then(|| {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        (cores / on_cpu).max(1)
    })
}

/// Runs one trial as `program train <base> --run-dir <dir> --set ...`, its output (progress lines
/// every `logging.every_steps`, evaluations, summary) appended to `<dir>/train.log`. On a signal
/// to the sweep, passes SIGTERM on (the child saves and exits).
fn run_child(
    program: &Path,
    base: &Path,
    sweep: &Sweep,
    trial: &Trial,
    (device, devices): (&str, &[String]),
    dir: &Path,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    // A folder that another process owns (a `byol-run train` of it) is left as it is, without a
    // train.log of this attempt: the child would only find it in use.
    drop(FolderLock::create_and_acquire(dir, FolderKind::Trial)?);
    let log_path = dir.join(LOG_FILE);
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    // Read back through this handle: the log of a trial whose folder was moved while it ran is
    // not at `log_path` any more.
    let mut log_reader = log
        .try_clone()
        .with_context(|| format!("cannot read {}", log_path.display()))?;
    let mut command = Command::new(program);
    command
        .arg("train")
        .arg(base)
        .arg("--run-dir")
        .arg(dir)
        .env(PARENT_ENV, std::process::id().to_string())
        // Its own process group: a Ctrl-C in the terminal reaches the sweep alone, which passes
        // SIGTERM on. (The trial takes the sweep's signal together with one from elsewhere as one
        // request to stop; two from elsewhere make it quit at once.)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SIGTERM is how the sweep stops its trials: a trial keeps it even when the sweep was started
    // with it ignored (which the trial would inherit, and keep).
    // SAFETY: signal(2) is async-signal-safe, as code between fork and exec must be.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            Ok(())
        });
    }
    for assignment in sweep.trial_overrides(trial, Some(device)) {
        command.arg("--set").arg(assignment);
    }
    if let Some(threads) = cpu_share(sweep, trial, device, devices) {
        command.arg("--set").arg(format!("run.threads={threads}"));
    }
    if sweep.pruner().is_some() {
        command.arg("--pruner").arg(sweep.dir.join(PRUNER_FILE));
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))?;
    let mut forwarded = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if stop.load(Ordering::Relaxed) && !forwarded {
            forwarded = true;
            // SAFETY: kill(2) on our own child's PID, which it keeps until we reap it below.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Stopped by the signal passed on: the trial saved a checkpoint and exited with the shell's
    // status for it; whether it finished is read from its folder.
    // (Or, when it came before the trial's handlers were installed, SIGTERM ended it outright.)
    // A job manager (Slurm, systemd) signals the trial and the sweep alike: the trial may have
    // stopped on its own signal before the sweep passed one on, and the sweep's may even come a
    // moment after the trial's exit.
    let stop_signal = |signal: Option<i32>| matches!(signal, Some(libc::SIGTERM | libc::SIGINT));
    let by_stop_signal = stop_signal(status.code().map(|code| code - 128))
        || stop_signal(std::os::unix::process::ExitStatusExt::signal(&status));
    let sweep_stopping = || {
        let deadline = Instant::now() + Duration::from_secs(1);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.load(Ordering::Relaxed)
    };
    let stopped_as_asked = by_stop_signal && sweep_stopping();
    if !status.success() && !stopped_as_asked {
        // The last 64 KiB hold the last lines (the log keeps every attempt's).
        let mut bytes = Vec::new();
        let _ = log_reader
            .seek(std::io::SeekFrom::End(-(64 * 1024)))
            .or_else(|_| log_reader.seek(std::io::SeekFrom::Start(0)))
            .and_then(|_| log_reader.read_to_end(&mut bytes));
        let log = String::from_utf8_lossy(&bytes);
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("{} exited with {status}:\n{}", program.display(), tail.join("\n"));
    }
    Ok(())
}

/// In a trial run as a child of a sweep: the sweep's process ID.
pub fn sweep_parent() -> Option<u32> {
    std::env::var(PARENT_ENV).ok()?.parse().ok()
}

/// In a trial run as a child of a sweep: stop when the sweep's process is gone (killed with -9)
/// rather than train on unattended, as if sent SIGTERM: the runner saves a checkpoint after the
/// current step and returns, and the trial resumes from it when the sweep runs again.
pub fn exit_with_sweep_parent() {
    let Some(parent) = sweep_parent() else {
        return;
    };
    std::thread::spawn(move || {
        while std::os::unix::process::parent_id() == parent {
            std::thread::sleep(Duration::from_millis(500));
        }
        byol::eprint_line!("the sweep (process {parent}) is gone: stopping this trial");
        let _ = signal_hook::low_level::raise(signal_hook::consts::SIGTERM);
        // A run stuck outside the training loop (kNN on a large split) still ends.
        std::thread::sleep(Duration::from_secs(120));
        std::process::abort();
    });
}
