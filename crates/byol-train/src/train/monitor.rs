//! Watching the representation while it trains: the kNN monitor on labelled images and the
//! online linear probe.

use std::sync::Arc;

use anyhow::{bail, Context};
use tch::{nn::VarStore, Device, Kind, Tensor};

use byol::{Augment, Byol};
use byol_data::image_folder::{ImageFolderConfig, OnBadImage, Wording};
use byol_data::{BatchLoader, Dataset, Splits};

use crate::distributed::DataParallel;
use crate::knn::{knn_accuracy, KnnAccuracy};
use crate::probe::OnlineProbe;
use crate::Experiment;

/// Embeddings of a whole split (deterministic eval transform) and its labels; unreadable images
/// are left out, not stood in for by a repeated one that would count twice.
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
        let (images, y) = loader.load_readable(&indices, device)?;
        if y.numel() > 0 {
            features.push(super::guard::embed_guarded(byol, &augment.eval_view(&images))?);
            labels.push(y);
        }
    }
    if features.is_empty() {
        bail!(
            "none of the {} images of the evaluation split could be read",
            data.len()
        );
    }
    say_skipped(data, "");
    Ok((Tensor::cat(&features, 0), Tensor::cat(&labels, 0)))
}

/// Names the images an evaluation left out, when it happens (an accuracy over fewer images than
/// the split holds must not pass unsaid, and a dataset read without the loader's prefetch would
/// say it only at exit, or never).
/// `whose` says whose share of the split it is, in a data-parallel run.
fn say_skipped(data: &Arc<dyn Dataset>, whose: &str) {
    if let Some(warning) = data.take_warning() {
        byol::eprint_line!("warning: evaluation{whose}: {warning}");
    }
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
            let (images, y) = loader.load_readable(indices, device)?;
            let rows = y.numel() as i64;
            if rows > 0 {
                let features = super::guard::embed_guarded(byol, &augment.eval_view(&images))?.to_kind(Kind::Float);
                let real = Tensor::ones([rows, 1], (Kind::Float, device));
                let share = Tensor::cat(&[features, y.to_kind(Kind::Float).unsqueeze(1), real], 1);
                block.narrow(0, 0, rows).copy_(&share);
            }
        }
        // Rank-major: the gathered rows are the split's batches in order.
        rounds.push(parallel.all_gather(&block)?);
    }
    let all = Tensor::cat(&rounds, 0);
    let real = all.select(1, dim + 1).gt(0.5).nonzero().squeeze_dim(1);
    let all = all.index_select(0, &real);
    if all.size()[0] == 0 {
        bail!(
            "none of the {} images of the evaluation split could be read",
            data.len()
        );
    }
    // Each process read its own batches, and names the images it left out.
    say_skipped(data, &format!(" (the batches of process {rank} of {world})"));
    Ok((all.narrow(1, 0, dim), all.select(1, dim).to_kind(Kind::Int64)))
}

/// Said once at start when nothing can measure the representation.
pub const NO_LABELS_NOTE: &str = "kNN monitor and online probe off: the training images have no labels; \
     set eval.train and eval.test to labelled image folders";

/// Said once at start when the training images have labels but there is no split to measure on.
pub const NO_TEST_SPLIT_NOTE: &str = "kNN monitor and online probe off: the dataset has no test split to \
     measure on; give it one (dataset.test, dataset.test_urls for shards, dataset.test_size for synthetic \
     images), or set eval.train and eval.test";

/// The note a start of `experiment` on `splits` says where its kNN monitor is off (`on`: it is
/// not) for want of labelled images to measure on; None where it is on, or off for another
/// reason said otherwise (a bank of one class).
pub fn monitor_off_note(experiment: &Experiment, splits: &Splits, on: bool) -> Option<&'static str> {
    let eval_folders = experiment.eval.train.is_some() && experiment.eval.test.is_some();
    match (on || eval_folders, splits.train.is_labelled()) {
        (true, _) => None,
        (false, false) => Some(NO_LABELS_NOTE),
        (false, true) => splits.test.is_none().then_some(NO_TEST_SPLIT_NOTE),
    }
}

/// What a start says where `eval.knn_k` asks for more neighbours than the kNN bank holds.
pub fn knn_k_note(knn_k: usize, bank: usize) -> Option<String> {
    (knn_k > bank).then(|| {
        format!(
            "eval.knn_k = {knn_k} is more than the {bank} images of the kNN bank: every bank image votes (k = {bank})"
        )
    })
}

