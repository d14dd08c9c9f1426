// Rotary position embedding, rotate-half (HF) layout.
#pragma once

#include <cstdint>

namespace lmtune::cpu {

enum class RopeDirection { forward, inverse };

// For i < D/2 the pair (x[i], x[i + D/2]) of row t is rotated by angle (pos0 + t) * inv_freq[i]
// (forward) or by minus that angle (inverse = the backward); the angle is formed in double.
// out may equal inp.
void rope_apply(float* out,             // (B, T, H, D)
                const float* inp,       // (B, T, H, D)
                const float* inv_freq,  // (D/2)
                int64_t B, int64_t T, int64_t H, int64_t D, int64_t pos0, RopeDirection dir);

}  // namespace lmtune::cpu
