//! One optimizer step: how it computes (precision, layout, fp16 loss scale), the step arithmetic
//! of a run (steps per epoch, the lr at each step), and the step itself.

use anyhow::{bail, Context};
use tch::{Device, Kind, Tensor};

use byol::{Byol, LossParts};
use byol_data::Batch;

use crate::distributed::StopRequests;
use crate::experiment::{MemoryFormat, Precision};
use crate::loss_scale::LossScaler;
use crate::optimizer::{NamedParameter, Optimizer};
use crate::schedule::lr_at;
use crate::validation::short_number;
use crate::Experiment;

use super::data::two_views;
use super::graph::GraphedOutputs;
use super::trainer::Trainer;

/// How a training step computes: `run.precision` and `run.memory_format` resolved for a device.
#[derive(Debug)]
pub struct StepNumerics {
    /// The autocast dtype of the forward pass (None: fp32).
    pub autocast: Option<Kind>,
    /// fp16's dynamic loss scale.
    pub scaler: Option<LossScaler>,
    pub channels_last: bool,
}

/// Why `precision` cannot train on `device`, if it cannot (also checked by `byol-run validate`).
pub fn check_precision(precision: Precision, device: Device) -> anyhow::Result<()> {
    if precision == Precision::Fp16 && !device.is_cuda() {
        bail!(
            "run.precision = \"fp16\" needs a CUDA device (this run is on {}); use \"bf16\" or \"fp32\"",
            super::device_name(device)
        );
    }
    Ok(())
}

impl StepNumerics {
    pub fn resolve(precision: Precision, memory_format: MemoryFormat, device: Device) -> anyhow::Result<Self> {
        let (autocast, scaler) = match precision {
            Precision::Fp32 => (None, None),
            Precision::Bf16 => (Some(Kind::BFloat16), None),
            Precision::Fp16 => {
                check_precision(precision, device)?;
                (Some(Kind::Half), Some(LossScaler::new(device)))
            }
        };
        let channels_last = match memory_format {
            MemoryFormat::Auto => device.is_cuda(),
            MemoryFormat::ChannelsLast => true,
            MemoryFormat::Contiguous => false,
        };
        Ok(Self {
            autocast,
            scaler,
            channels_last,
        })
    }

    /// Runs the forward pass `f` under this autocast (or none).
    pub fn forward<T>(&self, device: Device, f: impl FnOnce() -> T) -> T {
        torch_ext::autocast::autocast(device, self.autocast.unwrap_or(Kind::Float), self.autocast.is_some(), f)
    }

    /// A view in the step's memory format.
    pub fn layout(&self, view: Tensor) -> anyhow::Result<Tensor> {
        Ok(if self.channels_last {
            torch_ext::channels_last(&view)?
        } else {
            view
        })
    }

    /// The model half of a step on one micro-batch: both views in this layout, the forward pass
    /// under this autocast, and the backward of `loss * weight` (loss-scaled in fp16). Training
    /// runs its two halves (a data-parallel run arms its gradient all-reduce between them) and
    /// `byol-run bench` the whole, so the benchmark times what training runs. Returns the
    /// forward's parts, the loss already weighted.
    pub fn forward_backward(
        &self,
        device: Device,
        byol: &Byol,
        view1: Tensor,
        view2: Tensor,
        weight: f64,
    ) -> anyhow::Result<LossParts> {
        let parts = self.forward_loss(device, byol, view1, view2, weight)?;
        self.backward(&parts.loss);
        Ok(parts)
    }

    /// The forward half of [`StepNumerics::forward_backward`]: the parts, the loss weighted.
    pub fn forward_loss(
        &self,
        device: Device,
        byol: &Byol,
        view1: Tensor,
        view2: Tensor,
        weight: f64,
    ) -> anyhow::Result<LossParts> {
        let (view1, view2) = (self.layout(view1)?, self.layout(view2)?);
        let mut parts = self.forward(device, || byol.loss_parts(&view1, &view2));
        parts.loss = parts.loss.to_kind(Kind::Float) * weight;
        Ok(parts)
    }

