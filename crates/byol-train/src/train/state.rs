//! A run's state on disk: where a run starts (its folder's newest intact checkpoint, checked to
//! belong to this experiment and this dataset), the files its model is built from, and the
//! checkpoints it writes (weights, optimizer state, fp16 loss scale, those files).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use byol::BuildContext;
use byol_data::{Dataset, Splits};
use tch::Device;

use crate::checkpoint::{self, Checkpointer, Manifest, TrainingRecord};
use crate::optimizer::Optimizer;
use crate::run_dir;
use crate::Experiment;

use super::model::{Model, Weights};
use super::monitor::{labelled_listing, LabelledSplits};
use super::step::{Plan, StepNumerics};

/// Where a run's folder keeps the files its model is built from (a TorchScript module), copied
/// there when the run starts: checkpoints link them, so the run never needs the originals again.
pub const SOURCES_DIR: &str = "sources";

/// `dataset.json`: what the run's data looked like when it started, so that a resume with the
/// data under another path is accepted when it is the same data and refused when it is not.
pub const FINGERPRINT_FILE: &str = "dataset.json";

/// Experiment keys that say only where the data lives, or how a folder is read where that reads
/// it as before (`dataset.labels = "none"` on a folder without class folders, read unlabelled
/// either way): a resume may change them when the data found matches the run's
/// [`DatasetFingerprint`] (its classes included).
pub const DATA_LOCATION_KEYS: &[&str] = &[
    "dataset.labels",
    "dataset.train",
    "dataset.test",
    "dataset.root",
    "dataset.file_list",
    "dataset.test_file_list",
    "dataset.urls",
    "dataset.test_urls",
    "eval.train",
    "eval.test",
];

/// What a check before a run found worth saying (of its data: [`DatasetFingerprint::listed`]):
/// one line each, without the `note: ` or `warning: ` prefix.
#[derive(Debug, Clone, Default)]
pub struct Remarks {
    pub notes: Vec<String>,
    pub warnings: Vec<String>,
}

/// The size, classes, file names and file sizes of each split a run reads: small, and enough to tell a
/// moved dataset from a different one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetFingerprint(pub BTreeMap<String, SplitFingerprint>);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitFingerprint {
    pub images: usize,
    pub classes: Vec<String>,
    /// The digest of the split's [`Dataset::content`] (its files' names, relative to where it lives,
    /// and sizes; a CIFAR file's or generated images' bytes); absent for sources without one, and
    /// in the records of runs started before it existed. Those records may hold `digest`, a digest
    /// of the names alone, which nothing computes any more: such a run resumes on count and
    /// classes, as before digests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_digest: Option<String>,
    /// The split's parts (its top-level folders, shards or batch files), so that a refusal can
    /// name which changed; absent for sources without parts, and in the records of runs started
    /// before parts were kept.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parts: BTreeMap<String, PartFingerprint>,
    /// Whether `images` counts the images that decoded ([`Dataset::counts_decoded`]); absent
    /// (false) in the records of runs started before it was kept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub decoded: bool,
    /// [`Dataset::labels_digest`]: the labels of sources whose file names do not tell them
    /// (shards); absent for the others, and in the records of runs started before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels_digest: Option<String>,
}

/// One part of a [`SplitFingerprint`]: its images (unreadable ones included) and the start of
/// its digest ([`byol::ContentPart`]; 64 bits tell a change, and a thousand parts stay small).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartFingerprint {
    pub images: usize,
    pub digest: String,
}

/// The kNN monitor's splits in a [`DatasetFingerprint`]: its bank and its queries.
const KNN_SPLITS: [&str; 2] = ["knn_bank", "knn_queries"];

/// The most parts a [`SplitFingerprint`] keeps; a split of more keeps none.
const MAX_PARTS: usize = 4096;

/// Digits of a part's digest kept in its [`PartFingerprint`].
const PART_DIGEST_DIGITS: usize = 16;

impl DatasetFingerprint {
    /// What the kNN monitor of a run of `experiment` on this data measures with, as 64 bits of a
    /// digest: its bank's and queries' counts, classes and file digests, and the settings that
    /// change the measure (k, the temperature, the images' decoded size, the evaluation
    /// transform's size and normalization). None without a kNN monitor.
    pub fn knn_data(&self, experiment: &Experiment) -> Option<u64> {
        use sha2::Digest;
        let split = |name: &str| {
            let s = self.0.get(name)?;
            // The count too: a bank decoded into memory leaves out the images it cannot decode,
            // one read as it goes (`cache = "none"`) does not, and the two measure otherwise.
            // (Not the labels' digest: the points of runs started before it was kept would read as
            // measured on other data. Relabelled data is refused at the resume.)
            Some(serde_json::json!([s.images, s.classes, s.files_digest]))
        };
        let normalization = experiment.augment.normalization().map(|n| (n.mean, n.std));
        let measured = serde_json::json!({
            "bank": split("knn_bank")?,
            "queries": split("knn_queries")?,
            "k": experiment.eval.knn_k,
            "temperature": experiment.eval.knn_temperature,
            "decoded": experiment.dataset.image_size(),
            "views": experiment.augment.image_size(),
            "resize": experiment.augment.eval_resize(),
            "normalization": normalization,
        });
        let digest = sha2::Sha256::digest(measured.to_string().as_bytes());
        Some(u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")))
    }
}

impl SplitFingerprint {
    /// `5000 images of classes [a, b] (files 3fa2c41b09de)`: the count, the classes (the first and
    /// last of many) and the digest's start where there is one.
    pub fn describe(&self) -> String {
        let files = self
            .files_digest
            .as_ref()
            .map_or(String::new(), |d| format!(" (files {})", &d[..d.len().min(12)]));
        format!("{}{files}", describe_split(Some(self)))
    }

    /// Whether `now` is this split: the same classes, and the same files (every file's name and
    /// size) where both have a digest, else the same count. Counts of the same files differ by
    /// how they were read: a listing, or a run reading files as it goes (`cache = "none"`),
    /// counts the unreadable ones that a run decoding every image first leaves out; so fewer
    /// images of the same files than the run decoded is a change ([`Self::fewer_decode`]).
    fn matches(&self, now: &Self) -> bool {
        let same_images = match (&self.files_digest, &now.files_digest) {
            (Some(saved), Some(digest)) => saved == digest && self.fewer_decode(now) == 0,
            _ => self.images == now.images,
        };
        let same_labels = match (&self.labels_digest, &now.labels_digest) {
            (Some(saved), Some(labels)) => saved == labels,
            _ => true,
        };
        same_images && same_labels && self.classes == now.classes
    }

