//! Checkpoints: one folder per saved step holding safetensors files and a manifest with their
//! SHA-256, written to a temporary folder, fsynced and renamed into place, so a crash or a kill at
//! any instant leaves either the old set of checkpoints or the new one, never a torn file that is
//! taken for good. Loading verifies the checksums and falls back to the previous checkpoint.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::Tensor;

use crate::run_dir::sync_dir;

pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const MANIFEST_FILE: &str = "manifest.json";

/// What a checkpoint folder says about itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    /// Optimizer steps completed.
    pub step: u64,
    pub epoch: u64,
    pub total_steps: u64,
    /// File name -> lowercase hex SHA-256.
    pub files: std::collections::BTreeMap<String, String>,
    /// The resolved experiment TOML the run used.
    pub config: String,
    /// Files the model is built from that the checkpoint carries (a TorchScript module): the
    /// experiment key (`backbone.path`) -> the file's name in this folder (listed in `files`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub sources: std::collections::BTreeMap<String, String>,
    /// The data the run trained on up to this step, for a resume here to check the data against
    /// (absent in checkpoints from before it was kept: those are checked against the run
    /// folder's `dataset.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<crate::train::state::DatasetFingerprint>,
    /// The run's record up to this step, for a run resumed here to report whole.
    #[serde(flatten)]
    pub record: TrainingRecord,
}

/// What a run reports at its end that the steps before a checkpoint determined.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingRecord {
    /// The loss at the last log point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_loss: Option<f64>,
    /// Seconds of training (evaluations during training included) from step `timed_from_step`
    /// to here, summed over the starts of the run (a run resumed after a kill adds its own to
    /// those before).
    #[serde(default)]
    pub train_seconds: f64,
    /// The step `train_seconds` counts from: 0, or where a run resumed from a checkpoint that
    /// had no record (None in those).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timed_from_step: Option<u64>,
    /// The processes that trained up to here (a data-parallel job's size; 1 for one process);
    /// None in checkpoints from before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<usize>,
    /// The kNN curve's evaluations during training from step `timed_from_step` to here, and the
    /// seconds they took (part of `train_seconds`), summed over the starts like it (an
    /// evaluation after a start's last checkpoint is as lost as its seconds). None in
    /// checkpoints from before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curve: Option<CurveCost>,
    /// The images trained from step `timed_from_step` to here, summed over the starts like
    /// `train_seconds` (each start's steps at its own batch size). None in checkpoints from
    /// before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<u64>,
    /// The changes resumes allowed (`--allow-change`), oldest first, each with the step it
    /// resumed at: the steps before it trained with the values before it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes_allowed: Vec<ChangesAllowed>,
}

/// The changes one resume allowed: `optimizer.lr: 0.5 -> 3.0` from `step` on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangesAllowed {
    pub step: u64,
    pub changes: Vec<String>,
}

impl std::fmt::Display for ChangesAllowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "from step {}: {}", self.step, self.changes.join(", "))
    }
}

/// What the kNN curve's evaluations during training cost: how many, and their seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CurveCost {
    pub evaluations: u64,
    pub seconds: f64,
    /// The step of the last evaluation counted: a checkpoint saved after the evaluation of its
    /// own step (a pruned trial's last) counts it, one saved before it (an epoch's end) not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_step: Option<u64>,
}

impl TrainingRecord {
    /// What a run that resumes at `step` from a checkpoint with this record carries on: the
    /// record, or for a checkpoint without its timing (an earlier version's), the loss alone,
    /// with training time and the curve's cost counted from `step`, alike.
    pub fn resumed_at(self, step: u64) -> Self {
        match (self.timed_from_step, self.curve) {
            (Some(_), Some(_)) => self,
            _ => Self {
                train_seconds: 0.0,
                timed_from_step: Some(step),
                curve: Some(CurveCost::default()),
                images: Some(0),
                ..self
            },
        }
    }
}

