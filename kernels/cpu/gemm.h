// Row-major single-precision GEMM on OpenBLAS, partitioned over OpenMP threads.
//
// Threading policy (design note). OpenBLAS (the pthreads build the system ships) keeps its own
// thread pool, whose idle workers spin (sched_yield) for a while after every call; the
// OpenMP pool of the other kernels spins too after each parallel region. On a machine with as
// many threads as cores the two pools steal each other's cores whenever sgemm calls and OpenMP
// kernels alternate (every layer of a training step): measured on 2 cores, the chunked
// lm_head + cross-entropy lost ~25-30% to it. So there is one pool: OpenBLAS runs
// single-threaded (set_num_threads pins it to 1), and gemm() splits C into one panel per
// OpenMP thread (along the larger of M and N, in multiples of 64) and calls cblas_sgemm on each
// panel from inside the parallel region. Results do not depend on the thread count beyond
// GEMM-internal summation order, which OpenBLAS keeps per element.
#pragma once

#include <cstdint>

namespace lmtune::cpu {

enum class Trans { no, yes };

// C (M, N) = alpha * op(A) (M, K) @ op(B) (K, N) + beta * C; row-major with leading dimensions.
void gemm(Trans ta, Trans tb, int64_t M, int64_t N, int64_t K, float alpha,
          const float* A,  // (M, K) if ta == no, else (K, M); row stride lda
          int64_t lda,
          const float* B,  // (K, N) if tb == no, else (N, K); row stride ldb
          int64_t ldb, float beta,
          float* C,  // (M, N), row stride ldc
          int64_t ldc);

// Pin OpenBLAS to one thread (idempotent; gemm() does it on first use).
void gemm_init_threads();

}  // namespace lmtune::cpu
