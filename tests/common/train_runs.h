// Test helpers for training runs as a user starts them — `lmtune train` in one process or
// `lmtune launch --nproc-per-node N -- train` under real mpirun — on a tiny model whose
// sizes divide by no rank count, and what such a run leaves: its losses, its checkpoint's
// tensors, every rank's memory (memory.json), compared with one process.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/test_models.h"

namespace lmtune::testing {

using Tensors = std::map<std::string, std::vector<float>>;

// 'path', quoted for the shell.
std::string quoted(const std::filesystem::path& p);

struct TrainRun {
  std::filesystem::path dir;
  RunResult result;
  std::vector<double> losses;  // by step, from metrics.jsonl
  nlohmann::json memory;       // memory.json
};

std::vector<double> read_losses(const std::filesystem::path& run_dir);
// The trainable parameters of a checkpoint (AdamW's moments left out).
Tensors checkpoint_parameters(const std::filesystem::path& checkpoint);
// max |a - b| / max |b| over every tensor (both must hold the same tensors).
double weight_error(const Tensors& a, const Tensors& b);
// Every step's loss within 1e-5 (relative) of `want`'s.
void expect_losses_near(const std::vector<double>& got, const std::vector<double>& want, const std::string& what);
// Every rank's row of memory.json: the measured device peaks — and the host's — equal to
// the meta prediction, category by category.
void expect_memory_predicted_exactly(const TrainRun& r, int ranks);

// A training setup in `root`: a random model (width 30, MLP 46, 3 layers, 3 heads of 10,
// 1 KV head, vocabulary 32000 with stories15M's tokenizer; tied or untied embeddings), two
// Moby-Dick chapters to train on, one to validate, and cfg.yaml: LoRA r4 with dropout 0.1,
// seq_len 32, 6 steps of a global micro-batch of 12 rows and gradient accumulation 2,
// evaluation every 3 steps, samples, checkpoints every 3 steps, 1 thread.
class TinyTraining {
 public:
  TinyTraining(const std::filesystem::path& root, bool tied);
  // `lmtune train` on `ranks` ranks (1: a plain process), the global micro-batch of 12 rows
  // split over them, with more overrides.
  TrainRun train(const std::string& name, int ranks, const std::string& overrides = "") const;
  std::filesystem::path config() const { return root_ / "cfg.yaml"; }
  const std::filesystem::path& root() const { return root_; }

 private:
  std::filesystem::path root_;
};

}  // namespace lmtune::testing