    /// How many fewer of the same files decode in `now` than in this record, where both count
    /// the images that decoded: images damaged since, in place and at the same size. Zero where
    /// the files differ, or where either counts every file (a listing, a split read as it goes).
    fn fewer_decode(&self, now: &Self) -> usize {
        match (&self.files_digest, &now.files_digest) {
            (Some(saved), Some(digest)) if saved == digest && self.decoded && now.decoded => {
                self.images.saturating_sub(now.images)
            }
            _ => 0,
        }
    }
}

impl DatasetFingerprint {
    /// This fingerprint without the digests that `recorded` (a run's record from before its
    /// source had one: generated images) lacks, so that the run keeps its record's form: its
    /// kNN curve's points, measured under that form ([`Self::knn_data`]), stay comparable.
    pub fn in_the_form_of(mut self, recorded: &Self) -> Self {
        for (name, split) in &mut self.0 {
            if recorded.0.get(name).is_some_and(|r| r.files_digest.is_none()) {
                split.files_digest = None;
            }
        }
        self
    }

    /// The classes an online probe of a run on this data predicts: the training split's where
    /// it is labelled, else the kNN bank's. None where neither has classes.
    pub fn probe_classes(&self) -> Option<&[String]> {
        let labelled = |name: &str| self.0.get(name).filter(|s| !s.classes.is_empty());
        labelled("train")
            .or_else(|| labelled("knn_bank"))
            .map(|s| s.classes.as_slice())
    }

    /// The fingerprint of named splits.
    fn of<'a>(splits: impl IntoIterator<Item = (&'a str, &'a dyn Dataset)>) -> Self {
        Self(
            splits
                .into_iter()
                .map(|(name, data)| {
                    let content = data.content();
                    // Tens of thousands of shards would make every manifest megabytes long.
                    let kept = content.iter().filter(|c| c.parts.len() <= MAX_PARTS);
                    let parts = kept.flat_map(|c| &c.parts);
                    let parts = parts.map(|part| {
                        let digest = part.digest[..part.digest.len().min(PART_DIGEST_DIGITS)].to_string();
                        let fingerprint = PartFingerprint {
                            images: part.files,
                            digest,
                        };
                        (part.name.clone(), fingerprint)
                    });
                    let split = SplitFingerprint {
                        images: data.len(),
                        classes: data.classes().to_vec(),
                        parts: parts.collect(),
                        files_digest: content.map(|c| c.digest),
                        decoded: data.counts_decoded(),
                        labels_digest: data.labels_digest(),
                    };
                    (name.to_string(), split)
                })
                .collect(),
        )
    }

    /// The fingerprint of what a run reads: its training split, and the kNN monitor's labelled
    /// splits.
    pub fn of_run(splits: &Splits, labelled: Option<&LabelledSplits>) -> Self {
        let mut named = vec![("train", splits.train.as_ref())];
        if let Some(l) = labelled {
            named.extend(KNN_SPLITS.into_iter().zip([l.bank.as_ref(), l.queries.as_ref()]));
        }
        Self::of(named)
    }

    /// The fingerprint of the data a run of `experiment` reads, from the splits as listed, not
    /// decoded, where the source can ([`byol::DatasetSpec::build_listing`]): it matches the run's
    /// own record ([`SplitFingerprint::matches`] goes by the digest where both have one, and a
    /// listing counts the unreadable images a run skips). On the CPU: no dataset's splits depend
    /// on the device.
    pub fn of_experiment(experiment: &Experiment) -> anyhow::Result<Self> {
        let (listing, labelled, _) = Self::list(experiment)?;
        Ok(Self::of_run(&listing.splits, labelled.as_ref()))
    }

    /// The splits of `experiment` as listed, its kNN monitor's among them, and the warnings about
    /// `[eval]`'s folders.
    fn list(experiment: &Experiment) -> anyhow::Result<(byol::Listing, Option<LabelledSplits>, Vec<String>)> {
        let context = BuildContext::new(tch::Device::Cpu, experiment.augment.image_size());
        let listing = experiment
            .dataset
            .build_listing(&context)
            .context("building [dataset]")?;
        let (labelled, eval_warnings) = labelled_listing(experiment, &listing.splits)?;
        Ok((listing, labelled, eval_warnings))
    }

    /// [`DatasetFingerprint::of_experiment`], the notes and warnings about the data listed (of
    /// `[dataset]`, then of `[eval]`'s folders) that a run's start prints, and the steps per
    /// epoch of a run on it as listed (one process; a listing counts the unreadable images that
    /// a start decoding every image leaves out: at least the start's). None where the batch
    /// does not fit (a start refuses it).
    pub fn listed(experiment: &Experiment) -> anyhow::Result<(Self, Remarks, Option<u64>)> {
        let (listing, labelled, eval_warnings) = Self::list(experiment)?;
        let listed = Self::of_run(&listing.splits, labelled.as_ref());
        let seen = crate::shared_images::test_images_seen(&listing.splits.train, labelled.as_ref(), &listed);
        let bank_note = labelled
            .as_ref()
            .and_then(|l| super::monitor::knn_k_note(experiment.eval.knn_k, l.bank.len()));
        let off_note = super::monitor::monitor_off_note(experiment, &listing.splits, labelled.is_some());
        let remarks = Remarks {
            notes: (listing.notes.into_iter())
                .chain(off_note.map(String::from))
                .chain(bank_note)
                .collect(),
            warnings: listing.warnings.into_iter().chain(eval_warnings).chain(seen).collect(),
        };
        let loader = super::data::training_loader(experiment, &listing.splits, tch::Device::Cpu, 0, 1).ok();
        let steps_per_epoch = loader.map(|l| Plan::new(experiment, l.batches_per_epoch()).steps_per_epoch);
        Ok((listed, remarks, steps_per_epoch))
    }

    /// The data a run folder's newest checkpoint trained on (its manifest's record), else the
    /// data it was last started on (its `dataset.json`), if it has a record of either: what a
    /// resume checks, so that a lost `dataset.json` does not pass for data not recorded.
    pub fn trained_on(run_dir: &Path) -> anyhow::Result<Option<Self>> {
        match crate::checkpoint::newest_manifest(run_dir).and_then(|(_, m)| m.dataset) {
            Some(data) => Ok(Some(data)),
            None => Self::recorded(run_dir),
        }
    }

