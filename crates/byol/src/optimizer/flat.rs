//! The fused layout of [`super::MomentumSgd`]. Every parameter's `.grad` is a view of one flat
//! gradient buffer (backward accumulates into it in place) and the momentum is one flat buffer,
//! so a step is: weight decay and the update as multi-tensor ops over the parameter lists, the
//! per-tensor norms of LARS as one multi-tensor norm each, and everything else as a few ops over
//! the whole buffers. On CUDA that is about ten launches a step (plus one multiply per LARS
//! tensor) instead of a dozen per tensor, and no host synchronization, so the step can be
//! captured in a CUDA graph. On a CPU the same ops run bucket by bucket, each bucket a run of
//! parameters small enough to stay in cache through all of them (whole-buffer passes over a
//! large model would stream it through memory once per op). Each parameter's slot starts where
//! a tensor of its own would be aligned ([`crate::flat_layout`]).

use tch::{Kind, Tensor};

use torch_ext::foreach;

use super::{Direction, NamedParameter};

/// The learning rate of a step: a number fixed when the kernels are queued, or a 0-d tensor
/// read when they run (a step replayed from a CUDA graph).
pub(super) enum Lr<'a> {
    Value(f64),
    Tensor(&'a Tensor),
}

#[derive(Debug)]
pub(super) struct FlatMomentum {
    parameters: Vec<Tensor>,
    slots: Vec<Slot>,
    /// Every parameter's gradient, then its direction after [`FlatMomentum::step`].
    grads: Tensor,
    /// What `.grad` of each parameter should be: its slot of `grads`.
    grad_views: Vec<Tensor>,
    momentum: Tensor,
    momentum_views: Vec<Tensor>,
    buckets: Vec<Bucket>,
}

/// A run of consecutive parameters updated together: `parameters` of the whole list, at
/// `offset..offset + len` in the flat buffers.
#[derive(Debug)]
struct Bucket {
    parameters: std::ops::Range<usize>,
    offset: i64,
    len: i64,
    /// The parameters with weight decay, grouped by its value.
    decayed: Vec<(f64, Vec<usize>)>,
    /// The parameters whose direction LARS rescales by its trust ratio.
    adapted: Option<Adapted>,
}

/// Where a parameter lives in the flat buffers, in its own memory layout (contiguous or
/// channels_last), so that its gradient view has the parameter's strides.
#[derive(Debug)]
struct Slot {
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

#[derive(Debug)]
struct Adapted {
    indices: Vec<usize>,
    /// Each adapted parameter's trust coefficient.
    eta: Tensor,
}

impl FlatMomentum {
    /// Flat buffers for `parameters` (each with its rule's direction), their momentum starting
    /// from `momentum` and their `.grad` from what it holds now; None when the parameters cannot
    /// share flat buffers: none at all, several devices or dtypes, or a layout other than
    /// contiguous and channels_last.
    pub(super) fn new(parameters: &[NamedParameter], directions: &[Direction], momentum: &[Tensor]) -> Option<Self> {
        let first = &parameters.first()?.tensor;
        let (kind, device) = (first.kind(), first.device());
        let shares_buffer = |t: &Tensor| {
            t.kind() == kind
                && t.device() == device
                && (t.is_contiguous() || (t.dim() == 4 && torch_ext::is_channels_last(t)))
        };
        if !first.is_floating_point() || !parameters.iter().all(|p| shares_buffer(&p.tensor)) {
            return None;
        }
        let (offsets, len) = crate::flat_layout::slot_offsets(parameters.iter().map(|p| p.tensor.numel() as i64), kind);
        let slots: Vec<Slot> = parameters
            .iter()
            .zip(offsets)
            .map(|(p, offset)| Slot {
                offset,
                size: p.tensor.size(),
                stride: p.tensor.stride(),
            })
            .collect();
        let grads = Tensor::zeros([len], (kind, device));
        let mut flat = Self {
            parameters: parameters.iter().map(|p| p.tensor.shallow_clone()).collect(),
            grad_views: Vec::new(),
            momentum: grads.zeros_like(),
            momentum_views: Vec::new(),
            grads,
            buckets: buckets(&slots, directions, kind, device),
            slots,
        };
        flat.grad_views = flat.views(&flat.grads);
        flat.momentum_views = flat.views(&flat.momentum);
        tch::no_grad(|| {
            for (view, start) in flat.momentum_views.iter().zip(momentum) {
                view.shallow_clone().copy_(start);
            }
            flat.relink_grads(true);
        });
        Some(flat)
    }

