//! [`Experiment::validate`]: what can be checked before anything trains, done the same way by
//! `byol-run validate` and by training before its first step. Every numeric key has an allowed
//! range, and an error names the key, the value and the range; a key set with `--set` is
//! reported against that flag. All problems are reported at once, one per line.

use anyhow::bail;

use crate::train::state::{DatasetFingerprint, Remarks};
use crate::Experiment;

/// The values a numeric key may take.
#[derive(Debug, Clone, Copy)]
enum Range {
    /// `>= min`
    AtLeast(f64),
    /// `> min`
    Above(f64),
    /// `<= max`
    AtMost(f64),
    /// `[lo, hi]`
    Closed(f64, f64),
    /// `[lo, hi)`
    HalfOpen(f64, f64),
}

impl Range {
    fn contains(self, v: f64) -> bool {
        v.is_finite()
            && match self {
                Range::AtLeast(min) => v >= min,
                Range::Above(min) => v > min,
                Range::AtMost(max) => v <= max,
                Range::Closed(lo, hi) => (lo..=hi).contains(&v),
                Range::HalfOpen(lo, hi) => (lo..hi).contains(&v),
            }
    }
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Range::AtLeast(min) => write!(f, ">= {min}"),
            Range::Above(min) => write!(f, "> {min}"),
            Range::AtMost(max) => write!(f, "<= {max}"),
            Range::Closed(lo, hi) => write!(f, "in [{lo}, {hi}]"),
            Range::HalfOpen(lo, hi) => write!(f, "in [{lo}, {hi})"),
        }
    }
}

/// Collects the problems of one experiment.
struct Problems<'a> {
    experiment: &'a Experiment,
    lines: Vec<String>,
}

impl Problems<'_> {
    /// Records `message` about `key`, pointed at its `--set` when it came from one.
    fn add(&mut self, key: &str, message: String) {
        let line = match self.experiment.override_of(key) {
            Some(origin) => format!("{origin}: {message}"),
            None => message,
        };
        self.lines.push(line);
    }

    fn range(&mut self, key: &str, value: f64, range: Range) {
        self.range_of(key, key, value, range);
    }

    /// [`Self::range`] of a part of `key` (an array's element), named `part` (`optimizer.betas[1]`).
    fn range_of(&mut self, key: &str, part: &str, value: f64, range: Range) {
        let shown = short_number(value);
        if !value.is_finite() {
            self.add(
                key,
                format!("{part} = {shown} is not a finite number: it must be {range}"),
            );
        } else if value.abs() > f32::MAX as f64 {
            self.add(
                key,
                format!(
                    "{part} = {shown} is beyond float32's range (3.4e38), which the training computes in: it \
                     must be {range}"
                ),
            );
        } else if !range.contains(value) {
            self.add(key, format!("{part} = {shown} is out of range: it must be {range}"));
        }
    }

    /// A message from a plugin or a check that names its key: pointed at the `--set` of the
    /// first overridden key it mentions.
    fn add_mentioning(&mut self, message: String) {
        let line = self.experiment.pointed_at_set(message);
        self.lines.push(line);
    }
}

