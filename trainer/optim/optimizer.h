// AdamW over a set of named parameters, learning-rate schedules, and gradient clipping.
// The moments m and v live in category `optimizer`, one pair of tensors per parameter,
// named "<param>.exp_avg" / "<param>.exp_avg_sq" in checkpoints (as torch.optim.AdamW
// names them).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "trainer/model/linear.h"

namespace lmtune {

enum class ScheduleKind { cosine, linear, constant };

struct ScheduleOptions {
  ScheduleKind kind = ScheduleKind::cosine;
  double lr = 3e-4;            // peak learning rate
  double min_lr_ratio = 0.1;   // the decay ends at lr * min_lr_ratio
  int64_t warmup_steps = 0;    // linear warmup from lr / warmup_steps to lr
  int64_t total_steps = 1;
};

// The learning rate for optimizer step `step` (0-based): linear warmup over warmup_steps
// ((step + 1) / warmup_steps * lr), then cosine / linear decay to lr * min_lr_ratio at the
// last step, or constant.
double learning_rate(const ScheduleOptions& s, int64_t step);

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
};

class AdamW {
 public:
  // Every param must have a gradient. m and v start at zero, in `alloc` (the device's
  // allocator, or the host's under CPU offload).
  AdamW(std::vector<ParamRef> params, Allocator& alloc, AdamWOptions opts);
  // One update with learning rate lr (bias correction uses the internal step count).
  void step(double lr);
  int64_t steps_taken() const { return t_; }
  void set_steps_taken(int64_t t) { t_ = t; }
  const std::vector<ParamRef>& params() const { return params_; }
  // The moments of each parameter (or piece) as pieces of the logical tensors
  // "<name>.exp_avg" and "<name>.exp_avg_sq" (the parameter's shape and start).
  std::vector<ParamRef> state() const;

 private:
  std::vector<ParamRef> params_;
  std::vector<Tensor> m_, v_;
  AdamWOptions opts_;
  int64_t t_ = 0;
};

// The sum of squares of the gradients (accumulated in double).
double grad_sum_squares(const std::vector<ParamRef>& params);
// The global L2 norm of the gradients.
double grad_norm(const std::vector<ParamRef>& params);
// Scales the gradients by max_norm / norm when norm > max_norm > 0 (`norm` is the global
// norm, over every rank's pieces). Returns whether it scaled.
bool clip_grads_to(const std::vector<ParamRef>& params, double norm, double max_norm);
// Scales the gradients so their global norm is at most max_norm (no-op when max_norm <= 0
// or the norm is already below it). Returns the norm before clipping.
double clip_grad_norm(const std::vector<ParamRef>& params, double max_norm);

}  // namespace lmtune
