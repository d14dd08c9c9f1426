// The MPI communicator for CPU tensors — design note.
//
// Every operation is a nonblocking MPI call run by the process's progress engine
// (parallel/mpi_engine.h: one thread owns MPI, drives progress, and sleeps when idle), so
// an *_async call returns at once and the transfer proceeds while the caller computes;
// wait() blocks on the operation's future.
//
// Scratch: none. Every operation uses a form that works in the caller's buffers:
// all_reduce is MPI_IN_PLACE; reduce_scatter into chunk r of its own input is the
// MPI_IN_PLACE form (MPI leaves the result in chunk 0, which is then copied to chunk r:
// the rest of `in` is left undefined); all_gather from chunk r of its output is the
// MPI_IN_PLACE form. So nothing is taken from the Allocator (category `comm` stays 0),
// and the fake communicator takes nothing either. The MPI library's own buffers are not
// tracked (they belong to the per-process fixed overhead, as NCCL's do).
//
// Types: f32, i32 for reductions (sum/max/min); also bf16 and f16 (moved as 16-bit
// words) for gather, broadcast, send and recv. Host values: doubles and int64 reduced in
// place; bytes gathered as lengths (MPI_Iallgather) then data (MPI_Iallgatherv).
//
// Failures: communicators use MPI_ERRORS_RETURN, so an MPI error becomes an lmtune::Error
// naming the operation, the communicator and the peer. A watchdog bounds every wait():
// an operation not complete after the timeout (LMTUNE_COMM_TIMEOUT_S, default 300 s)
// throws naming it — the usual sign of a dead or diverged peer. After such an error the
// tensors must stay alive until the run ends (the operation may still be in flight);
// launch/ then ends the whole job through abort_run().
//
// split() runs MPI_Comm_split on the engine thread (it has no nonblocking form; it is
// bounded by the same timeout). Sub-communicators inherit the timeout.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "trainer/core/communicator.h"
#include "trainer/core/run_context.h"

namespace lmtune {

// Seconds a wait() may block before it throws (a positive number; default 300).
inline constexpr const char* kCommTimeoutEnv = "LMTUNE_COMM_TIMEOUT_S";
inline constexpr double kDefaultCommTimeoutSeconds = 300;
std::chrono::milliseconds comm_timeout_from_env();

// The communicator over every rank of the run (initialises MPI on first use). Checks that
// MPI's rank and size agree with `ctx` (what the launcher's environment said).
std::unique_ptr<Communicator> make_mpi_world_communicator(const RunContext& ctx,
                                                          std::chrono::milliseconds timeout = comm_timeout_from_env());

// Ends a multi-rank run from one failing rank, so that its peers do not hang: prints
// "lmtune: rank R: <message>" to stderr, then MPI_Abort(exit_code) when MPI is initialised
// (mpirun / srun then kill every rank and exit with exit_code), else exits with exit_code
// (mpirun then ends the job because a rank exited non-zero).
[[noreturn]] void abort_run(const std::string& message, int exit_code);

}  // namespace lmtune
