// Causal grouped-query attention, fp32, FlashAttention-style (see attention.cpp).
#pragma once

#include <cstdint>

namespace lmtune::cpu {

// Query head h reads kv head h / (Hq / Hkv). Query row t sits at absolute position q_pos0 + t
// and attends keys [0, q_pos0 + t]; only the first q_pos0 + T rows of k and v are read.
void attention_forward(float* out,      // (B, T, Hq, D)
                       float* lse,      // (B, Hq, T) or nullptr
                       const float* q,  // (B, T, Hq, D)
                       const float* k,  // (B, S, Hkv, D)
                       const float* v,  // (B, S, Hkv, D)
                       int64_t B, int64_t T, int64_t S, int64_t Hq, int64_t Hkv, int64_t D, int64_t q_pos0);

// Training backward (q_pos0 = 0, S = T). dq, dk, dv are written (=).
void attention_backward(float* dq,          // (B, T, Hq, D)
                        float* dk,          // (B, T, Hkv, D)
                        float* dv,          // (B, T, Hkv, D)
                        float* drow,        // (B, Hq, T) scratch: rowsum(dout * out)
                        const float* dout,  // (B, T, Hq, D)
                        const float* q,     // (B, T, Hq, D)
                        const float* k,     // (B, T, Hkv, D)
                        const float* v,     // (B, T, Hkv, D)
                        const float* out,   // (B, T, Hq, D)
                        const float* lse,   // (B, Hq, T)
                        int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t D);

}  // namespace lmtune::cpu
