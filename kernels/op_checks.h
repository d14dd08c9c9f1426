// Argument checks and workspace of the tensor-level ops (kernels/ops.h), shared by the files
// that implement them. Internal to kernels/: nothing outside includes it.
#pragma once

#include <initializer_list>

#include "trainer/core/tensor.h"

namespace lmtune::ops::internal {

inline Tensor workspace(const Tensor& like, Shape shape) {
  return Tensor::empty(like.allocator(), std::move(shape), DType::f32, MemCategory::workspace);
}

inline void check_dtype(const Tensor& t, DType want, const char* op, const char* name) {
  LMTUNE_ASSERT(t.defined(), op, ": ", name, " is an undefined tensor");
  LMTUNE_ASSERT(t.dtype() == want, op, ": ", name, " must be ", dtype_name(want), ", got ", dtype_name(t.dtype()),
                " ", shape_str(t.shape()));
}

inline void check_float_storage(const Tensor& t, const char* op, const char* name) {
  LMTUNE_ASSERT(t.defined(), op, ": ", name, " is an undefined tensor");
  LMTUNE_ASSERT(t.dtype() == DType::f32 || t.dtype() == DType::bf16 || t.dtype() == DType::f16, op, ": ", name,
                " must be f32, bf16 or f16, got ", dtype_name(t.dtype()));
}

// Every tensor of an op lives on the device of `ref`, which is cpu or meta.
inline void check_devices(const char* op, const Tensor& ref, std::initializer_list<const Tensor*> others) {
  const Device d = ref.device();
  LMTUNE_ASSERT(d.is_cpu() || d.is_meta(), op, ": tensors on ", d.str(), " are not supported by these kernels");
  for (const Tensor* t : others)
    if (t != nullptr)
      LMTUNE_ASSERT(t->device() == d, op, ": tensors on different devices (", d.str(), " and ", t->device().str(),
                    ")");
}

inline int64_t last_dim(const Tensor& t) { return t.dim() == 0 ? 1 : t.size(-1); }
inline int64_t rows_of(const Tensor& t) {
  const int64_t c = last_dim(t);
  return c == 0 ? 0 : t.numel() / c;
}

// (rows, cols) view of a tensor whose last dimension is `cols`.
inline void check_matrix(const Tensor& t, int64_t rows, int64_t cols, const char* op, const char* name) {
  LMTUNE_ASSERT(t.dim() >= 1 && last_dim(t) == cols && rows_of(t) == rows, op, ": ", name, " has shape ",
                shape_str(t.shape()), ", expected (", rows, ", ", cols, ") (leading dimensions flattened)");
}

inline void check_same_shape(const Tensor& a, const Tensor& b, const char* op, const char* na, const char* nb) {
  LMTUNE_ASSERT(a.shape() == b.shape(), op, ": ", na, " ", shape_str(a.shape()), " and ", nb, " ",
                shape_str(b.shape()), " must have the same shape");
}

}  // namespace lmtune::ops::internal
