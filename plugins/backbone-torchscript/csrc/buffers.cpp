// What tch 0.24 lacks for a trainable TorchScript module: its buffers (batch-norm running
// statistics), as handles to the very tensors the module computes with.
#include <torch/csrc/jit/api/module.h>

#include <cstdlib>
#include <cstring>
#include <exception>

extern "C" {

// Calls `f(data, name, tensor)` for every buffer of `module` (a `torch::jit::Module*`, what tch's
// CModule holds), recursively, with state_dict names (`layer1.0.bn1.running_mean`). Each tensor is
// a new `at::Tensor*` sharing the module's TensorImpl, owned by the callee (tch frees it). Returns
// nullptr, or an error message to be released with byol_ts_free.
char *byol_ts_named_buffers(void *module, void *data, void (*f)(void *, const char *, void *)) {
  try {
    auto *m = static_cast<torch::jit::Module *>(module);
    for (const auto &b : m->named_buffers(/*recurse=*/true)) {
      f(data, b.name.c_str(), new at::Tensor(b.value));
    }
    return nullptr;
  } catch (const std::exception &e) {
    return strdup(e.what());
  } catch (...) {
    return strdup("unknown C++ exception in named_buffers");
  }
}

void byol_ts_free(char *message) { free(message); }
}
