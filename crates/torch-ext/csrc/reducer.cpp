// c10d's Reducer, the engine of DistributedDataParallel: hooks on the parameters' gradient
// accumulators all-reduce a bucket of gradients as soon as backward has produced all of them,
// while backward goes on with the layers below. Set up here as DDP sets it up (one bucket for the
// first backward, then buckets rebuilt in the order that backward produced the gradients).

#include <algorithm>
#include <cstdint>
#include <memory>
#include <unordered_set>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>

#include "handles.h"

namespace {

using torch_ext::BackendHandle;
using torch_ext::guarded;

// The Reducer, plus the question DDP asks only at the next iteration (after the optimizer has
// used the gradients): did the last backward finish the reduction?
class GradientReducer : public c10d::Reducer {
 public:
  using c10d::Reducer::Reducer;

  // False while a backward armed by prepare_for_backward has left a bucket unreduced (or
  // reached no parameter at all): finalize_backward clears both flags.
  bool reduced() {
    std::lock_guard<std::mutex> lock(mutex_);
    return !expect_autograd_hooks_ && !require_finalize_;
  }
};

struct ReducerHandle {
  std::unique_ptr<GradientReducer> reducer;
};

// A ProcessGroup over one backend: what the Reducer (and the c10d ops it dispatches to) take.
c10::intrusive_ptr<c10d::ProcessGroup> group_of(const c10::intrusive_ptr<c10d::Backend>& backend) {
  auto group = c10::make_intrusive<c10d::ProcessGroup>(backend->getRank(), backend->getSize());
  // setBackend hands the group's bound device to the backend: keep the one NCCL was given.
  group->setBoundDeviceId(backend->getBoundDeviceId());
  const bool nccl = backend->getBackendName() == "nccl";
  const auto type = nccl ? c10d::ProcessGroup::BackendType::NCCL : c10d::ProcessGroup::BackendType::GLOO;
  group->setBackend(at::kCUDA, type, backend);
  if (!nccl) {
    group->setBackend(at::kCPU, type, backend);
  }
  group->setDefaultBackend(type);
  return group;
}

} // namespace

extern "C" {

char* tx_reducer_new(
    void* backend,
    const at::Tensor* const* parameters,
    int64_t n,
    int64_t bucket_cap_bytes,
    void** out) {
  return guarded([&] {
    std::vector<at::Tensor> params;
    params.reserve(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      params.push_back(*parameters[i]);
    }
    auto group = group_of(static_cast<BackendHandle*>(backend)->backend);
    // As DDP does first: every rank's parameters alike in number, shape and strides (the
    // buckets' views follow them), else an error naming the first that differs.
    c10d::verify_params_across_processes(group, params, std::nullopt);
    std::vector<bool> sparse(params.size(), false);
    // The first backward's order of gradients is not known yet, so DDP gives it a single bucket
    // (reduced once backward is done) and rebuilds the buckets from the order it recorded.
    auto [buckets, limits] =
        c10d::compute_bucket_assignment_by_size(params, {std::numeric_limits<size_t>::max()}, sparse);
    std::reverse(buckets.begin(), buckets.end());
    const int64_t first_bucket_cap = std::min<int64_t>(c10d::kDefaultFirstBucketBytes, bucket_cap_bytes);
    auto reducer = std::make_unique<GradientReducer>(
        params,
        buckets,
        group,
        sparse,
        bucket_cap_bytes,
        /*find_unused_parameters=*/false,
        /*gradient_as_bucket_view=*/false,
        std::unordered_map<size_t, std::string>{},
        first_bucket_cap,
        /*skip_all_reduce_unused_params=*/false,
        /*use_python_reducer=*/false,
        std::vector<int64_t>{});
    *out = new ReducerHandle{std::move(reducer)};
  });
}

// The Reducer's destructor removes its hooks and may throw (noexcept(false)); nothing may cross
// into Rust's drop.
void tx_reducer_free(void* reducer) {
  try {
    delete static_cast<ReducerHandle*>(reducer);
  } catch (const std::exception& e) {
    TORCH_WARN("freeing the gradient reducer: ", e.what());
  }
}

// What DDP's forward does before and after the module runs: rebuild the buckets once the first
// backward has recorded its order (a broadcast of rank 0's assignment), then arm the hooks.
char* tx_reducer_prepare_for_backward(void* reducer) {
  return guarded([&] {
    auto& r = *static_cast<ReducerHandle*>(reducer)->reducer;
    r.rebuild_buckets();
    r.prepare_for_forward();
    r.prepare_for_backward({});
  });
}

char* tx_reducer_reduced(void* reducer, bool* out) {
  return guarded([&] { *out = static_cast<ReducerHandle*>(reducer)->reducer->reduced(); });
}

char* tx_reducer_bucket_count(void* reducer, int64_t* out) {
  return guarded([&] {
    *out = static_cast<int64_t>(static_cast<ReducerHandle*>(reducer)->reducer->get_grad_buckets().size());
  });
}

// For each of `leaves`, whether backward from `root` would not reach its gradient accumulator:
// a walk of root's autograd graph, as DDP's find_unused_parameters makes.
char* tx_unreached_leaves(const at::Tensor* root, const at::Tensor* const* leaves, int64_t n, bool* unreached) {
  return guarded([&] {
    std::unordered_set<torch::autograd::Node*> seen;
    std::vector<torch::autograd::Node*> stack;
    if (auto fn = root->grad_fn()) {
      seen.insert(fn.get());
      stack.push_back(fn.get());
    }
    while (!stack.empty()) {
      auto* node = stack.back();
      stack.pop_back();
      for (const auto& edge : node->next_edges()) {
        if (edge.function && seen.insert(edge.function.get()).second) {
          stack.push_back(edge.function.get());
        }
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      auto accumulator = torch::autograd::impl::try_get_grad_accumulator(*leaves[i]);
      unreached[i] = !accumulator || seen.count(accumulator.get()) == 0;
    }
  });
}

} // extern "C"
