//! `byol-run export` and `byol-run embed`: using what a run trained.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use tch::{Device, Tensor};

use byol::BuildContext;
use byol_data::image_folder::{decode_square, ImageTree, PassedOver};
use byol_train::checkpoint::{self, Checkpointer};
use byol_train::run_dir::{self, FileWriter, CHECKPOINTS_DIR, CONFIG_FILE};
use byol_train::train::{state, Model, Weights};
use byol_train::Experiment;

const BACKBONE_PREFIX: &str = "online.backbone.";

/// `; its run failed: <why> (error.txt)` for a run folder whose run failed (before its first
/// checkpoint, where this is said), else nothing.
fn failure(run_dir: &Path) -> String {
    let error = std::fs::read_to_string(run_dir.join(byol_train::sweep::ERROR_FILE)).ok();
    let first = error.as_deref().and_then(|e| e.lines().find(|l| !l.trim().is_empty()));
    first.map_or(String::new(), |line| {
        format!("; its run failed: {} ({})", line.trim(), byol_train::sweep::ERROR_FILE)
    })
}

/// A checkpoint folder as given, or the newest intact checkpoint of a run folder (the folder
/// holding `checkpoints/`), found as a resume finds it: damaged checkpoints are skipped with a
/// warning and left where they are (the run may be training; only its owner repairs it).
/// Names the checkpoint a run folder resolved to, on stderr (stdout may be JSON).
pub fn resolve_checkpoint(path: &Path) -> anyhow::Result<PathBuf> {
    if !path.exists() {
        bail!(
            "{} does not exist: give runs/<run> or runs/<run>/{CHECKPOINTS_DIR}/last",
            path.display()
        );
    }
    if path.join(checkpoint::MANIFEST_FILE).exists() {
        // Resolved once: `checkpoints/last` of a run that trains on may point at the next
        // checkpoint between the check of this one and the reading of its weights.
        return path
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", path.display()));
    }
    let checkpoints = path.join(CHECKPOINTS_DIR);
    if path.file_name().is_some_and(|n| n == CHECKPOINTS_DIR) && !checkpoints.is_dir() {
        let run = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        bail!(
            "{} is a run's {CHECKPOINTS_DIR}/ folder: give its run folder ({}, for its newest intact \
             checkpoint) or one checkpoint in it ({}/last)",
            path.display(),
            run.display(),
            path.display()
        );
    }
    if !checkpoints.is_dir() && run_dir::is_run_folder(path) {
        bail!(
            "run folder {} has no checkpoint: its run saved none{}. Train it first, or give a checkpoint folder",
            path.display(),
            failure(path)
        );
    }
    if !checkpoints.is_dir() && run_dir::is_sweep_folder(path) {
        let mut trials: Vec<String> = std::fs::read_dir(path)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| run_dir::is_run_folder(p))
                    .map(|p| p.display().to_string())
                    .collect()
            })
            .unwrap_or_default();
        trials.sort();
        bail!(
            "{} is a sweep folder: give one of its trials' run folders ({}), the best first in its summary.md",
            path.display(),
            match trials.len() {
                0 => "none has trained yet".to_string(),
                1..=3 => trials.join(", "),
                n => format!("{}, ... and {} more", trials[..2].join(", "), n - 2),
            }
        );
    }
    if !checkpoints.is_dir() {
        bail!(
            "{} is neither a checkpoint folder (no {}) nor a run folder (no {CHECKPOINTS_DIR}/); give \
             runs/<run> or runs/<run>/{CHECKPOINTS_DIR}/last",
            path.display(),
            checkpoint::MANIFEST_FILE
        );
    }
    if let Some(why) = run_dir::checkpoints_read_from_another_run(path) {
        byol::eprint_line!("warning: {why}");
    }
    // keep_last only matters when saving; this checkpointer only reads.
    let found = Checkpointer::new(checkpoints.clone(), 1)
        .resume_point(false)
        .map_err(|e| match e.downcast_ref::<checkpoint::NoIntactCheckpoint>() {
            Some(none) => anyhow::anyhow!(
                "run folder {} has no intact checkpoint to read; damaged:\n{}\nGive a checkpoint folder that is \
                 intact, or put one back into {}",
                path.display(),
                none.damaged,
                none.dir.display()
            ),
            None => e.context(format!(
                "finding the newest intact checkpoint of run folder {}",
                path.display()
            )),
        })?;
    for warning in found.warnings {
        byol::eprint_line!("warning: {warning}");
    }
    let Some((dir, manifest)) = found.latest else {
        bail!(
            "run folder {} has no checkpoint yet ({} holds none){}. Train it first, or give a checkpoint folder",
            path.display(),
            checkpoints.display(),
            failure(path)
        );
    };
    byol::eprint_line!(
        "using checkpoint {} (step {}), the newest intact one of run folder {}",
        dir.display(),
        manifest.step,
        path.display()
    );
    Ok(dir)
}

