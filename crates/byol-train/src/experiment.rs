//! The experiment file: one TOML document naming a plugin per table.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use byol::{AugmentSpec, BackboneSpec, ByolConfig, DatasetSpec, OptimizerSpec, PluginKind};

use crate::schedule::ScheduleConfig;

/// The `[run]` table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Run name; the run folder is `<output_dir>/<name>` (default: the experiment file's stem).
    pub name: Option<String>,
    /// Folder that holds run folders.
    pub output_dir: PathBuf,
    /// "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
    pub device: String,
    /// Seed of parameter initialization, data order and augmentation.
    pub seed: u64,
    /// CPU threads for libtorch (0: libtorch's default).
    pub threads: usize,
    /// "fp32", "bf16" (autocast), or "fp16" (CUDA autocast with dynamic loss scaling).
    pub precision: Precision,
    /// Memory layout of images, activations and conv weights: "auto" (channels_last on CUDA),
    /// "channels_last", or "contiguous".
    pub memory_format: MemoryFormat,
    /// Capture the training step (forward, backward, optimizer, EMA) as one CUDA graph after a
    /// few warm-up steps and replay it; CUDA only, with a fused optimizer, not under torchrun or
    /// with schedule.accumulate above 1. Off until measured on a GPU.
    pub cuda_graphs: bool,
    /// Let float32 matmuls and convolutions on CUDA use TF32 tensor cores, as tuned PyTorch
    /// training does (`torch.backends.cuda.matmul.allow_tf32`, `torch.backends.cudnn.allow_tf32`);
    /// false: IEEE float32 throughout. Nothing changes on the CPU, or under bf16/fp16 autocast for
    /// the layers it casts.
    pub tf32: bool,
}

/// Tensor memory layout of the training step.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MemoryFormat {
    /// channels_last on CUDA (faster convolutions with tensor cores), contiguous on the CPU.
    #[default]
    Auto,
    ChannelsLast,
    Contiguous,
}

/// Numeric precision of the training step.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    #[default]
    Fp32,
    /// bfloat16 autocast for the forward pass, float32 master weights (CUDA, or CPU where slow).
    Bf16,
    /// CUDA only: float16 autocast for the forward pass, float32 master weights, dynamic loss scale.
    Fp16,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            name: None,
            output_dir: PathBuf::from("runs"),
            device: "auto".into(),
            seed: 0,
            threads: 0,
            precision: Precision::Fp32,
            memory_format: MemoryFormat::Auto,
            cuda_graphs: false,
            tf32: true,
        }
    }
}

/// The `[eval]` table: the kNN monitor and the online probe, on the dataset's labelled splits or
/// on the labelled `train`/`test` folders named here.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Neighbours (solo-learn, lightly: 200).
    pub knn_k: usize,
    /// Temperature of the similarity weights (0.1).
    pub knn_temperature: f64,
    /// Evaluate every this many epochs (0: as `curve_points` says).
    pub every_epochs: u64,
    /// Without `every_epochs`: evaluate this many times over training, evenly (after epoch
    /// round(k * epochs / curve_points) for k = 1..=curve_points, the last being the final
    /// evaluation; every epoch when there are fewer epochs), for a kNN curve; 0: only before
    /// and after training.
    pub curve_points: u64,
    /// Also evaluate the randomly initialized network before training.
    pub before_training: bool,
    /// Batch size for computing features; 0: the training micro-batch (on a CPU, batches
    /// that fit the caches embed about three times faster than 512).
    pub batch_size: usize,
    /// Train a linear classifier on the detached online representation alongside BYOL and log
    /// its accuracy (needs a labelled training split).
    pub online_probe: bool,
    /// Learning rate of the online probe (plain SGD).
    pub probe_lr: f64,
    /// A labelled split in image-folder layout (`<train>/<class>/<image>`), decoded like the
    /// training images: the kNN bank, and the online probe's data when the training images are
    /// unlabelled. Set with `test`; without them the kNN monitor uses the dataset's own splits.
    pub train: Option<PathBuf>,
    /// Labelled held-out images in the same layout: the kNN queries.
    pub test: Option<PathBuf>,
}

impl EvalConfig {
    /// Whether a run of `epochs` epochs evaluates after epoch `epoch` (1-based) before its end:
    /// every `every_epochs`, else at the `curve_points` evaluations spread evenly over the run,
    /// whose last is the final evaluation (which every run makes, and which this leaves out).
    pub fn evaluates_after_epoch(&self, epoch: u64, epochs: u64) -> bool {
        if epoch == 0 || epoch >= epochs {
            return false;
        }
        match (self.every_epochs, self.curve_points) {
            (0, 0) => false,
            // Point k is after epoch round(k * epochs / points): the k nearest epoch * points / epochs.
            (0, points) => {
                let (e, p) = (u128::from(epochs), u128::from(points));
                let point_epoch = |k: u128| (2 * k * e + p) / (2 * p);
                let near = u128::from(epoch) * p / e;
                (near.max(1)..=(near + 1).min(p)).any(|k| point_epoch(k) == u128::from(epoch))
            }
            (every, _) => epoch.is_multiple_of(every),
        }
    }

