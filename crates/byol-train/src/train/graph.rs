//! `run.cuda_graphs`: the whole training step (gradients cleared, forward and backward of both
//! views, the optimizer, the target EMA) recorded once as a CUDA graph and replayed every step,
//! one launch instead of thousands. A replay reuses the tensors it was recorded on, so the views
//! are copied into static buffers first, and the lr and the EMA weight are 0-d tensors filled
//! before each replay (numbers would be frozen into the kernels). In fp16 the loss scale and
//! its overflow flag live on the device, so the recorded step skips an overflowing update and
//! adjusts the scale by itself.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use anyhow::{bail, Context};
use tch::{Device, Kind, Tensor};

use byol::LossParts;
use torch_ext::cuda_graph::CudaGraph;

use crate::optimizer::Optimizer;
use crate::Experiment;

use super::model::Model;
use super::step::StepNumerics;

/// Eager steps on the graph's side stream before capture, so that lazy initialization (cuDNN
/// algorithm search, the fused optimizer's buffers, allocator pools) is not recorded.
const WARMUP_STEPS: usize = 3;

/// The graphed step when `run.cuda_graphs` asks for one, for a run on `device`, `data_parallel`
/// when torchrun started it (even as the only process: its step still talks to the group);
/// refuses what a replayed graph cannot do.
pub fn graphed_step(
    experiment: &Experiment,
    device: Device,
    data_parallel: bool,
) -> anyhow::Result<Option<GraphedStep>> {
    if !experiment.run.cuda_graphs {
        return Ok(None);
    }
    check_cuda_graphs(experiment, device, data_parallel)?;
    GraphedStep::new().map(Some)
}

/// Why `run.cuda_graphs = true` cannot record this experiment's step on `device`, if it cannot
/// (also checked by `byol-run validate`).
pub fn check_cuda_graphs(experiment: &Experiment, device: Device, data_parallel: bool) -> anyhow::Result<()> {
    if data_parallel {
        bail!(
            "run.cuda_graphs = true is for one process started without torchrun: a data-parallel step \
             exchanges gradients and batch-norm statistics with its peers, which a recorded step cannot; \
             set run.cuda_graphs = false"
        );
    }
    if experiment.schedule.accumulate > 1 {
        bail!(
            "run.cuda_graphs = true records one micro-batch per step: with schedule.accumulate = {}, set \
             run.cuda_graphs = false",
            experiment.schedule.accumulate
        );
    }
    if !device.is_cuda() {
        bail!(
            "run.cuda_graphs = true needs a CUDA device (this run is on {}); set run.cuda_graphs = false",
            super::device_name(device)
        );
    }
    Ok(())
}

pub struct GraphedStep {
    graph: CudaGraph,
    warmup_left: usize,
    captured: Option<Captured>,
}

/// What the recorded step reads (views, lr, EMA weight) and writes (its loss parts, fp16's
/// overflow flag).
struct Captured {
    view1: Tensor,
    view2: Tensor,
    lr: Tensor,
    ema_weight: Tensor,
    parts: LossParts,
    overflow: Option<Tensor>,
}

/// What a step wrote: the graph's own output tensors, overwritten by the next step.
pub struct GraphedOutputs {
    pub parts: LossParts,
    /// fp16's overflow flag (1: the step was skipped).
    pub overflow: Option<Tensor>,
}