    /// The data a run folder was last started on (its `dataset.json`), if it has a record.
    pub fn recorded(run_dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = run_dir.join(FINGERPRINT_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                    format!("{} is not a dataset fingerprint", path.display())
                })?))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    fn write(&self, run_dir: &Path) -> anyhow::Result<()> {
        let path = run_dir.join(FINGERPRINT_FILE);
        run_dir::replace_file(&path, &serde_json::to_vec_pretty(self)?)
    }

    /// One line per split that differs, `train: 10000 images -> 9000 images`, each followed by
    /// the parts that differ where both records have parts ([`part_differences`]).
    pub fn differences(&self, now: &Self) -> Vec<String> {
        // Classes that did not change are not listed on both sides (a thousand names).
        let describe = |s: Option<&SplitFingerprint>, other: Option<&SplitFingerprint>| match (s, other) {
            (Some(s), Some(o)) if s.classes == o.classes => {
                let files = match (s.images == o.images, &s.files_digest) {
                    (true, Some(d)) => format!(" (files {})", &d[..d.len().min(12)]),
                    _ => String::new(),
                };
                // The same files with other labels (a shard's .cls members rewritten).
                let files = match (&s.labels_digest, &o.labels_digest) {
                    (Some(l), Some(other)) if l != other && s.files_digest == o.files_digest => {
                        format!("{files} (labels {})", &l[..l.len().min(12)])
                    }
                    _ => files,
                };
                let classes = match s.classes.len() {
                    0 => String::new(),
                    n => format!(" of the same {n} classes"),
                };
                format!("{} images{classes}{files}", s.images)
            }
            _ => describe_split(s),
        };
        let names: std::collections::BTreeSet<&String> = self.0.keys().chain(now.0.keys()).collect();
        names
            .into_iter()
            .filter(|name| match (self.0.get(*name), now.0.get(*name)) {
                (Some(saved), Some(now)) => !saved.matches(now),
                // Runs recorded a kNN monitor over one class (its bank's), which is off now: the
                // same data.
                (Some(_), None) if KNN_SPLITS.contains(&name.as_str()) => {
                    self.0.get(KNN_SPLITS[0]).is_none_or(|bank| bank.classes.len() > 1)
                }
                (saved, now) => saved.is_some() || now.is_some(),
            })
            .flat_map(|name| {
                let (saved, now) = (self.0.get(name), now.0.get(name));
                let split = format!("  {name}: {} -> {}", describe(saved, now), describe(now, saved));
                let parts = match (saved, now) {
                    (Some(saved), Some(now)) if saved.fewer_decode(now) > 0 => vec![format!(
                        "    the same files, but {} fewer of them decode (the warning about unreadable \
                         images names them)",
                        saved.fewer_decode(now)
                    )],
                    // Every part as it was, the whole split not: the parts are named otherwise
                    // (a shards' classes.txt), or they come in another order.
                    // The same files, relabelled: said on the split's line.
                    (Some(saved), Some(now))
                        if saved.files_digest == now.files_digest && saved.labels_digest != now.labels_digest =>
                    {
                        vec!["    the same files, with other labels (.cls members rewritten?)".to_string()]
                    }
                    (Some(saved), Some(now)) if !saved.parts.is_empty() && saved.parts == now.parts => {
                        let reordered = saved.files_digest != now.files_digest;
                        vec![match (saved.classes == now.classes, reordered) {
                            (true, _) => "    every part holds what it held, in another order".to_string(),
                            (false, false) => {
                                "    every part holds what it held, its labels named otherwise".to_string()
                            }
                            (false, true) => {
                                "    every part holds what it held, in another order, its labels named otherwise"
                                    .to_string()
                            }
                        }]
                    }
                    (Some(saved), Some(now)) => part_differences(&saved.parts, &now.parts),
                    _ => Vec::new(),
                };
                std::iter::once(split).chain(parts)
            })
            .collect()
    }
}

/// The parts of a split that differ, one line per kind of difference (changed, no longer
/// there, new), naming at most [`PARTS_NAMED`] parts each: `    changed: cat/ (500 -> 499
/// images), dog/ (500 images, not the same or not in the same order)`. Empty when either side has no parts.
fn part_differences(saved: &BTreeMap<String, PartFingerprint>, now: &BTreeMap<String, PartFingerprint>) -> Vec<String> {
    if saved.is_empty() || now.is_empty() || saved == now {
        return Vec::new();
    }
    let changed = saved.iter().filter_map(|(name, before)| {
        let after = now.get(name).filter(|after| after.digest != before.digest)?;
        Some(match before.images == after.images {
            true => format!(
                "{name} ({}, not the same or not in the same order)",
                images(before.images)
            ),
            false => format!("{name} ({} -> {})", before.images, images(after.images)),
        })
    });
    let only_in = |these: &BTreeMap<String, PartFingerprint>, those: &BTreeMap<String, PartFingerprint>| {
        these
            .iter()
            .filter(|(name, _)| !those.contains_key(*name))
            .map(|(name, part)| format!("{name} ({})", images(part.images)))
            .collect::<Vec<_>>()
    };
    [
        ("changed", changed.collect()),
        ("no longer there", only_in(saved, now)),
        ("new", only_in(now, saved)),
    ]
    .into_iter()
    .filter(|(_, parts)| !parts.is_empty())
    .map(|(what, parts): (&str, Vec<String>)| {
        let more = match parts.len().saturating_sub(PARTS_NAMED) {
            0 => String::new(),
            n => format!(", and {n} more"),
        };
        let named: Vec<&str> = parts.iter().take(PARTS_NAMED).map(String::as_str).collect();
        format!("    {what}: {}{more}", named.join(", "))
    })
    .collect()
}

/// `1 image`, `5 images`.
fn images(n: usize) -> String {
    format!("{n} image{}", if n == 1 { "" } else { "s" })
}

/// How many parts a line of [`part_differences`] names.
const PARTS_NAMED: usize = 8;

/// `10000 images of classes [a, b]`.
fn describe_split(split: Option<&SplitFingerprint>) -> String {
    match split {
        None => "(none)".to_string(),
        Some(s) if s.classes.is_empty() => format!("{} unlabelled images", s.images),
        Some(s) if s.classes.len() <= 12 => format!("{} images of classes [{}]", s.images, s.classes.join(", ")),
        Some(s) => format!(
            "{} images of {} classes ({} ... {})",
            s.images,
            s.classes.len(),
            s.classes[0],
            s.classes[s.classes.len() - 1]
        ),
    }
}

/// Where a run starts, decided from its folder before the model is built.
#[derive(Debug)]
pub struct RunStart {
    /// The newest intact checkpoint and its manifest; None: step 0.
    pub checkpoint: Option<(PathBuf, Manifest)>,
    /// Whether the run reads its data where its last start did (no key under `dataset.` or
    /// `eval.` changed, not even where the same data lives).
    pub data_in_place: bool,
    /// The change of `optimizer.type` allowed on this resume (`lars -> adamw`): the new
    /// optimizer starts from the checkpoint's weights with its own fresh state.
    pub optimizer_replaced: Option<String>,
    /// The changes allowed on this resume (`--allow-change`), as said: `optimizer.lr: 0.5 -> 0.7`.
    pub allowed_changes: Vec<String>,
    /// Whether the run continues on other data than it trained on (`--allow-change dataset`).
    pub other_data: bool,
    /// What was found in the checkpoints folder on the way (damaged checkpoints skipped, step
    /// folders that are no checkpoint), said by `main` as it finds them.
    pub warnings: Vec<String>,
}

impl RunStart {
    /// The changes this start allowed that the run goes on with, and those it does not: all of
    /// them for a run that trains on; of one at its last step, which only evaluates it, those of
    /// the evaluation's settings and data; of a finished run, none.
    pub fn changes_in_effect(&self, trains_on: bool, finished: bool) -> (Vec<String>, Vec<String>) {
        // (At step 0 nothing trained before them: they are the run's settings.)
        let mut changes = self.allowed_changes.clone();
        if self.other_data {
            changes.push("dataset: other images".into());
        }
        changes
            .into_iter()
            .partition(|c| trains_on || (!finished && (c.starts_with("eval.") || c.starts_with("dataset"))))
    }

