//! The shim's C ABI (csrc/*.cpp). Tensors cross as `at::Tensor*` (tch's `C_tensor`);
//! stores, backends and TorchScript modules as opaque boxes owned by the Rust wrappers.

use std::ffi::{c_char, c_void, CStr};

use torch_sys::C_tensor;

use crate::{Result, TorchExtError};

extern "C" {
    pub fn tx_free_error(error: *mut c_char);

    pub fn tx_autocast_enter(device: i32, scalar_type: i8) -> *mut c_char;
    pub fn tx_autocast_exit(device: i32, was_enabled: bool, previous_scalar_type: i8) -> *mut c_char;
    pub fn tx_autocast_is_enabled(device: i32) -> bool;
    pub fn tx_autocast_dtype(device: i32) -> i8;

    pub fn tx_channels_last(tensor: *const C_tensor, out: *mut *mut C_tensor) -> *mut c_char;
    pub fn tx_is_channels_last(tensor: *const C_tensor) -> bool;
    pub fn tx_pin_memory(tensor: *const C_tensor, out: *mut *mut C_tensor) -> *mut c_char;
    pub fn tx_set_allow_tf32(allowed: bool);
    pub fn tx_allow_tf32_cublas() -> bool;
    pub fn tx_allow_tf32_cudnn() -> bool;

    pub fn tx_set_grad(parameter: *const C_tensor, grad: *const C_tensor) -> *mut c_char;
    pub fn tx_foreach_copy_(tensors: *const *const C_tensor, sources: *const *const C_tensor, n: i64) -> *mut c_char;
    pub fn tx_foreach_norm(tensors: *const *const C_tensor, n: i64, out: *mut *mut C_tensor) -> *mut c_char;
    pub fn tx_foreach_add_scaled_(
        tensors: *const *const C_tensor,
        others: *const *const C_tensor,
        n: i64,
        alpha: f64,
    ) -> *mut c_char;

    pub fn tx_amp_unscale_(
        grads: *const *const C_tensor,
        n: i64,
        found_inf: *const C_tensor,
        inv_scale: *const C_tensor,
    ) -> *mut c_char;

    pub fn tx_fused_adam_(
        params: *const *const C_tensor,
        grads: *const *const C_tensor,
        exp_avgs: *const *const C_tensor,
        exp_avg_sqs: *const *const C_tensor,
        state_steps: *const *const C_tensor,
        n: i64,
        lr_tensor: *const C_tensor,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        decoupled: bool,
        found_inf: *const C_tensor,
    ) -> *mut c_char;

    pub fn tx_cuda_memory_stats(device_index: i32, out: *mut i64) -> *mut c_char;
    pub fn tx_cuda_reset_peak_memory(device_index: i32) -> *mut c_char;
    pub fn tx_cuda_set_device(index: i32) -> *mut c_char;

    pub fn tx_store_new(
        host: *const c_char,
        port: u16,
        world_size: i32,
        is_server: bool,
        timeout_ms: i64,
        prefix: *const c_char,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    pub fn tx_store_free(store: *mut c_void);
    pub fn tx_gloo_new(
        store: *mut c_void,
        rank: i32,
        world_size: i32,
        timeout_ms: i64,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    #[cfg(torch_ext_nccl)]
    pub fn tx_nccl_new(
        store: *mut c_void,
        rank: i32,
        world_size: i32,
        timeout_ms: i64,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    pub fn tx_backend_free(backend: *mut c_void);
    pub fn tx_backend_shutdown(backend: *mut c_void) -> *mut c_char;

    #[cfg(torch_ext_cuda)]
    pub fn tx_cuda_graph_new(out: *mut *mut c_void) -> *mut c_char;
    #[cfg(torch_ext_cuda)]
    pub fn tx_cuda_graph_free(graph: *mut c_void);
    #[cfg(torch_ext_cuda)]
    pub fn tx_cuda_graph_warmup_begin(graph: *mut c_void) -> *mut c_char;
    #[cfg(torch_ext_cuda)]
    pub fn tx_cuda_graph_warmup_end(graph: *mut c_void) -> *mut c_char;
    #[cfg(torch_ext_cuda)]
    pub fn tx_cuda_graph_capture_begin(graph: *mut c_void) -> *mut c_char;
    #[cfg(torch_ext_cuda)]
    pub fn tx_cuda_graph_capture_end(graph: *mut c_void) -> *mut c_char;
    #[cfg(torch_ext_cuda)]
    pub fn tx_cuda_graph_replay(graph: *mut c_void) -> *mut c_char;
    #[cfg(torch_ext_cuda)]
    pub fn tx_sync_counter_start(out: *mut *mut c_void) -> *mut c_char;
    #[cfg(torch_ext_cuda)]
    pub fn tx_sync_counter_count(counter: *mut c_void) -> i64;
    #[cfg(torch_ext_cuda)]
    pub fn tx_sync_counter_free(counter: *mut c_void);
    pub fn tx_all_reduce_sum(backend: *mut c_void, tensor: *const C_tensor) -> *mut c_char;
    pub fn tx_broadcast(backend: *mut c_void, tensor: *const C_tensor, root: i32) -> *mut c_char;
    pub fn tx_all_gather(backend: *mut c_void, input: *const C_tensor, output: *const C_tensor) -> *mut c_char;
    pub fn tx_barrier(backend: *mut c_void) -> *mut c_char;
    pub fn tx_sum_gradients_over_ranks(
        backend: *mut c_void,
        input: *const C_tensor,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;

    pub fn tx_reducer_new(
        backend: *mut c_void,
        parameters: *const *const C_tensor,
        n: i64,
        bucket_cap_bytes: i64,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    pub fn tx_reducer_free(reducer: *mut c_void);
    pub fn tx_reducer_prepare_for_backward(reducer: *mut c_void) -> *mut c_char;
    pub fn tx_reducer_reduced(reducer: *mut c_void, out: *mut bool) -> *mut c_char;
    pub fn tx_reducer_bucket_count(reducer: *mut c_void, out: *mut i64) -> *mut c_char;
    pub fn tx_unreached_leaves(
        root: *const C_tensor,
        leaves: *const *const C_tensor,
        n: i64,
        unreached: *mut bool,
    ) -> *mut c_char;

    pub fn tx_script_load(file: *const c_char, device: i32, out: *mut *mut c_void) -> *mut c_char;
    pub fn tx_script_free(module: *mut c_void);
    pub fn tx_script_set_training(module: *mut c_void, training: bool) -> *mut c_char;
    pub fn tx_script_forward(module: *mut c_void, input: *const C_tensor, out: *mut *mut C_tensor) -> *mut c_char;
    pub fn tx_script_named_tensors(
        module: *mut c_void,
        buffers: bool,
        data: *mut c_void,
        f: extern "C" fn(*mut c_void, *const c_char, *mut C_tensor),
    ) -> *mut c_char;
}

/// Turns the shim's error string (null: success) into a `Result`, freeing it.
///
/// # Safety
/// `error` is null or a string allocated by the shim and not yet freed.
pub unsafe fn check(error: *mut c_char) -> Result<()> {
    if error.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null error is a NUL-terminated string from the shim, freed once here.
    let message = unsafe { CStr::from_ptr(error) }.to_string_lossy().into_owned();
    unsafe { tx_free_error(error) };
    Err(TorchExtError(message))
}
