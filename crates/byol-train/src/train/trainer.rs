//! Everything a run holds while it trains, assembled from the experiment and the run folder.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use tch::{Device, Tensor};

use byol::{Augment, BuildContext};
use byol_data::{BatchLoader, Splits};

use crate::checkpoint::{self, ChangesAllowed, Checkpointer, CurveCost, Manifest, TrainingRecord};
use crate::distributed::{DataParallel, OverlappedGradients};
use crate::optimizer::Optimizer;
use crate::run_dir;
use crate::tensorboard::ScalarLogger;
use crate::validation::upscaled_images;
use crate::Experiment;

use super::data::training_loader;
use super::device::{parse_device_for, prepare_for_steps};
use super::graph::{graphed_step, GraphedStep};
use super::loss_watch::LossWatch;
use super::model::Model;
use super::monitor::{labelled_splits, Evaluation, LabelledSplits, Monitor};
use super::state::{self, DatasetFingerprint, KeptSources, RunStart, TrainingState};
use super::step::{Plan, StepNumerics};
use super::stop_poll::StopPoll;

pub struct Trainer<'a> {
    pub experiment: &'a Experiment,
    pub device: Device,
    pub splits: Splits,
    pub augment: Box<dyn Augment>,
    pub model: Model,
    pub optimizer: Box<dyn Optimizer>,
    pub numerics: StepNumerics,
    /// The step recorded as a CUDA graph (`run.cuda_graphs`).
    pub graph: Option<GraphedStep>,
    pub loader: BatchLoader,
    pub plan: Plan,
    pub monitor: Monitor,
    /// The step the run resumed from; None: it started at step 0.
    pub resumed_from: Option<u64>,
    /// Whether a resumed run reads its data where its last start did (see [`RunStart`]).
    pub data_in_place: bool,
    /// The changes allowed on this resume ([`RunStart::allowed_changes`]).
    pub allowed_changes: Vec<String>,
    /// The record of the steps before `resumed_from` (its checkpoint's).
    pub carried: TrainingRecord,
    /// When this process started training ([`Trainer::start_clock`]).
    clock: Option<std::time::Instant>,
    /// The kNN curve's evaluations during training in this process, and their seconds
    /// ([`Trainer::count_curve_evaluation`]).
    curve_here: CurveCost,
    checkpointer: Checkpointer,
    /// The run folder's lock, held by the process that writes into it (see [`Trainer::save`]).
    pub owner: Option<run_dir::FolderLock>,
    config_toml: String,
    /// The data the run reads, recorded with `config_toml` by [`Trainer::record_run`].
    pub fingerprint: DatasetFingerprint,
    /// The model's source files kept in the run folder, for every checkpoint to carry.
    sources: KeptSources,
    /// Set when torchrun started this process as one of several.
    pub parallel: Option<DataParallel>,
    /// The data-parallel gradient all-reduce that runs during backward
    /// (`distributed.overlap_gradients`); None: one all-reduce after it, or a single process.
    pub overlapped: Option<OverlappedGradients>,
    /// The model's buffers: in a data-parallel run, rank 0's are shared after every step.
    pub buffers: Vec<tch::Tensor>,
    pub loss_watch: LossWatch,
    /// When a data-parallel run reads its processes' stop requests.
    pub stop_poll: StopPoll,
}

/// Refuses to resume a run past its end: a checkpoint of more steps than the experiment has now
/// (`schedule.epochs` lowered with `--allow-change`) would be saved again as the last step of a
/// shorter run, and its records would contradict each other.
fn check_not_past_the_end(
    run_dir: &Path,
    (experiment, data): (&Experiment, &DatasetFingerprint),
    plan: &Plan,
    manifest: Option<&Manifest>,
) -> anyhow::Result<()> {
    let Some(manifest) = manifest else {
        return Ok(());
    };
    match state::shortened_below_trained(run_dir, manifest, (experiment, data), length(experiment, plan)) {
        Some(refusal) => bail!("{refusal}"),
        None => Ok(()),
    }
}

