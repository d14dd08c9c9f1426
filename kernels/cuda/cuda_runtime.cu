#include "kernels/cuda/cuda_runtime.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <cmath>
#include <vector>

#include "trainer/core/error.h"

#define LMTUNE_CUDA_CHECK(expr)                                                              \
  do {                                                                                       \
    cudaError_t err_ = (expr);                                                               \
    LMTUNE_CHECK(err_ == cudaSuccess, "CUDA error in ", #expr, ": ", cudaGetErrorString(err_)); \
  } while (0)
#define LMTUNE_CUBLAS_CHECK(expr)                                                            \
  do {                                                                                       \
    cublasStatus_t st_ = (expr);                                                             \
    LMTUNE_CHECK(st_ == CUBLAS_STATUS_SUCCESS, "cuBLAS error ", static_cast<int>(st_), " in ", #expr); \
  } while (0)

namespace lmtune::cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

std::string device_description(int i) {
  cudaDeviceProp p{};
  LMTUNE_CUDA_CHECK(cudaGetDeviceProperties(&p, i));
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s, cc %d.%d, %.1f GiB", p.name, p.major, p.minor,
                static_cast<double>(p.totalGlobalMem) / (1 << 30));
  return buf;
}

double cublas_smoke_test() {
  LMTUNE_CHECK(device_count() > 0, "no CUDA device is present");
  constexpr int n = 4;
  std::vector<float> a(n * n), b(n * n), c(n * n, 0.0f);
  for (int i = 0; i < n * n; ++i) { a[i] = 0.5f * i; b[i] = (i % 3) - 1.0f; }
  auto alloc = make_allocator(0);
  const size_t bytes = sizeof(float) * n * n;
  const Block ba = alloc->allocate(bytes, MemCategory::workspace);
  const Block bb = alloc->allocate(bytes, MemCategory::workspace);
  const Block bc = alloc->allocate(bytes, MemCategory::workspace);
  float* da = reinterpret_cast<float*>(ba.addr);
  float* db = reinterpret_cast<float*>(bb.addr);
  float* dc = reinterpret_cast<float*>(bc.addr);
  LMTUNE_CUDA_CHECK(cudaMemcpy(da, a.data(), bytes, cudaMemcpyHostToDevice));
  LMTUNE_CUDA_CHECK(cudaMemcpy(db, b.data(), bytes, cudaMemcpyHostToDevice));
  cublasHandle_t h;
  LMTUNE_CUBLAS_CHECK(cublasCreate(&h));
  const float one = 1.0f, zero = 0.0f;
  // column-major: C = A * B
  LMTUNE_CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, da, n, db, n, &zero, dc, n));
  LMTUNE_CUDA_CHECK(cudaMemcpy(c.data(), dc, bytes, cudaMemcpyDeviceToHost));
  cublasDestroy(h);
  alloc->free(ba);
  alloc->free(bb);
  alloc->free(bc);
  cudaDeviceSynchronize();
  double err = 0;
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < n; ++i) {
      double want = 0;
      for (int k = 0; k < n; ++k) want += static_cast<double>(a[i + k * n]) * b[k + j * n];
      err = std::max(err, std::abs(want - c[i + j * n]));
    }
  return err;
}

int nccl_version() {
  int v = 0;
  ncclGetVersion(&v);
  return v;
}

}  // namespace lmtune::cuda
