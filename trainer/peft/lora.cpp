#include "trainer/peft/lora.h"

#include <algorithm>
#include <cmath>

#include "trainer/core/error.h"
#include "trainer/core/random.h"

namespace lmtune {

double LoraOptions::scaling() const {
  return rslora == RsLora::yes ? alpha / std::sqrt(static_cast<double>(rank)) : alpha / static_cast<double>(rank);
}

bool LoraOptions::targets_projection(const std::string& short_name) const {
  return std::find(targets.begin(), targets.end(), short_name) != targets.end();
}

const std::vector<std::string>& lora_target_names() {
  static const std::vector<std::string> names = {"q", "k", "v", "o", "gate", "up", "down"};
  return names;
}

std::string lora_module_path(const std::string& target) {
  if (target == "q") return "self_attn.q_proj";
  if (target == "k") return "self_attn.k_proj";
  if (target == "v") return "self_attn.v_proj";
  if (target == "o") return "self_attn.o_proj";
  if (target == "gate") return "mlp.gate_proj";
  if (target == "up") return "mlp.up_proj";
  if (target == "down") return "mlp.down_proj";
  LMTUNE_THROW("unknown LoRA target module '", target, "' (expected q, k, v, o, gate, up, down or all-linear)");
}

LoraLinear::LoraLinear(std::unique_ptr<Linear> base, int base_weight_row, int a_row, int b_row, float scaling,
                       float dropout)
    : base_(std::move(base)),
      base_weight_row_(base_weight_row),
      a_row_(a_row),
      b_row_(b_row),
      scaling_(scaling),
      dropout_(dropout) {}

void LoraLinear::bind(std::span<const Tensor> params, std::span<const Tensor> grads) {
  base_->bind(params, grads);
  base_weight_ = base_weight_row_ >= 0 ? params[base_weight_row_] : Tensor();
  a_ = params[a_row_];
  b_ = params[b_row_];
  da_ = grads.empty() ? Tensor() : grads[a_row_];
  db_ = grads.empty() ? Tensor() : grads[b_row_];
  if (a_.defined())
    LMTUNE_ASSERT(a_.dim() == 2 && b_.dim() == 2 && a_.size(1) == base_->in_features() &&
                      b_.size(0) == base_->out_features() && a_.size(0) == b_.size(1),
                  "LoRA shapes A ", shape_str(a_.shape()), " B ", shape_str(b_.shape()));
}

Tensor LoraLinear::dropped_input(const Tensor& inp, const LinearContext& ctx) const {
  if (dropout_ <= 0.0f || ctx.phase == Phase::eval) return inp;
  Tensor x = Tensor::empty(inp.allocator(), inp.shape(), DType::f32, MemCategory::activations);
  ops::dropout_forward(x, inp, dropout_, ctx.seed, ctx.row_offset * inp.size(-1));
  return x;
}

void LoraLinear::forward(Tensor& out, const Tensor& inp, const LinearContext& ctx) const {
  base_->forward(out, inp, ctx);
  const int64_t N = inp.size(0), r = a_.size(0);
  const Tensor x = dropped_input(inp, ctx);
  Tensor h = Tensor::empty(inp.allocator(), {N, r}, DType::f32, MemCategory::activations);
  ops::linear_forward(h, x, a_, nullptr);
  ops::linear_forward(out, h, b_, nullptr, ops::GradWrite::accumulate, scaling_);  // out += s * h B^T
}

void LoraLinear::backward(Tensor* dinp, const Tensor& dout, const Tensor& inp, const LinearContext& ctx,
                          ops::GradWrite mode) {
  using ops::GradWrite;
  base_->backward(dinp, dout, inp, ctx, mode);
  const int64_t N = inp.size(0), r = a_.size(0);
  const Tensor x = dropped_input(inp, ctx);
  // recompute h = x A^T, scaled: hs = s * h
  Tensor hs = Tensor::empty(inp.allocator(), {N, r}, DType::f32, MemCategory::activations);
  ops::linear_forward(hs, x, a_, nullptr, GradWrite::assign, 1.0f);
  ops::scale_inplace(hs, scaling_);
  // dB += dout^T hs;  dhs = dout B (d loss / d hs);  dh = s * dhs
  Tensor dh = Tensor::empty(inp.allocator(), {N, r}, DType::f32, MemCategory::activations);
  ops::linear_backward(&dh, db_.defined() ? &db_ : nullptr, nullptr, dout, hs, b_, GradWrite::assign);
  hs = Tensor();
  ops::scale_inplace(dh, scaling_);
  // dA += dh^T x;  dx (+)= dh A  (through the dropout mask)
  if (dinp == nullptr) {
    ops::linear_backward(nullptr, da_.defined() ? &da_ : nullptr, nullptr, dh, x, a_, GradWrite::assign);
    return;
  }
  // base_->backward already wrote (or added to) dinp, so the adapter path always adds
  if (dropout_ <= 0.0f || ctx.phase == Phase::eval) {
    ops::linear_backward(dinp, da_.defined() ? &da_ : nullptr, nullptr, dh, x, a_, GradWrite::accumulate);
  } else {
    Tensor dx = Tensor::empty(inp.allocator(), inp.shape(), DType::f32, MemCategory::activations);
    ops::linear_backward(&dx, da_.defined() ? &da_ : nullptr, nullptr, dh, x, a_, GradWrite::assign);
    // dinp += mask * dx / (1 - p)
    ops::dropout_backward(*dinp, dx, dropout_, ctx.seed, ctx.row_offset * inp.size(-1), GradWrite::accumulate);
  }
}

void LoraLinear::merge_adapter() {
  LMTUNE_CHECK(base_weight_.defined(), "a LoRA adapter cannot be merged into an NF4 base weight (an export of a "
               "QLoRA run merges into the dequantized weights)");
  if (base_weight_.is_meta()) return;
  ops::lora_merge(base_weight_, a_, b_, scaling_);
  b_.zero_();
}

void lora_init_a(Tensor& a, uint64_t seed) {
  if (a.is_meta()) return;
  const double bound = 1.0 / std::sqrt(static_cast<double>(a.size(1)));
  float* p = a.data<float>();
  uint64_t s = seed;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double u = splitmix64_unit(s);
    p[i] = static_cast<float>((2.0 * u - 1.0) * bound);
  }
}

}  // namespace lmtune
