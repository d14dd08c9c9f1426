// Helpers for the model's memory tests: a real run's allocator statistics against a
// meta-device run's.
#pragma once

#include "trainer/core/allocator.h"

namespace lmtune::test_util {

// Every category's peak and its share at the allocated peak, the allocated and reserved
// peaks, the reserved bytes at the end, the phase of the peak and the number of
// allocations: equal (gtest expectations).
void expect_same_stats(const MemoryStats& real, const MemoryStats& meta);

}  // namespace lmtune::test_util
