//! The target network's exponential moving average and its tau schedule.

use std::collections::HashMap;

use tch::{nn::VarStore, Kind, Tensor};

use crate::ByolError;

/// "τ = 1 − (1 − τ_base)·(cos(πk/K) + 1)/2 with k the current training step and K the maximum
/// number of training steps" (BYOL, section 3.2).
pub fn tau_at(step: u64, total_steps: u64, tau_base: f64) -> f64 {
    let progress = if total_steps == 0 {
        1.0
    } else {
        step.min(total_steps) as f64 / total_steps as f64
    };
    1.0 - (1.0 - tau_base) * ((std::f64::consts::PI * progress).cos() + 1.0) / 2.0
}

/// Updates `target.X <- tau * target.X + (1 - tau) * online.X` for every trainable parameter
/// in one fused kernel: both sides' parameters are re-seated as views into one flat buffer each,
/// so the whole EMA is a single `lerp_` (not one launch per tensor). Buffers (BN running
/// statistics) are not averaged: the target keeps its own, as in the paper.
#[derive(Debug)]
pub struct TargetUpdater {
    online_flat: Tensor,
    target_flat: Tensor,
    parameters: usize,
    /// The first target parameter, a handle on the VarStore's tensor: converting the store
    /// (`vs.double()`, `set_device`) re-seats it elsewhere, and the EMA would then move buffers
    /// the networks no longer read.
    first_target: Option<Tensor>,
}

impl TargetUpdater {
    /// Pairs `{online_prefix}X` with `{target_prefix}X` for every variable under the target prefix,
    /// copies the online values into the target (target = online at init), and flattens the
    /// trainable pairs.
    pub fn new(vs: &VarStore, online_prefix: &str, target_prefix: &str) -> Result<Self, ByolError> {
        Self::pair(vs, (online_prefix, target_prefix), false, true)
    }

    /// The pairs of [`TargetUpdater::new`] as they are, the target's values kept (its EMA so
    /// far); with `channels_last`, 4-D parameters (conv weights) are laid out NHWC inside the flat
    /// buffers, so convolutions get channels_last weights while the EMA stays one `lerp_` (both
    /// buffers share the layout, so it is elementwise either way).
    pub fn relaid_out(
        vs: &VarStore,
        online_prefix: &str,
        target_prefix: &str,
        channels_last: bool,
    ) -> Result<Self, ByolError> {
        Self::pair(vs, (online_prefix, target_prefix), channels_last, false)
    }

    fn pair(
        vs: &VarStore,
        (online_prefix, target_prefix): (&str, &str),
        channels_last: bool,
        copy_online: bool,
    ) -> Result<Self, ByolError> {
        let variables = vs.variables();
        let trainable: Vec<Tensor> = vs.trainable_variables();
        let is_trainable = |t: &Tensor| trainable.iter().any(|v| v.data_ptr() == t.data_ptr());
        let mut names: Vec<&String> = variables.keys().filter(|n| n.starts_with(target_prefix)).collect();
        names.sort();
        let mut online_params = Vec::new();
        let mut target_params = Vec::new();
        for name in names {
            let suffix = &name[target_prefix.len()..];
            let online_name = format!("{online_prefix}{suffix}");
            let online = variables.get(&online_name).ok_or_else(|| {
                ByolError::Config(format!(
                    "target variable '{name}' has no online counterpart '{online_name}'"
                ))
            })?;
            let target = &variables[name];
            if online.size() != target.size() {
                return Err(ByolError::Config(format!(
                    "'{online_name}' and '{name}' differ in shape"
                )));
            }
            if copy_online {
                tch::no_grad(|| target.shallow_clone().copy_(online));
            }
            if is_trainable(online) {
                online_params.push(online.shallow_clone());
                target_params.push(target.shallow_clone());
            }
        }
        let parameters = online_params.len();
        Ok(Self {
            online_flat: flatten_into_one(&online_params, channels_last),
            target_flat: flatten_into_one(&target_params, channels_last),
            parameters,
            first_target: target_params.first().map(Tensor::shallow_clone),
        })
    }

    /// Panics when the target's parameters are no longer the flat buffer's views.
    fn check_in_place(&self) {
        if let Some(first) = &self.first_target {
            assert!(
                first.data_ptr() == self.target_flat.data_ptr(),
                "the target network's parameters are no longer where its EMA updates them: the VarStore was \
                 converted after the networks were built (vs.double(), vs.half(), set_kind, set_device, or a \
                 load that changed their kind); build the networks in a VarStore of the device and kind you \
                 train in, and load weights of that kind"
            );
        }
    }