    /// Finds the newest intact checkpoint of the run folder (moving damaged ones aside when
    /// `main`), and checks that the run it holds is this experiment's: the keys that differ must
    /// be safe to change, accepted by `allow`, or say only where the data lives while the data
    /// is the same (`fingerprint`). Only `main` says what it finds and changes anything: the
    /// other processes of a job, and `validate`, only read. A refusal of other keys tells whether
    /// `--allow-change` could continue the run at all: `cannot_continue` says why a checkpoint
    /// cannot go on whatever is allowed ([`cannot_continue`]).
    pub fn find(
        run_dir: &Path,
        checkpointer: &Checkpointer,
        main: bool,
        config_toml: &str,
        fingerprint: &DatasetFingerprint,
        allow: &[String],
        cannot_continue: &dyn Fn(&Path, &Manifest) -> Option<String>,
    ) -> anyhow::Result<Self> {
        let checkpoint::ResumePoint { latest, warnings } = checkpointer.resume_point(main)?;
        for w in warnings.iter().filter(|_| main) {
            byol::eprint_line!("warning: {w}");
        }
        // Refused here, before any step: the run's first evaluation would fail on it (and a start
        // from step 0 replace it, evidence of the earlier attempt).
        if let Err(e) = super::curve::read_curve(run_dir) {
            bail!(
                "{e:#}: the run folder's kNN curve cannot be used. Move it aside, or make it readable where it is \
                 whole (the run then {} with a new curve, or with it)",
                if latest.is_some() { "resumes" } else { "starts" }
            );
        }
        if latest.is_none() {
            check_no_checkpoints_lost(run_dir, checkpointer)?;
            if let Some(note) = progress_without_a_checkpoint(run_dir, checkpointer).filter(|_| main) {
                byol::eprint_line!("note: {note}");
            }
        }
        let saved = match &latest {
            Some((dir, manifest)) => Some((
                format!("the experiment saved with {}", dir.display()),
                manifest.config.clone(),
            )),
            // No checkpoint yet, but logs of a run that stopped before its first one.
            None => run_dir::saved_config(run_dir).map(|c| ("its config.toml".to_string(), c)),
        };
        // A misspelled key allows nothing, a data change under `dataset.` included.
        let experiments = [Some(config_toml), saved.as_ref().map(|(_, c)| c.as_str())];
        let unknown = run_dir::unknown_allowances(allow, &experiments.into_iter().flatten().collect::<Vec<_>>());
        for key in unknown.iter().filter(|_| main) {
            byol::eprint_line!("warning: {}", run_dir::unknown_allowance_warning(key));
        }
        let allow: &[String] = &allow
            .iter()
            .filter(|a| !unknown.contains(a))
            .cloned()
            .collect::<Vec<_>>();
        let mut data_in_place = true;
        let mut optimizer_replaced = None;
        let mut allowed_changes = Vec::new();
        let mut other_data = false;
        if let Some((source, saved)) = saved {
            // The data of the checkpoint the run goes on from; `dataset.json` describes the last
            // start, which may have been on other data and stopped before its first checkpoint.
            let saved_data = match latest.as_ref().and_then(|(dir, m)| Some((dir, m.dataset.clone()?))) {
                Some((dir, data)) => Some((
                    format!("{} records it", dir.join(checkpoint::MANIFEST_FILE).display()),
                    data,
                )),
                None => {
                    DatasetFingerprint::recorded(run_dir)?.map(|data| (format!("{FINGERPRINT_FILE} records it"), data))
                }
            };
            // Keys a data refusal names with it, so that one message lists every way out: those
            // that differ and are not allowed, the data's own (which `--allow-change dataset`
            // allows with it) aside.
            let also_changed: Vec<run_dir::Change> = run_dir::unsafe_changes(&saved, config_toml)
                .unwrap_or_default()
                .into_iter()
                .filter(|c| !run_dir::allowed(&c.key, allow) && !c.key.starts_with("dataset."))
                .collect();
            let latest_cannot_continue = || {
                latest
                    .as_ref()
                    .and_then(|(dir, manifest)| cannot_continue(dir, manifest))
            };
            let data = check_dataset(
                run_dir,
                saved_data,
                fingerprint,
                allow,
                (&also_changed, &latest_cannot_continue),
                main,
            )?;
            other_data = data == DataFound::OtherAllowed;
            let also_safe: &[&str] = if data == DataFound::Same {
                DATA_LOCATION_KEYS
            } else {
                &[]
            };
            let accepted = run_dir::check_identity(run_dir, &source, &saved, config_toml, allow, also_safe).map_err(
                |refusal| match (refusal.downcast::<run_dir::OtherExperiment>(), &latest) {
                    (Ok(mut other), Some((dir, manifest))) => {
                        other.cannot_continue = cannot_continue(dir, manifest);
                        other.into()
                    }
                    (Ok(other), None) => other.into(),
                    (Err(refusal), _) => refusal,
                },
            )?;
            data_in_place = !accepted
                .iter()
                .any(|c| c.key.starts_with("dataset.") || c.key.starts_with("eval."));
            optimizer_replaced = accepted
                .iter()
                .find(|c| c.key == "optimizer.type")
                .map(ToString::to_string);
            let (moved, allowed): (Vec<_>, Vec<_>) = accepted
                .iter()
                .partition(|c| also_safe.iter().any(|k| *k == c.key) && !run_dir::allowed(&c.key, allow));
            // Allowed changes that cannot continue the run (weights of other shapes, a run shorter
            // than it trained) are refused here, before a note says the run continues with them.
            // (The main process alone: the others would each build the networks on the CPU to
            // check their fit, and a job ends at any process's error.)
            if let Some(why) = latest_cannot_continue().filter(|_| main && !allowed.is_empty()) {
                bail!("{why}");
            }
            let list =
                |changes: &[&run_dir::Change]| changes.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            // Said by the start once it knows the run trains or evaluates on with them.
            allowed_changes = allowed.iter().map(ToString::to_string).collect();
            if main && !moved.is_empty() {
                byol::eprint_line!(
                    "note: continuing {} on the same data ({FINGERPRINT_FILE} matches), found or read otherwise: {}",
                    run_dir.display(),
                    list(&moved)
                );
            }
        }
        Ok(Self {
            checkpoint: latest,
            data_in_place,
            optimizer_replaced,
            allowed_changes,
            other_data,
            warnings,
        })
    }

    pub fn step(&self) -> Option<u64> {
        self.checkpoint.as_ref().map(|(_, m)| m.step)
    }

    pub fn weights(&self) -> Weights {
        match self.checkpoint {
            Some(_) => Weights::Checkpoint,
            None => Weights::Initial,
        }
    }
}

/// What the run's recorded data is to the data found now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataFound {
    Same,
    /// No record: a run folder made before fingerprints.
    Unrecorded,
    /// Other data, which `--allow-change dataset` accepts.
    OtherAllowed,
}

