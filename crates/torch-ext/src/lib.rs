//! What tch 0.24 lacks, through one small C++ shim compiled against the same libtorch
//! (csrc/torch_ext.cpp, csrc/reducer.cpp and csrc/torchscript.cpp, plus csrc/cuda_graph.cpp, csrc/cuda_sync.cpp and
//! csrc/nccl.cpp when the CUDA headers are installed): autocast with a chosen dtype (bf16 as well
//! as fp16, on CUDA and CPU), channels_last, CUDA allocator statistics, CUDA graphs, counting
//! host-device synchronizations, multi-tensor (foreach) updates, c10d process groups (a TCPStore
//! rendezvous, Gloo, and NCCL where built) with the collectives data-parallel training needs
//! and DistributedDataParallel's gradient reducer,
//! and TorchScript modules owned by the shim (their buffers included). Every shim call reports a C++ exception
//! the same way: a [`TorchExtError`] with its message.

pub mod autocast;
pub mod cuda_graph;
pub mod cuda_sync;
pub mod distributed;
mod ffi;
pub mod foreach;
pub mod memory;
pub mod torchscript;

use tch::Tensor;

/// A C++ exception raised inside the shim, with its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchExtError(pub String);

impl std::fmt::Display for TorchExtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TorchExtError {}

pub type Result<T> = std::result::Result<T, TorchExtError>;

/// `tensor.contiguous(memory_format=torch.channels_last)` for a 4-D tensor.
pub fn channels_last(tensor: &Tensor) -> Result<Tensor> {
    let mut out = std::ptr::null_mut();
    // SAFETY: `tensor` is a live at::Tensor; on success the shim hands us a new at::Tensor.
    unsafe {
        ffi::check(ffi::tx_channels_last(tensor.as_ptr(), &mut out))?;
        Ok(Tensor::from_ptr(out))
    }
}

/// `tensor.pin_memory()`: a copy in page-locked host memory, which a CUDA stream can read
/// asynchronously. tch's `pin_memory` always names a device, which libtorch 2.11 deprecates with
/// a warning on every call; without one it pins for the current accelerator.
pub fn pin_memory(tensor: &Tensor) -> Result<Tensor> {
    let mut out = std::ptr::null_mut();
    // SAFETY: `tensor` is a live at::Tensor; on success the shim hands us a new at::Tensor.
    unsafe {
        ffi::check(ffi::tx_pin_memory(tensor.as_ptr(), &mut out))?;
        Ok(Tensor::from_ptr(out))
    }
}

/// Lets float32 matmuls and convolutions on CUDA use TF32 tensor cores (10-bit mantissa
/// products, float32 accumulation), or not: what `torch.backends.cuda.matmul.allow_tf32` and
/// `torch.backends.cudnn.allow_tf32` set together. Process-wide; the CPU's kernels ignore it.
pub fn set_allow_tf32(allowed: bool) {
    // SAFETY: plain setters of libtorch's global context.
    unsafe { ffi::tx_set_allow_tf32(allowed) }
}

/// Whether float32 matmuls (cuBLAS) and convolutions (cuDNN) on CUDA may use TF32, in that order.
pub fn allow_tf32() -> (bool, bool) {
    // SAFETY: plain getters of libtorch's global context.
    unsafe { (ffi::tx_allow_tf32_cublas(), ffi::tx_allow_tf32_cudnn()) }
}

/// Whether `tensor` is dense in channels_last order.
pub fn is_channels_last(tensor: &Tensor) -> bool {
    // SAFETY: `tensor` is a live at::Tensor.
    unsafe { ffi::tx_is_channels_last(tensor.as_ptr()) }
}
