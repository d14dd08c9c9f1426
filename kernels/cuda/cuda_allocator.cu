// CUDA segment source for the tracked Allocator (trainer/core/allocator.h): the caching
// policy is the shared one; only the segments come from cudaMalloc. This is the one file
// that may call cudaMalloc.
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_runtime.h"
#include "trainer/core/allocator.h"

namespace lmtune::cuda {
namespace {

class CudaSegmentSource final : public SegmentSource {
 public:
  explicit CudaSegmentSource(int device) : device_(device) {}
  uintptr_t map(size_t bytes) override {
    void* p = nullptr;
    if (cudaSetDevice(device_) != cudaSuccess || cudaMalloc(&p, bytes) != cudaSuccess) {
      cudaGetLastError();
      return 0;
    }
    return reinterpret_cast<uintptr_t>(p);
  }
  void unmap(uintptr_t addr, size_t) override {
    cudaSetDevice(device_);
    cudaFree(reinterpret_cast<void*>(addr));
  }
  Device device() const override { return Device::cuda(device_); }

 private:
  int device_;
};

}  // namespace

std::unique_ptr<Allocator> make_allocator(int device, int64_t capacity) {
  return std::make_unique<Allocator>(std::make_unique<CudaSegmentSource>(device), capacity);
}

}  // namespace lmtune::cuda