    /// The backward half: of `loss`, loss-scaled in fp16.
    pub fn backward(&self, loss: &Tensor) {
        match &self.scaler {
            Some(scaler) => scaler.scale_loss(loss).backward(),
            None => loss.backward(),
        }
    }

    /// The optimizer step at `lr`, after unscaling fp16 gradients: a step whose gradients
    /// overflowed is skipped and lowers the loss scale. Returns the overflow flag (a 0-d tensor
    /// on the device, 1 for a skipped step), None without a loss scale. An optimizer that can
    /// skip on the device's flag ([`Optimizer::step_at`]) is handed the flag, so the host never
    /// waits for the device; for the others the flag is read on the host, as GradScaler does.
    pub fn optimizer_step(
        &self,
        parameters: &[NamedParameter],
        optimizer: &mut dyn Optimizer,
        lr: f64,
    ) -> Option<Tensor> {
        let Some(scaler) = &self.scaler else {
            optimizer.step(lr);
            return None;
        };
        let overflow = scaler.unscale(parameters);
        let lr_at = Tensor::full([], lr, (Kind::Float, overflow.device()));
        if optimizer.step_at(&lr_at, Some(&overflow)).is_err() && overflow.double_value(&[]) == 0.0 {
            optimizer.step(lr);
        }
        scaler.update();
        Some(overflow)
    }

    /// [`StepNumerics::optimizer_step`] with the lr read from `lr` (a 0-d tensor on the
    /// device) and nothing read on the host, for a step recorded in a CUDA graph; an optimizer
    /// that cannot take its lr from a tensor says why.
    pub fn optimizer_step_at(
        &self,
        parameters: &[NamedParameter],
        optimizer: &mut dyn Optimizer,
        lr: &Tensor,
    ) -> Result<Option<Tensor>, String> {
        let Some(scaler) = &self.scaler else {
            optimizer.step_at(lr, None)?;
            return Ok(None);
        };
        let overflow = scaler.unscale(parameters);
        optimizer.step_at(lr, Some(&overflow))?;
        scaler.update();
        Ok(Some(overflow))
    }
}

/// The step arithmetic of a run: its length and the learning rate at each step.
#[derive(Debug, Clone)]
pub struct Plan {
    pub steps_per_epoch: u64,
    pub total_steps: u64,
    /// Micro-batches per optimizer step (`schedule.accumulate`, at least 1).
    pub accumulate: usize,
    warmup_steps: u64,
    peak_lr: f64,
    final_lr: f64,
}

impl Plan {
    /// The plan of `experiment` for a loader with `micro_batches_per_epoch`.
    pub fn new(experiment: &Experiment, micro_batches_per_epoch: usize) -> Self {
        let schedule = &experiment.schedule;
        let accumulate = schedule.accumulate.max(1);
        let steps_per_epoch = (micro_batches_per_epoch / accumulate) as u64;
        let batch_scale = if schedule.scale_lr_by_batch {
            schedule.batch_size as f64 / 256.0
        } else {
            1.0
        };
        let peak_lr = experiment.optimizer.lr() * batch_scale;
        Self {
            steps_per_epoch,
            total_steps: steps_per_epoch * schedule.epochs,
            accumulate,
            warmup_steps: (schedule.warmup_epochs * steps_per_epoch as f64).round() as u64,
            peak_lr,
            final_lr: peak_lr * schedule.final_lr_fraction,
        }
    }

    /// Settings of `experiment` that this plan's step counts make most likely not meant: a
    /// warm-up shorter than half a step, which rounds to none.
    pub fn warnings(&self, experiment: &Experiment) -> Vec<String> {
        let warmup = experiment.schedule.warmup_epochs;
        let mut warnings = Vec::new();
        if warmup > 0.0 && self.warmup_steps == 0 && self.steps_per_epoch > 0 {
            let per_epoch = self.steps_per_epoch;
            warnings.push(format!(
                "schedule.warmup_epochs = {} is {:.2} of a step at {per_epoch} {} per epoch, which rounds to no \
                 warm-up: the learning rate starts at its peak; set schedule.warmup_epochs to {} (one step) or \
                 more, or to 0",
                short_number(warmup),
                warmup * per_epoch as f64,
                if per_epoch == 1 { "step" } else { "steps" },
                short_number(1.0 / per_epoch as f64),
            ));
        }
        warnings
    }

