//! `byol-run sweep file.toml`: the trials of the file's `[sweep]` table, one run folder each, then
//! a ranked summary (see `byol_train::sweep`).

pub mod trials;

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use anyhow::{bail, Context};
use clap::Args;

use byol_train::sweep::{Sweep, Trial};
use byol_train::train::state::{DatasetFingerprint, Remarks};
use byol_train::train::Model;

use trials::SweepOptions;

use crate::ExperimentArgs;

#[derive(Args)]
pub struct SweepArgs {
    #[command(flatten)]
    experiment: ExperimentArgs,
    /// Devices to run trials on at the same time, one trial per device, each in a child process
    /// that logs to its trial's train.log: `--devices cuda:0,cuda:1` (default: every GPU when
    /// run.device is "auto" or "cuda" and there are several). One device, or none: one trial at a
    /// time, in this process, on that device.
    #[arg(long, value_delimiter = ',')]
    devices: Vec<String>,
    /// Trials train quietly: only the sweep's lines and the summary are printed.
    #[arg(long)]
    quiet: bool,
    /// Run every trial anew: an existing sweep folder is first moved aside to
    /// `<folder>.old-<UTC time>` (nothing is deleted). Needed when the folder's trials were run
    /// with other settings (e.g. other --set overrides).
    #[arg(long)]
    fresh: bool,
}

fn load(args: &ExperimentArgs) -> anyhow::Result<Sweep> {
    let path = args.experiment.as_ref().context("no sweep file given")?;
    let sweep = Sweep::load(path, &args.overrides)?;
    for warning in &sweep.warnings {
        byol::eprint_line!("warning: {warning}");
    }
    Ok(sweep)
}

pub fn run(args: &SweepArgs) -> anyhow::Result<()> {
    // Each process of a torchrun job would run the sweep: one would take the sweep folder, the
    // other stop at its lock, and the first's trials would wait for peers that never come.
    let world = crate::torchrun_world();
    if world > 1 {
        bail!(
            "byol-run sweep runs one process, which starts its trials itself (one per device with \
             --devices); start it without torchrun (WORLD_SIZE = {world} is set)"
        );
    }
    let sweep = load(&args.experiment)?;
    let devices = if args.devices.is_empty() {
        trials::default_devices(&sweep)
    } else if sweep.sweeps("run.device") {
        // --devices sets each trial's run.device: it would replace the swept value, and the
        // summary would list the device the trial did not run on.
        bail!(
            "--devices sets each trial's run.device, which [sweep.parameters] sweeps: leave out --devices \
             (each trial runs on the device it names), or sweep other keys"
        );
    } else {
        args.devices.clone()
    };
    let options = SweepOptions {
        quiet: args.quiet,
        devices,
        program: std::env::current_exe().context("locating the byol-run binary")?,
        fresh: args.fresh,
    };
    let outcome = trials::run(&sweep, &options)?;
    say!("\n{}", std::fs::read_to_string(&outcome.markdown)?);
    say!(
        "summary          {} and {}",
        outcome.csv.display(),
        outcome.markdown.display()
    );
    if outcome.skipped > 0 {
        let trials = if outcome.skipped == 1 { "trial" } else { "trials" };
        say!(
            "skipped          {} {trials} that had finished or been pruned before",
            outcome.skipped
        );
    }
    // A sweep with failed trials is not a finished sweep: scripts must see it.
    // A trial whose error advises --fresh is told that trial's own (the sweep's moves them all).
    let advised_fresh = outcome.failed.iter().find(|trial| {
        std::fs::read_to_string(sweep.dir.join(trial).join(byol_train::sweep::ERROR_FILE))
            .is_ok_and(|error| error.contains("--fresh"))
    });
    let fresh = advised_fresh.map_or(String::new(), |trial| {
        format!(
            ". Where an error advises --fresh, it means the trial's: `byol-run train {}/config.toml --fresh` \
             starts {trial} over, its attempt moved into {} (the sweep's own --fresh moves every trial aside)",
            sweep.dir.join(trial).display(),
            sweep.dir.join(byol_train::sweep::OLD_ATTEMPTS_DIR).display()
        )
    });
    let recorded = (!outcome.failed.is_empty()).then(|| {
        format!(
            "{} of {} trials failed ({}; each one's {} says why); fix the cause and run the same command \
             again to retry them{fresh}",
            outcome.failed.len(),
            sweep.trials.len(),
            outcome.failed.join(", "),
            byol_train::sweep::ERROR_FILE,
        )
    });
    let unrecorded = (!outcome.unrecorded.is_empty()).then(|| {
        format!(
            "{} of {} trials failed without a record ({}): their {} could not be written, for the reasons \
             said above (another process owns the folder, it cannot be written, or it was moved); run the \
             same command again once that is dealt with",
            outcome.unrecorded.len(),
            sweep.trials.len(),
            outcome.unrecorded.join(", "),
            byol_train::sweep::ERROR_FILE
        )
    });
    let not_ranked = (!outcome.not_ranked.is_empty()).then(|| {
        format!(
            "{} of {} trials are not ranked ({}): their folders hold results that are not this sweep's, \
             as said above. Running the same command again does not retry them (it stops at its start for \
             a trial of other settings or data, and reports one continued with --allow-change as not ranked \
             again): train each anew as said above, add --fresh to move the sweep folder aside and run every \
             trial anew (nothing is deleted), or set another run.name",
            outcome.not_ranked.len(),
            sweep.trials.len(),
            outcome.not_ranked.join(", ")
        )
    });
    let failed: Vec<String> = [recorded, unrecorded, not_ranked].into_iter().flatten().collect();
    let failed = (!failed.is_empty()).then(|| failed.join("\n"));
    if let Some(signal) = outcome.interrupted {
        if let Some(failed) = &failed {
            byol::eprint_line!("{failed}");
        }
        say!("interrupted: run the same command again to resume the sweep");
        return Err(crate::StoppedBySignal(signal).into());
    }
    match failed {
        Some(failed) => bail!("{failed}"),
        None => Ok(()),
    }
}

