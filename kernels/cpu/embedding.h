// Token embedding lookup and its scatter-add backward.
#pragma once

#include <cstdint>

#include "trainer/core/dtype.h"

namespace lmtune::cpu {

// out[n] = float(table[tokens[n]]); tokens already checked to lie in [0, V).
void embedding_forward(float* out,             // (N, C)
                       const int32_t* tokens,  // (N)
                       const void* table,      // (V, C) of table_dtype (f32, bf16 or f16)
                       DType table_dtype, int64_t N, int64_t C);

// dtable[tokens[n]] += dout[n]. Threads own column slices: race-free and deterministic.
void embedding_backward(float* dtable,          // (V, C)
                        const float* dout,      // (N, C)
                        const int32_t* tokens,  // (N)
                        int64_t N, int64_t C);

}  // namespace lmtune::cpu
