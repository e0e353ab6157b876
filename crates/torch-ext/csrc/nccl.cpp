// c10d's NCCL backend, compiled only where the CUDA headers it needs are installed (the venv's
// nvidia-cuda-crt and nvidia-cuda-cccl wheels; see build.rs).

#include <ATen/DeviceAccelerator.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include "handles.h"

extern "C" char* tx_nccl_new(void* store, int rank, int world_size, int64_t timeout_ms, void** out) {
  return torch_ext::guarded([&] {
    auto options = c10d::ProcessGroupNCCL::Options::create();
    options->timeout = std::chrono::milliseconds(timeout_ms);
    auto nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(
        static_cast<torch_ext::StoreHandle*>(store)->store, rank, world_size, options);
    // The current device is this rank's (the caller sets it first): bound to the group, as
    // init_process_group(device_id=...) does, a barrier uses it instead of guessing one.
    nccl->setBoundDeviceId(at::Device(at::kCUDA, at::accelerator::getDeviceIndex()));
    *out = new torch_ext::BackendHandle{nccl};
  });
}
