// Counting host-device synchronizations: torch.cuda.set_sync_debug_mode("warn") makes every
// operation that waits for the device (reading a value, a copy from pageable memory, a stream
// synchronize) raise a warning; a warning handler on the calling thread counts them instead of
// printing them. Compiled only where the CUDA headers are installed (see build.rs).

#include <c10/cuda/CUDAFunctions.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <string>

#include "handles.h"

namespace {

struct SyncCounter : c10::WarningHandler {
  c10::WarningHandler* previous = nullptr;
  c10::cuda::SyncDebugMode previous_mode = c10::cuda::SyncDebugMode::L_DISABLED;
  int64_t count = 0;

  void process(const c10::Warning& warning) override {
    if (warning.msg().find("synchronizing CUDA operation") != std::string::npos) {
      ++count;
    } else {
      previous->process(warning);
    }
  }
};

SyncCounter* counter(void* handle) {
  return static_cast<SyncCounter*>(handle);
}

} // namespace

extern "C" {

// Starts counting the synchronizations of the calling thread.
char* tx_sync_counter_start(void** out) {
  return torch_ext::guarded([&] {
    auto* c = new SyncCounter();
    c->previous = c10::WarningUtils::get_warning_handler();
    c->previous_mode = c10::cuda::warning_state().get_sync_debug_mode();
    c10::WarningUtils::set_warning_handler(c);
    c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_WARN);
    *out = c;
  });
}

int64_t tx_sync_counter_count(void* handle) {
  return counter(handle)->count;
}

// Restores the previous handler and mode; must run on the thread that started the counter.
void tx_sync_counter_free(void* handle) {
  c10::cuda::warning_state().set_sync_debug_mode(counter(handle)->previous_mode);
  c10::WarningUtils::set_warning_handler(counter(handle)->previous);
  delete counter(handle);
}

} // extern "C"
