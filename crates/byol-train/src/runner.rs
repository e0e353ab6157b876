//! The training loop: data -> two views -> BYOL loss -> optimizer -> target EMA, with logging,
//! checkpoints, resume, signals and the kNN monitor around it.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tch::{nn::VarStore, Device, Kind, Tensor};

use byol::{Augment, BuildContext, Byol, LossParts};
use byol_data::image_folder::ImageFolderConfig;
use byol_data::{Batch, BatchLoader, Dataset, Splits};

use crate::checkpoint::{self, Checkpointer, Manifest};
use crate::distributed::DataParallel;
use crate::experiment::{MemoryFormat, Precision};
use crate::knn::{knn_accuracy, KnnAccuracy};
use crate::loss_scale::LossScaler;
use crate::optimizer::{NamedParameter, Optimizer};
use crate::probe::OnlineProbe;
use crate::run_dir;
use crate::schedule::lr_at;
use crate::tensorboard::ScalarLogger;
use crate::Experiment;

const GIB: f64 = (1u64 << 30) as f64;

/// How to run, beyond what the experiment says.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Run folder (default: `<run.output_dir>/<run.name>`).
    pub run_dir: Option<PathBuf>,
    /// Print nothing but warnings.
    pub quiet: bool,
    /// Keys (or whole tables) allowed to differ from the experiment the run folder was trained
    /// with (`--allow-change`); see [`run_dir::check_identity`].
    pub allow_change: Vec<String>,
    /// Move an existing run folder aside (`<run>.old-<time>`) and start a new run (`--fresh`).
    pub fresh: bool,
}

/// What a finished (or interrupted) run reports; saved as `summary.json` in the run folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    pub run_dir: PathBuf,
    /// This process's rank in a data-parallel job (0 otherwise); only rank 0 reports.
    #[serde(default)]
    pub rank: usize,
    pub device: String,
    pub steps: u64,
    pub total_steps: u64,
    pub epochs: u64,
    pub resumed_from_step: Option<u64>,
    /// True when SIGINT/SIGTERM stopped the run early (it resumes from `checkpoint`).
    pub interrupted: bool,
    pub final_loss: Option<f64>,
    /// Absent when the run has no labelled images to evaluate on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knn_before: Option<KnnAccuracy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knn_after: Option<KnnAccuracy>,
    pub train_seconds: f64,
    pub images_per_second: f64,
    pub checkpoint: PathBuf,
}

/// Resolves `run.device`.
pub fn parse_device(spec: &str) -> anyhow::Result<Device> {
    parse_device_for(spec, 0)
}

/// Resolves `run.device` for the process with LOCAL_RANK `local_rank`: "auto" and "cuda" mean
/// that process's own GPU.
pub fn parse_device_for(spec: &str, local_rank: usize) -> anyhow::Result<Device> {
    let local_gpu = || -> anyhow::Result<Device> {
        let count = tch::Cuda::device_count();
        if local_rank as i64 >= count {
            bail!("LOCAL_RANK {local_rank} has no GPU of its own: this node has {count}; start at most {count} processes per node");
        }
        Ok(Device::Cuda(local_rank))
    };
    Ok(match spec {
        "auto" if tch::Cuda::is_available() => local_gpu()?,
        "auto" => Device::Cpu,
        "cpu" => Device::Cpu,
        "cuda" => {
            if !tch::Cuda::is_available() {
                bail!("run.device = \"cuda\" but CUDA is not available here (`byol-run doctor` tells why); use \"auto\" or \"cpu\"");
            }
            local_gpu()?
        }
        other => match other.strip_prefix("cuda:").and_then(|i| i.parse::<usize>().ok()) {
            Some(i) if (i as i64) < tch::Cuda::device_count() => Device::Cuda(i),
            Some(i) => bail!(
                "run.device = \"{other}\": there are {} CUDA devices, no cuda:{i}",
                tch::Cuda::device_count()
            ),
            None => bail!("run.device = \"{other}\" is not one of \"auto\", \"cpu\", \"cuda\", \"cuda:N\""),
        },
    })
}

/// The online network's trainable parameters, by state_dict name.
pub fn online_parameters(vs: &VarStore) -> Vec<NamedParameter> {
    let mut params: Vec<NamedParameter> = vs
        .variables()
        .into_iter()
        .filter(|(name, t)| name.starts_with("online.") && t.requires_grad())
        .map(|(name, tensor)| NamedParameter { name, tensor })
        .collect();
    params.sort_by(|a, b| a.name.cmp(&b.name));
    params
}

/// Every variable of the store (online, target, buffers), sorted, on the CPU.
pub fn model_state(vs: &VarStore) -> Vec<(String, Tensor)> {
    byol::state_dict::to_cpu_sorted(&vs.variables())
}

/// Copies saved variables into the store in place (views such as the EMA's flat buffers stay intact).
pub fn load_model_state(vs: &VarStore, saved: &[(String, Tensor)]) -> anyhow::Result<()> {
    let variables = vs.variables();
    for (name, tensor) in saved {
        let target = variables
            .get(name)
            .with_context(|| format!("checkpoint holds '{name}', which this model lacks"))?;
        if target.size() != tensor.size() {
            bail!(
                "checkpoint's '{name}' has shape {:?}, the model's {:?}",
                tensor.size(),
                target.size()
            );
        }
        tch::no_grad(|| target.shallow_clone().copy_(tensor));
    }
    if saved.len() != variables.len() {
        bail!(
            "checkpoint holds {} variables, the model has {}",
            saved.len(),
            variables.len()
        );
    }
    Ok(())
}

