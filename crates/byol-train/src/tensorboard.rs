//! TensorBoard scalars through tensorboard-rs, kept behind this one module: the crate is
//! unmaintained and some of its methods panic (`unimplemented!()`), so nothing else touches it.

use std::path::{Path, PathBuf};

use tensorboard_rs::summary_writer::SummaryWriter;

/// Scalar logger for one process. Data is complete on disk once the logger is dropped.
pub struct ScalarLogger {
    writer: SummaryWriter,
    dir: PathBuf,
}

impl std::fmt::Debug for ScalarLogger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScalarLogger").field("dir", &self.dir).finish()
    }
}

impl ScalarLogger {
    /// Opens a new event file in `dir`. tensorboard-rs names files by the second, so two writers
    /// opened in the same folder within one second would share (and corrupt) a file: wait out the
    /// second when an event file from it exists (a resume right after a stop).
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let now = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        };
        let second = now();
        let taken = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().contains(&format!(".{second}.")));
        if taken {
            std::thread::sleep(std::time::Duration::from_millis(1100));
        }
        Ok(Self {
            writer: SummaryWriter::new(dir),
            dir: dir.to_path_buf(),
        })
    }

    pub fn scalar(&mut self, tag: &str, value: f64, step: u64) {
        self.writer.add_scalar(tag, value as f32, step as usize);
    }

    pub fn flush(&mut self) {
        self.writer.flush();
    }
}
