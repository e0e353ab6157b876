//! `[optimizer] type = "adam"` and `type = "adamw"`: torch.optim.Adam (L2 weight decay added to
//! the gradient) and torch.optim.AdamW (decoupled decay `p -= lr*wd*p`), with bias correction.

use serde::{Deserialize, Serialize};
use tch::Tensor;

use byol::optimizer::{util, NamedParameter, Optimizer, OptimizerSpec};
use byol::{BuildContext, ByolError};

/// The keys of `[optimizer] type = "adam"` and `type = "adamw"`: one field list, two structs,
/// so that each can take its PyTorch defaults (serde fills a missing key from `Default`).
macro_rules! adam_config {
    ($(#[$doc:meta])* $name:ident, weight_decay: $weight_decay:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Serialize, Deserialize, PartialEq, byol::KeyDocs)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            /// Base learning rate (scaled by batch/256 when schedule.scale_lr_by_batch).
            pub lr: f64,
            /// Decay rates of the running averages of the gradient and of its square.
            pub betas: (f64, f64),
            /// Added to the denominator (after bias correction), for numerical stability.
            pub eps: f64,
            /// Adam: L2 penalty added to the gradient; AdamW: decoupled decay rate.
            pub weight_decay: f64,
            /// No weight decay on biases and normalization parameters (1-D tensors).
            pub exclude_bias_and_norm: bool,
        }

        impl Default for $name {
            fn default() -> Self {
                Self {
                    lr: 1e-3,
                    betas: (0.9, 0.999),
                    eps: 1e-8,
                    weight_decay: $weight_decay,
                    exclude_bias_and_norm: true,
                }
            }
        }

        impl $name {
            fn hyperparameters(&self, decoupled: bool) -> Hyperparameters {
                Hyperparameters {
                    betas: self.betas,
                    eps: self.eps,
                    weight_decay: self.weight_decay,
                    exclude_bias_and_norm: self.exclude_bias_and_norm,
                    decoupled,
                }
            }
        }
    };
}

adam_config! {
    /// `type = "adam"`: L2 weight decay added to the gradient; the defaults of torch.optim.Adam
    /// (lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 0).
    AdamConfig, weight_decay: 0.0
}

adam_config! {
    /// `type = "adamw"`: decoupled weight decay; the defaults of torch.optim.AdamW (lr 1e-3,
    /// betas (0.9, 0.999), eps 1e-8, weight_decay 0.01).
    AdamWConfig, weight_decay: 0.01
}

/// What the update uses (the learning rate comes with each step).
#[derive(Debug, Clone)]
struct Hyperparameters {
    betas: (f64, f64),
    eps: f64,
    weight_decay: f64,
    exclude_bias_and_norm: bool,
    /// AdamW: `p -= lr * weight_decay * p` instead of adding `weight_decay * p` to the gradient.
    decoupled: bool,
}

#[derive(Debug)]
pub struct Adam {
    config: Hyperparameters,
    parameters: Vec<NamedParameter>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    step: Tensor,
}

impl Adam {
    fn new(config: Hyperparameters, parameters: Vec<NamedParameter>) -> Self {
        let zeros = |ps: &[NamedParameter]| ps.iter().map(|p| p.tensor.zeros_like().detach()).collect();
        Self {
            exp_avg: zeros(&parameters),
            exp_avg_sq: zeros(&parameters),
            config,
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
                let g = if decay && !c.decoupled {
                    &grad + &param * c.weight_decay
                } else {
                    grad.shallow_clone()
                };
                if decay && c.decoupled {
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
    name: "adam",
    description: "Adam (PyTorch semantics, L2 weight decay), biases and norms undecayed",
    impl OptimizerSpec for AdamConfig {
        fn build(&self, parameters: Vec<NamedParameter>, _: &BuildContext) -> Result<Box<dyn Optimizer>, ByolError> {
            Ok(Box::new(Adam::new(self.hyperparameters(false), parameters)))
        }

        fn lr(&self) -> f64 {
            self.lr
        }
    }
}

byol::register_plugin! {
    name: "adamw",
    description: "AdamW (decoupled weight decay, PyTorch semantics), biases and norms undecayed",
    impl OptimizerSpec for AdamWConfig {
        fn build(&self, parameters: Vec<NamedParameter>, _: &BuildContext) -> Result<Box<dyn Optimizer>, ByolError> {
            Ok(Box::new(Adam::new(self.hyperparameters(true), parameters)))
        }

        fn lr(&self) -> f64 {
            self.lr
        }
    }
}
