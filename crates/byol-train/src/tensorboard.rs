//! TensorBoard event files, written here directly: a TFRecord file of `Event` protocol buffers
//! (scalars as `simple_value`, images as PNG, text and HParams-plugin summaries), the format
//! TensorBoard's `EventAccumulator` and its HParams and text dashboards read.
//!
//! We used to go through tensorboard-rs, which panics when a write fails (a full disk), in its
//! destructor too, where a panic during unwinding aborts the process. Logging is a side channel:
//! here a write error prints one warning and turns the logger off; training, and its checkpoints
//! (which report their own write errors), go on. Nothing in this module can panic on I/O.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The folder of a run's TensorBoard event files, in the run folder.
pub const LOG_DIR: &str = "tensorboard";

use tch::{Device, Kind, Tensor};

/// The seconds in the name of the newest event file in `dir` (`events.out.tfevents.<s>.*`).
fn newest_event_file_seconds(dir: &Path) -> Option<u64> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            name.strip_prefix("events.out.tfevents.")?
                .split('.')
                .next()?
                .parse()
                .ok()
        })
        .max()
}

/// Scalar and image logger for one process. Every record is written when logged.
pub struct ScalarLogger {
    /// None: a logger that writes nothing (the other processes of a data-parallel run, or after
    /// a write error).
    file: Option<File>,
    path: PathBuf,
}

impl std::fmt::Debug for ScalarLogger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScalarLogger").field("path", &self.path).finish()
    }
}

