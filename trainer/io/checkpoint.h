// Training checkpoints. A checkpoint is a directory RUN_DIR/checkpoint-<step> holding
//   trainable.safetensors   the parameters that train (logical, unsharded names)
//   optimizer.safetensors   AdamW moments, "<param>.exp_avg" / "<param>.exp_avg_sq"
//   trainer_state.json      step, optimizer step count, data loader position, format version,
//                           and the training data's fingerprint
//   config.yaml             the resolved config of the run
// It is written into a temporary sibling directory and renamed into place (AtomicDirectory),
// so a checkpoint directory that exists is complete; rewriting an existing checkpoint-N
// replaces only these four files.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "trainer/core/tensor.h"
#include "trainer/data/dataset.h"

namespace lmtune {

// What identifies the training rows a loader position refers to: their count and a hash
// of their tokens and targets (data_fingerprint in dataset.h). A resume on other rows
// would continue from a position that means something else.
struct DataFingerprint {
  int64_t rows = 0;
  uint64_t hash = 0;
  bool operator==(const DataFingerprint&) const = default;
};

struct TrainerState {
  int64_t step = 0;          // optimizer steps completed
  int64_t adam_steps = 0;    // AdamW's own step count (bias correction)
  DataLoader::State loader;  // where the training data continues
  std::optional<DataFingerprint> train_data;  // absent in checkpoints written before it was saved
};

struct CheckpointContents {
  std::vector<std::pair<std::string, Tensor>> trainable;
  std::vector<std::pair<std::string, Tensor>> optimizer;
  TrainerState state;
  std::string config_yaml;
};

// Writes RUN_DIR/checkpoint-<state.step> atomically; returns its path.
std::filesystem::path save_checkpoint(const std::filesystem::path& run_dir, const CheckpointContents& c);
// Fills the given tensors (matched by name; every one must be present with its shape) and
// returns the state. Names the checkpoint and what is wrong on any mismatch.
TrainerState load_checkpoint(const std::filesystem::path& checkpoint_dir,
                             std::vector<std::pair<std::string, Tensor>>& trainable,
                             std::vector<std::pair<std::string, Tensor>>& optimizer);
// Reads only trainer_state.json (no tensors).
TrainerState read_trainer_state(const std::filesystem::path& checkpoint_dir);
// The checkpoint with the highest step in run_dir, if any.
std::optional<std::filesystem::path> latest_checkpoint(const std::filesystem::path& run_dir);
// The files of a checkpoint directory (everything save_checkpoint writes there).
const std::vector<std::string>& checkpoint_file_names();
// Whether `dir` is named checkpoint-<N> and holds lmtune's checkpoint files (other tools'
// checkpoint-N directories, such as the HF Trainer's, are not lmtune's).
bool is_checkpoint_dir(const std::filesystem::path& dir);

}  // namespace lmtune