    /// The epochs a run of `epochs` epochs evaluates after before its end, in order.
    pub fn curve_epochs(&self, epochs: u64) -> Vec<u64> {
        (1..epochs).filter(|&e| self.evaluates_after_epoch(e, epochs)).collect()
    }

    /// The batch size for computing features, given the training micro-batch.
    pub fn feature_batch(&self, micro_batch: usize) -> usize {
        match self.batch_size {
            0 => micro_batch.max(1),
            size => size,
        }
    }
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            knn_k: 200,
            knn_temperature: 0.1,
            every_epochs: 0,
            curve_points: 10,
            before_training: true,
            batch_size: 0,
            online_probe: true,
            probe_lr: 0.1,
            train: None,
            test: None,
        }
    }
}

/// The `[logging]` table: TensorBoard scalars and the view grid.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// Write TensorBoard scalars every this many steps.
    pub every_steps: u64,
    /// At the start of a fresh run, a TensorBoard image `views` of (original, view 1, view 2)
    /// rows for the first images of the first batch.
    pub view_grid: bool,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            every_steps: 10,
            view_grid: true,
        }
    }
}

/// The `[checkpoint]` table: how often to save and how many checkpoints to keep.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Save every this many steps (0: only at the end).
    pub every_steps: u64,
    /// Checkpoints kept (oldest removed first).
    pub keep_last: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            every_steps: 1000,
            keep_last: 3,
        }
    }
}

/// A whole experiment. Plugin tables (`dataset`, `backbone`, `augment`, `optimizer`) choose
/// their plugin with `type = "..."`; `byol-run plugins` lists them.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    #[serde(default)]
    pub run: RunConfig,
    pub dataset: Box<dyn DatasetSpec>,
    pub backbone: Box<dyn BackboneSpec>,
    pub augment: Box<dyn AugmentSpec>,
    pub optimizer: Box<dyn OptimizerSpec>,
    #[serde(default)]
    pub byol: ByolConfig,
    #[serde(default)]
    pub schedule: ScheduleConfig,
    #[serde(default)]
    pub eval: EvalConfig,
    #[serde(default)]
    pub logging: LoggingConfig,
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    #[serde(default)]
    pub distributed: DistributedConfig,
    /// The `--set` assignments applied on top of the file, so that errors about a key set there
    /// point at the flag.
    #[serde(skip)]
    pub overrides: Vec<String>,
    /// Where each of `overrides` came from, as messages name it: `--set a.b=1` unless the
    /// caller said otherwise ([`Experiment::parse_from`]: a sweep's parameters).
    #[serde(skip)]
    pub override_origins: Vec<String>,
}

/// The `[distributed]` table: data parallelism when started by torchrun (WORLD_SIZE set).
/// `schedule.batch_size` stays the global batch; each of the N processes takes 1/N of it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DistributedConfig {
    /// Batch-norm statistics over the global batch: "all" (as the paper), "heads" (projector
    /// and predictor only), or "none" (per process).
    pub sync_batch_norm: SyncBatchNorm,
    /// Seconds a process waits for the others (rendezvous, collectives) before failing.
    pub timeout_s: u64,
    /// c10d backend: "auto" (NCCL on GPUs when built, else Gloo), "nccl", "gloo".
    pub backend: DistributedBackend,
    /// Average the gradients in buckets while backward runs (DistributedDataParallel's way), or
    /// (false) in one all-reduce after it.
    pub overlap_gradients: bool,
    /// The largest bucket of gradients, in MiB (DDP's `bucket_cap_mb`).
    pub bucket_mb: f64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DistributedBackend {
    #[default]
    Auto,
    Nccl,
    Gloo,
}