/// `(total steps, epochs, steps per epoch)` of `experiment` planned as `plan`.
fn length(experiment: &Experiment, plan: &Plan) -> (u64, u64, u64) {
    (plan.total_steps, experiment.schedule.epochs, plan.steps_per_epoch)
}

/// Says when the run goes on with another length than its checkpoint was saved in (more epochs,
/// or other data allowed with `--allow-change`): the learning-rate and EMA schedules stretch to
/// the new length, and the checkpoint's step falls in another epoch.
fn say_schedule_changed(run_dir: &Path, manifest: &checkpoint::Manifest, plan: &Plan) {
    if manifest.total_steps == plan.total_steps || manifest.total_steps == 0 || manifest.step >= plan.total_steps {
        return;
    }
    let step = manifest.step;
    byol::eprint_line!(
        "note: {} goes on over {} steps in all ({} per epoch), where its checkpoint was saved in a run of {}: \
         the learning-rate and EMA schedules follow the new length from step {step}, which is now in epoch {}",
        run_dir.display(),
        plan.total_steps,
        plan.steps_per_epoch,
        manifest.total_steps,
        plan.epoch_of(step) + 1
    );
}

/// The record a run carries on from where it starts: its checkpoint's (an empty one at step 0),
/// with the changes this start goes on with (`in_effect`).
fn carried_record(start: &RunStart, in_effect: Vec<String>) -> TrainingRecord {
    let Some((_, manifest)) = &start.checkpoint else {
        return TrainingRecord::default().resumed_at(0);
    };
    let mut record = manifest.record.clone().resumed_at(manifest.step);
    if !in_effect.is_empty() {
        record.changes_allowed.push(ChangesAllowed {
            step: manifest.step,
            changes: in_effect,
        });
    }
    record
}

