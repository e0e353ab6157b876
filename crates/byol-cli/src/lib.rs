//! `byol-run`: the command-line face of byol-rs, as a library so that a binary of your own can
//! be `byol-run` with plugins of your own crates linked in beside the workspace's (which
//! `plugins/all` links):
//!
//! ```no_run
//! // src/main.rs of a crate that depends on byol-cli and on your plugin crates.
//! // use my_backbone as _; // each plugin crate named once, or the linker drops its registration
//! fn main() -> std::process::ExitCode {
//!     byol_cli::main()
//! }
//! ```
//!
//! Everything `byol-run` does, that binary does, with your plugins: `plugins` lists them,
//! experiments name them, and a sweep's trials on several devices run as child processes of that
//! same binary.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use byol_train::train::state::Remarks;
use byol_train::{Experiment, RunOptions, RunSummary};

/// `println!` for what a finished run reports: a reader that went away (`| head`) ends it quietly.
macro_rules! say {
    ($($arg:tt)*) => {
        byol_train::train::print_line(format_args!($($arg)*))
    };
}

mod bench;
mod compare;
mod doctor;
mod embed;
mod eval;
mod plugins;
mod sweep;

#[derive(Parser)]
#[command(
    name = "byol-run",
    version,
    about = "BYOL self-supervised pre-training on libtorch",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    train: TrainArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Train an experiment (the default: `byol-run exp.toml` is `byol-run train exp.toml`).
    Train(TrainArgs),
    /// Check an experiment file (and overrides) without training, and say what a start (with the
    /// same flags) would do with its run folder.
    Validate(ValidateArgs),
    /// List registered plugins with a description and an example config.
    Plugins,
    /// Report libtorch, CUDA, cuDNN, devices and CPU threads.
    Doctor,
    /// Print every experiment key with its default value, annotated.
    Config {
        /// The same (the default, kept for scripts that pass it).
        #[arg(long)]
        defaults: bool,
    },
    /// Write the trained online backbone of a checkpoint with torchvision names (safetensors).
    Export {
        /// A checkpoint folder (runs/<run>/checkpoints/last), or a run folder (runs/<run>: its
        /// newest intact checkpoint).
        checkpoint: PathBuf,
        /// Output file, e.g. resnet50-byol.safetensors.
        #[arg(long)]
        out: PathBuf,
    },
    /// Embed a folder of images with a checkpoint's online backbone.
    Embed(embed::EmbedArgs),
    /// Evaluate a checkpoint's representation: kNN or linear probe.
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// Measure throughput: `bench data` (the input pipeline by worker count), `bench step` (the
    /// training step, against eager PyTorch), `bench e2e` (loader, augmentation and step together),
    /// `bench curve` (the cost of the kNN curve), `bench optim` (per-tensor against fused updates).
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
    /// Write WebDataset tar shards from an image folder (class sub-folders become `.cls`
    /// labels and a `classes.txt` next to the shards; a folder without them gives unlabelled
    /// samples), for `[dataset] type = "webdataset"`.
    Shard(ShardArgs),
    /// One table of several runs: the settings that differ between them and their final
    /// metrics (kNN before/after/top-5/gain, probe, final loss, time, images/s, status).
    Compare(compare::CompareArgs),
    /// Run the hyperparameter sweep of a file's [sweep] table: one run folder per trial,
    /// resumable, then a ranked summary (CSV and markdown).
    Sweep(sweep::SweepArgs),
}

#[derive(Args)]
struct ShardArgs {
    /// The image folder: `<dir>/<class>/<image>`, or images without class sub-folders
    /// (unlabelled; or any tree of images with --unlabelled).
    dir: PathBuf,
    /// Shard file names, with one printf-style number: `shards/train-%06d.tar`.
    #[arg(long, value_name = "PATTERN")]
    out: String,
    /// Samples per shard.
    #[arg(long, value_name = "N")]
    per_shard: usize,
    /// Seed of the order samples are written in (shuffled so that every shard mixes classes).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write samples in sorted path order instead (classes one after another).
    #[arg(long, conflicts_with = "seed")]
    in_order: bool,
    /// Every image at any depth, without labels, even where the folder has sub-folders (which
    /// otherwise are the classes).
    #[arg(long)]
    unlabelled: bool,
}