/// Embeddings of a whole split (deterministic eval transform) and its labels.
pub fn embed_split(
    byol: &Byol,
    augment: &dyn Augment,
    data: &Arc<dyn Dataset>,
    batch: usize,
    device: Device,
) -> anyhow::Result<(Tensor, Tensor)> {
    let loader = BatchLoader::new(data.clone(), batch, false, false, 0);
    let mut features = Vec::new();
    let mut labels = Vec::new();
    for indices in loader.epoch_indices(0) {
        let (images, y) = loader.load(&indices, device)?;
        features.push(byol.embed(&augment.eval_view(&images)));
        labels.push(y);
    }
    Ok((Tensor::cat(&features, 0), Tensor::cat(&labels, 0)))
}

/// [`embed_split`] shared by the processes of a data-parallel run: process r embeds batches r,
/// r + N, r + 2N, ... and every process gets the whole split's embeddings, in order.
pub fn embed_split_sharded(
    byol: &Byol,
    augment: &dyn Augment,
    data: &Arc<dyn Dataset>,
    batch: usize,
    device: Device,
    parallel: &DataParallel,
) -> anyhow::Result<(Tensor, Tensor)> {
    let loader = BatchLoader::new(data.clone(), batch, false, false, 0);
    let batches = loader.epoch_indices(0);
    let (rank, world) = (parallel.rank(), parallel.world_size());
    let dim = byol.embedding_dim();
    let mut rounds = Vec::new();
    // Every process runs every round (with an empty share past the end), so the all-gathers
    // pair up. A share travels as one float block of `batch` rows: the features, the label
    // (exact in f32) and a flag that tells real rows from the padding.
    for round in 0..batches.len().div_ceil(world) {
        let block = Tensor::zeros([batch as i64, dim + 2], (Kind::Float, device));
        if let Some(indices) = batches.get(round * world + rank) {
            let (images, y) = loader.load(indices, device)?;
            let features = byol.embed(&augment.eval_view(&images)).to_kind(Kind::Float);
            let real = Tensor::ones([indices.len() as i64, 1], (Kind::Float, device));
            let share = Tensor::cat(&[features, y.to_kind(Kind::Float).unsqueeze(1), real], 1);
            block.narrow(0, 0, indices.len() as i64).copy_(&share);
        }
        // Rank-major: the gathered rows are the split's batches in order.
        rounds.push(parallel.all_gather(&block)?);
    }
    let all = Tensor::cat(&rounds, 0);
    let real = all.select(1, dim + 1).gt(0.5).nonzero().squeeze_dim(1);
    let all = all.index_select(0, &real);
    Ok((all.narrow(1, 0, dim), all.select(1, dim).to_kind(Kind::Int64)))
}

/// The training batches of `experiment` for process `rank` of `world`: micro-batches of the
/// global batch / accumulate / world, shuffled per epoch, crops cut by the loader when the
/// augmentation asks for them, and a small in-memory split kept on the GPU.
pub fn training_loader(
    experiment: &Experiment,
    splits: &Splits,
    device: Device,
    rank: usize,
    world: usize,
) -> anyhow::Result<BatchLoader> {
    let schedule = &experiment.schedule;
    let accumulate = schedule.accumulate.max(1);
    if schedule.batch_size == 0 || schedule.batch_size > splits.train.len() {
        bail!(
            "schedule.batch_size = {} must be between 1 and the {} training images",
            schedule.batch_size,
            splits.train.len()
        );
    }
    if !schedule.batch_size.is_multiple_of(accumulate * world) {
        bail!(
            "schedule.batch_size = {} (the global batch) is not a multiple of schedule.accumulate = {accumulate} \
             times the {world} processes",
            schedule.batch_size
        );
    }
    let mut loader = BatchLoader::new(
        splits.train.clone(),
        schedule.batch_size / accumulate / world,
        true,
        true,
        experiment.run.seed,
    );
    // Rank r takes every world-th micro-batch: together the ranks see exactly the batches a
    // single process with the global batch would see.
    loader.rank = rank;
    loader.world_size = world;
    if let Some(crops) = experiment.augment.loader_crops() {
        if !splits.train.reads_crops() {
            bail!(
                "augment.crop_on = \"loader\" cuts crops from the full image files, which this dataset does not \
                 keep: use dataset type \"image_folder\" with cache = \"none\", or augment.crop_on = \"device\""
            );
        }
        loader.crops = Some(crops);
    }
    // A small in-memory split (CIFAR) lives on the GPU: batches are gathered there, and the
    // input path costs nothing next to the step. Larger ones stream through pinned memory.
    const ON_DEVICE_LIMIT: usize = 4 << 30;
    let [c, h, w] = splits.train.image_shape();
    if device.is_cuda() && splits.train.len() * c * h * w <= ON_DEVICE_LIMIT {
        loader.keep_on_device(device);
    }
    Ok(loader)
}

/// BYOL's two views of a batch from `loader`: from the crops it cut (`[N, 6, S, S]`, view 1's
/// RGB then view 2's) or from its uint8 images.
pub fn two_views(augment: &dyn Augment, loader: &BatchLoader, images: &Tensor) -> anyhow::Result<(Tensor, Tensor)> {
    if loader.crops.is_some() {
        augment
            .two_views_from_crops(&images.narrow(1, 0, 3), &images.narrow(1, 3, 3))
            .context("the augmentation plugin cannot take crops cut by the loader")
    } else {
        Ok(augment.two_views(images))
    }
}

