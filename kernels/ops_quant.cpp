// Dispatch of the quantization ops of kernels/ops.h (see the header of ops.cpp for the rules
// every op keeps: checks, then cpu compute or, on meta, only the same workspace).
#include <algorithm>
#include <cmath>

#include "kernels/cpu/quant.h"
#include "kernels/op_checks.h"
#include "kernels/ops.h"

namespace lmtune::ops {
using namespace internal;

namespace {

// The shapes of q's tensors against the sizes of its weight; returns those sizes.
cpu::Nf4Sizes check_nf4(const Nf4Weight& q, const char* op) {
  const int64_t n = shape_numel(q.shape);
  const cpu::Nf4Sizes s = cpu::nf4_sizes(n);
  check_dtype(q.codes, DType::u8, op, "codes");
  check_dtype(q.absmax, DType::u8, op, "absmax");
  check_dtype(q.nested_absmax, DType::f32, op, "nested_absmax");
  check_dtype(q.offset, DType::f32, op, "offset");
  check_dtype(q.nested_code, DType::f32, op, "nested_code");
  LMTUNE_ASSERT(q.codes.numel() >= s.code_bytes && q.absmax.numel() == s.blocks &&
                    q.nested_absmax.numel() == s.nested_blocks && q.offset.numel() == 1 &&
                    q.nested_code.numel() == cpu::kDynamicMapSize,
                op, ": NF4 tensors of a ", shape_str(q.shape), " weight: codes ", q.codes.numel(), " (>= ",
                s.code_bytes, "), absmax ", q.absmax.numel(), " (", s.blocks, "), nested_absmax ",
                q.nested_absmax.numel(), " (", s.nested_blocks, "), offset ", q.offset.numel(), ", nested_code ",
                q.nested_code.numel());
  check_devices(op, q.codes, {&q.absmax, &q.nested_absmax, &q.offset, &q.nested_code});
  return s;
}

void check_fake_quant(Tensor& out, const Tensor& x, const char* op) {
  check_dtype(out, DType::f32, op, "out");
  check_dtype(x, DType::f32, op, "x");
  check_same_shape(out, x, op, "out", "x");
  LMTUNE_ASSERT(last_dim(x) % cpu::kGgmlBlockValues == 0, op, ": the last dimension of ", shape_str(x.shape()),
                " is not a multiple of ", cpu::kGgmlBlockValues);
  check_devices(op, out, {&x});
}

}  // namespace

void nf4_quantize(Nf4Weight& q, const Tensor& w) {
  constexpr const char* op = "nf4_quantize";
  const cpu::Nf4Sizes s = check_nf4(q, op);
  check_dtype(w, DType::f32, op, "w");
  LMTUNE_ASSERT(w.numel() == shape_numel(q.shape), op, ": w ", shape_str(w.shape()), " for a ",
                shape_str(q.shape), " weight");
  check_devices(op, q.codes, {&w});
  Tensor scratch = workspace(w, {s.blocks});
  if (w.is_meta()) return;
  const float* x = w.data<float>();
  const int64_t n = w.numel();
  for (int64_t i = 0; i < n; ++i)
    LMTUNE_CHECK(std::isfinite(x[i]), op, ": the weight has a non-finite value (", x[i], ") at element ", i,
                 "; NF4 cannot represent it");
  cpu::dynamic_map_signed(q.nested_code.data<float>());
  cpu::nf4_quantize(x, n, q.nested_code.data<float>(), q.codes.data<uint8_t>(), q.absmax.data<uint8_t>(),
                    q.nested_absmax.data<float>(), q.offset.data<float>(), scratch.data<float>());
}

void nf4_dequantize(Tensor& w, const Nf4Weight& q) {
  constexpr const char* op = "nf4_dequantize";
  const cpu::Nf4Sizes s = check_nf4(q, op);
  check_dtype(w, DType::f32, op, "w");
  LMTUNE_ASSERT(w.numel() == shape_numel(q.shape), op, ": w ", shape_str(w.shape()), " for a ",
                shape_str(q.shape), " weight");
  check_devices(op, w, {&q.codes});
  Tensor scratch = workspace(w, {s.blocks});
  if (w.is_meta()) return;
  cpu::nf4_dequantize(q.codes.data<uint8_t>(), q.absmax.data<uint8_t>(), q.nested_absmax.data<float>(),
                      q.offset.data<float>()[0], q.nested_code.data<float>(), w.numel(), w.data<float>(),
                      scratch.data<float>());
}

void fake_quant_q4_0(Tensor& out, const Tensor& x) {
  check_fake_quant(out, x, "fake_quant_q4_0");
  if (out.is_meta()) return;
  cpu::fake_quant_q4_0(out.data<float>(), x.data<float>(), x.numel());
}

void fake_quant_q8_0(Tensor& out, const Tensor& x) {
  check_fake_quant(out, x, "fake_quant_q8_0");
  if (out.is_meta()) return;
  cpu::fake_quant_q8_0(out.data<float>(), x.data<float>(), x.numel());
}

}  // namespace lmtune::ops