fn shard(args: &ShardArgs) -> anyhow::Result<()> {
    let seed = (!args.in_order).then_some(args.seed);
    let written = byol_data::webdataset::write_shards(&args.dir, &args.out, args.per_shard, seed, args.unlabelled)
        .map_err(|e| anyhow::anyhow!(e.message()))
        .with_context(|| format!("writing shards of {}", args.dir.display()))?;
    for w in &written.warnings {
        byol::eprint_line!("warning: {w}");
    }
    say!(
        "wrote {} samples{} into {} shard(s); sources in {}",
        written.samples,
        if written.classes.is_empty() {
            match args.unlabelled {
                true => " (unlabelled: --unlabelled)".to_string(),
                false => " (unlabelled: no class sub-folders)".to_string(),
            }
        } else {
            format!(
                " of {} classes (labels in .cls members; names in {})",
                written.classes.len(),
                byol_data::webdataset::CLASSES_FILE
            )
        },
        written.shards.len(),
        written.sources.display()
    );
    say!("[dataset]\ntype = \"webdataset\"\nurls = {:?}", written.urls);
    Ok(())
}

#[derive(Args, Clone)]
struct ExperimentArgs {
    /// The experiment TOML file.
    #[arg(required = true)]
    experiment: Option<PathBuf>,
    /// Override a key: `--set optimizer.lr=0.3` (value in TOML syntax).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

#[derive(Args, Clone)]
struct ValidateArgs {
    #[command(flatten)]
    experiment: ExperimentArgs,
    /// The run folder a start would train in, as `train --run-dir` (runs only).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Say what a start with `--allow-change KEY` would do (runs only; repeatable).
    #[arg(long = "allow-change", value_name = "KEY")]
    allow_change: Vec<String>,
    /// Say what a start with `--fresh` would do.
    #[arg(long, conflicts_with = "allow_change")]
    fresh: bool,
}

#[derive(Args, Clone)]
struct TrainArgs {
    #[command(flatten)]
    experiment: ExperimentArgs,
    /// Run folder (default: <run.output_dir>/<run.name>); an existing one is resumed.
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Print nothing but warnings and the summary.
    #[arg(long)]
    quiet: bool,
    /// Resume even though KEY differs from the experiment the run folder was trained with
    /// (repeatable; a table name such as `optimizer` accepts all its keys). Without it such a
    /// resume is refused with the differences listed. Keys that never need it: logging.*,
    /// checkpoint.*, eval cadence, run.threads, run.device, dataset.workers, dataset.on_bad_image,
    /// optimizer.fused, distributed.overlap_gradients and bucket_mb (the README lists them all).
    #[arg(long = "allow-change", value_name = "KEY")]
    allow_change: Vec<String>,
    /// Start a new run: an existing run folder is first moved aside to
    /// `<run folder>.old-<UTC time>` (nothing is deleted).
    #[arg(long, conflicts_with = "allow_change")]
    fresh: bool,
    /// The pruning rule of the sweep this run is a trial of (`byol-run sweep` passes its
    /// `pruner.json` to trials run as child processes).
    #[arg(long, hide = true, value_name = "FILE")]
    pruner: Option<PathBuf>,
}

/// The processes of the torchrun job this one belongs to (`WORLD_SIZE`), 1 outside one.
pub fn torchrun_world() -> usize {
    std::env::var("WORLD_SIZE")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(1)
}

/// `byol-run` with the process's arguments: runs the command and returns its exit code.
pub fn main() -> ExitCode {
    plugins_all::link();
    sweep::trials::exit_with_sweep_parent();
    // Not UTF-8: not a command name; clap takes it as a path.
    if let Some(message) = unknown_command(std::env::args_os().nth(1).and_then(|a| a.into_string().ok())) {
        byol::eprint_line!("error: {message}");
        return ExitCode::from(2);
    }
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        if let Some(message) = a_second_experiment(&e) {
            byol::eprint_line!("error: {message}");
            std::process::exit(2);
        }
        e.exit()
    });
    let result = match cli.command {
        Some(Command::Train(args)) => train(&args),
        Some(
            Command::Validate(_) | Command::Export { .. } | Command::Embed(_) | Command::Eval(_) | Command::Shard(_),
        ) if torchrun_world() > 1 => {
            // Every process would do the whole of it, and write the same files at once.
            Err(anyhow::anyhow!(
                "this command runs in one process: start it without torchrun (WORLD_SIZE = {} is set); only \
                 training takes part in a data-parallel job",
                torchrun_world()
            ))
        }
        Some(Command::Validate(args)) => validate(&args),
        Some(Command::Plugins) => plugins::print().map_err(Into::into),
        Some(Command::Doctor) => doctor::run(),
        Some(Command::Config { .. }) => {
            use std::io::Write;
            std::io::stdout()
                .lock()
                .write_all(byol_train::experiment::defaults_toml().as_bytes())
                .map_err(Into::into)
        }
        Some(Command::Export { checkpoint, out }) => embed::export(&checkpoint, &out),
        Some(Command::Embed(args)) => embed::run(&args),
        Some(Command::Eval(command)) => eval::run(&command),
        Some(Command::Bench { what }) => bench::run(&what),
        Some(Command::Sweep(args)) => sweep::run(&args),
        Some(Command::Compare(args)) => compare::run(&args),
        Some(Command::Shard(args)) => shard(&args),
        None => train(&cli.train),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`byol-run plugins | head`): nothing left to say.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) if e.is::<StoppedBySignal>() => {
            let signal = e.downcast_ref::<StoppedBySignal>().map_or(libc::SIGTERM, |s| s.0);
            ExitCode::from((128 + signal).clamp(0, 255) as u8)
        }
        Err(e) => {
            // One write: the processes of a data-parallel job share a terminal.
            use std::io::Write;
            let _ = std::io::stderr().write_all(format!("error: {e:#}\n").as_bytes());
            ExitCode::FAILURE
        }
    }
}