impl<'a> Trainer<'a> {
    /// Joins the data-parallel job (when torchrun started this process), reads the data, decides
    /// from the run folder where the run starts, and builds the model there: from the
    /// experiment's initialization at step 0, from the newest checkpoint otherwise.
    pub fn new(experiment: &'a Experiment, run_dir: &Path, allow_change: &[String]) -> anyhow::Result<Self> {
        let (device, parallel) = join_job(experiment)?;
        if let Some(parallel) = &parallel {
            check_same_experiment(parallel, device, experiment)?;
        }
        let (rank, world) = parallel.as_ref().map_or((0, 1), |p| (p.rank(), p.world_size()));
        let main = rank == 0;
        let mut numerics = StepNumerics::resolve(experiment.run.precision, experiment.run.memory_format, device)?;
        let graph = graphed_step(experiment, device, parallel.is_some())?;
        tch::manual_seed(experiment.run.seed as i64);
        let context = BuildContext::new(device, experiment.augment.image_size());
        let context = match &parallel {
            Some(p) => p.build_context(context),
            None => context,
        };
        let splits = experiment.dataset.build(&context).context("building [dataset]")?;
        let augment = experiment.augment.build(&context).context("building [augment]")?;
        let labelled = labelled_splits(experiment, &splits)?;
        if main {
            let decoded = splits.train.image_shape()[1] as i64;
            let upscaled = upscaled_images(decoded, experiment.augment.as_ref(), labelled.is_some());
            let mut warnings = experiment.warnings();
            // Said by `warnings` already where the dataset names its decoded size.
            warnings.extend(upscaled.filter(|w| !warnings.contains(w)));
            for warning in warnings {
                byol::eprint_line!("warning: {warning}");
            }
        }
        let loader = training_loader(experiment, &splits, device, rank, world)?;
        let plan = Plan::new(experiment, loader.batches_per_epoch());
        if main {
            for warning in plan.warnings(experiment) {
                byol::eprint_line!("warning: {warning}");
            }
        }

        let fingerprint = DatasetFingerprint::of_run(&splits, labelled.as_ref());
        if main {
            for warning in monitor_warnings(experiment, &splits, labelled.as_ref(), &fingerprint) {
                byol::eprint_line!("warning: {warning}");
            }
        }
        if let Some(parallel) = &parallel {
            check_same_data(parallel, device, &fingerprint)?;
        }
        let config_toml = experiment.to_toml()?;
        let checkpointer = Checkpointer::new(run_dir.join(run_dir::CHECKPOINTS_DIR), experiment.checkpoint.keep_last);
        let cannot_continue = |dir: &Path, manifest: &Manifest| {
            state::cannot_continue(
                (experiment, &fingerprint),
                run_dir,
                (dir, manifest),
                None,
                Some(length(experiment, &plan)),
            )
        };
        let find = || {
            RunStart::find(
                run_dir,
                &checkpointer,
                main,
                &config_toml,
                &fingerprint,
                allow_change,
                &cannot_continue,
            )
        };
        let start = match &parallel {
            Some(p) => agreed_start(p, device, run_dir, find)?,
            None => find()?,
        };
        let manifest = start.checkpoint.as_ref().map(|(_, m)| m);
        let fingerprint = match manifest.and_then(|m| m.dataset.as_ref()) {
            Some(recorded) => fingerprint.in_the_form_of(recorded),
            None => fingerprint,
        };
        check_not_past_the_end(run_dir, (experiment, &fingerprint), &plan, manifest)?;
        if let Some((_, manifest)) = start.checkpoint.as_ref().filter(|_| main) {
            say_schedule_changed(run_dir, manifest, &plan);
        }
        let trained_by = start.checkpoint.as_ref().and_then(|(_, m)| m.record.processes);
        let trains_on = start.step().is_some_and(|step| step < plan.total_steps);
        // A finished run says that the changes train nothing, as it reports itself.
        let finished = start
            .step()
            .is_some_and(|step| super::finished_summary(run_dir, step, plan.total_steps).is_some());
        let goes_on = start.step().is_none_or(|step| step < plan.total_steps);
        let (in_effect, unused) = start.changes_in_effect(goes_on, finished);
        if main && !in_effect.is_empty() {
            byol::eprint_line!(
                "note: continuing {} with changes (--allow-change): {}",
                run_dir.display(),
                in_effect.join(", ")
            );
        }
        if main && !unused.is_empty() && !finished {
            byol::eprint_line!(
                "note: {} is at its last step and only evaluates it: the changes allowed ({}) train nothing and \
                 are not recorded",
                run_dir.display(),
                unused.join(", ")
            );
        }
        if let Some((_, manifest)) = start.checkpoint.as_ref().filter(|_| main && trains_on) {
            let rounding = state::rounding_changes(&manifest.config, &config_toml);
            if !rounding.is_empty() {
                byol::eprint_line!(
                    "note: continuing {} with {}: the steps from here sum and round in another order, so the \
                     run will not match bit for bit one trained throughout with either value",
                    run_dir.display(),
                    rounding.join(", ")
                );
            }
        }
        if let Some(before) = trained_by.filter(|&before| main && trains_on && before != world) {
            byol::eprint_line!(
                "note: the last checkpoint of {} was saved by {before} process(es) and the run goes on with \
                 {world}: the global batch and schedule stay, but each process's share of a batch and its \
                 augmentation draws change, so the run will not match one trained by either alone",
                run_dir.display()
            );
        }

        let (model, mut optimizer) = build_model(experiment, &context, &start, numerics.channels_last)?;
        if let Some((_, manifest)) = start.checkpoint.as_ref().filter(|_| main) {
            for note in state::changed_sources(experiment, manifest) {
                byol::eprint_line!("note: {note}");
            }
        }
        if main {
            for warning in model.byol.backbone_warnings() {
                byol::eprint_line!("warning: {warning}");
            }
            for note in model.byol.pretrained_notes() {
                byol::eprint_line!("note: {note}");
            }
        }
        let monitor = Monitor::new(
            experiment,
            &splits,
            labelled,
            &model.vs,
            model.byol.embedding_dim(),
            loader.batch_size,
            parallel.clone(),
        )?;
        if let Some(parallel) = &parallel {
            parallel.broadcast_variables(&model.vs)?;
        }
        if let Some((dir, manifest)) = &start.checkpoint {
            let replaced = start.optimizer_replaced.as_deref();
            let probe_untrained = state::load_checkpoint(
                (dir, manifest),
                &model,
                optimizer.as_mut(),
                &mut numerics,
                (replaced, monitor.probe_classes()),
            )?;
            if probe_untrained && main {
                byol::eprint_line!(
                    "note: the online probe starts untrained at step {}: {} holds none over these classes \
                     (the probe was off, or its classes changed); its accuracy measures what it learns from here",
                    manifest.step,
                    dir.display()
                );
            }
            if let Some(change) = replaced.filter(|_| main) {
                byol::eprint_line!(
                    "note: another optimizer ({change}): it goes on from the weights of step {} with \
                     fresh state of its own (the old optimizer's momentum or moments are not carried over)",
                    manifest.step
                );
            }
        }
        // Over the final parameters: the Reducer hooks these very variables.
        let overlapped = match &parallel {
            Some(p) if experiment.distributed.overlap_gradients => {
                Some(p.overlapped_gradients(&model.parameters, experiment.distributed.bucket_mb))
            }
            _ => None,
        };
        let buffers = model.buffers();
        let sources = state::keep_sources(run_dir, experiment, &start, main)?;
        Ok(Self {
            experiment,
            device,
            splits,
            augment,
            model,
            optimizer,
            numerics,
            graph,
            loader,
            plan,
            monitor,
            resumed_from: start.step(),
            data_in_place: start.data_in_place,
            allowed_changes: start.allowed_changes.clone(),
            carried: carried_record(&start, in_effect),
            clock: None,
            curve_here: CurveCost::default(),
            checkpointer,
            owner: None,
            config_toml,
            fingerprint,
            sources,
            parallel,
            overlapped,
            buffers,
            loss_watch: LossWatch::new(device),
            stop_poll: StopPoll::new(start.step().unwrap_or(0)),
        })
    }

