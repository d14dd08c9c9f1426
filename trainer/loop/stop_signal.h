// Stopping a training run cleanly on a signal: SIGTERM (kill, a scheduler's preemption),
// SIGINT (Ctrl-C) and SIGUSR1 (Slurm's usual warning before the end of a job, with
// `--signal=USR1@<seconds>`) ask the run to stop; the loop polls stop_requested() at step
// boundaries, finishes the step it is in, writes a checkpoint, says so, and the process
// exits with 128 + the signal. A second SIGINT or SIGTERM while the first is being served
// ends the process at once, by that signal's default action.
//
// Design note. The handler only records the first signal (an atomic int) and, on a second
// SIGINT/SIGTERM, restores the default action and re-raises: both async-signal-safe. The
// request is a poll, not a callback, so that under multi-process training the ranks can
// agree on it at a step boundary (one all-reduce of stop_requested(), max over ranks)
// and every rank saves the same step. The handlers are process-wide, so the program (the
// CLI), not the library, installs them, for as long as a StopSignalScope lives.
#pragma once

namespace lmtune {

// Installs the handlers for SIGINT, SIGTERM and SIGUSR1; the destructor restores the ones
// that were there before. One scope at a time.
class StopSignalScope {
 public:
  StopSignalScope();
  ~StopSignalScope();
  StopSignalScope(const StopSignalScope&) = delete;
  StopSignalScope& operator=(const StopSignalScope&) = delete;
};

// 0 while no stop was requested; else the number of the first signal received.
int stop_requested();
// Forgets a request (a new run in the same process starts clean).
void clear_stop_request();
// "SIGTERM", "SIGINT", "SIGUSR1", or "signal N".
const char* signal_name(int signal);

}  // namespace lmtune