/// Saves and finds checkpoints in `<run>/checkpoints`.
#[derive(Debug, Clone)]
pub struct Checkpointer {
    dir: PathBuf,
    keep_last: usize,
    /// Old checkpoints that could not be removed, warned of once (each save tries again).
    unremovable: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<PathBuf>>>,
    /// Whether the folder was seen holding a checkpoint (one saved, or one to resume from): one
    /// found missing since was removed, not never saved.
    held_one: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// What [`Checkpointer::resume_point`] found.
#[derive(Debug)]
pub struct ResumePoint {
    /// The newest intact checkpoint and its manifest (None: the folder has none yet).
    pub latest: Option<(PathBuf, Manifest)>,
    /// One line per damaged checkpoint skipped.
    pub warnings: Vec<String>,
}

/// Where damaged checkpoints are moved, inside the checkpoints folder: out of the way of
/// pruning and resume, but kept for the user to inspect (never deleted by us).
pub const DAMAGED_DIR: &str = "damaged";

/// Where a step folder that is no checkpoint (no manifest of ours) is moved when the run saves a
/// checkpoint of that step, which would otherwise replace it: kept, never deleted by us.
pub const SET_ASIDE_DIR: &str = "not-checkpoints";
const LAST_LINK: &str = "last";
/// The empty file a start writes and removes to learn that it can save checkpoints.
const WRITE_CHECK_FILE: &str = ".write-check";

impl Checkpointer {
    pub fn new(dir: PathBuf, keep_last: usize) -> Self {
        Self {
            dir,
            keep_last: keep_last.max(1),
            unremovable: Default::default(),
            held_one: Default::default(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a checkpoint atomically and prunes old ones; returns its folder. `sources` are the
    /// files named in `manifest.sources` (file name in the checkpoint -> where it is now), linked
    /// or copied in and hashed like the tensors. An error (a full disk) is one line naming the
    /// path that failed and the checkpoint that is kept.
    pub fn save(
        &self,
        model: &[(String, Tensor)],
        optimizer: &[(String, Tensor)],
        sources: &[(String, PathBuf)],
        manifest: Manifest,
    ) -> anyhow::Result<PathBuf> {
        let step = manifest.step;
        let saved = self.try_save(model, optimizer, sources, manifest);
        if saved.is_ok() {
            self.held_one.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        saved.map_err(|e| {
            let way_out = way_out_of_a_failed_write(&e);
            // Pruning first would risk the last good checkpoint for the one being written.
            let room = match way_out.starts_with("free some space") {
                true => format!(
                    "; a save needs room for one checkpoint more than the up to {} kept (checkpoint.keep_last): \
                     the oldest is removed only once the new one is whole",
                    self.keep_last
                ),
                false => String::new(),
            };
            anyhow::anyhow!(
                "cannot save the checkpoint of step {step}: {e:#}; {} ({way_out}{room})",
                self.kept()
            )
        })
    }

    /// "the last good checkpoint is kept: <path>", or that there is none yet: for error messages.
    pub fn kept(&self) -> String {
        // The newest one where the `last` link itself was removed.
        match self.last().or_else(|| self.list().pop()) {
            Some(dir) => format!("the last good checkpoint is kept: {}", dir.display()),
            None if self.held_one.load(std::sync::atomic::Ordering::Relaxed) => format!(
                "the checkpoints of {} are gone (the folder or its link target removed while the run trained?), \
                 so none is left to resume from",
                self.dir.display()
            ),
            None => format!("no checkpoint was saved in {} yet", self.dir.display()),
        }
    }

    fn try_save(
        &self,
        model: &[(String, Tensor)],
        optimizer: &[(String, Tensor)],
        sources: &[(String, PathBuf)],
        manifest: Manifest,
    ) -> anyhow::Result<PathBuf> {
        crate::run_dir::create_dir_in_place(&self.dir)?;
        crate::run_dir::record_checkpoints_owner(&self.dir)?;
        let step = manifest.step;
        let name = format!("step-{step:09}");
        let final_dir = self.dir.join(&name);
        let tmp = self.dir.join(format!(".{name}.tmp-{}", std::process::id()));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).with_context(|| format!("cannot remove {}", tmp.display()))?;
        }
        if let Err(e) = write_checkpoint_folder(&tmp, model, optimizer, sources, manifest) {
            // A half-written folder is useless and may be large (a full disk): drop it now.
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        // A step folder of someone's under this step's name (one of the strangers) would be
        // replaced, that is deleted.
        if final_dir.is_dir() && !final_dir.join(MANIFEST_FILE).exists() {
            let moved = self.move_into(&final_dir, SET_ASIDE_DIR).inspect_err(|_| {
                let _ = fs::remove_dir_all(&tmp);
            })?;
            byol::eprint_line!(
                "warning: {} holds no {MANIFEST_FILE}, so it is no checkpoint of this run: moved to {} for the \
                 checkpoint of step {} to take its name (its files are as they were)",
                final_dir.display(),
                moved.display(),
                step
            );
        }
        move_into_place(&tmp, &final_dir).inspect_err(|_| {
            let _ = fs::remove_dir_all(&tmp);
        })?;
        self.point_last_at(&name)?;
        sync_dir(&self.dir).with_context(|| format!("cannot sync {}", self.dir.display()))?;
        self.prune(&final_dir);
        Ok(final_dir)
    }

    /// `checkpoints/last` -> the newest checkpoint (a symlink swapped in by rename).
    fn point_last_at(&self, name: &str) -> anyhow::Result<()> {
        let link = self.dir.join(LAST_LINK);
        // A copy of the run folder that followed links (`cp -rL`) made `last` a folder, which a
        // link cannot replace: it is a copy of a step folder, put aside, never deleted.
        if fs::symlink_metadata(&link).is_ok_and(|m| m.is_dir()) {
            let moved = self.move_to_damaged(&link)?;
            byol::eprint_line!(
                "warning: {} was a folder, not a link (a copy that followed links?); moved to {}",
                link.display(),
                moved.display()
            );
        }
        let tmp = self.dir.join(format!(".last.tmp-{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(name, &tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        fs::rename(&tmp, &link).with_context(|| format!("cannot replace {}", link.display()))?;
        Ok(())
    }

    /// The checkpoint `last` points at, when it exists.
    pub fn last(&self) -> Option<PathBuf> {
        let target = fs::read_link(self.dir.join(LAST_LINK)).ok()?;
        let dir = self.dir.join(target);
        dir.is_dir().then_some(dir)
    }

    /// Checkpoint folders, oldest first: step folders with a manifest (one that does not read
    /// is a damaged checkpoint's). A step folder without one is no checkpoint of a run's, which
    /// writes its manifest before the folder takes its name: it is never loaded, moved or pruned
    /// ([`Checkpointer::strangers`]).
    pub fn list(&self) -> Vec<PathBuf> {
        self.step_folders(true)
    }

    /// Step folders without a manifest: someone else's, left where they are.
    pub fn strangers(&self) -> Vec<PathBuf> {
        self.step_folders(false)
    }

    /// Step folders with a manifest or without one, sorted. A folder whose manifest cannot be
    /// looked for (the folder unreadable) counts as one with a manifest: a checkpoint that cannot
    /// be read, which [`Checkpointer::resume_point`] stops at rather than passing over.
    fn step_folders(&self, with_manifest: bool) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| is_step_name(&e.file_name().to_string_lossy()) && e.path().is_dir())
            .map(|e| e.path())
            .filter(|dir| dir.join(MANIFEST_FILE).try_exists().unwrap_or(true) == with_manifest)
            .collect();
        dirs.sort();
        dirs
    }

    /// Removes the oldest checkpoints beyond `keep_last`, never `newest` (the one just written,
    /// whatever sorts after it). One that cannot be removed (a file held open over NFS, a
    /// read-only file) is warned of, not an error: the new checkpoint is saved, and training
    /// goes on.
    fn prune(&self, newest: &Path) {
        let others: Vec<PathBuf> = self.list().into_iter().filter(|d| d != newest).collect();
        let excess = (others.len() + 1).saturating_sub(self.keep_last);
        for old in &others[..excess.min(others.len())] {
            if let Err(e) = remove_old(old) {
                let first_time = self
                    .unremovable
                    .lock()
                    .map_or(true, |mut warned| warned.insert(old.clone()));
                if first_time {
                    byol::eprint_line!("warning: {e:#}; training goes on (said once; each save tries again)");
                }
            }
        }
    }

    /// Cleans up after interrupted writes and says what it did: `.step-N.tmp-PID` folders and
    /// `.last.tmp-PID` links are removed, and a `.step-N.replaced-PID` folder (a checkpoint being
    /// replaced where folders cannot be swapped) is removed when `step-N` is in place, else put
    /// back; what is left of an old checkpoint whose removal stopped (`.step-N.pruned-PID`) is
    /// removed, or said, when it still cannot be. Only for the holder of the run folder's lock: another process's write in progress
    /// looks exactly like a stale one.
    pub fn recover_interrupted_writes(&self) -> anyhow::Result<Vec<String>> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Ok(Vec::new());
        };
        let mut removed = Vec::new();
        let mut entries: Vec<fs::DirEntry> = entries.filter_map(Result::ok).collect();
        // Replaced checkpoints first: one whose replacement never moved in is the step's only
        // complete copy, and goes back in place.
        entries.sort_by_key(|e| !e.file_name().to_string_lossy().contains(REPLACED));
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(step) = name
                .strip_prefix('.')
                .and_then(|n| n.split_once(REPLACED))
                .map(|(s, _)| s)
            {
                let (path, target) = (entry.path(), self.dir.join(step));
                if target.exists() {
                    fs::remove_dir_all(&path)
                        .with_context(|| format!("cannot remove the replaced checkpoint {}", path.display()))?;
                    removed.push(format!("removed {name}, left by an interrupted write"));
                } else {
                    fs::rename(&path, &target)
                        .with_context(|| format!("cannot restore {} to {}", path.display(), target.display()))?;
                    removed.push(format!("restored {name} as {step}, left by an interrupted write"));
                }
                continue;
            }
            if name.starts_with('.') && name.contains(PRUNED) {
                // An old checkpoint whose removal stopped: what is left of it is no checkpoint,
                // and one that still cannot be removed costs the run nothing.
                match fs::remove_dir_all(entry.path()) {
                    Ok(()) => removed.push(format!("removed {name}, what was left of an old checkpoint")),
                    Err(e) => removed.push(format!(
                        "could not remove {name}, what is left of an old checkpoint ({e}); it costs the run nothing"
                    )),
                }
                continue;
            }
            if !(name.starts_with('.') && name.contains(".tmp-")) {
                continue;
            }
            let path = entry.path();
            let result = match entry.file_type() {
                Ok(kind) if kind.is_dir() => fs::remove_dir_all(&path),
                _ => fs::remove_file(&path),
            };
            result.with_context(|| format!("cannot remove the unfinished checkpoint write {}", path.display()))?;
            removed.push(format!("removed {name}, left by an interrupted write"));
        }
        Ok(removed)
    }