/// `read` of the checkpoint `path` names ([`resolve_checkpoint`]). Where `path` is a run folder
/// whose run, training on, saved and removed checkpoints while one was found or read (it keeps
/// its newest `checkpoint.keep_last`), `read` starts again on the newest one, a few times.
pub fn with_checkpoint<T>(path: &Path, mut read: impl FnMut(&Path) -> anyhow::Result<T>) -> anyhow::Result<T> {
    const TRIES: usize = 5;
    let run_folder = !path.join(checkpoint::MANIFEST_FILE).exists();
    let checkpoints = || -> Vec<std::ffi::OsString> {
        let entries = std::fs::read_dir(path.join(CHECKPOINTS_DIR)).into_iter().flatten();
        let mut names: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.file_name())).collect();
        names.sort();
        names
    };
    for attempt in 1.. {
        let before = checkpoints();
        let (found, result) = match resolve_checkpoint(path) {
            Ok(dir) => {
                let result = read(&dir);
                (Some(dir), result)
            }
            Err(e) => (None, Err(e)),
        };
        // The run removed a checkpoint meanwhile, and the one found is gone (or the search met
        // one going). A checkpoint still there failed for its own reason, which is the error.
        let after = checkpoints();
        let removed = before.iter().any(|name| !after.contains(name));
        let raced = run_folder && removed && found.is_none_or(|dir| !dir.exists());
        match result {
            Err(e) if raced && attempt < TRIES => {
                byol::eprint_line!(
                    "note: the run of {} saved and removed checkpoints while one was read (it trains on, \
                     keeping its newest): reading its newest one again",
                    path.display()
                );
                drop(e);
            }
            Err(e) if raced => {
                return Err(e).with_context(|| {
                    format!(
                        "the run of {} removed each of the {TRIES} checkpoints found before it was read: it saves \
                         them faster than they are read here and keeps only its newest (checkpoint.every_steps, \
                         checkpoint.keep_last); read it once it stops, or copy a checkpoint folder first",
                        path.display()
                    )
                });
            }
            result => return result,
        }
    }
    unreachable!("the loop returns")
}

/// The run folder a checkpoint folder sits in (`<run>/checkpoints/<checkpoint>`, with a
/// `config.toml`), when it does.
pub fn run_folder_of(checkpoint_dir: &Path) -> Option<PathBuf> {
    // A checkpoint removed since it was read (a run that trains on) no longer resolves.
    let real = checkpoint_dir
        .canonicalize()
        .unwrap_or_else(|_| checkpoint_dir.to_path_buf());
    let checkpoints = real.parent()?;
    let run = checkpoints.parent()?;
    (checkpoints.file_name()? == CHECKPOINTS_DIR && run.join(CONFIG_FILE).is_file()).then(|| run.to_path_buf())
}