impl Default for DistributedConfig {
    fn default() -> Self {
        Self {
            sync_batch_norm: SyncBatchNorm::All,
            timeout_s: 1800,
            backend: DistributedBackend::Auto,
            overlap_gradients: true,
            bucket_mb: 25.0,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SyncBatchNorm {
    All,
    Heads,
    None,
}

impl Experiment {
    /// Reads `path`, applies `overrides` (`a.b=value`, value in TOML syntax, bare words taken as
    /// strings), and checks everything serde can check.
    pub fn load(path: &Path, overrides: &[String]) -> anyhow::Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!(
                    "experiment file {} does not exist (`byol-run config` prints every key with its default)",
                    path.display()
                )
            }
            Err(_) if path.is_dir() => {
                let saved = path.join(crate::run_dir::CONFIG_FILE);
                let hint = match crate::run_dir::is_run_folder(path) {
                    true => format!(
                        "it is a run folder: its experiment is {} (train that file to resume the run; eval, \
                         export, embed and compare take the folder itself)",
                        saved.display()
                    ),
                    false => "give the experiment's .toml file".to_string(),
                };
                bail!("experiment file {} is a folder: {hint}", path.display())
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read experiment file {}", path.display())),
        };
        let mut experiment =
            Self::parse(&text, overrides).with_context(|| format!("in experiment file {}", path.display()))?;
        if experiment.run.name.is_none() {
            experiment.run.name = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        }
        Ok(experiment)
    }

    /// Parses an experiment from TOML text. A `[sweep]` table is refused: sweep files run with
    /// `byol-run sweep` ([`crate::sweep`]), which removes it before parsing each trial.
    pub fn parse(text: &str, overrides: &[String]) -> anyhow::Result<Self> {
        let origins: Vec<String> = overrides.iter().map(|a| format!("--set {a}")).collect();
        Self::parse_from(text, overrides, &origins)
    }

    /// [`Experiment::parse`] with the origin of each override, as errors about it name it
    /// (`sweep.parameters."optimizer.lr" = 0.1`).
    pub fn parse_from(text: &str, overrides: &[String], origins: &[String]) -> anyhow::Result<Self> {
        assert_eq!(overrides.len(), origins.len(), "one origin per override");
        let mut table: toml::Table = toml::from_str(text).map_err(|e| explain(text, &e))?;
        if table.contains_key("sweep") {
            bail!(
                "this file has a [sweep] table, so it describes a hyperparameter sweep: run it with \
                 `byol-run sweep <file>` (or remove [sweep] to train one experiment)"
            );
        }
        if overrides.is_empty() {
            return toml::from_str(text).map_err(|e| explain(text, &e));
        }
        for assignment in overrides {
            apply_override(&mut table, assignment)?;
        }
        let merged = toml::to_string(&table).context("re-serializing the overridden experiment")?;
        let mut experiment: Self =
            toml::from_str(&merged).map_err(|e| blame(text, (overrides, origins), &merged, &e))?;
        experiment.overrides = overrides.to_vec();
        experiment.override_origins = origins.to_vec();
        Ok(experiment)
    }

    /// Where `key` (`schedule.epochs`) was set over the file (`--set schedule.epochs=3`, or the
    /// whole table, `--set schedule={epochs=3}`), if it was.
    pub fn override_of(&self, key: &str) -> Option<&str> {
        let covers = |k: &str| key == k || key.strip_prefix(k).is_some_and(|rest| rest.starts_with('.'));
        self.overrides
            .iter()
            .zip(&self.override_origins)
            .rev() // the last assignment of a key wins
            .find(|(a, _)| a.split_once('=').is_some_and(|(k, _)| covers(k.trim())))
            .map(|(_, origin)| origin.as_str())
    }

    /// `message` (about a key, from a plugin or a check that names it) pointed at the `--set` of
    /// the overridden key it mentions, or of the table above it set whole (`--set backbone.widths=
    /// [0, 8]: backbone.widths: 0 is not ...`, `--set optimizer={...}: optimizer.lr = -1 ...`);
    /// the last such `--set` (which set the value); as it is where it mentions none.
    pub fn pointed_at_set(&self, message: String) -> String {
        let key = self
            .overrides
            .iter()
            .rev()
            .filter_map(|a| a.split_once('=').map(|(k, _)| k.trim()))
            .find(|k| {
                [" =", ":", "."]
                    .iter()
                    .any(|after| message.contains(&format!("{k}{after}")))
            });
        match key.and_then(|key| self.override_of(key)) {
            Some(origin) => format!("{origin}: {message}"),
            None => message,
        }
    }

    /// The experiment as TOML, with every default filled in (saved in the run folder).
    pub fn to_toml(&self) -> anyhow::Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }

    pub fn name(&self) -> &str {
        self.run.name.as_deref().unwrap_or("run")
    }
}

/// The tables that name a plugin, which every experiment has.
const PLUGIN_TABLES: [&str; 4] = ["dataset", "backbone", "augment", "optimizer"];

/// The table that holds the key an error in `table` is about: the table above for an unknown
/// sub-table (`[schedule.foo]` is an unknown key `foo` of `[schedule]`), else `table` itself.
fn table_with_the_key(table: String, message: &str) -> String {
    match table.rsplit_once('.') {
        Some((above, name)) if message.contains(&format!("unknown field `{name}`")) => above.to_string(),
        _ => table,
    }
}

/// A TOML or schema error with its line and column (from toml's message) and the table it is in.
pub(crate) fn explain(text: &str, error: &toml::de::Error) -> anyhow::Error {
    if let Some(missing) = missing_plugin_table(text, error) {
        return missing;
    }
    if let Some(at_key) = at_the_key(text, error) {
        return at_key;
    }
    let message = in_words(error.to_string().trim_end());
    let table = error
        .span()
        .and_then(|span| enclosing_table(text, span.start))
        .map(|table| table_with_the_key(table, &message));
    match table {
        Some(table) => anyhow::anyhow!("{message}\n(in table [{table}])"),
        None => anyhow::anyhow!("{message}"),
    }
}

