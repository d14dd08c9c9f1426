// Where this process stands among the ranks of a run, read from the launcher — design note.
//
// Sources, the first present wins:
//   1. Open MPI's mpirun (and lmtune launch, which runs it): OMPI_COMM_WORLD_RANK, _SIZE,
//      _LOCAL_RANK, _LOCAL_SIZE. First, because mpirun inside a Slurm allocation leaves
//      the batch step's SLURM_* variables in every rank's environment.
//   2. Slurm's srun: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; ranks on this node from
//      SLURM_TASKS_PER_NODE ("2(x3),1": two tasks on each of three nodes, then one) at
//      index SLURM_NODEID, else SLURM_NTASKS_PER_NODE.
//   3. Any other PMIx launcher: PMIX_RANK. PMIx publishes the job size through its API, not
//      the environment, so the size and the ranks on this node come from MPI, which this
//      case initialises (MPI_Comm_size, MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)).
//   4. None: a single process (rank 0 of 1); MPI is not initialised.
// Checks: a variable that is set must be a non-negative integer; rank < size, local rank <
// local size <= size; PMIX_RANK, when set too, must equal the rank; Slurm's per-node counts
// must add up to SLURM_NTASKS. A violation is an Error naming the variables and values.
#pragma once

#include <optional>
#include <string>

#include "trainer/core/run_context.h"

namespace lmtune {

// For messages: the variables detect_run_context() reads.
inline constexpr const char* kRunContextVariables = "OMPI_COMM_WORLD_*, SLURM_PROCID/NTASKS/LOCALID, PMIX_RANK";

RunContext detect_run_context();

// The global rank the environment names, if any; never initialises MPI, never throws.
std::optional<int> rank_from_environment();

// Tasks on node `node` of a Slurm task list such as "2(x3),1"; throws naming `variable`.
int slurm_tasks_on_node(const std::string& tasks_per_node, int node, const char* variable);
// Total tasks of such a list.
int slurm_total_tasks(const std::string& tasks_per_node, const char* variable);

// Kernel threads for a rank when --threads does not say: 0 (the OpenMP default: every
// core, or OMP_NUM_THREADS) for a single process or when OMP_NUM_THREADS is set, else the
// cores this process may run on divided by the ranks on this node, at least 1 — so ranks
// started by a plain mpirun or srun do not oversubscribe their node.
int default_threads_per_rank(const RunContext& ctx);

// The ranks' half of `lmtune launch`'s signal relay (launch/launcher.h): mpirun will not
// forward SIGTERM, so the launcher sends SIGUSR2, which mpirun forwards; in a process
// started by the launcher (kSignalRelayEnv=1) this makes SIGUSR2 raise SIGTERM. Does
// nothing elsewhere. Call it first thing in main() of anything the launcher runs.
inline constexpr const char* kSignalRelayEnv = "LMTUNE_SIGNAL_RELAY";
void install_launch_signal_relay();

}  // namespace lmtune
