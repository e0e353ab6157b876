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
    /// gradient holds an Inf or NaN, in which case the optimizer step must be skipped.
    pub fn unscale(&mut self, parameters: &[NamedParameter]) -> bool {
        let inverse = 1.0 / self.scale;
        let mut finite = true;
        tch::no_grad(|| {
            for p in parameters {
                let mut grad = p.tensor.grad();
                if grad.defined() {
                    let _ = grad.g_mul_scalar_(inverse);
                    finite &= grad.isfinite().all().int64_value(&[]) != 0;
                }
            }
        });
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