/// Labelled images for the kNN monitor: the bank and the queries.
pub struct LabelledSplits {
    pub bank: Arc<dyn Dataset>,
    pub queries: Arc<dyn Dataset>,
}

/// The kNN monitor's splits: `[eval] train` and `test` when set (decoded at the training images'
/// size), else the dataset's own labelled splits; None when there are no labelled queries.
pub fn labelled_splits(experiment: &Experiment, splits: &Splits) -> anyhow::Result<Option<LabelledSplits>> {
    let labelled = read_labelled(experiment, splits, |folder, wording| {
        let (labelled, warnings) = folder.load_worded(wording)?;
        for w in warnings {
            byol::eprint_line!("warning: {w}");
        }
        Ok(labelled)
    })?;
    let (labelled, one_class) = of_several_classes(labelled);
    if let Some(warning) = one_class {
        byol::eprint_line!("warning: {warning}");
    }
    Ok(labelled)
}

/// The kNN monitor's images where they are of two classes or more; of one, none, with why: an
/// accuracy over one class is 100% whatever the network learned.
fn of_several_classes(labelled: Option<LabelledSplits>) -> (Option<LabelledSplits>, Option<String>) {
    match labelled {
        Some(l) if l.bank.classes().len() == 1 => {
            let warning = format!(
                "the kNN monitor's labelled images are of one class ({}), and an accuracy over one class is 100% \
                 whatever the network learned: the monitor is off (no kNN figures). Give it two class folders \
                 or more ([eval] train and test, or the dataset's)",
                l.bank.classes()[0]
            );
            (None, Some(warning))
        }
        // Class folders that are empty (or hold only unreadable images) beside one that is not:
        // every query is predicted that class. Said, not turned off: the figure is still the
        // share of queries of that class, which a test may rely on.
        Some(l) => match classes_with_images(l.bank.as_ref()).as_slice() {
            [only] => {
                let warning = format!(
                    "the kNN monitor's bank holds images of one class only ({only}; its other class folders hold no \
                     readable image): every query is predicted {only}, and its kNN accuracy is the share of queries \
                     of that class whatever the network learned. Give the other classes images"
                );
                (Some(l), Some(warning))
            }
            _ => (Some(l), None),
        },
        None => (None, None),
    }
}

/// The classes of `bank` that hold an image: by its labels where it is held in memory, else by
/// its folders' files where it has them (unreadable ones counted), else all its classes.
fn classes_with_images(bank: &dyn Dataset) -> Vec<String> {
    let classes = bank.classes();
    if let Some((_, labels)) = bank.as_tensors() {
        let counts = labels
            .to_device(Device::Cpu)
            .bincount(None::<Tensor>, classes.len() as i64);
        let counts = Vec::<i64>::try_from(counts).unwrap_or_default();
        return classes
            .iter()
            .zip(counts)
            .filter(|(_, n)| *n > 0)
            .map(|(c, _)| c.clone())
            .collect();
    }
    let parts = bank.content().map(|c| c.parts).unwrap_or_default();
    let files_of = |class: &String| {
        parts
            .iter()
            .find(|p| p.name.strip_suffix('/') == Some(class.as_str()))
            .map(|p| p.files)
    };
    let by_class = !parts.is_empty()
        && parts.iter().all(|p| {
            p.name
                .strip_suffix('/')
                .is_some_and(|name| classes.iter().any(|c| c == name))
        });
    match by_class {
        // A class folder without a part holds no file.
        true => classes.iter().filter(|c| files_of(c) > Some(0)).cloned().collect(),
        // Parts that are not class folders (shards): each class is taken to hold images.
        false => classes.to_vec(),
    }
}

/// [`labelled_splits`] with `[eval] train` and `test` listed, not decoded: their count, classes
/// and digest, as [`byol::DatasetSpec::build_listing`] gives, and the warnings about what was
/// listed that [`labelled_splits`] prints.
pub fn labelled_listing(
    experiment: &Experiment,
    splits: &Splits,
) -> anyhow::Result<(Option<LabelledSplits>, Vec<String>)> {
    let mut warnings = Vec::new();
    let labelled = read_labelled(experiment, splits, |folder, wording| {
        let (listed, found) = folder.listing().load_worded(wording)?;
        warnings = found;
        Ok(listed)
    })?;
    let (labelled, one_class) = of_several_classes(labelled);
    warnings.extend(one_class);
    Ok((labelled, warnings))
}

