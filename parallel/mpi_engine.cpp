#include "parallel/mpi_engine.h"

#include <sys/prctl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <set>

#include "parallel/mpi_communicator.h"
#include "trainer/core/error.h"

namespace lmtune::mpi {

namespace {

std::mutex g_mu;
std::shared_ptr<Engine> g_engine;          // guarded by g_mu
std::atomic<bool> g_started{false};        // MPI_Init_thread succeeded in this process
std::atomic<bool> g_finalized{false};      // MPI_Finalize was called
std::atomic<int> g_world_rank{-1};

// Stops the engine at process exit (after main returns), so that MPI is finalised even
// when a communicator is still referenced somewhere.
struct ShutdownAtExit {
  ~ShutdownAtExit() {
    std::shared_ptr<Engine> e;
    {
      std::lock_guard lk(g_mu);
      e = g_engine;
    }
    if (e) e->shutdown(std::chrono::duration_cast<std::chrono::milliseconds>(comm_timeout_from_env()));
  }
} g_shutdown_at_exit;

Error mpi_error(const std::string& message) { return Error(ErrorKind::user, __FILE__, __LINE__, message); }

}  // namespace

std::string error_string(int code) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, buf, &len) != MPI_SUCCESS) return "MPI error code " + std::to_string(code);
  return std::string(buf, static_cast<size_t>(len));
}

struct Engine::InFlight {
  Operation op;
  std::promise<void> promise;
  MPI_Request request = MPI_REQUEST_NULL;
  bool complete = false;
  std::exception_ptr error;

  void fail(int code) {
    complete = true;
    error = std::make_exception_ptr(mpi_error(
        "MPI error in " + op.what + (op.peer >= 0 ? " (peer rank " + std::to_string(op.peer) + ")" : "") + " on " +
        op.where + ": " + error_string(code)));
  }
};

struct Engine::Item {
  std::unique_ptr<InFlight> op;     // an operation to start, or
  std::function<void()> task;       // a blocking call to run
};

std::shared_ptr<Engine> Engine::instance() {
  std::lock_guard lk(g_mu);
  LMTUNE_CHECK(!g_finalized, "MPI was already finalised in this process; it cannot be used again");
  if (!g_engine) {
    std::shared_ptr<Engine> e(new Engine());
    try {
      e->init_.get_future().get();
    } catch (...) {
      e->thread_.join();
      e->joined_ = true;
      throw;
    }
    g_engine = std::move(e);
    g_started = true;
  }
  return g_engine;
}

bool Engine::started() { return g_started; }

int Engine::world_rank() { return g_world_rank; }

Engine::Engine() { thread_ = std::thread([this] { loop(); }); }

Engine::~Engine() { shutdown(std::chrono::milliseconds(0)); }

