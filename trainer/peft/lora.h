// LoRA: y = base(x) + scaling * (dropout(x) A^T) B^T with A (r, in) Kaiming-uniform and
// B (out, r) zero at initialisation; scaling = alpha / r (alpha / sqrt(r) for rsLoRA).
// The base layer is frozen (its own dtype, category `weights`); A and B are f32 views
// into the block's adapter buffer (category `trainable`).
//
// Saved for backward: nothing beyond the layer input the block already saves — the (N, r)
// intermediate is recomputed in backward (r is small), and the dropout mask is regenerated
// from its seed (a counter-based hash of seed, call and element), so the memory read off the
// block is the memory held.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "trainer/model/linear.h"

namespace lmtune {

enum class RsLora { no, yes };

struct LoraOptions {
  int64_t rank = 8;
  double alpha = 16.0;
  double dropout = 0.0;
  RsLora rslora = RsLora::no;
  // Any of q, k, v, o, gate, up, down.
  std::vector<std::string> targets = {"q", "v"};
  double scaling() const;
};

// The short names and their HF module paths inside a block.
const std::vector<std::string>& lora_target_names();   // q, k, v, o, gate, up, down
std::string lora_module_path(const std::string& target);  // "self_attn.q_proj", "mlp.up_proj", ...

class LoraLinear final : public Linear {
 public:
  // a (r, in) and b (out, r) are views the owner provides (f32).
  LoraLinear(std::unique_ptr<Linear> base, Tensor a, Tensor b, float scaling, float dropout);
  void set_grads(Tensor da, Tensor db) { da_ = std::move(da); db_ = std::move(db); }
  // The dropout mask depends on (seed, the step counter the trainer sets).
  void set_dropout_seed(uint64_t seed) { seed_ = seed; }

  int64_t in_features() const override { return base_->in_features(); }
  int64_t out_features() const override { return base_->out_features(); }
  void forward(Tensor& out, const Tensor& inp) const override;
  void backward(Tensor* dinp, const Tensor& dout, const Tensor& inp, ops::GradWrite mode) override;
  // Base parameters as prefix.weight; adapters as prefix.lora_A.weight / prefix.lora_B.weight.
  void collect_parameters(const std::string& prefix, std::vector<ParamRef>& out) override;

  Linear& base() { return *base_; }
  const Tensor& a() const { return a_; }
  const Tensor& b() const { return b_; }
  float scaling() const { return scaling_; }

 private:
  Tensor dropped_input(const Tensor& inp) const;  // inp itself when dropout == 0

  std::unique_ptr<Linear> base_;
  Tensor a_, b_, da_, db_;
  float scaling_;
  float dropout_;
  uint64_t seed_ = 0;
};

// Kaiming-uniform(a = sqrt(5)) for A, as PEFT/nn.Linear do: U(-1/sqrt(in), 1/sqrt(in)),
// from a deterministic generator keyed by seed (CPU only; no-op on meta).
void lora_init_a(Tensor& a, uint64_t seed);

}  // namespace lmtune
