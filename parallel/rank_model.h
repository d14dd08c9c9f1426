// The model and training state of one rank, as the config's parallel section asks: the
// RankModelFactory launch/ hands to the training loop (trainer/loop/parallel_env.h).
//   zero 0  dense model, replicated state (data_parallel.h)
//   zero 1  parameters in flat buckets, optimizer state in chunks (zero.h)
//   zero 2  and the gradients in chunks
//   zero 3  and the parameters: every unit's groups sharded, gathered around their use
// parallel.offload: optimizer -> AdamW's moments on the host allocator (any stage);
// params (zero 3) -> the shards too.
#pragma once

#include "trainer/loop/parallel_env.h"
#include "trainer/loop/train_config.h"
#include "trainer/loop/train_setup.h"

namespace lmtune {

RankModel build_rank_model(const TrainConfig& config, const ModelSource& source, Allocator& device, Allocator& host,
                           const RankGroups& groups);

}  // namespace lmtune