/// A run or sweep that a signal stopped after saving its work, which it has said: not an error
/// to print, but not a success either (`byol-run train x.toml && next-step` must not go on). The
/// process exits as the shell reports one ended by that signal: 128 + its number.
#[derive(Debug, Clone)]
pub struct StoppedBySignal(pub i32);

impl std::fmt::Display for StoppedBySignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stopped by signal {}", self.0)
    }
}

impl std::error::Error for StoppedBySignal {}

/// A first word that is neither a command nor a file, with no extension: a mistyped command
/// (`byol-run trian x.toml`), which clap would take for the experiment file and then report as
/// something else.
fn unknown_command(first: Option<String>) -> Option<String> {
    use clap::CommandFactory;
    let word = first.filter(|w| !w.starts_with('-') && !w.contains(['.', '/']))?;
    let mut cli = Cli::command();
    cli.build(); // adds `help`
    let commands: Vec<&str> = cli.get_subcommands().map(|c| c.get_name()).collect();
    if commands.contains(&word.as_str()) || Path::new(&word).exists() {
        return None;
    }
    let closest = commands
        .iter()
        .map(|c| (edit_distance(c, &word), *c))
        .min()
        .filter(|(distance, _)| *distance <= 2)
        .map_or(String::new(), |(_, c)| format!("; did you mean '{c}'?"));
    Some(format!(
        "'{word}' is neither a command nor an experiment file{closest} (commands: {})",
        commands.join(", ")
    ))
}

/// A command line that names two experiment files (`byol-run a.toml b.toml`), which clap reports
/// as a subcommand in conflict or an unexpected argument: a run trains one experiment.
fn a_second_experiment(error: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    use clap::CommandFactory;
    let command = std::env::args_os()
        .nth(1)
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    let runs_an_experiment = !Cli::command().get_subcommands().any(|c| c.get_name() == command)
        || ["train", "validate"].contains(&command.as_str());
    if !runs_an_experiment || !matches!(error.kind(), ErrorKind::ArgumentConflict | ErrorKind::UnknownArgument) {
        return None;
    }
    let named = |kind| match error.get(kind) {
        Some(ContextValue::String(arg)) => Some(arg.clone()),
        _ => None,
    };
    let second = named(ContextKind::InvalidSubcommand).or_else(|| named(ContextKind::InvalidArg))?;
    Path::new(&second).extension().is_some_and(|e| e == "toml").then(|| {
        format!(
            "'{second}' is a second experiment file: byol-run takes one experiment at a time. Run it once per \
             file, or make the experiments the trials of a sweep (`byol-run sweep`, see the README)"
        )
    })
}

/// Insertions, deletions and substitutions that turn `a` into `b` (Levenshtein).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

fn load(args: &ExperimentArgs) -> anyhow::Result<Experiment> {
    let path = args.experiment.as_ref().context("no experiment file given")?;
    Experiment::load(path, &args.overrides)
}

