// The parts of a training run besides its optimizer steps — evaluation and samples — and
// when they happen. The training loop and its meta-device replay (train_setup.h,
// predict_rank_memory) both call these, so the replay allocates what the run allocates.
#pragma once

#include <cstdint>
#include <vector>

#include "trainer/core/communicator.h"
#include "trainer/data/dataset.h"
#include "trainer/loop/train_config.h"
#include "trainer/model/llama.h"

namespace lmtune {

// Whether the run evaluates (and samples) after optimizer step `done` of `total`:
// every train.eval_every steps, and after the last.
bool evaluates_after(const TrainConfig& c, int64_t done, int64_t total);

struct EvalResult {
  double loss = 0;  // mean over the evaluated tokens of every rank
  int64_t tokens = 0;
};

// The validation loss over the first `max_batches` global micro-batches (B * dp rows each):
// data-parallel rank r evaluates rows [r B, (r+1) B) of each, and the sums are reduced over
// `dp`, so every layout evaluates the rows one process does.
// `hooks` (a TrainingState) see every unit. With Lockstep::yes every rank runs a forward for
// every global micro-batch, one of ignored targets where it has no rows left (ZeRO-3: the
// gathers of every rank must meet).
enum class Lockstep { no, yes };
EvalResult evaluate(LlamaModel& model, const PackedDataset& val, int64_t B, int64_t max_batches, Communicator& dp,
                    UnitHooks* hooks = nullptr, Lockstep lockstep = Lockstep::no);

// The greedy continuation of `prompt` (ids) that a run logs as its sample: up to
// train.sample_tokens new ids, within the model's context. Returns prompt + new ids.
std::vector<int32_t> sample_ids(LlamaModel& model, const std::vector<int32_t>& prompt, const TrainConfig& c,
                                UnitHooks* hooks = nullptr);

}  // namespace lmtune
