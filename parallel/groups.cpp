#include "parallel/groups.h"

#include "parallel/fake_communicator.h"
#include "trainer/core/error.h"

namespace lmtune {

GroupComms split_groups(Communicator& world, const ParallelLayout& layout) {
  LMTUNE_CHECK(world.size() == layout.world(), "parallel layout ", layout.str(), " needs ", layout.world(),
               " ranks, but the run has ", world.size());
  const int r = world.rank();
  const ParallelCoord c = layout.coord(r);
  // Color: the group's first rank (unique per group); key: the coordinate along the axis.
  GroupComms g;
  g.dp = world.split(layout.dp_group(r).front(), c.dp);
  g.tp = world.split(layout.tp_group(r).front(), c.tp);
  g.pp = world.split(layout.pp_group(r).front(), c.pp);
  return g;
}

GroupComms make_fake_groups(int rank, const ParallelLayout& layout) {
  const ParallelCoord c = layout.coord(rank);
  return {make_fake_communicator(c.dp, layout.dp), make_fake_communicator(c.tp, layout.tp),
          make_fake_communicator(c.pp, layout.pp)};
}

}  // namespace lmtune
