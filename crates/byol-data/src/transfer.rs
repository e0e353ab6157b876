//! Host-to-device copies that leave the host free to go on queueing work.
//!
//! A plain `to_device` from ordinary (pageable) host memory to a CUDA device synchronizes the
//! stream: the host waits until the device has finished everything queued before it. Inside a
//! training step that stalls the host once per copy, so the device idles while the host
//! prepares the next kernels. These copies go through pinned memory instead, which a CUDA
//! stream can read asynchronously.

use tch::{Device, Kind, Tensor};

/// `host` (a CPU tensor) on `device`, without waiting for the device. On CUDA the tensor is
/// staged in pinned memory and copied with `non_blocking`; libtorch's caching host allocator
/// keeps that buffer alive until the copy has run, so `host` may be dropped at once.
pub fn to_device_async(host: &Tensor, device: Device) -> Result<Tensor, tch::TchError> {
    if !device.is_cuda() {
        return host.f_to_device(device);
    }
    torch_ext::pin_memory(host)
        .map_err(|e| tch::TchError::Torch(e.to_string()))?
        .f_to_device_(device, host.kind(), true, false)
}

/// A small constant (per-channel means, a lookup table) as a tensor of `kind` on `device`.
pub fn constant<T: tch::kind::Element>(values: &[T], kind: Kind, device: Device) -> Tensor {
    to_device_async(&Tensor::from_slice(values), device)
        .unwrap_or_else(|e| panic!("copying a {}-element constant to {device:?}: {e}", values.len()))
        .to_kind(kind)
}
