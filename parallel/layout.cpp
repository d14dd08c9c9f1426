#include "parallel/layout.h"

#include "trainer/core/error.h"

namespace lmtune {

namespace {

void check_layout(const ParallelLayout& l) {
  LMTUNE_CHECK(l.dp >= 1 && l.tp >= 1 && l.pp >= 1, "parallel layout dp ", l.dp, " x tp ", l.tp, " x pp ", l.pp,
               ": every degree must be at least 1");
}

void check_rank(const ParallelLayout& l, int rank) {
  check_layout(l);
  LMTUNE_ASSERT(rank >= 0 && rank < l.world(), "rank ", rank, " outside ", l.str(), " (", l.world(), " ranks)");
}

}  // namespace

ParallelCoord ParallelLayout::coord(int rank) const {
  check_rank(*this, rank);
  ParallelCoord c;
  c.tp = rank % tp;
  c.dp = (rank / tp) % dp;
  c.pp = rank / (tp * dp);
  return c;
}

int ParallelLayout::rank_of(ParallelCoord c) const {
  check_layout(*this);
  LMTUNE_ASSERT(c.dp >= 0 && c.dp < dp && c.tp >= 0 && c.tp < tp && c.pp >= 0 && c.pp < pp, "coordinate (dp ", c.dp,
                ", tp ", c.tp, ", pp ", c.pp, ") outside ", str());
  return c.tp + tp * (c.dp + dp * c.pp);
}

std::vector<int> ParallelLayout::dp_group(int rank) const {
  ParallelCoord c = coord(rank);
  std::vector<int> g;
  for (c.dp = 0; c.dp < dp; ++c.dp) g.push_back(rank_of(c));
  return g;
}

std::vector<int> ParallelLayout::tp_group(int rank) const {
  ParallelCoord c = coord(rank);
  std::vector<int> g;
  for (c.tp = 0; c.tp < tp; ++c.tp) g.push_back(rank_of(c));
  return g;
}

std::vector<int> ParallelLayout::pp_group(int rank) const {
  ParallelCoord c = coord(rank);
  std::vector<int> g;
  for (c.pp = 0; c.pp < pp; ++c.pp) g.push_back(rank_of(c));
  return g;
}

std::string ParallelLayout::str() const {
  return "dp " + std::to_string(dp) + " x tp " + std::to_string(tp) + " x pp " + std::to_string(pp);
}

}  // namespace lmtune
