#include "trainer/loop/stop_signal.h"

#include <signal.h>

#include <atomic>
#include <cstdio>

#include "trainer/core/error.h"

namespace lmtune {

namespace {

std::atomic<int> g_requested{0};
std::atomic<bool> g_installed{false};
constexpr int kSignals[] = {SIGINT, SIGTERM, SIGUSR1};
struct sigaction g_previous[3];

static_assert(std::atomic<int>::is_always_lock_free, "the signal handler needs a lock-free atomic");

extern "C" void on_stop_signal(int sig) {
  int expected = 0;
  if (g_requested.compare_exchange_strong(expected, sig)) return;  // the first: served at the next step boundary
  if (sig == SIGINT || sig == SIGTERM) {                           // the second: stop now
    ::signal(sig, SIG_DFL);
    ::raise(sig);
  }
}

}  // namespace

StopSignalScope::StopSignalScope() {
  LMTUNE_ASSERT(!g_installed.exchange(true), "one StopSignalScope at a time");
  g_requested = 0;
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // reads and writes in flight carry on
  for (int i = 0; i < 3; ++i) ::sigaction(kSignals[i], &sa, &g_previous[i]);
}

StopSignalScope::~StopSignalScope() {
  for (int i = 0; i < 3; ++i) ::sigaction(kSignals[i], &g_previous[i], nullptr);
  g_installed = false;
}

int stop_requested() { return g_requested.load(std::memory_order_relaxed); }

void clear_stop_request() { g_requested = 0; }

const char* signal_name(int sig) {
  switch (sig) {
    case SIGINT: return "SIGINT";
    case SIGTERM: return "SIGTERM";
    case SIGUSR1: return "SIGUSR1";
    default: {
      static thread_local char buf[32];
      std::snprintf(buf, sizeof buf, "signal %d", sig);
      return buf;
    }
  }
}

}  // namespace lmtune
