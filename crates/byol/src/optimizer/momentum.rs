//! PyTorch's momentum SGD around a [`MomentumRule`], per tensor or fused over flat buffers.

use tch::Tensor;

use super::flat::{FlatMomentum, Lr};
use super::{util, Direction, MomentumRule, NamedParameter, Optimizer};

/// PyTorch's momentum SGD around a [`MomentumRule`]: per parameter `b = m*b + d`, then
/// `p -= lr*b` (Nesterov: `p -= lr*(d + m*b)`); with momentum 0, `p -= lr*d`. A parameter without
/// a gradient is left alone, as PyTorch does. The buffers are the checkpointed state, as
/// `momentum.<parameter name>`, the same in both layouts.
#[derive(Debug)]
pub struct MomentumSgd<R> {
    rule: R,
    parameters: Vec<NamedParameter>,
    /// In parameter order: own buffers, or views of the fused update's flat buffer.
    momentum: Vec<Tensor>,
    fused: Fused,
}

#[derive(Debug)]
enum Fused {
    /// About a dozen small kernels per parameter and step.
    Off,
    /// Fused from the first step on: only then is it known which parameters get gradients.
    Pending,
    /// The parameters that had a gradient at the first step share flat buffers (a handful of
    /// kernels per step, whatever their number); the `rest` keep the per-tensor update.
    On { flat: FlatMomentum, rest: Vec<usize> },
}

impl<R: MomentumRule> MomentumSgd<R> {
    /// The per-tensor update: one parameter at a time, as `torch.optim.SGD(foreach=False)`.
    pub fn new(rule: R, parameters: Vec<NamedParameter>) -> Self {
        // PyTorch starts the momentum buffer at the first gradient; starting at zero and adding
        // the gradient is the same thing.
        let momentum = parameters.iter().map(|p| p.tensor.zeros_like().detach()).collect();
        Self {
            rule,
            parameters,
            momentum,
            fused: Fused::Off,
        }
    }

    /// The fused update: from the first step, the `.grad` of every parameter that has one
    /// becomes a view of one flat gradient buffer and their momentum one flat buffer, so a step
    /// is a few whole-buffer ops plus multi-tensor (foreach) ops for what touches the parameters.
    /// The same arithmetic as [`MomentumSgd::new`] (on a CPU bit for bit; on CUDA the per-tensor
    /// norms may differ in the last bits). Parameters that cannot share a buffer (several
    /// devices or dtypes, strided layouts other than contiguous and channels_last) keep the
    /// per-tensor update.
    pub fn fused(rule: R, parameters: Vec<NamedParameter>) -> Self {
        Self {
            fused: Fused::Pending,
            ..Self::new(rule, parameters)
        }
    }

    /// Moves the parameters that have a gradient now into flat buffers (keeping their momentum).
    fn fuse(&mut self) {
        let (members, rest): (Vec<usize>, Vec<usize>) =
            (0..self.parameters.len()).partition(|&i| self.parameters[i].tensor.grad().defined());
        let pick = |i: &usize| self.parameters[*i].clone();
        let parameters: Vec<NamedParameter> = members.iter().map(pick).collect();
        let directions: Vec<Direction> = parameters.iter().map(|p| self.rule.direction_of(p)).collect();
        let momentum: Vec<Tensor> = members.iter().map(|&i| self.momentum[i].shallow_clone()).collect();
        self.fused = match FlatMomentum::new(&parameters, &directions, &momentum) {
            Some(flat) => {
                for (&i, view) in members.iter().zip(flat.momentum_views()) {
                    self.momentum[i] = view;
                }
                Fused::On { flat, rest }
            }
            None => Fused::Off,
        };
    }
}

