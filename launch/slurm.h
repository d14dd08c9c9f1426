// `lmtune slurm`: a Slurm batch script that runs `lmtune train` — design note.
//
//   lmtune slurm CONFIG.yaml [key=value ...] --nodes N --gpus-per-node G --time HH:MM:SS
//       [--tasks-per-node T] [--cpus-per-task C] [--partition P] [--account A]
//       [--plan PLAN.yaml] [--launcher srun|mpirun] [--job-name NAME] [--log-dir DIR]
//       [--grace S] [--out FILE] [--submit]
//
// The script is what a Slurm user would write by hand, with a comment on every part:
// #SBATCH lines (job name, nodes, tasks per node, CPUs per task, time, partition, account,
// the working directory, one log per job id appended across requeues, --requeue and
// --signal=B:USR1@<grace>), the threads per rank, a trap for SIGUSR1 that passes it to the
// ranks and requeues the job once they have saved (exit 128 + SIGUSR1), a trap for SIGTERM,
// and the step: `srun --mpi=pmix lmtune train CONFIG [--plan P] [overrides]
// train.resume_from=auto`, or `lmtune launch` (Open MPI's mpirun inside the allocation)
// with --launcher mpirun.
//
// Ranks. One task per rank, T = --tasks-per-node, else G. This release trains on the CPU,
// so a config never asks for GPUs: the G ranks per node are CPU tasks and no GPU is
// requested (the same command works on a CPU partition). Every path in the script is
// absolute, and the job runs in the directory `lmtune slurm` ran in, so the config's
// relative paths mean the same there.
//
// Warning time. --signal=B:USR1@<grace>: grace = --grace S, else 2 x (the last step's time
// + the last checkpoint's save time) + 60 s, measured in the run directory (output.dir's
// metrics.jsonl and its latest checkpoint's trainer_state.json), else 300 s when there is
// no checkpoint to measure yet. The script's comment says which.
//
// Checks before anything is written: the config loads with the plan and the overrides,
// its parallel layout fits N x T ranks, --time leaves room for the warning, names are plain
// words. --out replaces only a script lmtune slurm wrote. --submit writes the script (to
// --out, else LOG_DIR/NAME.sbatch), runs `sbatch --parsable` and prints the job id.
#pragma once

#include <vector>

#include "launch/args.h"

namespace lmtune::cli {

extern const char* const kSlurmUsage;
const std::vector<OptionSpec>& slurm_options();

// Runs `lmtune slurm`; returns the exit code.
int run_slurm(const Args& args);

}  // namespace lmtune::cli