/// Loads and validates (as training does before its first step), naming the file on errors.
fn load_valid(args: &ExperimentArgs) -> anyhow::Result<Experiment> {
    let experiment = load(args)?;
    let path = args.experiment.as_ref().expect("loaded");
    experiment
        .validate()
        .with_context(|| format!("in experiment file {}", path.display()))?;
    Ok(experiment)
}

fn validate(args: &ValidateArgs) -> anyhow::Result<()> {
    let path = args
        .experiment
        .experiment
        .as_ref()
        .context("no experiment file given")?;
    if std::fs::read_to_string(path).is_ok_and(|text| byol_train::sweep::is_sweep(&text)) {
        if args.run_dir.is_some() || !args.allow_change.is_empty() {
            anyhow::bail!(
                "{} is a sweep: a sweep takes neither --run-dir nor --allow-change (its trials' folders follow \
                 from run.name, and a trial trained with other settings starts anew or is refused)",
                path.display()
            );
        }
        return sweep::validate(&args.experiment, args.fresh);
    }
    let experiment = load_valid(&args.experiment)?;
    let resumed = resumed_with_kept_sources(args, &experiment);
    let rebuilt = match &resumed {
        Some((checkpoint, manifest)) => Some(
            byol_train::train::state::with_checkpoint_sources(&experiment, checkpoint, manifest)
                .with_context(|| format!("in experiment file {}", path.display()))?,
        ),
        None => None,
    };
    let built_from = rebuilt.as_ref().unwrap_or(&experiment);
    let model = byol_train::train::Model::build_for_check(built_from)
        .and_then(|model| model.check_builds_around(built_from).map(|()| model))
        .map_err(|e| anyhow::anyhow!(experiment.pointed_at_set(format!("{e:#}"))))
        .with_context(|| format!("in experiment file {}", path.display()))?;
    let backbone_warnings = model.byol.backbone_warnings();
    let (listed, data, steps_per_epoch) = experiment
        .check_data()
        .with_context(|| format!("in experiment file {}: its data", path.display()))?;
    let folder = check_run_folder(args, &experiment, &model, (&listed, steps_per_epoch))?;
    say!("{} is valid: experiment '{}'", path.display(), experiment.name());
    let pretrained_notes = model.byol.pretrained_notes().to_vec();
    let sources_notes = resumed
        .iter()
        .flat_map(|(_, manifest)| byol_train::train::state::changed_sources(&experiment, manifest));
    let notes = experiment
        .notes()
        .into_iter()
        .chain(pretrained_notes)
        .chain(sources_notes);
    for note in notes.chain(data.notes).chain(folder.notes) {
        say!("note: {note}");
    }
    let warnings = experiment.warnings().into_iter().chain(backbone_warnings);
    for warning in warnings.chain(data.warnings).chain(folder.warnings) {
        say!("warning: {warning}");
    }
    Ok(())
}

/// The checkpoint a start would resume from when it keeps copies of the model's source files (a
/// TorchScript module): a resume builds its networks from those copies, whatever the files named
/// in the experiment now hold, or whether they are still there. None for `--fresh`, a run folder
/// without such a checkpoint, or an experiment without source files.
fn resumed_with_kept_sources(
    args: &ValidateArgs,
    experiment: &Experiment,
) -> Option<(PathBuf, byol_train::checkpoint::Manifest)> {
    use byol_train::checkpoint::Checkpointer;
    if args.fresh || byol_train::train::state::source_files(experiment).is_empty() {
        return None;
    }
    let dir = run_folder(args, experiment);
    let checkpointer = Checkpointer::new(dir.join(byol_train::run_dir::CHECKPOINTS_DIR), 0);
    let (checkpoint, manifest) = checkpointer.resume_point(false).ok()?.latest?;
    (!manifest.sources.is_empty()).then_some((checkpoint, manifest))
}

/// The run folder a start of `experiment` (the file `args` names, with its flags) trains.
fn run_folder(args: &ValidateArgs, experiment: &Experiment) -> PathBuf {
    let path = args.experiment.experiment.as_deref().expect("required");
    match &args.run_dir {
        Some(dir) => dir.clone(),
        // A run folder's own config.toml continues that run, unless --set names another folder.
        None => match run_folder_of_config(path).filter(|_| !renames_the_run(&args.experiment)) {
            Some(dir) => dir,
            None => experiment.run.output_dir.join(experiment.name()),
        },
    }
}