impl ScalarLogger {
    /// Opens a new event file in `dir`. Its name sorts after the files of earlier starts (a
    /// resumed run), which TensorBoard reads in name order: the seconds in it are the clock's,
    /// or one past the newest file's where the clock is behind (a run resumed on another node),
    /// else TensorBoard would read the resume's purge before the steps it purges.
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let seconds = match newest_event_file_seconds(dir) {
            Some(newest) if newest >= now.as_secs() => newest + 1,
            _ => now.as_secs(),
        };
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let host = match host.trim() {
            "" => "localhost",
            name => name,
        };
        let path = dir.join(format!(
            "events.out.tfevents.{seconds}.{host}.{:06}.{}",
            now.subsec_micros(),
            std::process::id()
        ));
        let file = File::options().write(true).create_new(true).open(&path)?;
        let mut logger = Self { file: Some(file), path };
        let mut header = Vec::new();
        event_header(&mut header, now.as_secs_f64(), 0);
        proto::string(&mut header, 3, "brain.Event:2"); // file_version
        logger.write(&header);
        match logger.file {
            Some(_) => Ok(logger),
            None => Err(std::io::Error::other(format!("cannot write {}", logger.path.display()))),
        }
    }

    /// A logger that writes nothing, for the processes of a data-parallel run other than rank 0.
    pub fn disabled() -> Self {
        Self {
            file: None,
            path: PathBuf::new(),
        }
    }

    pub fn scalar(&mut self, tag: &str, value: f64, step: u64) {
        let mut summary_value = Vec::new();
        proto::string(&mut summary_value, 1, tag);
        proto::float(&mut summary_value, 2, value as f32); // simple_value
        self.write_summary_value(&summary_value, step);
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
        let mut png = Vec::new();
        image::ImageEncoder::write_image(
            image::codecs::png::PngEncoder::new(&mut png),
            &hwc,
            width as u32,
            height as u32,
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| anyhow::anyhow!("TensorBoard image '{tag}': cannot encode PNG: {e}"))?;
        let mut image = Vec::new();
        proto::varint_field(&mut image, 1, height as u64);
        proto::varint_field(&mut image, 2, width as u64);
        proto::varint_field(&mut image, 3, 3); // colorspace: RGB
        proto::bytes(&mut image, 4, &png);
        let mut summary_value = Vec::new();
        proto::string(&mut summary_value, 1, tag);
        proto::bytes(&mut summary_value, 4, &image);
        self.write_summary_value(&summary_value, step);
        Ok(())
    }

    /// Records are written as they are logged; kept for callers that mark a point.
    /// Markdown text under `tag` (TensorBoard's text plugin: a scalar string tensor).
    pub fn text(&mut self, tag: &str, markdown: &str, step: u64) {
        let mut tensor = Vec::new();
        proto::varint_field(&mut tensor, 1, DT_STRING);
        proto::bytes(&mut tensor, 2, &[]); // tensor_shape: a scalar
        proto::bytes(&mut tensor, 8, markdown.as_bytes()); // string_val
        let mut summary_value = Vec::new();
        proto::string(&mut summary_value, 1, tag);
        proto::bytes(&mut summary_value, 8, &tensor);
        proto::bytes(&mut summary_value, 9, &plugin_metadata("text", &[], DATA_CLASS_TENSOR));
        self.write_summary_value(&summary_value, step);
    }

    /// Marks where this file's run starts: TensorBoard drops what earlier files of the folder
    /// logged at `step` or later (a `SessionLog` START event, what PyTorch's
    /// `SummaryWriter(purge_step=step)` writes), so the steps that a resumed run trains again,
    /// logged once by the process that stopped past its last checkpoint, are not shown twice.
    pub fn restart_at(&mut self, step: u64) {
        let mut session_log = Vec::new();
        proto::varint_field(&mut session_log, 1, 1); // status: START
        let mut event = Vec::new();
        event_header(&mut event, unix_seconds(), step);
        proto::bytes(&mut event, 7, &session_log); // session_log
        self.write(&event);
    }

    /// The run's hyperparameters, for TensorBoard's HParams dashboard: one session whose
    /// parameters are `hparams`; its metrics are the run's scalars (their last values).
    pub fn session_start(&mut self, hparams: &[(String, HParamValue)]) {
        let mut start = Vec::new();
        for (name, value) in hparams {
            let mut entry = Vec::new();
            proto::string(&mut entry, 1, name);
            proto::bytes(&mut entry, 2, &value.encode());
            proto::bytes(&mut start, 1, &entry); // map<string, Value> hparams
        }
        proto::double(&mut start, 5, unix_seconds()); // start_time_secs
        self.hparams_summary("_hparams_/session_start_info", 3, &start);
    }

    /// Marks the HParams session finished (STATUS_SUCCESS). An interrupted run writes none: it
    /// is still to be resumed, and TensorBoard shows it as unfinished.
    pub fn session_end(&mut self) {
        let mut end = Vec::new();
        proto::varint_field(&mut end, 1, 1); // status: STATUS_SUCCESS
        proto::double(&mut end, 2, unix_seconds()); // end_time_secs
        self.hparams_summary("_hparams_/session_end_info", 4, &end);
    }

    /// A `Summary.Value` carrying only `HParamsPluginData` (version 0, `data` field `field`).
    fn hparams_summary(&mut self, tag: &str, field: u32, data: &[u8]) {
        let mut plugin_data = Vec::new();
        proto::varint_field(&mut plugin_data, 1, 0); // version
        proto::bytes(&mut plugin_data, field, data);
        let mut summary_value = Vec::new();
        proto::string(&mut summary_value, 1, tag);
        proto::bytes(&mut summary_value, 9, &plugin_metadata("hparams", &plugin_data, 0));
        self.write_summary_value(&summary_value, 0);
    }

    pub fn flush(&mut self) {
        if let Some(file) = &mut self.file {
            let _ = file.flush();
        }
    }

    /// Wraps one `Summary.Value` into an `Event` at `step` and writes it.
    fn write_summary_value(&mut self, summary_value: &[u8], step: u64) {
        if self.file.is_none() {
            return;
        }
        let mut summary = Vec::new();
        proto::bytes(&mut summary, 1, summary_value);
        let mut event = Vec::new();
        event_header(&mut event, unix_seconds(), step);
        proto::bytes(&mut event, 5, &summary);
        self.write(&event);
    }

    /// Writes one TFRecord; on an error, warns once and stops logging.
    fn write(&mut self, data: &[u8]) {
        let Some(file) = &mut self.file else { return };
        if let Err(e) = file.write_all(&tf_record(data)) {
            byol::eprint_line!(
                "warning: TensorBoard logging stopped: cannot write {}: {e} (training goes on)",
                self.path.display()
            );
            self.file = None;
        }
    }
}

/// `TensorProto.dtype` of strings, and `SummaryMetadata.data_class` of tensors.
const DT_STRING: u64 = 7;
const DATA_CLASS_TENSOR: u64 = 2;

/// A hyperparameter's value (`google.protobuf.Value`).
#[derive(Debug, Clone, PartialEq)]
pub enum HParamValue {
    Number(f64),
    Text(String),
    Bool(bool),
}

impl HParamValue {
    /// A TOML value as a hyperparameter; None for tables and arrays.
    pub fn from_toml(value: &toml::Value) -> Option<Self> {
        Some(match value {
            toml::Value::Integer(i) => Self::Number(*i as f64),
            toml::Value::Float(f) => Self::Number(*f),
            toml::Value::Boolean(b) => Self::Bool(*b),
            toml::Value::String(s) => Self::Text(s.clone()),
            _ => return None,
        })
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Self::Number(x) => proto::double(&mut out, 2, *x),
            Self::Text(s) => proto::string(&mut out, 3, s),
            Self::Bool(b) => proto::varint_field(&mut out, 4, u64::from(*b)),
        }
        out
    }
}