impl GraphedStep {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            graph: CudaGraph::new().context("run.cuda_graphs")?,
            warmup_left: WARMUP_STEPS,
            captured: None,
        })
    }

    /// One training step of `model` on `view1`/`view2` at `lr` and `tau`: eager during
    /// warm-up, then recorded once, then replayed.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        device: Device,
        numerics: &StepNumerics,
        model: &Model,
        optimizer: &mut dyn Optimizer,
        (view1, view2): (Tensor, Tensor),
        lr: f64,
        tau: f64,
    ) -> anyhow::Result<GraphedOutputs> {
        if self.warmup_left > 0 {
            self.warmup_left -= 1;
            self.graph.warmup_begin()?;
            // The step the graph records, run eagerly: the same code, so that what it
            // initializes lazily is ready, and an optimizer that cannot be recorded is refused
            // at the first step.
            let scalar = |value: f64| Tensor::full([], value, (Kind::Float, device));
            let (lr, ema_weight) = (scalar(lr), scalar(1.0 - tau));
            let eager = catch_unwind(AssertUnwindSafe(|| {
                recorded_step(device, numerics, model, optimizer, view1, view2, &lr, &ema_weight)
            }));
            // Back to the main stream before a panic goes on (the step's guard explains it).
            let ended = self.graph.warmup_end();
            let (parts, overflow) = eager
                .unwrap_or_else(|panic| resume_unwind(panic))
                .context("the eager warm-up steps of run.cuda_graphs, before the capture")?;
            ended?;
            return Ok(GraphedOutputs { parts, overflow });
        }
        if self.captured.is_none() {
            self.captured = Some(self.capture(device, numerics, model, optimizer, &view1, &view2)?);
        }
        let captured = self.captured.as_ref().expect("captured above");
        tch::no_grad(|| {
            captured.view1.shallow_clone().copy_(&view1);
            captured.view2.shallow_clone().copy_(&view2);
            let _ = captured.lr.shallow_clone().fill_(lr);
            let _ = captured.ema_weight.shallow_clone().fill_(1.0 - tau);
        });
        self.graph.replay().context("replaying the captured training step")?;
        Ok(GraphedOutputs {
            parts: LossParts {
                loss: captured.parts.loss.shallow_clone(),
                online_projections: captured.parts.online_projections.shallow_clone(),
                online_embeddings: captured.parts.online_embeddings.shallow_clone(),
            },
            overflow: captured.overflow.as_ref().map(Tensor::shallow_clone),
        })
    }

    fn capture(
        &mut self,
        device: Device,
        numerics: &StepNumerics,
        model: &Model,
        optimizer: &mut dyn Optimizer,
        view1: &Tensor,
        view2: &Tensor,
    ) -> anyhow::Result<Captured> {
        let scalar = || Tensor::zeros([], (Kind::Float, device));
        let (view1, view2) = (view1.copy(), view2.copy());
        let (lr, ema_weight) = (scalar(), scalar());
        // The warm-up's last gradients freed before the capture empties the allocator's cache
        // (torch.cuda.graph's recipe); the recorded step clears them again (a no-op for None).
        optimizer.zero_grad();
        self.graph.capture_begin().context("starting the CUDA graph capture")?;
        let recorded = catch_unwind(AssertUnwindSafe(|| {
            recorded_step(
                device,
                numerics,
                model,
                optimizer,
                view1.shallow_clone(),
                view2.shallow_clone(),
                &lr,
                &ema_weight,
            )
        }));
        // The capture ends whatever happened inside it, a panic included, or the stream stays
        // in capture mode.
        let ended = self.graph.capture_end();
        let recorded = recorded.unwrap_or_else(|panic| resume_unwind(panic));
        let (parts, overflow) = recorded.context("recording the training step as a CUDA graph (run.cuda_graphs)")?;
        ended.context("ending the CUDA graph capture")?;
        Ok(Captured {
            view1,
            view2,
            lr,
            ema_weight,
            parts,
            overflow,
        })
    }
}

/// The training step as the graph records it: gradients cleared, forward and backward of both
/// views, the optimizer at the lr in `lr`, the target EMA with the weight in `ema_weight` (0-d
/// tensors on the device, read when the kernels run).
#[allow(clippy::too_many_arguments)]
fn recorded_step(
    device: Device,
    numerics: &StepNumerics,
    model: &Model,
    optimizer: &mut dyn Optimizer,
    view1: Tensor,
    view2: Tensor,
    lr: &Tensor,
    ema_weight: &Tensor,
) -> anyhow::Result<(LossParts, Option<Tensor>)> {
    optimizer.zero_grad();
    let parts = numerics.forward_backward(device, &model.byol, view1, view2, 1.0)?;
    let overflow = numerics
        .optimizer_step_at(&model.parameters, optimizer, lr)
        .map_err(anyhow::Error::msg)?;
    model.byol.update_target_with_weight(ema_weight);
    Ok((parts, overflow))
}
