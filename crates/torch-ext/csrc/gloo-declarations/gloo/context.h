// See ../README.md: forward declarations for ProcessGroupGloo.hpp only.
#pragma once
#include <chrono>

namespace gloo {
class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);
};
} // namespace gloo
