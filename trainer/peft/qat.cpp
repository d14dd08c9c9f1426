#include "trainer/peft/qat.h"

#include "kernels/ops.h"
#include "trainer/core/error.h"

namespace lmtune {

QatLinear::QatLinear(int64_t out, int64_t in, int weight_row, int bias_row, int a_row, int b_row, float scaling)
    : out_(out),
      in_(in),
      weight_row_(weight_row),
      bias_row_(bias_row),
      a_row_(a_row),
      b_row_(b_row),
      scaling_(scaling) {}

void QatLinear::bind(std::span<const Tensor> params, std::span<const Tensor> grads) {
  auto view = [](std::span<const Tensor> v, int row) { return row >= 0 && !v.empty() ? v[row] : Tensor(); };
  weight_ = view(params, weight_row_);
  bias_ = view(params, bias_row_);
  a_ = view(params, a_row_);
  b_ = view(params, b_row_);
  dweight_ = view(grads, weight_row_);
  dbias_ = view(grads, bias_row_);
  da_ = view(grads, a_row_);
  db_ = view(grads, b_row_);
}

Tensor QatLinear::quantized_weight(Allocator& alloc) const {
  Tensor w = Tensor::empty(alloc, {out_, in_}, DType::f32, MemCategory::workspace);
  if (!w.is_meta()) w.copy_from_host(weight_.raw(), weight_.dtype());
  if (a_.defined()) ops::lora_merge(w, a_, b_, scaling_);
  ops::fake_quant_q4_0(w, w);
  return w;
}

Tensor QatLinear::quantized_input(const Tensor& inp) {
  Tensor x = Tensor::empty(inp.allocator(), inp.shape(), DType::f32, MemCategory::workspace);
  ops::fake_quant_q8_0(x, inp);
  return x;
}

void QatLinear::forward(Tensor& out, const Tensor& inp, const LinearContext&) const {
  const Tensor x = quantized_input(inp);
  const Tensor w = quantized_weight(inp.allocator());
  ops::linear_forward(out, x, w, bias_.defined() ? &bias_ : nullptr);
}

void QatLinear::backward(Tensor* dinp, const Tensor& dout, const Tensor& inp, const LinearContext&,
                         ops::GradWrite mode) {
  using ops::GradWrite;
  const Tensor x = quantized_input(inp);
  {
    const Tensor w = quantized_weight(inp.allocator());
    ops::linear_backward(dinp, dweight_.defined() ? &dweight_ : nullptr, dbias_.defined() ? &dbias_ : nullptr, dout,
                         x, w, mode);
  }
  if (!a_.defined()) return;
  // The adapters through W_eff = W + s B A: dB += s dout^T (x A^T), dA += s (dout B)^T x.
  const int64_t N = x.size(0), r = a_.size(0);
  Tensor hs = Tensor::empty(inp.allocator(), {N, r}, DType::f32, MemCategory::activations);
  ops::linear_forward(hs, x, a_, nullptr);
  ops::scale_inplace(hs, scaling_);
  Tensor dh = Tensor::empty(inp.allocator(), {N, r}, DType::f32, MemCategory::activations);
  ops::linear_backward(&dh, db_.defined() ? &db_ : nullptr, nullptr, dout, hs, b_, GradWrite::assign);
  hs = Tensor();
  ops::scale_inplace(dh, scaling_);
  ops::linear_backward(nullptr, da_.defined() ? &da_ : nullptr, nullptr, dh, x, a_, GradWrite::assign);
}

void QatLinear::merge_adapter() {
  if (!a_.defined() || weight_.is_meta()) return;
  ops::lora_merge(weight_, a_, b_, scaling_);
  b_.zero_();
}

void check_qat_dims(int64_t hidden, int64_t q_dim, int64_t intermediate) {
  for (const auto& [what, d] : {std::pair<const char*, int64_t>{"hidden_size", hidden}, {"the attention width "
                                "(num_attention_heads x head_dim)", q_dim}, {"intermediate_size", intermediate}})
    LMTUNE_CHECK(d % 32 == 0, "method.qat: ", what, " is ", d, ", not a multiple of 32; Q4_0 and Q8_0 quantize in "
                 "blocks of 32 along it (a GGUF export would keep that matrix in F16)");
}

}  // namespace lmtune
