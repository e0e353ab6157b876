//! `byol-run bench step <experiment>`: full BYOL training steps on random views already on the
//! device, beside the same step in eager PyTorch (`--against-torch`), in one table.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};
use tch::{Kind, Tensor};

use byol::BuildContext;
use byol_train::Experiment;

use super::{machine, Common, Report};

/// The reference script, relative to the repository root.
const REFERENCE_SCRIPT: &str = "tests/reference/bench_step_torch.py";
/// What the reference script imports.
const REFERENCE_PACKAGES: &str = "torch and torchvision (pip install torch torchvision)";

#[derive(Args)]
pub struct StepArgs {
    #[command(flatten)]
    common: Common,
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
    /// Also time the same step in eager PyTorch (the repository's
    /// tests/reference/bench_step_torch.py) with this python, which needs torch and torchvision.
    #[arg(long, value_name = "PYTHON")]
    against_torch: Option<PathBuf>,
    /// The reference script, when this is not run from a checkout of the repository.
    #[arg(long, value_name = "PATH", requires = "against_torch")]
    reference_script: Option<PathBuf>,
}

/// A BYOL model with its optimizer, ready to take timed steps on views already on the device.
pub(super) struct StepEngine {
    pub device: tch::Device,
    pub numerics: byol_train::train::StepNumerics,
    model: byol_train::train::Model,
    optimizer: Box<dyn byol_train::Optimizer>,
    /// The step recorded as a CUDA graph (`run.cuda_graphs`), as training runs it.
    graph: Option<byol_train::train::GraphedStep>,
}

impl StepEngine {
    /// The experiment's model, as training builds it; `optimizer`: the experiment's own when None.
    pub fn new(experiment: &Experiment, optimizer: Option<&dyn byol_train::OptimizerSpec>) -> anyhow::Result<Self> {
        use byol_train::train::{parse_device, Model, StepNumerics, Weights};
        let run = &experiment.run;
        let device = parse_device(&run.device)?;
        byol_train::train::set_cpu_threads(run.threads);
        byol_train::train::prepare_for_steps(device, run.tf32)?;
        let numerics = StepNumerics::resolve(run.precision, run.memory_format, device)?;
        let graph = byol_train::train::graphed_step(experiment, device, false)?;
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
            graph,
        })
    }

    /// One full step as training takes it (`StepNumerics`: forward under autocast, backward,
    /// unscaling in fp16, optimizer), then the EMA; fixed lr and tau.
    pub fn step(&mut self, view1: &Tensor, view2: &Tensor) -> anyhow::Result<()> {
        if let Some(graph) = &mut self.graph {
            let views = (view1.shallow_clone(), view2.shallow_clone());
            let (model, optimizer) = (&self.model, self.optimizer.as_mut());
            graph.step(self.device, &self.numerics, model, optimizer, views, 0.2, 0.996)?;
            return Ok(());
        }
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

    /// Times `iters` calls of `step` after `warmup` ones (see [`time_steps`]).
    pub fn time(
        &mut self,
        warmup: usize,
        iters: usize,
        mut step: impl FnMut(&mut Self) -> anyhow::Result<()>,
    ) -> anyhow::Result<Timing> {
        let device = self.device;
        time_steps(device, warmup, iters, || step(self))
    }

    pub fn layout(&self) -> &'static str {
        if self.numerics.channels_last {
            "channels_last"
        } else {
            "contiguous"
        }
    }
}