/// Whether the run's recorded data (`saved`: where it is recorded, and the record) is the data
/// found now. A difference is an error unless `--allow-change dataset` accepts it: the whole
/// table, as one key under it (`dataset.cache`, or a new `dataset.train` path) says nothing of
/// what the images are now.
fn check_dataset(
    run_dir: &Path,
    saved: Option<(String, DatasetFingerprint)>,
    now: &DatasetFingerprint,
    allow: &[String],
    (also_changed, cannot_continue): (&[run_dir::Change], &dyn Fn() -> Option<String>),
    main: bool,
) -> anyhow::Result<DataFound> {
    let Some((recorded_in, saved)) = saved else {
        return Ok(DataFound::Unrecorded);
    };
    let differences = saved.differences(now);
    if differences.is_empty() {
        return Ok(DataFound::Same);
    }
    if allow.iter().any(|a| a == "dataset") {
        if main {
            byol::eprint_line!(
                "note: continuing {} on different data (--allow-change):\n{}",
                run_dir.display(),
                differences.join("\n")
            );
        }
        return Ok(DataFound::OtherAllowed);
    }
    let refused = format!(
        "{} was trained on other data than the experiment reads now ({recorded_in}):\n{}",
        run_dir.display(),
        differences.join("\n")
    );
    let diff: Vec<String> = also_changed.iter().map(|c| format!("  {c}")).collect();
    // Weights that fit no network of the experiment (keys changed, allowed or not), or a run
    // shorter than it trained: allowing keys, the data's included, does not continue the run.
    if let Some(why) = cannot_continue() {
        let besides = match diff.is_empty() {
            true => String::new(),
            false => format!("The experiment differs from the run's besides:\n{}\n", diff.join("\n")),
        };
        bail!("{refused}\n{besides}allowing the changes (--allow-change) does not continue it: {why}");
    }
    let keys_too = match also_changed {
        [] => String::new(),
        changes => {
            let flags: Vec<String> = changes.iter().map(|c| format!("--allow-change {}", c.key)).collect();
            format!(
                "\nThe experiment differs from the run's besides (these need {} too):\n{}",
                flags.join(" "),
                diff.join("\n")
            )
        }
    };
    bail!(
        "{refused}\nResuming would mix two datasets in one run. Point the data keys at the run's data (data \
         may move: a new dataset.train, dataset.urls or eval.test path is accepted when the data found \
         there is the same), or add --allow-change dataset to continue on this data anyway, or --fresh to \
         start a new run.{keys_too}"
    )
}