/// Sum of squared entries over tensors, as one f64 (one sync).
fn total_norm(tensors: impl Iterator<Item = Tensor>) -> f64 {
    let squares: Vec<Tensor> = tensors
        .filter(|t| t.defined())
        .map(|t| t.square().sum(Kind::Float))
        .collect();
    if squares.is_empty() {
        return 0.0;
    }
    Tensor::stack(&squares, 0).sum(Kind::Float).sqrt().double_value(&[])
}

/// Prints progress: a bar on a terminal, plain lines otherwise (logs, CI).
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    quiet: bool,
}

impl Progress {
    fn new(total: u64, done: u64, quiet: bool) -> Self {
        let bar = (!quiet && std::io::stdout().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total).with_position(done);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {msg}",
                )
                .expect("valid template"),
            );
            bar
        });
        Self { bar, quiet }
    }

    fn line(&self, text: String) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None if !self.quiet => println!("{text}"),
            None => {}
        }
    }

    /// A log point: the bar's message, or a plain line.
    fn update(&self, step: u64, text: String) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(step);
                bar.set_message(text);
            }
            None => self.line(text),
        }
    }

    fn tick(&self, step: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(step);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// How a training step computes: `run.precision` and `run.memory_format` resolved for a device.
#[derive(Debug)]
pub struct StepNumerics {
    /// The autocast dtype of the forward pass (None: fp32).
    pub autocast: Option<Kind>,
    /// fp16's dynamic loss scale.
    pub scaler: Option<LossScaler>,
    pub channels_last: bool,
}

impl StepNumerics {
    pub fn resolve(precision: Precision, memory_format: MemoryFormat, device: Device) -> anyhow::Result<Self> {
        let (autocast, scaler) = match precision {
            Precision::Fp32 => (None, None),
            Precision::Bf16 => (Some(Kind::BFloat16), None),
            Precision::Fp16 if device.is_cuda() => (Some(Kind::Half), Some(LossScaler::default())),
            Precision::Fp16 => {
                bail!("run.precision = \"fp16\" needs a CUDA device (this run is on {device:?}); use \"bf16\" or \"fp32\"")
            }
        };
        let channels_last = match memory_format {
            MemoryFormat::Auto => device.is_cuda(),
            MemoryFormat::ChannelsLast => true,
            MemoryFormat::Contiguous => false,
        };
        Ok(Self {
            autocast,
            scaler,
            channels_last,
        })
    }

    /// Runs the forward pass `f` under this autocast (or none).
    pub fn forward<T>(&self, device: Device, f: impl FnOnce() -> T) -> T {
        torch_ext::autocast::autocast(device, self.autocast.unwrap_or(Kind::Float), self.autocast.is_some(), f)
    }

    /// A view in the step's memory format.
    pub fn layout(&self, view: Tensor) -> anyhow::Result<Tensor> {
        Ok(if self.channels_last {
            torch_ext::channels_last(&view)?
        } else {
            view
        })
    }

    /// The model half of a step on one micro-batch: both views in this layout, the forward pass
    /// under this autocast, and the backward of `loss * weight` (loss-scaled in fp16). Training
    /// and `byol-run bench` both step through here, so the benchmark times what training runs.
    /// Returns the forward's parts, the loss already weighted.
    pub fn forward_backward(
        &self,
        device: Device,
        byol: &Byol,
        view1: Tensor,
        view2: Tensor,
        weight: f64,
    ) -> anyhow::Result<LossParts> {
        let (view1, view2) = (self.layout(view1)?, self.layout(view2)?);
        let mut parts = self.forward(device, || byol.loss_parts(&view1, &view2));
        parts.loss = parts.loss.to_kind(Kind::Float) * weight;
        match &self.scaler {
            Some(scaler) => (&parts.loss * scaler.scale()).backward(),
            None => parts.loss.backward(),
        }
        Ok(parts)
    }

    /// The optimizer step at `lr`, after unscaling fp16 gradients; skipped (and the loss scale
    /// lowered) when they overflowed. Returns whether the step was taken.
    pub fn optimizer_step(&mut self, parameters: &[NamedParameter], optimizer: &mut dyn Optimizer, lr: f64) -> bool {
        let apply = match &mut self.scaler {
            Some(scaler) => scaler.unscale(parameters),
            None => true,
        };
        if apply {
            optimizer.step(lr);
        }
        apply
    }
}

/// What one training step reports.
struct StepOutcome {
    loss: f64,
    stop: bool,
    projections: Tensor,
}

/// Said once at start when nothing can measure the representation.
pub const NO_LABELS_NOTE: &str = "kNN monitor and online probe off: the training images have no labels; \
     set eval.train and eval.test to labelled image folders";

/// Labelled images for the kNN monitor: the bank and the queries.
struct LabelledSplits {
    bank: Arc<dyn Dataset>,
    queries: Arc<dyn Dataset>,
}

/// The kNN monitor's splits: `[eval] train` and `test` when set (decoded at the training images'
/// size), else the dataset's own labelled splits; None when there are no labelled queries.
fn labelled_splits(experiment: &Experiment, splits: &Splits) -> anyhow::Result<Option<LabelledSplits>> {
    let eval = &experiment.eval;
    let (Some(train), Some(test)) = (&eval.train, &eval.test) else {
        return Ok(match &splits.test {
            Some(queries) if splits.train.is_labelled() => Some(LabelledSplits {
                bank: splits.train.clone(),
                queries: queries.clone(),
            }),
            _ => None,
        });
    };
    let folder = ImageFolderConfig {
        train: train.clone(),
        test: Some(test.clone()),
        image_size: splits.train.image_shape()[1] as u32,
        ..Default::default()
    };
    let context = || {
        format!(
            "reading the labelled evaluation split (eval.train = {}, eval.test = {})",
            train.display(),
            test.display()
        )
    };
    // The folder's auto-detection notes are not printed: an unlabelled folder is an error here.
    let (labelled, warnings, _notes) = folder
        .load_with_notes()
        .map_err(anyhow::Error::from)
        .with_context(context)?;
    if !labelled.train.is_labelled() {
        bail!(
            "eval.train = {}: no class sub-folders; the evaluation split needs labels, one sub-folder of \
             images per class (<split>/<class>/<image>)",
            train.display()
        );
    }
    for w in warnings {
        eprintln!("warning: {w}");
    }
    Ok(Some(LabelledSplits {
        bank: labelled.train,
        queries: labelled.test.with_context(context)?,
    }))
}

/// Labelled batches for the online probe when the training images have none: batch `step` of
/// the shuffled evaluation split, so a resumed run sees the same ones.
struct ProbeBatches {
    loader: BatchLoader,
    /// The current epoch's batches, drawn once per epoch rather than once per step.
    epoch: Option<(u64, Vec<Vec<usize>>)>,
}

impl ProbeBatches {
    fn batch_at(&mut self, step: u64, device: Device) -> Result<(Tensor, Tensor), byol_data::DataError> {
        let per_epoch = self.loader.batches_per_epoch() as u64;
        let epoch = step / per_epoch;
        if self.epoch.as_ref().is_none_or(|(cached, _)| *cached != epoch) {
            self.epoch = Some((epoch, self.loader.epoch_indices(epoch)));
        }
        let (_, batches) = self.epoch.as_ref().expect("drawn above");
        self.loader.load(&batches[(step % per_epoch) as usize], device)
    }
}

/// Everything a run holds while it trains.
struct Trainer<'a> {
    experiment: &'a Experiment,
    device: Device,
    splits: Splits,
    augment: Box<dyn Augment>,
    vs: VarStore,
    byol: Byol,
    parameters: Vec<NamedParameter>,
    optimizer: Box<dyn Optimizer>,
    numerics: StepNumerics,
    loader: BatchLoader,
    steps_per_epoch: u64,
    total_steps: u64,
    warmup_steps: u64,
    peak_lr: f64,
    checkpointer: Checkpointer,
    config_toml: String,
    probe: Option<OnlineProbe>,
    /// The kNN monitor's images; None: the monitor is off.
    labelled: Option<LabelledSplits>,
    /// Labelled batches for the online probe when the training images have none (the
    /// evaluation split's bank, in eval mode); None: the probe learns from the training batches.
    probe_batches: Option<ProbeBatches>,
    /// Set when torchrun started this process as one of several.
    parallel: Option<DataParallel>,
}

