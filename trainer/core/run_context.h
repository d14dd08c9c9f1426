// Where this process stands among the ranks of a run. Filled in by parallel/ from the
// launcher's environment (Open MPI, Slurm, PMIx) — or the defaults of a single process.
#pragma once

#include <string>

namespace lmtune {

struct RunContext {
  int rank = 0;         // global rank, 0 .. world - 1
  int world = 1;        // number of ranks
  int local_rank = 0;   // rank among the ranks on this node
  int local_world = 1;  // ranks on this node
  std::string host;     // this node's host name
  bool writer() const { return rank == 0; }  // the one rank that writes the run directory
};

// The cores this process may run on (its CPU affinity mask: what Slurm, taskset or a
// container leave it), at least 1.
int usable_cores();

}  // namespace lmtune
