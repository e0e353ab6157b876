//! `byol-run bench`: throughput of the input pipeline (`data`), of the training step against
//! eager PyTorch (`step`), of training end to end against the step alone (`e2e`), the cost
//! of the kNN curve (`curve`), and the optimizer update per tensor against fused (`optim`). Each
//! prints one table, or with `--json` one JSON object.

mod curve;
mod data;
mod e2e;
mod optim;
mod report;
mod step;

use std::path::PathBuf;

use clap::{Args, Subcommand};

pub use report::Report;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Throughput of the input pipeline (loader and augmentation), by worker count.
    Data(data::DataArgs),
    /// Full training steps (both views, forward, backward, optimizer, EMA) on random views
    /// already on the device, optionally beside eager PyTorch doing the same step.
    Step(step::StepArgs),
    /// Training steps end to end (loader, augmentation, model step, the experiment's
    /// optimizer) against the model step alone on device-resident views, same batch.
    E2e(e2e::E2eArgs),
    /// Training time with the kNN curve (evaluations during training) against without.
    Curve(curve::CurveArgs),
    /// The optimizer step per tensor against fused over flat buffers, on the experiment's
    /// network and on many small tensors.
    Optim(optim::OptimArgs),
}

/// What every bench takes: the experiment, `--set` overrides, and the output format.
#[derive(Args)]
pub struct Common {
    /// The experiment TOML file.
    experiment: PathBuf,
    /// Override a key: `--set run.precision="bf16"` (value in TOML syntax).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// One JSON object (the table's rows keyed by column, plus what was measured on what)
    /// instead of the table.
    #[arg(long)]
    json: bool,
}

impl Common {
    fn experiment(&self) -> anyhow::Result<byol_train::Experiment> {
        byol_train::Experiment::load(&self.experiment, &self.overrides)
    }
}

pub fn run(command: &BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Data(args) => data::run(args),
        BenchCommand::Step(args) => step::run(args),
        BenchCommand::E2e(args) => e2e::run(args),
        BenchCommand::Curve(args) => curve::run(args),
        BenchCommand::Optim(args) => optim::run(args),
    }
}

/// CPU seconds used by this process so far, all threads, to the microsecond (getrusage; the
/// clock ticks of /proc/self/stat are 10 ms, which a short measurement cannot resolve).
fn cpu_seconds() -> Option<f64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: initialized by the successful call above.
    let usage = unsafe { usage.assume_init() };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    Some(seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

/// The CPU's model name (`lscpu`'s "Model name"), from /proc/cpuinfo.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_else(|| "CPU model unknown".into())
}

/// What runs the bench: the GPU's name (from nvidia-smi) on CUDA, the CPU model and core count
/// otherwise.
fn machine(device: tch::Device) -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = format!("{} ({cores} cores)", cpu_model());
    let tch::Device::Cuda(index) = device else {
        return cpu;
    };
    let name = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader", "-i", &index.to_string()])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| format!("CUDA device {index}"));
    format!("{name}, {cpu}")
}

fn device_index(device: tch::Device) -> i64 {
    match device {
        tch::Device::Cuda(i) => i as i64,
        _ => 0,
    }
}

/// The `type` of the experiment's `[table]` (`resnet18`, `image_folder`, ...).
fn plugin_type(experiment: &byol_train::Experiment, table: &str) -> anyhow::Result<String> {
    let resolved: toml::Table = toml::from_str(&experiment.to_toml()?)?;
    Ok(resolved
        .get(table)
        .and_then(|t| t.get("type"))
        .and_then(toml::Value::as_str)
        .unwrap_or("?")
        .to_string())
}