    /// One update at `lr`; with a `skip` flag (see `Optimizer::step_at`), one that the device
    /// turns into no update at all when the flag is set.
    pub(super) fn step(&mut self, lr: Lr<'_>, skip: Option<&Tensor>, momentum: f64, nesterov: bool) {
        tch::no_grad(|| {
            self.relink_grads(true);
            match skip {
                None => self.step_buckets(&lr, momentum, nesterov),
                Some(skip) => self.step_unless(skip, lr, momentum, nesterov),
            }
        });
    }

    fn step_buckets(&self, lr: &Lr<'_>, momentum: f64, nesterov: bool) {
        for bucket in &self.buckets {
            self.step_bucket(bucket, lr, momentum, nesterov);
        }
    }

    /// The step, decided on the device: when `skip` is set, the gradients (holding an Inf or
    /// NaN then) are zeroed so that every op stays finite, the lr becomes 0 so that each
    /// parameter keeps its value (`p - 0*u == p` for a finite `u`), and the momentum gets back
    /// the value saved before the step. When it is not set, the same ops as an unskippable
    /// step, the lr multiplied by 1.
    fn step_unless(&self, skip: &Tensor, lr: Lr<'_>, momentum: f64, nesterov: bool) {
        let skipped = skip.ne(0.0);
        let _ = self.grads.shallow_clone().masked_fill_(&skipped, 0.0);
        let kept = skipped.logical_not().to_kind(self.grads.kind());
        let lr = match lr {
            Lr::Value(lr) => kept * lr,
            Lr::Tensor(lr) => kept * lr,
        };
        let saved = (momentum != 0.0).then(|| self.momentum.copy());
        self.step_buckets(&Lr::Tensor(&lr), momentum, nesterov);
        if let Some(saved) = saved {
            self.momentum
                .shallow_clone()
                .copy_(&saved.where_self(&skipped, &self.momentum));
        }
    }

    fn step_bucket(&self, bucket: &Bucket, lr: &Lr<'_>, momentum: f64, nesterov: bool) {
        for (weight_decay, indices) in &bucket.decayed {
            let (dirs, params) = (pick(&self.grad_views, indices), pick(&self.parameters, indices));
            foreach::add_scaled_(&dirs, &params, *weight_decay).unwrap_or_else(|e| fail(e));
        }
        if let Some(adapted) = &bucket.adapted {
            let param_norm = foreach::norms(&pick(&self.parameters, &adapted.indices)).unwrap_or_else(|e| fail(e));
            let update_norm = foreach::norms(&pick(&self.grad_views, &adapted.indices)).unwrap_or_else(|e| fail(e));
            // The per-tensor update's arithmetic, one element per parameter.
            let one = param_norm.ones_like();
            let trust = (&param_norm * &adapted.eta / &update_norm)
                .where_self(&update_norm.gt(0.0), &one)
                .where_self(&param_norm.gt(0.0), &one);
            // One small multiply per adapted tensor: spreading the ratios over the flat buffer
            // instead would cost an index as large as the model.
            for (k, &i) in adapted.indices.iter().enumerate() {
                let _ = self.grad_views[i].shallow_clone().g_mul_(&trust.select(0, k as i64));
            }
        }
        let grads = self.grads.narrow(0, bucket.offset, bucket.len);
        let range = bucket.parameters.clone();
        let buffer = self.momentum.narrow(0, bucket.offset, bucket.len);
        let (update, views) = if momentum != 0.0 {
            let _ = buffer.shallow_clone().g_mul_scalar_(momentum).g_add_(&grads);
            if nesterov {
                add_scaled_(&grads, &buffer, momentum);
                (grads, &self.grad_views[range.clone()])
            } else {
                (buffer, &self.momentum_views[range.clone()])
            }
        } else {
            (grads, &self.grad_views[range.clone()])
        };
        let parameters = &self.parameters[range.clone()];
        match lr {
            Lr::Value(lr) => foreach::add_scaled_(parameters, views, -lr),
            Lr::Tensor(lr) => {
                // lr * update first (one more pass), so the lr is read when the kernel runs.
                let scaled = update * *lr;
                foreach::add_scaled_(parameters, &views_of(&scaled, &self.slots[range], bucket.offset), -1.0)
            }
        }
        .unwrap_or_else(|e| fail(e));
    }

    pub(super) fn zero_grad(&mut self) {
        tch::no_grad(|| {
            self.relink_grads(false);
            let _ = self.grads.zero_();
        });
    }

