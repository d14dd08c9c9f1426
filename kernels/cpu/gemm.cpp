#include "kernels/cpu/gemm.h"

#include <cblas.h>
#include <omp.h>

#include <mutex>

#include "kernels/cpu/common.h"

// OpenBLAS's own setter (in OpenBLAS's cblas.h; declared again for other cblas headers).
extern "C" void openblas_set_num_threads(int);

namespace lmtune::cpu {
namespace {

// Below this many multiply-adds one thread does the whole product (no parallel region).
constexpr double kParallelMinWork = 1 << 20;
constexpr int64_t kPanelAlign = 64;

void sgemm_panel(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                 const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  cblas_sgemm(CblasRowMajor, ta == Trans::yes ? CblasTrans : CblasNoTrans, tb == Trans::yes ? CblasTrans : CblasNoTrans,
              static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), alpha, A, static_cast<int>(lda), B,
              static_cast<int>(ldb), beta, C, static_cast<int>(ldc));
}

}  // namespace

void gemm_init_threads() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

void gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {  // C = beta * C
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) C[m * ldc + n] = beta == 0.0f ? 0.0f : beta * C[m * ldc + n];
    return;
  }
  gemm_init_threads();
  const int threads = omp_get_max_threads();
  if (threads <= 1 || static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K) < kParallelMinWork ||
      omp_in_parallel()) {
    sgemm_panel(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  const bool split_n = N >= M;
  const int64_t extent = split_n ? N : M;
  const int64_t units = (extent + kPanelAlign - 1) / kPanelAlign;
  const int parts = static_cast<int>(std::min<int64_t>(threads, units));
#pragma omp parallel num_threads(parts)
  {
    int64_t u0, u1;
    split_range(units, omp_get_thread_num(), omp_get_num_threads(), u0, u1);
    const int64_t b0 = u0 * kPanelAlign, b1 = std::min(extent, u1 * kPanelAlign);
    if (b1 > b0) {
      if (split_n) {
        const float* Bp = tb == Trans::no ? B + b0 : B + b0 * ldb;
        sgemm_panel(ta, tb, M, b1 - b0, K, alpha, A, lda, Bp, ldb, beta, C + b0, ldc);
      } else {
        const float* Ap = ta == Trans::no ? A + b0 * lda : A + b0;
        sgemm_panel(ta, tb, b1 - b0, N, K, alpha, Ap, lda, B, ldb, beta, C + b0 * ldc, ldc);
      }
    }
  }
}

}  // namespace lmtune::cpu
