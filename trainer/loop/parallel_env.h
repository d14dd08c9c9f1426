// What a training rank is given about the other ranks — design note.
//
// The training loop (trainer/) runs one rank's part of any layout, but the things that
// talk to other ranks — communicators, the data-parallel gradient reduction — are
// implemented in parallel/, above it. launch/ builds them for the layout the config names
// and hands them over in a ParallelEnv: the real ones for the run, fake ones of the same
// shapes (meta device) for the memory prediction of this rank. A single process gets
// local communicators and no gradient synchronisation.
#pragma once

#include <functional>
#include <memory>

#include "trainer/core/communicator.h"
#include "trainer/core/run_context.h"
#include "trainer/loop/step_engine.h"

namespace lmtune {

struct TrainConfig;

// Builds the gradient synchronisation of a model (gradients allocated) over `dp`.
using GradSyncFactory =
    std::function<std::unique_ptr<GradientSync>(LlamaModel& model, Communicator& dp, const TrainConfig& config)>;

struct ParallelEnv {
  RunContext run;
  Communicator* world = nullptr;    // every rank of the run
  Communicator* dp = nullptr;       // this rank's data-parallel group
  Communicator* meta_dp = nullptr;  // a fake communicator of dp's rank and size (meta device)
  GradSyncFactory grad_sync;        // used when dp has more than one rank
};

// The environment of a single process: local communicators of one rank.
class SingleProcess {
 public:
  SingleProcess();
  const ParallelEnv& env() const { return env_; }

 private:
  std::unique_ptr<Communicator> world_, meta_;
  ParallelEnv env_;
};

}  // namespace lmtune
