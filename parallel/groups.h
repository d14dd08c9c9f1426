// The communicators of one rank's groups in a ParallelLayout: the ranks it shares a
// data-parallel, tensor-parallel and pipeline group with (parallel/layout.h), each ordered
// by the coordinate along its axis, so that a group communicator's rank is that coordinate.
#pragma once

#include <memory>

#include "parallel/layout.h"
#include "trainer/core/communicator.h"

namespace lmtune {

struct GroupComms {
  std::unique_ptr<Communicator> dp, tp, pp;
};

// Splits `world` (of layout.world() ranks; every rank calls it) into this rank's groups.
GroupComms split_groups(Communicator& world, const ParallelLayout& layout);

// The same groups as fake communicators, for a meta-device run of global rank `rank`.
GroupComms make_fake_groups(int rank, const ParallelLayout& layout);

}  // namespace lmtune
