// See ../README.md: forward declarations for ProcessGroupGloo.hpp only.
#pragma once
