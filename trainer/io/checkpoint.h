// Training checkpoints. A checkpoint is a directory RUN_DIR/checkpoint-<step> holding
//   trainable.safetensors   the parameters that train (logical, unsharded names)
//   optimizer.safetensors   AdamW moments, "<param>.exp_avg" / "<param>.exp_avg_sq"
//   trainer_state.json      step, optimizer step count, data loader position, format version
//   config.yaml             the resolved config of the run
// It is written into a temporary sibling directory and renamed into place, so a
// checkpoint directory that exists is complete.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "trainer/core/tensor.h"
#include "trainer/data/dataset.h"

namespace lmtune {

struct TrainerState {
  int64_t step = 0;          // optimizer steps completed
  int64_t adam_steps = 0;    // AdamW's own step count (bias correction)
  DataLoader::State loader;  // where the training data continues
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
// The checkpoint with the highest step in run_dir, if any.
std::optional<std::filesystem::path> latest_checkpoint(const std::filesystem::path& run_dir);

}  // namespace lmtune