    /// Records the run's experiment and data in `run_dir` (by the main process), once it is
    /// known to train there: a run folder that has trained all its steps keeps the record of
    /// the run that did.
    pub fn record_run(&self, run_dir: &Path) -> anyhow::Result<()> {
        if !self.is_main() {
            return Ok(());
        }
        state::record_run(run_dir, &self.config_toml, &self.fingerprint)
    }

    /// Rank 0 of a data-parallel run, or the only process: the one that logs and saves.
    pub fn is_main(&self) -> bool {
        self.parallel.as_ref().is_none_or(|p| p.rank() == 0)
    }

    pub fn rank(&self) -> u64 {
        self.parallel.as_ref().map_or(0, |p| p.rank() as u64)
    }

    /// The processes training the run: the data-parallel job's size, or 1.
    pub fn processes(&self) -> usize {
        self.parallel.as_ref().map_or(1, |p| p.world_size())
    }

    /// Where the run's kept checkpoints are, for error messages.
    pub fn kept(&self) -> String {
        self.checkpointer.kept()
    }

    /// Fails when the loss was NaN or Inf at some step so far; reads the device, so the loop
    /// calls it only where it waits for the device anyway.
    pub fn check_loss(&self) -> anyhow::Result<()> {
        let Some(step) = self.loss_watch.first_bad_step() else {
            return Ok(());
        };
        // A module built elsewhere may compute NaN for inputs the check at its load did not try.
        let module = match state::source_files(self.experiment).first() {
            Some((key, path)) => format!(
                ", or check the module {} ({key}) with batches of this size",
                path.display()
            ),
            None => String::new(),
        };
        bail!(
            "the loss became NaN or Inf at step {step}; {} (lower optimizer.lr, or check the data{module})",
            self.kept()
        )
    }

    /// Starts counting this process's training time.
    pub fn start_clock(&mut self) {
        self.clock = Some(std::time::Instant::now());
    }

    /// Seconds of training: the steps before the resume's, and this process's since
    /// [`Trainer::start_clock`].
    pub fn train_seconds(&self) -> f64 {
        self.carried.train_seconds + self.clock.map_or(0.0, |c| c.elapsed().as_secs_f64())
    }

