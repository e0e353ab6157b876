//! The optimizer seam: `[optimizer] type = "lars"` names an [`OptimizerSpec`], whose `build` gives
//! the [`Optimizer`] over the online network's parameters.

mod flat;
mod momentum;

use tch::Tensor;

use crate::{BuildContext, ByolError};

pub use momentum::MomentumSgd;

/// A trainable parameter with its state_dict name.
#[derive(Debug)]
pub struct NamedParameter {
    pub name: String,
    pub tensor: Tensor,
}

/// A second handle on the same parameter (not a copy of its values).
impl Clone for NamedParameter {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            tensor: self.tensor.shallow_clone(),
        }
    }
}

impl NamedParameter {
    /// Biases and normalization weights (every 1-D parameter): the paper excludes them from
    /// weight decay and LARS adaptation.
    pub fn is_bias_or_norm(&self) -> bool {
        self.tensor.dim() <= 1
    }
}

/// Updates parameters in place from their `.grad`.
pub trait Optimizer: std::fmt::Debug {
    /// One update with learning rate `lr`. Unlike torch.optim, the momentum optimizers (lars,
    /// sgd) compute each direction in place in `.grad` (weight decay added, LARS's trust ratio
    /// applied), which saves a model-sized buffer: read gradients before the step.
    fn step(&mut self, lr: f64);

    /// One update whose inputs are read on the device when its kernels run, not fixed when
    /// they are queued: the learning rate from `lr` (a 0-d tensor on the parameters' device)
    /// and, when `skip` is given (a 0-d flag there, non-zero for a step whose gradients
    /// overflowed), whether the step happens at all: a skipped step leaves the parameters and
    /// the optimizer state exactly as they were. What a step that never waits for the device
    /// needs: one replayed from a CUDA graph at each step's lr, fp16's loss scale without a
    /// host read of its overflow flag. Optimizers that cannot (the default) return why.
    fn step_at(&mut self, lr: &Tensor, skip: Option<&Tensor>) -> Result<(), String> {
        let _ = (lr, skip);
        Err("this optimizer cannot take its learning rate from a tensor (lars, sgd, adam and adamw with fused = true can)".into())
    }

    /// Clears every parameter's gradient: sets it to None, or zeros it where gradients live in
    /// a buffer of the optimizer's (the fused momentum update's flat buffer).
    fn zero_grad(&mut self);

    /// State tensors by name (momentum buffers, ...), for checkpoints.
    fn state(&self) -> Vec<(String, Tensor)>;

    /// Restores what [`Optimizer::state`] returned; unknown or missing names are errors.
    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<(), String>;
}

/// `[optimizer] type = "..."`: the TOML side of an optimizer plugin.
#[typetag::serde(tag = "type")]
pub trait OptimizerSpec: std::fmt::Debug + Send + Sync {
    /// The optimizer over `parameters` (the online network's, on `context.device`).
    fn build(&self, parameters: Vec<NamedParameter>, context: &BuildContext) -> Result<Box<dyn Optimizer>, ByolError>;

    /// The base learning rate (before warmup, cosine and batch scaling).
    fn lr(&self) -> f64;
}

/// What distinguishes one heavy-ball optimizer from another: the momentum, Nesterov or not, and
/// the direction each parameter's gradient becomes (weight decay added, LARS's trust ratio).
/// [`MomentumSgd`] does the rest.
pub trait MomentumRule: std::fmt::Debug {
    fn momentum(&self) -> f64;

    fn nesterov(&self) -> bool {
        false
    }

    /// How `parameter`'s gradient becomes the direction that enters its momentum buffer.
    fn direction_of(&self, parameter: &NamedParameter) -> Direction;
}

/// The direction of one parameter: `d = g + weight_decay*p`; then with a trust coefficient
/// `eta` (LARS), `d *= eta*||p||/||d||` when both norms are non-zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Direction {
    pub weight_decay: f64,
    pub trust_coefficient: Option<f64>,
}

/// What optimizer plugins share: clearing gradients and saving/restoring per-parameter buffers.
pub mod util {
    use super::NamedParameter;
    use tch::Tensor;

    /// Zeroes every parameter's `.grad` that is defined, keeping the tensors (what an optimizer
    /// whose gradients must stay where they are needs).
    pub fn zero_grads(parameters: &[NamedParameter]) {
        for p in parameters {
            let mut grad = p.tensor.grad();
            if grad.defined() {
                let _ = grad.zero_();
            }
        }
    }

    /// Sets every parameter's `.grad` to None, as torch.optim's `zero_grad()` does by default:
    /// no kernel per tensor, and the next backward writes its gradient instead of adding it to
    /// zeros.
    pub fn clear_grads(parameters: &[NamedParameter]) {
        for p in parameters.iter().filter(|p| p.tensor.grad().defined()) {
            torch_ext::foreach::clear_grad(&p.tensor)
                .unwrap_or_else(|e| panic!("clearing the gradient of '{}': {e}", p.name));
        }
    }

    /// Loads `{prefix}{param name}` entries of `state` into `buffers` (same order as `parameters`).
    pub fn load_buffers(
        prefix: &str,
        parameters: &[NamedParameter],
        buffers: &mut [Tensor],
        state: &[(String, Tensor)],
    ) -> Result<(), String> {
        for (p, buffer) in parameters.iter().zip(buffers.iter_mut()) {
            let key = format!("{prefix}{}", p.name);
            let (_, saved) = state
                .iter()
                .find(|(k, _)| *k == key)
                .ok_or_else(|| format!("optimizer state lacks '{key}'"))?;
            if saved.size() != buffer.size() {
                return Err(format!(
                    "optimizer state '{key}' has shape {:?}, expected {:?}",
                    saved.size(),
                    buffer.size()
                ));
            }
            tch::no_grad(|| buffer.copy_(saved));
        }
        Ok(())
    }

    pub fn named_buffers(prefix: &str, parameters: &[NamedParameter], buffers: &[Tensor]) -> Vec<(String, Tensor)> {
        parameters
            .iter()
            .zip(buffers)
            .map(|(p, b)| (format!("{prefix}{}", p.name), b.shallow_clone()))
            .collect()
    }
}