/// The plugin tables the experiment `text` lacks, when serde's error is that one is missing
/// (serde names the first, at the file's first line, "in" its first table).
fn missing_plugin_table(text: &str, error: &toml::de::Error) -> Option<anyhow::Error> {
    PLUGIN_TABLES
        .into_iter()
        .find(|name| error.message().trim() == format!("missing field `{name}`"))?;
    let table: toml::Table = toml::from_str(text).unwrap_or_default();
    let missing: Vec<String> = PLUGIN_TABLES
        .into_iter()
        .filter(|name| !table.contains_key(*name))
        .map(|name| format!("[{name}]"))
        .collect();
    let (tables, a_table) = match missing.len() {
        1 => (missing[0].clone(), "table"),
        _ => (missing.join(", "), "tables"),
    };
    Some(anyhow::anyhow!(
        "the experiment has no {tables} {a_table}: every experiment names the plugin of each of [dataset], \
         [backbone], [augment] and [optimizer] with its `type` (`byol-run plugins` lists them, each with \
         an example table)"
    ))
}

/// serde's message with Rust's type names in words (``expected usize`` is ``expected a whole
/// number``, and ``not a negative one`` after a negative one: the key's own range, which may start
/// above 0, is checked once it is read)
/// and without the blank lines toml puts before the key it names (``in `widths` ``).
fn in_words(message: &str) -> String {
    let unsigned = match message.contains("invalid value:") {
        true => "a whole number, not a negative one",
        false => "a whole number",
    };
    let words = [
        ("usize", unsigned),
        ("u64", unsigned),
        ("u32", unsigned),
        ("i64", "a whole number"),
        ("f64", "a number"),
    ]
    .iter()
    .fold(message.to_string(), |m, (rust, words)| {
        m.replace(&format!("expected {rust}"), &format!("expected {words}"))
    });
    // The code's type names mean nothing to the user: a table is what such a key takes. (A TOML
    // date reaches serde as a map.)
    let type_name = |words: String, rust: &str, table: &str| match words.split_once(rust) {
        Some((before, after)) => {
            let name_end = after
                .find(|c: char| !c.is_alphanumeric() && c != '_')
                .unwrap_or(after.len());
            format!("{before}{table}{}", &after[name_end..])
        }
        None => words,
    };
    let words = type_name(words, "expected struct ", "expected a table");
    // A plugin's table (typetag's "dyn BackboneSpec").
    let words = type_name(words, "expected dyn ", "expected a table with its plugin's `type`");
    let words = words.replace("invalid type: map,", "invalid type: a table or a date,");
    let lines: Vec<&str> = words.lines().filter(|line| !line.trim().is_empty()).collect();
    lines.join("\n")
}

/// An error of the experiment with `--set` overrides applied, pointed at its source. The merged
/// text is a reformatted copy whose line numbers mean nothing to the user: when the file alone
/// fails with the same message, the error is the file's and is reported with the file's own
/// lines; otherwise it is reported against the `--set` that causes it.
fn blame(
    text: &str,
    (overrides, origins): (&[String], &[String]),
    merged: &str,
    error: &toml::de::Error,
) -> anyhow::Error {
    if let Some(missing) = missing_plugin_table(merged, error) {
        return missing;
    }
    let message = &in_words(error.message().trim());
    if let Err(own) = toml::from_str::<Experiment>(text) {
        if in_words(own.message().trim()) == *message {
            return explain(text, &own);
        }
    }
    let alone_gives_it = |assignment: &String| {
        let mut table: toml::Table = toml::from_str(text).unwrap_or_default();
        apply_override(&mut table, assignment).is_ok()
            && toml::to_string(&table)
                .ok()
                .and_then(|t| toml::from_str::<Experiment>(&t).err())
                .is_some_and(|e| in_words(e.message().trim()) == *message)
    };
    let culprit = overrides.iter().position(alone_gives_it);
    let flags = match culprit {
        Some(i) => origins[i].clone(),
        None => origins.join(", "),
    };
    // A bare word that is no TOML value is taken as text: `.5`, `05` and `1,5` are read so.
    let as_text = culprit
        .and_then(|i| overrides[i].split_once('='))
        .map(|(_, raw)| raw.trim())
        .filter(|raw| {
            message.starts_with("invalid type: string") && toml::from_str::<toml::Table>(&format!("v = {raw}")).is_err()
        });
    let text_hint = as_text.map_or(String::new(), |raw| {
        format!(
            "; `{raw}` is no TOML value, so it was read as text: write values as TOML does (0.5, not .5; 5, not \
             05; 1.5, not 1,5; true, not yes)"
        )
    });
    let table = error
        .span()
        .and_then(|span| enclosing_table(merged, span.start))
        .map(|table| table_with_the_key(table, message));
    // An unknown top-level table (the experiment's own tables are what it expects) is no key
    // *in* that table.
    let unknown_table = table.as_ref().is_some_and(|table| {
        message.starts_with(&format!("unknown field `{table}`")) && message.contains("expected one of `run`")
    });
    let text_hint = match unknown_table && table.as_deref() == Some("sweep") {
        true => format!(
            "{text_hint}; a [sweep] table belongs in a sweep file (byol-run sweep), and this file has none: write \
             it into the file"
        ),
        false => text_hint,
    };
    // `--set optimizer.type=adam` keeps the table's other keys, written for the file's type.
    let file: toml::Table = toml::from_str(text).unwrap_or_default();
    let retyped = table.as_ref().filter(|table| {
        let file_type = file.get(table.as_str()).and_then(|t| t.get("type"));
        message.starts_with("unknown field")
            && overrides.iter().any(|o| {
                o.split_once('=').is_some_and(|(key, value)| {
                    key.trim() == format!("{table}.type") && file_type.is_some_and(|t| *t != override_value(value))
                })
            })
    });
    let hint = match retyped {
        Some(table) => format!(
            "; the other keys of [{table}] are the old type's: set the whole table, as in \
             --set '{table}={{ type = \"...\", ... }}'"
        ),
        None => String::new(),
    };
    match table.filter(|_| !unknown_table) {
        Some(table) => anyhow::anyhow!("{flags}: {message} (in table [{table}]){hint}{text_hint}"),
        None => anyhow::anyhow!("{flags}: {message}{text_hint}"),
    }
}

