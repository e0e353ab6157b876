//! Hyperparameter sweeps (`byol-run sweep file.toml`): an experiment file with a `[sweep]` table
//! runs one trial per combination (grid) or draw (random) of the listed values, each trial an
//! ordinary run in its own folder, then ranks the trials by a metric of their `summary.json`.
//!
//! ```toml
//! [sweep]
//! method = "grid"          # or "random"
//! trials = 4               # random: the budget (required); grid: a cap (default: every combination)
//! seed = 0                 # random: seed of the draws
//! metric = "knn_top1"      # knn_top1, knn_top5, knn_gain, probe_top1, final_loss, images_per_second, train_seconds
//! goal = "max"             # default: "min" for final_loss and train_seconds, else "max"
//! prune = "median"         # stop trials worse than the median at a kNN evaluation (default "none")
//! prune_after = 3          # ... once this many other trials have passed that evaluation
//!
//! [sweep.parameters]
//! "optimizer.lr" = [0.5, 1.0]                          # any dotted key of the experiment
//! "byol.tau_base" = [0.99, 0.996]
//! # "optimizer.weight_decay" = { min = 1e-6, max = 1e-4, log = true }   # random search only
//! ```
//!
//! Trials are `<run.output_dir>/<name>-sweep/trial-001, ...`: each has its own `config.toml`,
//! TensorBoard log and checkpoints, plus `sweep-trial.toml` (its parameters). The sweep is
//! resumable: a finished trial (its `summary.json` says so) is skipped, an unfinished one resumes
//! from its newest checkpoint, a failed one is retried. `summary.csv` and `summary.md` in the sweep
//! folder rank every trial. Random draws depend on (seed, trial number, parameter) only, so raising
//! `trials` later keeps the trials already run.

mod base;
mod prune;
mod report;
mod space;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::experiment::{explain, override_value};
use crate::train::RunSummary;
use crate::Experiment;

pub use prune::{median, Prune, Pruned, Pruner, DEFAULT_PRUNE_AFTER, PRUNER_FILE};
pub use report::{
    goal_name, rank, rank_with, result_cells, result_line, result_values, to_csv, to_markdown, Row, TrialStatus,
    RESULTS, RESULT_HEADERS,
};

use base::without_sweep;
use space::{expand, parse_parameters};

/// The file in each trial folder that records the trial's parameters.
pub const TRIAL_FILE: &str = "sweep-trial.toml";
/// Written into a run or trial folder when its run failed, saying why (a trial that failed
/// before its run started has one too); moved to [`PREVIOUS_ERROR_FILE`] when it starts again.
pub const ERROR_FILE: &str = "error.txt";
/// The error of a failed trial's attempt before the one now running (or last run): a retry that
/// is killed outright leaves no error of its own, and the reason it was retried stays at hand.
pub const PREVIOUS_ERROR_FILE: &str = "previous-error.txt";
/// The output of a trial run as a child process, in its folder.
pub const LOG_FILE: &str = "train.log";
/// Where a trial's earlier attempts go, in the sweep folder (a trial started anew with other
/// settings, or trained with `--fresh`): out of the way of `trial-*` globs (`byol-run compare`).
pub const OLD_ATTEMPTS_DIR: &str = "old-attempts";

/// The sweep's ranked trials, in its folder.
pub const SUMMARY_CSV: &str = "summary.csv";
pub const SUMMARY_MD: &str = "summary.md";
/// The experiment without `[sweep]` that trials in child processes train, in the sweep folder.
pub const BASE_EXPERIMENT_FILE: &str = "experiment.toml";

/// Whether `name` is one of the entries a sweep writes into its folder: its summaries, its
/// experiment and pruning rule, its lock, old attempts and trials' folders.
pub fn is_sweep_entry(name: &str) -> bool {
    let files = [
        SUMMARY_CSV,
        SUMMARY_MD,
        BASE_EXPERIMENT_FILE,
        PRUNER_FILE,
        crate::run_dir::LOCK_FILE,
    ];
    files.contains(&name) || name == OLD_ATTEMPTS_DIR || name.starts_with("trial-")
}

