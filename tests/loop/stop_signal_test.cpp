// The stop request (stop_signal.h): the first SIGINT/SIGTERM/SIGUSR1 is recorded for the
// loop to serve at a step boundary; a second SIGINT ends the process at once; the previous
// handlers come back when the scope ends. Signals are sent to forked children, so the test
// process itself is never at risk.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "trainer/loop/stop_signal.h"

namespace lmtune {
namespace {

// Runs `body` in a child; returns its wait status.
template <typename F>
int in_child(F body) {
  const pid_t pid = fork();
  if (pid == 0) _exit(body());
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

TEST(StopSignal, TheFirstSignalIsARequestTheLoopPolls) {
  for (int sig : {SIGINT, SIGTERM, SIGUSR1}) {
    const int status = in_child([sig] {
      const StopSignalScope scope;
      if (stop_requested() != 0) return 10;
      raise(sig);
      if (stop_requested() != sig) return 11;
      raise(SIGUSR1);  // a later, different signal does not replace the first
      return stop_requested() == sig ? 0 : 12;
    });
    ASSERT_TRUE(WIFEXITED(status)) << signal_name(sig) << " killed the process";
    EXPECT_EQ(WEXITSTATUS(status), 0) << signal_name(sig);
  }
}

TEST(StopSignal, ASecondSigintStopsAtOnce) {
  const int status = in_child([] {
    const StopSignalScope scope;
    raise(SIGINT);
    raise(SIGINT);
    return 0;  // not reached
  });
  ASSERT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(WTERMSIG(status), SIGINT);
}

TEST(StopSignal, TheScopeRestoresThePreviousHandlers) {
  const int status = in_child([] {
    { const StopSignalScope scope; }
    raise(SIGTERM);  // the default action again
    return 0;
  });
  ASSERT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(WTERMSIG(status), SIGTERM);
  EXPECT_STREQ(signal_name(SIGTERM), "SIGTERM");
  EXPECT_STREQ(signal_name(SIGUSR1), "SIGUSR1");
}

}  // namespace
}  // namespace lmtune
