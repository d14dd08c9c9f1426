#include "trainer/core/tensor.h"

#include <cstring>

namespace lmtune {

std::string shape_str(const Shape& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

Tensor Tensor::empty(Allocator& alloc, Shape shape, DType dtype, MemCategory category) {
  for (int64_t d : shape) LMTUNE_ASSERT(d >= 0, "negative dimension in ", shape_str(shape));
  Tensor t;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  const Block b = alloc.allocate(t.nbytes(), category);
  t.storage_ = std::make_shared<Storage>(alloc, b);
  return t;
}

Tensor Tensor::zeros(Allocator& alloc, Shape shape, DType dtype, MemCategory category) {
  Tensor t = empty(alloc, std::move(shape), dtype, category);
  t.zero_();
  return t;
}

int64_t Tensor::size(int d) const {
  if (d < 0) d += dim();
  LMTUNE_ASSERT(d >= 0 && d < dim(), "dimension ", d, " out of range for shape ", shape_str(shape_));
  return shape_[d];
}

Device Tensor::device() const {
  LMTUNE_ASSERT(defined());
  return storage_->allocator().device();
}
Allocator& Tensor::allocator() const {
  LMTUNE_ASSERT(defined());
  return storage_->allocator();
}
MemCategory Tensor::category() const {
  LMTUNE_ASSERT(defined());
  return storage_->category();
}

void* Tensor::raw() const {
  LMTUNE_ASSERT(defined(), "use of an undefined tensor");
  return static_cast<char*>(storage_->data()) + offset_;
}

Tensor Tensor::view(int64_t elem_offset, Shape shape) const {
  Tensor t = *this;
  t.offset_ = offset_ + static_cast<size_t>(elem_offset) * dtype_size(dtype_);
  t.shape_ = std::move(shape);
  LMTUNE_ASSERT(elem_offset >= 0 && elem_offset + t.numel() <= numel(), "view ", shape_str(t.shape_), " at ",
                elem_offset, " runs past a tensor of shape ", shape_str(shape_));
  return t;
}

Tensor Tensor::reshape(Shape shape) const {
  LMTUNE_ASSERT(shape_numel(shape) == numel(), "reshape ", shape_str(shape_), " -> ", shape_str(shape));
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

void Tensor::zero_() {
  if (is_meta()) return;
  std::memset(raw(), 0, nbytes());
}

void Tensor::fill_(float value) {
  LMTUNE_ASSERT(dtype_ == DType::f32);
  if (is_meta()) return;
  float* p = data<float>();
  for (int64_t i = 0, n = numel(); i < n; ++i) p[i] = value;
}

void convert_elements(const void* src, DType st, void* dst, DType dt, int64_t n) {
  if (st == dt) {
    std::memcpy(dst, src, static_cast<size_t>(n) * dtype_size(st));
    return;
  }
  auto load = [&](int64_t i) -> float {
    switch (st) {
      case DType::f32: return static_cast<const float*>(src)[i];
      case DType::bf16: return bf16_to_f32(static_cast<const uint16_t*>(src)[i]);
      case DType::f16: return f16_to_f32(static_cast<const uint16_t*>(src)[i]);
      default: LMTUNE_THROW("cannot convert from ", dtype_name(st), " to ", dtype_name(dt));
    }
  };
  switch (dt) {
    case DType::f32: for (int64_t i = 0; i < n; ++i) static_cast<float*>(dst)[i] = load(i); break;
    case DType::bf16: for (int64_t i = 0; i < n; ++i) static_cast<uint16_t*>(dst)[i] = f32_to_bf16(load(i)); break;
    case DType::f16: for (int64_t i = 0; i < n; ++i) static_cast<uint16_t*>(dst)[i] = f32_to_f16(load(i)); break;
    default: LMTUNE_THROW("cannot convert from ", dtype_name(st), " to ", dtype_name(dt));
  }
}

void Tensor::copy_from_host(const void* src, DType src_dtype) {
  if (is_meta()) return;
  convert_elements(src, src_dtype, raw(), dtype_, numel());
}

std::vector<float> Tensor::to_f32() const {
  LMTUNE_ASSERT(!is_meta(), "to_f32() on a meta tensor");
  std::vector<float> out(static_cast<size_t>(numel()));
  convert_elements(raw(), dtype_, out.data(), DType::f32, numel());
  return out;
}

void Tensor::copy_(const Tensor& src) {
  LMTUNE_ASSERT(src.dtype_ == dtype_ && src.numel() == numel(), "copy_ ", shape_str(src.shape_), " -> ", shape_str(shape_));
  if (is_meta()) return;
  std::memcpy(raw(), src.raw(), nbytes());
}

}  // namespace lmtune
