// The step engine — design note.
//
// One optimizer step, in one place, for every layout:
//   1. the TrainingState zeroes the gradients this rank accumulates;
//   2. agree on the step's global count of predicted tokens (an all-reduce over the
//      data-parallel group), so every rank scales its loss by 1 / (global count) and the
//      summed gradients are the gradient of the global mean loss — what one process with
//      the whole global batch computes;
//   3. run the micro-batches (gradient accumulation). Each gets a MicroBatchContext whose
//      seed depends on (train.seed, step, micro-batch index) only and whose row offset is
//      this rank's first row within the global micro-batch, so random draws (LoRA dropout)
//      equal one process's. The TrainingState sees every unit through the model's hooks:
//      it gathers parameters (ZeRO-3) and starts gradient reductions as units finish;
//   4. wait for every reduction, then all-reduce the loss sum: a non-finite loss on any
//      rank is non-finite on every rank, so all ranks stop at the same step;
//   5. the global gradient norm — over this rank's owned pieces, summed over the group
//      when the pieces partition the parameters (ZeRO) — clipping, the AdamW update of the
//      owned pieces, and the TrainingState's after_update (ZeRO 1/2 all-gather).
// The collectives go through the Communicator it is given; on the meta device the same
// engine runs with the fake communicator, so a meta step allocates what a real one does.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "trainer/core/communicator.h"
#include "trainer/data/dataset.h"
#include "trainer/loop/training_state.h"
#include "trainer/model/llama.h"
#include "trainer/optim/optimizer.h"

namespace lmtune {

// The seed of micro-batch `micro` of optimizer step `step`.
uint64_t micro_batch_seed(uint64_t train_seed, int64_t step, int64_t micro);

struct StepOptions {
  uint64_t seed = 0;           // train.seed
  double max_grad_norm = 0.0;  // 0: no clipping
};

struct StepResult {
  double loss = 0.0;       // global mean over the step's predicted tokens
  int64_t targets = 0;     // global count of predicted tokens
  double grad_norm = 0.0;  // global, before clipping (0 when the loss was not finite)
  bool finite() const;
};

class StepEngine {
 public:
  // `dp` is this rank's data-parallel group, `state` how the rank holds its part of the
  // training state over it; `adam` updates state.owned(). All outlive the engine.
  StepEngine(LlamaModel& model, AdamW& adam, Communicator& dp, TrainingState& state, StepOptions options);
  // One optimizer step over this rank's micro-batches (each (B, T), the same B on every
  // rank). A non-finite loss returns before the update, on every rank alike.
  StepResult step(std::span<const Batch> micro, int64_t step, double lr);

 private:
  LlamaModel& model_;
  AdamW& adam_;
  Communicator& dp_;
  TrainingState& state_;
  StepOptions options_;
};

}  // namespace lmtune
