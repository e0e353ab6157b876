//! The training loop: data -> two views -> BYOL loss -> optimizer -> target EMA, with logging,
//! checkpoints, resume and the kNN monitor around it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tch::{nn::VarStore, Device, Tensor};

use byol::{Augment, Byol};
use byol_data::{BatchLoader, Dataset};

use crate::checkpoint::{self, Checkpointer, Manifest};
use crate::knn::{knn_accuracy, KnnAccuracy};
use crate::optimizer::{NamedParameter, Optimizer};
use crate::schedule::lr_at;
use crate::tensorboard::ScalarLogger;
use crate::Experiment;

/// How to run, beyond what the experiment says.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Run folder (default: `<run.output_dir>/<run.name>`).
    pub run_dir: Option<PathBuf>,
    /// Print nothing but warnings.
    pub quiet: bool,
}

/// What a finished run reports (also saved as `summary.json` in the run folder).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    pub run_dir: PathBuf,
    pub device: String,
    pub steps: u64,
    pub epochs: u64,
    pub resumed_from_step: Option<u64>,
    pub final_loss: Option<f64>,
    pub knn_before: Option<KnnAccuracy>,
    pub knn_after: Option<KnnAccuracy>,
    pub train_seconds: f64,
    pub images_per_second: f64,
    pub checkpoint: PathBuf,
}

/// Resolves `run.device`.
pub fn parse_device(spec: &str) -> anyhow::Result<Device> {
    Ok(match spec {
        "auto" => Device::cuda_if_available(),
        "cpu" => Device::Cpu,
        "cuda" => {
            if !tch::Cuda::is_available() {
                bail!("run.device = \"cuda\" but CUDA is not available here (`byol-run doctor` tells why); use \"auto\" or \"cpu\"");
            }
            Device::Cuda(0)
        }
        other => match other.strip_prefix("cuda:").and_then(|i| i.parse::<usize>().ok()) {
            Some(i) if (i as i64) < tch::Cuda::device_count() => Device::Cuda(i),
            Some(i) => bail!(
                "run.device = \"{other}\": there are {} CUDA devices, no cuda:{i}",
                tch::Cuda::device_count()
            ),
            None => bail!("run.device = \"{other}\" is not one of \"auto\", \"cpu\", \"cuda\", \"cuda:N\""),
        },
    })
}

/// The online network's trainable parameters, by state_dict name.
pub fn online_parameters(vs: &VarStore) -> Vec<NamedParameter> {
    let mut params: Vec<NamedParameter> = vs
        .variables()
        .into_iter()
        .filter(|(name, t)| name.starts_with("online.") && t.requires_grad())
        .map(|(name, tensor)| NamedParameter { name, tensor })
        .collect();
    params.sort_by(|a, b| a.name.cmp(&b.name));
    params
}

/// Every variable of the store (online, target, buffers), sorted, on the CPU.
pub fn model_state(vs: &VarStore) -> Vec<(String, Tensor)> {
    byol::state_dict::to_cpu_sorted(&vs.variables())
}

/// Copies saved variables into the store in place (views such as the EMA's flat buffers stay intact).
pub fn load_model_state(vs: &VarStore, saved: &[(String, Tensor)]) -> anyhow::Result<()> {
    let variables = vs.variables();
    for (name, tensor) in saved {
        let target = variables
            .get(name)
            .with_context(|| format!("checkpoint holds '{name}', which this model lacks"))?;
        tch::no_grad(|| target.shallow_clone().copy_(tensor));
    }
    if saved.len() != variables.len() {
        bail!(
            "checkpoint holds {} variables, the model has {}",
            saved.len(),
            variables.len()
        );
    }
    Ok(())
}

/// Embeddings of a whole split (deterministic eval transform) and its labels.
pub fn embed_split(
    byol: &Byol,
    augment: &dyn Augment,
    data: &Arc<dyn Dataset>,
    batch: usize,
    device: Device,
) -> anyhow::Result<(Tensor, Tensor)> {
    let loader = BatchLoader::new(data.clone(), batch, false, false, 0);
    let mut features = Vec::new();
    let mut labels = Vec::new();
    for indices in loader.epoch_indices(0) {
        let (images, y) = loader.load(&indices, device)?;
        features.push(byol.embed(&augment.eval_view(&images)));
        labels.push(y);
    }
    Ok((Tensor::cat(&features, 0), Tensor::cat(&labels, 0)))
}

