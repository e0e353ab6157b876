//! The TensorBoard scalars of a log point: the step's own figures and what they say about the
//! networks (spread of the projections, weight and gradient norms, memory).

use tch::{Device, Kind, Tensor};

use crate::tensorboard::ScalarLogger;

use super::step::StepReport;
use super::trainer::Trainer;

const GIB: f64 = (1u64 << 30) as f64;

/// Sum of squared entries over tensors, as one f64 (one sync).
fn total_norm(tensors: impl Iterator<Item = Tensor>) -> f64 {
    let squares: Vec<Tensor> = tensors
        .filter(|t| t.defined())
        .map(|t| t.square().sum(Kind::Float))
        .collect();
    if squares.is_empty() {
        return 0.0;
    }
    Tensor::stack(&squares, 0).sum(Kind::Float).sqrt().double_value(&[])
}

/// The mean per-dimension std of the L2-normalized projections `[N, d]`: 0 when they collapse
/// onto one point.
fn projection_std(z: &Tensor) -> f64 {
    (z / z.norm_scalaropt_dim(2, [1i64].as_slice(), true).clamp_min(1e-12))
        .std_dim([0i64].as_slice(), true, false)
        .mean(None)
        .double_value(&[])
}

impl Trainer<'_> {
    /// Logs the scalars of step `step` (1-based: steps done) from what the step reported and its
    /// loss, read on the host.
    pub fn log_scalars(
        &mut self,
        logger: &mut ScalarLogger,
        step: u64,
        report: &StepReport,
        loss: f64,
        images_per_second: f64,
    ) -> anyhow::Result<()> {
        let z_std = projection_std(&report.projections);
        let parameters = &self.model.parameters;
        logger.scalar("train/loss", loss, step);
        logger.scalar("train/lr", report.lr, step);
        logger.scalar("train/tau", report.tau, step);
        logger.scalar("train/projection_std", z_std, step);
        // The same spread in units of 1/sqrt(d), the per-dimension std of unit vectors spread
        // evenly over the sphere: about 1 when the projections use every dimension, falling
        // towards 0 as they collapse onto a point.
        let dims = report.projections.size().last().copied().unwrap_or(1) as f64;
        logger.scalar("train/projection_std_ratio", z_std * dims.sqrt(), step);
        logger.scalar(
            "train/weight_norm",
            total_norm(parameters.iter().map(|p| p.tensor.detach())),
            step,
        );
        logger.scalar(
            "train/grad_norm",
            total_norm(parameters.iter().map(|p| p.tensor.grad())),
            step,
        );
        logger.scalar("train/images_per_second", images_per_second, step);
        if let Some(accuracy) = self.monitor.take_probe_accuracy() {
            logger.scalar("train/online_probe_accuracy", accuracy, step);
        }
        if let Some(scaler) = &self.numerics.scaler {
            logger.scalar("train/loss_scale", scaler.scale(), step);
        }
        if let Device::Cuda(index) = self.device {
            let memory = torch_ext::memory::cuda_memory(index)?;
            logger.scalar("train/gpu_memory_peak_gib", memory.peak_allocated as f64 / GIB, step);
            logger.scalar("train/gpu_memory_reserved_gib", memory.reserved as f64 / GIB, step);
        }
        Ok(())
    }
}
