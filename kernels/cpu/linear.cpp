#include "kernels/cpu/linear.h"

#include <omp.h>

#include "kernels/cpu/common.h"
#include "kernels/cpu/gemm.h"
#include "trainer/core/error.h"
#include "trainer/core/tensor.h"


namespace lmtune::cpu {

void linear_forward(float* out, int64_t ld_out, const float* inp, const float* weight, const float* bias, int64_t N,
                    int64_t IC, int64_t OC, OutMode mode, float scale) {
  if (N == 0 || OC == 0) return;
  float beta = mode == OutMode::accumulate ? 1.0f : 0.0f;
  if (bias != nullptr) {
    // Fold the bias into C and let the GEMM accumulate onto it.
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      float* o = out + n * ld_out;
      if (mode == OutMode::accumulate) {
#pragma omp simd
        for (int64_t c = 0; c < OC; ++c) o[c] += bias[c];
      } else {
        std::memcpy(o, bias, static_cast<size_t>(OC) * sizeof(float));
      }
    }
    beta = 1.0f;
  }
  if (IC == 0) {
    if (beta == 0.0f)
      for (int64_t n = 0; n < N; ++n) std::memset(out + n * ld_out, 0, static_cast<size_t>(OC) * sizeof(float));
    return;
  }
  gemm(Trans::no, Trans::yes, N, OC, IC, scale, inp, IC, weight, IC, beta, out, ld_out);
}

void linear_backward_input(float* dinp, const float* dout, int64_t ld_dout, const float* weight, int64_t N,
                           int64_t IC, int64_t OC, float beta) {
  if (N == 0 || IC == 0) return;
  if (OC == 0) {
    if (beta == 0.0f) std::memset(dinp, 0, static_cast<size_t>(N * IC) * sizeof(float));
    return;
  }
  gemm(Trans::no, Trans::no, N, IC, OC, 1.0f, dout, ld_dout, weight, IC, beta, dinp, IC);
}

void linear_backward_weight(float* dweight, const float* dout, const float* inp, int64_t N, int64_t IC, int64_t OC) {
  if (N == 0 || IC == 0 || OC == 0) return;
  gemm(Trans::yes, Trans::no, OC, IC, N, 1.0f, dout, OC, inp, IC, 1.0f, dweight, IC);
}

void linear_backward_bias(float* dbias, const float* dout, int64_t N, int64_t OC) {
  // Each thread owns a slice of the columns and walks every row: race-free, deterministic.
#pragma omp parallel
  {
    int64_t c0, c1;
    split_range(OC, omp_get_thread_num(), omp_get_num_threads(), c0, c1);
    for (int64_t n = 0; n < N; ++n) {
      const float* row = dout + n * OC;
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) dbias[c] += row[c];
    }
  }
}

void convert_to_f32(float* dst, const void* src, DType src_dtype, int64_t n) {
  const size_t esize = dtype_size(src_dtype);
  constexpr int64_t kPiece = 1 << 16;
  const int64_t pieces = (n + kPiece - 1) / kPiece;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < pieces; ++i) {
    const int64_t b = i * kPiece, e = std::min(n, b + kPiece);
    if (src_dtype == DType::bf16) {
      const uint16_t* s = static_cast<const uint16_t*>(src);
#pragma omp simd
      for (int64_t j = b; j < e; ++j) {
        const uint32_t u = static_cast<uint32_t>(s[j]) << 16;
        std::memcpy(dst + j, &u, sizeof(float));
      }
    } else {
      convert_elements(static_cast<const char*>(src) + b * esize, src_dtype, dst + b, DType::f32, e - b);
    }
  }
}

// OpenMP gets n threads; OpenBLAS stays single-threaded inside them (one pool, see gemm.h).
void set_num_threads(int n) {
  gemm_init_threads();
  if (n <= 0) return;
  omp_set_num_threads(n);
}

int num_threads() { return omp_get_max_threads(); }

void lora_merge(float* weight, const float* a, const float* b, int64_t OC, int64_t IC, int64_t r, float scale) {
  const double s = scale;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < OC; ++i)
    for (int64_t j = 0; j < IC; ++j) {
      double acc = 0;
      for (int64_t k = 0; k < r; ++k) acc += static_cast<double>(b[i * r + k]) * a[k * IC + j];
      weight[i * IC + j] += static_cast<float>(s * acc);
    }
}

}  // namespace lmtune::cpu