impl<R: MomentumRule> Optimizer for MomentumSgd<R> {
    fn step(&mut self, lr: f64) {
        if matches!(self.fused, Fused::Pending) {
            self.fuse();
        }
        let (m, nesterov) = (self.rule.momentum(), self.rule.nesterov());
        match &mut self.fused {
            Fused::On { flat, rest } => {
                flat.step(Lr::Value(lr), None, m, nesterov);
                step_each(
                    &self.rule,
                    &self.parameters,
                    &mut self.momentum,
                    rest.iter().copied(),
                    lr,
                );
            }
            Fused::Off | Fused::Pending => {
                let all = 0..self.parameters.len();
                step_each(&self.rule, &self.parameters, &mut self.momentum, all, lr);
            }
        }
    }

    fn step_at(&mut self, lr: &Tensor, skip: Option<&Tensor>) -> Result<(), String> {
        if matches!(self.fused, Fused::Pending) {
            self.fuse();
        }
        let Fused::On { flat, rest } = &mut self.fused else {
            return Err(
                "the per-tensor update cannot take its learning rate from a tensor: set optimizer.fused = true".into(),
            );
        };
        if let Some(&i) = rest.iter().find(|&&i| self.parameters[i].tensor.grad().defined()) {
            return Err(format!(
                "parameter '{}' got its first gradient after the first step, outside the fused update",
                self.parameters[i].name
            ));
        }
        flat.step(Lr::Tensor(lr), skip, self.rule.momentum(), self.rule.nesterov());
        Ok(())
    }

    fn zero_grad(&mut self) {
        match &mut self.fused {
            Fused::On { flat, rest } => {
                flat.zero_grad();
                for &i in rest.iter() {
                    util::clear_grads(std::slice::from_ref(&self.parameters[i]));
                }
            }
            Fused::Off | Fused::Pending => util::clear_grads(&self.parameters),
        }
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        util::named_buffers("momentum.", &self.parameters, &self.momentum)
    }

    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<(), String> {
        util::load_buffers("momentum.", &self.parameters, &mut self.momentum, state)
    }
}
/// The per-tensor update of the parameters at `indices`, with their momentum buffers.
fn step_each<R: MomentumRule>(
    rule: &R,
    parameters: &[NamedParameter],
    momentum: &mut [Tensor],
    indices: impl Iterator<Item = usize>,
    lr: f64,
) {
    let (m, nesterov) = (rule.momentum(), rule.nesterov());
    tch::no_grad(|| {
        for i in indices {
            let (p, buf) = (&parameters[i], &mut momentum[i]);
            let grad = p.tensor.grad();
            if !grad.defined() {
                continue;
            }
            let mut d = direction(&rule.direction_of(p), p, grad);
            if m != 0.0 {
                let _ = buf.g_mul_scalar_(m).g_add_(&d);
                if nesterov {
                    add_scaled_(&d, buf, m);
                } else {
                    d = buf.shallow_clone();
                }
            }
            add_scaled_(&p.tensor, &d, -lr);
        }
    });
}

/// One parameter's direction from its gradient, in place in `grad`: PyTorch's SGD computes the
/// same `grad.add(param, alpha=weight_decay)` into a new tensor and leaves `.grad` as it was.
fn direction(rule: &Direction, p: &NamedParameter, grad: Tensor) -> Tensor {
    let mut d = grad;
    if rule.weight_decay != 0.0 {
        add_scaled_(&d, &p.tensor, rule.weight_decay);
    }
    if let Some(eta) = rule.trust_coefficient {
        let param_norm = p.tensor.norm();
        let update_norm = d.norm();
        let one = param_norm.ones_like();
        let trust = (&param_norm * eta / &update_norm)
            .where_self(&update_norm.gt(0.0), &one)
            .where_self(&param_norm.gt(0.0), &one);
        d *= trust;
    }
    d
}

/// `a += alpha * b`, rounded once (`Tensor.add_(b, alpha=alpha)`, which tch does not bind).
fn add_scaled_(a: &Tensor, b: &Tensor, alpha: f64) {
    torch_ext::foreach::add_scaled_(&[a.shallow_clone()], &[b.shallow_clone()], alpha)
        .unwrap_or_else(|e| panic!("optimizer step: {e}"));
}