    /// Counts an evaluation of the kNN curve during training that took `seconds`.
    pub fn count_curve_evaluation(&mut self, step: u64, seconds: f64) {
        self.curve_here.evaluations += 1;
        self.curve_here.seconds += seconds;
        self.curve_here.last_step = Some(step);
    }

    /// The kNN curve's evaluations during training and their seconds: the steps before the
    /// resume's (from the step `train_seconds` counts from), and this process's.
    pub fn curve_cost(&self) -> CurveCost {
        let before = self.carried.curve.unwrap_or_default();
        CurveCost {
            evaluations: before.evaluations + self.curve_here.evaluations,
            seconds: before.seconds + self.curve_here.seconds,
            last_step: self.curve_here.last_step.or(before.last_step),
        }
    }

    /// The images trained up to `step` over the steps that `train_seconds` covers: the steps
    /// before the resume's at the batch size they were trained with, and this process's at its
    /// own. (A checkpoint from before images were counted: its steps at this batch size.)
    pub fn images_trained(&self, step: u64) -> u64 {
        let batch = self.experiment.schedule.batch_size as u64;
        let resumed = self.resumed_from.unwrap_or(0);
        let before = self
            .carried
            .images
            .unwrap_or_else(|| resumed.saturating_sub(self.carried.timed_from_step.unwrap_or(0)) * batch);
        before + step.saturating_sub(resumed) * batch
    }

    /// Images trained per second up to `step`, over the steps that `train_seconds` covers.
    pub fn images_per_second(&self, step: u64, train_seconds: f64) -> f64 {
        self.images_trained(step) as f64 / train_seconds.max(1e-9)
    }

    /// Runs `write`, a write by path into the run folder, while the folder is the one this
    /// process locked: one moved away while the run trains would otherwise get a new, unlocked
    /// folder at its old path (or another's records), where a second byol-run could train too.
    /// Asked again after a failed write: a move during the write fails it.
    pub fn in_place<T>(&self, write: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
        let check = || match &self.owner {
            Some(owner) => owner.check_still_at(self.checkpointer.dir().parent().unwrap_or(Path::new("."))),
            None => Ok(()),
        };
        check()?;
        write().map_err(|e| check().err().unwrap_or(e))
    }

    /// Rank 0 writes the checkpoint of `step` while the other processes wait; returns its folder.
    /// `last_loss` is the loss at the last log point, kept for a run resumed there to report.
    pub fn save(&self, step: u64, last_loss: Option<f64>) -> anyhow::Result<PathBuf> {
        let saved = if self.is_main() {
            let state = TrainingState {
                model: &self.model,
                optimizer: self.optimizer.as_ref(),
                numerics: &self.numerics,
            };
            let record = TrainingRecord {
                last_loss,
                train_seconds: self.train_seconds(),
                timed_from_step: self.carried.timed_from_step,
                processes: Some(self.processes()),
                curve: Some(self.curve_cost()),
                images: Some(self.images_trained(step)),
                changes_allowed: self.carried.changes_allowed.clone(),
            };
            self.in_place(|| {
                state::save_checkpoint(
                    &self.checkpointer,
                    state,
                    (step, record),
                    &self.plan,
                    (&self.config_toml, &self.fingerprint),
                    &self.sources,
                )
            })
        } else {
            Ok(self.checkpointer.dir().join("last"))
        };
        if let Some(parallel) = &self.parallel {
            // A peer that died while this process waits here is the same event as one that
            // dies during a step: say it the same way.
            parallel
                .barrier()
                .map_err(|e| super::guard::peer_gone(&format!("{e:#}")))?;
        }
        saved
    }

    /// Whether the kNN curve has a point after `step`: the end of an epoch the curve evaluates
    /// after, before the end (the end is always evaluated), when the kNN monitor is on.
    pub fn evaluates_after(&self, step: u64) -> bool {
        let eval = &self.experiment.eval;
        self.monitor.has_knn()
            && step.is_multiple_of(self.plan.steps_per_epoch)
            && eval.evaluates_after_epoch(self.plan.epoch_of(step), self.experiment.schedule.epochs)
            && step < self.plan.total_steps
    }