/// The changes of [`run_dir::CHANGES_ROUNDING`] keys from the `saved` experiment to `now`, as
/// `key: saved -> now` ([`changes_among`]).
pub fn rounding_changes(saved: &str, now: &str) -> Vec<String> {
    changes_among(run_dir::CHANGES_ROUNDING, saved, now)
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// The changes of `keys` from the `saved` experiment (as an older version may have written it)
/// to `now`; two names of one device (`auto` and `cpu` without a GPU) are none.
pub fn changes_among(keys: &[&str], saved: &str, now: &str) -> Vec<run_dir::Change> {
    let device = |value: &Option<String>| {
        let name = value.as_deref()?.trim_matches('"').to_string();
        super::parse_device(&name).ok()
    };
    run_dir::changes(&run_dir::with_current_defaults(saved), now)
        .unwrap_or_default()
        .into_iter()
        .filter(|c| keys.contains(&c.key.as_str()))
        .filter(|c| !(c.key == "run.device" && device(&c.saved).is_some() && device(&c.saved) == device(&c.now)))
        .collect()
}

/// The files the backbone is built from, as `(experiment key, path)`: `backbone.path` for a
/// TorchScript module.
pub fn source_files(experiment: &Experiment) -> Vec<(String, PathBuf)> {
    experiment
        .backbone
        .source_files()
        .into_iter()
        .map(|(key, path)| (format!("backbone.{key}"), path))
        .collect()
}

/// The experiment with its source-file keys pointing at the copies a checkpoint carries, after
/// checking that they are there (verified with the checkpoint's SHA-256 by
/// [`checkpoint::verify`]).
pub fn with_checkpoint_sources(experiment: &Experiment, dir: &Path, manifest: &Manifest) -> anyhow::Result<Experiment> {
    let overrides: Vec<String> = manifest
        .sources
        .iter()
        .map(|(key, file)| {
            let path = dir.join(file);
            format!("{key}={}", toml::Value::String(path.display().to_string()))
        })
        .collect();
    let mut rebuilt = Experiment::parse(&experiment.to_toml()?, &overrides)
        .with_context(|| format!("pointing the experiment at the files of {}", dir.display()))?;
    rebuilt.run.name = experiment.run.name.clone();
    Ok(rebuilt)
}

/// Notes for a resume from `manifest`'s checkpoint whose experiment names source files (a
/// TorchScript module) that now hold other bytes than the copies the checkpoint carries, or are
/// gone: the run goes on with its copies, which may not be what the user expects after editing
/// the file.
pub fn changed_sources(experiment: &Experiment, manifest: &Manifest) -> Vec<String> {
    source_files(experiment)
        .into_iter()
        .filter_map(|(key, original)| {
            let kept = manifest.sources.get(&key)?;
            let recorded = manifest.files.get(kept)?;
            if !original.exists() {
                return Some(format!(
                    "{key} = {} is no longer there; the run goes on with the copy of it kept with every \
                     checkpoint",
                    original.display()
                ));
            }
            let now = checkpoint::sha256_file(&original).ok()?;
            (&now != recorded).then(|| {
                format!(
                    "{key} = {} now holds another file than the one this run trains (its copy, kept with \
                     every checkpoint); the run goes on with its copy: train the new one in a new run \
                     (--fresh, or another --run-dir)",
                    original.display()
                )
            })
        })
        .collect()
}

/// The model's source files as a run keeps them, for its checkpoints to carry.
#[derive(Debug, Default)]
pub struct KeptSources {
    /// (name in a checkpoint, the copy in `<run>/sources/`).
    files: Vec<(String, PathBuf)>,
    /// The manifest's `sources`: experiment key -> name in a checkpoint.
    names: BTreeMap<String, String>,
}

/// Whether `<run_dir>/sources/` holds only copies [`keep_sources`] makes (named after the key
/// they were given by, `backbone.path-r50.pt`), beside hidden files: a start writes them before
/// the run's first record.
pub fn holds_kept_sources_only(run_dir: &Path) -> bool {
    let kept = |name: &str| {
        let key_and_file = name.strip_prefix("backbone.").and_then(|rest| rest.split_once('-'));
        key_and_file.is_some_and(|(key, file)| {
            !key.is_empty() && !file.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    };
    std::fs::read_dir(run_dir.join(SOURCES_DIR)).is_ok_and(|entries| {
        entries.filter_map(Result::ok).all(|e| {
            // Hidden files (`.DS_Store`, a copy's `.<name>.tmp`) are no one's, as in the run folder.
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with('.') || kept(&name)
        })
    })
}

/// Copies the model's source files into `<run>/sources/` (rank 0 at step 0), or, on a resume,
/// puts back the copies a checkpoint carries when the folder lost them.
pub fn keep_sources(
    run_dir: &Path,
    experiment: &Experiment,
    start: &RunStart,
    main: bool,
) -> anyhow::Result<KeptSources> {
    let dir = run_dir.join(SOURCES_DIR);
    let mut files = Vec::new();
    let mut names = BTreeMap::new();
    let from: Vec<(String, PathBuf)> = match &start.checkpoint {
        Some((checkpoint, manifest)) => manifest
            .sources
            .iter()
            .map(|(key, file)| (key.clone(), checkpoint.join(file)))
            .collect(),
        None => source_files(experiment),
    };
    for (key, original) in from {
        let file_name = original
            .file_name()
            .with_context(|| format!("{key} = {}: not a file", original.display()))?
            .to_string_lossy()
            .into_owned();
        // `backbone.path` + `r50.pt` -> `backbone.path-r50.pt`: one name per key, recognizable.
        let name = format!("{key}-{file_name}");
        let kept = dir.join(&name);
        if main && (start.checkpoint.is_none() || !kept.exists()) {
            run_dir::create_dir_in_place(&dir)?;
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::copy(&original, &tmp)
                .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|_| std::fs::rename(&tmp, &kept))
                .with_context(|| format!("cannot copy {key} = {} into {}", original.display(), kept.display()))?;
        }
        names.insert(key, name.clone());
        files.push((name, kept));
    }
    Ok(KeptSources { files, names })
}

/// Records the run's experiment and data in its folder once the run is known to be the
/// folder's (fresh, or its checkpoint accepted), so they always describe the run it holds. The
/// data first: a `config.toml` beside a `dataset.json` is a run's, one alone someone's file.
pub fn record_run(run_dir: &Path, config_toml: &str, fingerprint: &DatasetFingerprint) -> anyhow::Result<()> {
    fingerprint.write(run_dir)?;
    run_dir::save_config(run_dir, config_toml)
}

/// The refusal to resume a run in `run_dir` from the checkpoint `manifest` describes with
/// `experiment` of `(total steps, epochs, steps per epoch)` on `data`: a run cannot be
/// shortened below what it has trained (its checkpoint would be saved again as the last step of a
/// shorter run). None where it fits.
pub fn shortened_below_trained(
    run_dir: &Path,
    manifest: &Manifest,
    (experiment, data): (&Experiment, &DatasetFingerprint),
    (total, epochs, per_epoch): (u64, u64, u64),
) -> Option<String> {
    let step = manifest.step;
    if step <= total {
        return None;
    }
    // (A plan has at least one step per epoch: its batch is at most its images.)
    let per_epoch = per_epoch.max(1);
    // Shorter epochs than the run trained (a larger batch, or fewer images) are a cause that more
    // epochs only hide: the way back is said beside them.
    let way_back = match trained_steps_per_epoch(manifest).filter(|&before| before > per_epoch) {
        Some(before) => format!(
            ", or go back to the batch size and data it trained with (its epochs were {before} steps, these \
             are {per_epoch})"
        ),
        None => String::new(),
    };
    let enough = step.div_ceil(per_epoch);
    // Epochs that end where the run is train nothing more: said, for a run that had finished.
    let ends_there = match enough * per_epoch == step {
        true => format!("; at {enough} it ends at the step it has reached"),
        false => String::new(),
    };
    Some(format!(
        "{} has trained {step} steps, more than the {total} of this experiment ({epochs} epochs of {per_epoch} \
         steps): a run cannot be shortened below what it has trained. Set schedule.epochs to {enough} or more \
         ({}{ends_there}){way_back}, or add --fresh to start over (the folder is moved aside, nothing is deleted)",
        run_dir.display(),
        flags_to_lengthen(manifest, (experiment, data), enough)
    ))
}

/// The flags that continue a run with `epochs` epochs: the new value, and an `--allow-change`
/// for each key of `experiment` that differs from the run's (the data's keys aside), for the
/// data where `data` is not what the checkpoint records (as the data's own refusal asks), and
/// for the epochs where they change.
fn flags_to_lengthen(
    manifest: &Manifest,
    (experiment, data): (&Experiment, &DatasetFingerprint),
    epochs: u64,
) -> String {
    let changed = experiment
        .to_toml()
        .and_then(|toml| run_dir::unsafe_changes(&manifest.config, &toml))
        .unwrap_or_default();
    // A checkpoint from before data was recorded: its data keys tell.
    let data_changed = match &manifest.dataset {
        Some(saved) => !saved.differences(data).is_empty(),
        None => changed.iter().any(|c| c.key.starts_with("dataset.")),
    };
    let epochs_change = saved_epochs(manifest) != Some(epochs);
    let keys = changed
        .iter()
        .map(|c| c.key.as_str())
        .filter(|key| !key.starts_with("dataset.") && *key != "schedule.epochs")
        .chain(data_changed.then_some("dataset"))
        .chain(epochs_change.then_some("schedule.epochs"));
    let flags: Vec<String> = std::iter::once(format!("--set schedule.epochs={epochs}"))
        .chain(keys.map(|key| format!("--allow-change {key}")))
        .collect();
    flags.join(" ")
}

/// The epochs of the run a checkpoint was saved in.
fn saved_epochs(manifest: &Manifest) -> Option<u64> {
    let config: toml::Table = manifest.config.parse().ok()?;
    let epochs = config.get("schedule")?.get("epochs")?.as_integer()?;
    u64::try_from(epochs).ok().filter(|&e| e > 0)
}

/// The steps of an epoch of the run a checkpoint was saved in (its length over its epochs).
fn trained_steps_per_epoch(manifest: &Manifest) -> Option<u64> {
    Some(manifest.total_steps / saved_epochs(manifest)?)
}

/// Refuses a start from step 0 in a folder whose `summary.json` records steps trained: a summary
/// is written after a checkpoint, so its checkpoints were removed (or the folder copied without
/// them), and a new run would mix into the records of one that is not there to resume.
pub fn check_no_checkpoints_lost(run_dir: &Path, checkpointer: &Checkpointer) -> anyhow::Result<()> {
    let summary = run_dir.join(super::SUMMARY_FILE);
    let trained = std::fs::read(&summary)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<super::RunSummary>(&bytes).ok())
        .map_or(0, |s| s.steps);
    if trained == 0 {
        return Ok(());
    }
    bail!(
        "{} records a run trained to step {trained} (its {}), but {} holds no checkpoint to resume it \
         from (removed, or the folder was copied without them): starting from step 0 here would mix a \
         new run into that run's records. Put its checkpoints back, or start over with --fresh (the \
         run folder is moved aside, nothing is deleted)",
        run_dir.display(),
        super::SUMMARY_FILE,
        checkpointer.dir().display()
    )
}

/// What a start from step 0 says where the run folder's kNN curve records evaluations during
/// training: steps trained that no checkpoint keeps. Usual for a run stopped before its first
/// checkpoint (`checkpoint.every_steps` is longer than an epoch), but also what checkpoints
/// removed while the run was unfinished leave (a scratch folder purged): said, not refused.
pub fn progress_without_a_checkpoint(run_dir: &Path, checkpointer: &Checkpointer) -> Option<String> {
    let last = super::curve::read_curve(run_dir)
        .ok()?
        .into_iter()
        .map(|p| p.step)
        .max()?;
    (last > 0).then(|| {
        format!(
            "{} records evaluations up to step {last}, but {} holds no checkpoint: training starts again from \
             step 0 (the run stopped before its first checkpoint, or its checkpoints were removed)",
            run_dir.join(super::curve::CURVE_FILE).display(),
            checkpointer.dir().display()
        )
    })
}

/// What a checkpoint saves beyond the weights: the optimizer and, in fp16, the loss scale.
pub struct TrainingState<'a> {
    pub model: &'a Model,
    pub optimizer: &'a dyn Optimizer,
    pub numerics: &'a StepNumerics,
}

