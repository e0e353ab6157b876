//! `[optimizer] type = "adam"` and `type = "adamw"`: torch.optim.Adam (L2 weight decay added to
//! the gradient) and torch.optim.AdamW (decoupled decay `p -= lr*wd*p`), with bias correction.

use serde::{Deserialize, Serialize};
use tch::Tensor;

use byol_train::optimizer::util;
use byol_train::{NamedParameter, Optimizer, OptimizerSpec};

/// Keys shared by Adam and AdamW.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdamConfig {
    /// Base learning rate (scaled by batch/256 when schedule.scale_lr_by_batch).
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
    /// No weight decay on biases and normalization parameters (1-D tensors).
    pub exclude_bias_and_norm: bool,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
            exclude_bias_and_norm: true,
        }
    }
}

/// `type = "adamw"`: the same keys, decoupled weight decay (default 0.01 as in PyTorch).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct AdamWConfig(pub AdamConfig);

impl Default for AdamWConfig {
    fn default() -> Self {
        Self(AdamConfig {
            weight_decay: 0.01,
            ..Default::default()
        })
    }
}

#[derive(Debug)]
pub struct Adam {
    config: AdamConfig,
    decoupled: bool,
    parameters: Vec<NamedParameter>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    step: Tensor,
}

impl Adam {
    fn new(config: AdamConfig, decoupled: bool, parameters: Vec<NamedParameter>) -> Self {
        let zeros = |ps: &[NamedParameter]| ps.iter().map(|p| p.tensor.zeros_like().detach()).collect();
        Self {
            exp_avg: zeros(&parameters),
            exp_avg_sq: zeros(&parameters),
            config,
            decoupled,
            parameters,
            step: Tensor::zeros([1], tch::kind::DOUBLE_CPU),
        }
    }
}

impl Optimizer for Adam {
    fn step(&mut self, lr: f64) {
        let c = &self.config;
        let _ = self.step.g_add_scalar_(1.0);
        let t = self.step.double_value(&[0]);
        let (b1, b2) = c.betas;
        let correction1 = 1.0 - b1.powf(t);
        let correction2 = 1.0 - b2.powf(t);
        tch::no_grad(|| {
            for ((p, m), v) in self
                .parameters
                .iter()
                .zip(self.exp_avg.iter_mut())
                .zip(self.exp_avg_sq.iter_mut())
            {
                let grad = p.tensor.grad();
                if !grad.defined() {
                    continue;
                }
                let decay = c.weight_decay != 0.0 && !(c.exclude_bias_and_norm && p.is_bias_or_norm());
                let mut param = p.tensor.shallow_clone();
                // Adam adds L2 decay to the gradient; AdamW decays the weights directly.
                let g = if decay && !self.decoupled {
                    &grad + &param * c.weight_decay
                } else {
                    grad.shallow_clone()
                };
                if decay && self.decoupled {
                    let _ = param.g_mul_scalar_(1.0 - lr * c.weight_decay);
                }
                let _ = m.g_mul_scalar_(b1).g_add_(&(&g * (1.0 - b1)));
                let _ = v.g_mul_scalar_(b2).g_add_(&(g.square() * (1.0 - b2)));
                let denom = (v.sqrt() / correction2.sqrt()) + c.eps;
                let _ = param.g_sub_(&(&*m / denom * (lr / correction1)));
            }
        });
    }

    fn zero_grad(&mut self) {
        util::zero_grads(&self.parameters);
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut state = util::named_buffers("exp_avg.", &self.parameters, &self.exp_avg);
        state.extend(util::named_buffers("exp_avg_sq.", &self.parameters, &self.exp_avg_sq));
        state.push(("step".into(), self.step.shallow_clone()));
        state
    }

    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<(), String> {
        util::load_buffers("exp_avg.", &self.parameters, &mut self.exp_avg, state)?;
        util::load_buffers("exp_avg_sq.", &self.parameters, &mut self.exp_avg_sq, state)?;
        let (_, step) = state
            .iter()
            .find(|(k, _)| k == "step")
            .ok_or("optimizer state lacks 'step'")?;
        self.step = step.to_kind(tch::Kind::Double).to_device(tch::Device::Cpu).view([1]);
        Ok(())
    }
}

byol::register_plugin! {
    kind: Optimizer,
    name: "adam",
    description: "Adam (PyTorch semantics, L2 weight decay), biases and norms undecayed",
    example: "type = \"adam\"\nlr = 1e-3\nbetas = [0.9, 0.999]\neps = 1e-8\nweight_decay = 0.0\nexclude_bias_and_norm = true\n",
    impl OptimizerSpec for AdamConfig {
        fn build(&self, parameters: Vec<NamedParameter>) -> Box<dyn Optimizer> {
            Box::new(Adam::new(self.clone(), false, parameters))
        }
        fn lr(&self) -> f64 {
            self.lr
        }
    }
}

byol::register_plugin! {
    kind: Optimizer,
    name: "adamw",
    description: "AdamW (decoupled weight decay, PyTorch semantics), biases and norms undecayed",
    example: "type = \"adamw\"\nlr = 1e-3\nbetas = [0.9, 0.999]\neps = 1e-8\nweight_decay = 0.01\nexclude_bias_and_norm = true\n",
    impl OptimizerSpec for AdamWConfig {
        fn build(&self, parameters: Vec<NamedParameter>) -> Box<dyn Optimizer> {
            Box::new(Adam::new(self.0.clone(), true, parameters))
        }
        fn lr(&self) -> f64 {
            self.0.lr
        }
    }
}
