//! `byol-run bench data <experiment>`: images/s of the input pipeline alone (the dataset's
//! decode + crop through the loader's prefetching workers, then the augmentation plugin's two
//! views on the run's device), by worker count, with the CPU time it took.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use byol::BuildContext;
use byol_data::BatchLoader;
use byol_train::Experiment;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Throughput of the input pipeline (loader and augmentation), by worker count.
    Data(DataArgs),
    /// Full training steps (both views, forward, backward, optimizer, EMA) on random views
    /// already on the device, optionally beside eager PyTorch doing the same step.
    Step(StepArgs),
    /// Training steps end to end (loader, augmentation, model step, the experiment's
    /// optimizer) against the model step alone on device-resident views, same batch.
    E2e(E2eArgs),
}

#[derive(Args)]
pub struct E2eArgs {
    /// The experiment TOML file.
    experiment: PathBuf,
    /// Override a key (value in TOML syntax).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Steps run before timing.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 20)]
    iters: usize,
}

#[derive(Args)]
pub struct StepArgs {
    /// The experiment TOML file ([backbone], [byol], run.device, run.precision, ...).
    experiment: PathBuf,
    /// Override a key: `--set run.precision="bf16"` (value in TOML syntax).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Images per view (default: schedule.batch_size).
    #[arg(long)]
    batch: Option<usize>,
    /// View side in pixels (default: the augmentation's image size).
    #[arg(long)]
    res: Option<i64>,
    /// Steps run before timing.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 15)]
    iters: usize,
    /// Also time tests/reference/bench_step_torch.py (eager PyTorch, same step, same settings)
    /// with this python (its torch and torchvision), and print the ratio.
    #[arg(long, value_name = "PYTHON")]
    against_torch: Option<PathBuf>,
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
    /// Also time an `image_folder` with `cache = "none"` at the same image size on this folder
    /// (the same images in another layout: the folder `byol-run shard` packed into the
    /// experiment's shards), loader alone, and print the ratio of images per CPU-second.
    #[arg(long, value_name = "DIR")]
    against_image_folder: Option<PathBuf>,
}

