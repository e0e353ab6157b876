// What the shim's C ABI hands to Rust, shared by torch_ext.cpp and nccl.cpp.
#pragma once

#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <cstdlib>
#include <cstring>
#include <string>

namespace torch_ext {

// Boxed intrusive pointers: Rust holds the box.
struct StoreHandle {
  c10::intrusive_ptr<c10d::Store> store;
};
struct BackendHandle {
  c10::intrusive_ptr<c10d::Backend> backend;
};

inline char* error_string(const std::string& message) {
  char* out = static_cast<char*>(std::malloc(message.size() + 1));
  std::memcpy(out, message.c_str(), message.size() + 1);
  return out;
}

// Runs `body`, turning any C++ exception into a heap string (nullptr on success).
template <typename F>
char* guarded(F&& body) {
  try {
    body();
    return nullptr;
  } catch (const c10::Error& e) {
    return error_string(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return error_string(e.what());
  } catch (...) {
    return error_string("unknown C++ exception");
  }
}

} // namespace torch_ext
