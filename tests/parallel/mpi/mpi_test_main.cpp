// main() of a multi-rank GoogleTest binary. Every rank runs every test; rank 0 prints the
// usual report, the other ranks print only their failures (prefixed with the rank). The
// exit code is non-zero on every rank when any rank failed.
#include <gtest/gtest.h>

#include <iostream>

#include "parallel/mpi_communicator.h"
#include "parallel/run_context.h"
#include "tests/parallel/mpi/mpi_test_env.h"

namespace lmtune::testing {

namespace {

std::unique_ptr<Communicator> g_world;
RunContext g_ctx;

class FailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::cerr << "[rank " << rank_ << "] FAILED " << (info ? std::string(info->test_suite_name()) + "." + info->name() : "")
              << " at " << (r.file_name() ? r.file_name() : "?") << ":" << r.line_number() << "\n"
              << r.message() << std::endl;
  }

 private:
  int rank_;
};

}  // namespace

Communicator& world() { return *g_world; }
const RunContext& run_context() { return g_ctx; }

}  // namespace lmtune::testing

int main(int argc, char** argv) {
  namespace t = lmtune::testing;
  ::testing::InitGoogleTest(&argc, argv);
  lmtune::install_launch_signal_relay();
  t::g_ctx = lmtune::detect_run_context();
  t::g_world = lmtune::make_mpi_world_communicator(t::g_ctx);
  if (t::g_ctx.rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new t::FailurePrinter(t::g_ctx.rank));
  }
  std::vector<int64_t> failed = {RUN_ALL_TESTS() != 0 ? 1 : 0};
  t::g_world->all_reduce(std::span<int64_t>(failed), lmtune::ReduceOp::max);
  t::g_world.reset();
  return failed[0] != 0 ? 1 : 0;
}
