// QAT for llama.cpp's Q4_0 arithmetic — design note.
//
// What llama.cpp computes for a Q4_0 model on the CPU: every projection's weight is Q4_0
// (blocks of 32 along the input dimension), and the activation row entering its matmul is
// quantized to Q8_0 (blocks of 32, d = amax / 127) before the integer dot products; the
// embedding table and the output matrix are Q8_0 in `export --dtype q4_0` files, so the
// lm_head's input is Q8_0 too and the embedding rows come out dequantized. QatScheme::q4_0
// trains that function:
//   projection   y = fq8(x) fq4(W_eff)^T (+ b), W_eff = W (full fine-tuning) or
//                W + scaling B A (LoRA: the weight the export merges and writes)
//   embedding    h = fq8(E)[tokens]   (= fq8 of the looked-up rows: blocks lie within rows)
//   lm_head      logits = fq8(x) fq8(W_head)^T
// where fq4 / fq8 are dequantize(quantize(.)) with GGUF's own block codecs
// (kernels/cpu/quant.h) — the same functions the GGUF export quantizes with, so the
// exported file holds exactly the values the last training step computed with.
// Gradients pass straight through both (STE): d/dx = dy fq4(W_eff), d/dW_eff = dy^T fq8(x),
// and with LoRA dB = scaling dy^T (fq8(x) A^T), dA = scaling (dy B)^T fq8(x). Nothing extra
// is saved for backward: W_eff and fq8(x) are recomputed into workspace, one projection at
// a time. LoRA dropout cannot be expressed by a merged weight and is refused with QAT.
// Every quantized dimension (the hidden size and every projection's input) must be a
// multiple of 32, as Q4_0 / Q8_0 need; a model where one is not is refused.
#pragma once

#include <cstdint>
#include <span>

#include "trainer/model/linear.h"

namespace lmtune {

class QatLinear final : public Linear {
 public:
  // weight_row (out, in) f32/bf16/f16, bias_row (or -1); a_row / b_row the LoRA adapters
  // (or -1 for full fine-tuning), scaling their factor.
  QatLinear(int64_t out, int64_t in, int weight_row, int bias_row, int a_row, int b_row, float scaling);
  int64_t in_features() const override { return in_; }
  int64_t out_features() const override { return out_; }
  void bind(std::span<const Tensor> params, std::span<const Tensor> grads) override;
  void forward(Tensor& out, const Tensor& inp, const LinearContext& ctx) const override;
  void backward(Tensor* dinp, const Tensor& dout, const Tensor& inp, const LinearContext& ctx,
                ops::GradWrite mode) override;
  // W += scaling * B A, then B = 0 (as LoRA). No-op on meta.
  void merge_adapter() override;

 private:
  Tensor quantized_weight(Allocator& alloc) const;           // fq4(W_eff) (out, in), workspace
  static Tensor quantized_input(const Tensor& inp);          // fq8(inp), workspace
  int64_t out_, in_;
  int weight_row_, bias_row_, a_row_, b_row_;
  float scaling_;
  Tensor weight_, bias_, dweight_, dbias_, a_, b_, da_, db_;
};

// Throws (naming method.qat) unless every dimension QAT quantizes along is a multiple of 32.
void check_qat_dims(int64_t hidden, int64_t q_dim, int64_t intermediate);

}  // namespace lmtune