/// `x` as a person writes it (`3`, `0.1`): very large or small in exponent form (`1e300`, not
/// 301 digits), others to six decimals at most (`0.333333`).
pub fn short_number(x: f64) -> String {
    let plain = format!("{x}");
    if plain.len() <= 12 {
        plain
    } else if x != 0.0 && !(1e-4..1e6).contains(&x.abs()) {
        format!("{x:e}")
    } else {
        let rounded = format!("{x:.6}");
        rounded.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// The most epochs a run may ask for.
const MAX_EPOCHS: f64 = 1e6;
/// The most CPU threads `run.threads` may ask for.
const MAX_THREADS: f64 = 4096.0;
/// The largest side of an image or a view, in pixels.
const MAX_SIDE: f64 = 4096.0;
/// The widest a projector's or predictor's layer may be: a 16384 x 16384 layer is 1 GiB of
/// float32, and each head has two.
const MAX_WIDTH: f64 = 16384.0;

impl Experiment {
    /// Checks everything that can be checked before training: numeric ranges, that the data's
    /// folders exist, that the device exists, and combinations of keys that training would
    /// refuse. Reads no images and builds no network.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut problems = Problems {
            experiment: self,
            lines: Vec::new(),
        };
        self.check_ranges(&mut problems);
        self.check_plugin_keys(&mut problems);
        self.check_environment(&mut problems);
        if problems.lines.is_empty() {
            return Ok(());
        }
        bail!("{}", problems.lines.join("\n"))
    }

    /// What a run's start refuses once it has listed the data, found from the listing alone (file
    /// names and sizes, shard headers; no image decoded): a split without images, a file list
    /// naming missing files, a damaged shard, a batch larger than the training images. Returns
    /// the listing's fingerprint, what the start would say about the data listed, and the steps
    /// per epoch of a run on it ([`DatasetFingerprint::listed`]).
    pub fn check_data(&self) -> anyhow::Result<(DatasetFingerprint, Remarks, Option<u64>)> {
        let (listed, remarks, steps_per_epoch) = DatasetFingerprint::listed(self)?;
        self.check_batch_fits(&listed)?;
        Ok((listed, remarks, steps_per_epoch))
    }

    /// The batch against the training images `listed` (whose count includes unreadable images
    /// that the start leaves out: a batch this refuses, the start refuses too).
    pub fn check_batch_fits(&self, listed: &DatasetFingerprint) -> anyhow::Result<()> {
        let batch = self.schedule.batch_size;
        match listed.0.get("train") {
            Some(train) if batch > train.images => bail!(
                "schedule.batch_size = {batch} is larger than the {} training images of [dataset]: a batch is \
                 drawn from one epoch's images; lower it, or train on more images",
                train.images
            ),
            _ => Ok(()),
        }
    }

    fn check_ranges(&self, p: &mut Problems) {
        // The run's folder is <run.output_dir>/<run.name>: a folder inside it (`ablation/lr-0.1`
        // nests; `./exp/` is `exp`), never the output folder itself or one outside it.
        if let Some(name) = self.run.name.as_deref() {
            let parts: Vec<&str> = name.split('/').filter(|p| !matches!(*p, "" | ".")).collect();
            if name.starts_with('/') || parts.is_empty() || parts.contains(&"..") {
                p.add(
                    "run.name",
                    format!(
                        "run.name = {name:?} does not name a folder inside run.output_dir (the run's folder is \
                         <run.output_dir>/<run.name>): give a relative name such as \"resnet50-lr0.3\", \
                         without .. (or --run-dir for a folder elsewhere)"
                    ),
                );
            } else if name.chars().any(char::is_control) {
                // A line break or a tab in a folder's name garbles every listing and log that prints it.
                p.add(
                    "run.name",
                    format!(
                        "run.name = {name:?} holds a control character (a line break, a tab): give a name without one"
                    ),
                );
            }
        }
        let s = &self.schedule;
        // The upper bounds are far past any run (the paper: 1000 epochs, 4096-wide heads, 224 px),
        // and keep step counts, thread counts and allocations from overflowing.
        p.range("schedule.epochs", s.epochs as f64, Range::Closed(1.0, MAX_EPOCHS));
        p.range("run.threads", self.run.threads as f64, Range::Closed(0.0, MAX_THREADS));
        // (Their lower bounds are the plugins' own checks.)
        p.range(
            "augment.image_size",
            self.augment.image_size() as f64,
            Range::AtMost(MAX_SIDE),
        );
        if let Some(side) = self.dataset.image_size() {
            p.range("dataset.image_size", side as f64, Range::AtMost(MAX_SIDE));
        }
        p.range("schedule.batch_size", s.batch_size as f64, Range::AtLeast(1.0));
        p.range("schedule.warmup_epochs", s.warmup_epochs, Range::AtLeast(0.0));
        p.range(
            "schedule.final_lr_fraction",
            s.final_lr_fraction,
            Range::Closed(0.0, 1.0),
        );
        // (No images at all: the dataset's own check says so.)
        let too_few = |(images, _): &(usize, &str)| *images > 0 && s.batch_size > *images;
        if let Some((images, key)) = self.dataset.train_images().filter(too_few) {
            // Named after the setting that changed, where one was set on the command line.
            p.add_mentioning(format!(
                "schedule.batch_size = {} must be between 1 and the {images} training images (dataset.{key} = \
                 {images})",
                s.batch_size
            ));
        }
        p.range("schedule.accumulate", s.accumulate as f64, Range::AtLeast(1.0));
        if s.accumulate >= 1 && s.batch_size >= 1 && !s.batch_size.is_multiple_of(s.accumulate) {
            p.add(
                "schedule.accumulate",
                format!(
                    "schedule.batch_size = {} is not a multiple of schedule.accumulate = {}",
                    s.batch_size, s.accumulate
                ),
            );
        } else if s.accumulate >= 1 && s.batch_size == s.accumulate {
            // Only one process can run it, and the start refuses that: a batch-norm batch of one image.
            // Pointed at whichever of the two keys a --set gave.
            p.add_mentioning(format!(
                "schedule.batch_size = {} over schedule.accumulate = {} is 1 image per batch-norm batch, whose \
                     statistics are undefined: make the batch larger or accumulate less",
                s.batch_size, s.accumulate
            ));
        }
        // 0 is allowed: a run that only fits the batch-norm statistics is a useful baseline.
        p.range("optimizer.lr", self.optimizer.lr(), Range::AtLeast(0.0));
        let b = &self.byol;
        p.range("byol.hidden_dim", b.hidden_dim as f64, Range::Closed(1.0, MAX_WIDTH));
        p.range(
            "byol.projection_dim",
            b.projection_dim as f64,
            Range::Closed(1.0, MAX_WIDTH),
        );
        p.range("byol.tau_base", b.tau_base, Range::Closed(0.0, 1.0));
        let e = &self.eval;
        p.range("eval.knn_k", e.knn_k as f64, Range::AtLeast(1.0));
        p.range("eval.knn_temperature", e.knn_temperature, Range::Above(0.0));
        p.range("eval.probe_lr", e.probe_lr, Range::Above(0.0));
        p.range(
            "logging.every_steps",
            self.logging.every_steps as f64,
            Range::AtLeast(1.0),
        );
        p.range(
            "checkpoint.keep_last",
            self.checkpoint.keep_last as f64,
            Range::AtLeast(1.0),
        );
        p.range(
            "distributed.timeout_s",
            self.distributed.timeout_s as f64,
            Range::AtLeast(1.0),
        );
        p.range("distributed.bucket_mb", self.distributed.bucket_mb, Range::Above(0.0));
    }

    /// Keys that optimizer plugins share with PyTorch's optimizers, with PyTorch's ranges, and
    /// the plugins' own checks of the dataset and the augmentation.
    fn check_plugin_keys(&self, p: &mut Problems) {
        let optimizer = self
            .to_toml()
            .ok()
            .and_then(|t| toml::from_str::<toml::Table>(&t).ok())
            .and_then(|mut t| t.remove("optimizer"))
            .and_then(|o| o.as_table().cloned())
            .unwrap_or_default();
        let number = |v: &toml::Value| v.as_float().or_else(|| v.as_integer().map(|i| i as f64));
        for (key, range) in [
            ("weight_decay", Range::AtLeast(0.0)),
            ("momentum", Range::HalfOpen(0.0, 1.0)),
            ("trust_coefficient", Range::Above(0.0)),
            ("eps", Range::Above(0.0)),
        ] {
            if let Some(v) = optimizer.get(key).and_then(number) {
                p.range(&format!("optimizer.{key}"), v, range);
            }
        }
        if let Some(betas) = optimizer.get("betas").and_then(|b| b.as_array()) {
            for (i, beta) in betas.iter().enumerate() {
                if let Some(beta) = number(beta) {
                    let part = format!("optimizer.betas[{i}]");
                    p.range_of("optimizer.betas", &part, beta, Range::HalfOpen(0.0, 1.0));
                }
            }
        }
        if let Err(e) = self.dataset.check() {
            p.add_mentioning(e.message());
        }
        // Building the augmentation checks its keys; it allocates nothing, so the CPU will do
        // whatever device the run trains on.
        let context = byol::BuildContext::new(tch::Device::Cpu, self.augment.image_size());
        if let Err(e) = self.augment.build(&context) {
            p.add_mentioning(e.message());
        }
        if self.augment.loader_crops().is_some() && !self.dataset.keeps_image_files() {
            p.add(
                "augment.crop_on",
                "augment.crop_on = \"loader\" cuts crops from the full image files, which this dataset does \
                 not keep: use dataset type \"image_folder\" with cache = \"none\" or type \"webdataset\", or augment.crop_on = \"device\""
                    .into(),
            );
        }
    }

    fn check_environment(&self, p: &mut Problems) {
        match crate::train::parse_device(&self.run.device) {
            Err(e) => p.add("run.device", format!("{e:#}")),
            Ok(device) => {
                // What the step refuses on this device, before the data is read. (torchrun starts a
                // data-parallel job, of any size, with WORLD_SIZE set.)
                if let Err(e) = crate::train::check_precision(self.run.precision, device) {
                    p.add("run.precision", format!("{e:#}"));
                }
                let data_parallel = std::env::var_os("WORLD_SIZE").is_some();
                if self.run.cuda_graphs {
                    if let Err(e) = crate::train::check_cuda_graphs(self, device, data_parallel) {
                        p.add("run.cuda_graphs", format!("{e:#}"));
                    }
                }
            }
        }
        self.check_eval_split(p);
    }

    /// `eval.train` and `eval.test` come together and name existing folders.
    fn check_eval_split(&self, p: &mut Problems) {
        let e = &self.eval;
        match (&e.train, &e.test) {
            (Some(_), None) | (None, Some(_)) => {
                let (set, unset) = if e.train.is_some() {
                    ("train", "test")
                } else {
                    ("test", "train")
                };
                p.add(
                    &format!("eval.{set}"),
                    format!(
                        "eval.{set} is set but eval.{unset} is not: the labelled evaluation split needs both \
                         (labelled image folders, <split>/<class>/<image>)"
                    ),
                );
            }
            _ => {}
        }
        for (key, folder) in [("eval.train", &e.train), ("eval.test", &e.test)] {
            if let Some(folder) = folder.as_deref().filter(|f| !f.is_dir()) {
                p.add(
                    key,
                    format!(
                        "{key} = {:?}: this folder does not exist (paths are relative to the working directory); \
                         it should hold labelled images in class sub-folders (<split>/<class>/<image>)",
                        folder.display().to_string()
                    ),
                );
            }
        }
    }

    /// Settings that are valid but most likely not meant, said by `validate` and when a run
    /// starts.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let s = &self.schedule;
        if s.epochs > 0 && s.warmup_epochs >= s.epochs as f64 {
            warnings.push(format!(
                "schedule.warmup_epochs = {} is not shorter than schedule.epochs = {}: the learning rate \
                 rises for the whole run and never decays (the paper warms up for 10 of 300 or more \
                 epochs); set schedule.warmup_epochs lower",
                short_number(s.warmup_epochs),
                s.epochs
            ));
        }
        // The kNN monitor's images are said by the start, which knows whether there is one.
        if let Some(decoded) = self.dataset.image_size() {
            warnings.extend(upscaled_images(decoded as i64, self.augment.as_ref(), false));
        }
        warnings.extend(self.keys_set_twice());
        warnings
    }

    /// A key set twice on one command line (a script's defaults, then a mended value), however
    /// spelled (`optimizer.lr`, `"optimizer".lr`), or set both alone and in its whole table
    /// (`optimizer={...}`): the last counts, which may not be the one meant.
    fn keys_set_twice(&self) -> Vec<String> {
        // (A sweep adds its own assignments after the command line's, named otherwise.)
        let command_line = self
            .overrides
            .iter()
            .zip(&self.override_origins)
            .filter(|(_, origin)| origin.starts_with("--set "));
        let set: Vec<(Vec<String>, &str, &str)> = command_line
            .filter_map(|(o, _)| o.split_once('='))
            .map(|(key, value)| (crate::experiment::key_parts(key), key.trim(), value.trim()))
            .collect();
        let mut warnings = Vec::new();
        let mut keys_said = std::collections::BTreeSet::new();
        let mut tables_said = std::collections::BTreeSet::new();
        for (i, (path, key, _)) in set.iter().enumerate() {
            let same: Vec<&str> = set.iter().filter(|(p, _, _)| p == path).map(|(_, _, v)| *v).collect();
            if same.len() > 1 && keys_said.insert(path) {
                warnings.push(format!(
                    "--set {key} is given {} times ({}): the last one counts",
                    same.len(),
                    same.join(", ")
                ));
            }
            // A key inside a table set whole, in either order.
            for (other, other_key, _) in set.iter().skip(i + 1) {
                let ((table, table_path), (key_in_it, inner_path)) = match (path.len(), other.len()) {
                    (a, b) if a < b && other.starts_with(path) => ((key, path), (other_key, other)),
                    (a, b) if b < a && path.starts_with(other) => ((other_key, other), (key, path)),
                    _ => continue,
                };
                if tables_said.insert((table_path, inner_path)) {
                    warnings.push(format!(
                        "--set {table} sets the whole table that --set {key_in_it} sets a key of: the one given \
                         last decides {key_in_it}"
                    ));
                }
            }
        }
        warnings
    }

    /// For `byol-run validate`: what the user should know before running this experiment.
    pub fn notes(&self) -> Vec<String> {
        let backbone = self
            .to_toml()
            .ok()
            .and_then(|t| toml::from_str::<toml::Table>(&t).ok())
            .and_then(|mut t| t.remove("backbone"))
            .and_then(|b| b.as_table().cloned())
            .unwrap_or_default();
        let mut notes = Vec::new();
        if backbone.get("type").and_then(|t| t.as_str()) == Some("torchscript") {
            let path = backbone.get("path").and_then(|p| p.as_str()).unwrap_or("?");
            notes.push(format!(
                "backbone type \"torchscript\": the module {path} is code, and byol-run runs it during training \
                 and embed (as torch.load would); use only modules from a source you trust"
            ));
        }
        notes
    }
}