/// The number of classes of the labelled images the kNN monitor of a run of `experiment` would
/// evaluate on, from the splits listed, not decoded; None when there are no labelled queries. Of
/// one class, the monitor is off ([`of_several_classes`]): no kNN figure either.
pub fn knn_classes_listed(experiment: &Experiment) -> anyhow::Result<Option<usize>> {
    let context = byol::BuildContext::new(Device::Cpu, experiment.augment.image_size());
    let listing = experiment
        .dataset
        .build_listing(&context)
        .context("building [dataset]")?;
    let labelled = read_labelled(experiment, &listing.splits, |folder, wording| {
        Ok(folder.listing().load_worded(wording)?.0)
    })?;
    Ok(labelled.map(|l| l.bank.classes().len()))
}

fn read_labelled(
    experiment: &Experiment,
    splits: &Splits,
    load: impl FnOnce(ImageFolderConfig, &Wording) -> Result<Splits, byol::DataError>,
) -> anyhow::Result<Option<LabelledSplits>> {
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
    // Unreadable images are skipped or stop the run as `dataset.on_bad_image` says.
    let stops = experiment.dataset.stops_at_bad_images();
    let folder = ImageFolderConfig {
        train: train.clone(),
        test: Some(test.clone()),
        image_size: splits.train.image_shape()[1] as u32,
        on_bad_image: if stops == Some(true) {
            OnBadImage::Error
        } else {
            OnBadImage::Skip
        },
        ..Default::default()
    };
    let wording = Wording {
        on_bad_image: stops.and(Wording::default().on_bad_image),
        ..Wording::eval_keys()
    };
    let context = || {
        format!(
            "reading the labelled evaluation split (eval.train = {}, eval.test = {})",
            train.display(),
            test.display()
        )
    };
    // An image folder without class folders would be read as unlabelled training images.
    if train.is_dir() && !byol_data::image_folder::has_class_folders(train).unwrap_or(true) {
        bail!(
            "eval.train = {}: no class sub-folders; the evaluation split needs labels, one sub-folder of \
             images per class (<split>/<class>/<image>)",
            train.display()
        );
    }
    let labelled = load(folder, &wording)
        .map_err(|e| anyhow::anyhow!(e.message()))
        .with_context(context)?;
    Ok(Some(LabelledSplits {
        bank: labelled.train,
        queries: labelled.test.with_context(context)?,
    }))
}

/// Where the online probe's variables live in the run's networks (`probe.weight`).
pub const PROBE_PATH: &str = "probe";

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

/// What one evaluation of the representation measured.
#[derive(Debug, Clone, Copy)]
pub struct Evaluation {
    pub knn: KnnAccuracy,
    /// The online probe's top-1 on the kNN queries (held-out images); None without a probe, or
    /// when its classes are not the queries' classes.
    pub probe_top1: Option<f64>,
}

/// The kNN monitor and the online probe of a run.
pub struct Monitor {
    /// The kNN monitor's images; None: the monitor is off.
    labelled: Option<LabelledSplits>,
    knn_k: usize,
    knn_temperature: f64,
    batch_size: usize,
    probe: Option<OnlineProbe>,
    /// The classes the probe predicts.
    probe_classes: Vec<String>,
    /// Labelled batches for the online probe when the training images have none (the
    /// evaluation split's bank, in eval mode); None: the probe learns from the training batches.
    probe_batches: Option<ProbeBatches>,
    parallel: Option<DataParallel>,
}

impl Monitor {
    /// The kNN monitor's bank and queries; none when the monitor is off.
    pub fn datasets(&self) -> Vec<&Arc<dyn Dataset>> {
        self.labelled.iter().flat_map(|l| [&l.bank, &l.queries]).collect()
    }

