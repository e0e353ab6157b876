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
}

/// Saves and finds checkpoints in `<run>/checkpoints`.
#[derive(Debug, Clone)]
pub struct Checkpointer {
    dir: PathBuf,
    keep_last: usize,
}

impl Checkpointer {
    pub fn new(dir: PathBuf, keep_last: usize) -> Self {
        Self {
            dir,
            keep_last: keep_last.max(1),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a checkpoint atomically and prunes old ones; returns its folder.
    pub fn save(
        &self,
        model: &[(String, Tensor)],
        optimizer: &[(String, Tensor)],
        mut manifest: Manifest,
    ) -> anyhow::Result<PathBuf> {
        fs::create_dir_all(&self.dir).with_context(|| format!("cannot create {}", self.dir.display()))?;
        let name = format!("step-{:09}", manifest.step);
        let final_dir = self.dir.join(&name);
        let tmp = self.dir.join(format!(".{name}.tmp-{}", std::process::id()));
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp)?;
        for (file, tensors) in [(MODEL_FILE, model), (OPTIMIZER_FILE, optimizer)] {
            let path = tmp.join(file);
            // safetensors stores row-major data: channels_last weights and states are copied.
            let tensors: Vec<(&str, Tensor)> = tensors
                .iter()
                .map(|(name, t)| (name.as_str(), t.to_device(tch::Device::Cpu).contiguous()))
                .collect();
            Tensor::write_safetensors(&tensors, &path).with_context(|| format!("cannot write {}", path.display()))?;
            manifest.files.insert(file.to_string(), sha256_file(&path)?);
        }
        manifest.format = 1;
        let manifest_path = tmp.join(MANIFEST_FILE);
        fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest)?)?;
        for file in [MODEL_FILE, OPTIMIZER_FILE, MANIFEST_FILE] {
            File::open(tmp.join(file))?.sync_all()?;
        }
        sync_dir(&tmp)?;
        if final_dir.exists() {
            fs::remove_dir_all(&final_dir)?;
        }
        fs::rename(&tmp, &final_dir).with_context(|| format!("cannot move checkpoint into {}", final_dir.display()))?;
        self.point_last_at(&name)?;
        sync_dir(&self.dir)?;
        self.prune()?;
        Ok(final_dir)
    }

    /// `checkpoints/last` -> the newest checkpoint (a symlink swapped in by rename).
    fn point_last_at(&self, name: &str) -> anyhow::Result<()> {
        let link = self.dir.join("last");
        let tmp = self.dir.join(format!(".last.tmp-{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(name, &tmp)?;
        fs::rename(&tmp, &link)?;
        Ok(())
    }

    /// Checkpoint folders, oldest first.
    pub fn list(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("step-"))
            .map(|e| e.path())
            .collect();
        dirs.sort();
        dirs
    }

    fn prune(&self) -> anyhow::Result<()> {
        let dirs = self.list();
        if dirs.len() > self.keep_last {
            for old in &dirs[..dirs.len() - self.keep_last] {
                fs::remove_dir_all(old).with_context(|| format!("cannot remove old checkpoint {}", old.display()))?;
            }
        }
        Ok(())
    }

    /// The newest checkpoint whose files match its manifest. Damaged newer ones are reported
    /// in the returned warnings and skipped.
    pub fn latest_valid(&self) -> (Option<(PathBuf, Manifest)>, Vec<String>) {
        let mut warnings = Vec::new();
        for dir in self.list().into_iter().rev() {
            match verify(&dir) {
                Ok(manifest) => return (Some((dir, manifest)), warnings),
                Err(e) => warnings.push(format!("skipping damaged checkpoint {}: {e:#}", dir.display())),
            }
        }
        (None, warnings)
    }
}

/// Reads a checkpoint folder's manifest and checks every file's SHA-256.
pub fn verify(dir: &Path) -> anyhow::Result<Manifest> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let text = fs::read(&manifest_path).with_context(|| format!("cannot read {}", manifest_path.display()))?;
    let manifest: Manifest = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a valid manifest", manifest_path.display()))?;
    for (file, expected) in &manifest.files {
        let actual = sha256_file(&dir.join(file))?;
        if &actual != expected {
            bail!("{file} has SHA-256 {actual}, the manifest says {expected} (truncated or corrupted)");
        }
    }
    Ok(manifest)
}

/// Reads a verified checkpoint's tensors.
pub fn read_tensors(dir: &Path, file: &str) -> anyhow::Result<Vec<(String, Tensor)>> {
    let path = dir.join(file);
    Tensor::read_safetensors(&path).with_context(|| format!("cannot read {}", path.display()))
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}
