// Elementwise kernels: SwiGLU and residual adds.
#pragma once

#include <cstdint>

#include "kernels/cpu/common.h"

namespace lmtune::cpu {

// out = silu(gate) * up
void swiglu_forward(float* out,         // (n)
                    const float* gate,  // (n)
                    const float* up,    // (n)
                    int64_t n);

// dgate = dout * up * silu'(gate); dup = dout * silu(gate)   (both written)
void swiglu_backward(float* dgate,       // (n)
                     float* dup,         // (n)
                     const float* dout,  // (n)
                     const float* gate,  // (n)
                     const float* up,    // (n)
                     int64_t n);

// out = a + b (out may alias a or b)
void add_forward(float* out, const float* a, const float* b, int64_t n);  // (n) each

// out += a
void add_inplace(float* out, const float* a, int64_t n);  // (n) each

// x *= scale
void scale_inplace(float* x,  // (n)
                   float scale, int64_t n);

// out = / += inp * keep_i / (1 - p), keep_i = hash(seed, index0 + i) >= p (the same mask for
// the same seed, index and p: forward and backward call this with their own inp/out).
// index0 places these n elements in a larger logical tensor (a data-parallel rank's rows
// within the global batch), so every layout draws the same mask for the same element.
void dropout_apply(float* out,        // (n)
                   const float* inp,  // (n)
                   int64_t n, float p, uint64_t seed, uint64_t index0, OutMode mode);

}  // namespace lmtune::cpu