    /// The lr of step `step` (0-based): linear warm-up, then cosine decay to the final lr.
    pub fn lr_at(&self, step: u64) -> f64 {
        lr_at(step, self.total_steps, self.warmup_steps, self.peak_lr, self.final_lr)
    }

    /// The epoch that step `step` (0-based) belongs to; `epoch_of(steps done)` is the epoch a
    /// run at that point is in.
    pub fn epoch_of(&self, step: u64) -> u64 {
        step / self.steps_per_epoch.max(1)
    }
}

/// What one training step computed.
pub struct StepReport {
    /// The loss averaged over micro-batches (and processes): a scalar on the device, read on
    /// the host only where the loop logs it.
    pub loss: Tensor,
    pub lr: f64,
    /// The target EMA's decay at this step.
    pub tau: f64,
    /// Whether to stop after this step: this process was asked to, or in a data-parallel run,
    /// any process was, as read where [`Trainer::reads_stop_after`] says.
    pub stop: bool,
    /// The online projections of the last micro-batch, detached.
    pub projections: Tensor,
}

impl Trainer<'_> {
    /// Optimizer step `step` (0-based) over `micro_batches`, then the target EMA; `stop` is this
    /// process's stop request.
    pub fn step(&mut self, step: u64, micro_batches: &[Batch], stop: bool) -> anyhow::Result<StepReport> {
        // Randomness of step k depends on (seed, k, rank) only, so a resumed run draws exactly
        // the views the uninterrupted run would have drawn.
        let stream = self.rank().wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let seed = self.experiment.run.seed.wrapping_mul(1_000_003);
        tch::manual_seed(seed.wrapping_add(step).wrapping_add(stream) as i64);
        if self.graph.is_some() {
            return self.graphed_step(step, &micro_batches[0], stop);
        }
        self.optimizer.zero_grad();
        let mut total = Tensor::zeros([], (Kind::Float, self.device));
        let mut projections = None;
        let share = 1.0 / micro_batches.len() as f64;
        for (i, Batch { images, labels, .. }) in micro_batches.iter().enumerate() {
            let (view1, view2) = two_views(self.augment.as_ref(), &self.loader, images)?;
            let parts = self
                .numerics
                .forward_loss(self.device, &self.model.byol, view1, view2, share)?;
            let last = i + 1 == micro_batches.len();
            if let Some(overlapped) = self.overlapped.as_mut().filter(|_| last) {
                overlapped.prepare(&parts.loss)?;
            }
            self.numerics.backward(&parts.loss);
            if let Some(overlapped) = self.overlapped.as_ref().filter(|_| last) {
                // Before any other collective: this process's buckets may not all have gone out.
                overlapped.check_reduced(step)?;
            }
            total += parts.loss.detach();
            self.monitor.probe_on_training_batch(&parts.online_embeddings, labels);
            projections = Some(parts.online_projections);
        }
        self.monitor
            .probe_on_evaluation_batch(step, &self.model.byol, self.augment.as_ref(), self.device)
            .context("loading the online probe's batch from eval.train")?;
        let lr = self.plan.lr_at(step);
        if step == self.resumed_from.unwrap_or(0) {
            self.warn_without_backbone_gradients();
        }
        let (loss, stop_read) = match &self.parallel {
            Some(parallel) => {
                // The gradients that backward did not average already, with the loss and the
                // stop requests.
                let after_backward: Vec<Tensor> = match &self.overlapped {
                    Some(overlapped) => overlapped.left_out(),
                    None => self.model.parameters.iter().map(|p| p.tensor.shallow_clone()).collect(),
                };
                let pace = self.stop_poll.seconds_per_step();
                let agreed = parallel.all_reduce_gradients(&after_backward, &total, stop, pace)?;
                // Read after the rest of the step is queued, so that the device has it to do
                // while the host waits.
                let stop_read = self.reads_stop_after(step + 1).then_some(agreed.stop_requests);
                (agreed.loss, stop_read)
            }
            None => (total, None),
        };
        let overflow = self
            .numerics
            .optimizer_step(&self.model.parameters, self.optimizer.as_mut(), lr);
        self.loss_watch.observe(&loss, step + 1, overflow.as_ref());
        let tau = self.model.byol.update_target(step, self.plan.total_steps);
        if let Some(parallel) = &self.parallel {
            parallel.broadcast_buffers(&self.buffers)?;
        }
        let stop = match stop_read {
            // A data-parallel step: the processes' requests, where they are read.
            Some(requests) => {
                let requests = StopRequests::read(&requests)?;
                self.stop_poll.read(step + 1, requests.seconds_per_step);
                requests.any
            }
            None if self.parallel.is_some() => false,
            None => stop,
        };
        Ok(StepReport {
            loss,
            lr,
            tau,
            stop,
            projections: projections.expect("at least one micro-batch"),
        })
    }

    /// Warns (process 0) when the backward of the first step this process runs reached no
    /// parameter of the online backbone: a backbone whose forward detaches its output (a TorchScript module's
    /// `x.detach()`, `torch.no_grad()`) trains only the projector and predictor, which would
    /// otherwise show only as a kNN accuracy that does not improve. One wait for the device.
    fn warn_without_backbone_gradients(&self) {
        let reached: Vec<Tensor> = self
            .model
            .parameters
            .iter()
            .filter(|p| p.name.starts_with("online.backbone."))
            .map(|p| p.tensor.grad())
            .filter(Tensor::defined)
            .map(|g| g.ne(0.0).any().to_kind(Kind::Int64))
            .collect();
        let any = !reached.is_empty() && Tensor::stack(&reached, 0).sum(Kind::Int64).int64_value(&[]) > 0;
        if !any && self.is_main() {
            byol::eprint_line!(
                "warning: the first step's gradients reached no parameter of the backbone (every \
                 online.backbone gradient is zero or missing): only the projector and predictor learn; a \
                 backbone whose forward detaches its output (x.detach(), torch.no_grad()) does not train"
            );
        }
    }

    /// Whether a data-parallel run reads the processes' stop requests after `steps_done` steps:
    /// where [`super::StopPoll`] spaces the reads by time, and wherever the loop waits for the device
    /// anyway (a log point, a checkpoint, the end of an epoch, before its evaluation). The same
    /// steps on every process: they share these settings and the figures the reads agree on.
    pub fn reads_stop_after(&self, steps_done: u64) -> bool {
        let every = |n: u64| n > 0 && steps_done.is_multiple_of(n);
        self.stop_poll.due(steps_done)
            || every(self.experiment.logging.every_steps.max(1))
            || every(self.experiment.checkpoint.every_steps)
            || every(self.plan.steps_per_epoch)
            || steps_done == self.plan.total_steps
    }

    /// [`Trainer::step`] replayed from a CUDA graph: one process, one micro-batch
    /// (`graphed_step` refused the rest). The probe learns eagerly from the graph's outputs.
    fn graphed_step(&mut self, step: u64, batch: &Batch, stop: bool) -> anyhow::Result<StepReport> {
        let views = two_views(self.augment.as_ref(), &self.loader, &batch.images)?;
        let (lr, tau) = (
            self.plan.lr_at(step),
            self.model.byol.tau_at(step, self.plan.total_steps),
        );
        let graph = self.graph.as_mut().expect("called with a graph");
        let GraphedOutputs { parts, overflow } = graph.step(
            self.device,
            &self.numerics,
            &self.model,
            self.optimizer.as_mut(),
            views,
            lr,
            tau,
        )?;
        self.monitor
            .probe_on_training_batch(&parts.online_embeddings, &batch.labels);
        self.monitor
            .probe_on_evaluation_batch(step, &self.model.byol, self.augment.as_ref(), self.device)
            .context("loading the online probe's batch from eval.train")?;
        // The graph's outputs are overwritten by the next replay.
        let loss = parts.loss.copy();
        self.loss_watch.observe(&loss, step + 1, overflow.as_ref());
        Ok(StepReport {
            loss,
            lr,
            tau,
            stop,
            projections: parts.online_projections,
        })
    }
}
