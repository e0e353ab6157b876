//! `[optimizer] type = "sgd"`: PyTorch's SGD (momentum buffer `b = m*b + g`, `p -= lr*b`), the
//! update of [`MomentumSgd`] with the gradient plus weight decay as its direction.

use byol::optimizer::{Direction, MomentumRule, MomentumSgd, NamedParameter, Optimizer, OptimizerSpec};
use byol::{BuildContext, ByolError};
use serde::{Deserialize, Serialize};

/// SGD with momentum.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, byol::KeyDocs)]
#[serde(deny_unknown_fields, default)]
pub struct SgdConfig {
    /// Base learning rate (scaled by batch/256 when schedule.scale_lr_by_batch).
    pub lr: f64,
    /// Heavy-ball momentum (0: plain SGD).
    pub momentum: f64,
    /// Use Nesterov momentum, as torch.optim.SGD(nesterov=True).
    pub nesterov: bool,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
    /// No weight decay on biases and normalization parameters (1-D tensors).
    pub exclude_bias_and_norm: bool,
    /// One update over flat buffers (a handful of kernels a step); false: per tensor.
    pub fused: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self {
            lr: 0.05,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 5e-4,
            exclude_bias_and_norm: true,
            fused: true,
        }
    }
}

impl MomentumRule for SgdConfig {
    fn momentum(&self) -> f64 {
        self.momentum
    }

    fn nesterov(&self) -> bool {
        self.nesterov
    }

    fn direction_of(&self, p: &NamedParameter) -> Direction {
        let excluded = self.exclude_bias_and_norm && p.is_bias_or_norm();
        Direction {
            weight_decay: if excluded { 0.0 } else { self.weight_decay },
            trust_coefficient: None,
        }
    }
}

byol::register_plugin! {
    name: "sgd",
    description: "SGD with momentum (PyTorch semantics), weight decay off for biases and norms",
    impl OptimizerSpec for SgdConfig {
        fn build(&self, parameters: Vec<NamedParameter>, _: &BuildContext) -> Result<Box<dyn Optimizer>, ByolError> {
            Ok(Box::new(if self.fused {
                MomentumSgd::fused(self.clone(), parameters)
            } else {
                MomentumSgd::new(self.clone(), parameters)
            }))
        }

        fn lr(&self) -> f64 {
            self.lr
        }
    }
}
