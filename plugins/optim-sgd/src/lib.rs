//! `[optimizer] type = "sgd"`: PyTorch's SGD (momentum buffer `b = m*b + g`, `p -= lr*b`).

use serde::{Deserialize, Serialize};
use tch::Tensor;

use byol_train::optimizer::util;
use byol_train::{NamedParameter, Optimizer, OptimizerSpec};

/// SGD with momentum.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SgdConfig {
    /// Base learning rate (scaled by batch/256 when schedule.scale_lr_by_batch).
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    /// No weight decay on biases and normalization parameters (1-D tensors).
    pub exclude_bias_and_norm: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self {
            lr: 0.05,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 5e-4,
            exclude_bias_and_norm: true,
        }
    }
}

#[derive(Debug)]
pub struct Sgd {
    config: SgdConfig,
    parameters: Vec<NamedParameter>,
    momentum: Vec<Tensor>,
}

impl Optimizer for Sgd {
    fn step(&mut self, lr: f64) {
        let c = &self.config;
        tch::no_grad(|| {
            for (p, buf) in self.parameters.iter().zip(self.momentum.iter_mut()) {
                let grad = p.tensor.grad();
                if !grad.defined() {
                    continue;
                }
                let mut d = grad.shallow_clone();
                if c.weight_decay != 0.0 && !(c.exclude_bias_and_norm && p.is_bias_or_norm()) {
                    d += &p.tensor * c.weight_decay;
                }
                if c.momentum != 0.0 {
                    let _ = buf.g_mul_scalar_(c.momentum).g_add_(&d);
                    d = if c.nesterov {
                        d + &*buf * c.momentum
                    } else {
                        buf.shallow_clone()
                    };
                }
                let _ = p.tensor.shallow_clone().g_sub_(&(d * lr));
            }
        });
    }

    fn zero_grad(&mut self) {
        util::zero_grads(&self.parameters);
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        util::named_buffers("momentum.", &self.parameters, &self.momentum)
    }

    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<(), String> {
        util::load_buffers("momentum.", &self.parameters, &mut self.momentum, state)
    }
}

byol::register_plugin! {
    kind: Optimizer,
    name: "sgd",
    description: "SGD with momentum (PyTorch semantics), weight decay off for biases and norms",
    example: "type = \"sgd\"\nlr = 0.05\nmomentum = 0.9\nnesterov = false\nweight_decay = 5e-4\nexclude_bias_and_norm = true\n",
    impl OptimizerSpec for SgdConfig {
        fn build(&self, parameters: Vec<NamedParameter>) -> Box<dyn Optimizer> {
            // PyTorch starts the momentum buffer at the first gradient; starting at zero and
            // adding the gradient is the same thing.
            let momentum = parameters.iter().map(|p| p.tensor.zeros_like().detach()).collect();
            Box::new(Sgd { config: self.clone(), parameters, momentum })
        }
        fn lr(&self) -> f64 {
            self.lr
        }
    }
}
