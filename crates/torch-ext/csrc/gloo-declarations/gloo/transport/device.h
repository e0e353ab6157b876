// See ../../README.md: forward declarations for ProcessGroupGloo.hpp only.
#pragma once

namespace gloo::transport {
class Device;
class UnboundBuffer;
} // namespace gloo::transport
