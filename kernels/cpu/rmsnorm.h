// RMSNorm: out = inp * rstd * weight, rstd = 1 / sqrt(mean(inp^2) + eps).
#pragma once

#include <cstdint>

namespace lmtune::cpu {

void rmsnorm_forward(float* out,           // (N, C)
                     float* rstd,          // (N) saved for backward
                     const float* inp,     // (N, C)
                     const float* weight,  // (C)
                     int64_t N, int64_t C, float eps);

// dinp = / += (beta 0 / 1); dweight +=
void rmsnorm_backward(float* dinp,          // (N, C)
                      float* dweight,       // (C) or nullptr (frozen weight)
                      const float* dout,    // (N, C)
                      const float* inp,     // (N, C)
                      const float* weight,  // (C)
                      const float* rstd,    // (N)
                      int64_t N, int64_t C, float beta);

}  // namespace lmtune::cpu