/// What a start of `experiment` (the file `args` names, with its `--set`s and the start's own
/// flags) would find in its run folder, decided as the start decides it (the newest intact
/// checkpoint, its experiment and data; `listed` is the data now), reading only: a folder it
/// refuses whatever the flags is an error; one holding a run is said, as a warning with the
/// start's refusal where it would refuse to resume it.
fn check_run_folder(
    args: &ValidateArgs,
    experiment: &Experiment,
    model: &byol_train::train::Model,
    (listed, steps_per_epoch): (&byol_train::train::state::DatasetFingerprint, Option<u64>),
) -> anyhow::Result<Remarks> {
    use byol_train::checkpoint::Checkpointer;
    use byol_train::run_dir;
    use byol_train::train::state::RunStart;
    let path = args.experiment.experiment.as_deref().expect("required");
    let mut said = Remarks::default();
    let dir = run_folder(args, experiment);
    let in_file = || format!("in experiment file {}: its run folder", path.display());
    if std::fs::symlink_metadata(&dir).is_ok() && !dir.is_dir() {
        anyhow::bail!(
            "{}: cannot use {} as the run folder: it exists and is not a folder (a file, or a link to a missing \
             folder); remove it or choose another folder",
            in_file(),
            dir.display()
        );
    }
    run_dir::check_can_hold_a_run(&dir, run_dir::FolderKind::Run).with_context(in_file)?;
    let checkpoints_refusal = run_dir::dangling_checkpoints_link(&dir)
        .or_else(|| run_dir::checkpoints_of_another_run(&dir))
        .or_else(|| run_dir::unwritable_checkpoints(&dir));
    if let Some(refusal) = checkpoints_refusal {
        said.warnings.push(format!("a start now would be refused: {refusal}"));
    }
    if let Some(holder) = run_dir::in_use_by(&dir) {
        said.warnings.push(format!(
            "a start now would be refused: {} is in use by another byol-run ({holder}); wait for it to finish \
             (or stop it), or use another folder (--run-dir, or run.name)",
            dir.display()
        ));
    }
    let checkpointer = Checkpointer::new(dir.join(run_dir::CHECKPOINTS_DIR), 0);
    // (Checkpoints without the folder's config.toml: a start resumes from them, and writes it;
    // a summary without either: a start refuses to mix a new run into its records.)
    let summary = dir.join(byol_train::train::SUMMARY_FILE).is_file();
    if !run_dir::is_run_folder(&dir) && checkpointer.list().is_empty() && !summary {
        return Ok(said);
    }
    if args.fresh {
        said.notes.push(format!(
            "--fresh: a start moves {} aside (into its sweep's old-attempts for a trial, else beside it as \
             .old-<UTC time>) and trains anew",
            dir.display()
        ));
        return Ok(said);
    }
    let now = experiment.to_toml()?;
    let saved = byol_train::checkpoint::trained_experiment(&dir);
    let experiments: Vec<&str> = [Some(now.as_str()), saved.as_deref()].into_iter().flatten().collect();
    let unknown = run_dir::unknown_allowances(&args.allow_change, &experiments);
    said.warnings
        .extend(unknown.iter().map(|key| run_dir::unknown_allowance_warning(key)));
    // Fewer steps than it trained (fewer epochs, a larger batch, fewer images). The steps
    // planned on the data as listed are at least the start's.
    let epochs = experiment.schedule.epochs;
    let length = steps_per_epoch.map(|per_epoch| (per_epoch * epochs, epochs, per_epoch));
    // What no --allow-change continues, as the start decides it (weights that fit no network
    // built now, or a shorter run), once per checkpoint: the start's refusal may ask, and
    // validate's own warning below.
    let checked = std::cell::RefCell::new(std::collections::HashMap::new());
    let cannot_continue = |checkpoint: &Path, manifest: &byol_train::checkpoint::Manifest| -> Option<String> {
        let known = checked.borrow().get(checkpoint).cloned();
        known.unwrap_or_else(|| {
            let why = byol_train::train::state::cannot_continue(
                (experiment, listed),
                &dir,
                (checkpoint, manifest),
                Some(model),
                length,
            );
            checked.borrow_mut().insert(checkpoint.to_path_buf(), why.clone());
            why
        })
    };
    let found = RunStart::find(
        &dir,
        &checkpointer,
        false,
        &now,
        listed,
        &args.allow_change,
        &cannot_continue,
    );
    // Of the checkpoint a start goes on from, refused or not (the newest intact one), with what
    // it finds on its way there (damaged checkpoints it would skip).
    let (resumed_from, found_on_the_way) = match &found {
        Ok(start) => (start.checkpoint.clone(), start.warnings.clone()),
        Err(_) => checkpointer
            .resume_point(false)
            .map_or((None, Vec::new()), |point| (point.latest, point.warnings)),
    };
    let refusal = found.as_ref().err().map(|e| format!("{e:#}"));
    let refused_anyway = resumed_from
        .as_ref()
        .and_then(|(checkpoint, manifest)| cannot_continue(checkpoint, manifest));
    if let Some(refusal) = &refusal {
        said.warnings
            .push(format!("a start as it is would be refused: {refusal}"));
    }
    // Said where the start's refusal does not say it already.
    if let Some(why) = refused_anyway
        .as_ref()
        .filter(|why| !refusal.as_ref().is_some_and(|refusal| refusal.contains(why.as_str())))
    {
        said.warnings
            .push(format!("a start would be refused, --allow-change or not: {why}"));
    }
    // Read only here: a start moves each damaged checkpoint it skips into damaged/.
    said.warnings.extend(
        found_on_the_way
            .iter()
            .map(|w| match w.starts_with("skipping damaged") {
                true => format!(
                    "a start would {}, moving it into {}",
                    w.replacen("skipping", "skip", 1),
                    checkpointer.dir().join(byol_train::checkpoint::DAMAGED_DIR).display()
                ),
                false => w.clone(),
            }),
    );
    if let (Ok(start), None) = (&found, &refused_anyway) {
        let at_its_end =
            |manifest: &byol_train::checkpoint::Manifest| length.is_some_and(|(total, _, _)| manifest.step >= total);
        let finished = |manifest: &byol_train::checkpoint::Manifest| {
            length
                .is_some_and(|(total, _, _)| byol_train::train::finished_summary(&dir, manifest.step, total).is_some())
        };
        // What the start would record of the changes it allows, as the start itself says it.
        let recorded = |manifest: &byol_train::checkpoint::Manifest, trains_on: bool, finished: bool| {
            let (in_effect, unused) = start.changes_in_effect(trains_on, finished);
            let mut said = String::new();
            if !in_effect.is_empty() {
                said += &format!(
                    "; it records the changes allowed ({}) at step {} in its checkpoints and summary (`byol-run \
                     compare` marks the run as changed)",
                    in_effect.join(", "),
                    manifest.step
                );
            }
            if !unused.is_empty() {
                let what = if finished { "" } else { " train nothing and" };
                said += &format!(
                    "; the changes allowed ({}) would{what} not be recorded",
                    unused.join(", ")
                );
            }
            said
        };
        said.notes.push(match &start.checkpoint {
            Some((_, manifest)) if finished(manifest) => format!(
                "{} holds a run of this experiment that finished at step {}: a start reports it and trains \
                 nothing{} (--fresh starts over, moving it aside)",
                dir.display(),
                manifest.step,
                recorded(manifest, false, true)
            ),
            // Stopped at what is now its last step, or at the end of a length that has changed.
            Some((_, manifest)) if at_its_end(manifest) => format!(
                "{} holds a run of this experiment whose checkpoint of step {} is its last: a start trains \
                 nothing more, evaluates it and writes its summary{} (--fresh starts over, moving it aside)",
                dir.display(),
                manifest.step,
                recorded(manifest, false, false)
            ),
            Some((_, manifest)) => format!(
                "{} holds a run of this experiment: a start goes on from its checkpoint of step {}{}{} (--fresh \
                 starts over, moving it aside)",
                dir.display(),
                manifest.step,
                length.map_or(String::new(), |(total, _, _)| format!(" and trains to step {total}")),
                recorded(manifest, true, false)
            ),
            None => match byol_train::train::state::progress_without_a_checkpoint(&dir, &checkpointer) {
                Some(note) => format!("{} holds a run of this experiment: {note}", dir.display()),
                None => format!(
                    "{} holds a run of this experiment that stopped before its first checkpoint: a start trains \
                     it from step 0 there",
                    dir.display()
                ),
            },
        });
    }
    Ok(said)
}

