// From a training config to the pieces a rank trains with: the model (base weights, LoRA
// adapters), the data options, the optimizer and schedule options, the effective thread
// count — and the meta-device prediction of one rank's training step, which builds the
// same pieces on the meta device and runs the same StepEngine with fake communicators.
#pragma once

#include <filesystem>
#include <memory>

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

// The memory of one optimizer step of `config` on data-parallel rank `meta_dp.rank()` of
// `meta_dp.size()` (model, gradients, optimizer state, grad_accum_steps micro-batches of
// (micro_batch_size, seq_len), the gradient synchronisation), predicted by running it on
// the meta device with the fake communicator: no data is read, nothing is computed.
MemoryStats predict_train_step_memory(const TrainConfig& config, Communicator& meta_dp,
                                      const GradSyncFactory& grad_sync);
// The same for a single process.
MemoryStats predict_train_step_memory(const TrainConfig& config);

}  // namespace lmtune
