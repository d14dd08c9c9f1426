// ZeRO stages 1-3 and CPU offload — design note.
//
// The ranks of a data-parallel group split the training state instead of each holding it
// all (Rajbhandari et al., "ZeRO", 2020; DeepSpeed; PyTorch FSDP). Every split is a flat
// buffer of parameter groups padded to a multiple of dp (shard_layout.h); rank r owns
// chunk r of each, and AdamW updates only the owned chunks (their moments exist on that
// rank only), so the ranks' owned pieces partition the trainable parameters and the
// gradient norm is summed over them.
//
// Stages 1 and 2 (ZeroBucketState, zero_buckets.cpp). The trainable parameters live in one
// flat f32 buffer per gradient bucket (grad_bucket_units: consecutive units in backward
// order, parallel.bucket_mb), laid out as the bucket's gradients are, so every collective
// is in place; frozen groups stay dense per unit. Gradients:
//   * stage 1 — a persistent full-size gradient bucket accumulates every micro-batch
//     locally; during the last micro-batch's backward each bucket is reduce-scattered in
//     place as soon as its units are done (overlapped, like DDP's all-reduce), leaving the
//     summed chunk r on rank r;
//   * stage 2 — only the chunk persists; each micro-batch's backward writes into a
//     full-size bucket allocated at its first unit, reduce-scattered when its last unit is
//     done and freed once the chunk has been added to this rank's accumulator (at most two
//     buckets in flight: a bucket's reduction is waited for when the next one starts).
// After the optimizer, each bucket's parameters are all-gathered in place from the chunks.
// Per step and rank: stage 1 sends what an all-reduce sends (a reduce-scatter, then an
// all-gather of the parameters); stage 2 reduce-scatters once per micro-batch.
//
// Stage 3 (Zero3State, zero3.cpp). Every group of every unit (embedding, each block, head;
// frozen base weights included, so a LoRA run's base memory falls with dp too) is a flat
// shard of its own. A unit's groups are gathered into full buffers just before its forward
// and again before its backward — the next `parallel.prefetch` units' gathers are started
// then, so they fly while this unit computes — and freed right after; its gradients go to
// a full buffer bound at its first use in the backward (the head's, for the tied
// embedding), reduce-scattered in place after the unit's own backward, and added to the
// rank's f32 gradient shard once the next unit's backward is done. Evaluation and sampling
// gather the same way, so every rank takes part in them. The model is built unit by unit
// (a full unit at a time: load, then keep the chunk), never whole.
//
// CPU offload (parallel.offload). `optimizer`: AdamW's moments in the host allocator, the
// update computed there (the trainer picks the allocator: optimizer_allocator). `params`
// (stage 3): the parameter and gradient shards also live in the host allocator; each
// gather first copies the rank's shard into its chunk of the device's full buffer, then
// all-gathers in place, and each reduced gradient chunk is added into the host shard. On
// this CPU-only release host and device are the same memory, but their allocators (and
// peaks) are separate, as they would be on a GPU.
//
// Memory categories: what persists — the shards, the chunks, stage 1's full gradient
// buckets — is weights / trainable / grads / optimizer, the "model states" ZeRO divides by
// dp; what lives only around a collective — stage 3's gathered units and the full-size
// gradient buffers of stages 2 and 3 while they are written and reduce-scattered — is
// `comm`, so a report shows both the divided state and the transient price of dividing it.
//
// Everything goes through the allocators and the communicator at fixed points of the
// step, so the meta device with the fake communicator performs the same allocations, and
// predicts each rank's device and host peaks to the byte.
#pragma once

#include <memory>

#include "parallel/data_parallel.h"
#include "trainer/loop/training_state.h"

namespace lmtune {

class ModelSource;

struct ZeroOptions {
  int stage = 1;              // 1, 2 or 3
  int64_t bucket_bytes = 0;   // stages 1 and 2
  OverlapGradReduce overlap = OverlapGradReduce::on;
  int prefetch = 1;           // stage 3: units gathered ahead
  bool offload_params = false;  // stage 3: shards in `host`
};

// Stage 1 or 2 over the external-storage `model`: allocates and binds its parameters and
// fills them from `source`.
std::unique_ptr<TrainingState> make_zero_bucket_state(LlamaModel& model, const ModelSource& source, Communicator& dp,
                                                      const ZeroOptions& options);
// Stage 3 likewise; `host` holds the shards under offload_params.
std::unique_ptr<TrainingState> make_zero3_state(LlamaModel& model, const ModelSource& source, Communicator& dp,
                                                Allocator& host, const ZeroOptions& options);

// Stage 3's record of what happened when, for tests of its overlap: "gather issued U",
// "gather waited U", "compute U", "computed U", in order (enabled per state).
class Zero3Trace {
 public:
  virtual ~Zero3Trace() = default;
  virtual void record(const std::string& event) = 0;
};
void set_zero3_trace(TrainingState& state, Zero3Trace* trace);

}  // namespace lmtune
