#include "trainer/peft/lora.h"

#include <cmath>

#include "trainer/core/error.h"
#include "trainer/core/random.h"

namespace lmtune {

double LoraOptions::scaling() const {
  return rslora == RsLora::yes ? alpha / std::sqrt(static_cast<double>(rank)) : alpha / static_cast<double>(rank);
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

LoraLinear::LoraLinear(std::unique_ptr<Linear> base, Tensor a, Tensor b, float scaling, float dropout)
    : base_(std::move(base)), a_(std::move(a)), b_(std::move(b)), scaling_(scaling), dropout_(dropout) {
  LMTUNE_ASSERT(a_.dim() == 2 && b_.dim() == 2 && a_.size(1) == base_->in_features() &&
                    b_.size(0) == base_->out_features() && a_.size(0) == b_.size(1),
                "LoRA shapes A ", shape_str(a_.shape()), " B ", shape_str(b_.shape()));
}

Tensor LoraLinear::dropped_input(const Tensor& inp) const {
  if (dropout_ <= 0.0f) return inp;
  Tensor x = Tensor::empty(inp.allocator(), inp.shape(), DType::f32, MemCategory::activations);
  ops::dropout_forward(x, inp, dropout_, seed_);
  return x;
}

void LoraLinear::forward(Tensor& out, const Tensor& inp) const {
  base_->forward(out, inp);
  const int64_t N = inp.size(0), r = a_.size(0);
  const Tensor x = dropped_input(inp);
  Tensor h = Tensor::empty(inp.allocator(), {N, r}, DType::f32, MemCategory::activations);
  ops::linear_forward(h, x, a_, nullptr);
  ops::linear_forward(out, h, b_, nullptr, ops::GradWrite::accumulate, scaling_);  // out += s * h B^T
}

void LoraLinear::backward(Tensor* dinp, const Tensor& dout, const Tensor& inp, ops::GradWrite mode) {
  using ops::GradWrite;
  base_->backward(dinp, dout, inp, mode);
  const int64_t N = inp.size(0), r = a_.size(0);
  const Tensor x = dropped_input(inp);
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
  if (dropout_ <= 0.0f) {
    ops::linear_backward(dinp, da_.defined() ? &da_ : nullptr, nullptr, dh, x, a_, GradWrite::accumulate);
  } else {
    Tensor dx = Tensor::empty(inp.allocator(), inp.shape(), DType::f32, MemCategory::activations);
    ops::linear_backward(&dx, da_.defined() ? &da_ : nullptr, nullptr, dh, x, a_, GradWrite::assign);
    ops::dropout_backward(*dinp, dx, dropout_, seed_);  // dinp += mask * dx / (1 - p)
  }
}

void LoraLinear::collect_parameters(const std::string& prefix, std::vector<ParamRef>& out) {
  base_->collect_parameters(prefix, out);
  out.push_back({prefix + ".lora_A.weight", a_, da_});
  out.push_back({prefix + ".lora_B.weight", b_, db_});
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
