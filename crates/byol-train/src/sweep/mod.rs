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

mod report;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use byol_data::rng::SplitMix64;

use crate::experiment::explain;
use crate::train::RunSummary;
use crate::Experiment;

pub use report::{goal_name, rank, result_line, to_csv, to_markdown, Row, TrialStatus};

/// The file in each trial folder that records the trial's parameters.
pub const TRIAL_FILE: &str = "sweep-trial.toml";
/// Written into a trial folder when the trial failed (removed when it later succeeds).
pub const ERROR_FILE: &str = "error.txt";

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
            Metric::KnnTop5 => summary.knn_after.map(|a| a.top5),
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
    /// The experiment file without `[sweep]` (same line numbers, for error messages).
    base: String,
    /// `--set` overrides from the command line, applied to every trial.
    overrides: Vec<String>,
}

/// Whether the TOML text has a `[sweep]` table (unparseable text: no).
pub fn is_sweep(text: &str) -> bool {
    toml::from_str::<toml::Table>(text).is_ok_and(|t| t.contains_key("sweep"))
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
            if parameters.iter().any(|p| p.key == key) {
                bail!("'{key}' is both swept in [sweep.parameters] and set with --set; remove one");
            }
        }
        let trials = expand(&config, &parameters)?;
        let goal = config.goal.unwrap_or(config.metric.default_goal());
        let sweep = Self {
            name,
            dir,
            goal,
            parameters,
            trials,
            config,
            base,
            overrides: overrides.to_vec(),
        };
        for trial in &sweep.trials {
            sweep
                .experiment(trial, None)
                .with_context(|| format!("{} ({})", trial.id(), trial.describe()))?;
        }
        Ok(sweep)
    }

    /// The experiment file without `[sweep]`, as each trial parses it.
    pub fn base_text(&self) -> &str {
        &self.base
    }

    /// The `--set` assignments that make `trial` out of the base experiment (command-line ones
    /// first), run on `device` when given.
    pub fn trial_overrides(&self, trial: &Trial, device: Option<&str>) -> Vec<String> {
        let mut all = self.overrides.clone();
        all.extend(trial.overrides());
        let name = toml::Value::String(format!("{}-{}", self.name, trial.id()));
        all.push(format!("run.name={name}"));
        if let Some(device) = device {
            all.push(format!("run.device={}", toml::Value::String(device.to_string())));
        }
        all
    }

    /// The experiment of one trial.
    pub fn experiment(&self, trial: &Trial, device: Option<&str>) -> anyhow::Result<Experiment> {
        Experiment::parse(&self.base, &self.trial_overrides(trial, device))
    }

    pub fn trial_dir(&self, trial: &Trial) -> PathBuf {
        self.dir.join(trial.id())
    }
}

