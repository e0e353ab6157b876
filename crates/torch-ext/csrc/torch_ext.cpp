// The few libtorch features that tch 0.24 does not bind: autocast with a chosen dtype, CUDA
// allocator statistics, channels_last, setting a parameter's .grad, multi-tensor (foreach) ops,
// PyTorch's fused Adam, and c10d (TCPStore, the Gloo backend, collectives, and the
// gradient all-reduce of synchronized batch norm's backward). Every function catches C++ exceptions and returns
// them as a heap string (nullptr on success) that Rust frees with tx_free_error.

#include <algorithm>

#include <ATen/ATen.h>
#include <ATen/DeviceAccelerator.h>
#include <ATen/autocast_mode.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "handles.h"

namespace {

using torch_ext::BackendHandle;
using torch_ext::guarded;
using torch_ext::StoreHandle;

at::DeviceType device_type(int code) {
  return code == 1 ? at::kCUDA : at::kCPU;
}

void all_reduce_sum(c10d::Backend& backend, const at::Tensor& tensor) {
  std::vector<at::Tensor> tensors{tensor};
  c10d::AllreduceOptions options;
  options.reduceOp = c10d::ReduceOp::SUM;
  backend.allreduce(tensors, options)->wait();
}

// The identity, whose backward sums the incoming gradients over the ranks: SyncBatchNorm's
// backward all-reduce. Statistics that every rank computes alike from gathered values pass
// through it, so each rank's own share of them receives every rank's loss's gradient.
struct SumGradientsOverRanks : public torch::autograd::Function<SumGradientsOverRanks> {
  // The context holds an owning reference to the backend (a capsule around its intrusive_ptr):
  // the graph keeps the process group alive until backward has run, whatever Rust drops first.
  static at::Tensor forward(
      torch::autograd::AutogradContext* ctx,
      const at::Tensor& input,
      const c10::intrusive_ptr<c10d::Backend>& backend) {
    ctx->saved_data["backend"] = c10::IValue::make_capsule(backend);
    return input.clone();
  }

  static torch::autograd::variable_list backward(
      torch::autograd::AutogradContext* ctx,
      torch::autograd::variable_list grads) {
    auto backend = c10::static_intrusive_pointer_cast<c10d::Backend>(ctx->saved_data["backend"].toCapsule());
    auto grad = grads[0].clone(at::MemoryFormat::Contiguous);
    all_reduce_sum(*backend, grad);
    return {grad, at::Tensor()};
  }
};

std::vector<at::Tensor> tensor_list(const at::Tensor* const* tensors, int64_t n) {
  std::vector<at::Tensor> list;
  list.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    list.push_back(*tensors[i]);
  }
  return list;
}

} // namespace