impl<'a> Trainer<'a> {
    fn new(experiment: &'a Experiment, run_dir: &Path) -> anyhow::Result<Self> {
        let rendezvous = DataParallel::rendezvous(&experiment.distributed)?;
        let device = parse_device_for(&experiment.run.device, rendezvous.as_ref().map_or(0, |r| r.local_rank))?;
        let parallel = match &rendezvous {
            Some(r) => Some(DataParallel::join(r, &experiment.distributed, device)?),
            None => None,
        };
        let (rank, world) = parallel.as_ref().map_or((0, 1), |p| (p.rank(), p.world_size()));
        if experiment.run.threads > 0 {
            tch::set_num_threads(experiment.run.threads as i32);
        }
        let numerics = StepNumerics::resolve(experiment.run.precision, experiment.run.memory_format, device)?;
        tch::manual_seed(experiment.run.seed as i64);
        let context = BuildContext::new(device, experiment.augment.image_size());
        let splits = experiment.dataset.build(&context).context("building [dataset]")?;
        let augment = experiment.augment.build(&context).context("building [augment]")?;
        let vs = VarStore::new(device);
        let mut byol = Byol::new(
            &vs,
            experiment.backbone.as_ref(),
            experiment.augment.image_size(),
            &experiment.byol.embedding_layer,
            &experiment.byol,
        )
        .context("building the BYOL networks ([backbone], [byol])")?;
        if numerics.channels_last {
            byol.use_channels_last(&vs)
                .context("laying out the weights channels_last")?;
        }
        let parameters = online_parameters(&vs);
        let optimizer = experiment
            .optimizer
            .build(parameters.clone(), &context)
            .context("building [optimizer]")?;

        let schedule = &experiment.schedule;
        let accumulate = schedule.accumulate.max(1);
        let loader = training_loader(experiment, &splits, device, rank, world)?;
        let steps_per_epoch = (loader.batches_per_epoch() / accumulate) as u64;
        let total_steps = steps_per_epoch * schedule.epochs;
        let warmup_steps = (schedule.warmup_epochs * steps_per_epoch as f64).round() as u64;
        let batch_scale = if schedule.scale_lr_by_batch {
            schedule.batch_size as f64 / 256.0
        } else {
            1.0
        };
        let peak_lr = experiment.optimizer.lr() * batch_scale;
        let config_toml = experiment.to_toml()?;
        let checkpointer = Checkpointer::new(run_dir.join(run_dir::CHECKPOINTS_DIR), experiment.checkpoint.keep_last);
        let labelled = labelled_splits(experiment, &splits)?;
        let probe_source = if splits.train.is_labelled() {
            Some(&splits.train)
        } else {
            labelled.as_ref().map(|l| &l.bank)
        };
        let classes = probe_source.map_or(0, |d| d.classes().len() as i64);
        let mut probe = (experiment.eval.online_probe && classes > 1).then(|| {
            OnlineProbe::new(
                &(vs.root() / "probe"),
                byol.embedding_dim(),
                classes,
                experiment.eval.probe_lr,
            )
        });
        // Every process takes the same probe batch: its averaged gradient is the batch's own.
        let probe_batches = match (&probe, probe_source) {
            (Some(_), Some(source)) if !splits.train.is_labelled() => Some(ProbeBatches {
                loader: BatchLoader::new(
                    source.clone(),
                    loader.batch_size.min(source.len()),
                    true,
                    true,
                    experiment.run.seed,
                ),
                epoch: None,
            }),
            _ => None,
        };
        if let Some(parallel) = &parallel {
            parallel.broadcast_variables(&vs)?;
            if let Some(probe) = &mut probe {
                probe.synchronize(parallel.clone());
            }
        }
        Ok(Self {
            experiment,
            device,
            splits,
            augment,
            vs,
            byol,
            parameters,
            optimizer,
            numerics,
            loader,
            steps_per_epoch,
            total_steps,
            warmup_steps,
            peak_lr,
            checkpointer,
            config_toml,
            probe,
            labelled,
            probe_batches,
            parallel,
        })
    }

