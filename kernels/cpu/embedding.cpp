#include "kernels/cpu/embedding.h"

#include "kernels/cpu/common.h"
#include "trainer/core/tensor.h"

namespace lmtune::cpu {

void embedding_forward(float* out, const int32_t* tokens, const void* table, DType table_dtype, int64_t N, int64_t C) {
  const size_t esize = dtype_size(table_dtype);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const char* row = static_cast<const char*>(table) + static_cast<int64_t>(tokens[n]) * C * static_cast<int64_t>(esize);
    if (table_dtype == DType::f32)
      std::memcpy(out + n * C, row, static_cast<size_t>(C) * sizeof(float));
    else
      convert_elements(row, table_dtype, out + n * C, DType::f32, C);
  }
}

void embedding_backward(float* dtable, const float* dout, const int32_t* tokens, int64_t N, int64_t C) {
#pragma omp parallel
  {
    int64_t c0, c1;
    split_range(C, omp_get_thread_num(), omp_get_num_threads(), c0, c1);
    for (int64_t n = 0; n < N; ++n) {
      float* d = dtable + static_cast<int64_t>(tokens[n]) * C;
      const float* g = dout + n * C;
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) d[c] += g[c];
    }
  }
}

}  // namespace lmtune::cpu
