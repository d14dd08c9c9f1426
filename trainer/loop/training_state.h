// How one rank holds its part of the training state — design note.
//
// The step engine and the training loop drive every layout through this interface. An
// implementation owns where the rank's parameters, gradients and optimizer inputs live and
// what it says to the other ranks of its data-parallel group to keep them consistent:
//   * LocalState (below): one process, everything dense — the model's own gradient
//     buckets, the optimizer over every trainable parameter;
//   * replicated data parallelism (ZeRO 0, parallel/data_parallel.h): every rank holds
//     everything, gradient buckets are all-reduced during the last micro-batch's backward;
//   * ZeRO 1, 2, 3 (parallel/zero.h): the optimizer's pieces, then the gradients, then the
//     parameters themselves are split over the ranks.
// It sees every unit of the model through UnitHooks — the forward and backward of training,
// and the forward of evaluation and generation (where ZeRO-3 gathers parameters too).
//
// What the loop asks of it:
//   * owned(): the pieces of trainable parameters this rank's optimizer updates, with their
//     gradients — whole tensors, or flat pieces of them (ParamRef::start). Under ZeRO the
//     ranks' owned() partition the trainable parameters (owned_partitioned()), so a
//     gradient norm is a sum over the ranks.
//   * held_params(): the trainable parameters this rank keeps between steps (whole, or its
//     shards under ZeRO-3; params_partitioned()); checkpoints save and load these.
//   * after_update(): make every rank's parameters current again (ZeRO 1/2 all-gather).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "trainer/model/llama.h"

namespace lmtune {

class TrainingState : public UnitHooks {
 public:
  // Before a step's first micro-batch: every gradient this rank accumulates is zero.
  virtual void begin_step() = 0;
  // Before each micro-batch's forward; `last` for the step's last one.
  virtual void begin_micro_batch(bool last) = 0;
  // After the last micro-batch: waits for every reduction; owned()'s gradients are then
  // the sums over the data-parallel group.
  virtual void finish_grads() = 0;
  virtual const std::vector<ParamRef>& owned() const = 0;
  virtual bool owned_partitioned() const = 0;
  // After the optimizer has updated owned().
  virtual void after_update() = 0;
  virtual std::vector<ParamRef> held_params() const = 0;
  virtual bool params_partitioned() const = 0;
  // After held_params() (and the optimizer state) were filled from a checkpoint.
  virtual void after_load() = 0;
  // Whether a forward (evaluation, a sample) needs every rank of the group taking part
  // (ZeRO-3 gathers): then every rank samples, and only the writer logs it.
  virtual bool forward_needs_every_rank() const = 0;
  // Bytes this rank handed to collectives in the last step, by kind.
  virtual int64_t bytes_reduced() const = 0;   // all-reduce and reduce-scatter inputs
  virtual int64_t bytes_gathered() const = 0;  // all-gather outputs
};

// One process, no parallelism: the model's dense parameters and gradient buckets.
class LocalState final : public TrainingState {
 public:
  LocalState(LlamaModel& model, int64_t bucket_bytes);
  void begin_step() override;
  void begin_micro_batch(bool) override {}
  void finish_grads() override {}
  const std::vector<ParamRef>& owned() const override { return trainable_; }
  bool owned_partitioned() const override { return false; }
  void after_update() override {}
  std::vector<ParamRef> held_params() const override { return trainable_; }
  bool params_partitioned() const override { return false; }
  void after_load() override {}
  bool forward_needs_every_rank() const override { return false; }
  int64_t bytes_reduced() const override { return 0; }
  int64_t bytes_gathered() const override { return 0; }

 private:
  LlamaModel& model_;
  std::vector<ParamRef> trainable_;
};

}  // namespace lmtune
