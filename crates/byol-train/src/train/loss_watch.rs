//! Divergence detection without a host read per step.
//!
//! Reading a CUDA loss on the host waits for the device to finish the step, so the host cannot
//! queue the next step's kernels while the device is still busy: the device idles for the
//! host's share of every step. The watch instead keeps, on the device, the first step whose loss
//! was NaN or Inf, and the loop reads it only where it reads the device anyway (log points,
//! checkpoints, evaluations, the end).

use tch::{Device, Kind, Tensor};

/// The first step (1-based) whose loss was not finite, kept on the training device.
pub struct LossWatch {
    first_bad_step: Tensor,
}

impl LossWatch {
    pub fn new(device: Device) -> Self {
        Self {
            first_bad_step: Tensor::full([], i64::MAX, (Kind::Int64, device)),
        }
    }

    /// Notes the loss of step `step` (1-based): a few tiny kernels, no host read. A step that
    /// fp16's loss scale skipped (`overflow` set) changed nothing, so its loss is no divergence.
    pub fn observe(&mut self, loss: &Tensor, step: u64, overflow: Option<&Tensor>) {
        tch::no_grad(|| {
            let fine = match overflow {
                Some(overflow) => loss.isfinite().logical_or(&overflow.ne(0.0)),
                None => loss.isfinite(),
            };
            let this_step = Tensor::where_scalar(&fine, i64::MAX, step as i64);
            self.first_bad_step = self.first_bad_step.minimum(&this_step);
        });
    }

    /// The first step observed with a NaN or Inf loss, if any (waits for the device).
    pub fn first_bad_step(&self) -> Option<u64> {
        match self.first_bad_step.int64_value(&[]) {
            i64::MAX => None,
            step => Some(step as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_non_finite_loss_is_the_one_named() {
        let mut watch = LossWatch::new(Device::Cpu);
        watch.observe(&Tensor::from(0.5f32), 1, None);
        assert_eq!(watch.first_bad_step(), None);
        for (step, loss) in [(2, f32::NAN), (3, 0.25), (4, f32::INFINITY), (5, f32::NEG_INFINITY)] {
            watch.observe(&Tensor::from(loss), step, None);
        }
        assert_eq!(watch.first_bad_step(), Some(2));
    }

    #[test]
    fn a_step_skipped_for_overflowing_is_not_a_divergence() {
        let mut watch = LossWatch::new(Device::Cpu);
        watch.observe(&Tensor::from(f32::INFINITY), 1, Some(&Tensor::from(1.0f32)));
        watch.observe(&Tensor::from(0.5f32), 2, Some(&Tensor::from(0.0f32)));
        assert_eq!(watch.first_bad_step(), None);
        watch.observe(&Tensor::from(f32::NAN), 3, Some(&Tensor::from(0.0f32)));
        assert_eq!(watch.first_bad_step(), Some(3));
    }
}
