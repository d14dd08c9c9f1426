// What a training rank is given about the other ranks — design note.
//
// The training loop (trainer/) runs one rank's part of any layout, but the things that
// talk to other ranks — communicators, and the ways of holding the training state over a
// data-parallel group (replicated data parallelism, ZeRO 1-3, CPU offload) — are
// implemented in parallel/, above it. launch/ builds them for the layout the config names
// and hands them over in a ParallelEnv: the real communicators for the run, fake ones of
// the same shapes (meta device) for the memory prediction of this rank, and the factory
// that builds the rank's model and TrainingState (called once on the real allocators and
// once on meta ones). Without a factory (a single process started from a test) the loop
// uses the dense LocalState.
#pragma once

#include <functional>
#include <memory>

#include "trainer/core/communicator.h"
#include "trainer/core/run_context.h"
#include "trainer/loop/training_state.h"

namespace lmtune {

struct TrainConfig;
class ModelSource;

// A rank's model and how it holds its training state.
struct RankModel {
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<TrainingState> state;
};

// This rank's groups of the dp x tp x pp layout (parallel/layout.h): the ranks it shares
// each dimension with. All three are set (a group of one rank where the dimension is 1).
struct RankGroups {
  Communicator* dp = nullptr;
  Communicator* tp = nullptr;
  Communicator* pp = nullptr;
};

// Builds this rank's model (weights from `source`) on `device`, with its training state
// over its groups; what the config offloads goes to `host`.
using RankModelFactory = std::function<RankModel(const TrainConfig& config, const ModelSource& source,
                                                 Allocator& device, Allocator& host, const RankGroups& groups)>;

struct ParallelEnv {
  RunContext run;
  Communicator* world = nullptr;  // every rank of the run
  RankGroups groups;              // this rank's groups
  RankGroups meta_groups;         // fake communicators of the same ranks and sizes (meta device)
  RankModelFactory build;         // empty: a single process with LocalState
};

// The environment of a single process: local communicators of one rank.
class SingleProcess {
 public:
  SingleProcess();
  const ParallelEnv& env() const { return env_; }

 private:
  std::unique_ptr<Communicator> world_, meta_;  // every group is one of these two
  ParallelEnv env_;
};

}  // namespace lmtune
