//! `[optimizer] type = "lars"`: LARS as BYOL trains with it (section 3.3: "LARS optimizer ...
//! excluding the biases and batch normalization parameters from both LARS adaptation and weight
//! decay"). Per parameter: `d = g + wd*p`; `d *= eta*||p||/||d||` (when both norms are non-zero);
//! `b = m*b + d`; `p -= lr*b` ([`MomentumSgd`] with that `d`). Excluded parameters get plain
//! momentum SGD.

use byol::optimizer::{Direction, MomentumRule, MomentumSgd, NamedParameter, Optimizer, OptimizerSpec};
use byol::{BuildContext, ByolError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, byol::KeyDocs)]
#[serde(deny_unknown_fields, default)]
pub struct LarsConfig {
    /// Base learning rate (paper: 0.2, times batch/256).
    pub lr: f64,
    /// Heavy-ball momentum of the update (paper: 0.9).
    pub momentum: f64,
    /// Paper: 1.5e-6.
    pub weight_decay: f64,
    /// Trust coefficient eta (paper: 1e-3).
    pub trust_coefficient: f64,
    /// Biases and normalization parameters (1-D tensors) skip weight decay and adaptation.
    pub exclude_bias_and_norm: bool,
    /// One update over flat buffers (a handful of kernels a step); false: per tensor.
    pub fused: bool,
}

impl Default for LarsConfig {
    fn default() -> Self {
        Self {
            lr: 0.2,
            momentum: 0.9,
            weight_decay: 1.5e-6,
            trust_coefficient: 1e-3,
            exclude_bias_and_norm: true,
            fused: true,
        }
    }
}

impl MomentumRule for LarsConfig {
    fn momentum(&self) -> f64 {
        self.momentum
    }

    fn direction_of(&self, p: &NamedParameter) -> Direction {
        if self.exclude_bias_and_norm && p.is_bias_or_norm() {
            return Direction {
                weight_decay: 0.0,
                trust_coefficient: None,
            };
        }
        Direction {
            weight_decay: self.weight_decay,
            trust_coefficient: Some(self.trust_coefficient),
        }
    }
}

byol::register_plugin! {
    name: "lars",
    description: "LARS with BYOL's exclusions (biases and norms skip decay and adaptation)",
    impl OptimizerSpec for LarsConfig {
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
