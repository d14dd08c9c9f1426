#include "kernels/cpu/rope.h"

#include "kernels/cpu/common.h"

namespace lmtune::cpu {

void rope_apply(float* out, const float* inp, const float* inv_freq, int64_t B, int64_t T, int64_t H, int64_t D,
                int64_t pos0, RopeDirection dir) {
  const int64_t half = D / 2;
  const double sign = dir == RopeDirection::forward ? 1.0 : -1.0;
#pragma omp parallel
  {
    // Angles in double (pos * inv_freq) so large positions stay accurate.
    alignas(64) float cs[kMaxHeadDim / 2];
    alignas(64) float sn[kMaxHeadDim / 2];
#pragma omp for schedule(static)
    for (int64_t bt = 0; bt < B * T; ++bt) {
      const double pos = static_cast<double>(pos0 + bt % T);
      for (int64_t i = 0; i < half; ++i) {
        const double angle = pos * static_cast<double>(inv_freq[i]);
        cs[i] = static_cast<float>(std::cos(angle));
        sn[i] = static_cast<float>(sign * std::sin(angle));
      }
      for (int64_t h = 0; h < H; ++h) {
        const float* x = inp + (bt * H + h) * D;
        float* o = out + (bt * H + h) * D;
#pragma omp simd
        for (int64_t i = 0; i < half; ++i) {
          const float a = x[i], b = x[i + half];
          o[i] = a * cs[i] - b * sn[i];
          o[i + half] = b * cs[i] + a * sn[i];
        }
      }
    }
  }
}

}  // namespace lmtune::cpu
