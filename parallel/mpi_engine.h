// The MPI progress engine — design note.
//
// One thread per process owns MPI. It calls MPI_Init_thread (requesting MPI_THREAD_FUNNELED:
// it is the "main" thread in MPI's sense, and the only thread that ever calls MPI), runs
// every MPI call of the process, and calls MPI_Finalize at shutdown. Other threads never
// touch MPI; they post work to it:
//   * operations: a nonblocking MPI call (MPI_Iallreduce, MPI_Ireduce_scatter_block,
//     MPI_Iallgather(v), MPI_Ibcast, MPI_Isend/MPI_Irecv, MPI_Ibarrier). post() queues it;
//     the thread starts it, then drives progress with MPI_Test and fulfils the operation's
//     future when it completes (or fails). Operations of one communicator are reported
//     complete in the order they were posted (the Communicator contract), although MPI
//     may finish them in any order.
//   * tasks: a blocking call that has no nonblocking form (MPI_Comm_dup, MPI_Comm_split,
//     queries). call() runs it on the thread, in queue order with the operations.
// Why one thread: Open MPI progresses nonblocking collectives only inside MPI calls. A
// dedicated thread makes communication overlap computation (a gradient all-reduce started
// during backward moves while the kernels run) without MPI_THREAD_MULTIPLE, whose locking
// slows every call and whose support varies between builds.
//
// CPU policy (ranks are often oversubscribed: 2–4 ranks on 2 cores): idle, the thread
// blocks on a condition variable; a post wakes it at once. With operations in flight it
// polls MPI_Test. A large transfer needs a poll for every few fragments, but MPI_Test says
// nothing until the whole operation is done, so the thread polls busily for a window after
// the last event (a start or a completion): 2 ms plus the time the bytes in flight take
// at 1 GB/s. Inside the window it yields between polls while a caller is blocked in wait()
// (that caller's core is free) and sleeps 20 µs between polls while nobody waits (the
// caller computes: leave it the cores). Past the window — a peer is late — it sleeps 1/8
// of the time since the last event between polls, at most 200 µs while waited on and
// 1 ms otherwise; so a rank waiting seconds for a slow peer costs a few polls per
// millisecond, not a core. (comm_bench measures what this costs against blocking MPI.)
//
// Errors: communicators use MPI_ERRORS_RETURN; a failed start or completion fails that
// operation's future with lmtune::Error naming the operation, the peer and MPI's message.
// Shutdown: the engine lives from the first use of MPI until process exit (MPI can be
// initialised once per process); a static holder stops it at exit, which waits for the
// operations in flight (at most the communicator timeout, then MPI_Abort naming them),
// frees the communicators and finalises MPI. abort() ends the whole job with MPI_Abort.
//
// This file is internal to parallel/ (it includes mpi.h); the rest of lmtune talks to
// Communicator.
#pragma once

#include <mpi.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace lmtune::mpi {

// One nonblocking MPI call as the engine drives it.
struct Operation {
  std::string what;       // "all_reduce of 1024 f32 (sum)", for messages
  std::string where;      // "communicator world (rank 0 of 2)"
  int peer = -1;          // the peer or root rank it concerns, -1 if none
  uint64_t comm_id = 0;   // completion order is kept per communicator
  int64_t bytes = 0;      // the payload, for the polling policy
  // Issues the nonblocking call; returns an MPI error code.
  std::function<int(MPI_Request*)> start;
  // Runs on the engine thread after a successful completion (may be empty).
  std::function<void()> finish;
  // Host buffers the call reads or writes, kept alive until it has completed even if
  // the caller stopped waiting.
  std::shared_ptr<void> keep_alive;
};

// "MPI_ERR_TRUNCATE: message truncated" for an MPI error code.
std::string error_string(int code);

class Engine {
 public:
  // The process's engine; the first call starts the thread and initialises MPI.
  static std::shared_ptr<Engine> instance();
  // True once MPI has been initialised in this process (never initialises it).
  static bool started();
  // This process's rank in MPI_COMM_WORLD; -1 before MPI is initialised.
  static int world_rank();
  // Ends the job: MPI_Abort(MPI_COMM_WORLD, code) from the engine thread if it answers
  // within a few seconds, else from the calling thread. Only when started().
  [[noreturn]] static void abort_job(int code);

  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a nonblocking operation; the future becomes ready when it completes.
  std::shared_future<void> post(Operation op);
  // Runs fn (blocking MPI calls) on the engine thread, in order with the posted work,
  // and waits up to `timeout` for it; throws lmtune::Error naming `what` after that.
  void call(const std::string& what, std::function<void()> fn, std::chrono::milliseconds timeout);
  // Frees a communicator once the operations posted on it have completed.
  void free_comm(MPI_Comm comm, uint64_t comm_id);
  // A fresh id for a communicator (its completion-order domain).
  uint64_t next_comm_id() { return next_comm_id_.fetch_add(1); }

  // Callers blocked in wait(): the engine polls harder while there are some.
  void add_waiter() { waiters_.fetch_add(1); }
  void remove_waiter() { waiters_.fetch_sub(1); }

  // Stops the thread: waits for operations in flight (up to `drain_timeout`, then
  // aborts the job naming them), frees communicators, finalises MPI. Idempotent.
  void shutdown(std::chrono::milliseconds drain_timeout);

 private:
  Engine();
  struct InFlight;
  struct Item;
  void loop();
  bool start_queued(std::deque<Item>& batch);
  bool test_in_flight();
  bool report_completed();
  void free_deferred_comms();
  void backoff(std::chrono::steady_clock::time_point last_event);

  // Polling policy (see the note at the top).
  static constexpr std::chrono::microseconds kBusyWindow{2000};
  static constexpr int64_t kAssumedBytesPerMicrosecond = 1000;  // 1 GB/s
  static constexpr std::chrono::microseconds kBusyPollWhileUnwaited{20};
  static constexpr std::chrono::microseconds kMaxSleepWhileWaited{200};
  static constexpr std::chrono::microseconds kMaxSleepWhileUnwaited{1000};

  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> queue_;                         // guarded by mu_
  bool stopping_ = false;                          // guarded by mu_
  std::chrono::steady_clock::time_point stop_deadline_{};
  std::vector<std::unique_ptr<InFlight>> in_flight_;  // engine thread only
  std::vector<std::pair<MPI_Comm, uint64_t>> deferred_free_;  // engine thread only
  int64_t bytes_in_flight_ = 0;                                // engine thread only
  std::atomic<int> waiters_{0};
  std::atomic<int> abort_code_{-1};
  std::atomic<uint64_t> next_comm_id_{1};
  std::promise<void> init_;
  bool joined_ = false;
};

}  // namespace lmtune::mpi