    /// The newest checkpoint whose files match its manifest, to resume from, and a warning per
    /// damaged one. With `repair` (only the process holding the run folder's lock), stale
    /// temporary folders are removed first, damaged checkpoints are moved into `damaged/`, where
    /// pruning and later resumes no longer see them, and `last` is pointed at the checkpoint
    /// found. When checkpoints exist (or were moved aside before) and none is intact, this is an
    /// error: training from step 0 would silently throw the run away and mix a new one into its
    /// folder.
    pub fn resume_point(&self, repair: bool) -> anyhow::Result<ResumePoint> {
        // A folder that cannot be listed may hold the run's checkpoints: not to be taken for none.
        if let Err(e) = fs::read_dir(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                bail!(
                    "cannot list the checkpoints folder {}: {e}. It may hold the run's checkpoints, so the run \
                     does not start over: make the folder readable (permissions, the file system) and run again",
                    self.dir.display()
                );
            }
        }
        // The holder's first write into the folder would otherwise be its first checkpoint, after
        // `checkpoint.every_steps` steps trained for nothing.
        if repair && self.dir.is_dir() {
            let probe = self.dir.join(WRITE_CHECK_FILE);
            fs::write(&probe, b"")
                .and_then(|()| fs::remove_file(&probe))
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot write into the checkpoints folder {}: {e} (writing {}). The run could save no \
                     checkpoint: make the folder writable and run again",
                        self.dir.display(),
                        probe.display()
                    )
                })?;
        }
        let mut warnings = Vec::new();
        if repair {
            for done in self.recover_interrupted_writes()? {
                warnings.push(format!("{done} (in {})", self.dir.display()));
            }
        }
        for stranger in self.strangers() {
            warnings.push(format!(
                "{} holds no {MANIFEST_FILE}, so it is no checkpoint of this run (a run writes the manifest \
                 before the folder takes its name): never loaded, pruned or deleted; left where it is, or moved \
                 into {SET_ASIDE_DIR}/ should the run save a checkpoint of that step",
                stranger.display()
            ));
        }
        let mut damaged = Vec::new();
        let earlier = self.damaged();
        for dir in self.list().into_iter().rev() {
            match verify(&dir) {
                Ok(manifest) => {
                    if repair && self.last().as_deref() != Some(dir.as_path()) {
                        let name = dir.file_name().expect("a step folder").to_string_lossy().into_owned();
                        self.point_last_at(&name)?;
                    }
                    self.held_one.store(true, std::sync::atomic::Ordering::Relaxed);
                    return Ok(ResumePoint {
                        latest: Some((dir, manifest)),
                        warnings,
                    });
                }
                Err(e) if cannot_be_read(&e) => {
                    bail!(
                        "cannot check checkpoint {}: {e:#}. It may well be whole, so it is left where it \
                         is: make its files readable (permissions, the file system) and run again",
                        dir.display()
                    );
                }
                Err(e) => {
                    if let Some(shared) = changed_shared_source(&dir) {
                        bail!(
                            "checkpoint {}: {e:#}. That file is the run's copy of a source file ({shared}), \
                             one file linked into every checkpoint, and it was changed in place, so no \
                             checkpoint is intact: the checkpoints are left where they are. Put the \
                             module the run was started with back in that file (`cp` the original over \
                             it) and run again",
                            dir.display()
                        );
                    }
                    let mut warning = format!("skipping damaged checkpoint {}: {e:#}", dir.display());
                    if repair {
                        let moved = self.move_to_damaged(&dir)?;
                        warning.push_str(&format!("; moved to {}", moved.display()));
                    }
                    damaged.push(format!("{}: {e:#}", dir.display()));
                    warnings.push(warning);
                }
            }
        }
        if damaged.is_empty() && earlier.is_empty() {
            return Ok(ResumePoint { latest: None, warnings });
        }
        if repair {
            // `last` must never name a checkpoint that is not there or not intact.
            let _ = fs::remove_file(self.dir.join(LAST_LINK));
        }
        let mut listing: Vec<String> = damaged.iter().map(|d| format!("  {d}")).collect();
        listing.extend(
            earlier
                .iter()
                .map(|d| format!("  {} (moved aside earlier)", d.display())),
        );
        Err(NoIntactCheckpoint {
            dir: self.dir.clone(),
            damaged: listing.join("\n"),
        }
        .into())
    }

    /// Folders in `damaged/`.
    fn damaged(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(self.dir.join(DAMAGED_DIR)) else {
            return Vec::new();
        };
        let mut dirs: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        dirs.sort();
        dirs
    }

    /// Moves a checkpoint folder into `damaged/` under a name not taken yet.
    fn move_to_damaged(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        self.move_into(dir, DAMAGED_DIR)
    }

    /// Moves `dir` into the checkpoints folder's `sub`-folder under a name not taken yet.
    fn move_into(&self, dir: &Path, sub: &str) -> anyhow::Result<PathBuf> {
        let aside = self.dir.join(sub);
        fs::create_dir_all(&aside).with_context(|| format!("cannot create {}", aside.display()))?;
        let name = dir.file_name().expect("a step folder").to_string_lossy().into_owned();
        let target = (0..)
            .map(|n| match n {
                0 => aside.join(&name),
                n => aside.join(format!("{name}.{n}")),
            })
            .find(|p| !p.exists())
            .expect("some name is free");
        fs::rename(dir, &target).with_context(|| format!("cannot move {} to {}", dir.display(), target.display()))?;
        Ok(target)
    }
}

