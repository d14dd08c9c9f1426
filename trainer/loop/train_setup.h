// From a training config to the pieces a rank trains with: the model (base weights, LoRA
// adapters), the data options, the optimizer and schedule options, the effective thread
// count — and the meta-device prediction of one rank's training step, which builds the
// same pieces on the meta device and runs the same StepEngine with fake communicators.
#pragma once

#include <filesystem>
#include <memory>
#include <vector>

#include "trainer/data/dataset.h"
#include "trainer/loop/parallel_env.h"
#include "trainer/loop/train_config.h"
#include "trainer/model/llama.h"
#include "trainer/optim/optimizer.h"

namespace lmtune {

ModelOptions model_options(const TrainConfig& config);
DataOptions data_options(const TrainConfig& config);
ScheduleKind schedule_kind(LrSchedule s);
AdamWOptions adam_options(const TrainConfig& config);
// parallel.bucket_mb in bytes.
int64_t grad_bucket_bytes(const TrainConfig& config);

// The model a config describes (base loaded from model.path; LoRA adapters initialised
// from the seed or lora.init_from), on `alloc`'s device.
std::unique_ptr<LlamaModel> build_model(const TrainConfig& config, Allocator& alloc);

// Loads PEFT-named adapter weights ("base_model.model.<module>.lora_A.weight") into the
// model's adapters; every adapter must be present.
void load_adapter_file(LlamaModel& model, const std::filesystem::path& file);

// train.threads, or (0) this node's cores divided by the ranks on it, at least 1.
int effective_threads(const TrainConfig& config, const RunContext& run);

// parallel.dp resolved against the number of ranks: "auto" becomes world / (tp * pp); a
// product dp * tp * pp that is not the world size is an error that says both numbers.
TrainConfig resolve_layout(const TrainConfig& config, int world);

// What one rank's run does besides its optimizer steps — where it starts and ends, what it
// evaluates, whether it samples — so that its meta-device replay allocates what it does.
struct RankRunShape {
  int64_t first_step = 0;   // steps already done (a resumed run starts there)
  int64_t total_steps = 1;
  const PackedDataset* validation = nullptr;  // the rows it evaluates (only their shapes matter)
  std::vector<int32_t> sample_prompt;         // empty: this rank logs no samples
};

// The memory of the run of data-parallel rank `meta_dp.rank()` of `meta_dp.size()`: the
// model, gradients and optimizer state, then its steps (grad_accum_steps micro-batches of
// (micro_batch_size, seq_len), the gradient synchronisation), evaluations and samples in
// the run's order — replayed on the meta device with the fake communicator, skipping the
// repeats that leave the allocator as it was (Allocator::state_fingerprint), so the
// replay costs a few steps whatever the run's length. Nothing is read or computed.
MemoryStats predict_rank_memory(const TrainConfig& config, Communicator& meta_dp, const GradSyncFactory& grad_sync,
                                const RankRunShape& run);
// The same for a single process.
MemoryStats predict_rank_memory(const TrainConfig& config, const RankRunShape& run);

}  // namespace lmtune