/// Whether `--set` names another run folder than the file's (`run.name`, `run.output_dir`).
fn renames_the_run(args: &ExperimentArgs) -> bool {
    args.overrides
        .iter()
        .any(|o| o.starts_with("run.name=") || o.starts_with("run.output_dir="))
}

/// The run folder whose own record `path` is (`<run folder>/config.toml`), when it names one.
fn run_folder_of_config(path: &Path) -> Option<PathBuf> {
    let dir = match path.parent()? {
        parent if parent.as_os_str().is_empty() => Path::new("."),
        parent => parent,
    };
    let is_run_record =
        path.file_name()? == byol_train::run_dir::CONFIG_FILE && byol_train::run_dir::is_run_folder(dir);
    is_run_record.then(|| dir.to_path_buf())
}

/// The folder to train in: `--run-dir`; else, when the experiment file is a run folder's own
/// `config.toml`, that folder (training it continues that run, wherever run.output_dir and
/// run.name point: a sweep's trial, a folder moved since); else None, the experiment's own.
fn chosen_run_dir(args: &TrainArgs, experiment: &Experiment) -> Option<PathBuf> {
    if args.run_dir.is_some() {
        return args.run_dir.clone();
    }
    // A run.name or run.output_dir given on the command line chooses another folder: a variant.
    if renames_the_run(&args.experiment) {
        return None;
    }
    let path = args.experiment.experiment.as_deref()?;
    // Absolute: `--fresh` cannot move "." aside.
    let folder = std::fs::canonicalize(run_folder_of_config(path)?).ok()?;
    let named = experiment.run.output_dir.join(experiment.name());
    if std::fs::canonicalize(&named).ok() != std::fs::canonicalize(&folder).ok() {
        byol::eprint_line!(
            "note: {} is the record of the run folder {}: {}, not one in {} (--run-dir chooses the folder)",
            path.display(),
            folder.display(),
            if args.fresh {
                "starting that run over (--fresh)"
            } else {
                "continuing that run"
            },
            named.display()
        );
    }
    Some(folder)
}