/// A plugin table's error told at its key: typetag reports every error of a plugin's table at the
/// table's header, which in a table with sub-tables (`[augment.view1]`, `[augment.view2]`) does not
/// say which key is wrong. Where the message names the key (``unknown field `lrr` ``) or its value
/// (`invalid type: string "0.05"`) and exactly one key of the table, at any depth, has it, the
/// error is shown at that key, in toml's own form; None otherwise.
fn at_the_key(text: &str, error: &toml::de::Error) -> Option<anyhow::Error> {
    let header = error.span()?.start;
    let table = enclosing_table(text, header)?;
    let top = table.split('.').next()?;
    if !PLUGIN_TABLES.contains(&top) || !text[header..].starts_with('[') {
        return None;
    }
    let message = error.message().trim();
    let wanted = Wanted::from_message(message)?;
    let document = toml_edit::Document::parse(text).ok()?;
    let mut found = Vec::new();
    keys_below(document.get(top)?.as_table_like()?, top, &wanted, &mut found);
    let [(path, span)] = found.as_slice() else {
        return None;
    };
    let line_start = text[..span.start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[span.start..].find('\n').map_or(text.len(), |i| span.start + i);
    let line = text[..span.start].matches('\n').count() + 1;
    let column = text[line_start..span.start].chars().count() + 1;
    let gutter = " ".repeat(line.to_string().len() + 1);
    let width = text[span.clone()].chars().count().max(1);
    Some(anyhow::anyhow!(
        "TOML parse error at line {line}, column {column}\n{gutter}|\n{line} | {}\n{gutter}| {}{}\n{}\n(in table [{path}])",
        &text[line_start..line_end],
        " ".repeat(column - 1),
        "^".repeat(width),
        in_words(message)
    ))
}

/// What a serde message says of the key it is about.
enum Wanted {
    /// ``unknown field `lrr` ``: the key's name.
    Key(String),
    /// `invalid type: string "0.05"`, ``invalid value: integer `-3` ``: its value.
    Value(toml::Value),
}

impl Wanted {
    fn from_message(message: &str) -> Option<Self> {
        if let Some(rest) = message.strip_prefix("unknown field `") {
            return Some(Self::Key(rest.split('`').next()?.to_string()));
        }
        let rest = message
            .strip_prefix("invalid type: ")
            .or_else(|| message.strip_prefix("invalid value: "))?;
        let found = rest.split(", expected").next()?;
        let (kind, value) = found.split_once(' ')?;
        let value = value.trim_matches('`');
        Some(Self::Value(match kind {
            "string" => toml::Value::String(serde_json::from_str(value).ok()?),
            "integer" => toml::Value::Integer(value.parse().ok()?),
            "floating" => toml::Value::Float(value.trim_start_matches("point `").trim_matches('`').parse().ok()?),
            "boolean" => toml::Value::Boolean(value.parse().ok()?),
            _ => return None,
        }))
    }
}

/// The keys below `table` (named `path`) that `wanted` describes: their dotted table and the span
/// to point at (the key's name for an unknown key, else its value).
fn keys_below(
    table: &dyn toml_edit::TableLike,
    path: &str,
    wanted: &Wanted,
    found: &mut Vec<(String, std::ops::Range<usize>)>,
) {
    for (name, item) in table.iter() {
        let Some((key, item)) = table.get_key_value(name).map(|(key, _)| (key, item)) else {
            continue;
        };
        if let Some(child) = item.as_table_like() {
            keys_below(child, &format!("{path}.{name}"), wanted, found);
            continue;
        }
        match (wanted, item.as_value()) {
            (Wanted::Key(wanted), _) if wanted == name => found.extend(key.span().map(|s| (path.to_string(), s))),
            (Wanted::Value(wanted), Some(value)) => {
                // A value, or an element of an array (`widths = [8, 8, "8"]`).
                let elements: Vec<&toml_edit::Value> = match value.as_array() {
                    Some(array) => array.iter().collect(),
                    None => vec![value],
                };
                let spans = elements
                    .into_iter()
                    .filter(|v| same_value(wanted, v))
                    .filter_map(|v| v.span());
                found.extend(spans.map(|span| (path.to_string(), span)));
            }
            _ => {}
        }
    }
}

fn same_value(wanted: &toml::Value, value: &toml_edit::Value) -> bool {
    match (wanted, value) {
        (toml::Value::String(a), toml_edit::Value::String(b)) => a == b.value(),
        (toml::Value::Integer(a), toml_edit::Value::Integer(b)) => a == b.value(),
        (toml::Value::Float(a), toml_edit::Value::Float(b)) => a == b.value(),
        (toml::Value::Boolean(a), toml_edit::Value::Boolean(b)) => a == b.value(),
        _ => false,
    }
}

/// The `[header]` that the byte `offset` of `text` falls under: the last table header that starts
/// at or before the end of the offset's line (typetag reports errors at the table header itself).
/// None when the text is not valid TOML (then the parser's own message has the line).
pub(crate) fn enclosing_table(text: &str, offset: usize) -> Option<String> {
    let document = toml_edit::Document::parse(text).ok()?;
    let line_end = text
        .get(offset..)
        .and_then(|rest| rest.find('\n'))
        .map_or(text.len(), |i| offset + i);
    let mut headers = Vec::new();
    table_headers(document.as_table(), &mut Vec::new(), &mut headers);
    headers
        .into_iter()
        .filter(|(start, _)| *start <= line_end)
        .max_by_key(|(start, _)| *start)
        .map(|(_, name)| name)
}

/// Every `[table]` and `[[array]]` header below `table`: its byte offset and dotted name.
fn table_headers(table: &toml_edit::Table, path: &mut Vec<String>, out: &mut Vec<(usize, String)>) {
    let mut visit = |key: &str, table: &toml_edit::Table, path: &mut Vec<String>| {
        path.push(key.to_string());
        if let Some(span) = table.span().filter(|_| !table.is_implicit() && !table.is_dotted()) {
            out.push((span.start, path.join(".")));
        }
        table_headers(table, path, out);
        path.pop();
    };
    for (key, item) in table.iter() {
        match item {
            toml_edit::Item::Table(child) => visit(key, child, path),
            toml_edit::Item::ArrayOfTables(array) => array.iter().for_each(|child| visit(key, child, path)),
            _ => {}
        }
    }
}

/// The value of a `--set key=value`: TOML where it parses as such, else the text as a string
/// (`run.device=cuda`).
pub(crate) fn override_value(raw: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").expect("parsed key v"),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// `a.b.c=value`: sets key `c` of table `a.b`, creating tables as needed.
fn apply_override(table: &mut toml::Table, assignment: &str) -> anyhow::Result<()> {
    let (key, raw) = assignment
        .split_once('=')
        .with_context(|| format!("--set '{assignment}' is not of the form section.key=value"))?;
    // `0.5\nmomentum=0.1` reads as two keys, the second of which would be dropped unsaid, and
    // `foo\nx=1` as a string with a line break. A line break is kept only inside one value (an
    // array written over lines).
    let one_value = toml::from_str::<toml::Table>(&format!("v = {raw}")).is_ok_and(|t| t.len() == 1);
    if raw.contains(['\n', '\r']) && !one_value {
        bail!(
            "--set {}: the value {raw:?} holds more than one assignment (a line break in it?): give one \
             key=value per --set",
            key.trim()
        );
    }
    let value = override_value(raw);
    // A whole number that TOML cannot hold would otherwise become a string ("0042", which TOML
    // does not read as a number either, stays one).
    let digits = raw.trim().trim_start_matches(['+', '-']);
    let whole = !digits.is_empty() && !digits.starts_with('0') && digits.chars().all(|c| c.is_ascii_digit());
    if value.is_str() && whole {
        bail!(
            "--set {assignment}: the number is larger than any whole number an experiment holds (at most {}); \
             give a smaller one (a key that takes text takes it quoted: {}='\"{}\"')",
            i64::MAX,
            key.trim(),
            raw.trim()
        );
    }
    // Likewise a float past float64's range (`1e309`), which TOML does not read as a number
    // (digits: `Infinity` is text).
    let numeral = raw.trim().chars().any(|c| c.is_ascii_digit());
    if value.is_str() && numeral && raw.trim().parse::<f64>().is_ok_and(f64::is_infinite) {
        bail!(
            "--set {assignment}: the number is beyond float64's range (about 1.8e308); give a smaller one (a key \
             that takes text takes it quoted: {}='\"{}\"')",
            key.trim(),
            raw.trim()
        );
    }
    let parts = key_parts(key);
    let (last, parents) = parts.split_last().expect("split yields one part");
    let mut current = table;
    for part in parents {
        current = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()))
            .as_table_mut()
            .with_context(|| format!("--set {key}: '{part}' is not a table"))?;
    }
    current.insert(last.to_string(), value);
    Ok(())
}

