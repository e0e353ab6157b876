//! Gradients that live where the caller puts them, PyTorch's multi-tensor (`_foreach_*`) ops and
//! its fused Adam: what a fused optimizer needs so that an update over many parameters is a
//! handful of kernels (on CUDA, one launch per op for the whole list) rather than a dozen per
//! tensor.

use tch::Tensor;

use crate::{ffi, Result, TorchExtError};

/// `parameter.grad = grad`. Backward then accumulates into `grad` in place, so a view of a flat
/// buffer stays the parameter's gradient from step to step.
pub fn set_grad(parameter: &Tensor, grad: &Tensor) -> Result<()> {
    // SAFETY: both are live at::Tensors; the shim copies the handle it keeps.
    unsafe { ffi::check(ffi::tx_set_grad(parameter.as_ptr(), grad.as_ptr())) }
}

/// `parameter.grad = None`: no kernel runs, and the next backward writes the gradient into a
/// fresh tensor instead of adding it to zeros (`zero_grad(set_to_none=True)`, PyTorch's default).
pub fn clear_grad(parameter: &Tensor) -> Result<()> {
    set_grad(parameter, &Tensor::new())
}

/// The 2-norm of each of `tensors`, as one 1-D tensor (`torch.stack(torch._foreach_norm(...))`).
pub fn norms(tensors: &[Tensor]) -> Result<Tensor> {
    if tensors.is_empty() {
        return Err(TorchExtError("foreach norms of no tensors".into()));
    }
    let pointers = pointers(tensors);
    let mut out = std::ptr::null_mut();
    // SAFETY: `pointers` holds live at::Tensors; on success the shim hands us a new one.
    unsafe {
        ffi::check(ffi::tx_foreach_norm(pointers.as_ptr(), pointers.len() as i64, &mut out))?;
        Ok(Tensor::from_ptr(out))
    }
}

/// `tensors[i] += alpha * others[i]` for every i, rounded once (`torch._foreach_add_` with
/// `alpha`, what `Tensor.add_(other, alpha=...)` does for one tensor).
pub fn add_scaled_(tensors: &[Tensor], others: &[Tensor], alpha: f64) -> Result<()> {
    if tensors.len() != others.len() {
        return Err(TorchExtError(format!(
            "foreach add: {} tensors but {} others",
            tensors.len(),
            others.len()
        )));
    }
    let (a, b) = (pointers(tensors), pointers(others));
    // SAFETY: both lists hold live at::Tensors, equally many.
    unsafe {
        ffi::check(ffi::tx_foreach_add_scaled_(
            a.as_ptr(),
            b.as_ptr(),
            a.len() as i64,
            alpha,
        ))
    }
}

/// `tensors[i].copy_(sources[i])` for every i (`torch._foreach_copy_`: one multi-tensor launch on
/// CUDA instead of one copy per tensor).
pub fn copy_(tensors: &[Tensor], sources: &[Tensor]) -> Result<()> {
    if tensors.len() != sources.len() {
        return Err(TorchExtError(format!(
            "foreach copy: {} tensors but {} sources",
            tensors.len(),
            sources.len()
        )));
    }
    let (a, b) = (pointers(tensors), pointers(sources));
    // SAFETY: both lists hold live at::Tensors, equally many.
    unsafe { ffi::check(ffi::tx_foreach_copy_(a.as_ptr(), b.as_ptr(), a.len() as i64)) }
}

/// `grads[i] *= inv_scale` for every i, setting `found_inf` (a 1-element float tensor) to 1
/// where any gradient holds an Inf or NaN (`torch._amp_foreach_non_finite_check_and_unscale_`,
/// what `GradScaler.unscale_` runs).
pub fn unscale_(grads: &[Tensor], found_inf: &Tensor, inv_scale: &Tensor) -> Result<()> {
    let pointers = pointers(grads);
    // SAFETY: `pointers` holds live at::Tensors, as do the flag and the scale.
    unsafe {
        ffi::check(ffi::tx_amp_unscale_(
            pointers.as_ptr(),
            pointers.len() as i64,
            found_inf.as_ptr(),
            inv_scale.as_ptr(),
        ))
    }
}

