// The CUDA backend's entry points. Only toolchain wiring so far (roadmap step 6 brings
// kernels, the caching allocator's cudaMalloc segment source and NCCL communicators).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "trainer/core/allocator.h"

namespace lmtune::cuda {

// Number of visible CUDA devices; 0 when there is no driver or no GPU (never throws).
int device_count();
// "NVIDIA H100 80GB HBM3, cc 9.0, 79.1 GiB" for device i.
std::string device_description(int i);
// Creates a cuBLAS handle, runs one SGEMM (C = A @ B for small fixed matrices) and
// returns max |C - expected|. Throws where no GPU is present.
double cublas_smoke_test();
// A tracked Allocator whose segments come from cudaMalloc on `device`.
std::unique_ptr<Allocator> make_allocator(int device, int64_t capacity = Allocator::kUnlimited);
// NCCL's version number (e.g. 22703), from ncclGetVersion.
int nccl_version();

}  // namespace lmtune::cuda