/// Refuses an output path (given as `flag`) that cannot be written or must not be, before any
/// work: a folder that is missing or is a file; a run's `checkpoints/` folder or a checkpoint in
/// it, where a file of a checkpoint's name would damage it (the next resume would move it aside
/// as damaged); and a run folder's own records (`config.toml`, `summary.json`, ...). Through a
/// link, the file written is the link's target, which is what is checked.
pub fn check_output(out: &Path, flag: &str) -> anyhow::Result<()> {
    let target = out.canonicalize().unwrap_or_else(|_| out.to_path_buf());
    let folder = match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let real = match folder.canonicalize() {
        Ok(real) if real.is_dir() => real,
        Ok(_) => bail!(
            "cannot write {flag} {}: {} is a file, not a folder",
            out.display(),
            folder.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "cannot write {flag} {}: the folder {} does not exist; create it first",
            out.display(),
            folder.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot write {flag} {}", out.display())),
    };
    // A run's checkpoints folder or a folder in it (by its real path: a checkpoints folder may
    // be a link's target in scratch space), or a checkpoint wherever it is.
    let checkpoints = real
        .ancestors()
        .find(|folder| byol_train::run_dir::is_checkpoints_folder(folder));
    let inside = match checkpoints {
        Some(checkpoints) => Some((checkpoints.to_path_buf(), "a run's checkpoints")),
        None => real
            .join(checkpoint::MANIFEST_FILE)
            .is_file()
            .then(|| (real.clone(), "a checkpoint")),
    };
    if let Some((folder, what)) = inside {
        bail!(
            "{flag} {} is inside {}, {what}: a file written there could replace a checkpoint's own and \
             damage it; write it elsewhere, such as next to the run folder",
            out.display(),
            folder.display()
        );
    }
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let written = real.join(&name);
    // A record of a run folder, or a file in one of its record folders (its TensorBoard log; a
    // folder further up counts by the records only a run writes, not by a `checkpoints/` of
    // someone's project beside a config.toml).
    let holds_a_run = |folder: &Path| match folder == real {
        true => byol_train::run_dir::is_run_folder(folder),
        false => byol_train::run_dir::holds_run_records(folder),
    };
    for run in real.ancestors().filter(|a| holds_a_run(a)) {
        let entry = written.strip_prefix(run).ok().and_then(|p| p.components().next());
        let entry = entry
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .unwrap_or_default();
        if byol_train::run_dir::is_run_entry(&entry) {
            bail!(
                "{flag} {} would replace {}, a record of the run folder {}; write it elsewhere",
                out.display(),
                written.strip_prefix(run).unwrap_or(&written).display(),
                run.display()
            );
        }
    }
    if byol_train::run_dir::is_sweep_folder(&real) && byol_train::sweep::is_sweep_entry(&name) {
        bail!(
            "{flag} {} would replace {name}, a record of the sweep folder {}; write it elsewhere",
            out.display(),
            real.display()
        );
    }
    if out.is_dir() {
        bail!("{flag} {} is a folder; name the file to write", out.display());
    }
    // Found now, not after a whole embedding pass: a folder this process cannot write into.
    // (Named apart from the output: a name near the file system's limit leaves no room.)
    let probe = real.join(format!(".byol-run-write-check-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .and_then(|_| std::fs::remove_file(&probe))
        .with_context(|| {
            format!(
                "cannot write {flag} {}: the folder {} cannot be written",
                out.display(),
                real.display()
            )
        })?;
    Ok(())
}

/// Writes the online backbone's variables under their torchvision names.
pub fn export(checkpoint_or_run: &Path, out: &Path) -> anyhow::Result<()> {
    // A .pt or .pth name would promise a file that torch.load reads; this one is safetensors.
    if out.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        bail!(
            "--out {} must end in .safetensors: export writes safetensors (in PyTorch: \
             safetensors.torch.load_file, then load_state_dict)",
            out.display()
        );
    }
    check_output(out, "--out")?;
    with_checkpoint(checkpoint_or_run, |checkpoint_dir| export_from(checkpoint_dir, out))
}

fn export_from(checkpoint_dir: &Path, out: &Path) -> anyhow::Result<()> {
    let manifest = checkpoint::verify(checkpoint_dir)
        .with_context(|| format!("checking checkpoint {}", checkpoint_dir.display()))?;
    // The weights do not need the experiment: one this build cannot read (a plugin it does not
    // link) leaves the inputs unsaid, not the export unwritten.
    let experiment = match Experiment::parse(&manifest.config, &[]) {
        Ok(experiment) => Some(experiment),
        Err(e) => {
            byol::eprint_line!(
                "warning: cannot read the checkpoint's experiment ({e:#}): the export does not record the \
                 inputs it expects (metadata \"{PREPROCESS_KEY}\"), and keeps every layer of the backbone"
            );
            None
        }
    };
    let preprocess = experiment.as_ref().map(ExportedPreprocess::of);
    let untrained = match &experiment {
        Some(experiment) => Untrained::find(experiment, checkpoint_dir, &manifest).unwrap_or_else(|e| {
            byol::eprint_line!("warning: {e:#}: the export keeps every layer of the backbone");
            Untrained::default()
        }),
        None => Untrained::default(),
    };
    let tensors = checkpoint::read_tensors(checkpoint_dir, checkpoint::MODEL_FILE)?;
    let (backbone, left_out): (Vec<_>, Vec<_>) = tensors
        .into_iter()
        .filter_map(|(k, t)| k.strip_prefix(BACKBONE_PREFIX).map(|name| (name.to_string(), t)))
        .partition(|(name, _)| !untrained.holds(name));
    if backbone.is_empty() {
        bail!("{} holds no '{BACKBONE_PREFIX}*' variables", checkpoint_dir.display());
    }
    let layer = experiment.as_ref().map(|e| e.byol.embedding_layer.as_str());
    let mut metadata = export_metadata(&manifest, preprocess.as_ref(), layer)?;
    if !left_out.is_empty() {
        let names: Vec<&str> = left_out.iter().map(|(name, _)| name.as_str()).collect();
        metadata.insert(
            byol::state_dict::LEFT_OUT_KEY.to_string(),
            serde_json::to_string(&names)?,
        );
    }
    let bytes = byol::state_dict::safetensors_with_metadata(&backbone, metadata)?;
    // Through a partial file: a failure (a full disk) leaves an earlier export whole.
    run_dir::replace_file(out, &bytes)?;
    say!("wrote {} backbone tensors to {}", backbone.len(), out.display());
    if let (false, Some(layer)) = (left_out.is_empty(), layer) {
        // `layer4.0.*, layer4.1.*, norm.*, cls_token`: blocks, not each tensor, in the network's
        // order (`blocks.2` before `blocks.10`).
        let block = |name: &str| match name.rsplit_once('.') {
            None => name.to_string(),
            Some((module, _)) => format!("{}.*", module.splitn(3, '.').take(2).collect::<Vec<_>>().join(".")),
        };
        let mut blocks: Vec<String> = left_out.iter().map(|(name, _)| block(name)).collect();
        let numbered = |block: &String| -> Vec<(u64, String)> {
            let parts = block.split('.');
            parts.map(|p| (p.parse().unwrap_or(u64::MAX), p.to_string())).collect()
        };
        blocks.sort_by_key(numbered);
        blocks.dedup();
        say!(
            "left out {} tensors past byol.embedding_layer = \"{layer}\" ({}): the embedding does not use \
             them, so training never changed them; in PyTorch, replace those layers and the classifier \
             (torchvision's fc) with torch.nn.Identity() and load_state_dict(..., strict=False)",
            left_out.len(),
            blocks.join(", ")
        );
    }
    if let Some(preprocess) = &preprocess {
        say!("its inputs: {} (metadata \"{PREPROCESS_KEY}\")", preprocess.describe());
    }
    if let Some(note) = experiment.as_ref().and_then(|e| e.backbone.export_note()) {
        say!("note: {note}");
    }
    Ok(())
}

/// The backbone's tensors that training never changed: the parameters the loss does not reach
/// ([`Model::unreached_parameters`]; a backbone's layers past an inner `byol.embedding_layer`),
/// and the buffers (batch-norm statistics) of modules none of whose parameters it reaches. Found
/// on the networks the checkpoint's experiment builds, on the CPU; none when the embedding is the
/// backbone's last tap (every layer computes it).
#[derive(Default)]
struct Untrained {
    parameters: std::collections::HashSet<String>,
    modules: std::collections::HashSet<String>,
}

impl Untrained {
    fn find(experiment: &Experiment, checkpoint_dir: &Path, manifest: &checkpoint::Manifest) -> anyhow::Result<Self> {
        let experiment = state::with_checkpoint_sources(experiment, checkpoint_dir, manifest)?;
        let context = BuildContext::new(Device::Cpu, experiment.augment.image_size());
        let model = Model::build(&experiment, &context, Weights::Checkpoint)
            .context("building the checkpoint's networks to find the layers its embedding uses")?;
        if model.byol.embeds_at_last_tap() {
            return Ok(Self::default());
        }
        let size = experiment.augment.image_size();
        // A backbone that cannot run backward here (a panic in libtorch) leaves the export whole.
        let unreached = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.unreached_parameters(size)))
            .map_err(|_| anyhow::anyhow!("cannot run the networks backward to find the layers the embedding uses"))?;
        let backbone = |name: &String| name.strip_prefix(BACKBONE_PREFIX).map(String::from);
        let parameters: std::collections::HashSet<String> = unreached.iter().filter_map(backbone).collect();
        let all: Vec<String> = model.parameters.iter().map(|p| &p.name).filter_map(backbone).collect();
        let modules = parameters
            .iter()
            .filter_map(|name| name.rsplit_once('.').map(|(module, _)| module.to_string()))
            .filter(|module| {
                let mut of_module = all
                    .iter()
                    .filter(|p| p.rsplit_once('.').is_some_and(|(m, _)| m == module));
                of_module.all(|p| parameters.contains(p))
            })
            .collect();
        Ok(Self { parameters, modules })
    }

    /// Whether the backbone's tensor `name` (`layer4.0.bn1.running_mean`) is one of them.
    fn holds(&self, name: &str) -> bool {
        self.parameters.contains(name)
            || name
                .rsplit_once('.')
                .is_some_and(|(module, _)| self.modules.contains(module))
    }
}

