// The step engine — design note.
//
// One optimizer step, in one place, for every layout:
//   1. zero the gradients;
//   2. agree on the step's global count of predicted tokens (an all-reduce over the
//      data-parallel group), so every rank scales its loss by 1 / (global count) and the
//      summed gradients are the gradient of the global mean loss — what one process with
//      the whole global batch computes;
//   3. run the micro-batches (gradient accumulation). Each gets a MicroBatchContext whose
//      seed depends on (train.seed, step, micro-batch index) only and whose row offset is
//      this rank's first row within the global micro-batch, so random draws (LoRA dropout)
//      equal one process's. The GradientSync is told which micro-batch is the last: during
//      its backward it starts reducing a bucket as soon as the bucket's units are final;
//   4. wait for every reduction (finish), then all-reduce the loss sum: a non-finite loss on
//      any rank is non-finite on every rank, so all ranks stop at the same step;
//   5. global-norm clipping (the gradients are identical on every rank after the reduction)
//      and the AdamW update.
// The collectives go through the Communicator it is given; on the meta device the same
// engine runs with the fake communicator, so a meta step allocates what a real one does.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "trainer/core/communicator.h"
#include "trainer/data/dataset.h"
#include "trainer/model/llama.h"
#include "trainer/optim/optimizer.h"

namespace lmtune {

// Makes the gradients of every data-parallel rank their sum over ranks. It sees every unit
// through the model's hooks; implementations live in parallel/ (the bucketed all-reduce).
class GradientSync : public UnitHooks {
 public:
  // Before each micro-batch's forward; `last` is true for the step's last micro-batch,
  // the one whose backward leaves each unit's gradients final.
  virtual void begin_micro_batch(bool last) = 0;
  // Waits for every reduction started during the last micro-batch (and starts any that
  // were held back). Afterwards every rank holds the summed gradients.
  virtual void finish() = 0;
  // Gradient bytes this rank handed to collectives in the last step.
  virtual int64_t bytes_reduced() const = 0;
};

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
  // `dp` is this rank's data-parallel group; `sync` (null for a single rank) reduces the
  // gradients over it. All outlive the engine.
  StepEngine(LlamaModel& model, AdamW& adam, Communicator& dp, GradientSync* sync, StepOptions options);
  // One optimizer step over this rank's micro-batches (each (B, T), the same B on every
  // rank). A non-finite loss returns before the update, on every rank alike.
  StepResult step(std::span<const Batch> micro, int64_t step, double lr);

 private:
  LlamaModel& model_;
  AdamW& adam_;
  Communicator& dp_;
  GradientSync* sync_;
  StepOptions options_;
  std::vector<ParamRef> trainable_;
};

}  // namespace lmtune