/// The learning rate of a fused update: a number fixed when the kernel is queued, or a 0-d
/// tensor on the parameters' device, read when it runs (a step replayed from a CUDA graph).
#[derive(Debug, Clone, Copy)]
pub enum LearningRate<'a> {
    Value(f64),
    Tensor(&'a Tensor),
}

/// What [`fused_adam_`] computes with, beyond the learning rate: torch.optim.Adam's (or, when
/// `decoupled`, AdamW's) hyperparameters, with amsgrad and maximize off.
#[derive(Debug, Clone, Copy)]
pub struct AdamHyperparameters {
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
    pub decoupled: bool,
}

/// The tensors of one fused Adam update, as many of each, element `i` of every list belonging
/// to the same parameter. `steps[i]` is its step count (a float32 tensor on its device), already
/// incremented for this update; the same tensor may stand for several parameters.
pub struct AdamTensors<'a> {
    pub params: &'a [Tensor],
    pub grads: &'a [Tensor],
    pub exp_avgs: &'a [Tensor],
    pub exp_avg_sqs: &'a [Tensor],
    pub steps: &'a [Tensor],
}

/// One Adam (or AdamW) update of every parameter in `tensors`, by PyTorch's own fused kernel
/// (`torch._fused_adam_`, what `torch.optim.Adam(fused=True)` runs): one launch on CUDA, no host
/// synchronization. When `found_inf` (a float32 flag on the device) holds 1, the kernel leaves
/// every tensor as it was.
pub fn fused_adam_(
    tensors: &AdamTensors<'_>,
    lr: LearningRate<'_>,
    hyperparameters: &AdamHyperparameters,
    found_inf: Option<&Tensor>,
) -> Result<()> {
    let n = tensors.params.len();
    let lists = [tensors.grads, tensors.exp_avgs, tensors.exp_avg_sqs, tensors.steps];
    if lists.iter().any(|list| list.len() != n) {
        return Err(TorchExtError(format!(
            "fused adam: {n} parameters but {} gradients, {} exp_avg, {} exp_avg_sq and {} steps",
            tensors.grads.len(),
            tensors.exp_avgs.len(),
            tensors.exp_avg_sqs.len(),
            tensors.steps.len()
        )));
    }
    let [params, grads, exp_avgs, exp_avg_sqs, steps] = [
        tensors.params,
        tensors.grads,
        tensors.exp_avgs,
        tensors.exp_avg_sqs,
        tensors.steps,
    ]
    .map(pointers);
    let (lr_tensor, lr_value) = match lr {
        LearningRate::Value(lr) => (std::ptr::null(), lr),
        LearningRate::Tensor(lr) => (lr.as_ptr() as *const _, 0.0),
    };
    let found_inf = found_inf.map_or(std::ptr::null(), |flag| flag.as_ptr() as *const _);
    let AdamHyperparameters {
        betas: (beta1, beta2),
        eps,
        weight_decay,
        decoupled,
    } = *hyperparameters;
    // SAFETY: every list holds `n` live at::Tensors; the lr tensor and the flag are live or null.
    unsafe {
        ffi::check(ffi::tx_fused_adam_(
            params.as_ptr(),
            grads.as_ptr(),
            exp_avgs.as_ptr(),
            exp_avg_sqs.as_ptr(),
            steps.as_ptr(),
            n as i64,
            lr_tensor,
            lr_value,
            beta1,
            beta2,
            weight_decay,
            eps,
            decoupled,
            found_inf,
        ))
    }
}

pub(crate) fn pointers(tensors: &[Tensor]) -> Vec<*const torch_sys::C_tensor> {
    tensors.iter().map(|t| t.as_ptr() as *const _).collect()
}