    /// Rank 0 of a data-parallel run, or the only process: the one that logs and saves.
    fn is_main(&self) -> bool {
        self.parallel.as_ref().is_none_or(|p| p.rank() == 0)
    }

    fn rank(&self) -> u64 {
        self.parallel.as_ref().map_or(0, |p| p.rank() as u64)
    }

    /// Lets the other processes wait while rank 0 evaluates or saves.
    fn barrier(&self) -> anyhow::Result<()> {
        match &self.parallel {
            Some(parallel) => parallel.barrier(),
            None => Ok(()),
        }
    }

    /// Loads the newest intact checkpoint, once the experiment it was trained with is known to
    /// be this one (or the differences are accepted); returns its step. `config.toml` is written
    /// only then, so it always describes the run the folder holds.
    fn resume(&mut self, run_dir: &Path, allow_change: &[String]) -> anyhow::Result<Option<u64>> {
        let checkpoint::ResumePoint { latest, warnings } = self.checkpointer.resume_point(self.is_main())?;
        for w in warnings {
            eprintln!("warning: {w}");
        }
        let step = match latest {
            Some((dir, manifest)) => {
                let source = format!("the experiment saved with {}", dir.display());
                self.check_identity(run_dir, &source, &manifest.config, allow_change)?;
                self.load_checkpoint(&dir)?;
                Some(manifest.step)
            }
            None => {
                // No checkpoint yet, but logs of a run that stopped before its first one.
                if let Some(saved) = run_dir::saved_config(run_dir) {
                    self.check_identity(run_dir, "its config.toml", &saved, allow_change)?;
                }
                None
            }
        };
        if self.is_main() {
            run_dir::save_config(run_dir, &self.config_toml)?;
        }
        Ok(step)
    }

    fn check_identity(&self, run_dir: &Path, source: &str, saved: &str, allow: &[String]) -> anyhow::Result<()> {
        let accepted = run_dir::check_identity(run_dir, source, saved, &self.config_toml, allow)?;
        if self.is_main() && !accepted.is_empty() {
            let list: Vec<String> = accepted.iter().map(ToString::to_string).collect();
            eprintln!(
                "note: continuing {} with changes (--allow-change): {}",
                run_dir.display(),
                list.join(", ")
            );
        }
        Ok(())
    }

    /// Copies a verified checkpoint's weights and optimizer state into the run.
    fn load_checkpoint(&mut self, dir: &Path) -> anyhow::Result<()> {
        let context = || format!("resuming from {}", dir.display());
        load_model_state(&self.vs, &checkpoint::read_tensors(dir, checkpoint::MODEL_FILE)?).with_context(context)?;
        let mut state = checkpoint::read_tensors(dir, checkpoint::OPTIMIZER_FILE)?;
        if let Some(i) = state.iter().position(|(k, _)| k == "loss_scale") {
            let (_, scale) = state.remove(i);
            if let Some(scaler) = &mut self.numerics.scaler {
                scaler.load_state(&scale);
            }
        }
        self.optimizer
            .load_state(&state)
            .map_err(|e| anyhow::anyhow!("{}: {e}", context()))
    }

    /// Rank 0 writes the checkpoint while the other processes wait; returns its folder.
    fn save(&self, step: u64) -> anyhow::Result<PathBuf> {
        let saved = if self.is_main() {
            self.write_checkpoint(step)
        } else {
            Ok(self.checkpointer.dir().join("last"))
        };
        self.barrier()?;
        saved
    }