/// Views, or the evaluation's images, that are blurred upscales of squares decoded much smaller:
/// most likely a `dataset.image_size` left at its default (32) under the ImageNet preset's 224 px
/// views. Crops cut on the loader come from the full images; the kNN monitor's images are always
/// the decoded squares (`monitored`: there is a kNN monitor, which needs labelled splits), of
/// `decoded` pixels.
pub(crate) fn upscaled_images(decoded: i64, augment: &dyn byol::AugmentSpec, monitored: bool) -> Option<String> {
    let (views, eval) = (augment.image_size(), augment.eval_resize());
    let upscaled = |size: i64| 2 * size > 3 * decoded;
    if augment.loader_crops().is_none() && upscaled(views) {
        Some(format!(
            "the {views} px views are cut from images decoded at {decoded} px ({:.1}x upscaled): set \
             dataset.image_size to at least {views}, or the augmentation's image_size lower",
            views as f64 / decoded as f64
        ))
    } else if monitored && upscaled(eval) {
        Some(format!(
            "the kNN monitor's images are decoded at {decoded} px and resized to {eval} px ({:.1}x \
             upscaled) before their central {views} px: set dataset.image_size to {eval}",
            eval as f64 / decoded as f64
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::short_number;

    #[test]
    fn numbers_print_short() {
        assert_eq!(short_number(3.0), "3");
        assert_eq!(short_number(0.1), "0.1");
        assert_eq!(short_number(1e300), "1e300");
        assert_eq!(short_number(1.0 / 3.0), "0.333333");
        assert_eq!(short_number(2.5e-7), "0.00000025");
        assert_eq!(short_number(1.2345678e-9), "1.2345678e-9");
    }
}
