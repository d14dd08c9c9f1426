// Data parallelism: the bucketed gradient all-reduce — design note.
//
// Every data-parallel rank holds the whole model and computes the gradients of its share
// of the global batch; this makes them the sum over ranks, as PyTorch's DDP reducer does:
//   * The gradients already live in buckets (LlamaModel::allocate_grads: one flat f32
//     buffer per run of consecutive units, at most parallel.bucket_mb, in backward order),
//     so a bucket is reduced in place by one all-reduce: no copy, no extra memory.
//   * During the backward of the step's last micro-batch, each unit's after_backward hook
//     counts down its bucket; the bucket's all-reduce is started as soon as its last unit
//     is final, while the backward of the earlier units goes on (parallel.overlap_grad_reduce;
//     when off, every bucket is started in finish()). Earlier micro-batches only accumulate
//     locally (DDP's no_sync).
//   * finish() waits for every bucket, in the order they were started. Every rank runs the
//     same backward, so the buckets are started in the same order everywhere.
// It allocates nothing (the reductions are in place), so the fake communicator of the meta
// device predicts its memory trivially exactly.
#pragma once

#include <memory>

#include "trainer/core/communicator.h"
#include "trainer/loop/step_engine.h"
#include "trainer/model/llama.h"

namespace lmtune {

enum class OverlapGradReduce { off, on };

// The gradient synchronisation of `model` (whose gradients are allocated) over `dp`.
std::unique_ptr<GradientSync> make_bucket_all_reduce(LlamaModel& model, Communicator& dp, OverlapGradReduce overlap);

}  // namespace lmtune
