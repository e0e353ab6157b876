//! CUDA caching-allocator statistics (`torch.cuda.max_memory_allocated` and friends).

use crate::{ffi, Result, TorchExtError};

/// Bytes held by tensors and by the allocator's cache on one CUDA device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CudaMemory {
    pub allocated: u64,
    pub peak_allocated: u64,
    pub reserved: u64,
    pub peak_reserved: u64,
}

/// The allocator's statistics for CUDA device `index`; an error without CUDA.
pub fn cuda_memory(index: usize) -> Result<CudaMemory> {
    let devices = tch::Cuda::device_count();
    if index as i64 >= devices {
        return Err(TorchExtError(format!(
            "CUDA memory statistics of cuda:{index}: this machine has {devices} CUDA devices"
        )));
    }
    let mut out = [0i64; 4];
    // SAFETY: `out` has the four slots the shim writes.
    unsafe { ffi::check(ffi::tx_cuda_memory_stats(index as i32, out.as_mut_ptr()))? };
    Ok(CudaMemory {
        allocated: out[0] as u64,
        peak_allocated: out[1] as u64,
        reserved: out[2] as u64,
        peak_reserved: out[3] as u64,
    })
}

/// Makes CUDA device `index` the calling thread's current device (`torch.cuda.set_device`).
pub fn set_cuda_device(index: usize) -> Result<()> {
    // SAFETY: a plain call; errors come back as strings.
    unsafe { ffi::check(ffi::tx_cuda_set_device(index as i32)) }
}

/// Starts the peak counters afresh (`torch.cuda.reset_peak_memory_stats`).
pub fn reset_cuda_peak(index: usize) -> Result<()> {
    // SAFETY: a plain call; errors come back as strings.
    unsafe { ffi::check(ffi::tx_cuda_reset_peak_memory(index as i32)) }
}
