// From a training config to the pieces a rank trains with: the model (base weights, LoRA
// adapters), the data options, the optimizer and schedule options, the effective thread
// count — and the meta-device prediction of one rank's training step, which builds the
// same pieces on the meta device and runs the same StepEngine with fake communicators.
#pragma once

#include <filesystem>
#include <memory>
#include <set>
#include <vector>

#include "trainer/data/dataset.h"
#include "trainer/loop/parallel_env.h"
#include "trainer/loop/train_config.h"
#include "trainer/io/safetensors.h"
#include "trainer/model/llama.h"
#include "trainer/optim/optimizer.h"

namespace lmtune {

ModelOptions model_options(const TrainConfig& config);
DataOptions data_options(const TrainConfig& config);
ScheduleKind schedule_kind(LrSchedule s);
AdamWOptions adam_options(const TrainConfig& config);
// parallel.bucket_mb in bytes.
int64_t grad_bucket_bytes(const TrainConfig& config);

// Where a training model's weights come from: the base model's safetensors (model.path)
// and the LoRA adapters — A from the seed, or A and B from method.lora.init_from (PEFT
// names, "base_model.model.<module>.lora_A.weight"). A parameter store that binds one unit
// at a time (ZeRO-3) fills them one by one.
class ModelSource {
 public:
  explicit ModelSource(const TrainConfig& config);
  ~ModelSource();
  const LlamaConfig& model_config() const { return cfg_; }
  const ModelOptions& options() const { return opts_; }
  // Before filling: the adapter file has every adapter the model has.
  void check(const LlamaModel& model) const;
  // Fills `unit` of `model` (bound): base rows from model.path, its adapters.
  void fill(LlamaModel& model, int unit) const;
  // After every unit was filled: model.path holds no tensor the model did not use.
  void finish(const LlamaModel& model) const;

 private:
  LlamaConfig cfg_;
  ModelOptions opts_;
  std::unique_ptr<SafeTensorsReader> base_, adapters_;
  std::filesystem::path adapter_file_;
  mutable std::set<std::string> used_;  // model.path's tensors fill() has read
};

// The model, dense (allocated and bound by itself), every unit filled from `source`.
std::unique_ptr<LlamaModel> build_dense_model(const ModelSource& source, Allocator& alloc);
// The single-process model and its LocalState (dense, every unit filled), on `alloc`.
RankModel build_local_model(const TrainConfig& config, const ModelSource& source, Allocator& alloc);
// The model a config describes, dense, on `alloc` (for a single process and the tests).
std::unique_ptr<LlamaModel> build_model(const TrainConfig& config, Allocator& alloc);

// Where AdamW's moments live: the device's allocator, or the host's under parallel.offload.
Allocator& optimizer_allocator(const TrainConfig& config, Allocator& device, Allocator& host);

// train.threads; or (0) OMP_NUM_THREADS when it is set to a number; or the cores this
// process may run on (its affinity mask) divided by the ranks on its node, at least 1.
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
  std::vector<int32_t> sample_prompt;         // empty: the run logs no samples
  bool writer = false;                        // the rank that samples (with every rank where the
                                              // state's forward needs them all)
};

// The memory of the run of the rank whose groups `meta` stands for (fake communicators): the
// model, its training state (built by `build`, or LocalState when empty) and the optimizer,
// then its steps (grad_accum_steps micro-batches of (micro_batch_size, seq_len)),
// evaluations and samples in the run's order — replayed on the meta device with the fake
// communicator, skipping the repeats that leave the allocators as they were
// (Allocator::state_fingerprint), so the replay costs a few steps whatever the run's
// length. Nothing is read or computed. `device` and `host` are the two allocators' stats.
struct RankMemoryPrediction {
  MemoryStats device, host;
};
RankMemoryPrediction predict_rank_memory(const TrainConfig& config, const RankGroups& meta,
                                         const RankModelFactory& build, const RankRunShape& run);
// The same for a single process.
RankMemoryPrediction predict_rank_memory(const TrainConfig& config, const RankRunShape& run);

}  // namespace lmtune