/// A checkpoints folder that holds checkpoints (or held them: `damaged/`), none of them intact.
/// Said as a resume sees it; a command that only reads a checkpoint says it in its own terms.
#[derive(Debug)]
pub struct NoIntactCheckpoint {
    /// The checkpoints folder.
    pub dir: PathBuf,
    /// One line per damaged checkpoint, with why.
    pub damaged: String,
}

impl std::fmt::Display for NoIntactCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} has no intact checkpoint to resume from; damaged:\n{}\n\
             Damaged checkpoints are kept in {} and never loaded. Training from step 0 here would mix a \
             new run into this one's folder: start over with --fresh (the run folder is moved aside, \
             nothing is deleted), or put an intact checkpoint back into {}",
            self.dir.display(),
            self.damaged,
            self.dir.join(DAMAGED_DIR).display(),
            self.dir.display()
        )
    }
}

impl std::error::Error for NoIntactCheckpoint {}

/// Writes the safetensors files and the manifest into `tmp`, each file and the folder fsynced.
fn write_checkpoint_folder(
    tmp: &Path,
    model: &[(String, Tensor)],
    optimizer: &[(String, Tensor)],
    sources: &[(String, PathBuf)],
    mut manifest: Manifest,
) -> anyhow::Result<()> {
    fs::create_dir(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    for (name, from) in sources {
        let path = tmp.join(name);
        // A hard link costs no space (every checkpoint carries the same module); a copy where
        // the file system has none.
        if fs::hard_link(from, &path).is_err() {
            fs::copy(from, &path).with_context(|| format!("cannot copy {} to {}", from.display(), path.display()))?;
        }
        manifest.files.insert(name.clone(), sha256_file(&path)?);
    }
    for (file, tensors) in [(MODEL_FILE, model), (OPTIMIZER_FILE, optimizer)] {
        let path = tmp.join(file);
        // safetensors stores row-major data: channels_last weights and states are copied.
        let tensors: Vec<(&str, Tensor)> = tensors
            .iter()
            .map(|(name, t)| (name.as_str(), t.to_device(tch::Device::Cpu).contiguous()))
            .collect();
        Tensor::write_safetensors(&tensors, &path).map_err(|e| write_error(&path, e))?;
        manifest.files.insert(file.to_string(), sha256_file(&path)?);
    }
    manifest.format = 1;
    let manifest_path = tmp.join(MANIFEST_FILE);
    fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest)?)
        .with_context(|| format!("cannot write {}", manifest_path.display()))?;
    for file in manifest.files.keys().map(String::as_str).chain([MANIFEST_FILE]) {
        let path = tmp.join(file);
        File::open(&path)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("cannot sync {}", path.display()))?;
    }
    sync_dir(tmp).with_context(|| format!("cannot sync {}", tmp.display()))?;
    Ok(())
}

/// "cannot write PATH: No space left on device (os error 28)". tch reports a failed safetensors
/// write as the Debug form of safetensors' error (`IoError(Os { code: 28, ... })`) after the path;
/// the OS error is recovered from it for a readable line.
fn write_error(path: &Path, error: tch::TchError) -> anyhow::Error {
    let text = error.to_string();
    let os_error = text
        .split_once("code: ")
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|code| code.parse::<i32>().ok())
        .map(std::io::Error::from_raw_os_error);
    match os_error {
        // Kept as the cause, for [`way_out_of_a_failed_write`] to tell what to do.
        Some(e) => anyhow::Error::new(e).context(format!("cannot write {}", path.display())),
        None => anyhow::anyhow!("cannot write {}: {text}", path.display()),
    }
}

