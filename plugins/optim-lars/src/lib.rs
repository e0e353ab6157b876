//! `[optimizer] type = "lars"`: LARS as BYOL trains with it (section 3.3: "LARS optimizer ...
//! excluding the biases and batch normalization parameters from both LARS adaptation and weight
//! decay"). Per parameter: `d = g + wd*p`; `d *= eta*||p||/||d||` (when both norms are non-zero);
//! `b = m*b + d`; `p -= lr*b`. Excluded parameters get plain momentum SGD.

use serde::{Deserialize, Serialize};
use tch::Tensor;

use byol_train::optimizer::util;
use byol_train::{NamedParameter, Optimizer, OptimizerSpec};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LarsConfig {
    /// Base learning rate (paper: 0.2, times batch/256).
    pub lr: f64,
    pub momentum: f64,
    /// Paper: 1.5e-6.
    pub weight_decay: f64,
    /// Trust coefficient eta (paper: 1e-3).
    pub trust_coefficient: f64,
    /// Biases and normalization parameters (1-D tensors) skip weight decay and adaptation.
    pub exclude_bias_and_norm: bool,
}

impl Default for LarsConfig {
    fn default() -> Self {
        Self {
            lr: 0.2,
            momentum: 0.9,
            weight_decay: 1.5e-6,
            trust_coefficient: 1e-3,
            exclude_bias_and_norm: true,
        }
    }
}

#[derive(Debug)]
pub struct Lars {
    config: LarsConfig,
    parameters: Vec<NamedParameter>,
    momentum: Vec<Tensor>,
}

impl Optimizer for Lars {
    fn step(&mut self, lr: f64) {
        let c = &self.config;
        tch::no_grad(|| {
            for (p, buf) in self.parameters.iter().zip(self.momentum.iter_mut()) {
                let grad = p.tensor.grad();
                if !grad.defined() {
                    continue;
                }
                let mut d = grad.shallow_clone();
                if !(c.exclude_bias_and_norm && p.is_bias_or_norm()) {
                    d += &p.tensor * c.weight_decay;
                    let param_norm = p.tensor.norm();
                    let update_norm = d.norm();
                    let one = param_norm.ones_like();
                    let trust = (&param_norm * c.trust_coefficient / &update_norm)
                        .where_self(&update_norm.gt(0.0), &one)
                        .where_self(&param_norm.gt(0.0), &one);
                    d *= trust;
                }
                let _ = buf.g_mul_scalar_(c.momentum).g_add_(&d);
                let _ = p.tensor.shallow_clone().g_sub_(&(&*buf * lr));
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
    name: "lars",
    description: "LARS with BYOL's exclusions (biases and norms skip decay and adaptation)",
    example: "type = \"lars\"\nlr = 0.2\nmomentum = 0.9\nweight_decay = 1.5e-6\ntrust_coefficient = 1e-3\nexclude_bias_and_norm = true\n",
    impl OptimizerSpec for LarsConfig {
        fn build(&self, parameters: Vec<NamedParameter>) -> Box<dyn Optimizer> {
            let momentum = parameters.iter().map(|p| p.tensor.zeros_like().detach()).collect();
            Box::new(Lars { config: self.clone(), parameters, momentum })
        }
        fn lr(&self) -> f64 {
            self.lr
        }
    }
}