const LOSS_SCALE_KEY: &str = "loss_scale";

/// Writes the checkpoint of `step`, never one with non-finite parameters (the last good one
/// stays the newest).
pub fn save_checkpoint(
    checkpointer: &Checkpointer,
    state: TrainingState<'_>,
    (step, record): (u64, TrainingRecord),
    plan: &Plan,
    (config_toml, dataset): (&str, &DatasetFingerprint),
    sources: &KeptSources,
) -> anyhow::Result<PathBuf> {
    let finite = tch::no_grad(|| {
        state
            .model
            .parameters
            .iter()
            .all(|p| p.tensor.isfinite().all().int64_value(&[]) != 0)
    });
    if !finite {
        bail!("parameters became Inf or NaN by step {step}; {}", checkpointer.kept());
    }
    let mut optimizer_state = state.optimizer.state();
    if let Some(scaler) = &state.numerics.scaler {
        optimizer_state.push((LOSS_SCALE_KEY.into(), scaler.state()));
    }
    let manifest = Manifest {
        format: 1,
        step,
        epoch: plan.epoch_of(step),
        total_steps: plan.total_steps,
        files: Default::default(),
        config: config_toml.to_string(),
        sources: sources.names.clone(),
        dataset: Some(dataset.clone()),
        record,
    };
    checkpointer.save(&state.model.state(), &optimizer_state, &sources.files, manifest)
}

/// Why allowing the changed keys cannot continue the run in `run_dir` from checkpoint `dir`: its
/// weights fit no network of `experiment` ([`misfit_of_checkpoint`], `built` as there), or the
/// run would be shorter than it has trained with an experiment of `length` on `data`
/// ([`shortened_below_trained`]; not checked where the length is not known).
pub fn cannot_continue(
    (experiment, data): (&Experiment, &DatasetFingerprint),
    run_dir: &Path,
    (dir, manifest): (&Path, &Manifest),
    built: Option<&Model>,
    length: Option<(u64, u64, u64)>,
) -> Option<String> {
    misfit_of_checkpoint(experiment, dir, manifest, built)
        .or_else(|| length.and_then(|length| shortened_below_trained(run_dir, manifest, (experiment, data), length)))
}

/// Why the weights of checkpoint `dir` fit none of the BYOL networks that a resume of
/// `experiment` from it builds (from the module files the checkpoint keeps where it keeps any),
/// `built` where given, else built here on the CPU as a resume builds them (no pretrained file
/// read). None where they fit, or where the networks cannot be built or the weights read: the
/// start says so itself, and no `--allow-change` advice turns on it.
pub fn misfit_of_checkpoint(
    experiment: &Experiment,
    dir: &Path,
    manifest: &Manifest,
    built: Option<&Model>,
) -> Option<String> {
    let build = |experiment: &Experiment| {
        let context = BuildContext::new(Device::Cpu, experiment.augment.image_size());
        Model::build(experiment, &context, Weights::Checkpoint).ok()
    };
    let kept;
    let model = match (manifest.sources.is_empty(), built) {
        (true, Some(model)) => model,
        (true, None) => {
            kept = build(experiment)?;
            &kept
        }
        (false, _) => {
            kept = build(&with_checkpoint_sources(experiment, dir, manifest).ok()?)?;
            &kept
        }
    };
    let saved = checkpoint::read_tensors(dir, checkpoint::MODEL_FILE).ok()?;
    model
        .check_fits(&saved)
        .err()
        .map(|e| format!("{:#}", other_networks(dir, &e)))
}

/// Whether the weights of checkpoint `dir` fit the BYOL networks of `model` (every variable, with
/// its shape), as a resume from it needs, whatever `--allow-change` allowed; an error as the
/// resume's otherwise. (The online probe's weights may differ: [`Model::load_state`].)
pub fn check_networks_fit(dir: &Path, model: &Model) -> anyhow::Result<()> {
    let saved = checkpoint::read_tensors(dir, checkpoint::MODEL_FILE)?;
    model.check_fits(&saved).map_err(|e| other_networks(dir, &e))
}

/// The refusal to resume from checkpoint `dir` into networks its weights do not fit (`why`).
fn other_networks(dir: &Path, why: &anyhow::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "resuming from {}: {why:#}: the checkpoint's networks are not the ones this experiment builds (a change \
         to [backbone] or [byol] allowed with --allow-change cannot carry trained weights over); train the \
         changed experiment in another run folder, or add --fresh to move this run aside",
        dir.display()
    )
}

