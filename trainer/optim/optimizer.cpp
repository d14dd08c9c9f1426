#include "trainer/optim/optimizer.h"

#include <cmath>
#include <numbers>

namespace lmtune {

double learning_rate(const ScheduleOptions& s, int64_t step) {
  if (s.warmup_steps > 0 && step < s.warmup_steps)
    return s.lr * static_cast<double>(step + 1) / static_cast<double>(s.warmup_steps);
  if (s.kind == ScheduleKind::constant) return s.lr;
  const int64_t decay_steps = std::max<int64_t>(1, s.total_steps - s.warmup_steps - 1);
  const double progress = std::min(1.0, static_cast<double>(step - s.warmup_steps) / static_cast<double>(decay_steps));
  const double min_lr = s.lr * s.min_lr_ratio;
  if (s.kind == ScheduleKind::linear) return s.lr + (min_lr - s.lr) * progress;
  return min_lr + 0.5 * (s.lr - min_lr) * (1.0 + std::cos(std::numbers::pi * progress));
}

AdamW::AdamW(std::vector<ParamRef> params, Allocator& alloc, AdamWOptions opts)
    : params_(std::move(params)), opts_(opts) {
  for (const ParamRef& p : params_) {
    LMTUNE_ASSERT(p.grad.defined(), "parameter '", p.name, "' has no gradient");
    m_.push_back(Tensor::zeros(alloc, p.value.shape(), DType::f32, MemCategory::optimizer));
    v_.push_back(Tensor::zeros(alloc, p.value.shape(), DType::f32, MemCategory::optimizer));
  }
}

void AdamW::step(double lr) {
  ++t_;
  ops::AdamWParams hp;
  hp.lr = static_cast<float>(lr);
  hp.beta1 = static_cast<float>(opts_.beta1);
  hp.beta2 = static_cast<float>(opts_.beta2);
  hp.eps = static_cast<float>(opts_.eps);
  hp.weight_decay = static_cast<float>(opts_.weight_decay);
  for (size_t i = 0; i < params_.size(); ++i) ops::adamw_step(params_[i].value, params_[i].grad, m_[i], v_[i], hp, t_);
}

std::vector<ParamRef> AdamW::state() const {
  std::vector<ParamRef> out;
  for (size_t i = 0; i < params_.size(); ++i) {
    const ParamRef& p = params_[i];  // the moments are whole when the parameter is
    out.push_back({p.name + ".exp_avg", m_[i], Tensor(), p.full_shape, p.start});
    out.push_back({p.name + ".exp_avg_sq", v_[i], Tensor(), p.full_shape, p.start});
  }
  return out;
}

double grad_sum_squares(const std::vector<ParamRef>& params) {
  double ss = 0;
  for (const ParamRef& p : params) ss += ops::sum_squares(p.grad);
  return ss;
}

double grad_norm(const std::vector<ParamRef>& params) { return std::sqrt(grad_sum_squares(params)); }

bool clip_grads_to(const std::vector<ParamRef>& params, double norm, double max_norm) {
  if (!(max_norm > 0 && norm > max_norm)) return false;
  const float scale = static_cast<float>(max_norm / (norm + 1e-6));
  for (const ParamRef& p : params) {
    Tensor g = p.grad;
    ops::scale_inplace(g, scale);
  }
  return true;
}

double clip_grad_norm(const std::vector<ParamRef>& params, double max_norm) {
  const double norm = grad_norm(params);
  clip_grads_to(params, norm, max_norm);
  return norm;
}

}  // namespace lmtune
