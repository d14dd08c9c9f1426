// Training checkpoints — design note.
//
// A checkpoint is a directory RUN_DIR/checkpoint-<step>:
//   shard-RRRRR-of-WWWWW.safetensors   the pieces rank R wrote: flat element ranges of
//                                      logical tensors, key "<name>@<start>" (1-D)
//   index.json                         every logical tensor: shape, dtype, and its pieces
//                                      [{file, key, start, numel}] covering it exactly once
//   trainer_state.json                 step, optimizer step count, data loader position, and
//                                      how long the save took (save_seconds)
//   config.yaml                        the resolved config of the run
// Tensors are named logically — the trainable parameters by their HF names, AdamW's moments
// "<param>.exp_avg" / "<param>.exp_avg_sq" as torch names them — and never by how a layout
// split them, so a checkpoint saved under one layout resumes under any other, and one
// process (`lmtune export`) reads any of them.
//
// Saving (every rank calls save_checkpoint with its own pieces):
//   1. the writer rank creates the staging directory `.checkpoint-<step>.tmp.<host>.<pid>.<n>`
//      and tells the others its name (a broadcast);
//   2. every rank writes its shard file there (through a temporary name carrying host, rank
//      and pid, fsync'ed and renamed), then the piece lists are gathered at the writer;
//   3. the writer checks the pieces tile every tensor, writes index.json,
//      trainer_state.json and config.yaml, and renames the staging directory onto
//      checkpoint-<step> — atomically (AtomicDirectory); an existing checkpoint of that step
//      is swapped out and only then are its files (checkpoint files by name, nothing else)
//      removed. A final barrier: no rank goes on before the checkpoint exists.
// So a checkpoint-N directory that exists is complete, whatever happened to any rank.
// Format version 1 (one process: trainable.safetensors + optimizer.safetensors) is still
// read, as a single piece per tensor.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "trainer/core/communicator.h"
#include "trainer/core/run_context.h"
#include "trainer/core/tensor.h"
#include "trainer/data/dataset.h"
#include "trainer/io/file_util.h"
#include "trainer/model/linear.h"
#include "trainer/model/param_layout.h"

namespace lmtune {

class SafeTensorsReader;

// What identifies the training rows a loader position refers to: their count and a hash
// of their tokens and targets (PackedDataset::content_hash). A resume on other rows
// would continue from a position that means something else.
struct DataFingerprint {
  int64_t rows = 0;
  uint64_t hash = 0;
  bool operator==(const DataFingerprint&) const = default;
};

struct TrainerState {
  int64_t step = 0;          // optimizer steps completed
  int64_t adam_steps = 0;    // AdamW's own step count (bias correction)
  DataLoader::State loader;  // where the training data continues (rows of all ranks together)
  std::optional<DataFingerprint> train_data;  // absent in checkpoints written before it was saved
};

// A rank's pieces are ParamRefs (trainer/model/linear.h): elements [start, start +
// value.numel()) of the logical tensor `name` of shape logical_shape(); value is any float
// dtype (a whole tensor when whole()).

// For tensors every rank of `world` holds whole (replicated state): rank `rank`'s even
// share of their concatenation, so that the ranks together write each element once.
std::vector<ParamRef> even_share(const std::vector<ParamRef>& whole, int rank, int world);

// Writes RUN_DIR/checkpoint-<state.step> from every rank's pieces (see the note). Called by
// every rank of `world`; returns the checkpoint's path.
std::filesystem::path save_checkpoint(const std::filesystem::path& run_dir, const std::vector<ParamRef>& mine,
                                      const TrainerState& state, const std::string& config_yaml,
                                      const RunContext& run, Communicator& world);

class CheckpointReader {
 public:
  static CheckpointReader open(const std::filesystem::path& checkpoint_dir);
  CheckpointReader(CheckpointReader&&) noexcept;
  CheckpointReader& operator=(CheckpointReader&&) noexcept;
  ~CheckpointReader();

  const std::filesystem::path& dir() const { return dir_; }
  const TrainerState& state() const { return state_; }
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const { return tensors_.count(name) > 0; }
  const Shape& shape(const std::string& name) const;
  // Elements [start, start + dst.numel()) of `name`, converted to dst's dtype.
  void read(const std::string& name, int64_t start, Tensor& dst) const;
  // The whole tensor; its shape must equal dst's.
  void read_full(const std::string& name, Tensor& dst) const;

 private:
  struct Piece {
    int file;
    std::string key;
    int64_t start, numel;
  };
  struct Entry {
    Shape shape;
    std::vector<Piece> pieces;  // sorted by start, tiling [0, numel(shape))
  };
  CheckpointReader() = default;

  std::filesystem::path dir_;
  TrainerState state_;
  std::vector<std::unique_ptr<SafeTensorsReader>> files_;
  std::map<std::string, Entry> tensors_;
};

// Fills every piece of `into` (its value) from the checkpoint's tensor of that name, whose
// shape must be the piece's logical shape; `expected` names every logical tensor the run
// holds (over all ranks), and the checkpoint must hold exactly those. Names the checkpoint
// and what is wrong on any mismatch. Returns the state.
TrainerState load_checkpoint(const std::filesystem::path& checkpoint_dir, const std::vector<ParamRef>& into,
                             const std::vector<std::string>& expected);
// The logical tensors a checkpoint of a model of this layout holds: every trainable
// parameter and its AdamW moments ("<name>.exp_avg", "<name>.exp_avg_sq").
std::vector<std::string> checkpoint_tensor_names(const ModelLayout& layout);
// Reads only trainer_state.json (no tensors).
TrainerState read_trainer_state(const std::filesystem::path& checkpoint_dir);
// How long writing the checkpoint took, in seconds, as trainer_state.json records it: the
// writer rank's time from the start of save_checkpoint to the writing of that file (every
// rank's shard written by then). nullopt for checkpoints written before it was recorded.
// `lmtune slurm` sizes the warning before a job's end from it.
std::optional<double> checkpoint_save_seconds(const std::filesystem::path& checkpoint_dir);
// The checkpoint with the highest step in run_dir, if any.
std::optional<std::filesystem::path> latest_checkpoint(const std::filesystem::path& run_dir);
// The names of the files save_checkpoint writes into a checkpoint directory (any format
// version): index.json, trainer_state.json, config.yaml, shard-RRRRR-of-WWWWW.safetensors,
// and format 1's trainable.safetensors / optimizer.safetensors.
bool is_checkpoint_file_name(std::string_view name);
const NameSet& checkpoint_file_names();
// Whether `dir` is named checkpoint-<N> and holds lmtune's checkpoint files (other tools'
// checkpoint-N directories, such as the HF Trainer's, are not lmtune's).
bool is_checkpoint_dir(const std::filesystem::path& dir);

}  // namespace lmtune