    fn write_checkpoint(&self, step: u64) -> anyhow::Result<PathBuf> {
        // A checkpoint never holds non-finite parameters: the last good one stays the newest.
        let finite = tch::no_grad(|| {
            self.parameters
                .iter()
                .all(|p| p.tensor.isfinite().all().int64_value(&[]) != 0)
        });
        if !finite {
            bail!(
                "parameters became Inf or NaN by step {step}; {}",
                self.checkpointer.kept()
            );
        }
        let mut optimizer_state = self.optimizer.state();
        if let Some(scaler) = &self.numerics.scaler {
            optimizer_state.push(("loss_scale".into(), scaler.state()));
        }
        let manifest = Manifest {
            format: 1,
            step,
            epoch: step / self.steps_per_epoch.max(1),
            total_steps: self.total_steps,
            files: Default::default(),
            config: self.config_toml.clone(),
        };
        self.checkpointer
            .save(&model_state(&self.vs), &optimizer_state, manifest)
    }

    /// What the augmentation makes of the first training images, as the TensorBoard image `views`.
    fn log_view_grid(&self, logger: &mut ScalarLogger) -> anyhow::Result<()> {
        let Some(first) = self.loader.epoch_indices(0).into_iter().next() else {
            return Ok(());
        };
        let (images, _) = self.loader.load(&first, self.device)?;
        // With loader crops, the picture shows the views made from the loader's own crops of
        // the full images (the first batch of epoch 0, the crops training takes).
        let loader_crops = match self.loader.crops {
            Some(_) => self.loader.prefetch(0, 0, self.device).next().transpose()?,
            None => None,
        };
        let grid = match &loader_crops {
            Some(batch) => self
                .augment
                .preview_of_crops(&images, &batch.images)
                .or_else(|| self.augment.preview(&images)),
            None => self.augment.preview(&images),
        };
        match grid {
            Some(grid) => logger.image("views", &grid, 0),
            None => Ok(()),
        }
    }

    /// The embeddings of a split for the kNN monitor; in a data-parallel run every process
    /// embeds a share and all get the whole.
    fn embed(&self, data: &Arc<dyn Dataset>) -> anyhow::Result<(Tensor, Tensor)> {
        let (augment, batch) = (self.augment.as_ref(), self.experiment.eval.batch_size);
        match &self.parallel {
            Some(parallel) => embed_split_sharded(&self.byol, augment, data, batch, self.device, parallel),
            None => embed_split(&self.byol, augment, data, batch, self.device),
        }
    }

    fn knn(&self) -> anyhow::Result<Option<KnnAccuracy>> {
        let Some(labelled) = &self.labelled else {
            return Ok(None);
        };
        let eval = &self.experiment.eval;
        let (bank, bank_labels) = self.embed(&labelled.bank)?;
        let (queries, labels) = self.embed(&labelled.queries)?;
        let classes = labelled.bank.classes().len() as i64;
        Ok(Some(knn_accuracy(
            &queries,
            &labels,
            &bank,
            &bank_labels,
            classes,
            eval.knn_k as i64,
            eval.knn_temperature,
        )))
    }

    /// One optimizer step over `micro_batches`; `stop` is this process's stop request. Returns
    /// the loss (over micro-batches, and processes), whether any process asked to stop, and the
    /// online projections of the last micro-batch.
    fn step(&mut self, step: u64, micro_batches: &[Batch], stop: bool) -> anyhow::Result<StepOutcome> {
        // Randomness of step k depends on (seed, k, rank) only, so a resumed run draws exactly
        // the views the uninterrupted run would have drawn.
        let stream = self.rank().wrapping_mul(0x9E37_79B9_7F4A_7C15);
        tch::manual_seed(
            self.experiment
                .run
                .seed
                .wrapping_mul(1_000_003)
                .wrapping_add(step)
                .wrapping_add(stream) as i64,
        );
        self.optimizer.zero_grad();
        let mut total = Tensor::zeros([], (Kind::Float, self.device));
        let mut projections = None;
        let share = 1.0 / micro_batches.len() as f64;
        for Batch { images, labels, .. } in micro_batches {
            let (view1, view2) = two_views(self.augment.as_ref(), &self.loader, images)?;
            let parts = self
                .numerics
                .forward_backward(self.device, &self.byol, view1, view2, share)?;
            total += parts.loss.detach();
            if let (Some(probe), None) = (&mut self.probe, &self.probe_batches) {
                probe.train_step(&parts.online_embeddings, labels);
            }
            projections = Some(parts.online_projections);
        }
        if let (Some(probe), Some(batches)) = (&mut self.probe, &mut self.probe_batches) {
            let (images, labels) = batches
                .batch_at(step, self.device)
                .context("loading the online probe's batch from eval.train")?;
            let embeddings = self.byol.embed(&self.augment.eval_view(&images));
            probe.train_step(&embeddings, &labels);
        }
        let lr = lr_at(
            step,
            self.total_steps,
            self.warmup_steps,
            self.peak_lr,
            self.peak_lr * self.experiment.schedule.final_lr_fraction,
        );
        let (loss, stop) = match &self.parallel {
            Some(parallel) => {
                let tensors: Vec<Tensor> = self.parameters.iter().map(|p| p.tensor.shallow_clone()).collect();
                let agreed = parallel.all_reduce_gradients(&tensors, &total, stop)?;
                (agreed.loss, agreed.stop)
            }
            None => (total.double_value(&[]), stop),
        };
        self.numerics
            .optimizer_step(&self.parameters, self.optimizer.as_mut(), lr);
        self.byol.update_target(step, self.total_steps);
        Ok(StepOutcome {
            loss,
            stop,
            projections: projections.expect("at least one micro-batch"),
        })
    }
}

