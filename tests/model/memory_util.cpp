#include "model/memory_util.h"

#include <gtest/gtest.h>

namespace lmtune::test_util {

void expect_same_stats(const MemoryStats& real, const MemoryStats& meta) {
  for (int c = 0; c < kNumMemCategories; ++c) {
    EXPECT_EQ(real.category[c].peak, meta.category[c].peak) << mem_category_name(static_cast<MemCategory>(c));
    EXPECT_EQ(real.at_peak[c], meta.at_peak[c]) << mem_category_name(static_cast<MemCategory>(c));
  }
  EXPECT_EQ(real.allocated.peak, meta.allocated.peak);
  EXPECT_EQ(real.reserved.peak, meta.reserved.peak);
  EXPECT_EQ(real.reserved.current, meta.reserved.current);
  EXPECT_EQ(real.peak_phase, meta.peak_phase);
  EXPECT_EQ(real.num_allocs, meta.num_allocs);
}

}  // namespace lmtune::test_util
