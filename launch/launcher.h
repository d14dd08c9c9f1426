// `lmtune launch`: start the ranks of a multi-process run through Open MPI's mpirun —
// design note.
//
//   lmtune launch --nproc-per-node N [--nnodes M --hostfile F] [--threads T] -- VERB ARGS...
//
// The launcher is a thin front end over mpirun (a supported process manager; we do not
// write our own). It builds one mpirun command line — every Open MPI setting lmtune relies
// on lives in mpirun_settings() in launcher.cpp, which the multi-rank tests and the
// benchmarks also run through (they pass --program) — prints it as one line on stderr,
// runs it and exits with its exit code: the exit code of the first rank that failed (the
// others are then stopped by mpirun), 128 + N for a rank killed by signal N, the code a
// rank passed to MPI_Abort, or 0.
//
// Nodes: with --nnodes M > 1, node rank 0 starts the ranks of every node (mpirun over
// ssh, the nodes listed in the hostfile, N per node; inside a Slurm allocation, without a
// hostfile, mpirun takes the allocation's nodes and starts its daemons with srun). Other node ranks have nothing to
// do: they say so and exit 0, so torchrun-style scripts that run the same command on
// every node still work. --master-addr / --master-port have no meaning here and are
// rejected with that explanation.
//
// Threads: each rank gets OMP_NUM_THREADS = (this node's usable cores / N), at least 1,
// unless --threads or the caller's OMP_NUM_THREADS says otherwise, and
// OMP_WAIT_POLICY=passive unless set (spinning OpenMP threads starve the other ranks and
// the MPI progress threads). Ranks started by a plain mpirun or srun get the same default
// from default_threads_per_rank() (parallel/run_context.h).
//
// Signals. Open MPI 4.1's mpirun forwards SIGUSR1/SIGUSR2 (and SIGTSTP, SIGCONT...) to the
// ranks, but refuses to forward SIGTERM/SIGINT: on those it kills the job itself (SIGTERM
// to the ranks, SIGKILL odls_base_sigkill_timeout seconds later) and exits 1, hiding how
// the ranks ended. So the launcher puts mpirun in a process group of its own (a terminal's
// Ctrl-C reaches only the launcher) and on SIGTERM, SIGINT or SIGHUP sends mpirun SIGUSR2,
// which mpirun forwards; every rank started by the launcher (LMTUNE_SIGNAL_RELAY=1) turns
// SIGUSR2 into a SIGTERM to itself (install_launch_signal_relay() in
// parallel/run_context.h). The ranks thus get a real SIGTERM, may finish their step and
// checkpoint, and their exit code (143) comes back through mpirun. SIGUSR1 is passed on
// as it is. A second SIGTERM/SIGINT hands mpirun a SIGTERM, and mpirun stops the job:
// SIGTERM to the ranks at once, SIGKILL after the grace period.
// --grace-period G (default 3) is mpirun's odls_base_sigkill_timeout. Once a rank has
// failed (a non-zero exit, a signal, MPI_Abort), Open MPI 4.1's mpirun waits G seconds,
// sends SIGTERM to the ranks, waits G more and sends SIGKILL; it sleeps through those
// steps even when the ranks are already gone, so a failed run takes about 2G seconds to
// end, and a rank that died takes every other rank with it within about 2G seconds. G can
// stay short because the graceful path does not depend on it: the relayed SIGTERM reaches
// every rank at once and they finish their step in their own time; G only bounds how long
// the others may still run once the first rank has exited (end a run with a barrier).
#pragma once

#include <string>
#include <vector>

#include "launch/args.h"

namespace lmtune::cli {

extern const char* const kLaunchUsage;
inline constexpr int kDefaultGracePeriod = 3;
const std::vector<OptionSpec>& launch_options();

struct LaunchRequest {
  int nproc_per_node = 1;
  int nnodes = 1;
  int node_rank = 0;
  std::string hostfile;
  int threads = 0;  // per rank; 0: the default above
  int grace_period_s = kDefaultGracePeriod;
  std::string log_dir;               // mpirun --output-filename
  std::string program;               // what each rank runs; this lmtune binary by default
  std::vector<std::string> command;  // VERB ARGS... (the program's arguments)
};

// Reads and checks the options; throws naming the bad one.
LaunchRequest parse_launch_request(const Args& args);

// The mpirun command line for `r` on a node with `node_cores` usable cores.
std::vector<std::string> mpirun_command(const LaunchRequest& r, int node_cores);

// Runs `lmtune launch`; returns the exit code for the launcher's process.
int run_launch(const Args& args);

// A word as a POSIX shell reads it back (quoted when it has to be), and a command line of them.
std::string shell_quote(const std::string& s);
std::string join_quoted(const std::vector<std::string>& argv);

}  // namespace lmtune::cli