/// `SummaryMetadata { plugin_data { plugin_name, content }, data_class }`.
fn plugin_metadata(plugin: &str, content: &[u8], data_class: u64) -> Vec<u8> {
    let mut plugin_data = Vec::new();
    proto::string(&mut plugin_data, 1, plugin);
    if !content.is_empty() {
        proto::bytes(&mut plugin_data, 2, content);
    }
    let mut metadata = Vec::new();
    proto::bytes(&mut metadata, 1, &plugin_data);
    if data_class != 0 {
        proto::varint_field(&mut metadata, 4, data_class);
    }
    metadata
}

fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// `Event.wall_time` (field 1) and `Event.step` (field 2).
fn event_header(out: &mut Vec<u8>, wall_time: f64, step: u64) {
    proto::key(out, 1, 1);
    out.extend_from_slice(&wall_time.to_le_bytes());
    proto::varint_field(out, 2, step);
}

/// One TFRecord: length, its masked CRC-32C, the data, the data's masked CRC-32C.
fn tf_record(data: &[u8]) -> Vec<u8> {
    let length = (data.len() as u64).to_le_bytes();
    let mut record = Vec::with_capacity(data.len() + 16);
    record.extend_from_slice(&length);
    record.extend_from_slice(&masked_crc32c(&length).to_le_bytes());
    record.extend_from_slice(data);
    record.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    record
}

fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// CRC-32C (Castagnoli), bytewise with a table built at compile time.
fn crc32c(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut crc = i as u32;
            let mut bit = 0;
            while bit < 8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0x82f6_3b78
                } else {
                    crc >> 1
                };
                bit += 1;
            }
            table[i] = crc;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &byte in data {
        crc = TABLE[((crc ^ byte as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// The few protocol-buffer encodings an `Event` needs.
mod proto {
    pub fn varint(out: &mut Vec<u8>, mut value: u64) {
        while value >= 0x80 {
            out.push((value as u8) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }

    pub fn key(out: &mut Vec<u8>, field: u32, wire_type: u8) {
        varint(out, (u64::from(field) << 3) | u64::from(wire_type));
    }

    pub fn varint_field(out: &mut Vec<u8>, field: u32, value: u64) {
        key(out, field, 0);
        varint(out, value);
    }

    pub fn double(out: &mut Vec<u8>, field: u32, value: f64) {
        key(out, field, 1);
        out.extend_from_slice(&value.to_le_bytes());
    }

    pub fn float(out: &mut Vec<u8>, field: u32, value: f32) {
        key(out, field, 5);
        out.extend_from_slice(&value.to_le_bytes());
    }

    pub fn bytes(out: &mut Vec<u8>, field: u32, data: &[u8]) {
        key(out, field, 2);
        varint(out, data.len() as u64);
        out.extend_from_slice(data);
    }

    pub fn string(out: &mut Vec<u8>, field: u32, text: &str) {
        bytes(out, field, text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    /// /dev/full fails every write with ENOSPC, as a full disk does: a warning, no panic, and
    /// the logger keeps accepting calls (and drops) quietly.
    #[test]
    fn a_write_error_turns_logging_off_without_a_panic() {
        let mut logger = ScalarLogger {
            file: Some(File::options().write(true).open("/dev/full").unwrap()),
            path: PathBuf::from("/dev/full"),
        };
        logger.scalar("train/loss", 1.0, 1);
        assert!(logger.file.is_none(), "off after the first error");
        logger.scalar("train/loss", 1.0, 2);
        let image = Tensor::zeros([3, 2, 2], (Kind::Uint8, Device::Cpu));
        logger.image("views", &image, 0).unwrap();
        logger.flush();
    }

    /// A start whose clock is behind the newest event file's (another node) still names its file
    /// after it; with the clock ahead, the clock's seconds.
    #[test]
    fn a_new_event_file_sorts_after_the_earlier_ones() {
        let dir = tempfile::tempdir().unwrap();
        let name = |logger: &ScalarLogger| logger.path.file_name().unwrap().to_string_lossy().into_owned();
        let first = name(&ScalarLogger::create(dir.path()).unwrap());
        let ahead = "events.out.tfevents.4000000000.elsewhere.000000.1";
        std::fs::write(dir.path().join(ahead), b"").unwrap();
        let next = name(&ScalarLogger::create(dir.path()).unwrap());
        assert!(next.starts_with("events.out.tfevents.4000000001."), "{next}");
        assert!(
            first.as_str() < ahead && ahead < next.as_str(),
            "{first} {ahead} {next}"
        );
    }
}
