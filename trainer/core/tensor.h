// Tensor: a contiguous, typed, shaped view into storage that came from a tracked Allocator.
// Views share storage (a block's parameters are views into one flat buffer). On the meta
// device data() is a fake address that must never be dereferenced: kernels check
// is_meta() (through kernels/ops.h) and do nothing.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "trainer/core/allocator.h"
#include "trainer/core/dtype.h"
#include "trainer/core/error.h"

namespace lmtune {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);

class Storage {
 public:
  Storage(Allocator& alloc, Block block) : alloc_(&alloc), block_(block) {}
  ~Storage() { alloc_->free(block_); }
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return reinterpret_cast<void*>(block_.addr); }
  size_t size() const { return block_.size; }
  Allocator& allocator() const { return *alloc_; }
  MemCategory category() const { return block_.category; }

 private:
  Allocator* alloc_;
  Block block_;
};

class Tensor {
 public:
  Tensor() = default;

  // Uninitialised memory (on CPU) from `alloc`, tagged with `category`.
  static Tensor empty(Allocator& alloc, Shape shape, DType dtype, MemCategory category);
  // Zero-filled (no-op on meta).
  static Tensor zeros(Allocator& alloc, Shape shape, DType dtype, MemCategory category);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int dim() const { return static_cast<int>(shape_.size()); }
  int64_t size(int d) const;  // negative d counts from the end
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const;
  bool is_meta() const { return device().is_meta(); }
  Allocator& allocator() const;
  MemCategory category() const;

  void* raw() const;
  template <typename T>
  T* data() const {
    LMTUNE_ASSERT(sizeof(T) == dtype_size(dtype_), "data<T>() with a T of the wrong size for ", dtype_name(dtype_));
    return static_cast<T*>(raw());
  }

  // A contiguous view of `shape` starting `elem_offset` elements into this tensor.
  Tensor view(int64_t elem_offset, Shape shape) const;
  // Same elements, another shape (numel must match).
  Tensor reshape(Shape shape) const;

  void zero_();
  void fill_(float value);                   // f32 only
  // Copy `count` elements of `src_dtype` from host memory, converting to this dtype.
  void copy_from_host(const void* src, DType src_dtype);
  // Copy out as f32 (for tests and I/O). Not allowed on meta.
  std::vector<float> to_f32() const;
  void copy_(const Tensor& src);  // same dtype, same numel

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;  // bytes
  Shape shape_;
  DType dtype_ = DType::f32;
};

// Convert n elements between dtypes in host memory (f32/bf16/f16 each way; same-type copy).
void convert_elements(const void* src, DType src_dtype, void* dst, DType dst_dtype, int64_t n);

}  // namespace lmtune