/// Trains `experiment` to the end, resuming from the run folder's newest intact checkpoint.
/// SIGINT/SIGTERM finish the current step, save a checkpoint and return early.
pub fn train(experiment: &Experiment, options: &RunOptions) -> anyhow::Result<RunSummary> {
    experiment.validate()?;
    let run_dir = options
        .run_dir
        .clone()
        .unwrap_or_else(|| experiment.run.output_dir.join(experiment.name()));
    // Held until the run returns; the kernel releases it if the process dies.
    let main = DataParallel::rendezvous(&experiment.distributed)?.is_none_or(|r| r.rank == 0);
    let (_owner, moved_aside) = run_dir::take_ownership(&run_dir, main, options.fresh)?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing the signal handler")?;
    }
    let mut t = Trainer::new(experiment, &run_dir)?;
    let quiet = options.quiet || !t.is_main();
    let say = |line: String| {
        if !quiet {
            println!("{line}");
        }
    };
    if t.labelled.is_none() && !t.splits.train.is_labelled() {
        say(format!("note: {NO_LABELS_NOTE}"));
    }
    if let Some(old) = moved_aside {
        say(format!(
            "--fresh: moved the previous run folder aside to {}",
            old.display()
        ));
    }
    let resumed_from_step = t.resume(&run_dir, &options.allow_change)?;
    let mut step = resumed_from_step.unwrap_or(0);
    if let Some(step) = resumed_from_step {
        say(format!(
            "resuming {} from step {step} of {}",
            run_dir.display(),
            t.total_steps
        ));
    }
    let mut logger = if t.is_main() {
        let dir = run_dir.join("tensorboard");
        ScalarLogger::create(&dir).with_context(|| format!("cannot open a TensorBoard log in {}", dir.display()))?
    } else {
        ScalarLogger::disabled()
    };
    let knn_before = if experiment.eval.before_training && step == 0 {
        let acc = t.knn()?;
        if let Some(a) = acc {
            say(format!(
                "kNN before training: top-1 {:.1}%  top-5 {:.1}%",
                a.top1 * 100.0,
                a.top5 * 100.0
            ));
            logger.scalar("knn/top1", a.top1, 0);
            logger.scalar("knn/top5", a.top5, 0);
        }
        acc
    } else {
        None
    };
    if experiment.logging.view_grid && step == 0 && t.is_main() {
        t.log_view_grid(&mut logger)?;
    }
    let schedule = &experiment.schedule;
    say(format!(
        "training {} on {:?}{}: {} images, batch {}{}, {} epochs = {} steps",
        experiment.name(),
        t.device,
        match &t.parallel {
            Some(p) => format!(
                " and {} more processes (c10d {:?})",
                p.world_size() - 1,
                p.group().backend()
            ),
            None => String::new(),
        },
        t.splits.train.len(),
        schedule.batch_size,
        if schedule.accumulate > 1 {
            format!(" ({} micro-batches)", schedule.accumulate)
        } else {
            String::new()
        },
        schedule.epochs,
        t.total_steps
    ));

    let progress = Progress::new(t.total_steps, step, quiet);
    let started = Instant::now();
    let start_step = step;
    let mut final_loss = None;
    let mut window = (Instant::now(), 0u64);
    let accumulate = schedule.accumulate.max(1);
    let every = |n: u64, step: u64| n > 0 && step.is_multiple_of(n);
    let mut interrupted = false;
    'epochs: while step < t.total_steps {
        let epoch = step / t.steps_per_epoch;
        // Worker threads decode the next batches while the device trains on this one.
        let done_in_epoch = (step % t.steps_per_epoch) as usize;
        let mut batches = t.loader.prefetch(epoch, done_in_epoch * accumulate, t.device);
        for _ in done_in_epoch as u64..t.steps_per_epoch {
            let group = batches
                .by_ref()
                .take(accumulate)
                .collect::<Result<Vec<Batch>, _>>()
                .with_context(|| format!("loading the batches of step {}", step + 1))?;
            if group.len() < accumulate {
                break;
            }
            let stop_requested = stop.load(Ordering::Relaxed);
            let outcome = guarded(|| t.step(step, &group, stop_requested));
            let StepOutcome {
                loss,
                stop: stop_agreed,
                projections,
            } = match outcome {
                Ok(result) => result?,
                Err(panic) => return Err(explain_panic(panic, schedule.batch_size, accumulate)),
            };
            if !loss.is_finite() {
                bail!(
                    "the loss became {loss} at step {}; {} (lower optimizer.lr, or check the data)",
                    step + 1,
                    t.checkpointer.kept()
                );
            }
            step += 1;
            window.1 += schedule.batch_size as u64;
            if every(experiment.logging.every_steps.max(1), step) || step == t.total_steps {
                let lr = lr_at(
                    step - 1,
                    t.total_steps,
                    t.warmup_steps,
                    t.peak_lr,
                    t.peak_lr * schedule.final_lr_fraction,
                );
                let tau = byol::tau_at(step - 1, t.total_steps, experiment.byol.tau_base);
                let images_per_second = window.1 as f64 / window.0.elapsed().as_secs_f64().max(1e-9);
                window = (Instant::now(), 0);
                let z = &projections;
                let z_std = (z / z.norm_scalaropt_dim(2, [1i64].as_slice(), true).clamp_min(1e-12))
                    .std_dim([0i64].as_slice(), true, false)
                    .mean(None)
                    .double_value(&[]);
                let weight_norm = total_norm(t.parameters.iter().map(|p| p.tensor.detach()));
                let grad_norm = total_norm(t.parameters.iter().map(|p| p.tensor.grad()));
                logger.scalar("train/loss", loss, step);
                logger.scalar("train/lr", lr, step);
                logger.scalar("train/tau", tau, step);
                logger.scalar("train/projection_std", z_std, step);
                // The same spread in units of 1/sqrt(d), the per-dimension std of unit vectors spread
                // evenly over the sphere: about 1 when the projections use every dimension, falling
                // towards 0 as they collapse onto a point.
                let dims = z.size().last().copied().unwrap_or(1) as f64;
                logger.scalar("train/projection_std_ratio", z_std * dims.sqrt(), step);
                logger.scalar("train/weight_norm", weight_norm, step);
                logger.scalar("train/grad_norm", grad_norm, step);
                logger.scalar("train/images_per_second", images_per_second, step);
                if let Some(accuracy) = t.probe.as_mut().and_then(OnlineProbe::take_accuracy) {
                    logger.scalar("train/online_probe_accuracy", accuracy, step);
                }
                if let Some(scaler) = &t.numerics.scaler {
                    logger.scalar("train/loss_scale", scaler.scale(), step);
                }
                if let Device::Cuda(index) = t.device {
                    let memory = torch_ext::memory::cuda_memory(index)?;
                    logger.scalar("train/gpu_memory_peak_gib", memory.peak_allocated as f64 / GIB, step);
                    logger.scalar("train/gpu_memory_reserved_gib", memory.reserved as f64 / GIB, step);
                }
                progress.update(
                    step,
                    format!(
                        "epoch {:>3}/{} step {step:>6}/{} loss {loss:.4} lr {lr:.4} tau {tau:.5} img/s {images_per_second:.0}",
                        epoch + 1,
                        schedule.epochs,
                        t.total_steps
                    ),
                );
                final_loss = Some(loss);
            } else {
                progress.tick(step);
            }
            if stop_agreed {
                interrupted = true;
                break 'epochs;
            }
            if every(experiment.checkpoint.every_steps, step) && step < t.total_steps {
                t.save(step)?;
            }
            if step == t.total_steps {
                break;
            }
        }
        let epochs_done = step / t.steps_per_epoch;
        if step.is_multiple_of(t.steps_per_epoch)
            && every(experiment.eval.every_epochs, epochs_done)
            && step < t.total_steps
        {
            if let Some(a) = t.knn()? {
                progress.line(format!("kNN after epoch {epochs_done}: top-1 {:.1}%", a.top1 * 100.0));
                logger.scalar("knn/top1", a.top1, step);
                logger.scalar("knn/top5", a.top5, step);
            }
        }
    }
    progress.finish();
    let train_seconds = started.elapsed().as_secs_f64();
    let checkpoint = t.save(step)?;
    if interrupted {
        say(format!(
            "stopped by signal after step {step}; saved {} (run again to resume)",
            checkpoint.display()
        ));
    }
    let knn_after = if interrupted { None } else { t.knn()? };
    if let Some(a) = knn_after {
        logger.scalar("knn/top1", a.top1, step);
        logger.scalar("knn/top5", a.top5, step);
    }
    drop(logger);
    let summary = RunSummary {
        run_dir: run_dir.clone(),
        rank: t.rank() as usize,
        device: format!("{:?}", t.device),
        steps: step,
        total_steps: t.total_steps,
        epochs: schedule.epochs,
        resumed_from_step,
        interrupted,
        final_loss,
        knn_before,
        knn_after,
        train_seconds,
        images_per_second: ((step - start_step) * schedule.batch_size as u64) as f64 / train_seconds.max(1e-9),
        checkpoint,
    };
    if t.is_main() {
        let path = run_dir.join("summary.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(summary)
}

thread_local! {
    static IN_GUARDED_STEP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs a training step, catching the panics tch raises for libtorch errors (out of memory, a
/// lost peer) without the default hook printing them: `explain_panic` reports them instead.
fn guarded<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    static QUIET_HOOK: std::sync::Once = std::sync::Once::new();
    QUIET_HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_GUARDED_STEP.with(|g| g.get()) {
                default(info);
            }
        }));
    });
    IN_GUARDED_STEP.with(|g| g.set(true));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    IN_GUARDED_STEP.with(|g| g.set(false));
    outcome
}

/// Turns a libtorch error raised inside a step (tch panics on them) into a message.
fn explain_panic(panic: Box<dyn std::any::Any + Send>, batch: usize, accumulate: usize) -> anyhow::Error {
    let message = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown error".into());
    let peer_gone = [
        "Connection reset by peer",
        "Connection closed by peer",
        "Broken pipe",
        "gloo/transport",
    ]
    .iter()
    .any(|m| message.contains(m));
    if peer_gone {
        anyhow::anyhow!(
            "another process of this data-parallel job stopped, so this one cannot go on; start the job again \
             (all processes) and it resumes from the last checkpoint\n({})",
            message.lines().next().unwrap_or_default()
        )
    } else if message.contains("out of memory") {
        anyhow::anyhow!(
            "the device ran out of memory with schedule.batch_size = {batch} (accumulate = {accumulate}): \
             lower the batch size, or raise schedule.accumulate to split each batch into micro-batches, \
             or use run.precision = \"fp16\"\n({})",
            message.lines().next().unwrap_or_default()
        )
    } else {
        anyhow::anyhow!("training step failed: {}", message.lines().next().unwrap_or_default())
    }
}