/// What to do after a write into the run folder failed with `e`, by its cause: free space where
/// the disk or a quota is full, make the folder writable where permission was refused.
pub fn way_out_of_a_failed_write(e: &anyhow::Error) -> &'static str {
    use std::io::ErrorKind;
    let kind = e
        .chain()
        .find_map(|cause| cause.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind);
    match kind {
        Some(ErrorKind::StorageFull | ErrorKind::QuotaExceeded | ErrorKind::FileTooLarge) => {
            "free some space and run again to resume"
        }
        Some(ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem) => {
            "make the run folder writable and run again to resume"
        }
        _ => "remove the cause named above and run again to resume",
    }
}

/// Renames the finished folder `tmp` to `target`. When `target` exists (the same step saved
/// again: a finished run resumed), the two are swapped atomically first, so that at every
/// instant one complete checkpoint of that step is in place, and the old one is then removed.
fn move_into_place(tmp: &Path, target: &Path) -> anyhow::Result<()> {
    if target.exists() {
        if exchange(tmp, target).is_ok() {
            let _ = fs::remove_dir_all(tmp);
            return Ok(());
        }
        return replace_by_renames(tmp, target);
    }
    fs::rename(tmp, target).with_context(|| format!("cannot move checkpoint into {}", target.display()))
}

/// [`move_into_place`] where folders cannot be swapped (NFS has no RENAME_EXCHANGE): the old
/// folder is renamed aside, not deleted, until the new one is in place; a kill in between leaves
/// it for the next start to restore (see `Checkpointer::recover_interrupted_writes`).
fn replace_by_renames(tmp: &Path, target: &Path) -> anyhow::Result<()> {
    let aside = replaced_name(target);
    fs::rename(target, &aside).with_context(|| format!("cannot replace {}", target.display()))?;
    fs::rename(tmp, target).with_context(|| format!("cannot move checkpoint into {}", target.display()))?;
    let _ = fs::remove_dir_all(&aside);
    Ok(())
}

/// Where [`move_into_place`] keeps a checkpoint folder while its replacement moves in.
fn replaced_name(target: &Path) -> PathBuf {
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    target.with_file_name(format!(".{name}{REPLACED}{}", std::process::id()))
}

const REPLACED: &str = ".replaced-";

/// Where [`remove_old`] moves an old checkpoint to remove it: out of the checkpoints a resume
/// sees at once, whatever is left of it should the removal stop half way.
const PRUNED: &str = ".pruned-";

/// Removes the old checkpoint folder `old`, first moved to `.step-N.pruned-PID` (a removal that
/// stops half way leaves no checkpoint that looks whole; the next start removes the rest).
fn remove_old(old: &Path) -> anyhow::Result<()> {
    let name = old.file_name().unwrap_or_default().to_string_lossy();
    let aside = old.with_file_name(format!(".{name}{PRUNED}{}", std::process::id()));
    fs::rename(old, &aside).with_context(|| format!("cannot remove the old checkpoint {}", old.display()))?;
    fs::remove_dir_all(&aside).with_context(|| {
        format!(
            "cannot remove the old checkpoint {} (moved to {} to be removed; the next start tries again)",
            old.display(),
            aside.display()
        )
    })
}

/// Whether `name` is a checkpoint folder's: `step-` and the step's digits (another tool's
/// `step-100.ckpt` is not one).
fn is_step_name(name: &str) -> bool {
    name.strip_prefix("step-")
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether `path`, an entry of a checkpoints folder, is one a run writes there: a checkpoint
/// folder with its manifest (a folder named like one without it, or with a `manifest.json` that
/// is not a checkpoint's, is another tool's), the `last` link, `damaged/`, or what an
/// interrupted write leaves (removed at the next start).
pub fn is_checkpoints_entry(path: &Path) -> bool {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let interrupted = name.starts_with('.') && [".tmp-", REPLACED, PRUNED].iter().any(|m| name.contains(m));
    let checkpoint = is_step_name(&name) && has_a_manifest(path);
    checkpoint || [LAST_LINK, DAMAGED_DIR, SET_ASIDE_DIR].contains(&name.as_ref()) || interrupted
}

/// Whether the folder `dir` holds a `manifest.json` that reads as a checkpoint's (its files not
/// checked).
pub fn has_a_manifest(dir: &Path) -> bool {
    fs::read(dir.join(MANIFEST_FILE)).is_ok_and(|text| serde_json::from_slice::<Manifest>(&text).is_ok())
}

/// Atomically swaps two paths (Linux `renameat2(RENAME_EXCHANGE)`).
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: both are valid NUL-terminated paths; AT_FDCWD resolves them like rename(2).
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether `verify` failed for want of reading a file (permissions, a failing disk, a link that
/// loops) rather than for what the checkpoint holds: a checkpoint that cannot be read may be
/// whole, and is not to be moved aside as damaged. A file that is not there is damage.
fn cannot_be_read(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() != std::io::ErrorKind::NotFound)
}

/// The key of a source file of checkpoint `dir` (a TorchScript module) whose SHA-256 is not the
/// manifest's while the file is linked from elsewhere too: checkpoints share one copy of it by
/// hard links, so a change in place damages all of them at once, and moving them aside one by one
/// would leave the run nothing to resume from.
fn changed_shared_source(dir: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let manifest: Manifest = serde_json::from_slice(&fs::read(dir.join(MANIFEST_FILE)).ok()?).ok()?;
    manifest.sources.iter().find_map(|(key, file)| {
        let path = dir.join(file);
        let shared = fs::metadata(&path).ok()?.nlink() > 1;
        let changed = manifest.files.get(file) != sha256_file(&path).ok().as_ref();
        (shared && changed).then(|| format!("{key}, kept as {}", path.display()))
    })
}

/// The experiment a run folder trained, as a resume reads it: its newest checkpoint's whose
/// manifest can be read, else its `config.toml` (a run stopped before its first checkpoint);
/// `None` for a folder with neither.
pub fn trained_experiment(run_dir: &Path) -> Option<String> {
    newest_experiment(run_dir)
        .map(|(_, experiment)| experiment)
        .or_else(|| crate::run_dir::saved_config(run_dir))
}

/// The experiment the newest checkpoint of `run_dir` whose manifest reads holds, with that
/// checkpoint's folder.
pub fn newest_experiment(run_dir: &Path) -> Option<(PathBuf, String)> {
    newest_manifest(run_dir).map(|(dir, manifest)| (dir, manifest.config))
}

/// The manifest of the newest checkpoint of `run_dir` that reads (its files not checked), with
/// that checkpoint's folder.
pub fn newest_manifest(run_dir: &Path) -> Option<(PathBuf, Manifest)> {
    Checkpointer::new(run_dir.join(crate::run_dir::CHECKPOINTS_DIR), 0)
        .list()
        .into_iter()
        .rev()
        .find_map(|dir| {
            let text = fs::read(dir.join(MANIFEST_FILE)).ok()?;
            let manifest = serde_json::from_slice::<Manifest>(&text).ok()?;
            Some((dir, manifest))
        })
}

/// Reads a checkpoint folder's manifest and checks every file's SHA-256.
pub fn verify(dir: &Path) -> anyhow::Result<Manifest> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let text = fs::read(&manifest_path).with_context(|| format!("cannot read {}", manifest_path.display()))?;
    let manifest: Manifest = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a valid manifest", manifest_path.display()))?;
    check_listing(&manifest)?;
    for (file, expected) in &manifest.files {
        let actual = sha256_file(&dir.join(file))?;
        if &actual != expected {
            bail!("{file} has SHA-256 {actual}, the manifest says {expected} (truncated or corrupted)");
        }
    }
    Ok(manifest)
}

