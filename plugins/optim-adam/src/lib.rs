//! `[optimizer] type = "adam"` and `type = "adamw"`: torch.optim.Adam (L2 weight decay added to
//! the gradient) and torch.optim.AdamW (decoupled decay `p -= lr*wd*p`), with bias correction.
//! By default PyTorch's own fused kernel runs the update (`torch.optim.Adam(fused=True)`); with
//! `fused = false`, tensor by tensor. A parameter without a gradient at some step is left alone
//! by either; the fused update keeps one step count for all parameters (PyTorch keeps one each),
//! so the two differ only for a parameter that misses steps, which BYOL's networks never do.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use byol::optimizer::{util, NamedParameter, Optimizer, OptimizerSpec};
use byol::{BuildContext, ByolError};
use torch_ext::foreach::{self, AdamHyperparameters, AdamTensors, LearningRate};

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
            /// L2 penalty added to the gradient (Adam), or the decoupled decay rate (AdamW).
            pub weight_decay: f64,
            /// No weight decay on biases and normalization parameters (1-D tensors).
            pub exclude_bias_and_norm: bool,
            /// PyTorch's fused kernel (torch.optim.Adam(fused=True)): a few launches a step on
            /// CUDA (decayed and undecayed parameters, the step count), none waiting for the
            /// device; false: tensor by tensor.
            pub fused: bool,
        }

        impl Default for $name {
            fn default() -> Self {
                Self {
                    lr: 1e-3,
                    betas: (0.9, 0.999),
                    eps: 1e-8,
                    weight_decay: $weight_decay,
                    exclude_bias_and_norm: true,
                    fused: true,
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
                    fused: self.fused,
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
    fused: bool,
}

impl Hyperparameters {
    /// Whether `parameter` is decayed.
    fn decays(&self, parameter: &NamedParameter) -> bool {
        self.weight_decay != 0.0 && !(self.exclude_bias_and_norm && parameter.is_bias_or_norm())
    }
}

#[derive(Debug)]
pub struct Adam {
    config: Hyperparameters,
    parameters: Vec<NamedParameter>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    /// Steps taken: per tensor, a float64 on the CPU, read by the host; fused, a float32 on the
    /// parameters' device, read by the kernel (as torch.optim.Adam(fused=True) keeps it).
    step: Tensor,
}

impl Adam {
    fn new(config: Hyperparameters, parameters: Vec<NamedParameter>) -> Self {
        let zeros = |ps: &[NamedParameter]| ps.iter().map(|p| p.tensor.zeros_like().detach()).collect();
        let step = match parameters.first().filter(|_| config.fused) {
            Some(p) => Tensor::zeros([1], (Kind::Float, p.tensor.device())),
            None => Tensor::zeros([1], tch::kind::DOUBLE_CPU),
        };
        Self {
            exp_avg: zeros(&parameters),
            exp_avg_sq: zeros(&parameters),
            config,
            parameters,
            step,
        }
    }

    /// The update tensor by tensor, with the lr and the bias corrections computed on the host.
    fn step_each(&mut self, lr: f64) {
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
                let decay = c.decays(p);
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

    /// The update by PyTorch's fused kernel, one call for the decayed parameters and one for the
    /// rest; nothing is read on the host. With `skip` set on the device, nothing changes.
    fn step_fused(&mut self, lr: LearningRate<'_>, skip: Option<&Tensor>) {
        let found_inf = skip.map(|flag| flag.to_kind(Kind::Float));
        tch::no_grad(|| {
            let _ = self.step.g_add_scalar_(1.0);
            for decayed in [true, false] {
                // The group's parameters that have a gradient, with their averages, in one pass.
                let (mut params, mut grads, mut exp_avgs, mut exp_avg_sqs) = (vec![], vec![], vec![], vec![]);
                for (i, p) in self.parameters.iter().enumerate() {
                    if self.config.decays(p) != decayed {
                        continue;
                    }
                    let grad = p.tensor.grad();
                    if grad.defined() {
                        params.push(p.tensor.shallow_clone());
                        grads.push(grad);
                        exp_avgs.push(self.exp_avg[i].shallow_clone());
                        exp_avg_sqs.push(self.exp_avg_sq[i].shallow_clone());
                    }
                }
                if params.is_empty() {
                    continue;
                }
                let steps: Vec<Tensor> = params.iter().map(|_| self.step.shallow_clone()).collect();
                let tensors = AdamTensors {
                    params: &params,
                    grads: &grads,
                    exp_avgs: &exp_avgs,
                    exp_avg_sqs: &exp_avg_sqs,
                    steps: &steps,
                };
                let hyperparameters = AdamHyperparameters {
                    betas: self.config.betas,
                    eps: self.config.eps,
                    weight_decay: if decayed { self.config.weight_decay } else { 0.0 },
                    decoupled: self.config.decoupled,
                };
                foreach::fused_adam_(&tensors, lr, &hyperparameters, found_inf.as_ref()).unwrap_or_else(|e| {
                    panic!("fused adam step: {e} (were parameters moved or re-created after the optimizer was built?)")
                });
            }
            // A skipped step is not counted, as torch.optim.Adam(fused=True) takes it back.
            if let Some(found_inf) = &found_inf {
                let _ = self.step.g_sub_(found_inf);
            }
        });
    }
}

impl Optimizer for Adam {
    fn step(&mut self, lr: f64) {
        if self.config.fused {
            self.step_fused(LearningRate::Value(lr), None);
        } else {
            self.step_each(lr);
        }
    }

    fn step_at(&mut self, lr: &Tensor, skip: Option<&Tensor>) -> Result<(), String> {
        if !self.config.fused {
            return Err(
                "the per-tensor Adam cannot take its learning rate from a tensor: set optimizer.fused = true".into(),
            );
        }
        self.step_fused(LearningRate::Tensor(lr), skip);
        Ok(())
    }

    fn zero_grad(&mut self) {
        util::clear_grads(&self.parameters);
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
        // Either kind of update resumes from the other's checkpoint.
        self.step = step
            .to_kind(self.step.kind())
            .to_device(self.step.device())
            .view([1])
            .copy();
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
