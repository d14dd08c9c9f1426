// Replicated data parallelism (ZeRO stage 0) — design note.
//
// Every data-parallel rank holds the whole model, its gradients and the optimizer state,
// and computes the gradients of its share of the global batch; this makes them the sum
// over ranks, as PyTorch's DDP reducer does:
//   * The gradients live in buckets (LlamaModel::allocate_grads: one flat f32 buffer per
//     run of consecutive units, at most parallel.bucket_mb, in backward order), so a bucket
//     is reduced in place by one all-reduce: no copy, no extra memory.
//   * During the backward of the step's last micro-batch, each unit's after_backward hook
//     counts down its bucket; the bucket's all-reduce is started as soon as its last unit
//     is final, while the backward of the earlier units goes on (parallel.overlap_grad_reduce;
//     when off, every bucket is started in finish_grads()). Earlier micro-batches only
//     accumulate locally (DDP's no_sync).
//   * finish_grads() waits for every bucket, in the order they were started. Every rank
//     runs the same backward, so the buckets are started in the same order everywhere.
//   * Every rank's optimizer updates every parameter alike (owned() is everything, not a
//     partition), so the parameters stay equal without further communication.
// It allocates nothing beyond the dense model (the reductions are in place), so the fake
// communicator of the meta device predicts its memory trivially exactly.
#pragma once

#include <memory>

#include "trainer/core/communicator.h"
#include "trainer/loop/training_state.h"

namespace lmtune {

enum class OverlapGradReduce { off, on };

// The replicated state of `model` (dense parameters) over `dp`: allocates its gradient
// buckets of at most bucket_bytes.
std::unique_ptr<TrainingState> make_replicated_state(LlamaModel& model, Communicator& dp, int64_t bucket_bytes,
                                                     OverlapGradReduce overlap);

}  // namespace lmtune
