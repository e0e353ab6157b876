//! Dynamic loss scaling for float16 training, with `torch.cuda.amp.GradScaler`'s defaults:
//! start at 2^16, halve (and skip the step) when a gradient is not finite, double after 2000
//! finite steps in a row.

use tch::{Kind, Tensor};

use crate::optimizer::NamedParameter;

#[derive(Debug, Clone)]
pub struct LossScaler {
    scale: f64,
    good_steps: u32,
}

impl Default for LossScaler {
    fn default() -> Self {
        Self {
            scale: 65536.0,
            good_steps: 0,
        }
    }
}

impl LossScaler {
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Divides every gradient by the scale; returns false (and lowers the scale) when any
    /// gradient holds an Inf or NaN, in which case the optimizer step must be skipped. One
    /// multi-tensor kernel and one read of its flag, not a host sync per gradient.
    pub fn unscale(&mut self, parameters: &[NamedParameter]) -> bool {
        let grads: Vec<Tensor> = parameters
            .iter()
            .map(|p| p.tensor.grad())
            .filter(Tensor::defined)
            .collect();
        let finite = match grads.first() {
            None => true,
            Some(first) => tch::no_grad(|| {
                let options = (Kind::Float, first.device());
                let found_inf = Tensor::zeros([1], options);
                let inverse = Tensor::full([1], 1.0 / self.scale, options);
                torch_ext::foreach::unscale_(&grads, &found_inf, &inverse)
                    .unwrap_or_else(|e| panic!("unscaling fp16 gradients: {e}"));
                found_inf.double_value(&[0]) == 0.0
            }),
        };
        if finite {
            self.good_steps += 1;
            if self.good_steps == 2000 {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        } else {
            self.scale /= 2.0;
            self.good_steps = 0;
        }
        finite
    }

    /// The scale as a tensor, for checkpoints.
    pub fn state(&self) -> Tensor {
        Tensor::from_slice(&[self.scale, self.good_steps as f64]).to_kind(Kind::Double)
    }

    pub fn load_state(&mut self, state: &Tensor) {
        self.scale = state.double_value(&[0]);
        self.good_steps = state.double_value(&[1]) as u32;
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

    #[test]
    fn unscale_divides_finite_gradients_and_keeps_the_scale() {
        let mut scaler = LossScaler::default();
        let parameters = [parameter(&[1.0, 2.0]), parameter(&[3.0])];
        assert!(scaler.unscale(&parameters));
        for p in &parameters {
            let grad = Vec::<f32>::try_from(p.tensor.grad()).unwrap();
            assert!(grad.iter().all(|g| *g == 2.0 / 65536.0), "{grad:?}");
        }
        assert_eq!(scaler.scale(), 65536.0);
    }

    #[test]
    fn a_non_finite_gradient_skips_the_step_and_halves_the_scale() {
        let mut scaler = LossScaler::default();
        let parameters = [parameter(&[1.0]), parameter(&[1.0, 1.0])];
        let _ = parameters[1].tensor.grad().narrow(0, 1, 1).fill_(f64::INFINITY);
        assert!(!scaler.unscale(&parameters));
        assert_eq!(scaler.scale(), 32768.0);
    }
}