void Engine::abort_job(int code) {
  std::cout.flush();
  std::cerr.flush();
  if (!g_started || g_finalized) std::_Exit(code);
  std::shared_ptr<Engine> e;
  {
    std::unique_lock lk(g_mu, std::try_to_lock);
    if (lk.owns_lock()) e = g_engine;
  }
  if (e && std::this_thread::get_id() != e->thread_.get_id()) {
    e->abort_code_ = code;
    e->cv_.notify_all();
    // The engine thread calls MPI_Abort as soon as it sees the request; it does not return.
    for (int i = 0; i < 500; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  // The engine thread is stuck in a blocking call (MPI_Comm_split with a dead peer, say).
  // MPI_THREAD_FUNNELED does not allow this thread to call MPI; Open MPI's MPI_Abort works
  // from any thread, and ending the job beats hanging it.
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

std::shared_future<void> Engine::post(Operation op) {
  auto f = std::make_unique<InFlight>();
  f->op = std::move(op);
  std::shared_future<void> fut = f->promise.get_future().share();
  {
    std::lock_guard lk(mu_);
    LMTUNE_CHECK(!stopping_, f->op.what, " on ", f->op.where, ": MPI is shutting down");
    queue_.push_back(Item{std::move(f), {}});
  }
  cv_.notify_one();
  return fut;
}

void Engine::call(const std::string& what, std::function<void()> fn, std::chrono::milliseconds timeout) {
  auto done = std::make_shared<std::promise<void>>();
  std::future<void> fut = done->get_future();
  {
    std::lock_guard lk(mu_);
    LMTUNE_CHECK(!stopping_, what, ": MPI is shutting down");
    queue_.push_back(Item{nullptr, [fn = std::move(fn), done] {
                            try {
                              fn();
                              done->set_value();
                            } catch (...) {
                              done->set_exception(std::current_exception());
                            }
                          }});
  }
  cv_.notify_one();
  add_waiter();
  const auto status = fut.wait_for(timeout);
  remove_waiter();
  LMTUNE_CHECK(status == std::future_status::ready, what, " did not complete within ",
               std::chrono::duration_cast<std::chrono::seconds>(timeout).count(),
               " s: a peer rank may have died, hung or called a different operation (the timeout is ",
               kCommTimeoutEnv, ")");
  fut.get();
}

void Engine::free_comm(MPI_Comm comm, uint64_t comm_id) {
  std::lock_guard lk(mu_);
  if (stopping_) return;  // MPI_Finalize frees what is left
  queue_.push_back(Item{nullptr, [this, comm, comm_id] { deferred_free_.emplace_back(comm, comm_id); }});
  cv_.notify_one();
}

void Engine::shutdown(std::chrono::milliseconds drain_timeout) {
  {
    std::lock_guard lk(mu_);
    if (joined_) return;
    if (!stopping_) {
      stopping_ = true;
      stop_deadline_ = std::chrono::steady_clock::now() + drain_timeout;
    }
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  std::lock_guard lk(mu_);
  joined_ = true;
}

bool Engine::start_queued(std::deque<Item>& batch) {
  bool moved = false;
  for (Item& item : batch) {
    moved = true;
    if (item.task) {
      item.task();
      continue;
    }
    InFlight& f = *item.op;
    const int rc = f.op.start(&f.request);
    if (rc != MPI_SUCCESS) f.fail(rc);
    else bytes_in_flight_ += f.op.bytes;
    in_flight_.push_back(std::move(item.op));
  }
  return moved;
}

bool Engine::test_in_flight() {
  bool moved = false;
  for (auto& p : in_flight_) {
    InFlight& f = *p;
    if (f.complete) continue;
    int flag = 0;
    const int rc = MPI_Test(&f.request, &flag, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) f.fail(rc);
    else if (flag) f.complete = true;
    if (f.complete) {
      bytes_in_flight_ -= f.op.bytes;
      moved = true;
    }
  }
  return moved;
}

bool Engine::report_completed() {
  bool moved = false;
  std::set<uint64_t> blocked;  // communicators with an earlier operation still running
  for (auto it = in_flight_.begin(); it != in_flight_.end();) {
    InFlight& f = **it;
    if (blocked.count(f.op.comm_id) || !f.complete) {
      blocked.insert(f.op.comm_id);
      ++it;
      continue;
    }
    if (!f.error && f.op.finish) {
      try {
        f.op.finish();
      } catch (...) {
        f.error = std::current_exception();
      }
    }
    if (f.error) f.promise.set_exception(f.error);
    else f.promise.set_value();
    it = in_flight_.erase(it);
    moved = true;
  }
  return moved;
}

void Engine::free_deferred_comms() {
  for (auto it = deferred_free_.begin(); it != deferred_free_.end();) {
    bool busy = false;
    for (const auto& f : in_flight_) busy = busy || f->op.comm_id == it->second;
    if (busy) {
      ++it;
      continue;
    }
    MPI_Comm c = it->first;
    MPI_Comm_free(&c);
    it = deferred_free_.erase(it);
  }
}

void Engine::backoff(std::chrono::steady_clock::time_point last_event) {
  using namespace std::chrono;
  const bool urgent = waiters_.load() > 0;
  const auto idle = duration_cast<microseconds>(steady_clock::now() - last_event);
  const microseconds window = kBusyWindow + microseconds(bytes_in_flight_ / kAssumedBytesPerMicrosecond);
  microseconds nap;
  if (idle < window) {
    if (urgent) {
      std::this_thread::yield();
      return;
    }
    nap = kBusyPollWhileUnwaited;
  } else {
    nap = std::clamp<microseconds>(idle / 8, microseconds(10), urgent ? kMaxSleepWhileWaited : kMaxSleepWhileUnwaited);
  }
  std::unique_lock lk(mu_);
  cv_.wait_for(lk, nap, [&] { return !queue_.empty() || abort_code_.load() >= 0; });
}

void Engine::loop() {
  prctl(PR_SET_TIMERSLACK, 1000UL);  // 1 µs: the short sleeps between polls stay short
  int provided = 0;
  int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
  if (rc != MPI_SUCCESS) {
    init_.set_exception(std::make_exception_ptr(mpi_error("MPI_Init_thread failed: " + error_string(rc))));
    return;
  }
  if (provided < MPI_THREAD_FUNNELED) {
    MPI_Finalize();
    init_.set_exception(std::make_exception_ptr(
        mpi_error("this MPI library does not provide MPI_THREAD_FUNNELED (provided level " + std::to_string(provided) +
                  "); lmtune drives MPI from one progress thread and needs it")));
    return;
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  int rank = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  g_world_rank = rank;
  init_.set_value();

  auto last_event = std::chrono::steady_clock::now();
  while (true) {
    std::deque<Item> batch;
    bool stopping = false;
    {
      std::unique_lock lk(mu_);
      if (queue_.empty() && in_flight_.empty() && abort_code_.load() < 0) {
        if (stopping_) break;
        cv_.wait(lk, [&] { return !queue_.empty() || stopping_ || abort_code_.load() >= 0; });
      }
      batch.swap(queue_);
      stopping = stopping_;
    }
    if (const int code = abort_code_.load(); code >= 0) MPI_Abort(MPI_COMM_WORLD, code);
    bool moved = start_queued(batch);
    moved = test_in_flight() || moved;
    moved = report_completed() || moved;
    free_deferred_comms();
    if (moved || in_flight_.empty()) last_event = std::chrono::steady_clock::now();
    if (in_flight_.empty()) continue;
    if (stopping && std::chrono::steady_clock::now() > stop_deadline_) {
      std::string names;
      for (const auto& f : in_flight_) names += (names.empty() ? "" : "; ") + f->op.what + " on " + f->op.where;
      std::cerr << "lmtune: exiting with MPI operations still in flight (" << names << "); aborting the job\n";
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
    backoff(last_event);
  }
  for (auto& [comm, id] : deferred_free_) MPI_Comm_free(&comm);
  deferred_free_.clear();
  g_finalized = true;
  MPI_Finalize();
}

}  // namespace lmtune::mpi