    /// The kNN (and online probe) accuracy of the representation now; None when the monitor is off.
    pub fn evaluate(&self) -> anyhow::Result<Option<Evaluation>> {
        self.monitor
            .evaluate(&self.model.byol, self.augment.as_ref(), self.device)
    }

    /// What the augmentation makes of the first training images, as the TensorBoard image `views`.
    pub fn log_view_grid(&self, logger: &mut ScalarLogger) -> anyhow::Result<()> {
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
}

/// This process's device, and its place in the data-parallel job when torchrun started it as one
/// of several; sets the CPU threads and readies the device for training steps.
fn join_job(experiment: &Experiment) -> anyhow::Result<(Device, Option<DataParallel>)> {
    let rendezvous = DataParallel::rendezvous(&experiment.distributed)?;
    let (local_rank, on_node) = rendezvous
        .as_ref()
        .map_or((0, 1), |r| (r.local_rank, r.local_world_size));
    let device = parse_device_for(&experiment.run.device, local_rank, on_node)?;
    prepare_for_steps(device, experiment.run.tf32)?;
    let parallel = match &rendezvous {
        Some(r) => Some(DataParallel::join(r, &experiment.distributed, device)?),
        None => None,
    };
    super::set_cpu_threads(experiment.run.threads);
    Ok((device, parallel))
}

/// Keys that may differ between the processes of a data-parallel job: where each writes and
/// which device of its node it uses, its CPU threads and decoders, how long it waits.
const PER_PROCESS_KEYS: &[&str] = &[
    "run.name",
    "run.output_dir",
    "run.device",
    "run.threads",
    "dataset.workers",
    "distributed.timeout_s",
];

/// Paths that may differ between the processes when every process sets them (node-local copies):
/// the data's (compared by content, [`check_same_data`]) and the model's files (the parameters
/// are process 0's, broadcast).
const NODE_LOCAL_PATHS: &[&str] = &[
    "dataset.urls",
    "dataset.test_urls",
    "backbone.path",
    "backbone.pretrained",
];

/// Every process's `text`, in rank order.
fn gather_texts(parallel: &DataParallel, device: Device, text: &str) -> anyhow::Result<Vec<String>> {
    let gather = |values: Vec<i64>| -> anyhow::Result<Vec<i64>> {
        let row = Tensor::from_slice(&values).view([1, -1]).to_device(device);
        Ok(Vec::try_from(
            parallel.all_gather(&row)?.reshape([-1]).to_device(Device::Cpu),
        )?)
    };
    let lengths = gather(vec![text.len() as i64])?;
    let longest = (*lengths.iter().max().unwrap_or(&0) as usize).max(1);
    let mut bytes: Vec<i64> = text.bytes().map(i64::from).collect();
    bytes.resize(longest, 0);
    Ok(gather(bytes)?
        .chunks(longest)
        .zip(&lengths)
        .map(|(chunk, &len)| {
            let bytes: Vec<u8> = chunk[..len as usize].iter().map(|&b| b as u8).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        })
        .collect())
}

/// Fails every process together when `differences` (process 0's list) is not empty.
fn refuse_differences(parallel: &DataParallel, what: &str, differences: &[String]) -> anyhow::Result<()> {
    if differences.is_empty() {
        return Ok(());
    }
    if parallel.rank() == 0 {
        bail!(
            "the processes of this data-parallel job were started with different {what} (process 0's -> the \
             other's):\n{}\nThey would train different models under one run, or wait for each other in \
             different steps. Start every process with the same file, --set options and data",
            differences.join("\n")
        );
    }
    bail!(
        "process {} was started with other {what} than process 0 (process 0 lists the differences)",
        parallel.rank()
    )
}

/// Refuses a data-parallel job whose processes were started with different experiments (another
/// `--set` on one node): they would train diverging copies of the model, or wait for each other in
/// different collectives until the timeout. Process 0 lists the differences.
fn check_same_experiment(parallel: &DataParallel, device: Device, experiment: &Experiment) -> anyhow::Result<()> {
    // The files the network is built from may be node-local copies, under other paths: their
    // contents must be the same (another module on one node would train another network).
    let mut text = experiment.to_toml()?;
    let sources = super::state::source_files(experiment);
    if !sources.is_empty() {
        text.push_str("\n[contents]\n");
        for (key, path) in sources {
            let digest = checkpoint::sha256_file(&path).unwrap_or_else(|e| format!("unreadable: {e:#}"));
            text.push_str(&format!("{:?} = {:?}\n", format!("{key} (SHA-256)"), digest));
        }
    }
    let texts = gather_texts(parallel, device, &text).context("comparing the processes' experiments")?;
    let paths: Vec<&str> = super::state::DATA_LOCATION_KEYS
        .iter()
        .chain(NODE_LOCAL_PATHS)
        .copied()
        .collect();
    let mut differences = Vec::new();
    for (rank, text) in texts.iter().enumerate().skip(1) {
        let changes = run_dir::changes(&texts[0], text).context("comparing the processes' experiments")?;
        differences.extend(
            changes
                .into_iter()
                .filter(|c| !PER_PROCESS_KEYS.contains(&c.key.as_str()))
                // A path set in one process and not in another is another setting, not another place.
                .filter(|c| !(paths.contains(&c.key.as_str()) && c.saved.is_some() && c.now.is_some()))
                .map(|c| format!("  process {rank}: {c}")),
        );
    }
    refuse_differences(parallel, "experiments", &differences)
}

/// Refuses a data-parallel job whose processes read different data (node-local copies that
/// differ): their batches per epoch, or the kNN monitor's shards, would not line up.
fn check_same_data(parallel: &DataParallel, device: Device, data: &DatasetFingerprint) -> anyhow::Result<()> {
    let texts =
        gather_texts(parallel, device, &serde_json::to_string(data)?).context("comparing the processes' data")?;
    let zero: Option<DatasetFingerprint> = serde_json::from_str(&texts[0]).ok();
    let mut differences = Vec::new();
    for (rank, text) in texts.iter().enumerate().skip(1).filter(|(_, text)| **text != texts[0]) {
        let theirs: Option<DatasetFingerprint> = serde_json::from_str(text).ok();
        let lines = match (&zero, &theirs) {
            (Some(zero), Some(theirs)) => zero.differences(theirs),
            _ => vec!["(unreadable)".to_string()],
        };
        differences.extend(lines.iter().map(|line| format!("  process {rank}: {}", line.trim())));
    }
    refuse_differences(parallel, "data", &differences)
}

/// What makes the kNN monitor's figure mean something other than it seems: queries it has seen
/// ([`crate::shared_images::test_images_seen`]), and a test split of the dataset that
/// `[eval] train` and `test` replace.
fn monitor_warnings(
    experiment: &Experiment,
    splits: &Splits,
    labelled: Option<&LabelledSplits>,
    fingerprint: &DatasetFingerprint,
) -> Vec<String> {
    let mut warnings = crate::shared_images::test_images_seen(&splits.train, labelled, fingerprint);
    if experiment.eval.train.is_some() && experiment.eval.test.is_some() && splits.test.is_some() {
        warnings.push(
            "the dataset's test split is not used: the kNN monitor evaluates on eval.train and eval.test, \
             which replace it"
                .to_string(),
        );
    }
    warnings
}

/// Where a data-parallel run starts, the same on every process. Rank 0 looks first (it repairs the
/// run folder: an interrupted write, a damaged checkpoint), then the others look; then all compare
/// what they found. A process that resumed another checkpoint (a run folder not shared by all
/// nodes) would average its gradients with another run's, and one that failed alone would leave
/// the others waiting at the next collective.
///
/// They also compare the token in the folder's lock file: a node that reads another one (or none)
/// sees a folder of its own at that path, which is warned about now, not found at the first resume.
fn agreed_start(
    parallel: &DataParallel,
    device: Device,
    run_dir: &Path,
    find: impl Fn() -> anyhow::Result<RunStart>,
) -> anyhow::Result<RunStart> {
    let main = parallel.rank() == 0;
    let first = if main { Some(find()) } else { None };
    parallel
        .barrier()
        .context("waiting for rank 0 to find the run's checkpoint")?;
    let found = first.unwrap_or_else(find);
    // Each process's start as (step + 1, 0 for none, -1 for an error) and the start of its model
    // file's SHA-256, then the run folder's owner token as it reads it (0: none).
    let [step, sha] = match &found {
        Ok(start) => match &start.checkpoint {
            Some((_, manifest)) => {
                let sha = manifest.files.get(checkpoint::MODEL_FILE).map_or("", String::as_str);
                [
                    manifest.step as i64 + 1,
                    i64::from_str_radix(&sha[..sha.len().min(12)], 16).unwrap_or(0),
                ]
            }
            None => [0, 0],
        },
        Err(_) => [-1, 0],
    };
    let token = run_dir::owner_token(run_dir).map_or(0, |t| t as i64);
    let all = parallel
        .all_gather(&Tensor::from_slice(&[step, sha, token]).view([1, 3]).to_device(device))
        .context("comparing where each process starts")?;
    let all: Vec<i64> = Vec::try_from(all.reshape([-1]).to_device(Device::Cpu))?;
    let starts: Vec<[i64; 2]> = all.chunks(3).map(|c| [c[0], c[1]]).collect();
    let tokens: Vec<i64> = all.chunks(3).map(|c| c[2]).collect();
    let elsewhere: Vec<String> = (1..tokens.len())
        .filter(|&r| tokens[r] != tokens[0])
        .map(|r| r.to_string())
        .collect();
    if main && !elsewhere.is_empty() {
        byol::eprint_line!(
            "warning: process(es) {} of this data-parallel job see another folder at {} than process 0 \
             (its {} holds another owner, or none): checkpoints are written by process 0 alone, so resuming \
             this run will find them on its node only. Put the run folder on a file system all nodes share",
            elsewhere.join(", "),
            run_dir.display(),
            run_dir::LOCK_FILE
        );
    }
    let start = found?;
    if let Some(rank) = starts.iter().position(|s| s[0] == -1) {
        bail!("process {rank} of this data-parallel job could not start (its error says why)");
    }
    if starts.iter().any(|s| *s != starts[0]) {
        let describe = |s: &[i64; 2]| match s[0] {
            0 => "no checkpoint (step 0)".to_string(),
            // Two copies of one step may differ in content: the hash tells them apart.
            n => format!("step {}, {} sha256 {:012x}...", n - 1, checkpoint::MODEL_FILE, s[1]),
        };
        let listing: Vec<String> = starts
            .iter()
            .enumerate()
            .map(|(rank, s)| format!("  process {rank}: {}", describe(s)))
            .collect();
        bail!(
            "the processes of this data-parallel job found different checkpoints to start from:\n{}\n\
             Every process must see the same run folder: put it on a file system all nodes share",
            listing.join("\n")
        );
    }
    Ok(start)
}

/// The model where the run starts, with its optimizer: a resumed model is built from the files
/// its checkpoint carries, not the experiment's (its weights and optimizer state are loaded
/// afterwards, once the data-parallel peers agree on the initial ones).
fn build_model(
    experiment: &Experiment,
    context: &BuildContext,
    start: &RunStart,
    channels_last: bool,
) -> anyhow::Result<(Model, Box<dyn Optimizer>)> {
    let rebuilt;
    let model_experiment = match &start.checkpoint {
        Some((dir, manifest)) => {
            rebuilt = state::with_checkpoint_sources(experiment, dir, manifest)?;
            &rebuilt
        }
        None => experiment,
    };
    let mut model = Model::build(model_experiment, context, start.weights())?;
    if channels_last {
        model = model.into_channels_last()?;
    }
    let optimizer = experiment
        .optimizer
        .build(model.parameters.clone(), context)
        .context("building [optimizer]")?;
    Ok((model, optimizer))
}
