// CUDA graphs (torch.cuda.CUDAGraph), compiled only where the CUDA headers are installed (see
// build.rs). A graph records every kernel of one training step on a side stream and replays
// them with one launch; tensors the step reads or writes must keep their addresses, so inputs
// are copied into static buffers before each replay.

#include <ATen/DeviceAccelerator.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <c10/core/StreamGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <optional>

#include "handles.h"

namespace {

// Streams go through c10's device-generic interface (c10::Stream, StreamGuard), which reaches
// CUDA through libc10_cuda: the CUDA-specific guards are inline calls into the CUDA runtime,
// which this crate does not link.
struct GraphHandle {
  at::cuda::CUDAGraph graph;
  // The side stream that warm-up and capture run on, current while `guard` is set.
  std::optional<c10::Stream> stream;
  std::optional<c10::StreamGuard> guard;

  // Makes the side stream current, after the work already queued on the current one is done.
  void enter() {
    auto current = at::accelerator::getCurrentStream(at::accelerator::getDeviceIndex());
    if (!stream) {
      stream = c10::cuda::getStreamFromPool().unwrap();
    }
    current.synchronize();
    guard.emplace(*stream);
  }

  // Back to the previous stream, once the side stream's work is done.
  void leave() {
    stream->synchronize();
    guard.reset();
  }
};

GraphHandle* handle(void* graph) {
  return static_cast<GraphHandle*>(graph);
}

} // namespace

extern "C" {

char* tx_cuda_graph_new(void** out) {
  return torch_ext::guarded([&] { *out = new GraphHandle(); });
}

void tx_cuda_graph_free(void* graph) {
  delete handle(graph);
}

// Warm-up steps run eagerly on the side stream (as torch.cuda.graph recommends), so that lazy
// initialization (cuDNN plans, autograd's device threads, allocator pools) happens before capture.
char* tx_cuda_graph_warmup_begin(void* graph) {
  return torch_ext::guarded([&] { handle(graph)->enter(); });
}

char* tx_cuda_graph_warmup_end(void* graph) {
  return torch_ext::guarded([&] { handle(graph)->leave(); });
}

// As torch.cuda.graph does, the blocks cached during warm-up go back to the device first: the
// graph allocates from a private pool of its own, so blocks kept for the warm-up's side stream
// would only add a second step's worth of activations to the peak.
char* tx_cuda_graph_capture_begin(void* graph) {
  return torch_ext::guarded([&] {
    handle(graph)->enter();
    at::getDeviceAllocator(at::kCUDA)->emptyCache();
    handle(graph)->graph.capture_begin();
  });
}

char* tx_cuda_graph_capture_end(void* graph) {
  return torch_ext::guarded([&] {
    handle(graph)->graph.capture_end();
    handle(graph)->leave();
  });
}

char* tx_cuda_graph_replay(void* graph) {
  return torch_ext::guarded([&] { handle(graph)->graph.replay(); });
}

} // extern "C"
