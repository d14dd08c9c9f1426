// Failure scenarios for tests/cli/launch_test.cpp, run on several ranks through
// `lmtune launch --program mpi_scenario -- SCENARIO RANK`:
//   sigkill R  every rank starts an all-reduce; rank R then kills itself with SIGKILL while
//              the others wait in it. The survivors ignore SIGTERM (as a trainer finishing
//              its step would), so only mpirun's SIGKILL can end them.
//   throw R    rank R throws lmtune::Error while the others wait in an all-reduce; the
//              error goes through abort_run, as in lmtune's main, with exit code 3 (so a
//              test can tell MPI_Abort's code from an ordinary exit 1).
// Prints "rank N ready" once the world communicator is up.
#include <signal.h>

#include <cstdlib>
#include <iostream>
#include <string>

#include "parallel/mpi_communicator.h"
#include "parallel/run_context.h"
#include "trainer/core/error.h"

int main(int argc, char** argv) {
  using namespace lmtune;
  RunContext ctx;
  try {
    install_launch_signal_relay();
    LMTUNE_CHECK(argc == 3, "usage: mpi_scenario sigkill|throw RANK");
    const std::string scenario = argv[1];
    const int victim = std::atoi(argv[2]);
    ctx = detect_run_context();
    auto world = make_mpi_world_communicator(ctx);
    auto alloc = Allocator::create(Device::cpu());
    Tensor t = Tensor::zeros(*alloc, {1024}, DType::f32, MemCategory::grads);
    world->barrier();
    std::cerr << "rank " << ctx.rank << " ready" << std::endl;
    if (scenario == "sigkill") {
      signal(SIGTERM, SIG_IGN);
      CommHandle h = world->all_reduce_async(t, ReduceOp::sum);
      if (ctx.rank == victim) raise(SIGKILL);
      h->wait();
    } else if (scenario == "throw") {
      if (ctx.rank == victim) LMTUNE_THROW("injected failure on rank ", victim);
      world->all_reduce(t);
    } else {
      LMTUNE_THROW("unknown scenario '", scenario, "'");
    }
    std::cerr << "rank " << ctx.rank << " finished, which it should not" << std::endl;
    return 0;
  } catch (const Error& e) {
    if (ctx.world > 1) abort_run(std::string("error: ") + e.what(), 3);
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
