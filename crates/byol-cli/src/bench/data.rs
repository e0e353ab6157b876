//! `byol-run bench data <experiment>`: images/s of the input pipeline alone (the dataset's
//! decode + crop through the loader's prefetching workers, then the augmentation plugin's two
//! views on the run's device), by worker count, with the CPU time it took.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};

use byol::{Augment, BuildContext};
use byol_data::{BatchLoader, Dataset};

use super::{cpu_seconds, device_index, machine, plugin_type, Common, Report};

#[derive(Args)]
pub struct DataArgs {
    #[command(flatten)]
    common: Common,
    /// Worker (decoder thread) counts to measure, e.g. `1,2,4` (0: all cores; default: 1 and all
    /// cores).
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
    /// Also time an `image_folder` with `cache = "none"` at the same image size on this folder
    /// (the same images in another layout: the folder `byol-run shard` packed into the
    /// experiment's shards), loader alone, and print the ratio of images per CPU-second.
    #[arg(long, value_name = "DIR")]
    against_image_folder: Option<PathBuf>,
}

/// The least CPU time a comparison of images per CPU-second is printed for.
const MIN_CPU_SECONDS: f64 = 0.5;

struct Measurement {
    images: usize,
    seconds: f64,
    cpu_seconds: Option<f64>,
}

impl Measurement {
    fn per_second(&self) -> f64 {
        self.images as f64 / self.seconds.max(1e-9)
    }

    fn per_cpu_second(&self) -> Option<f64> {
        self.cpu_seconds.filter(|&c| c > 0.0).map(|c| self.images as f64 / c)
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

/// [`measure`] with both augmented views made from each batch, as training makes them.
fn measure_augmented(
    loader: &BatchLoader,
    augment: &dyn Augment,
    device: tch::Device,
    args: &DataArgs,
) -> anyhow::Result<Measurement> {
    measure(loader, device, args.warmup, args.batches, |images| {
        let (v1, v2) = match loader.crops {
            Some(_) => augment
                .two_views_from_crops(&images.narrow(1, 0, 3), &images.narrow(1, 3, 3))
                .expect("the plugin that asks for loader crops takes them"),
            None => augment.two_views(images),
        };
        // Make the work happen before the next batch on asynchronous devices.
        let _ = (v1.sum(tch::Kind::Float).double_value(&[]), v2);
    })
}

/// The image folder `--against-image-folder` names, at the experiment's image size.
fn image_folder(dir: &std::path::Path, size: usize) -> anyhow::Result<std::sync::Arc<dyn Dataset>> {
    let config = byol_data::image_folder::ImageFolderConfig {
        train: dir.to_path_buf(),
        image_size: size as u32,
        cache: byol_data::image_folder::Cache::None,
        ..Default::default()
    };
    let (folder, _, _) = config
        .load_with_notes()
        .with_context(|| format!("--against-image-folder {}", dir.display()))?;
    Ok(folder.train)
}

pub fn run(args: &DataArgs) -> anyhow::Result<()> {
    if args.batches == 0 {
        bail!("--batches must be at least 1");
    }
    let experiment = args.common.experiment()?;
    let device = byol_train::train::parse_device(&experiment.run.device)?;
    byol_train::train::set_cpu_threads(experiment.run.threads);
    let context = BuildContext::new(device, experiment.augment.image_size());
    let splits = experiment.dataset.build(&context).context("building [dataset]")?;
    let augment = experiment.augment.build(&context).context("building [augment]")?;
    let batch_size = experiment.schedule.batch_size;
    if batch_size == 0 || batch_size > splits.train.len() {
        bail!(
            "schedule.batch_size = {batch_size} must be between 1 and the {} training images",
            splits.train.len()
        );
    }
    let crops = experiment.augment.loader_crops();
    if crops.is_some() && !splits.train.reads_crops() {
        bail!("augment.crop_on = \"loader\" needs an image_folder dataset with cache = \"none\"");
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // 0 is every core, as in the experiment's dataset.workers: the table shows how many.
    let mut workers: Vec<usize> = args
        .workers
        .iter()
        .map(|&w| byol::dataset::resolve_threads(w))
        .collect();
    if workers.is_empty() {
        workers = vec![1, cores];
        workers.dedup();
    }
    let [c, h, w] = splits.train.image_shape();
    let folder = match &args.against_image_folder {
        Some(dir) => Some(image_folder(dir, h)?),
        None => None,
    };
    let mut report = Report::new("data");
    report.about("experiment", args.common.experiment.display().to_string());
    report.about("machine", machine(device));
    report.about("device", byol_train::train::device_name(device));
    report.about("train images", splits.train.len());
    report.about(
        "images",
        match crops {
            Some(c) => format!("two {0}x{0} crops each cut from the full image", c.size),
            None => format!("{c}x{h}x{w}"),
        },
    );
    report.about("batch", batch_size);
    report.about("timed batches", args.batches);
    report.about("libtorch threads", tch::get_num_threads());
    let dataset_type = plugin_type(&experiment, "dataset")?;
    for &w in &workers {
        let mut loader = BatchLoader::new(splits.train.clone(), batch_size, true, true, experiment.run.seed);
        loader.workers = w;
        loader.crops = crops;
        let alone = measure(&loader, device, args.warmup, args.batches, |_| {})?;
        let with_augment = if args.loader_only {
            None
        } else {
            tch::manual_seed(experiment.run.seed as i64);
            Some(measure_augmented(&loader, augment.as_ref(), device, args)?)
        };
        report.row(row(&dataset_type, w, &alone, with_augment.as_ref()));
        if let Some(folder) = &folder {
            let mut loader = BatchLoader::new(folder.clone(), batch_size, true, true, experiment.run.seed);
            loader.workers = w;
            loader.crops = crops;
            let theirs = measure(&loader, device, args.warmup, args.batches, |_| {})?;
            report.row(row("image_folder (cache = none)", w, &theirs, None));
            let too_short = [&alone, &theirs]
                .iter()
                .any(|m| m.cpu_seconds.is_none_or(|c| c < MIN_CPU_SECONDS));
            if too_short {
                report.note(format!(
                    "{w} worker(s): under {MIN_CPU_SECONDS} CPU-seconds measured, too little to compare \
                     images per CPU-second: raise --batches"
                ));
            } else if let (Some(a), Some(b)) = (alone.per_cpu_second(), theirs.per_cpu_second()) {
                report.note(format!(
                    "{w} worker(s): images per CPU-second, {dataset_type} / image_folder on {}: {:.2}",
                    args.against_image_folder.as_ref().expect("set").display(),
                    a / b
                ));
            }
        }
    }
    report.print(args.common.json);
    Ok(())
}

fn row(
    dataset: &str,
    workers: usize,
    loader: &Measurement,
    augment: Option<&Measurement>,
) -> Vec<(&'static str, Value)> {
    vec![
        ("dataset", json!(dataset)),
        ("workers", json!(workers)),
        ("loader img/s", json!(loader.per_second())),
        ("loader img/CPU-s", json!(loader.per_cpu_second())),
        ("+augment img/s", json!(augment.map(Measurement::per_second))),
        (
            "+augment img/CPU-s",
            json!(augment.and_then(Measurement::per_cpu_second)),
        ),
    ]
}