pub fn run(command: &BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Data(args) => data(args),
        BenchCommand::Step(args) => step(args),
        BenchCommand::E2e(args) => e2e(args),
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
    let device = byol_train::train::parse_device(&experiment.run.device)?;
    if experiment.run.threads > 0 {
        tch::set_num_threads(experiment.run.threads as i32);
    }
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
    let mut workers = args.workers.clone();
    if workers.is_empty() {
        workers = vec![1, cores];
        workers.dedup();
    }
    let [c, h, w] = splits.train.image_shape();
    let folder = match &args.against_image_folder {
        Some(dir) => {
            let config = byol_data::image_folder::ImageFolderConfig {
                train: dir.clone(),
                image_size: h as u32,
                cache: byol_data::image_folder::Cache::None,
                ..Default::default()
            };
            let (folder, _, _) = config
                .load_with_notes()
                .with_context(|| format!("--against-image-folder {}", dir.display()))?;
            Some(folder.train)
        }
        None => None,
    };
    println!(
        "bench data: {} | train split: {} images{} | batch {batch_size} | {} warm-up + {} timed batches | \
         device {device:?} | {cores} cores ({}) | libtorch threads {}",
        args.experiment.display(),
        splits.train.len(),
        match crops {
            Some(c) => format!(", two {0}x{0} crops each cut from the full image", c.size),
            None => format!(" of {c}x{h}x{w}"),
        },
        args.warmup,
        args.batches,
        cpu_model(),
        tch::get_num_threads()
    );
    println!(
        "{:>7}  {:>12}  {:>14}  {:>18}  {:>14}",
        "workers", "loader img/s", "img/CPU-second", "+augment img/s", "img/CPU-second"
    );
    for &w in &workers {
        let mut loader = BatchLoader::new(splits.train.clone(), batch_size, true, true, experiment.run.seed);
        loader.workers = w;
        loader.crops = crops;
        let alone = measure(&loader, device, args.warmup, args.batches, |_| {})?;
        let with_augment = if args.loader_only {
            None
        } else {
            tch::manual_seed(experiment.run.seed as i64);
            Some(measure(&loader, device, args.warmup, args.batches, |images| {
                let (v1, v2) = match crops {
                    Some(_) => augment
                        .two_views_from_crops(&images.narrow(1, 0, 3), &images.narrow(1, 3, 3))
                        .expect("the plugin that asks for loader crops takes them"),
                    None => augment.two_views(images),
                };
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
        if let Some(folder) = &folder {
            let mut loader = BatchLoader::new(folder.clone(), batch_size, true, true, experiment.run.seed);
            loader.workers = w;
            loader.crops = crops;
            let theirs = measure(&loader, device, args.warmup, args.batches, |_| {})?;
            let ratio = match (alone.cpu_seconds, theirs.cpu_seconds) {
                (Some(a), Some(b)) if a > 0.0 && b > 0.0 => {
                    format!("{:.2}", (alone.images as f64 / a) / (theirs.images as f64 / b))
                }
                _ => "n/a".into(),
            };
            println!(
                "{w:>7}  {:>12.0}  {:>14}  <- image_folder (cache = \"none\") on {}; images per CPU-second, \
                 the experiment's dataset / image_folder: {ratio}",
                theirs.per_second(),
                theirs.per_cpu_second(),
                args.against_image_folder.as_ref().expect("set").display(),
            );
        }
    }
    Ok(())
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

/// One line of `bench step`, as torch_reference.py reports it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct StepRate {
    name: String,
    img_per_s: f64,
    s_per_step: f64,
    peak_gib: Option<f64>,
}

/// A BYOL model with its optimizer, ready to take timed steps on views already on the device.
struct StepEngine {
    device: tch::Device,
    numerics: byol_train::train::StepNumerics,
    model: byol_train::train::Model,
    optimizer: Box<dyn byol_train::Optimizer>,
}

impl StepEngine {
    /// The experiment's model, as training builds it; `optimizer`: the experiment's own when None.
    fn new(experiment: &Experiment, optimizer: Option<&dyn byol_train::OptimizerSpec>) -> anyhow::Result<Self> {
        use byol_train::train::{parse_device, Model, StepNumerics, Weights};
        let run = &experiment.run;
        let device = parse_device(&run.device)?;
        if run.threads > 0 {
            tch::set_num_threads(run.threads as i32);
        }
        if let tch::Device::Cuda(i) = device {
            tch::Cuda::cudnn_set_benchmark(true);
            torch_ext::memory::reset_cuda_peak(i)?;
        }
        let numerics = StepNumerics::resolve(run.precision, run.memory_format, device)?;
        tch::manual_seed(run.seed as i64);
        let context = BuildContext::new(device, experiment.augment.image_size());
        let mut model = Model::build(experiment, &context, Weights::Initial)?;
        if numerics.channels_last {
            model = model.into_channels_last()?;
        }
        let optimizer = optimizer
            .unwrap_or(experiment.optimizer.as_ref())
            .build(model.parameters.clone(), &context)
            .context("building [optimizer]")?;
        Ok(Self {
            device,
            numerics,
            model,
            optimizer,
        })
    }

    /// One full step as training takes it (`StepNumerics`: forward under autocast, backward,
    /// unscaling in fp16, optimizer), then the EMA; fixed lr and tau.
    fn step(&mut self, view1: &tch::Tensor, view2: &tch::Tensor) -> anyhow::Result<()> {
        self.optimizer.zero_grad();
        self.numerics.forward_backward(
            self.device,
            &self.model.byol,
            view1.shallow_clone(),
            view2.shallow_clone(),
            1.0,
        )?;
        self.numerics
            .optimizer_step(&self.model.parameters, self.optimizer.as_mut(), 0.2);
        self.model.byol.update_target_with_tau(0.996);
        Ok(())
    }

    fn sync(&self) {
        if let tch::Device::Cuda(i) = self.device {
            tch::Cuda::synchronize(i as i64);
        }
    }

    /// Times `iters` calls of `step` after `warmup` ones: (seconds per step, peak GiB on CUDA).
    fn time(
        &mut self,
        warmup: usize,
        iters: usize,
        mut step: impl FnMut(&mut Self) -> anyhow::Result<()>,
    ) -> anyhow::Result<(f64, Option<f64>)> {
        for _ in 0..warmup {
            step(self)?;
        }
        self.sync();
        let started = Instant::now();
        for _ in 0..iters {
            step(self)?;
        }
        self.sync();
        let seconds = started.elapsed().as_secs_f64() / iters as f64;
        let peak = match self.device {
            tch::Device::Cuda(i) => {
                Some(torch_ext::memory::cuda_memory(i)?.peak_allocated as f64 / (1u64 << 30) as f64)
            }
            _ => None,
        };
        Ok((seconds, peak))
    }
}

/// The backbone's type and CIFAR stem, and the precision, as the reference script names them.
fn describe(experiment: &Experiment) -> anyhow::Result<(String, bool, i64, String)> {
    let resolved: toml::Table = toml::from_str(&experiment.to_toml()?)?;
    let backbone = &resolved["backbone"];
    let arch = backbone.get("type").and_then(|v| v.as_str()).unwrap_or("?").to_string();
    let cifar_stem = backbone.get("cifar_stem").and_then(|v| v.as_bool()).unwrap_or(false);
    let width = backbone.get("width").and_then(|v| v.as_integer()).unwrap_or(64);
    Ok((
        arch,
        cifar_stem,
        width,
        format!("{:?}", experiment.run.precision).to_lowercase(),
    ))
}

fn step(args: &StepArgs) -> anyhow::Result<()> {
    use tch::{Kind, Tensor};

    if args.iters == 0 {
        bail!("--iters must be at least 1");
    }
    let experiment = Experiment::load(&args.experiment, &args.overrides)?;
    let batch = args.batch.unwrap_or(experiment.schedule.batch_size) as i64;
    let res = args.res.unwrap_or(experiment.augment.image_size());
    // The reference's optimizer, whatever the experiment trains with: the comparison is of
    // the step, one to one.
    let sgd: Box<dyn byol_train::OptimizerSpec> = toml::from_str(
        "type = \"sgd\"\nlr = 0.2\nmomentum = 0.9\nweight_decay = 1.5e-6\nexclude_bias_and_norm = false",
    )
    .context("building the benchmark's SGD optimizer")?;
    let mut engine = StepEngine::new(&experiment, Some(sgd.as_ref()))?;
    let device = engine.device;
    let view1 = Tensor::randn([batch, 3, res, res], (Kind::Float, device));
    let view2 = Tensor::randn([batch, 3, res, res], (Kind::Float, device));
    let (seconds, peak_gib) = engine.time(args.warmup, args.iters, |e| e.step(&view1, &view2))?;
    let (arch, cifar_stem, width, precision) = describe(&experiment)?;
    let byol_config = &experiment.byol;
    let numerics = &engine.numerics;
    let ours = StepRate {
        name: format!(
            "byol-rs {arch}{} bs{batch} res{res} {precision} cl={} concat={}",
            if cifar_stem { "-cifar" } else { "" },
            numerics.channels_last,
            byol_config.concat_views
        ),
        img_per_s: batch as f64 / seconds,
        s_per_step: seconds,
        peak_gib,
    };
    println!("{}", serde_json::to_string(&ours)?);
    let Some(python) = &args.against_torch else {
        return Ok(());
    };
    if !arch.starts_with("resnet") || width != 64 {
        bail!("--against-torch compares torchvision ResNets at width 64; this experiment's backbone is {arch} (width {width})");
    }
    // The repository's copy: from the working directory (a checkout on another machine), else
    // from where this binary was built.
    let relative = PathBuf::from("tests/reference/bench_step_torch.py");
    let script = if relative.is_file() {
        relative
    } else {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/reference/bench_step_torch.py")
    };
    let mut command = std::process::Command::new(python);
    command.arg(&script).args([
        "--arch",
        &arch,
        "--batch",
        &batch.to_string(),
        "--res",
        &res.to_string(),
        "--hidden",
        &byol_config.hidden_dim.to_string(),
        "--proj",
        &byol_config.projection_dim.to_string(),
        "--precision",
        &precision,
        "--device",
        if engine.device.is_cuda() { "cuda" } else { "cpu" },
        "--threads",
        &tch::get_num_threads().to_string(),
        "--warmup",
        &args.warmup.to_string(),
        "--iters",
        &args.iters.to_string(),
    ]);
    for (flag, on) in [
        ("--cifar-stem", cifar_stem),
        ("--channels-last", numerics.channels_last),
        ("--concat-views", byol_config.concat_views),
    ] {
        if on {
            command.arg(flag);
        }
    }
    let output = command
        .output()
        .with_context(|| format!("running {} {}", python.display(), script.display()))?;
    if !output.status.success() {
        bail!(
            "the PyTorch reference failed ({}):\n{}",
            script.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let theirs: StepRate =
        serde_json::from_str(line).with_context(|| format!("reading the reference's JSON line {line:?}"))?;
    println!("{}", serde_json::to_string(&theirs)?);
    println!(
        "ratio byol-rs / torch: {:.3} (img/s {:.1} vs {:.1}){}",
        ours.img_per_s / theirs.img_per_s,
        ours.img_per_s,
        theirs.img_per_s,
        match (ours.peak_gib, theirs.peak_gib) {
            (Some(a), Some(b)) => format!(", peak memory {a:.2} vs {b:.2} GiB"),
            _ => String::new(),
        }
    );
    Ok(())
}

fn e2e(args: &E2eArgs) -> anyhow::Result<()> {
    use byol_train::train::{training_loader, two_views};

    if args.iters == 0 {
        bail!("--iters must be at least 1");
    }
    let experiment = Experiment::load(&args.experiment, &args.overrides)?;
    if experiment.schedule.accumulate > 1 {
        bail!("bench e2e times whole batches: set schedule.accumulate = 1 (--set schedule.accumulate=1)");
    }
    let res = experiment.augment.image_size();
    let mut engine = StepEngine::new(&experiment, None)?;
    let device = engine.device;
    let context = BuildContext::new(device, res);
    let splits = experiment.dataset.build(&context).context("building [dataset]")?;
    let augment = experiment.augment.build(&context).context("building [augment]")?;
    let loader = training_loader(&experiment, &splits, device, 0, 1)?;
    let batch = loader.batch_size;
    let (arch, cifar_stem, _, precision) = describe(&experiment)?;
    let name = |what: &str| {
        format!(
            "byol-rs {what} {arch}{} bs{batch} res{res} {precision} cl={} loader={}",
            if cifar_stem { "-cifar" } else { "" },
            engine.numerics.channels_last,
            if loader.is_on_device() {
                "on-device"
            } else if loader.crops.is_some() {
                "crops"
            } else {
                "workers"
            }
        )
    };
    let (e2e_name, step_name) = (name("e2e"), name("step"));

    // Batches epoch after epoch, as training draws them.
    let mut epoch = 0;
    let mut batches = loader.prefetch(epoch, 0, device);
    let (e2e_seconds, _) = engine.time(args.warmup, args.iters, |engine| {
        let batch = loop {
            match batches.next() {
                Some(batch) => break batch.context("loading a batch")?,
                None => {
                    epoch += 1;
                    batches = loader.prefetch(epoch, 0, device);
                }
            }
        };
        let (view1, view2) = two_views(augment.as_ref(), &loader, &batch.images)?;
        engine.step(&view1, &view2)
    })?;
    drop(batches);
    let view1 = tch::Tensor::randn([batch as i64, 3, res, res], (tch::Kind::Float, device));
    let view2 = tch::Tensor::randn([batch as i64, 3, res, res], (tch::Kind::Float, device));
    let (step_seconds, peak_gib) = engine.time(args.warmup, args.iters, |e| e.step(&view1, &view2))?;
    for (name, seconds) in [(e2e_name, e2e_seconds), (step_name, step_seconds)] {
        let rate = StepRate {
            name,
            img_per_s: batch as f64 / seconds,
            s_per_step: seconds,
            peak_gib,
        };
        println!("{}", serde_json::to_string(&rate)?);
    }
    let ratio = step_seconds / e2e_seconds;
    println!(
        "ratio e2e / model step: {ratio:.3} ({})",
        if ratio >= 0.9 {
            "the input path keeps up"
        } else {
            "the input path slows training: more loader workers, or a dataset kept in memory"
        }
    );
    Ok(())
}
