//! Dynamic loss scaling for float16 training, with `torch.cuda.amp.GradScaler`'s defaults:
//! start at 2^16, halve (and skip the step) when a gradient is not finite, double after 2000
//! finite steps in a row.
//!
//! The scale, the count of finite steps and the overflow flag live on the device, updated by
//! the kernels GradScaler runs (`_amp_foreach_non_finite_check_and_unscale_`,
//! `_amp_update_scale_`), so a step reads none of them on the host: an optimizer that can skip
//! a step on the device's flag ([`crate::optimizer::Optimizer::step_at`]) never waits for the
//! device, and the whole step can be recorded in a CUDA graph.

use tch::{Device, Kind, Tensor};

use crate::optimizer::NamedParameter;

const INITIAL_SCALE: f64 = 65536.0;
const GROWTH_FACTOR: f64 = 2.0;
const BACKOFF_FACTOR: f64 = 0.5;
const GROWTH_INTERVAL: i64 = 2000;

#[derive(Debug)]
pub struct LossScaler {
    /// 0-d float32: what the loss is multiplied by before backward.
    scale: Tensor,
    /// 0-d int32: finite steps since the scale last changed.
    growth_tracker: Tensor,
    /// 0-d float32, 1 when the last unscaled gradients held an Inf or NaN.
    found_inf: Tensor,
}

impl LossScaler {
    pub fn new(device: Device) -> Self {
        Self {
            scale: Tensor::full([], INITIAL_SCALE, (Kind::Float, device)),
            growth_tracker: Tensor::zeros([], (Kind::Int, device)),
            found_inf: Tensor::zeros([], (Kind::Float, device)),
        }
    }

    /// `loss * scale`, what backward runs on.
    pub fn scale_loss(&self, loss: &Tensor) -> Tensor {
        loss * &self.scale
    }

    /// The current scale (waits for the device: for logs).
    pub fn scale(&self) -> f64 {
        self.scale.double_value(&[])
    }

    /// Divides every gradient by the scale and returns the overflow flag (0-d float32 on the
    /// device, 1 when any gradient holds an Inf or NaN: the optimizer step must then be
    /// skipped). One multi-tensor kernel, nothing read on the host.
    pub fn unscale(&self, parameters: &[NamedParameter]) -> Tensor {
        let grads: Vec<Tensor> = parameters
            .iter()
            .map(|p| p.tensor.grad())
            .filter(Tensor::defined)
            .collect();
        tch::no_grad(|| {
            let _ = self.found_inf.shallow_clone().zero_();
            if !grads.is_empty() {
                let inverse = self.scale.reciprocal();
                torch_ext::foreach::unscale_(&grads, &self.found_inf, &inverse)
                    .unwrap_or_else(|e| panic!("unscaling fp16 gradients: {e}"));
            }
        });
        self.found_inf.shallow_clone()
    }

    /// After the step: halves the scale when the last [`LossScaler::unscale`] found an
    /// overflow, doubles it after 2000 finite steps in a row. On the device.
    pub fn update(&self) {
        tch::no_grad(|| {
            let _ = self.scale.shallow_clone().internal_amp_update_scale_(
                &self.growth_tracker,
                &self.found_inf,
                GROWTH_FACTOR,
                BACKOFF_FACTOR,
                GROWTH_INTERVAL,
            );
        });
    }

    /// The scale and the finite steps since it last changed, for checkpoints (as float64 on
    /// the CPU, the format checkpoints have always had).
    pub fn state(&self) -> Tensor {
        Tensor::stack(
            &[
                self.scale.to_kind(Kind::Double),
                self.growth_tracker.to_kind(Kind::Double),
            ],
            0,
        )
        .to_device(Device::Cpu)
    }

    pub fn load_state(&mut self, state: &Tensor) {
        tch::no_grad(|| {
            let _ = self.scale.fill_(state.double_value(&[0]));
            let _ = self.growth_tracker.fill_(state.double_value(&[1]) as i64);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parameter(values: &[f32]) -> NamedParameter {
        let tensor = Tensor::from_slice(values).set_requires_grad(true);
        (&tensor * 2.0).sum(Kind::Float).backward(); // grad = 2 everywhere
        NamedParameter {
            name: "p".into(),
            tensor,
        }
    }

    /// A parameter whose gradient holds `value`.
    fn with_gradient(value: f32) -> NamedParameter {
        let p = parameter(&[1.0]);
        let _ = p.tensor.grad().fill_(value as f64);
        p
    }

    fn flag(found_inf: &Tensor) -> f64 {
        found_inf.double_value(&[])
    }

    /// One step's scaling: unscale, then update the scale.
    fn scaled_step(scaler: &LossScaler, parameters: &[NamedParameter]) {
        let _ = scaler.unscale(parameters);
        scaler.update();
    }

    #[test]
    fn unscale_divides_finite_gradients_and_keeps_the_scale() {
        let scaler = LossScaler::new(Device::Cpu);
        let parameters = [parameter(&[1.0, 2.0]), parameter(&[3.0])];
        assert_eq!(flag(&scaler.unscale(&parameters)), 0.0);
        scaler.update();
        for p in &parameters {
            let grad = Vec::<f32>::try_from(p.tensor.grad()).unwrap();
            assert!(grad.iter().all(|g| *g == 2.0 / 65536.0), "{grad:?}");
        }
        assert_eq!(scaler.scale(), 65536.0);
    }

    #[test]
    fn a_non_finite_gradient_raises_the_flag_and_halves_the_scale() {
        let scaler = LossScaler::new(Device::Cpu);
        let parameters = [parameter(&[1.0]), parameter(&[1.0, 1.0])];
        let _ = parameters[1].tensor.grad().narrow(0, 1, 1).fill_(f64::INFINITY);
        assert_eq!(flag(&scaler.unscale(&parameters)), 1.0);
        scaler.update();
        assert_eq!(scaler.scale(), 32768.0);
        // The flag is cleared by the next unscale.
        let finite = [parameter(&[1.0])];
        assert_eq!(flag(&scaler.unscale(&finite)), 0.0);
    }

    #[test]
    fn the_scale_doubles_after_2000_finite_steps_and_an_overflow_restarts_the_count() {
        let scaler = LossScaler::new(Device::Cpu);
        let finite = [parameter(&[1.0])];
        let overflowing = [with_gradient(f32::NAN)];
        for _ in 0..1999 {
            scaled_step(&scaler, &finite);
        }
        assert_eq!(scaler.scale(), 65536.0);
        scaled_step(&scaler, &overflowing);
        assert_eq!(scaler.scale(), 32768.0);
        for step in 1..=2000 {
            scaled_step(&scaler, &finite);
            let expected = if step < 2000 { 32768.0 } else { 65536.0 };
            assert_eq!(scaler.scale(), expected, "after {step} finite steps");
        }
    }

    #[test]
    fn the_state_round_trips_through_a_checkpoint() {
        let scaler = LossScaler::new(Device::Cpu);
        for _ in 0..7 {
            scaled_step(&scaler, &[parameter(&[1.0])]);
        }
        scaled_step(&scaler, &[with_gradient(f32::INFINITY)]);
        scaled_step(&scaler, &[parameter(&[1.0])]);
        let state = scaler.state();
        assert_eq!(Vec::<f64>::try_from(&state).unwrap(), [32768.0, 1.0]);
        let mut restored = LossScaler::new(Device::Cpu);
        restored.load_state(&state);
        assert_eq!(Vec::<f64>::try_from(&restored.state()).unwrap(), [32768.0, 1.0]);
    }
}