/// `byol-run validate` on a sweep file: every trial is checked as `validate` checks a run, and
/// what a start (with `--fresh`, or not) would do with the sweep's folder is said.
pub fn validate(args: &ExperimentArgs, fresh: bool) -> anyhow::Result<()> {
    let sweep = load(args)?;
    let file = args.experiment.as_ref().expect("required");
    for trial in &sweep.trials {
        sweep
            .experiment(trial, None)?
            .validate()
            .map_err(|e| trial.named_in(e).context(format!("in sweep file {}", file.display())))?;
    }
    let trials: Vec<&Trial> = sweep.trials.iter().collect();
    check_builds(&sweep, &trials)?;
    sweep.check_metric_measured(&trials)?;
    let (listed, data) = check_data(&sweep, &trials)?;
    trials::check_sweep_folder(&sweep.dir, fresh)?;
    let folder = match fresh && sweep.dir.exists() {
        true => trials::preview_fresh(&sweep),
        false => trials::preview(&sweep, listed)?,
    };
    say!(
        "{} is valid: sweep '{}' of {} into {}",
        args.experiment.as_ref().expect("required").display(),
        sweep.name,
        count_of_trials(sweep.trials.len()),
        sweep.dir.display()
    );
    for note in data.notes.into_iter().chain(folder.notes) {
        say!("note: {note}");
    }
    for warning in data.warnings.into_iter().chain(folder.warnings) {
        say!("warning: {warning}");
    }
    Ok(())
}

/// Builds what each of `trials` would build at its start (networks, optimizer, augmentation) on
/// the CPU: a backbone without the `byol.embedding_layer` a trial names fails here, not after
/// the trials before it trained.
pub fn check_builds(sweep: &Sweep, trials: &[&Trial]) -> anyhow::Result<()> {
    // A network is built once for a run of trials that share it (the usual sweep varies numbers
    // that no build reads: lr, tau_base, whose ranges validate() checks), and the optimizer and
    // augmentation once per distinct set of their tables around it.
    // The network last built: trials of a grid vary the innermost key fastest.
    let mut network_built: Option<([String; 3], Model)> = None;
    let mut built = HashSet::new();
    for trial in trials {
        let experiment = sweep.experiment(trial, None)?;
        let in_trial = || format!("{} ({})", trial.id(), trial.describe());
        let byol = byol::ByolConfig {
            tau_base: 0.0,
            ..experiment.byol.clone()
        };
        // The views' size too: a backbone is built for it (a ViT refuses another).
        let network = [
            toml::to_string(&experiment.backbone)?,
            toml::to_string(&byol)?,
            experiment.augment.image_size().to_string(),
        ];
        let around = [
            toml::to_string(&experiment.optimizer)?,
            toml::to_string(&experiment.augment)?,
        ];
        if !built.insert((network.clone(), around)) {
            continue;
        }
        if network_built.as_ref().is_none_or(|(key, _)| *key != network) {
            drop(network_built.take()); // one network in memory at a time
            network_built = Some((network, Model::build_for_check(&experiment).with_context(in_trial)?));
        }
        let (_, model) = network_built.as_ref().expect("built above");
        model.check_builds_around(&experiment).with_context(in_trial)?;
    }
    Ok(())
}

/// Lists the data of `trials` as a run's start would (once per distinct data: in most sweeps,
/// once) and checks each trial's batch against it: a sweep whose data a start refuses stops before
/// any trial trains, not after every trial failed. Returns the listings by
/// [`byol_train::sweep::data_key`], and what a start would say about each distinct data listed.
pub fn check_data(sweep: &Sweep, trials: &[&Trial]) -> anyhow::Result<(HashMap<String, DatasetFingerprint>, Remarks)> {
    let mut listed = HashMap::new();
    let mut remarks = Remarks::default();
    for trial in trials {
        let experiment = sweep.experiment(trial, None)?;
        let in_trial = || format!("{} ({}): its data", trial.id(), trial.describe());
        let data = match listed.entry(byol_train::sweep::data_key(&experiment)) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                let (data, said, _) = experiment.check_data().with_context(in_trial)?;
                // Trials that list the same folders (another dataset.* key each) say it once.
                for (all, new) in [(&mut remarks.notes, said.notes), (&mut remarks.warnings, said.warnings)] {
                    for line in new {
                        if !all.contains(&line) {
                            all.push(line);
                        }
                    }
                }
                entry.insert(data)
            }
        };
        experiment.check_batch_fits(data).with_context(in_trial)?;
    }
    Ok((listed, remarks))
}

/// "1 trial", "4 trials".
pub fn count_of_trials(count: usize) -> String {
    match count {
        1 => "1 trial".to_string(),
        n => format!("{n} trials"),
    }
}