/// Trains `experiment` to the end (resuming from the run folder's newest valid checkpoint).
pub fn train(experiment: &Experiment, options: &RunOptions) -> anyhow::Result<RunSummary> {
    let say = |line: String| {
        if !options.quiet {
            println!("{line}");
        }
    };
    let run_dir = options
        .run_dir
        .clone()
        .unwrap_or_else(|| experiment.run.output_dir.join(experiment.name()));
    std::fs::create_dir_all(&run_dir).with_context(|| format!("cannot create run folder {}", run_dir.display()))?;
    let device = parse_device(&experiment.run.device)?;
    if experiment.run.threads > 0 {
        tch::set_num_threads(experiment.run.threads as i32);
    }
    let seed = experiment.run.seed;
    tch::manual_seed(seed as i64);

    let splits = experiment.dataset.build().context("building [dataset]")?;
    let augment = experiment.augment.build().context("building [augment]")?;
    let image_size = experiment.augment.image_size();
    let vs = VarStore::new(device);
    let byol = Byol::new(
        &vs,
        experiment.backbone.as_ref(),
        image_size,
        &experiment.byol.embedding_layer,
        &experiment.byol,
    )
    .context("building the BYOL networks ([backbone], [byol])")?;
    let mut optimizer = experiment.optimizer.build(online_parameters(&vs));

    let schedule = &experiment.schedule;
    if schedule.batch_size == 0 || schedule.batch_size > splits.train.len() {
        bail!(
            "schedule.batch_size = {} must be between 1 and the {} training images",
            schedule.batch_size,
            splits.train.len()
        );
    }
    let loader = BatchLoader::new(splits.train.clone(), schedule.batch_size, true, true, seed);
    let steps_per_epoch = loader.batches_per_epoch() as u64;
    let total_steps = steps_per_epoch * schedule.epochs;
    let warmup_steps = (schedule.warmup_epochs * steps_per_epoch as f64).round() as u64;
    let batch_scale = if schedule.scale_lr_by_batch {
        schedule.batch_size as f64 / 256.0
    } else {
        1.0
    };
    let peak_lr = experiment.optimizer.lr() * batch_scale;
    let final_lr = peak_lr * schedule.final_lr_fraction;

    let config_toml = experiment.to_toml()?;
    std::fs::write(run_dir.join("config.toml"), &config_toml).context("writing the resolved config")?;
    let checkpointer = Checkpointer::new(run_dir.join("checkpoints"), experiment.checkpoint.keep_last);

    // Resume from the newest intact checkpoint, if any.
    let (latest, warnings) = checkpointer.latest_valid();
    for w in warnings {
        eprintln!("warning: {w}");
    }
    let mut step = 0u64;
    let mut resumed_from_step = None;
    if let Some((dir, manifest)) = latest {
        load_model_state(&vs, &checkpoint::read_tensors(&dir, checkpoint::MODEL_FILE)?)
            .with_context(|| format!("resuming from {}", dir.display()))?;
        optimizer
            .load_state(&checkpoint::read_tensors(&dir, checkpoint::OPTIMIZER_FILE)?)
            .map_err(|e| anyhow::anyhow!("resuming from {}: {e}", dir.display()))?;
        step = manifest.step;
        resumed_from_step = Some(step);
        say(format!(
            "resuming from {} (step {step} of {total_steps})",
            dir.display()
        ));
    }

    let knn = |byol: &Byol| -> anyhow::Result<Option<KnnAccuracy>> {
        let Some(test) = &splits.test else {
            return Ok(None);
        };
        let eval = &experiment.eval;
        let (bank, bank_labels) = embed_split(byol, augment.as_ref(), &splits.train, eval.batch_size, device)?;
        let (queries, labels) = embed_split(byol, augment.as_ref(), test, eval.batch_size, device)?;
        let classes = splits.train.classes().len() as i64;
        Ok(Some(knn_accuracy(
            &queries,
            &labels,
            &bank,
            &bank_labels,
            classes,
            eval.knn_k as i64,
            eval.knn_temperature,
        )))
    };

    let mut logger = ScalarLogger::create(&run_dir.join("tensorboard")).context("opening the TensorBoard log")?;
    let knn_before = if experiment.eval.before_training && step == 0 {
        let acc = knn(&byol)?;
        if let Some(a) = acc {
            say(format!(
                "kNN before training: top-1 {:.1}%  top-5 {:.1}%",
                a.top1 * 100.0,
                a.top5 * 100.0
            ));
            logger.scalar("knn/top1", a.top1, 0);
            logger.scalar("knn/top5", a.top5, 0);
        }
        acc
    } else {
        None
    };

    say(format!(
        "training {} on {device:?}: {} images, batch {}, {} epochs = {total_steps} steps",
        experiment.name(),
        splits.train.len(),
        schedule.batch_size,
        schedule.epochs
    ));
    let started = Instant::now();
    let start_step = step;
    let mut final_loss = None;
    let mut window = (Instant::now(), 0u64);
    let save = |step: u64, optimizer: &dyn Optimizer| -> anyhow::Result<PathBuf> {
        let manifest = Manifest {
            format: 1,
            step,
            epoch: step / steps_per_epoch.max(1),
            total_steps,
            files: Default::default(),
            config: config_toml.clone(),
        };
        checkpointer.save(&model_state(&vs), &optimizer.state(), manifest)
    };
    while step < total_steps {
        let epoch = step / steps_per_epoch;
        let batches = loader.epoch_indices(epoch);
        for indices in batches.iter().skip((step % steps_per_epoch) as usize) {
            // Randomness of step k depends on (seed, k) only, so a resumed run draws exactly the
            // views the uninterrupted run would have drawn.
            tch::manual_seed(seed.wrapping_mul(1_000_003).wrapping_add(step) as i64);
            let (images, _) = loader.load(indices, device)?;
            let (view1, view2) = augment.two_views(&images);
            let parts = byol.loss_parts(&view1, &view2);
            optimizer.zero_grad();
            parts.loss.backward();
            let lr = lr_at(step, total_steps, warmup_steps, peak_lr, final_lr);
            optimizer.step(lr);
            let tau = byol.update_target(step, total_steps);
            step += 1;
            window.1 += indices.len() as u64;
            let last = step == total_steps;
            if step.is_multiple_of(experiment.logging.every_steps.max(1)) || last {
                let loss = parts.loss.double_value(&[]);
                if !loss.is_finite() {
                    bail!("the loss became {loss} at step {step}; the last good checkpoint is kept in {} (lower the learning rate or check the data)", checkpointer.dir().display());
                }
                let images_per_second = window.1 as f64 / window.0.elapsed().as_secs_f64().max(1e-9);
                window = (Instant::now(), 0);
                let z = &parts.online_projections;
                let z_std = (z / z.norm_scalaropt_dim(2, [1i64].as_slice(), true).clamp_min(1e-12))
                    .std_dim([0i64].as_slice(), true, false)
                    .mean(None)
                    .double_value(&[]);
                logger.scalar("train/loss", loss, step);
                logger.scalar("train/lr", lr, step);
                logger.scalar("train/tau", tau, step);
                logger.scalar("train/projection_std", z_std, step);
                logger.scalar("train/images_per_second", images_per_second, step);
                say(format!(
                    "epoch {:>3}/{} step {step:>6}/{total_steps} loss {loss:.4} lr {lr:.4} tau {tau:.5} img/s {images_per_second:.0}",
                    epoch + 1,
                    schedule.epochs
                ));
                final_loss = Some(loss);
            }
            if experiment.checkpoint.every_steps > 0 && step.is_multiple_of(experiment.checkpoint.every_steps) && !last
            {
                save(step, optimizer.as_ref())?;
            }
            if last {
                break;
            }
        }
        let epoch_done = step / steps_per_epoch;
        let every = experiment.eval.every_epochs;
        if every > 0 && step.is_multiple_of(steps_per_epoch) && epoch_done.is_multiple_of(every) && step < total_steps {
            if let Some(a) = knn(&byol)? {
                say(format!("kNN after epoch {epoch_done}: top-1 {:.1}%", a.top1 * 100.0));
                logger.scalar("knn/top1", a.top1, step);
                logger.scalar("knn/top5", a.top5, step);
            }
        }
    }
    let train_seconds = started.elapsed().as_secs_f64();
    let trained_images = (step - start_step) * schedule.batch_size as u64;
    let checkpoint = save(step, optimizer.as_ref())?;
    let knn_after = knn(&byol)?;
    if let Some(a) = knn_after {
        logger.scalar("knn/top1", a.top1, step);
        logger.scalar("knn/top5", a.top5, step);
    }
    drop(logger);
    let summary = RunSummary {
        run_dir: run_dir.clone(),
        device: format!("{device:?}"),
        steps: step,
        epochs: schedule.epochs,
        resumed_from_step,
        final_loss,
        knn_before,
        knn_after,
        train_seconds,
        images_per_second: trained_images as f64 / train_seconds.max(1e-9),
        checkpoint,
    };
    std::fs::write(run_dir.join("summary.json"), serde_json::to_vec_pretty(&summary)?)?;
    Ok(summary)
}