    /// One EMA step with decay `tau`.
    pub fn update(&self, tau: f64) {
        self.check_in_place();
        tch::no_grad(|| {
            let _ = self.target_flat.shallow_clone().lerp_(&self.online_flat, 1.0 - tau);
        });
    }

    /// One EMA step whose weight `1 - tau` is read from `weight` (a 0-d tensor on the
    /// parameters' device) when the kernel runs: a step replayed from a CUDA graph.
    pub fn update_with_weight(&self, weight: &Tensor) {
        self.check_in_place();
        tch::no_grad(|| {
            let _ = self.target_flat.shallow_clone().lerp_tensor_(&self.online_flat, weight);
        });
    }

    /// How many parameter tensors the flat buffers hold.
    pub fn parameter_count(&self) -> usize {
        self.parameters
    }
}

/// Copies `tensors` into one contiguous buffer and makes each tensor a view of its slot (at the
/// alignment of a tensor of its own, [`crate::flat_layout`]), so an in-place update of the buffer
/// is an in-place update of every tensor (and vice versa). With `channels_last`, a 4-D tensor's
/// slot holds it in `[O, H, W, I]` order (a channels_last view).
fn flatten_into_one(tensors: &[Tensor], channels_last: bool) -> Tensor {
    let Some(first) = tensors.first() else {
        return Tensor::zeros([0], (Kind::Float, tch::Device::Cpu));
    };
    let (offsets, len) = crate::flat_layout::slot_offsets(tensors.iter().map(|t| t.numel() as i64), first.kind());
    let flat = Tensor::zeros([len], (first.kind(), first.device()));
    tch::no_grad(|| {
        for (t, offset) in tensors.iter().zip(offsets) {
            let n = t.numel() as i64;
            let size = t.size();
            let slot = match size.as_slice() {
                &[o, i, h, w] if channels_last => flat.narrow(0, offset, n).view([o, h, w, i]).permute([0, 3, 1, 2]),
                _ => flat.narrow(0, offset, n).view(size.as_slice()),
            };
            slot.shallow_clone().copy_(t);
            t.shallow_clone().set_data(&slot);
        }
    });
    flat
}

/// Variables of `vs` whose name starts with `prefix`, with the prefix removed.
pub fn variables_under(vs: &VarStore, prefix: &str) -> HashMap<String, Tensor> {
    vs.variables()
        .into_iter()
        .filter_map(|(name, t)| name.strip_prefix(prefix).map(|rest| (rest.to_string(), t)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{tau_at, TargetUpdater};
    use tch::nn::{Init, VarStore};

    #[test]
    fn every_averaged_parameter_starts_on_a_slot_boundary() {
        let vs = VarStore::new(tch::Device::Cpu);
        // Sizes that would leave the next tensor unaligned if packed end to end.
        let shapes: [&[i64]; 4] = [&[3], &[5, 7], &[2, 3, 3, 3], &[1]];
        for side in ["online", "target"] {
            for (i, shape) in shapes.iter().enumerate() {
                let _ = (vs.root() / side).var(&format!("p{i}"), shape, Init::Randn { mean: 0.0, stdev: 1.0 });
            }
        }
        for channels_last in [false, true] {
            let ema = TargetUpdater::relaid_out(&vs, "online.", "target.", channels_last).unwrap();
            assert_eq!(ema.parameter_count(), shapes.len());
            for (name, t) in vs.variables() {
                let address = t.data_ptr() as usize;
                assert_eq!(
                    address % crate::flat_layout::SLOT_ALIGNMENT,
                    0,
                    "{name} starts at {address:#x}"
                );
            }
            let before = vs.variables()["target.p1"].copy();
            ema.update(0.5);
            let expected = (&before + &vs.variables()["online.p1"]) / 2.0;
            assert!(vs.variables()["target.p1"].allclose(&expected, 1e-6, 1e-6, false));
        }
    }

    #[test]
    fn tau_follows_the_cosine_schedule() {
        let (base, k) = (0.996, 1000);
        assert!((tau_at(0, k, base) - base).abs() < 1e-12, "tau starts at tau_base");
        assert!(
            (tau_at(k / 2, k, base) - (1.0 - (1.0 - base) / 2.0)).abs() < 1e-12,
            "halfway between"
        );
        assert!((tau_at(k, k, base) - 1.0).abs() < 1e-12, "tau ends at 1");
        let formula = 1.0 - (1.0 - base) * ((std::f64::consts::PI * 250.0 / 1000.0).cos() + 1.0) / 2.0;
        assert!((tau_at(250, k, base) - formula).abs() < 1e-12);
    }
}
