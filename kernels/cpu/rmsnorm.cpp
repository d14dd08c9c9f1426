#include "kernels/cpu/rmsnorm.h"

#include "kernels/cpu/common.h"

namespace lmtune::cpu {

void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, int64_t N, int64_t C, float eps) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* x = inp + n * C;
    float* o = out + n * C;
    double ss = 0.0;
#pragma omp simd reduction(+ : ss)
    for (int64_t c = 0; c < C; ++c) ss += static_cast<double>(x[c]) * x[c];
    const float r = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(C) + eps));
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) o[c] = x[c] * r * weight[c];
    rstd[n] = r;
  }
}

void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp, const float* weight,
                      const float* rstd, int64_t N, int64_t C, float beta) {
  // dweight: each thread owns a slice of channels and walks every row (race-free).
  if (dweight != nullptr) {
#pragma omp parallel
    {
      int64_t c0, c1;
      split_range(C, omp_get_thread_num(), omp_get_num_threads(), c0, c1);
      for (int64_t n = 0; n < N; ++n) {
        const float* x = inp + n * C;
        const float* dy = dout + n * C;
        const float r = rstd[n];
#pragma omp simd
        for (int64_t c = c0; c < c1; ++c) dweight[c] += dy[c] * x[c] * r;
      }
    }
  }
  // dinp = r * w * dy - r^3 / C * x * sum(dy * w * x)
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* x = inp + n * C;
    const float* dy = dout + n * C;
    float* dx = dinp + n * C;
    const float r = rstd[n];
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int64_t c = 0; c < C; ++c) dot += dy[c] * weight[c] * x[c];
    const float coef = r * r * r * dot / static_cast<float>(C);
    if (beta == 0.0f) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) dx[c] = r * weight[c] * dy[c] - coef * x[c];
    } else {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) dx[c] += r * weight[c] * dy[c] - coef * x[c];
    }
  }
}

}  // namespace lmtune::cpu