/// Flattens `[sweep.parameters]` into dotted keys and checks each value space.
fn parse_parameters(table: &toml::Table) -> anyhow::Result<Vec<Parameter>> {
    fn walk(table: &toml::Table, prefix: &str, out: &mut Vec<Parameter>) -> anyhow::Result<()> {
        for (k, value) in table {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            let space = match value {
                toml::Value::Array(values) if values.is_empty() => {
                    bail!("sweep.parameters.\"{key}\" is an empty list")
                }
                toml::Value::Array(values) => Space::Values(values.clone()),
                toml::Value::Table(t) if t.contains_key("min") || t.contains_key("max") => range(&key, t)?,
                toml::Value::Table(t) => {
                    walk(t, &key, out)?;
                    continue;
                }
                other => bail!(
                    "sweep.parameters.\"{key}\" = {other} is neither a list of values nor a {{ min = .., max = .. }} range"
                ),
            };
            out.push(Parameter { key, space });
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(table, "", &mut out)?;
    // Alphabetical, whatever order the TOML table keeps: trial numbers must not depend on it.
    out.sort_by(|a, b| a.key.cmp(&b.key));
    if out.is_empty() {
        bail!("[sweep.parameters] is empty: name at least one key, e.g. \"optimizer.lr\" = [0.5, 1.0]");
    }
    Ok(out)
}

fn range(key: &str, t: &toml::Table) -> anyhow::Result<Space> {
    if let Some(other) = t.keys().find(|k| !["min", "max", "log"].contains(&k.as_str())) {
        bail!("sweep.parameters.\"{key}\": a range has keys min, max and log, not '{other}'");
    }
    let number = |bound: &str| -> anyhow::Result<(f64, bool)> {
        match t.get(bound) {
            Some(toml::Value::Integer(i)) => Ok((*i as f64, true)),
            Some(toml::Value::Float(f)) => Ok((*f, false)),
            Some(other) => bail!("sweep.parameters.\"{key}\".{bound} = {other} is not a number"),
            None => bail!("sweep.parameters.\"{key}\" has no {bound}"),
        }
    };
    let ((min, min_int), (max, max_int)) = (number("min")?, number("max")?);
    let log = match t.get("log") {
        None => false,
        Some(toml::Value::Boolean(b)) => *b,
        Some(other) => bail!("sweep.parameters.\"{key}\".log = {other} is not true or false"),
    };
    if !(min.is_finite() && max.is_finite() && min < max) {
        bail!("sweep.parameters.\"{key}\": min = {min} must be below max = {max}");
    }
    if log && min <= 0.0 {
        bail!("sweep.parameters.\"{key}\": log = true needs min > 0 (min = {min})");
    }
    Ok(Space::Range {
        min,
        max,
        log,
        integer: min_int && max_int,
    })
}

/// The trials of a sweep, in order.
fn expand(config: &SweepConfig, parameters: &[Parameter]) -> anyhow::Result<Vec<Trial>> {
    if config.trials == Some(0) {
        bail!("sweep.trials = 0: nothing to run");
    }
    match config.method {
        Method::Grid => {
            let mut lists = Vec::new();
            for p in parameters {
                match &p.space {
                    Space::Values(values) => lists.push(values),
                    Space::Range { .. } => bail!(
                        "sweep.parameters.\"{}\" is a range, which only method = \"random\" can draw from; \
                         give a grid a list of values",
                        p.key
                    ),
                }
            }
            let total: usize = lists.iter().map(|l| l.len()).product();
            let count = config.trials.map_or(total, |cap| cap.min(total));
            Ok((0..count)
                .map(|n| {
                    // Mixed radix, the last parameter varying fastest.
                    let mut rest = n;
                    let mut values = vec![toml::Value::Boolean(false); lists.len()];
                    for (i, list) in lists.iter().enumerate().rev() {
                        values[i] = list[rest % list.len()].clone();
                        rest /= list.len();
                    }
                    Trial {
                        number: n + 1,
                        values: parameters.iter().map(|p| p.key.clone()).zip(values).collect(),
                    }
                })
                .collect())
        }
        Method::Random => {
            let count = config
                .trials
                .context("method = \"random\" needs sweep.trials, the number of trials to draw")?;
            Ok((1..=count)
                .map(|number| Trial {
                    number,
                    values: parameters
                        .iter()
                        .enumerate()
                        .map(|(j, p)| {
                            let mut rng = SplitMix64::keyed(&[config.seed, number as u64, j as u64]);
                            (p.key.clone(), draw(&p.space, &mut rng))
                        })
                        .collect(),
                })
                .collect())
        }
    }
}

/// One random value from a space.
fn draw(space: &Space, rng: &mut SplitMix64) -> toml::Value {
    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    match space {
        Space::Values(values) => values[((u * values.len() as f64) as usize).min(values.len() - 1)].clone(),
        &Space::Range { min, max, log, integer } => {
            if integer {
                // Every whole number in [min, max] equally likely (log: equally likely per decade).
                let (lo, hi) = (min - 0.5, max + 0.5);
                let x = if log {
                    // min >= 1 here, so lo > 0.
                    (lo.ln() + u * (hi.ln() - lo.ln())).exp()
                } else {
                    lo + u * (hi - lo)
                };
                toml::Value::Integer(x.round().clamp(min, max) as i64)
            } else {
                let x = if log {
                    (min.ln() + u * (max.ln() - min.ln())).exp()
                } else {
                    min + u * (max - min)
                };
                // Four significant digits: readable in tables, exact in files.
                let rounded: f64 = format!("{x:.3e}").parse().expect("a formatted float parses");
                toml::Value::Float(rounded.clamp(min, max))
            }
        }
    }
}

/// The text with the `[sweep]` and `[sweep.*]` tables blanked out line by line, so that errors in
/// the rest keep their line numbers. When the layout defeats this (a `sweep` key defined some
/// other way), the remaining tables are re-serialized instead.
fn without_sweep(text: &str) -> anyhow::Result<String> {
    let mut in_sweep = false;
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        if let Some(name) = header(line) {
            in_sweep = name == "sweep" || name.starts_with("sweep.");
        }
        if in_sweep {
            if line.ends_with('\n') {
                out.push('\n');
            }
        } else {
            out.push_str(line);
        }
    }
    let mut expected: toml::Table = toml::from_str(text).map_err(|e| explain(text, &e))?;
    expected.remove("sweep");
    if toml::from_str::<toml::Table>(&out).ok().as_ref() == Some(&expected) {
        Ok(out)
    } else {
        Ok(toml::to_string(&expected)?)
    }
}

/// A value as a table cell: strings without quotes.
pub(crate) fn show(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The dotted name of a `[table]` or `[[array]]` header line (quotes and spaces removed).
fn header(line: &str) -> Option<String> {
    let line = line.split('#').next().unwrap_or_default().trim();
    let inner = line.strip_prefix('[')?.strip_suffix(']')?;
    let inner = inner
        .strip_prefix('[')
        .and_then(|i| i.strip_suffix(']'))
        .unwrap_or(inner);
    let ok = inner
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-. \"'".contains(c));
    (ok && !inner.trim().is_empty()).then(|| inner.chars().filter(|c| !" \"'".contains(*c)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_text(table: &str) -> anyhow::Result<Vec<Trial>> {
        let config: SweepConfig = toml::from_str(table)?;
        expand(&config, &parse_parameters(&config.parameters)?)
    }

    #[test]
    fn header_lines_are_recognized() {
        assert_eq!(header("[sweep]\n").as_deref(), Some("sweep"));
        assert_eq!(
            header("  [ sweep.parameters ]  # values\n").as_deref(),
            Some("sweep.parameters")
        );
        assert_eq!(header("[[a.b]]").as_deref(), Some("a.b"));
        assert_eq!(header("[0.2, 1.0],"), None);
        assert_eq!(header("lr = 0.1"), None);
    }

    #[test]
    fn stripping_sweep_keeps_line_numbers() {
        let text = "[run]\nseed = 1\n\n[sweep]\nmethod = \"grid\"\n[sweep.parameters]\n\"a.b\" = [\n  [1, 2],\n]\n\n[schedule]\nepochs = 2\n";
        let stripped = without_sweep(text).unwrap();
        assert_eq!(stripped.lines().count(), text.lines().count());
        assert!(
            !stripped.contains("sweep") && stripped.contains("epochs = 2"),
            "{stripped}"
        );
        let parsed: toml::Table = toml::from_str(&stripped).unwrap();
        assert_eq!(parsed["schedule"]["epochs"].as_integer(), Some(2));
        // A layout the line filter cannot follow falls back to re-serializing.
        let dotted = "sweep.method = \"grid\"\n[run]\nseed = 1\n";
        let stripped = without_sweep(dotted).unwrap();
        let parsed: toml::Table = toml::from_str(&stripped).unwrap();
        assert!(!parsed.contains_key("sweep") && parsed["run"]["seed"].as_integer() == Some(1));
    }

    #[test]
    fn a_grid_is_every_combination_last_key_fastest() {
        let trials = expand_text("[parameters]\n\"optimizer.lr\" = [0.1, 0.2]\nschedule.epochs = [1, 2, 3]\n").unwrap();
        let points: Vec<String> = trials.iter().map(|t| format!("{} {}", t.id(), t.describe())).collect();
        assert_eq!(
            points,
            [
                "trial-001 optimizer.lr = 0.1, schedule.epochs = 1",
                "trial-002 optimizer.lr = 0.1, schedule.epochs = 2",
                "trial-003 optimizer.lr = 0.1, schedule.epochs = 3",
                "trial-004 optimizer.lr = 0.2, schedule.epochs = 1",
                "trial-005 optimizer.lr = 0.2, schedule.epochs = 2",
                "trial-006 optimizer.lr = 0.2, schedule.epochs = 3",
            ]
        );
        assert_eq!(trials[3].overrides(), ["optimizer.lr=0.2", "schedule.epochs=1"]);
        let capped =
            expand_text("trials = 4\n[parameters]\n\"optimizer.lr\" = [0.1, 0.2]\nschedule.epochs = [1, 2, 3]\n")
                .unwrap();
        assert_eq!(capped[..], trials[..4]);
    }

    #[test]
    fn random_draws_are_in_range_reproducible_and_stable_under_a_bigger_budget() {
        let table = "method = \"random\"\ntrials = TRIALS\nseed = 4\n[parameters]\n\
                     \"optimizer.lr\" = { min = 1e-3, max = 1.0, log = true }\n\
                     \"schedule.epochs\" = { min = 1, max = 5 }\n\"optimizer.nesterov\" = [true, false]\n";
        let a = expand_text(&table.replace("TRIALS", "40")).unwrap();
        let b = expand_text(&table.replace("TRIALS", "60")).unwrap();
        assert_eq!(a[..], b[..40], "trial n does not depend on the budget");
        let mut small_lr = 0;
        let mut epochs_seen = std::collections::BTreeSet::new();
        let mut nesterov_seen = std::collections::BTreeSet::new();
        for t in &b {
            let get = |k: &str| t.values.iter().find(|(key, _)| key == k).unwrap().1.clone();
            let lr = get("optimizer.lr").as_float().unwrap();
            assert!((1e-3..=1.0).contains(&lr), "{lr}");
            assert_eq!(format!("{lr:.3e}").parse::<f64>().unwrap(), lr, "4 significant digits");
            small_lr += usize::from(lr < 0.0316);
            let epochs = get("schedule.epochs").as_integer().unwrap();
            assert!((1..=5).contains(&epochs));
            epochs_seen.insert(epochs);
            nesterov_seen.insert(get("optimizer.nesterov").as_bool().unwrap());
        }
        // Log-uniform: about half the draws below the geometric midpoint 10^-1.5.
        assert!((15..=45).contains(&small_lr), "{small_lr} of 60 below 0.0316");
        assert_eq!(epochs_seen.len(), 5, "every integer drawn: {epochs_seen:?}");
        assert_eq!(nesterov_seen.len(), 2);
        let other_seed = expand_text(&table.replace("TRIALS", "40").replace("seed = 4", "seed = 5")).unwrap();
        assert_ne!(other_seed, a);
    }

    #[test]
    fn bad_parameter_spaces_are_explained() {
        let error = |table: &str| format!("{:#}", expand_text(table).unwrap_err());
        let e = error("[parameters]\n\"optimizer.lr\" = { min = 0.1, max = 1.0 }\n");
        assert!(e.contains("optimizer.lr") && e.contains("random"), "{e}");
        let e = error("method = \"random\"\n[parameters]\n\"optimizer.lr\" = [1]\n");
        assert!(e.contains("sweep.trials"), "{e}");
        let e = error("[parameters]\n\"optimizer.lr\" = []\n");
        assert!(e.contains("empty list"), "{e}");
        let e = error("[parameters]\n\"optimizer.lr\" = 0.1\n");
        assert!(e.contains("neither a list"), "{e}");
        let e = error(
            "method = \"random\"\ntrials = 2\n[parameters]\n\"optimizer.lr\" = { min = 0.0, max = 1.0, log = true }\n",
        );
        assert!(e.contains("min > 0"), "{e}");
        let e = error("method = \"random\"\ntrials = 2\n[parameters]\n\"optimizer.lr\" = { min = 1.0, max = 0.5 }\n");
        assert!(e.contains("must be below"), "{e}");
        let e = error(
            "method = \"random\"\ntrials = 2\n[parameters]\n\"optimizer.lr\" = { min = 0.1, max = 1.0, step = 2 }\n",
        );
        assert!(e.contains("'step'"), "{e}");
        let e = error("[parameters]\n");
        assert!(e.contains("empty"), "{e}");
        let e = error("trials = 0\n[parameters]\na = [1]\n");
        assert!(e.contains("nothing to run"), "{e}");
    }
}
