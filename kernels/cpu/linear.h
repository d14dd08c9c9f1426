// Linear layer kernels: the three GEMMs go to OpenBLAS sgemm through gemm() (gemm.h: one
// OpenMP pool, OpenBLAS single-threaded per panel), the rest is OpenMP.
// Leading dimensions let ops.cpp run a weight in row chunks (bf16/f16 weights converted to
// an f32 workspace chunk by chunk): chunk [o0, o1) of the output columns sits at out + o0
// with row stride ld.
#pragma once

#include <cstdint>

#include "kernels/cpu/common.h"
#include "trainer/core/dtype.h"

namespace lmtune::cpu {

// out[:, 0:OC] = / += scale * inp @ weight^T + bias
void linear_forward(float* out,           // (N, ld_out), columns [0, OC) written or accumulated
                    int64_t ld_out,       //
                    const float* inp,     // (N, IC)
                    const float* weight,  // (OC, IC)
                    const float* bias,    // (OC) or nullptr
                    int64_t N, int64_t IC, int64_t OC, OutMode mode = OutMode::assign, float scale = 1.0f);

// dinp = beta * dinp + dout[:, 0:OC] @ weight     (beta 0: written, 1: accumulated)
void linear_backward_input(float* dinp,         // (N, IC)
                           const float* dout,   // (N, ld_dout), columns [0, OC) read
                           int64_t ld_dout,     //
                           const float* weight, // (OC, IC)
                           int64_t N, int64_t IC, int64_t OC, float beta);

// dweight += dout^T @ inp
void linear_backward_weight(float* dweight,      // (OC, IC)
                            const float* dout,   // (N, OC)
                            const float* inp,    // (N, IC)
                            int64_t N, int64_t IC, int64_t OC);

// dbias += sum over rows of dout
void linear_backward_bias(float* dbias,       // (OC)
                          const float* dout,  // (N, OC)
                          int64_t N, int64_t OC);

// weight += scale * b @ a, each element's sum over r taken in double (the LoRA merge: exact
// enough that a merged model computes what the adapter did).
void lora_merge(float* weight,    // (OC, IC)
                const float* a,   // (r, IC)
                const float* b,   // (OC, r)
                int64_t OC, int64_t IC, int64_t r, float scale);

// dst = float(src) for n elements of a f32/bf16/f16 source (OpenMP-parallel).
void convert_to_f32(float* dst,       // (n)
                    const void* src,  // (n) of src_dtype
                    DType src_dtype, int64_t n);

// Thread control: n OpenMP threads; OpenBLAS pinned to 1 thread per call (see gemm.h).
void set_num_threads(int n);
int num_threads();

}  // namespace lmtune::cpu