fn synchronize(device: tch::Device) {
    if let tch::Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Times `iters` calls of `step` on `device` after `warmup` ones; on CUDA also the peak memory
/// (from the first warm-up step: what is allocated then counts, the model among it) and the
/// host-device synchronizations of the timed steps.
pub(super) fn time_steps(
    device: tch::Device,
    warmup: usize,
    iters: usize,
    mut step: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Timing> {
    if let tch::Device::Cuda(i) = device {
        torch_ext::memory::reset_cuda_peak(i)?;
    }
    for _ in 0..warmup {
        step()?;
    }
    synchronize(device);
    let counter = match device {
        tch::Device::Cuda(_) => Some(torch_ext::cuda_sync::SyncCounter::start()?),
        _ => None,
    };
    // One read that must count, so that a counter that sees nothing reports nothing
    // rather than zero.
    let counted_before = counter.as_ref().and_then(|c| {
        let _ = Tensor::zeros([], (Kind::Float, device)).double_value(&[]);
        Some(c.count()).filter(|&n| n > 0)
    });
    let started = Instant::now();
    for _ in 0..iters {
        step()?;
    }
    // Read before the closing synchronize, which would count too.
    let syncs = counter
        .as_ref()
        .zip(counted_before)
        .map(|(c, before)| (c.count() - before) as f64 / iters as f64);
    drop(counter);
    synchronize(device);
    let seconds = started.elapsed().as_secs_f64() / iters as f64;
    let peak_gib = match device {
        tch::Device::Cuda(i) => Some(torch_ext::memory::cuda_memory(i)?.peak_allocated as f64 / (1u64 << 30) as f64),
        _ => None,
    };
    Ok(Timing {
        seconds,
        peak_gib,
        syncs_per_step: syncs,
    })
}

/// What [`time_steps`] measured.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timing {
    pub seconds: f64,
    /// CUDA only.
    pub peak_gib: Option<f64>,
    /// Host-device synchronizations per timed step (CUDA only): each makes the host wait for the
    /// device before it can queue more work.
    pub syncs_per_step: Option<f64>,
}

/// One row of the step table.
pub(super) fn step_row(who: &str, batch: i64, timing: Timing) -> Vec<(&'static str, Value)> {
    vec![
        ("who", json!(who)),
        ("img/s", json!(batch as f64 / timing.seconds)),
        ("ms/step", json!(timing.seconds * 1e3)),
        ("peak GiB", json!(timing.peak_gib)),
        ("host syncs/step", json!(timing.syncs_per_step)),
    ]
}

/// The backbone's type, CIFAR stem and width, as the reference script names them.
fn backbone(experiment: &Experiment) -> anyhow::Result<(String, bool, i64)> {
    let resolved: toml::Table = toml::from_str(&experiment.to_toml()?)?;
    let backbone = &resolved["backbone"];
    let arch = backbone.get("type").and_then(|v| v.as_str()).unwrap_or("?").to_string();
    let cifar_stem = backbone.get("cifar_stem").and_then(|v| v.as_bool()).unwrap_or(false);
    let width = backbone.get("width").and_then(|v| v.as_integer()).unwrap_or(64);
    Ok((arch, cifar_stem, width))
}

pub fn run(args: &StepArgs) -> anyhow::Result<()> {
    if args.iters == 0 {
        bail!("--iters must be at least 1");
    }
    let experiment = args.common.experiment()?;
    let (arch, cifar_stem, width) = backbone(&experiment)?;
    // Checked before timing ours: the reference builds torchvision's own ResNets.
    if args.against_torch.is_some() && (!arch.starts_with("resnet") || width != 64) {
        let what = match arch.starts_with("resnet") {
            true => format!("{arch} of width {width}"),
            false => arch.clone(),
        };
        bail!(
            "--against-torch times torchvision's ResNets (width 64) and this experiment's backbone is \
             {what}: set a ResNet backbone of width 64 (as experiments/cifar10-resnet18.toml and \
             resnet50.toml do), or leave --against-torch out to time ours alone"
        );
    }
    // Found, and its python tried, before timing ours, which takes minutes on a large network.
    let script = match &args.against_torch {
        Some(python) => {
            let script = reference_script(args.reference_script.as_deref())?;
            check_reference_python(python)?;
            Some(script)
        }
        None => None,
    };
    let batch = args.batch.unwrap_or(experiment.schedule.batch_size) as i64;
    let res = args.res.unwrap_or(experiment.augment.image_size());
    // One image per view leaves batch norm without statistics (NaN, as in PyTorch).
    if batch < 2 {
        bail!("--batch {batch}: a step needs at least 2 images per view (batch norm's statistics)");
    }
    if res < 1 {
        bail!("--res {res}: the views need at least 1 pixel a side");
    }
    // The reference's optimizer, whatever the experiment trains with: the comparison is of
    // the step, one to one.
    let sgd: Box<dyn byol_train::OptimizerSpec> = toml::from_str(
        "type = \"sgd\"\nlr = 0.2\nmomentum = 0.9\nweight_decay = 1.5e-6\nexclude_bias_and_norm = false",
    )
    .context("building the benchmark's SGD optimizer")?;
    let mut engine = StepEngine::new(&experiment, Some(sgd.as_ref()))?;
    let device = engine.device;
    // libtorch's errors (views too small for the network, out of memory) come as panics.
    let ours = byol_train::train::guarded(|| {
        let view1 = Tensor::randn([batch, 3, res, res], (Kind::Float, device));
        let view2 = Tensor::randn([batch, 3, res, res], (Kind::Float, device));
        engine.time(args.warmup, args.iters, |e| e.step(&view1, &view2))
    })
    .map_err(|panic| {
        let message = byol_train::train::panic_message(panic.as_ref());
        anyhow::anyhow!(
            "a step of batch {batch} at {res} px failed: {}",
            message.lines().next().unwrap_or_default()
        )
    })??;
    let precision = format!("{:?}", experiment.run.precision).to_lowercase();

    let mut report = Report::new("step");
    report.about("experiment", args.common.experiment.display().to_string());
    report.about("machine", machine(device));
    report.about("device", byol_train::train::device_name(device));
    report.about(
        "backbone",
        format!("{arch}{}", if cifar_stem { " (CIFAR stem)" } else { "" }),
    );
    report.about("precision", precision.clone());
    report.about("batch", batch);
    report.about("res", res);
    report.about("layout", engine.layout());
    report.about("concat_views", experiment.byol.concat_views);
    report.about("threads", tch::get_num_threads());
    report.row(step_row("byol-rs", batch, ours));
    if let (Some(python), Some(script)) = (&args.against_torch, &script) {
        let reference = Reference {
            arch: &arch,
            cifar_stem,
            batch,
            res,
            precision: &precision,
        };
        let theirs = reference.time(python, script, &engine, &experiment, args)?;
        report.row(step_row("eager PyTorch", batch, theirs));
        let memory = match (ours.peak_gib, theirs.peak_gib) {
            (Some(a), Some(b)) => format!(", peak memory {:.2}x ({a:.2} vs {b:.2} GiB)", a / b),
            _ => String::new(),
        };
        report.note(format!(
            "byol-rs / eager PyTorch: {:.3}x img/s{memory}",
            theirs.seconds / ours.seconds
        ));
    }
    report.print(args.common.json);
    Ok(())
}

/// `tests/reference/bench_step_torch.py`: the path given, else found from the working folder or
/// from this executable (`target/release/byol-run` in a checkout) up to the repository root.
fn reference_script(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        if !path.is_file() {
            bail!("--reference-script {} does not exist", path.display());
        }
        return Ok(path.to_path_buf());
    }
    let starts = [
        std::env::current_dir().ok(),
        std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf)),
    ];
    starts
        .into_iter()
        .flatten()
        .flat_map(|start| {
            start
                .ancestors()
                .map(|dir| dir.join(REFERENCE_SCRIPT))
                .collect::<Vec<_>>()
        })
        .find(|candidate| candidate.is_file())
        .with_context(|| {
            format!(
                "--against-torch: cannot find {REFERENCE_SCRIPT} from the working folder or from this \
                 executable; run from a checkout of the repository or give --reference-script PATH \
                 (the script needs {REFERENCE_PACKAGES})"
            )
        })
}