fn train(args: &TrainArgs) -> anyhow::Result<()> {
    let experiment = load_valid(&args.experiment)?;
    let run_dir = chosen_run_dir(args, &experiment);
    let options = RunOptions {
        run_dir,
        folder: match sweep::trials::sweep_parent() {
            Some(_) => byol_train::run_dir::FolderKind::Trial,
            None => byol_train::run_dir::FolderKind::Run,
        },
        quiet: args.quiet,
        allow_change: args.allow_change.clone(),
        fresh: args.fresh,
        pruner: args
            .pruner
            .as_deref()
            .map(byol_train::sweep::Pruner::load)
            .transpose()?,
        // A trial of a sweep: the sweep passes its signals on, and a job manager may have sent
        // the same one here too; both together are one request to stop, not two.
        signals: sweep::trials::sweep_parent()
            .map(|sweep| byol_train::stop::StopOnSignals::for_run(Some(sweep)).map(Arc::new))
            .transpose()?,
    };
    let summary = byol_train::train(&experiment, &options)?;
    // Stopped by a signal (in a data-parallel job, every process stops with the one that got it),
    // or signalled once the last step was done: finished, but what follows is stopped too.
    let stopped = (summary.interrupted || summary.signal.is_some())
        .then(|| StoppedBySignal(summary.signal.unwrap_or(libc::SIGTERM)));
    if summary.rank != 0 {
        // Rank 0 reports for the whole data-parallel job.
        return stopped.map_or(Ok(()), |s| Err(s.into()));
    }
    if let Some(pruned) = &summary.pruned {
        say!(
            "\npruned at step {} of {}: {}; train the run folder again without the sweep to go on \
             (byol-run train {})",
            summary.steps,
            summary.total_steps,
            pruned.describe(),
            for_shell(&summary.run_dir.join(byol_train::run_dir::CONFIG_FILE)),
        );
        return Ok(());
    }
    if let Some(stopped) = stopped.as_ref().filter(|_| summary.interrupted) {
        say!(
            "\ninterrupted at step {} of {}; run the same command again to resume",
            summary.steps,
            summary.total_steps
        );
        return Err(stopped.clone().into());
    }
    print_summary(experiment.name(), &summary);
    match stopped {
        Some(stopped) => {
            say!(
                "finished: the signal came after the last step (the run finished its evaluation and summary); \
                 exiting as signalled, so that what follows it stops"
            );
            Err(stopped.into())
        }
        None => Ok(()),
    }
}

