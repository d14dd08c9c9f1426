// The training loop (`lmtune train`), one rank's part of it: data, model (full fine-tuning
// or LoRA), AdamW with warmup + decay and gradient clipping, gradient accumulation,
// evaluation with samples, metrics, checkpoints and exact resume — in one process or in
// each rank of a data-parallel run.
//
// Determinism: with the same config and layout (threads included) a run is a pure function
// of its inputs — data order, LoRA initialisation and dropout masks all come from seeds,
// and the reductions have a fixed order — so a run resumed from checkpoint-N produces the
// same losses and weights, bit for bit, as one that never stopped. Under another layout it
// equals one process within floating-point rounding: rank r of dp takes rows
// [r B, (r+1) B) of each global micro-batch of dp B rows (DataShard), draws the dropout
// masks of those global rows, and the loss is scaled by the global token count.
//
// Ranks: every rank checks that its resolved config equals every other's (one gather)
// before anything else talks; only the writer rank (0) locks, prepares and writes the run
// directory, metrics, samples and memory.json; every rank writes its checkpoint shard;
// evaluation is sharded over the data-parallel ranks and reduced; a stop request on any
// rank stops every rank at the same step boundary (an all-reduce of the request).
//
// Around the loop: the run directory is locked and prepared by trainer/io/run_dir.h (after
// every check that can fail, so a refused run changes nothing there); a resume is checked
// by resume_check.h; the config is checked against the model by config_checks.h; a stop
// request (stop_signal.h) is served at a step boundary with a checkpoint.
#pragma once

#include <filesystem>
#include <iosfwd>
#include <optional>
#include <vector>

#include "trainer/loop/memory_report.h"
#include "trainer/loop/parallel_env.h"
#include "trainer/loop/train_config.h"
#include "trainer/loop/train_setup.h"
#include "trainer/model/llama.h"

namespace lmtune {

struct TrainSummary {
  int64_t steps = 0;
  double last_loss = 0.0;
  std::optional<double> validation_loss;  // at the end, when there is validation data
  std::filesystem::path run_dir;
  std::filesystem::path last_checkpoint;
  // Not 0: the run stopped early at `steps` because a stop was requested by this signal
  // (stop_signal.h; under several ranks, on any of them); last_checkpoint holds that step,
  // or is empty when it stopped before its first step.
  int stop_signal = 0;
  // Every rank's memory, measured and predicted, in rank order (also in RUN_DIR/memory.json).
  std::vector<RankMemory> memory;
};

// What the loop prints: a live progress bar on a terminal, plain lines otherwise.
enum class Progress { auto_detect, bar, lines, quiet };

// Trains this rank's part of the run on `alloc`'s device (CPU for now); its stats are the
// rank's memory. Every rank of env.world calls it with the same config. Only the writer
// rank (rank 0) writes the run directory, the metrics and the samples, and prints.
TrainSummary train(const TrainConfig& config, Allocator& alloc, Progress progress, std::ostream& log,
                   const ParallelEnv& env);
// A single process.
TrainSummary train(const TrainConfig& config, Allocator& alloc, Progress progress, std::ostream& log);

}  // namespace lmtune