/// Whether `python` runs and imports what the reference script needs.
fn check_reference_python(python: &Path) -> anyhow::Result<()> {
    let output = std::process::Command::new(python)
        .args(["-c", "import torch, torchvision"])
        .output()
        .with_context(|| {
            format!(
                "--against-torch: cannot run {} (a python with {REFERENCE_PACKAGES})",
                python.display()
            )
        })?;
    if !output.status.success() {
        bail!(
            "--against-torch: {} cannot import what the reference needs ({REFERENCE_PACKAGES}):\n{}",
            python.display(),
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    Ok(())
}

/// The same step in eager PyTorch, as tests/reference/bench_step_torch.py takes it.
struct Reference<'a> {
    arch: &'a str,
    cifar_stem: bool,
    batch: i64,
    res: i64,
    precision: &'a str,
}

impl Reference<'_> {
    /// Runs the script with `python`; its timing as [`StepEngine::time`] reports ours.
    fn time(
        &self,
        python: &Path,
        script: &Path,
        engine: &StepEngine,
        experiment: &Experiment,
        args: &StepArgs,
    ) -> anyhow::Result<Timing> {
        let byol = &experiment.byol;
        let mut command = std::process::Command::new(python);
        command.arg(script).args([
            "--arch",
            self.arch,
            "--batch",
            &self.batch.to_string(),
            "--res",
            &self.res.to_string(),
            "--hidden",
            &byol.hidden_dim.to_string(),
            "--proj",
            &byol.projection_dim.to_string(),
            "--precision",
            self.precision,
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
            ("--cifar-stem", self.cifar_stem),
            ("--channels-last", engine.numerics.channels_last),
            ("--concat-views", byol.concat_views),
        ] {
            if on {
                command.arg(flag);
            }
        }
        let output = command.output().with_context(|| {
            format!(
                "--against-torch: cannot run {} (a python with {REFERENCE_PACKAGES})",
                python.display()
            )
        })?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("ModuleNotFoundError") {
            bail!(
                "--against-torch: {} lacks a package the reference needs: it needs {REFERENCE_PACKAGES}\n{stderr}",
                python.display()
            );
        }
        if !output.status.success() {
            bail!("the PyTorch reference failed ({}):\n{stderr}", script.display());
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.lines().last().unwrap_or_default();
        let rate: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("reading the reference's JSON line {line:?}"))?;
        let seconds = rate["s_per_step"]
            .as_f64()
            .with_context(|| format!("the reference's line has no s_per_step: {line}"))?;
        Ok(Timing {
            seconds,
            peak_gib: rate["peak_gib"].as_f64(),
            syncs_per_step: rate["syncs_per_step"].as_f64(),
        })
    }
}
