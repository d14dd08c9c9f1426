// The single-process training loop (`lmtune train`): data, model (full fine-tuning or
// LoRA), AdamW with warmup + decay and gradient clipping, gradient accumulation,
// evaluation with samples, metrics, checkpoints and exact resume.
//
// Determinism: with the same config (threads included) a run is a pure function of its
// inputs — data order, LoRA initialisation and dropout masks all come from seeds, and the
// kernels' reductions have a fixed order — so a run resumed from checkpoint-N produces the
// same losses and weights, bit for bit, as one that never stopped.
//
// Around the loop: the run directory is locked and prepared by trainer/io/run_dir.h (after
// every check that can fail, so a refused run changes nothing there); a resume is checked
// by resume_check.h; the config is checked against the model by config_checks.h; a stop
// request (stop_signal.h) is served at a step boundary with a checkpoint.
#pragma once

#include <filesystem>
#include <iosfwd>
#include <optional>

#include "trainer/loop/train_config.h"
#include "trainer/model/llama.h"

namespace lmtune {

struct TrainSummary {
  int64_t steps = 0;
  double last_loss = 0.0;
  std::optional<double> validation_loss;  // at the end, when there is validation data
  std::filesystem::path run_dir;
  std::filesystem::path last_checkpoint;
  // Not 0: the run stopped early at `steps` because a stop was requested by this signal
  // (stop_signal.h); last_checkpoint holds that step, or is empty when it stopped before
  // its first step.
  int stop_signal = 0;
};

// What the loop prints: a live progress bar on a terminal, plain lines otherwise.
enum class Progress { auto_detect, bar, lines, quiet };

// Trains on `alloc`'s device (CPU for now); its stats are the run's memory.
TrainSummary train(const TrainConfig& config, Allocator& alloc, Progress progress, std::ostream& log);

// The memory of one optimizer step of `config` (model, gradients, optimizer state, and
// grad_accum_steps micro-batches of (micro_batch_size, seq_len)), predicted by running it
// on the meta device: no data is read, nothing is computed or written.
MemoryStats predict_train_step_memory(const TrainConfig& config);

// The model a config describes (base loaded from model.path; LoRA adapters initialised
// from the seed or lora.init_from), on `alloc`'s device.
std::unique_ptr<LlamaModel> build_model(const TrainConfig& config, Allocator& alloc);

// Loads PEFT-named adapter weights ("base_model.model.<module>.lora_A.weight") into the
// model's adapters; every adapter must be present.
void load_adapter_file(LlamaModel& model, const std::filesystem::path& file);

}  // namespace lmtune