/// The files a checkpoint needs to resume; each must be listed (and so hashed) in its manifest.
pub const REQUIRED_FILES: [&str; 2] = [MODEL_FILE, OPTIMIZER_FILE];

/// A manifest vouches for a checkpoint only if it hashes every file the checkpoint needs (an
/// empty list would let any weights pass), and only files inside the checkpoint's own folder
/// (`../` or an absolute path would read, and bless, files elsewhere).
fn check_listing(manifest: &Manifest) -> anyhow::Result<()> {
    for file in manifest.files.keys() {
        let plain = !file.is_empty() && file != "." && file != ".." && !file.contains(['/', '\\', '\0']);
        if !plain {
            bail!("the manifest lists '{file}', which is not a plain file name inside the checkpoint folder");
        }
    }
    let missing: Vec<&str> = REQUIRED_FILES
        .into_iter()
        .chain(manifest.sources.values().map(String::as_str))
        .filter(|f| !manifest.files.contains_key(*f))
        .collect();
    if !missing.is_empty() {
        bail!(
            "the manifest does not list {} (every file of a checkpoint must be listed with its SHA-256)",
            missing.join(" and ")
        );
    }
    Ok(())
}

/// Reads a verified checkpoint's tensors.
pub fn read_tensors(dir: &Path, file: &str) -> anyhow::Result<Vec<(String, Tensor)>> {
    let path = dir.join(file);
    Tensor::read_safetensors(&path).with_context(|| format!("cannot read {}", path.display()))
}

pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buffer)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_failed_write_is_told_what_to_do_by_its_cause() {
        use std::io::{Error, ErrorKind};
        let failed = |kind: ErrorKind| anyhow::Error::new(Error::from(kind)).context("cannot write x");
        for kind in [
            ErrorKind::StorageFull,
            ErrorKind::QuotaExceeded,
            ErrorKind::FileTooLarge,
        ] {
            assert!(super::way_out_of_a_failed_write(&failed(kind)).contains("free some space"));
        }
        // An immutable or read-only folder: no space to free.
        let denied = super::write_error(
            std::path::Path::new("x"),
            tch::TchError::Torch("open failed, code: 1 (Operation not permitted)".into()),
        );
        assert!(super::way_out_of_a_failed_write(&denied).contains("make the run folder writable"));
        assert!(super::way_out_of_a_failed_write(&failed(ErrorKind::ReadOnlyFilesystem)).contains("writable"));
        assert!(super::way_out_of_a_failed_write(&anyhow::anyhow!("other")).contains("remove the cause"));
    }

    use super::*;

    fn manifest(files: &[&str]) -> Manifest {
        Manifest {
            format: 1,
            step: 1,
            epoch: 0,
            total_steps: 1,
            files: files.iter().map(|f| (f.to_string(), "0".repeat(64))).collect(),
            config: String::new(),
            sources: Default::default(),
            dataset: None,
            record: Default::default(),
        }
    }

    /// `cp -rL` of a run folder makes `last` a folder: saving and resuming go on, the copy is
    /// put aside and `last` is a link again.
    #[test]
    fn a_last_that_is_a_folder_is_put_aside_for_the_link() {
        let tmp = tempfile::tempdir().unwrap();
        let checkpoints = Checkpointer::new(tmp.path().join("checkpoints"), 2);
        let weights = || vec![("w".to_string(), Tensor::from_slice(&[1f32, 2.0]))];
        let save = |step: u64| {
            let manifest = Manifest { step, ..manifest(&[]) };
            checkpoints.save(&weights(), &weights(), &[], manifest).unwrap()
        };
        let first = save(1);
        let last = checkpoints.dir().join(LAST_LINK);
        fs::remove_file(&last).unwrap();
        fs::create_dir(&last).unwrap();
        fs::copy(first.join(MODEL_FILE), last.join(MODEL_FILE)).unwrap();
        let second = save(2);
        assert_eq!(fs::read_link(&last).unwrap(), Path::new("step-000000002"));
        assert!(checkpoints
            .dir()
            .join(DAMAGED_DIR)
            .join(LAST_LINK)
            .join(MODEL_FILE)
            .is_file());
        fs::remove_file(&last).unwrap();
        fs::create_dir(&last).unwrap();
        let resumed = checkpoints.resume_point(true).unwrap();
        assert_eq!(resumed.latest.unwrap().0, second);
        assert!(fs::symlink_metadata(&last).unwrap().is_symlink());
    }

    /// Where folders cannot be swapped, a checkpoint saved again is renamed aside while its
    /// replacement moves in. Killed in between, the next start puts it back (or drops it when
    /// the replacement made it), so the step never goes missing.
    #[test]
    fn a_checkpoint_replaced_without_a_swap_survives_a_kill_in_between() {
        let tmp = tempfile::tempdir().unwrap();
        let checkpoints = Checkpointer::new(tmp.path().to_path_buf(), 2);
        let weights = vec![("w".to_string(), Tensor::from_slice(&[1f32]))];
        let step = checkpoints.save(&weights, &weights, &[], manifest(&[])).unwrap();
        // Killed after the old folder went aside, before the new one moved in.
        let aside = replaced_name(&step);
        fs::rename(&step, &aside).unwrap();
        let unfinished = tmp.path().join(".step-000000001.tmp-1");
        fs::create_dir(&unfinished).unwrap();
        let resumed = checkpoints.resume_point(true).unwrap();
        assert_eq!(resumed.latest.unwrap().0, step);
        assert!(!aside.exists() && !unfinished.exists());
        assert!(
            resumed
                .warnings
                .iter()
                .any(|w| w.starts_with("restored .step-000000001.replaced-")),
            "{:?}",
            resumed.warnings
        );
        // The replacement itself, and a kill after the new one moved in: the old one goes.
        let newer = tmp.path().join(".step-000000001.tmp-2");
        fs::create_dir(&newer).unwrap();
        for file in fs::read_dir(&step).unwrap() {
            let file = file.unwrap();
            fs::copy(file.path(), newer.join(file.file_name())).unwrap();
        }
        fs::write(newer.join("mark"), "new").unwrap();
        replace_by_renames(&newer, &step).unwrap();
        assert!(step.join("mark").is_file() && !aside.exists() && !newer.exists());
        fs::create_dir(&aside).unwrap();
        let resumed = checkpoints.resume_point(true).unwrap();
        assert_eq!(resumed.latest.unwrap().0, step);
        assert!(!aside.exists());
    }

    /// An old checkpoint that cannot be removed (here: the name it is moved to for removal is
    /// taken by a folder that is not empty) costs the save nothing: the new checkpoint is saved
    /// and `last`, and a later save or the next start removes the rest.
    #[test]
    fn an_old_checkpoint_that_cannot_be_removed_does_not_fail_the_save() {
        let tmp = tempfile::tempdir().unwrap();
        let checkpoints = Checkpointer::new(tmp.path().to_path_buf(), 1);
        let weights = vec![("w".to_string(), Tensor::from_slice(&[1f32]))];
        let save = |step: u64| {
            let manifest = Manifest { step, ..manifest(&[]) };
            checkpoints.save(&weights, &weights, &[], manifest)
        };
        let first = save(1).unwrap();
        let blocking = tmp
            .path()
            .join(format!(".step-000000001{PRUNED}{}", std::process::id()));
        fs::create_dir_all(blocking.join("x")).unwrap();
        let second = save(2).expect("saved, though the old one stays");
        assert!(first.is_dir() && second.is_dir());
        assert_eq!(checkpoints.last(), Some(second.clone()));
        // The next start removes what a removal left; the next save prunes the old one.
        let resumed = checkpoints.resume_point(true).unwrap();
        assert_eq!(resumed.latest.unwrap().0, second);
        assert!(!blocking.exists(), "{:?}", resumed.warnings);
        let third = save(3).unwrap();
        assert_eq!(checkpoints.list(), [third]);
    }

    /// A save that fails says whether the run has a checkpoint left: none saved yet, the last
    /// good one, or, where the folder was removed under the run, that those saved are gone.
    #[test]
    fn a_failed_save_tells_checkpoints_removed_from_none_saved() {
        let tmp = tempfile::tempdir().unwrap();
        let checkpoints = Checkpointer::new(tmp.path().join("checkpoints"), 2);
        assert!(
            checkpoints.kept().starts_with("no checkpoint was saved in"),
            "{}",
            checkpoints.kept()
        );
        let weights = vec![("w".to_string(), Tensor::from_slice(&[1f32]))];
        let save = |step: u64| {
            let manifest = Manifest { step, ..manifest(&[]) };
            checkpoints.save(&weights, &weights, &[], manifest)
        };
        let first = save(1).unwrap();
        assert!(
            checkpoints.kept().ends_with(&first.display().to_string()),
            "{}",
            checkpoints.kept()
        );
        fs::remove_dir_all(tmp.path().join("checkpoints")).unwrap();
        assert!(checkpoints.kept().contains("are gone"), "{}", checkpoints.kept());
        // So for a run that resumed from one and lost it before saving its own.
        let resumed = Checkpointer::new(tmp.path().join("checkpoints"), 2);
        let again = Checkpointer::new(resumed.dir().to_path_buf(), 2);
        again
            .save(
                &weights,
                &weights,
                &[],
                Manifest {
                    step: 2,
                    ..manifest(&[])
                },
            )
            .unwrap();
        assert!(resumed.resume_point(true).unwrap().latest.is_some());
        fs::remove_dir_all(tmp.path().join("checkpoints")).unwrap();
        assert!(resumed.kept().contains("are gone"), "{}", resumed.kept());
    }

    /// A checkpoint of an earlier version has no record (or no curve cost in it): the time of a
    /// run resumed from it is counted from there, and that starting step is kept through later
    /// resumes, so that its images per second divide the steps its seconds cover.
    #[test]
    fn training_time_counts_from_the_first_step_it_covers() {
        let old: TrainingRecord = serde_json::from_str("{}").unwrap();
        let resumed = old.resumed_at(56);
        assert_eq!((resumed.train_seconds, resumed.timed_from_step), (0.0, Some(56)));
        let saved = TrainingRecord {
            train_seconds: 2.5,
            ..resumed
        };
        let json = serde_json::to_string(&saved).unwrap();
        let again: TrainingRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(again.resumed_at(60), saved, "{json}");
        let fresh = TrainingRecord::default().resumed_at(0);
        assert_eq!(fresh.timed_from_step, Some(0));
        // One with the training time but not the curve's cost (kept since): both count from
        // the resume, so that the curve's share is of the time it is counted against.
        let without_curve: TrainingRecord =
            serde_json::from_str(r#"{"train_seconds": 9.0, "timed_from_step": 0}"#).unwrap();
        let resumed = without_curve.resumed_at(40);
        assert_eq!(
            (resumed.train_seconds, resumed.timed_from_step, resumed.curve),
            (0.0, Some(40), Some(CurveCost::default()))
        );
    }

    /// A checkpoint file that cannot be read (here a link that loops, as root reads through any
    /// permission) stops the start and stays in place; a missing one is damage, moved aside.
    #[test]
    fn a_checkpoint_that_cannot_be_read_is_not_taken_for_damaged() {
        let tmp = tempfile::tempdir().unwrap();
        let checkpoints = Checkpointer::new(tmp.path().to_path_buf(), 3);
        let weights = vec![("w".to_string(), Tensor::from_slice(&[1f32]))];
        let save = |step: u64| {
            let manifest = Manifest { step, ..manifest(&[]) };
            checkpoints.save(&weights, &weights, &[], manifest).unwrap()
        };
        let (first, second) = (save(1), save(2));
        let model = second.join(MODEL_FILE);
        fs::remove_file(&model).unwrap();
        std::os::unix::fs::symlink(MODEL_FILE, &model).unwrap();
        let e = format!("{:#}", checkpoints.resume_point(true).unwrap_err());
        assert!(
            e.contains("cannot check checkpoint") && e.contains("step-000000002") && e.contains("left where it is"),
            "{e}"
        );
        assert!(fs::symlink_metadata(&model).is_ok() && !tmp.path().join(DAMAGED_DIR).exists());

        fs::remove_file(&model).unwrap();
        let resumed = checkpoints.resume_point(true).unwrap();
        assert_eq!(resumed.latest.unwrap().0, first);
        assert!(
            resumed.warnings[0].contains("skipping damaged checkpoint"),
            "{:?}",
            resumed.warnings
        );
    }

    /// A step folder whose manifest cannot be looked for, and a checkpoints folder that cannot
    /// be listed (unreadable: here links that loop, as root reads through any permission), stop
    /// the start: taken for no checkpoint, they would start the run over in its own folder. So
    /// does one the start cannot write into, before any step trains for no checkpoint.
    #[test]
    fn checkpoints_that_cannot_be_listed_stop_the_start() {
        let tmp = tempfile::tempdir().unwrap();
        let checkpoints = Checkpointer::new(tmp.path().join("checkpoints"), 3);
        let weights = vec![("w".to_string(), Tensor::from_slice(&[1f32]))];
        let save = |step: u64| {
            let manifest = Manifest { step, ..manifest(&[]) };
            checkpoints.save(&weights, &weights, &[], manifest).unwrap()
        };
        let (_, second) = (save(1), save(2));
        let manifest_file = second.join(MANIFEST_FILE);
        let kept = tmp.path().join("manifest.json.kept");
        fs::rename(&manifest_file, &kept).unwrap();
        std::os::unix::fs::symlink(MANIFEST_FILE, &manifest_file).unwrap();
        let e = format!("{:#}", checkpoints.resume_point(true).unwrap_err());
        assert!(
            e.contains("cannot check checkpoint") && e.contains("step-000000002") && e.contains("left where it is"),
            "{e}"
        );
        fs::remove_file(&manifest_file).unwrap();
        fs::rename(&kept, &manifest_file).unwrap();
        assert_eq!(checkpoints.resume_point(true).unwrap().latest.unwrap().0, second);

        let unlistable = tmp.path().join("loop");
        std::os::unix::fs::symlink("loop", &unlistable).unwrap();
        let e = format!(
            "{:#}",
            Checkpointer::new(unlistable, 3).resume_point(false).unwrap_err()
        );
        assert!(
            e.contains("cannot list the checkpoints folder") && e.contains("does not start over"),
            "{e}"
        );
        // A folder the start cannot write into (as root, where `.write-check` is a folder).
        fs::create_dir(checkpoints.dir().join(WRITE_CHECK_FILE)).unwrap();
        let e = format!("{:#}", checkpoints.resume_point(true).unwrap_err());
        assert!(
            e.contains("cannot write into the checkpoints folder") && e.contains("could save no checkpoint"),
            "{e}"
        );
        assert!(checkpoints.resume_point(false).is_ok(), "reading only needs no write");
        // Not there at all: a run that has saved nothing yet.
        let none = Checkpointer::new(tmp.path().join("none"), 3)
            .resume_point(false)
            .unwrap();
        assert!(none.latest.is_none());
    }

    #[test]
    fn a_manifest_must_list_every_needed_file_by_plain_name() {
        assert!(check_listing(&manifest(&[MODEL_FILE, OPTIMIZER_FILE])).is_ok());
        let e = check_listing(&manifest(&[])).unwrap_err().to_string();
        assert!(
            e.contains("does not list model.safetensors and optimizer.safetensors"),
            "{e}"
        );
        for bad in ["../../etc/hostname", "/etc/hostname", "..", "sub/model.safetensors", ""] {
            let e = check_listing(&manifest(&[MODEL_FILE, OPTIMIZER_FILE, bad]))
                .unwrap_err()
                .to_string();
            assert!(e.contains("not a plain file name"), "{bad}: {e}");
        }
    }
}