    /// The monitor of `experiment` on `labelled` ([`labelled_splits`]), its probe's variables
    /// under `probe` in `vs`; `micro_batch`: the training micro-batch, the probe's batch size
    /// when it learns from the evaluation split.
    pub fn new(
        experiment: &Experiment,
        splits: &Splits,
        labelled: Option<LabelledSplits>,
        vs: &VarStore,
        embedding_dim: i64,
        micro_batch: usize,
        parallel: Option<DataParallel>,
    ) -> anyhow::Result<Self> {
        let eval = &experiment.eval;
        let probe_source = if splits.train.is_labelled() {
            Some(&splits.train)
        } else {
            labelled.as_ref().map(|l| &l.bank)
        };
        let probe_classes = probe_source.map_or(Vec::new(), |d| d.classes().to_vec());
        let classes = probe_classes.len() as i64;
        let mut probe = (eval.online_probe && classes > 1)
            .then(|| OnlineProbe::new(&(vs.root() / PROBE_PATH), embedding_dim, classes, eval.probe_lr));
        // Every process takes the same probe batch: its averaged gradient is the batch's own.
        let probe_batches = match (&probe, probe_source) {
            (Some(_), Some(source)) if !splits.train.is_labelled() => Some(ProbeBatches {
                loader: BatchLoader::new(
                    source.clone(),
                    micro_batch.min(source.len()),
                    true,
                    true,
                    experiment.run.seed,
                ),
                epoch: None,
            }),
            _ => None,
        };
        if let (Some(probe), Some(parallel)) = (&mut probe, &parallel) {
            probe.synchronize(parallel.clone());
        }
        if let Some(note) = labelled.as_ref().and_then(|l| knn_k_note(eval.knn_k, l.bank.len())) {
            if parallel.as_ref().is_none_or(|p| p.rank() == 0) {
                byol::eprint_line!("note: {note}");
            }
        }
        Ok(Self {
            labelled,
            knn_k: eval.knn_k,
            knn_temperature: eval.knn_temperature,
            batch_size: eval.feature_batch(micro_batch),
            probe,
            probe_classes,
            probe_batches,
            parallel,
        })
    }

    /// Whether the kNN monitor has labelled images to measure on.
    pub fn has_knn(&self) -> bool {
        self.labelled.is_some()
    }

    /// How many images an evaluation embeds: the bank's and the queries'.
    pub fn images(&self) -> Option<(usize, usize)> {
        self.labelled.as_ref().map(|l| (l.bank.len(), l.queries.len()))
    }

    /// kNN accuracy of the online backbone's embeddings, and the online probe's accuracy on the
    /// same queries; None when the monitor is off. In a data-parallel run every process embeds a
    /// share and all get the whole.
    pub fn evaluate(&self, byol: &Byol, augment: &dyn Augment, device: Device) -> anyhow::Result<Option<Evaluation>> {
        let Some(labelled) = &self.labelled else {
            return Ok(None);
        };
        let embed = |data: &Arc<dyn Dataset>| match &self.parallel {
            Some(parallel) => embed_split_sharded(byol, augment, data, self.batch_size, device, parallel),
            None => embed_split(byol, augment, data, self.batch_size, device),
        };
        let (bank, bank_labels) = embed(&labelled.bank)?;
        let (queries, labels) = embed(&labelled.queries)?;
        let classes = labelled.bank.classes().len() as i64;
        let knn = knn_accuracy(
            &queries,
            &labels,
            &bank,
            &bank_labels,
            classes,
            self.knn_k as i64,
            self.knn_temperature,
        );
        let probe_top1 = match &self.probe {
            Some(probe) if self.probe_classes == labelled.queries.classes() => {
                Some(probe.accuracy_on(&queries, &labels))
            }
            _ => None,
        };
        Ok(Some(Evaluation { knn, probe_top1 }))
    }

    /// The classes the online probe predicts; None without a probe.
    pub fn probe_classes(&self) -> Option<&[String]> {
        self.probe.as_ref().map(|_| self.probe_classes.as_slice())
    }

    /// The probe learns from a training micro-batch's embeddings, when the training images
    /// carry labels.
    pub fn probe_on_training_batch(&mut self, embeddings: &Tensor, labels: &Tensor) {
        if let (Some(probe), None) = (&mut self.probe, &self.probe_batches) {
            probe.train_step(embeddings, labels);
        }
    }

    /// The probe learns from batch `step` of the evaluation split, when the training images have
    /// no labels.
    pub fn probe_on_evaluation_batch(
        &mut self,
        step: u64,
        byol: &Byol,
        augment: &dyn Augment,
        device: Device,
    ) -> Result<(), byol_data::DataError> {
        if let (Some(probe), Some(batches)) = (&mut self.probe, &mut self.probe_batches) {
            let (images, labels) = batches.batch_at(step, device)?;
            probe.train_step(&byol.embed(&augment.eval_view(&images)), &labels);
        }
        Ok(())
    }

    /// The probe's training accuracy since the last call.
    pub fn take_probe_accuracy(&mut self) -> Option<f64> {
        self.probe.as_mut().and_then(OnlineProbe::take_accuracy)
    }
}
