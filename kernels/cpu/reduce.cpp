#include "kernels/cpu/reduce.h"

#include "kernels/cpu/common.h"

namespace lmtune::cpu {

int64_t argmax(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[best] || (x[best] != x[best] && x[i] == x[i])) best = i;
  return best;
}

double sum_squares(const float* x, int64_t n) {
  double total = 0.0;
#pragma omp parallel for simd schedule(static) reduction(+ : total)
  for (int64_t i = 0; i < n; ++i) total += static_cast<double>(x[i]) * x[i];
  return total;
}

}  // namespace lmtune::cpu