/// `1 epoch`, `2 epochs`.
fn plural(n: u64, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// The end-of-run table of a finished run.
fn print_summary(name: &str, summary: &RunSummary) {
    let percent =
        |a: Option<byol_train::knn::KnnAccuracy>| a.map_or("n/a".to_string(), |a| format!("{:.1}%", a.top1 * 100.0));
    say!("\n== summary: {name} ==");
    say!("run folder       {}", summary.run_dir.display());
    match summary.processes {
        Some(n) if n > 1 => say!("device           {} (process 0 of {n}, data parallel)", summary.device),
        _ => say!("device           {}", summary.device),
    }
    say!(
        "steps            {} ({})",
        summary.steps,
        plural(summary.epochs, "epoch")
    );
    if let Some(loss) = summary.final_loss {
        say!("final loss       {loss:.4}");
    }
    // A run without labelled images has no kNN figures to show (the note at start said why).
    if summary.knn_before.is_some() || summary.knn_after.is_some() {
        say!("kNN top-1 before {}", percent(summary.knn_before));
        say!("kNN top-1 after  {}", percent(summary.knn_after));
    }
    if let (Some(b), Some(a)) = (summary.knn_before, summary.knn_after) {
        say!("kNN gain         {:+.1} points", (a.top1 - b.top1) * 100.0);
        // A run that finished without learning anything must not look like a success.
        if a.top1 <= b.top1 {
            say!(
                "warning: kNN accuracy did not improve ({:.1}% -> {:.1}%): the representation may have \
                 collapsed or the recipe does not suit this data",
                b.top1 * 100.0,
                a.top1 * 100.0
            );
        }
    }
    if let Some(top1) = summary.probe_top1_after {
        say!("online probe     {:.1}% top-1 on the held-out images", top1 * 100.0);
    }
    say!(
        "training time    {:.1} s ({:.0} img/s)",
        summary.train_seconds,
        summary.images_per_second
    );
    if summary.curve_evaluations > 0 {
        say!(
            "kNN curve        {} during training took {:.1} s ({:.1}% of it)",
            plural(summary.curve_evaluations, "evaluation"),
            summary.curve_seconds,
            100.0 * summary.curve_seconds / summary.train_seconds.max(1e-9)
        );
    }
    if summary.skipped_images > 0 {
        // Read as training goes, each process of a data-parallel run meets its own share.
        let shared = summary.processes.is_some_and(|n| n > 1);
        let training = match summary.skipped_in_training.as_deref() {
            Some("replaced") if shared => {
                "; in training, readable images took their places in the batches (process 0's share: each \
                 process reads its own)"
            }
            Some("replaced") => "; in training, readable images took their places in the batches",
            Some(_) => "; left out of training",
            None => "",
        };
        say!(
            "unreadable       {} skipped, {}named in {}{training}",
            plural(summary.skipped_images as u64, "image"),
            if summary.skipped_images > 1 { "each " } else { "" },
            summary.run_dir.join(byol_train::train::SKIPPED_FILE).display()
        );
    }
    // A run trained with more than one experiment must not read as one trained with its last.
    for changes in &summary.changes_allowed {
        say!("changed          {changes} (--allow-change; the steps before trained with the values before)");
    }
    say!("checkpoint       {}", summary.checkpoint.display());
    say!(
        "tensorboard      tensorboard --logdir {}",
        for_shell(&summary.run_dir.join("tensorboard"))
    );
}

/// A path as a shell command takes it: quoted when it holds anything but plain characters
/// (a space, a quote, a non-ASCII letter), so that the line can be pasted.
fn for_shell(path: &Path) -> String {
    let text = path.display().to_string();
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c);
    match !text.is_empty() && text.chars().all(plain) {
        true => text,
        false => format!("'{}'", text.replace('\'', r"'\''")),
    }
}

#[cfg(test)]
mod tests {
    use super::for_shell;
    use std::path::Path;

    #[test]
    fn paths_with_spaces_or_quotes_are_quoted_for_the_shell() {
        assert_eq!(
            for_shell(Path::new("runs/quickstart/tensorboard")),
            "runs/quickstart/tensorboard"
        );
        assert_eq!(
            for_shell(Path::new("runs/my run/tensorboard")),
            "'runs/my run/tensorboard'"
        );
        assert_eq!(for_shell(Path::new("runs/été")), "'runs/été'");
        assert_eq!(for_shell(Path::new("it's")), r"'it'\''s'");
    }
}
