#include "trainer/loop/step_engine.h"

#include <cmath>

namespace lmtune {

uint64_t micro_batch_seed(uint64_t train_seed, int64_t step, int64_t micro) {
  const uint64_t a = train_seed, b = static_cast<uint64_t>(step), c = static_cast<uint64_t>(micro);
  uint64_t z = a * 0x9e3779b97f4a7c15ull ^ (b + 0x632be59bd9b4e019ull) * 0xbf58476d1ce4e5b9ull ^ c;
  z = (z ^ (z >> 31)) * 0x94d049bb133111ebull;
  return z ^ (z >> 29);
}

bool StepResult::finite() const { return std::isfinite(loss); }

StepEngine::StepEngine(LlamaModel& model, AdamW& adam, Communicator& dp, TrainingState& state, StepOptions options)
    : model_(model), adam_(adam), dp_(dp), state_(state), options_(options) {}

StepResult StepEngine::step(std::span<const Batch> micro, int64_t step, double lr) {
  Allocator& alloc = model_.allocator();
  const bool meta = alloc.device().is_meta();
  state_.begin_step();
  StepResult r;
  int64_t counts[1] = {0};
  for (const Batch& b : micro) counts[0] += b.num_targets;
  dp_.all_reduce(std::span<int64_t>(counts), ReduceOp::sum);
  r.targets = counts[0];
  LMTUNE_ASSERT(r.targets > 0, "a step without training targets");
  const float scale = static_cast<float>(1.0 / static_cast<double>(r.targets));

  double loss_sum[1] = {0.0};
  alloc.set_phase("train step");
  for (size_t i = 0; i < micro.size(); ++i) {
    const Batch& b = micro[i];
    // rank r of the group holds rows [r * B, (r + 1) * B) of the global micro-batch
    const MicroBatchContext ctx{micro_batch_seed(options_.seed, step, static_cast<int64_t>(i)),
                                static_cast<int64_t>(dp_.rank()) * b.B * b.T};
    state_.begin_micro_batch(i + 1 == micro.size());
    loss_sum[0] += model_
                       .forward_backward(make_token_tensor(alloc, b.tokens, b.B, b.T),
                                         make_token_tensor(alloc, b.targets, b.B, b.T), scale, ctx, &state_)
                       .sum;
  }
  alloc.set_phase("gradient sync");
  state_.finish_grads();
  dp_.all_reduce(std::span<double>(loss_sum), ReduceOp::sum);
  r.loss = loss_sum[0] / static_cast<double>(r.targets);
  if (!meta && !r.finite()) {
    alloc.set_phase("");
    return r;
  }
  alloc.set_phase("optimizer step");
  double ss[1] = {grad_sum_squares(state_.owned())};
  if (state_.owned_partitioned()) dp_.all_reduce(std::span<double>(ss), ReduceOp::sum);
  r.grad_norm = std::sqrt(ss[0]);
  clip_grads_to(state_.owned(), r.grad_norm, options_.max_grad_norm);
  adam_.step(lr);
  alloc.set_phase("parameter sync");
  state_.after_update();
  alloc.set_phase("");
  return r;
}

}  // namespace lmtune