/// The metadata key of an export's evaluation transform, as JSON ([`ExportedPreprocess`]).
const PREPROCESS_KEY: &str = "byol_rs.preprocess";

/// How the run turned an image into the backbone's input at evaluation (`embed`, `eval`, the kNN
/// monitor), recorded in an export so that its users feed it the same inputs.
#[derive(serde::Serialize)]
struct ExportedPreprocess {
    /// The side that the image's central square (side: its shorter side) is first resized to
    /// (PIL's bilinear resize; [`evaluation_decode_size`]).
    square: u32,
    /// The side that square is then resized to (bilinear, antialiased).
    resize: i64,
    /// The side of the central crop the backbone sees.
    crop: i64,
    /// Pixels scaled to [0, 1], then `(x - mean) / std` per channel (`None`: the augmentation
    /// plugin does not say).
    mean: Option<[f64; 3]>,
    std: Option<[f64; 3]>,
}

impl ExportedPreprocess {
    fn of(experiment: &Experiment) -> Self {
        let normalization = experiment.augment.normalization();
        Self {
            square: evaluation_decode_size(experiment),
            resize: experiment.augment.eval_resize(),
            crop: experiment.augment.image_size(),
            mean: normalization.map(|n| n.mean),
            std: normalization.map(|n| n.std),
        }
    }

