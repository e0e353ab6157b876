//! Gradients that live where the caller puts them, and PyTorch's multi-tensor (`_foreach_*`) ops:
//! what a fused optimizer needs so that an update over many parameters is a handful of kernels
//! (on CUDA, one launch per op for the whole list) rather than a dozen per tensor.

use tch::Tensor;

use crate::{ffi, Result, TorchExtError};

/// `parameter.grad = grad`. Backward then accumulates into `grad` in place, so a view of a flat
/// buffer stays the parameter's gradient from step to step.
pub fn set_grad(parameter: &Tensor, grad: &Tensor) -> Result<()> {
    // SAFETY: both are live at::Tensors; the shim copies the handle it keeps.
    unsafe { ffi::check(ffi::tx_set_grad(parameter.as_ptr(), grad.as_ptr())) }
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

fn pointers(tensors: &[Tensor]) -> Vec<*const torch_sys::C_tensor> {
    tensors.iter().map(|t| t.as_ptr() as *const _).collect()
}
