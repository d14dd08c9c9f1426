// Test helpers for watching the processes of a launched job: the children of a process
// (from /proc), whether a process catches a signal, and waiting until every rank of a
// `lmtune launch` job is up.
#pragma once

#include <sys/types.h>

#include <vector>

namespace lmtune::testing {

// The processes whose parent is `parent`.
std::vector<pid_t> children_of(pid_t parent);
// Whether `pid` is a live process (a zombie, dead but not yet reaped, is not).
bool running(pid_t pid);
// Whether `pid` has a handler installed for `sig` (SigCgt in /proc/PID/status).
bool catches(pid_t pid, int sig);
// The ranks of the job `lmtune launch` (pid `launcher`) started through mpirun, once
// mpirun and all `ranks` of them have installed the launcher's SIGUSR2 relay (so that a
// signal sent now tests the path, not startup); empty after `timeout_s`.
std::vector<pid_t> wait_for_ranks(pid_t launcher, int ranks, double timeout_s = 120);

}  // namespace lmtune::testing