/// The `[sweep]` table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SweepConfig {
    /// "grid": every combination of the listed values, keys in alphabetical order, the last key
    /// varying fastest.
    /// "random": `trials` independent draws.
    #[serde(default)]
    pub method: Method,
    /// Random search: how many trials (required). Grid: run at most this many combinations.
    pub trials: Option<usize>,
    /// Random search: the seed of the draws.
    #[serde(default)]
    pub seed: u64,
    /// The `summary.json` value that ranks the trials.
    #[serde(default)]
    pub metric: Metric,
    /// "max" or "min"; default "min" for final_loss and train_seconds, "max" for the others.
    pub goal: Option<Goal>,
    /// "median": stop a trial at a kNN evaluation during training where its metric is worse than
    /// the median of the other trials at the same evaluation (default "none").
    #[serde(default)]
    pub prune: Prune,
    /// With prune = "median": a point's median counts once this many other trials have passed
    /// it (default 3).
    pub prune_after: Option<usize>,
    /// Dotted experiment keys (`"optimizer.lr"`) to lists of values, or, for random search, to
    /// `{ min = .., max = .., log = true }` ranges (integers when min and max are integers).
    pub parameters: toml::Table,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    #[default]
    Grid,
    Random,
}

impl Method {
    /// As the `[sweep]` table spells it.
    pub fn name(self) -> &'static str {
        match self {
            Method::Grid => "grid",
            Method::Random => "random",
        }
    }
}

