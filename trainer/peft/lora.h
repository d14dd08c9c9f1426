// LoRA: y = base(x) + scaling * (dropout(x) A^T) B^T with A (r, in) Kaiming-uniform and
// B (out, r) zero at initialisation; scaling = alpha / r (alpha / sqrt(r) for rsLoRA).
// The base layer is frozen (its own dtype, category `weights`); A and B are f32 views
// into the unit's adapter group (category `trainable`).
//
// Saved for backward: nothing beyond the layer input the block already saves — the (N, r)
// intermediate is recomputed in backward (r is small), and the dropout mask is regenerated
// from the context (a counter-based hash of the layer's seed and the element's global index),
// so the memory read off the block is the memory held.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "trainer/model/linear.h"
#include "trainer/peft/lora_options.h"

namespace lmtune {

class LoraLinear final : public Linear {
 public:
  // a_row (r, in) and b_row (out, r) index the unit's rows (f32); base_weight_row is the
  // base layer's weight (out, in), which merge_adapter() adds to (-1: a base that cannot be
  // merged into, such as NF4).
  LoraLinear(std::unique_ptr<Linear> base, int base_weight_row, int a_row, int b_row, float scaling, float dropout);

  int64_t in_features() const override { return base_->in_features(); }
  int64_t out_features() const override { return base_->out_features(); }
  void bind(std::span<const Tensor> params, std::span<const Tensor> grads) override;
  void forward(Tensor& out, const Tensor& inp, const LinearContext& ctx) const override;
  void backward(Tensor* dinp, const Tensor& dout, const Tensor& inp, const LinearContext& ctx,
                ops::GradWrite mode) override;
  // W += scaling * B A (in double), then B = 0. No-op on meta.
  void merge_adapter() override;

  Linear& base() { return *base_; }
  const Tensor& a() const { return a_; }
  const Tensor& b() const { return b_; }
  float scaling() const { return scaling_; }

 private:
  Tensor dropped_input(const Tensor& inp, const LinearContext& ctx) const;  // inp itself when dropout == 0

  std::unique_ptr<Linear> base_;
  int base_weight_row_, a_row_, b_row_;
  Tensor base_weight_, a_, b_, da_, db_;
  float scaling_;
  float dropout_;
};

// Kaiming-uniform(a = sqrt(5)) for A, as PEFT/nn.Linear do: U(-1/sqrt(in), 1/sqrt(in)),
// from a deterministic generator keyed by seed (CPU only; no-op on meta).
void lora_init_a(Tensor& a, uint64_t seed);

}  // namespace lmtune
