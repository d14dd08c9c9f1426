#include "kernels/cuda/cuda_runtime.h"

#include <gtest/gtest.h>

namespace lmtune {

TEST(Cuda, NcclLinks) { EXPECT_GE(cuda::nccl_version(), 20000); }

TEST(Cuda, CublasSgemm) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device";
  std::printf("device 0: %s\n", cuda::device_description(0).c_str());
  EXPECT_LT(cuda::cublas_smoke_test(), 1e-4);
}

}  // namespace lmtune