/// A `--set` key's parts, as TOML reads a dotted key (`sweep.parameters."optimizer.lr"` has
/// three, `"optimizer".lr` two); split at its dots where TOML does not read it.
pub fn key_parts(key: &str) -> Vec<String> {
    match toml_edit::Key::parse(key.trim()) {
        Ok(keys) => keys.iter().map(|k| k.get().to_string()).collect(),
        Err(_) => key.trim().split('.').map(String::from).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `curve_points` evaluations over training, the last the final one; `every_epochs` wins.
    #[test]
    fn the_curve_has_as_many_points_as_asked_spread_evenly() {
        let eval = |every_epochs, curve_points| EvalConfig {
            every_epochs,
            curve_points,
            ..Default::default()
        };
        let cases: [(u64, u64, u64, &[u64]); 9] = [
            (0, 0, 4, &[]),
            (0, 1, 4, &[]),
            (0, 3, 4, &[1, 3]),
            (0, 3, 10, &[3, 7]),
            (0, 5, 10, &[2, 4, 6, 8]),
            (0, 10, 40, &[4, 8, 12, 16, 20, 24, 28, 32, 36]),
            (0, 10, 3, &[1, 2]),
            (0, 4, 1, &[]),
            (3, 10, 10, &[3, 6, 9]),
        ];
        for (every, points, epochs, expected) in cases {
            assert_eq!(
                eval(every, points).curve_epochs(epochs),
                expected,
                "every_epochs {every}, curve_points {points}, {epochs} epochs"
            );
        }
        // Against the definition, round(k * epochs / points), over many lengths.
        for epochs in 1..200u64 {
            for points in 1..25u64 {
                let mut defined: Vec<u64> = (1..=points)
                    .map(|k| (k as f64 * epochs as f64 / points as f64).round() as u64)
                    .filter(|&e| e >= 1 && e < epochs)
                    .collect();
                defined.dedup();
                assert_eq!(
                    eval(0, points).curve_epochs(epochs),
                    defined,
                    "{points} points, {epochs} epochs"
                );
            }
        }
        assert!(eval(0, 10).evaluates_after_epoch(500_000, 1_000_000));
        assert!(!eval(0, 10).evaluates_after_epoch(500_001, 1_000_000));
    }

    #[test]
    fn a_missing_plugin_table_is_named() {
        let text = "[run]\nname = \"x\"\n[schedule]\nepochs = 3\n";
        for overrides in [vec![], vec!["run.seed=1".to_string()]] {
            let msg = format!("{:#}", Experiment::parse(text, &overrides).unwrap_err());
            assert!(
                msg.starts_with("the experiment has no [dataset], [backbone], [augment], [optimizer] tables"),
                "{msg}"
            );
            assert!(!msg.contains("in table [run]"), "{msg}");
        }
    }

    #[test]
    fn errors_name_the_enclosing_table() {
        let text = "[run]\nseed = 1\n\n[schedule]\nepochs = 3\nwarmup_epoch = 1\n";
        assert_eq!(
            enclosing_table(text, text.find("warmup").unwrap()).as_deref(),
            Some("schedule")
        );
        assert_eq!(
            enclosing_table(text, text.find("[schedule]").unwrap()).as_deref(),
            Some("schedule")
        );
        // Brackets inside strings and comments are not headers; dotted and nested headers are.
        let text = "[run]\nname = \"[x]\" # [y]\n[a.b]\nk = 1\n[[c]]\nm = 2\n";
        let at = |needle: &str| enclosing_table(text, text.find(needle).unwrap());
        assert_eq!(at("name").as_deref(), Some("run"));
        assert_eq!(at("k =").as_deref(), Some("a.b"));
        assert_eq!(at("m =").as_deref(), Some("c"));
        let error = toml::from_str::<ScheduleConfig>("epochs = 3\nwarmup_epoch = 1\n").unwrap_err();
        assert!(error.span().is_some(), "{error}");
        let error = toml::from_str::<toml::Table>("a = = 1").unwrap_err();
        assert!(error.span().is_some(), "{error}");
        let msg = format!(
            "{:#}",
            Experiment::parse("[schedule]\nepochs = 3\nwarmup_epoch = 1\n", &[]).unwrap_err()
        );
        assert!(msg.contains("(in table [schedule])"), "{msg}");
        // An unknown sub-table is an unknown key of the table above it, in a file or a --set.
        let msg = format!(
            "{:#}",
            Experiment::parse("[schedule]\nepochs = 3\n[schedule.foo]\nx = 1\n", &[]).unwrap_err()
        );
        assert!(
            msg.contains("unknown field `foo`") && msg.contains("(in table [schedule])"),
            "{msg}"
        );
        let msg = format!(
            "{:#}",
            Experiment::parse("[schedule]\nepochs = 3\n", &["schedule.foo.x=1".into()]).unwrap_err()
        );
        assert!(
            msg.contains("unknown field `foo`") && msg.contains("(in table [schedule])"),
            "{msg}"
        );
        // An unknown table is no key in that table; a [sweep] table set on a plain experiment
        // says where it belongs.
        let msg = format!(
            "{:#}",
            Experiment::parse("[run]\nseed = 1\n", &["sweep.metric=\"knn_top5\"".into()]).unwrap_err()
        );
        assert!(
            msg.contains("unknown field `sweep`")
                && !msg.contains("in table")
                && msg.contains("belongs in a sweep file"),
            "{msg}"
        );
    }
}

/// The core tables of `byol-run config --defaults`, annotated by hand (a test holds them to the
/// code's defaults); the plugin tables go in at [`PLUGIN_TABLES_LINE`].
const CORE_DEFAULTS_TOML: &str = include_str!("defaults.toml");

/// The line of `defaults.toml` that [`defaults_toml`] replaces with the plugin tables.
const PLUGIN_TABLES_LINE: &str =
    "# (the plugin tables: each registered plugin kind's example, generated from its defaults)\n";

/// The plugin `config --defaults` shows for each plugin table: the paper's ImageNet recipe
/// (images in class folders, ResNet-50, its two views, LARS).
const SHOWN_PLUGINS: [(PluginKind, &str); 4] = [
    (PluginKind::Dataset, "image_folder"),
    (PluginKind::Backbone, "resnet50"),
    (PluginKind::Augment, "byol"),
    (PluginKind::Optimizer, "lars"),
];

/// `byol-run config --defaults`: every key with its default, annotated. Each plugin table is the
/// example (the `Default`) of one registered plugin, with the other plugins of its kind named.
pub fn defaults_toml() -> String {
    let plugin_tables = SHOWN_PLUGINS
        .iter()
        .map(|&(kind, preferred)| {
            let names = byol::registry::names(kind);
            let shown = byol::registry::find(kind, preferred)
                .or_else(|| names.first().and_then(|name| byol::registry::find(kind, name)));
            let Some(shown) = shown else {
                return format!("# [{}]: no plugin of this kind is linked\n", kind.table());
            };
            let others: Vec<&str> = names.into_iter().filter(|n| *n != shown.name).collect();
            let mut example = shown.example();
            if !others.is_empty() {
                let type_line = format!("type = \"{}\"\n", shown.name);
                let with_others = format!(
                    "type = \"{}\"   # or {} (`byol-run plugins` shows their keys)\n",
                    shown.name,
                    others.join(", ")
                );
                example = example.replacen(&type_line, &with_others, 1);
            }
            format!("[{}]\n{example}", kind.table())
        })
        .collect::<Vec<_>>()
        .join("\n");
    CORE_DEFAULTS_TOML.replacen(PLUGIN_TABLES_LINE, &plugin_tables, 1)
}

#[cfg(test)]
mod defaults_tests {
    use super::*;

    /// The annotated defaults parse, and every core table in them equals the code's defaults
    /// key for key, so the printed file cannot drift from the code.
    #[test]
    fn defaults_file_matches_the_code() {
        assert!(CORE_DEFAULTS_TOML.contains(PLUGIN_TABLES_LINE));
        let parsed: toml::Table = toml::from_str(CORE_DEFAULTS_TOML).unwrap();
        let code = [
            ("run", toml::Value::try_from(RunConfig::default())),
            ("byol", toml::Value::try_from(byol::ByolConfig::default())),
            ("schedule", toml::Value::try_from(ScheduleConfig::default())),
            ("eval", toml::Value::try_from(EvalConfig::default())),
            ("logging", toml::Value::try_from(LoggingConfig::default())),
            ("checkpoint", toml::Value::try_from(CheckpointConfig::default())),
        ];
        for (table, values) in code {
            assert_eq!(
                parsed[table],
                values.unwrap(),
                "[{table}] in defaults.toml differs from the code's defaults"
            );
        }
    }

    /// The commented [sweep] block, its `key = value` lines taken as TOML, is a sweep table
    /// whose keys with defaults hold the code's defaults, and which names every key there is.
    #[test]
    fn the_commented_sweep_block_matches_the_code() {
        let block = &CORE_DEFAULTS_TOML[CORE_DEFAULTS_TOML.find("# [sweep]\n").expect("a [sweep] block")..];
        let lines: Vec<&str> = block.lines().filter_map(|l| l.strip_prefix("# ")).collect();
        let toml_lines: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.starts_with('[') || l.contains(" = "))
            .collect();
        let parsed: crate::sweep::SweepConfig = toml::from_str::<toml::Table>(&toml_lines.join("\n")).unwrap()["sweep"]
            .clone()
            .try_into()
            .unwrap();
        let defaults: crate::sweep::SweepConfig = toml::from_str("parameters = {}").unwrap();
        assert_eq!(parsed.method, defaults.method);
        assert_eq!(parsed.metric, defaults.metric);
        assert_eq!(parsed.seed, defaults.seed);
        assert_eq!(parsed.prune, defaults.prune);
        assert_eq!(parsed.parameters.len(), 2);
        // Every key of the table (optional ones given a value, so that they are written) has its
        // line, the parameters theirs as [sweep.parameters].
        let named: Vec<&str> = lines.iter().filter_map(|l| l.split_whitespace().next()).collect();
        let full: crate::sweep::SweepConfig =
            toml::from_str("trials = 1\ngoal = \"max\"\nprune_after = 3\nparameters = {}").unwrap();
        for key in toml::Table::try_from(&full).unwrap().keys() {
            let line = if key == "parameters" { "[sweep.parameters]" } else { key };
            assert!(named.contains(&line), "the [sweep] block in defaults.toml lacks {key}");
        }
    }
}