    /// Each parameter's slot of the momentum buffer.
    pub(super) fn momentum_views(&self) -> Vec<Tensor> {
        self.momentum_views.iter().map(Tensor::shallow_clone).collect()
    }

    fn views(&self, flat: &Tensor) -> Vec<Tensor> {
        views_of(flat, &self.slots, 0)
    }

    /// Makes every parameter's `.grad` its view again where something replaced or cleared it
    /// (a `.grad = None`, a gradient assigned by other code), keeping the replacement's values
    /// when `keep` (a missing gradient counts as zero). Host-side pointer checks, no kernels,
    /// when nothing changed.
    fn relink_grads(&mut self, keep: bool) {
        for (p, view) in self.parameters.iter().zip(&self.grad_views) {
            let grad = p.grad();
            if grad.defined() && grad.data_ptr() == view.data_ptr() {
                continue;
            }
            if keep && grad.defined() {
                view.shallow_clone().copy_(&grad);
            } else {
                let _ = view.shallow_clone().zero_();
            }
            torch_ext::foreach::set_grad(p, view).unwrap_or_else(|e| fail(e));
        }
    }
}

/// The parameters in `slots` as views of `flat`, a buffer that starts at flat offset `start`.
fn views_of(flat: &Tensor, slots: &[Slot], start: i64) -> Vec<Tensor> {
    slots
        .iter()
        .map(|s| flat.as_strided(s.size.as_slice(), s.stride.as_slice(), s.offset - start))
        .collect()
}

fn pick(tensors: &[Tensor], indices: &[usize]) -> Vec<Tensor> {
    indices.iter().map(|&i| tensors[i].shallow_clone()).collect()
}

/// `a += alpha * b` over whole buffers, rounded once.
fn add_scaled_(a: &Tensor, b: &Tensor, alpha: f64) {
    foreach::add_scaled_(&[a.shallow_clone()], &[b.shallow_clone()], alpha).unwrap_or_else(|e| fail(e));
}

/// Parameters per bucket: on CUDA all in one (a launch costs more than a pass over memory); on
/// a CPU runs of about 64K elements (256 KiB of float32 per buffer, a core's L2 cache with the
/// parameters, gradients and momentum of the run).
fn buckets(slots: &[Slot], directions: &[Direction], kind: Kind, device: tch::Device) -> Vec<Bucket> {
    let limit = if device.is_cuda() { i64::MAX } else { 1 << 16 };
    let numel = |s: &Slot| s.size.iter().product::<i64>();
    let mut buckets = Vec::new();
    let mut start = 0;
    while start < slots.len() {
        let offset = slots[start].offset;
        // The bucket's span of the buffers, the gaps between slots included (zeros).
        let span = |end: usize| slots[end].offset + numel(&slots[end]) - offset;
        let mut end = start + 1;
        while end < slots.len() && span(end) <= limit {
            end += 1;
        }
        let members: Vec<usize> = (start..end).collect();
        buckets.push(Bucket {
            parameters: start..end,
            offset,
            len: span(end - 1),
            decayed: decay_groups(directions, &members),
            adapted: adapted(directions, &members, kind, device),
        });
        start = end;
    }
    buckets
}

/// Indices of the parameters with weight decay, grouped by its value.
fn decay_groups(directions: &[Direction], members: &[usize]) -> Vec<(f64, Vec<usize>)> {
    let mut groups: Vec<(f64, Vec<usize>)> = Vec::new();
    for (i, d) in members
        .iter()
        .map(|&i| (i, &directions[i]))
        .filter(|(_, d)| d.weight_decay != 0.0)
    {
        match groups.iter_mut().find(|(wd, _)| *wd == d.weight_decay) {
            Some((_, members)) => members.push(i),
            None => groups.push((d.weight_decay, vec![i])),
        }
    }
    groups
}

fn adapted(directions: &[Direction], members: &[usize], kind: Kind, device: tch::Device) -> Option<Adapted> {
    let (indices, eta): (Vec<usize>, Vec<f64>) = members
        .iter()
        .filter_map(|&i| directions[i].trust_coefficient.map(|eta| (i, eta)))
        .unzip();
    if indices.is_empty() {
        return None;
    }
    Some(Adapted {
        eta: Tensor::from_slice(&eta).to_kind(kind).to_device(device),
        indices,
    })
}

/// The fused update's calls fail only on a broken invariant (a parameter moved to another
/// device after the optimizer was built): say which.
fn fail(error: torch_ext::TorchExtError) -> ! {
    panic!("fused optimizer step: {error} (were parameters moved or re-created after the optimizer was built?)")
}
