// The world of a multi-rank test binary (tests/parallel/mpi/): made once in main, before
// the tests run; every rank runs every test, in the same order.
#pragma once

#include "trainer/core/communicator.h"
#include "trainer/core/run_context.h"

namespace lmtune::testing {

Communicator& world();
const RunContext& run_context();

}  // namespace lmtune::testing
