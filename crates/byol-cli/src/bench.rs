//! `byol-run bench data <experiment>`: images/s of the input pipeline alone (the dataset's
//! decode + crop through the loader's prefetching workers, then the augmentation plugin's two
//! views on the run's device), by worker count, with the CPU time it took.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use byol_data::BatchLoader;
use byol_train::Experiment;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Throughput of the input pipeline (loader and augmentation), by worker count.
    Data(DataArgs),
}

#[derive(Args)]
pub struct DataArgs {
    /// The experiment TOML file ([dataset], [augment], schedule.batch_size, run.device).
    experiment: PathBuf,
    /// Override a key: `--set dataset.cache="none"` (value in TOML syntax).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Worker (decoder thread) counts to measure, e.g. `1,2,4` (default: 1 and all cores).
    #[arg(long, value_delimiter = ',')]
    workers: Vec<usize>,
    /// Batches timed per measurement (after the warm-up ones).
    #[arg(long, default_value_t = 20)]
    batches: usize,
    /// Batches run before timing starts.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Measure the loader alone, without the augmentation.
    #[arg(long)]
    loader_only: bool,
}

pub fn run(command: &BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Data(args) => data(args),
    }
}

/// CPU seconds used by this process so far, all threads (Linux; None elsewhere).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesized command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ
}

struct Measurement {
    images: usize,
    seconds: f64,
    cpu_seconds: Option<f64>,
}

impl Measurement {
    fn per_second(&self) -> f64 {
        self.images as f64 / self.seconds.max(1e-9)
    }

    fn per_cpu_second(&self) -> String {
        match self.cpu_seconds {
            Some(c) if c > 0.0 => format!("{:.0}", self.images as f64 / c),
            _ => "n/a".into(),
        }
    }
}

/// Runs `warmup + batches` batches through the loader's prefetcher (epoch after epoch), applying
/// `consume` to each; times the last `batches`.
fn measure(
    loader: &BatchLoader,
    device: tch::Device,
    warmup: usize,
    batches: usize,
    mut consume: impl FnMut(&tch::Tensor),
) -> anyhow::Result<Measurement> {
    let mut seen = 0;
    let mut images = 0;
    let now = || (Instant::now(), cpu_seconds());
    let mut start = (warmup == 0).then(now);
    let mut epoch = 0;
    'epochs: loop {
        for batch in loader.prefetch(epoch, 0, device) {
            let batch = batch.context("loading a batch")?;
            consume(&batch.images);
            if seen >= warmup {
                images += batch.indices.len();
            }
            seen += 1;
            if seen == warmup {
                start = Some(now());
            }
            if seen == warmup + batches {
                break 'epochs;
            }
        }
        epoch += 1;
    }
    if device.is_cuda() {
        tch::Cuda::synchronize(device_index(device));
    }
    let (started, cpu_start) = start.expect("at least one timed batch");
    Ok(Measurement {
        images,
        seconds: started.elapsed().as_secs_f64(),
        cpu_seconds: cpu_start.zip(cpu_seconds()).map(|(a, b)| b - a),
    })
}

fn device_index(device: tch::Device) -> i64 {
    match device {
        tch::Device::Cuda(i) => i as i64,
        _ => 0,
    }
}

fn data(args: &DataArgs) -> anyhow::Result<()> {
    if args.batches == 0 {
        bail!("--batches must be at least 1");
    }
    let experiment = Experiment::load(&args.experiment, &args.overrides)?;
    let device = byol_train::runner::parse_device(&experiment.run.device)?;
    if experiment.run.threads > 0 {
        tch::set_num_threads(experiment.run.threads as i32);
    }
    let splits = experiment.dataset.build().context("building [dataset]")?;
    let augment = experiment.augment.build().context("building [augment]")?;
    let batch_size = experiment.schedule.batch_size;
    if batch_size == 0 || batch_size > splits.train.len() {
        bail!(
            "schedule.batch_size = {batch_size} must be between 1 and the {} training images",
            splits.train.len()
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut workers = args.workers.clone();
    if workers.is_empty() {
        workers = vec![1, cores];
        workers.dedup();
    }
    let [c, h, w] = splits.train.image_shape();
    println!(
        "bench data: {} | train split: {} images of {c}x{h}x{w} | batch {batch_size} | {} warm-up + {} timed batches | \
         device {device:?} | {cores} cores | libtorch threads {}",
        args.experiment.display(),
        splits.train.len(),
        args.warmup,
        args.batches,
        tch::get_num_threads()
    );
    println!(
        "{:>7}  {:>12}  {:>14}  {:>18}  {:>14}",
        "workers", "loader img/s", "img/CPU-second", "+augment img/s", "img/CPU-second"
    );
    for &w in &workers {
        let mut loader = BatchLoader::new(splits.train.clone(), batch_size, true, true, experiment.run.seed);
        loader.workers = w;
        let alone = measure(&loader, device, args.warmup, args.batches, |_| {})?;
        let with_augment = if args.loader_only {
            None
        } else {
            tch::manual_seed(experiment.run.seed as i64);
            Some(measure(&loader, device, args.warmup, args.batches, |images| {
                let (v1, v2) = augment.two_views(images);
                // Make the work happen before the next batch on asynchronous devices.
                let _ = (v1.sum(tch::Kind::Float).double_value(&[]), v2);
            })?)
        };
        println!(
            "{w:>7}  {:>12.0}  {:>14}  {:>18}  {:>14}",
            alone.per_second(),
            alone.per_cpu_second(),
            with_augment
                .as_ref()
                .map_or("-".into(), |m| format!("{:.0}", m.per_second())),
            with_augment.as_ref().map_or("-".into(), |m| m.per_cpu_second()),
        );
    }
    Ok(())
}