/// A number from a trial's `summary.json`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// kNN top-1 accuracy after training (a fraction; needs a dataset with a test split).
    #[default]
    KnnTop1,
    KnnTop5,
    /// kNN top-1 after training minus before (needs `eval.before_training`, the default): the
    /// figure to compare across seeds, whose untrained networks differ.
    KnnGain,
    /// The online probe's top-1 on the held-out images after training.
    ProbeTop1,
    /// The last logged training loss.
    FinalLoss,
    ImagesPerSecond,
    TrainSeconds,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::KnnTop1 => "knn_top1",
            Metric::KnnTop5 => "knn_top5",
            Metric::KnnGain => "knn_gain",
            Metric::ProbeTop1 => "probe_top1",
            Metric::FinalLoss => "final_loss",
            Metric::ImagesPerSecond => "images_per_second",
            Metric::TrainSeconds => "train_seconds",
        }
    }

    pub fn of(self, summary: &RunSummary) -> Option<f64> {
        match self {
            Metric::KnnTop1 => summary.knn_after.map(|a| a.top1),
            Metric::KnnTop5 => summary.knn_after.and_then(|a| a.top5),
            Metric::KnnGain => Some(summary.knn_after?.top1 - summary.knn_before?.top1),
            Metric::ProbeTop1 => summary.probe_top1_after,
            Metric::FinalLoss => summary.final_loss,
            Metric::ImagesPerSecond => Some(summary.images_per_second),
            Metric::TrainSeconds => Some(summary.train_seconds),
        }
    }

    fn default_goal(self) -> Goal {
        match self {
            Metric::FinalLoss | Metric::TrainSeconds => Goal::Min,
            _ => Goal::Max,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    Max,
    Min,
}

/// Where one swept key takes its values from.
#[derive(Debug, Clone, PartialEq)]
pub enum Space {
    Values(Vec<toml::Value>),
    /// Uniform (or log-uniform) in `[min, max]`; whole numbers when `integer`.
    Range {
        min: f64,
        max: f64,
        log: bool,
        integer: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Parameter {
    /// A dotted experiment key, as `--set` takes it.
    pub key: String,
    pub space: Space,
}

impl Parameter {
    /// Whether its values set the dotted key `key`: it is the key, or a table whose values hold it.
    pub fn sets(&self, key: &str) -> bool {
        self.key == key || space::holds(&self.space, &self.key, key)
    }
}

/// One point of the sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct Trial {
    /// 1-based.
    pub number: usize,
    /// One value per parameter, in the order of [`Sweep::parameters`].
    pub values: Vec<(String, toml::Value)>,
}

impl Trial {
    /// `trial-007`: the folder name.
    pub fn id(&self) -> String {
        format!("trial-{:03}", self.number)
    }

    /// `error` about this trial's experiment, with the trial and its values named, unless it
    /// names them already (a swept value is named where it was set, with its trial).
    pub fn named_in(&self, error: anyhow::Error) -> anyhow::Error {
        match format!("{error:#}").contains(&format!("({})", self.id())) {
            true => error,
            false => error.context(format!("{} ({})", self.id(), self.describe())),
        }
    }

    /// `key=value` assignments in `--set` syntax.
    pub fn overrides(&self) -> Vec<String> {
        self.values.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

    /// `optimizer.lr = 0.1, byol.tau_base = 0.99`.
    pub fn describe(&self) -> String {
        self.values
            .iter()
            .map(|(k, v)| format!("{k} = {}", show(v)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The trial a [`Trial::record`] holds (its values in the record's key order).
    pub fn from_record(record: &toml::Table) -> anyhow::Result<Self> {
        let number = record
            .get("trial")
            .and_then(toml::Value::as_integer)
            .context("no trial number")?;
        let parameters = record
            .get("parameters")
            .and_then(toml::Value::as_table)
            .context("no parameters table")?;
        Ok(Self {
            number: usize::try_from(number).context("a negative trial number")?,
            values: parameters.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        })
    }

    pub fn record(&self) -> toml::Table {
        let mut parameters = toml::Table::new();
        for (k, v) in &self.values {
            parameters.insert(k.clone(), v.clone());
        }
        let mut table = toml::Table::new();
        table.insert("trial".into(), toml::Value::Integer(self.number as i64));
        table.insert("parameters".into(), toml::Value::Table(parameters));
        table
    }
}

/// A parsed sweep file: the base experiment, the `[sweep]` table and the trials it expands to.
#[derive(Debug)]
pub struct Sweep {
    /// The experiment's name (`run.name`, else the file's stem).
    pub name: String,
    /// `<run.output_dir>/<name>-sweep`: one folder per trial, and the summary tables.
    pub dir: PathBuf,
    pub config: SweepConfig,
    pub goal: Goal,
    pub parameters: Vec<Parameter>,
    pub trials: Vec<Trial>,
    /// What the sweep will not do that its file may seem to ask for: grid combinations past
    /// `trials`, trials that repeat another's values. Printed before it runs.
    pub warnings: Vec<String>,
    /// The experiment file without `[sweep]` (same line numbers, for error messages).
    base: String,
    /// `--set` overrides from the command line, applied to every trial.
    overrides: Vec<String>,
}

/// Whether the TOML text has a `[sweep]` table (unparseable text: no).
pub fn is_sweep(text: &str) -> bool {
    toml::from_str::<toml::Table>(text).is_ok_and(|t| t.contains_key("sweep"))
}

/// The path of dotted `inner` inside the table `outer` (`image_size` for `augment.image_size` in
/// `augment`); None when `inner` is not inside it.
fn path_within<'a>(outer: &str, inner: &'a str) -> Option<&'a str> {
    inner.strip_prefix(outer)?.strip_prefix('.')
}

/// Whether `--set table=value` sets the dotted key `swept` inside `table`: `value`, read as
/// `--set` reads it, is a table holding the rest of its path.
fn holds_key(table: &str, value: &str, swept: &str) -> bool {
    let Some(rest) = path_within(table, swept) else {
        return false;
    };
    holds_path(&override_value(value), rest)
}

/// Whether `value` is a table holding the dotted `path`.
fn holds_path(value: &toml::Value, path: &str) -> bool {
    let mut current = Some(value);
    for part in path.split('.') {
        current = current.and_then(|v| v.as_table()).and_then(|t| t.get(part));
    }
    current.is_some()
}

impl Sweep {
    /// Reads a sweep file; `overrides` (`--set`) apply to every trial.
    pub fn load(path: &Path, overrides: &[String]) -> anyhow::Result<Self> {
        let text = fs::read_to_string(path).with_context(|| format!("cannot read sweep file {}", path.display()))?;
        let stem = path
            .file_stem()
            .map_or_else(|| "sweep".to_string(), |s| s.to_string_lossy().into_owned());
        Self::parse(&text, overrides, &stem).with_context(|| format!("in sweep file {}", path.display()))
    }

    /// Parses sweep text; `default_name` names the sweep when `run.name` does not. Every trial's
    /// experiment is parsed here, so a bad key or value fails before anything trains.
    pub fn parse(text: &str, overrides: &[String], default_name: &str) -> anyhow::Result<Self> {
        #[derive(Deserialize)]
        struct File {
            sweep: Option<SweepConfig>,
        }
        let file: File = toml::from_str(text).map_err(|e| explain(text, &e))?;
        let config = file.sweep.context(
            "there is no [sweep] table: add one (the README's \"Sweeps\" shows it), or train the file with `byol-run FILE`",
        )?;
        // A sweep's own table is the file's: --set sets the trials' experiment.
        if let Some(assignment) = overrides.iter().find(|a| {
            let key = a.split_once('=').map_or(a.as_str(), |(k, _)| k).trim();
            key == "sweep" || key.starts_with("sweep.")
        }) {
            bail!(
                "--set {assignment}: --set sets keys of the trials' experiment, not of [sweep]; change [sweep] in the \
                 file (a copy of it, for a new sweep)"
            );
        }
        let parameters = parse_parameters(&config.parameters)?;
        let base = without_sweep(text)?;
        let experiment = Experiment::parse(&base, overrides)?;
        let name = experiment.run.name.clone().unwrap_or_else(|| default_name.to_string());
        let dir = experiment.run.output_dir.join(format!("{name}-sweep"));
        for assignment in overrides {
            let key = assignment
                .split_once('=')
                .map_or(assignment.as_str(), |(k, _)| k)
                .trim();
            // The same key, a key inside a table swept whole, or a table whose value holds a swept
            // key: the trial's value would silently win over the command line's. (A table set
            // without the swept key gets the trial's value added, as meant.)
            let value = assignment.split_once('=').map_or("", |(_, v)| v);
            if let Some(swept) = parameters
                .iter()
                .find(|p| p.key == key || path_within(&p.key, key).is_some() || holds_key(key, value, &p.key))
            {
                bail!(
                    "'{key}' is set with --set, and '{}' is swept in [sweep.parameters]: each trial would set it \
                     over the command line's; remove one",
                    swept.key
                );
            }
        }
        let trials = expand(&config, &parameters)?;
        let goal = config.goal.unwrap_or(config.metric.default_goal());
        let mut sweep = Self {
            name,
            dir,
            goal,
            parameters,
            trials,
            warnings: Vec::new(),
            config,
            base,
            overrides: overrides.to_vec(),
        };
        prune::check_settings(sweep.config.prune, sweep.config.prune_after, sweep.config.metric)?;
        // The first trial and its epochs, to compare the others' with.
        let mut first_trial: Option<(String, u64)> = None;
        // Each trial's experiment, but for the run's name, to find trials that repeat another.
        let mut trained = Vec::new();
        for trial in &sweep.trials {
            let in_trial = || format!("{} ({})", trial.id(), trial.describe());
            let experiment = sweep.experiment(trial, None).map_err(|e| trial.named_in(e))?;
            let mut unnamed: toml::Table = toml::from_str(&experiment.to_toml()?)?;
            if let Some(toml::Value::Table(run)) = unnamed.get_mut("run") {
                run.remove("name");
            }
            trained.push(unnamed);
            let epochs = experiment.schedule.epochs;
            prune::check(sweep.config.prune, experiment.eval.curve_epochs(epochs).len(), epochs)
                .with_context(in_trial)?;
            let (first, first_epochs) = first_trial.get_or_insert_with(|| (trial.id(), epochs)).clone();
            if sweep.config.prune == Prune::Median && epochs != first_epochs {
                // Epoch 5 of 10 (the learning rate annealed halfway) against epoch 5 of 100.
                bail!(
                    "sweep.prune = \"median\" compares trials at the same epoch, and these train for different \
                     numbers of epochs ({first}: {first_epochs}, {}: {epochs}), so one would be judged halfway \
                     through its schedule against another near its end: sweep schedule.epochs without pruning, \
                     or in a sweep of its own per value",
                    trial.id()
                );
            }
            if sweep.config.metric == Metric::ProbeTop1 && !experiment.eval.online_probe {
                bail!(
                    "sweep.metric = \"probe_top1\" is the online probe's accuracy, and {} trains no probe \
                     (eval.online_probe = false): set it to true, or rank by another metric",
                    trial.id()
                );
            }
            if sweep.config.metric == Metric::KnnGain && !experiment.eval.before_training {
                bail!(
                    "sweep.metric = \"knn_gain\" is the kNN top-1 after training minus before, and {} does not \
                     measure before (eval.before_training = false): set it to true, or rank by knn_top1",
                    trial.id()
                );
            }
        }
        sweep.warnings = warnings(&sweep.config, &sweep.parameters, &sweep.trials, &trained);
        Ok(sweep)
    }

    /// Refuses `trials` whose data gives no value of the sweep's metric (no labelled test split
    /// for the kNN figures and the probe, 5 classes or fewer for top-5): they would train and
    /// rank nothing. The splits are listed, not decoded, once per distinct data settings.
    pub fn check_metric_measured(&self, trials: &[&Trial]) -> anyhow::Result<()> {
        let metric = self.config.metric;
        let needs_labels = matches!(
            metric,
            Metric::KnnTop1 | Metric::KnnTop5 | Metric::KnnGain | Metric::ProbeTop1
        );
        if !needs_labels {
            return Ok(());
        }
        let mut listed = std::collections::HashSet::new();
        for trial in trials {
            let experiment = self.experiment(trial, None)?;
            if !listed.insert(data_key(&experiment)) {
                continue;
            }
            let classes = crate::train::knn_classes_listed(&experiment)
                .with_context(|| format!("listing the data of {}", trial.id()))?;
            let why = match classes {
                None => {
                    "it has no labelled test images: give the dataset a test split in class folders, or set \
                         [eval] train and test"
                }
                Some(1) => {
                    "its labelled images are of one class, where every accuracy is 100%: give it two class \
                         folders or more ([eval] train and test, or the dataset's)"
                }
                Some(classes) if metric == Metric::KnnTop5 && !crate::knn::has_top5(classes as i64) => {
                    "its data has 5 classes or fewer, where every label is among the top 5: rank by knn_top1"
                }
                Some(_) => continue,
            };
            bail!(
                "sweep.metric = \"{}\" cannot be measured by {} ({}): {why}",
                metric.name(),
                trial.id(),
                trial.describe()
            );
        }
        Ok(())
    }

    /// The experiment file without `[sweep]`, as each trial parses it.
    pub fn base_text(&self) -> &str {
        &self.base
    }

    /// Whether a swept parameter sets the dotted key `key`.
    pub fn sweeps(&self, key: &str) -> bool {
        self.parameters.iter().any(|p| p.sets(key))
    }

    /// The `--set` assignments that make `trial` out of the base experiment (command-line ones
    /// first), run on `device` when given.
    pub fn trial_overrides(&self, trial: &Trial, device: Option<&str>) -> Vec<String> {
        self.trial_assignments(trial, device)
            .into_iter()
            .map(|(a, _)| a)
            .collect()
    }

    /// [`Sweep::trial_overrides`], each with where it comes from as messages name it: `--set`,
    /// the trial's parameter, the sweep's naming of the trial, or `--devices`.
    fn trial_assignments(&self, trial: &Trial, device: Option<&str>) -> Vec<(String, String)> {
        // The keys the sweep sets for each trial: a `--set` of them (the sweep's own name, a
        // device) is what the sweep's value replaces, and a trial given both would warn that its
        // key is given twice.
        let set_by_the_sweep = |assignment: &str| {
            let key = crate::experiment::key_parts(assignment.split_once('=').map_or(assignment, |(key, _)| key));
            key == ["run", "name"] || (device.is_some() && key == ["run", "device"])
        };
        let mut all: Vec<(String, String)> = self
            .overrides
            .iter()
            .filter(|a| !set_by_the_sweep(a))
            .map(|a| (a.clone(), format!("--set {a}")))
            .collect();
        all.extend(
            trial
                .overrides()
                .into_iter()
                .zip(&trial.values)
                .map(|(assignment, (key, value))| {
                    // A float in exponent form where TOML's own would write hundreds of digits.
                    let value = match value {
                        toml::Value::Float(_) => show(value),
                        other => other.to_string(),
                    };
                    let origin = format!("sweep.parameters.\"{key}\" = {value} ({})", trial.id());
                    (assignment, origin)
                }),
        );
        let name = toml::Value::String(format!("{}-{}", self.name, trial.id()));
        all.push((format!("run.name={name}"), format!("the trial's run.name = {name}")));
        if let Some(device) = device {
            let value = toml::Value::String(device.to_string());
            all.push((format!("run.device={value}"), format!("--devices {device}")));
        }
        all
    }

    /// The experiment of one trial; errors about a key name where it was set.
    pub fn experiment(&self, trial: &Trial, device: Option<&str>) -> anyhow::Result<Experiment> {
        let (overrides, origins): (Vec<String>, Vec<String>) =
            self.trial_assignments(trial, device).into_iter().unzip();
        Experiment::parse_from(&self.base, &overrides, &origins).map_err(|e| {
            // A range written with a float bound draws floats, which a key of whole numbers
            // refuses: the way out is in the range, not in the value drawn.
            let text = format!("{e:#}");
            let drawn_float = self.parameters.iter().find(|p| {
                matches!(p.space, Space::Range { integer: false, .. })
                    && text.contains(&format!("sweep.parameters.\"{}\" = ", p.key))
            });
            match drawn_float {
                Some(p) if text.contains("expected a whole number") => anyhow::anyhow!(
                    "{text}\n{} takes whole numbers, and a range with a bound written as a float (16.0) draws \
                     floats: write min and max as whole numbers (16) to draw whole numbers",
                    p.key
                ),
                _ => e,
            }
        })
    }

    /// The `--set` overrides from the command line, applied to every trial.
    pub fn overrides(&self) -> &[String] {
        &self.overrides
    }

    pub fn trial_dir(&self, trial: &Trial) -> PathBuf {
        self.dir.join(trial.id())
    }

    /// What each trial's run needs to prune itself; None without `prune = "median"`.
    pub fn pruner(&self) -> Option<Pruner> {
        (self.config.prune == Prune::Median).then(|| Pruner {
            metric: self.config.metric,
            goal: self.goal,
            prune_after: self.config.prune_after.unwrap_or(DEFAULT_PRUNE_AFTER),
            trial_dirs: self.trials.iter().map(|t| self.trial_dir(t)).collect(),
        })
    }
}

/// Trials with the same data settings read the same data (`[dataset]` and the kNN splits).
pub fn data_key(experiment: &Experiment) -> String {
    format!(
        "{} {:?} {:?}",
        toml::to_string(&experiment.dataset).unwrap_or_default(),
        experiment.eval.train,
        experiment.eval.test
    )
}

/// What the sweep will not do that its file may seem to ask for; `trained` holds each trial's
/// experiment but for the run's name.
fn warnings(config: &SweepConfig, parameters: &[Parameter], trials: &[Trial], trained: &[toml::Table]) -> Vec<String> {
    let mut warnings = Vec::new();
    let combinations: usize = parameters
        .iter()
        .map(|p| match &p.space {
            Space::Values(values) => values.len(),
            Space::Range { .. } => 1,
        })
        .product();
    if config.method == Method::Grid && trials.len() < combinations {
        warnings.push(format!(
            "sweep.trials = {} runs the first {} of the grid's {combinations} combinations: the others are \
             not tried (raise sweep.trials, or leave it out for all of them)",
            trials.len(),
            trials.len()
        ));
    }
    let prune_after = config.prune_after.unwrap_or(prune::DEFAULT_PRUNE_AFTER);
    if config.prune == Prune::Median && prune_after >= trials.len() {
        // The last trial is the only one with that many others before it, when they have all
        // passed its point: with fewer trials than that, none is ever judged.
        warnings.push(format!(
            "sweep.prune = \"median\" judges a trial once {prune_after} other trials have passed its evaluation, \
             and the sweep has {} trials: none will be pruned (lower sweep.prune_after{})",
            trials.len(),
            match config.prune_after {
                None => format!(", {} by default", prune::DEFAULT_PRUNE_AFTER),
                Some(_) => String::new(),
            }
        ));
    }
    for (i, trial) in trials.iter().enumerate() {
        if let Some(earlier) = (0..i).find(|&j| trained[j] == trained[i]).map(|j| &trials[j]) {
            warnings.push(format!(
                "{} has the values of {} ({}): it trains the same experiment again",
                trial.id(),
                earlier.id(),
                trial.describe()
            ));
        }
    }
    warnings
}

/// A value as a table cell: strings without quotes, very large or small floats in exponent form
/// (`1e30`, not 31 digits; the same number when read back).
pub fn show(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Float(x) if x.is_finite() && *x != 0.0 && !(1e-5..1e16).contains(&x.abs()) => {
            format!("{x:e}")
        }
        other => other.to_string(),
    }
}