/// Copies a verified checkpoint's weights, optimizer state and loss scale into the run; the
/// optimizer state only when `optimizer_replaced` is None (the state of another type of optimizer
/// is not this one's); the online probe's weights only when `probe_classes`, the classes it
/// predicts now, are those it was trained on. Returns whether the online probe starts untrained
/// ([`Model::load_state`]).
pub fn load_checkpoint(
    (dir, manifest): (&Path, &Manifest),
    model: &Model,
    optimizer: &mut dyn Optimizer,
    numerics: &mut StepNumerics,
    (optimizer_replaced, probe_classes): (Option<&str>, Option<&[String]>),
) -> anyhow::Result<bool> {
    // A record without the data (an older run) is taken at its word: the same classes.
    let trained_on = manifest.dataset.as_ref().map(DatasetFingerprint::probe_classes);
    let same_classes = trained_on.is_none_or(|saved| saved == probe_classes);
    let probe_untrained = model
        .load_state(&checkpoint::read_tensors(dir, checkpoint::MODEL_FILE)?, same_classes)
        .map_err(|e| other_networks(dir, &e))?;
    let mut state = checkpoint::read_tensors(dir, checkpoint::OPTIMIZER_FILE)?;
    if let Some(i) = state.iter().position(|(k, _)| k == LOSS_SCALE_KEY) {
        let (_, scale) = state.remove(i);
        if let Some(scaler) = &mut numerics.scaler {
            scaler.load_state(&scale);
        }
    }
    if optimizer_replaced.is_some() {
        return Ok(probe_untrained);
    }
    optimizer.load_state(&state).map_err(|e| {
        anyhow::anyhow!(
            "resuming from {}: {e}: the checkpoint's optimizer state does not load into this experiment's \
             [optimizer] (its options changed, or the state was written otherwise); train the changed \
             experiment in another run folder, or add --fresh to move this run aside",
            dir.display()
        )
    })?;
    Ok(probe_untrained)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(json: &str) -> SplitFingerprint {
        serde_json::from_str(json).unwrap()
    }

    /// A run recorded without digests (generated images, before they had one) goes on without
    /// them, its kNN curve's data key unchanged; a split recorded with one keeps it.
    #[test]
    fn a_run_keeps_the_form_of_its_record() {
        let of = |splits: &[(&str, &str)]| {
            DatasetFingerprint(
                splits
                    .iter()
                    .map(|(name, json)| (name.to_string(), split(json)))
                    .collect(),
            )
        };
        let old = r#"{"images": 8, "classes": ["a", "b"]}"#;
        let new = r#"{"images": 8, "classes": ["a", "b"], "files_digest": "ab12"}"#;
        let recorded = of(&[("train", old), ("knn_bank", old), ("knn_queries", new)]);
        let now = of(&[("train", new), ("knn_bank", new), ("knn_queries", new)]);
        let kept = now.in_the_form_of(&recorded);
        assert_eq!(kept.0["train"].files_digest, None);
        assert_eq!(kept.0["knn_bank"].files_digest, None);
        assert_eq!(kept.0["knn_queries"].files_digest.as_deref(), Some("ab12"));
        assert!(recorded.differences(&kept).is_empty());
    }

    #[test]
    fn a_record_of_names_only_resumes_on_count_and_classes() {
        // Written before sizes were digested: its `digest` hashes the names alone.
        let old = split(r#"{"images": 2, "classes": ["a"], "digest": "0123abcd"}"#);
        assert_eq!(old.files_digest, None);
        let now = split(r#"{"images": 2, "classes": ["a"], "files_digest": "4567ef01"}"#);
        assert!(old.matches(&now));
        assert!(!old.matches(&split(r#"{"images": 3, "classes": ["a"], "files_digest": "4567ef01"}"#)));
        // Two records with digests must agree on them.
        let other = split(r#"{"images": 2, "classes": ["a"], "files_digest": "89abcdef"}"#);
        assert!(!now.matches(&other) && now.matches(&now.clone()));
        // The same files with one image fewer: one could not be decoded into memory, where a
        // listing or a run reading files as it goes counts it.
        let decoded = split(r#"{"images": 1, "classes": ["a"], "files_digest": "4567ef01", "decoded": true}"#);
        assert!(decoded.matches(&now) && now.matches(&decoded));
        // Fewer decoded than the run decoded: damaged since.
        let both = split(r#"{"images": 2, "classes": ["a"], "files_digest": "4567ef01", "decoded": true}"#);
        assert!(!both.matches(&decoded) && decoded.matches(&both));
        assert_eq!(both.fewer_decode(&decoded), 1);
        let other_classes = split(r#"{"images": 2, "classes": ["b"], "files_digest": "4567ef01"}"#);
        assert!(!other_classes.matches(&now));
    }

    #[test]
    fn a_run_recorded_with_a_knn_monitor_over_one_class_resumes_without_it() {
        let record = |splits: &[(&str, &str)]| {
            DatasetFingerprint(
                splits
                    .iter()
                    .map(|&(name, json)| (name.to_string(), split(json)))
                    .collect(),
            )
        };
        let train = ("train", r#"{"images": 4, "classes": [], "files_digest": "01"}"#);
        let now = record(&[train]);
        let one_class = r#"{"images": 2, "classes": ["cat"], "files_digest": "02"}"#;
        let before = record(&[train, ("knn_bank", one_class), ("knn_queries", one_class)]);
        assert!(before.differences(&now).is_empty());
        // Over two classes the monitor measured something: its data going away is a change.
        let two = r#"{"images": 2, "classes": ["cat", "dog"], "files_digest": "02"}"#;
        let before = record(&[train, ("knn_bank", two), ("knn_queries", two)]);
        assert_eq!(before.differences(&now).len(), 2);
    }

    fn parts(list: &[(&str, usize, &str)]) -> BTreeMap<String, PartFingerprint> {
        list.iter()
            .map(|&(name, images, digest)| {
                let digest = digest.to_string();
                (name.to_string(), PartFingerprint { images, digest })
            })
            .collect()
    }

    #[test]
    fn the_parts_that_differ_are_named_by_kind() {
        let saved = parts(&[("a/", 5, "01"), ("b/", 5, "02"), ("c/", 5, "03"), ("d/", 2, "04")]);
        let now = parts(&[("a/", 5, "01"), ("b/", 4, "12"), ("c/", 5, "13"), ("e/", 1, "05")]);
        assert_eq!(
            part_differences(&saved, &now),
            [
                "    changed: b/ (5 -> 4 images), c/ (5 images, not the same or not in the same order)",
                "    no longer there: d/ (2 images)",
                "    new: e/ (1 image)",
            ]
        );
        assert!(part_differences(&saved, &saved).is_empty());
        // The same parts in another order (a reordered file list or list of shards).
        let split = |digest: &str| SplitFingerprint {
            images: 12,
            classes: Vec::new(),
            files_digest: Some(digest.into()),
            parts: saved.clone(),
            decoded: false,
            labels_digest: None,
        };
        let record = |digest: &str| DatasetFingerprint(BTreeMap::from([("train".to_string(), split(digest))]));
        let lines = record("aa").differences(&record("bb"));
        assert_eq!(
            lines[1], "    every part holds what it held, in another order",
            "{lines:?}"
        );
        // The same parts under other class names (shards whose classes.txt was edited).
        let mut renamed = record("aa");
        renamed.0.get_mut("train").unwrap().classes = vec!["x".into()];
        assert_eq!(
            record("aa").differences(&renamed)[1],
            "    every part holds what it held, its labels named otherwise"
        );
        renamed.0.get_mut("train").unwrap().files_digest = Some("bb".into());
        assert_eq!(
            record("aa").differences(&renamed)[1],
            "    every part holds what it held, in another order, its labels named otherwise"
        );
        // A record without parts (written before they were kept) names none.
        assert!(part_differences(&BTreeMap::new(), &now).is_empty());
        // Many parts: the first few are named, the rest counted.
        let many = |digit: &str| {
            let names: Vec<String> = (0..20).map(|i| format!("shard-{i:02}.tar")).collect();
            let list: Vec<(&str, usize, &str)> = names.iter().map(|n| (n.as_str(), 10, digit)).collect();
            parts(&list)
        };
        let lines = part_differences(&many("0"), &many("1"));
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].starts_with("    changed: shard-00.tar (10 images, not the same or not in the same order), ")
                && lines[0].ends_with("shard-07.tar (10 images, not the same or not in the same order), and 12 more"),
            "{}",
            lines[0]
        );
    }
}
