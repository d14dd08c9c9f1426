// The fake communicator of the meta device — design note.
//
// A meta-device run plays one rank of a real run to predict its memory. Its communicator
// moves no data and completes every operation at once, but checks its arguments exactly
// as the MPI communicator does (parallel/comm_checks.h) and takes exactly the allocations
// the MPI one takes — none: the MPI communicator works in the callers' buffers (see
// parallel/mpi_communicator.h), so the `comm` category of a real rank and of its meta
// prediction are both what the caller allocates itself.
//
// Host values: every rank is taken to hold the same values, so sum multiplies by size(),
// max and min leave them, all_gather_bytes returns size() copies of this rank's bytes and
// broadcast_bytes returns them.
//
// split(): a fake communicator cannot know which color the other ranks pass, so it cannot
// size the new group; it throws. Sub-communicators of a layout come from
// make_fake_groups() (parallel/groups.h), or directly from make_fake_communicator.
#pragma once

#include <memory>

#include "trainer/core/communicator.h"

namespace lmtune {

// Rank `rank` of a run of `size` ranks, with tensors on the meta device.
std::unique_ptr<Communicator> make_fake_communicator(int rank, int size);

}  // namespace lmtune
