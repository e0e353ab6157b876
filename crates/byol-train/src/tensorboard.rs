//! TensorBoard scalars and images through tensorboard-rs, kept behind this one module: the crate
//! is unmaintained and some of its methods panic (`unimplemented!()`), so nothing else touches it.
//!
//! Its `add_image` wants interleaved HWC RGB bytes with dims `[3, W, H]` and then records width
//! and height swapped in the summary; we build the summary with its `summary::image` and fix the
//! two fields before writing it through a `FileWriter` (what `SummaryWriter` wraps).

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};
use tensorboard_rs::summary;
use tensorboard_rs::summary_writer::FileWriter;

/// Scalar logger for one process. Data is complete on disk once the logger is dropped.
pub struct ScalarLogger {
    /// None: a logger that writes nothing (the other processes of a data-parallel run).
    writer: Option<FileWriter>,
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
            writer: Some(FileWriter::new(dir)),
            dir: dir.to_path_buf(),
        })
    }

    /// A logger that writes nothing, for the processes of a data-parallel run other than rank 0.
    pub fn disabled() -> Self {
        Self {
            writer: None,
            dir: PathBuf::new(),
        }
    }

    pub fn scalar(&mut self, tag: &str, value: f64, step: u64) {
        if let Some(writer) = &mut self.writer {
            writer.add_summary(summary::scalar(tag, value as f32), step as usize);
        }
    }

    /// Logs an image: uint8 `[3, H, W]` (RGB) or `[1, H, W]` (gray), on any device.
    pub fn image(&mut self, tag: &str, chw_uint8: &Tensor, step: u64) -> anyhow::Result<()> {
        let dims = chw_uint8.size();
        if chw_uint8.kind() != Kind::Uint8 || dims.len() != 3 || !(dims[0] == 1 || dims[0] == 3) {
            anyhow::bail!(
                "TensorBoard image '{tag}' must be uint8 [3, H, W] or [1, H, W], got {:?} {dims:?}",
                chw_uint8.kind()
            );
        }
        let (height, width) = (dims[1], dims[2]);
        if height == 0 || width == 0 {
            anyhow::bail!("TensorBoard image '{tag}' is empty ({dims:?})");
        }
        let rgb = chw_uint8.to_device(Device::Cpu).expand([3, height, width], false);
        let hwc = Vec::<u8>::try_from(rgb.permute([1, 2, 0]).contiguous().view([-1]))
            .map_err(|e| anyhow::anyhow!("TensorBoard image '{tag}': {e}"))?;
        // tensorboard-rs: an RgbImage of width dims[1] and height dims[2], header fields swapped.
        let mut image = summary::image(tag, &hwc, &[3, width as usize, height as usize]);
        for value in image.mut_value().iter_mut() {
            let header = value.mut_image();
            header.set_width(width as i32);
            header.set_height(height as i32);
        }
        if let Some(writer) = &mut self.writer {
            writer.add_summary(image, step as usize);
        }
        Ok(())
    }

    pub fn flush(&mut self) {
        if let Some(writer) = &mut self.writer {
            writer.flush();
        }
    }
}