    /// The steps in words, those that change nothing left out.
    fn describe(&self) -> String {
        let mut steps = vec![format!("the image's central square resized to {0}x{0}", self.square)];
        if self.square != self.resize as u32 {
            steps.push(format!("resized to {}", self.resize));
        }
        if self.crop != self.resize {
            steps.push(format!("a central {0}x{0} crop", self.crop));
        }
        steps.push("pixels scaled to [0, 1]".to_string());
        match (self.mean, self.std) {
            (Some(mean), Some(std)) => steps.push(format!("normalized with mean {mean:?} and std {std:?}")),
            _ => steps.push("then a normalization the augmentation plugin does not say".to_string()),
        }
        steps.join(", ")
    }
}

/// The export's safetensors metadata: what it is and how it was trained, readable with
/// `safe_open(path, "pt").metadata()`.
fn export_metadata(
    manifest: &checkpoint::Manifest,
    preprocess: Option<&ExportedPreprocess>,
    embedding_layer: Option<&str>,
) -> anyhow::Result<std::collections::HashMap<String, String>> {
    let backbone = toml::from_str::<toml::Table>(&manifest.config)
        .ok()
        .and_then(|config| config.get("backbone")?.as_table().map(toml::to_string))
        .transpose()?;
    let mut metadata = std::collections::HashMap::from([
        // What safetensors.torch.save_file writes: the file holds PyTorch tensors.
        ("format".to_string(), "pt".to_string()),
        ("byol_rs.version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
        ("byol_rs.step".to_string(), manifest.step.to_string()),
        ("byol_rs.experiment".to_string(), manifest.config.clone()),
    ]);
    if let Some(backbone) = backbone {
        metadata.insert("byol_rs.backbone".to_string(), backbone);
    }
    if let Some(preprocess) = preprocess {
        metadata.insert(PREPROCESS_KEY.to_string(), serde_json::to_string(preprocess)?);
    }
    if let Some(layer) = embedding_layer {
        metadata.insert("byol_rs.embedding_layer".to_string(), layer.to_string());
    }
    Ok(metadata)
}

#[derive(Args)]
pub struct EmbedArgs {
    /// A checkpoint folder (runs/<run>/checkpoints/last), or a run folder (runs/<run>: its newest
    /// intact checkpoint).
    checkpoint: PathBuf,
    /// Folder of images (searched recursively for .jpg, .jpeg, .png).
    #[arg(long)]
    images: PathBuf,
    /// Output: .safetensors (tensor "embeddings") or .npy. The image paths (relative to --images)
    /// go to <out>.names.txt, one line per row; a backslash, newline, carriage return or tab in a
    /// path is written as \\, \n, \r or \t, and a byte that is not UTF-8 as \xNN, so that lines
    /// and rows always match.
    #[arg(long)]
    out: PathBuf,
    /// Images per batch.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    batch: u64,
    /// Stop at the first unreadable image or folder (a broken link, a damaged file) instead of
    /// skipping it with a counted warning.
    #[arg(long)]
    strict: bool,
    /// Where the network runs: cpu, cuda, cuda:N or auto (default: the run's run.device, or the
    /// CPU when that device is not on this machine).
    #[arg(long)]
    device: Option<String>,
}

/// What could not be read, for one warning with a count and a list file (as training reports
/// skipped images).
#[derive(Default)]
struct Skipped {
    /// `<file>: <why>`, in the order met, one line each whatever the file names hold: escaped as
    /// in the names file.
    lines: Vec<String>,
}

impl Skipped {
    /// Skips `what` (or, with `strict`, stops there).
    fn add(&mut self, strict: bool, what: String) -> anyhow::Result<()> {
        let line = byol_data::text_line(&what);
        self.add_line(strict, what, line)
    }

    /// Skips an image that could not be decoded (or, with `strict`, stops there); its path is
    /// written byte for byte in the list.
    fn add_image(&mut self, strict: bool, error: byol::DataError) -> anyhow::Result<()> {
        match error {
            byol::DataError::Image { path, message } => {
                let line = format!("{}: {}", byol_data::path_line(&path), byol_data::text_line(&message));
                self.add_line(strict, format!("{}: {message}", path.display()), line)
            }
            other => self.add(strict, other.to_string()),
        }
    }

    fn add_line(&mut self, strict: bool, what: String, line: String) -> anyhow::Result<()> {
        if strict {
            bail!("{what} (--strict stops at the first unreadable file)");
        }
        self.lines.push(line);
        Ok(())
    }
}

/// A checkpoint's trained networks, ready to embed.
pub struct Trained {
    /// The checkpoint folder they came from.
    pub checkpoint: PathBuf,
    pub experiment: Experiment,
    pub device: Device,
    pub model: Model,
    pub augment: Box<dyn byol::Augment>,
}

/// Verifies a checkpoint folder (or a run folder's newest checkpoint) and rebuilds its BYOL
/// networks from the experiment it saved and the files it carries (the online probe, a
/// training-time monitor, is not rebuilt). Nothing outside the checkpoint is read: it works
/// after the run folder moved, from any working directory.
pub fn load_trained(checkpoint_or_run: &Path, device: Option<&str>) -> anyhow::Result<Trained> {
    with_checkpoint(checkpoint_or_run, |dir| load_checkpoint(dir, device))
}

fn load_checkpoint(dir: &Path, device: Option<&str>) -> anyhow::Result<Trained> {
    let manifest = checkpoint::verify(dir).with_context(|| format!("checking checkpoint {}", dir.display()))?;
    let saved = Experiment::parse(&manifest.config, &[]).context("reading the checkpoint's experiment")?;
    let experiment = state::with_checkpoint_sources(&saved, dir, &manifest)?;
    let device = trained_device(&experiment.run.device, device)?;
    let context = BuildContext::new(device, experiment.augment.image_size());
    let model = Model::build(&experiment, &context, Weights::Checkpoint)?;
    for warning in model.byol.backbone_warnings() {
        byol::eprint_line!("warning: {warning}");
    }
    // The online probe, a training-time monitor, is not rebuilt: its weights are left out.
    model
        .load_state(&checkpoint::read_tensors(dir, checkpoint::MODEL_FILE)?, false)
        .with_context(|| format!("loading {}", dir.display()))?;
    let augment = experiment.augment.build(&context)?;
    Ok(Trained {
        checkpoint: dir.to_path_buf(),
        experiment,
        device,
        model,
        augment,
    })
}

/// `--device` when given, else the run's `run.device` where this machine has it, else the CPU
/// (a run trained on a GPU, embedded or evaluated on a machine without one).
fn trained_device(run_device: &str, flag: Option<&str>) -> anyhow::Result<tch::Device> {
    if let Some(flag) = flag {
        return byol_train::train::parse_device_flag(flag);
    }
    byol_train::train::parse_device(run_device).or_else(|e| {
        byol::eprint_line!("note: the run trained on run.device = \"{run_device}\", not usable here ({e:#}); running on the CPU (--device to choose)");
        Ok(tch::Device::Cpu)
    })
}

/// The side of the squares that `embed` and `eval` decode images to: the run's
/// `dataset.image_size` (where its dataset has one), as the kNN monitor's images were decoded,
/// so that the evaluation's resize and crop then see the same pixels; else straight to that resize.
pub fn evaluation_decode_size(experiment: &Experiment) -> u32 {
    experiment
        .dataset
        .image_size()
        .unwrap_or(experiment.augment.eval_resize() as u32)
}

/// The output format, from `--out`'s extension.
#[derive(Clone, Copy)]
enum OutFormat {
    Npy,
    Safetensors,
}

/// The images under `--images`, and the folders under it that could not be listed (or, with
/// `--strict`, the first one as the error).
fn find_images(args: &EmbedArgs) -> anyhow::Result<(ImageTree, Skipped)> {
    let mut scan = ImageTree::walk_every_name(&args.images).map_err(|why| anyhow::anyhow!("--images: {why}"))?;
    let mut skipped = Skipped::default();
    for why in std::mem::take(&mut scan.unlistable) {
        skipped.add(args.strict, why)?;
    }
    let mut passed_over = PassedOver::default();
    passed_over.take_from(&mut scan);
    for warning in passed_over.warnings(&args.images, "embed them", false) {
        byol::eprint_line!("warning: {warning}");
    }
    if scan.images.is_empty() {
        bail!(
            "{} holds no .jpg, .jpeg (.jpe, .jfif, .jif) or .png images",
            args.images.display()
        );
    }
    Ok((scan, skipped))
}

pub fn run(args: &EmbedArgs) -> anyhow::Result<()> {
    // Checked first: a wrong name must not cost a whole embedding pass.
    let format = match args.out.extension().and_then(|e| e.to_str()) {
        Some("npy") => OutFormat::Npy,
        Some("safetensors") => OutFormat::Safetensors,
        _ => bail!("--out {} must end in .safetensors or .npy", args.out.display()),
    };
    check_output(&args.out, "--out")?;
    let names_path = PathBuf::from(format!("{}.names.txt", args.out.display()));
    let skipped_path = PathBuf::from(format!("{}.skipped.txt", args.out.display()));
    // Found now: after the embedding, the embeddings would be replaced and their lists not.
    for beside in [&names_path, &skipped_path] {
        if beside.is_dir() {
            bail!(
                "{} is a folder, where embed writes a list beside --out {}: move it, or choose another --out",
                beside.display(),
                args.out.display()
            );
        }
    }
    let Trained {
        experiment,
        device,
        model,
        augment,
        ..
    } = load_trained(&args.checkpoint, args.device.as_deref())?;
    let (scan, mut skipped) = find_images(args)?;
    let size = evaluation_decode_size(&experiment);
    let mut embedded = Vec::new();
    let mut embeddings = Vec::new();
    for chunk in scan.images.chunks(args.batch as usize) {
        let mut pixels = Vec::new();
        let mut count = 0;
        for file in chunk {
            match decode_square(file, size) {
                Ok(square) => {
                    pixels.extend(square);
                    embedded.push(file);
                    count += 1;
                }
                Err(e) => skipped.add_image(args.strict, e)?,
            }
        }
        if count == 0 {
            continue;
        }
        let images = Tensor::from_slice(&pixels)
            .view([count, 3, size as i64, size as i64])
            .to_device(device);
        embeddings
            .push(byol_train::train::embed_guarded(&model.byol, &augment.eval_view(&images))?.to_device(Device::Cpu));
    }
    if embeddings.is_empty() {
        bail!(
            "none of the images under {} could be read ({} skipped; the first: {})",
            args.images.display(),
            skipped.lines.len(),
            skipped.lines.first().map_or("", String::as_str)
        );
    }
    if let Some(first) = skipped.lines.first() {
        byol::eprint_line!(
            "warning: skipped {} unreadable image(s) or folder(s) under {} (first: {first}; every one in {}); \
             pass --strict to stop at the first one instead",
            skipped.lines.len(),
            args.images.display(),
            skipped_path.display()
        );
    }
    let embeddings = Tensor::cat(&embeddings, 0);
    let names: Vec<String> = embedded
        .iter()
        .map(|f| byol_data::path_line(f.strip_prefix(&args.images).unwrap_or(f)))
        .collect();
    // Written together: a failure while writing (a full disk) leaves earlier files whole, a pair.
    let write_embeddings: FileWriter = Box::new(|path| {
        Ok(match format {
            OutFormat::Npy => embeddings.write_npy(path),
            OutFormat::Safetensors => Tensor::write_safetensors(&[("embeddings", &embeddings)], path),
        }?)
    });
    let write_names: FileWriter = Box::new(|path| Ok(std::fs::write(path, names.join("\n") + "\n")?));
    // Without skipped images, an earlier embedding's list (of other embeddings) goes.
    let list = (!skipped.lines.is_empty()).then(|| skipped.lines.join("\n") + "\n");
    let write_list = list.map(|list| -> FileWriter { Box::new(move |path| Ok(std::fs::write(path, list)?)) });
    run_dir::replace_files_with(vec![
        (args.out.as_path(), Some(write_embeddings)),
        (&names_path, Some(write_names)),
        (&skipped_path, write_list),
    ])?;
    say!(
        "embedded {} images ({} dims) into {} (names in {})",
        embedded.len(),
        embeddings.size()[1],
        args.out.display(),
        names_path.display()
    );
    Ok(())
}
