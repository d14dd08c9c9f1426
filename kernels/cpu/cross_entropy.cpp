#include "kernels/cpu/cross_entropy.h"


#include <limits>

#include "kernels/cpu/common.h"
#include "kernels/cpu/gemm.h"

namespace lmtune::cpu {

double lm_head_cross_entropy(float* logits, const float* x, const float* weight, const int32_t* targets,
                             float* row_loss, float* dx, float* dweight, int64_t N, int64_t C, int64_t V,
                             int64_t chunk_rows, float loss_scale, int64_t* count) {
  const bool backward = dx != nullptr || dweight != nullptr;
  double total = 0.0;
  int64_t counted = 0;
  for (int64_t r0 = 0; r0 < N; r0 += chunk_rows) {
    const int64_t rows = std::min(chunk_rows, N - r0);
    const float* xc = x + r0 * C;
    if (C > 0) {
      gemm(Trans::no, Trans::yes, rows, V, C, 1.0f, xc, C, weight, C, 0.0f, logits, V);
    } else {
      std::memset(logits, 0, static_cast<size_t>(rows * V) * sizeof(float));
    }
    double chunk_loss = 0.0;
    int64_t chunk_count = 0;
#pragma omp parallel for schedule(static) reduction(+ : chunk_loss, chunk_count)
    for (int64_t r = 0; r < rows; ++r) {
      float* row = logits + r * V;
      const int32_t target = targets[r0 + r];
      if (target < 0) {
        if (row_loss != nullptr) row_loss[r0 + r] = 0.0f;
        if (backward) std::memset(row, 0, static_cast<size_t>(V) * sizeof(float));
        continue;
      }
      float mx = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : mx)
      for (int64_t j = 0; j < V; ++j) mx = std::max(mx, row[j]);
      const float target_logit = row[target];
      // Sum of exp(l - max): float lanes over blocks of 1024, blocks summed in double.
      double sum = 0.0;
      for (int64_t j0 = 0; j0 < V; j0 += 1024) {
        const int64_t j1 = std::min(V, j0 + 1024);
        float part = 0.0f;
        if (backward) {
#pragma omp simd reduction(+ : part)
          for (int64_t j = j0; j < j1; ++j) {
            const float e = exp_approx(row[j] - mx);
            row[j] = e;
            part += e;
          }
        } else {
#pragma omp simd reduction(+ : part)
          for (int64_t j = j0; j < j1; ++j) part += exp_approx(row[j] - mx);
        }
        sum += part;
      }
      const double lse = static_cast<double>(mx) + std::log(sum);
      const double loss = lse - static_cast<double>(target_logit);
      if (row_loss != nullptr) row_loss[r0 + r] = static_cast<float>(loss);
      chunk_loss += loss;
      chunk_count += 1;
      if (backward) {
        const float f = static_cast<float>(static_cast<double>(loss_scale) / sum);
#pragma omp simd
        for (int64_t j = 0; j < V; ++j) row[j] *= f;
        row[target] -= loss_scale;
      }
    }
    total += chunk_loss;
    counted += chunk_count;
    if (!backward || C == 0) continue;
    if (dx != nullptr)
      gemm(Trans::no, Trans::no, rows, C, V, 1.0f, logits, V, weight, C, 0.0f, dx + r0 * C, C);
    if (dweight != nullptr)
      gemm(Trans::yes, Trans::no, V, C, rows, 1.0f, logits, V, xc, C, 1.0f, dweight, C);
  }
  if (count != nullptr) *count = counted;
  return total;
}

}  // namespace lmtune::cpu
