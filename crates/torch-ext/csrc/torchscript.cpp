// A TorchScript module owned by the shim (torch::jit::load), so that Rust never reads tch's
// private CModule layout: forward, train/eval, and its parameters and buffers under state_dict
// names (tch has no named_buffers for a TorchScript module). Same error protocol as
// torch_ext.cpp: a heap string (nullptr on success) freed with tx_free_error.

#include <torch/csrc/jit/api/module.h>
#include <torch/csrc/jit/serialization/import.h>

#include "handles.h"

namespace {

// tch's device code (torch-sys's device_of_int, device_code in src/torchscript.rs): -1 CPU, -2 MPS, -3 Vulkan, n >= 0 CUDA n.
at::Device device_of_code(int code) {
  if (code == -3) return at::Device(at::kVulkan);
  if (code == -2) return at::Device(at::kMPS);
  if (code < 0) return at::Device(at::kCPU);
  return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(code));
}

torch::jit::Module& module_of(void* handle) {
  return *static_cast<torch::jit::Module*>(handle);
}

using NamedTensorCallback = void (*)(void*, const char*, at::Tensor*);

} // namespace

extern "C" {

char* tx_script_load(const char* file, int device, void** out) {
  return torch_ext::guarded([&] { *out = new torch::jit::Module(torch::jit::load(file, device_of_code(device))); });
}

void tx_script_free(void* module) {
  delete static_cast<torch::jit::Module*>(module);
}

char* tx_script_set_training(void* module, bool training) {
  return torch_ext::guarded([&] { module_of(module).train(training); });
}

// The forward of one tensor, which must return one tensor.
char* tx_script_forward(void* module, const at::Tensor* input, at::Tensor** out) {
  return torch_ext::guarded([&] {
    std::vector<torch::jit::IValue> inputs{*input};
    auto output = module_of(module).forward(std::move(inputs));
    TORCH_CHECK(output.isTensor(), "the TorchScript forward returned a ", output.tagKind(), ", not a tensor");
    *out = new at::Tensor(output.toTensor());
  });
}

// Calls `f(data, name, tensor)` for every parameter (buffers: false) or buffer (true), recursively,
// with state_dict names. Each tensor is a new at::Tensor* sharing the module's TensorImpl, owned
// by the callee.
char* tx_script_named_tensors(void* module, bool buffers, void* data, NamedTensorCallback f) {
  return torch_ext::guarded([&] {
    auto& m = module_of(module);
    if (buffers) {
      for (const auto& b : m.named_buffers(/*recurse=*/true)) f(data, b.name.c_str(), new at::Tensor(b.value));
    } else {
      for (const auto& p : m.named_parameters(/*recurse=*/true)) f(data, p.name.c_str(), new at::Tensor(p.value));
    }
  });
}

} // extern "C"