extern "C" {

void tx_free_error(char* error) {
  std::free(error);
}

// ---- autocast ---------------------------------------------------------------------------

char* tx_autocast_enter(int device, int8_t scalar_type) {
  return guarded([&] {
    at::autocast::set_autocast_dtype(device_type(device), static_cast<at::ScalarType>(scalar_type));
    at::autocast::set_autocast_enabled(device_type(device), true);
    at::autocast::increment_nesting();
  });
}

// Restores `was_enabled`; the cast cache is cleared when the outermost region ends (as
// torch.autocast does), so weights cast inside one step are not kept alive across steps.
char* tx_autocast_exit(int device, bool was_enabled, int8_t previous_scalar_type) {
  return guarded([&] {
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(device_type(device), was_enabled);
    at::autocast::set_autocast_dtype(device_type(device), static_cast<at::ScalarType>(previous_scalar_type));
  });
}

bool tx_autocast_is_enabled(int device) {
  return at::autocast::is_autocast_enabled(device_type(device));
}

int8_t tx_autocast_dtype(int device) {
  return static_cast<int8_t>(at::autocast::get_autocast_dtype(device_type(device)));
}

// ---- memory format ----------------------------------------------------------------------

char* tx_channels_last(const at::Tensor* tensor, at::Tensor** out) {
  return guarded([&] { *out = new at::Tensor(tensor->contiguous(at::MemoryFormat::ChannelsLast)); });
}

bool tx_is_channels_last(const at::Tensor* tensor) {
  return tensor->is_contiguous(at::MemoryFormat::ChannelsLast);
}

// tensor.pin_memory() without a device (libtorch pins for the current accelerator): naming one is
// deprecated in 2.11 and warns on every call.
char* tx_pin_memory(const at::Tensor* tensor, at::Tensor** out) {
  return guarded([&] { *out = new at::Tensor(tensor->pin_memory()); });
}

// TF32 tensor cores for float32 matmuls (cuBLAS) and convolutions (cuDNN) on CUDA:
// torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32. Process-wide
// settings that only CUDA kernels read; they change nothing on the CPU.
void tx_set_allow_tf32(bool allowed) {
  at::globalContext().setAllowTF32CuBLAS(allowed);
  at::globalContext().setAllowTF32CuDNN(allowed);
}

bool tx_allow_tf32_cublas() {
  return at::globalContext().allowTF32CuBLAS();
}

bool tx_allow_tf32_cudnn() {
  return at::globalContext().allowTF32CuDNN();
}

// Makes CUDA device `index` current for this thread (what new streams and the NCCL group's bound
// device are taken from).
char* tx_cuda_set_device(int index) {
  return guarded([&] { at::accelerator::setDeviceIndex(static_cast<c10::DeviceIndex>(index)); });
}

// ---- CUDA allocator statistics ----------------------------------------------------------

// out: [allocated now, allocated peak, reserved now, reserved peak] in bytes; zeros before the
// allocator's first use (it has no devices to report on then, and would throw, where
// torch.cuda.memory_stats returns nothing).
char* tx_cuda_memory_stats(int device_index, int64_t* out) {
  return guarded([&] {
    auto* allocator = at::getDeviceAllocator(at::kCUDA);
    if (!allocator->initialized()) {
      std::fill(out, out + 4, int64_t{0});
      return;
    }
    auto stats = allocator->getDeviceStats(device_index);
    auto aggregate = static_cast<size_t>(c10::CachingDeviceAllocator::StatType::AGGREGATE);
    out[0] = stats.allocated_bytes[aggregate].current;
    out[1] = stats.allocated_bytes[aggregate].peak;
    out[2] = stats.reserved_bytes[aggregate].current;
    out[3] = stats.reserved_bytes[aggregate].peak;
  });
}

char* tx_cuda_reset_peak_memory(int device_index) {
  return guarded([&] {
    auto* allocator = at::getDeviceAllocator(at::kCUDA);
    if (allocator->initialized()) {
      allocator->resetPeakStats(device_index);
    }
  });
}

// ---- gradients and multi-tensor ops ---------------------------------------------------

// parameter.grad = grad. Autograd then accumulates into `grad` in place (backward adds to a
// defined .grad), so a view of a flat buffer stays the gradient's home across steps.
char* tx_set_grad(const at::Tensor* parameter, const at::Tensor* grad) {
  return guarded([&] { parameter->mutable_grad() = *grad; });
}

// The 2-norms of `tensors` as one 1-D float tensor (torch._foreach_norm: on CUDA one kernel per
// dtype and device, not one per tensor).
char* tx_foreach_norm(const at::Tensor* const* tensors, int64_t n, at::Tensor** out) {
  return guarded([&] { *out = new at::Tensor(at::stack(at::_foreach_norm(tensor_list(tensors, n), 2))); });
}

// tensors[i] += alpha * others[i] for every i (torch._foreach_add_ with alpha): one rounding,
// as torch.optim.SGD's `grad.add(param, alpha=weight_decay)` and `param.add_(buf, alpha=-lr)`.
char* tx_foreach_add_scaled_(const at::Tensor* const* tensors, const at::Tensor* const* others, int64_t n, double alpha) {
  return guarded([&] { at::_foreach_add_(tensor_list(tensors, n), tensor_list(others, n), alpha); });
}

// tensors[i].copy_(sources[i]) for every i (torch._foreach_copy_): one multi-tensor launch on CUDA.
char* tx_foreach_copy_(const at::Tensor* const* tensors, const at::Tensor* const* sources, int64_t n) {
  return guarded([&] { at::_foreach_copy_(tensor_list(tensors, n), tensor_list(sources, n)); });
}

// grads *= inv_scale, and found_inf = 1 where any gradient holds an Inf or NaN: GradScaler's own
// kernel (one multi-tensor launch on CUDA), so the caller reads one flag instead of syncing once
// per gradient.
char* tx_amp_unscale_(const at::Tensor* const* grads, int64_t n, const at::Tensor* found_inf, const at::Tensor* inv_scale) {
  return guarded([&] {
    at::Tensor flag = *found_inf;
    at::_amp_foreach_non_finite_check_and_unscale_(tensor_list(grads, n), flag, *inv_scale);
  });
}

// torch.optim.Adam(fused=True)'s update, or AdamW's when `decoupled`: torch._fused_adam_ /
// _fused_adamw_, one multi-tensor kernel over the lists (on a CPU, a vectorized loop per tensor).
// `state_steps` holds each tensor's step count, already incremented; the learning rate is
// `lr_tensor` (a 0-d tensor on the parameters' device, read when the kernel runs) or, when that
// is null, `lr`. When `found_inf` (nullable) holds 1 the kernel returns without touching anything.
char* tx_fused_adam_(
    const at::Tensor* const* params,
    const at::Tensor* const* grads,
    const at::Tensor* const* exp_avgs,
    const at::Tensor* const* exp_avg_sqs,
    const at::Tensor* const* state_steps,
    int64_t n,
    const at::Tensor* lr_tensor,
    double lr,
    double beta1,
    double beta2,
    double weight_decay,
    double eps,
    bool decoupled,
    const at::Tensor* found_inf) {
  return guarded([&] {
    auto p = tensor_list(params, n), g = tensor_list(grads, n), m = tensor_list(exp_avgs, n);
    auto v = tensor_list(exp_avg_sqs, n), t = tensor_list(state_steps, n);
    std::vector<at::Tensor> no_max_exp_avg_sqs;
    std::optional<at::Tensor> inf;
    if (found_inf != nullptr) {
      inf = *found_inf;
    }
    const bool amsgrad = false, maximize = false;
    if (lr_tensor != nullptr && decoupled) {
      at::_fused_adamw_(p, g, m, v, no_max_exp_avg_sqs, t, *lr_tensor, beta1, beta2, weight_decay, eps, amsgrad, maximize, std::nullopt, inf);
    } else if (lr_tensor != nullptr) {
      at::_fused_adam_(p, g, m, v, no_max_exp_avg_sqs, t, *lr_tensor, beta1, beta2, weight_decay, eps, amsgrad, maximize, std::nullopt, inf);
    } else if (decoupled) {
      at::_fused_adamw_(p, g, m, v, no_max_exp_avg_sqs, t, lr, beta1, beta2, weight_decay, eps, amsgrad, maximize, std::nullopt, inf);
    } else {
      at::_fused_adam_(p, g, m, v, no_max_exp_avg_sqs, t, lr, beta1, beta2, weight_decay, eps, amsgrad, maximize, std::nullopt, inf);
    }
  });
}

// ---- c10d -------------------------------------------------------------------------------

// A TCPStore client (or the server, on the rank that hosts it) under `prefix`.
char* tx_store_new(
    const char* host,
    uint16_t port,
    int world_size,
    bool is_server,
    int64_t timeout_ms,
    const char* prefix,
    void** out) {
  return guarded([&] {
    c10d::TCPStoreOptions options;
    options.port = port;
    options.isServer = is_server;
    options.numWorkers = world_size;
    options.waitWorkers = false;
    options.timeout = std::chrono::milliseconds(timeout_ms);
    c10::intrusive_ptr<c10d::Store> store = c10::make_intrusive<c10d::TCPStore>(host, options);
    if (prefix != nullptr && std::strlen(prefix) > 0) {
      store = c10::make_intrusive<c10d::PrefixStore>(prefix, store);
    }
    *out = new StoreHandle{store};
  });
}

void tx_store_free(void* store) {
  delete static_cast<StoreHandle*>(store);
}

char* tx_gloo_new(void* store, int rank, int world_size, int64_t timeout_ms, void** out) {
  return guarded([&] {
    auto options = c10d::ProcessGroupGloo::Options::create(std::chrono::milliseconds(timeout_ms));
    options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    auto gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(
        static_cast<StoreHandle*>(store)->store, rank, world_size, options);
    *out = new BackendHandle{gloo};
  });
}

void tx_backend_free(void* backend) {
  delete static_cast<BackendHandle*>(backend);
}

// The normal end of a group (what destroy_process_group does): NCCL finishes its queued work and
// destroys its communicators; freed without it, it aborts them and warns that the program did
// not destroy the group. Gloo has nothing to do.
char* tx_backend_shutdown(void* backend) {
  return guarded([&] { static_cast<BackendHandle*>(backend)->backend->shutdown(); });
}

char* tx_all_reduce_sum(void* backend, const at::Tensor* tensor) {
  return guarded([&] { all_reduce_sum(*static_cast<BackendHandle*>(backend)->backend, *tensor); });
}

char* tx_broadcast(void* backend, const at::Tensor* tensor, int root) {
  return guarded([&] {
    std::vector<at::Tensor> tensors{*tensor};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    static_cast<BackendHandle*>(backend)->backend->broadcast(tensors, options)->wait();
  });
}

// Concatenates every rank's `input` along dim 0 into `output` (world_size times larger).
char* tx_all_gather(void* backend, const at::Tensor* input, const at::Tensor* output) {
  return guarded([&] {
    at::Tensor in = *input, out = *output;
    static_cast<BackendHandle*>(backend)->backend->_allgather_base(out, in)->wait();
  });
}

char* tx_barrier(void* backend) {
  return guarded([&] { static_cast<BackendHandle*>(backend)->backend->barrier()->wait(); });
}

char* tx_sum_gradients_over_ranks(void* backend, const at::Tensor* input, at::Tensor** out) {
  return guarded([&] {
    *out = new at::Tensor(SumGradientsOverRanks::apply(*input, static_cast<BackendHandle*>(backend)->backend));
  });
}

} // extern "C"
