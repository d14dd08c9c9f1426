// ParallelLayout: the dp x tp x pp grid as a value — design note.
//
// A global rank maps to coordinates (dp, tp, pp) with tensor-parallel ranks adjacent, then
// data-parallel, then pipeline stages, as Megatron-LM orders them:
//     rank = tp_rank + tp * (dp_rank + dp * pp_rank)
// Worked examples (world = dp * tp * pp):
//     8 ranks, tp 2, dp 2, pp 2:
//         tp groups [0,1] [2,3] [4,5] [6,7]     (same dp and pp, tp varies)
//         dp groups [0,2] [1,3] [4,6] [5,7]     (same tp and pp, dp varies)
//         pp groups [0,4] [1,5] [2,6] [3,7]     (same tp and dp, pp varies)
//     4 ranks, dp 4: one dp group [0,1,2,3]; every tp and pp group is one rank.
// Pure value type: no processes, no communicators; unit-tested on its own.
#pragma once

#include <string>
#include <vector>

namespace lmtune {

struct ParallelCoord {
  int dp = 0, tp = 0, pp = 0;
  bool operator==(const ParallelCoord&) const = default;
};

struct ParallelLayout {
  int dp = 1, tp = 1, pp = 1;

  int world() const { return dp * tp * pp; }
  ParallelCoord coord(int rank) const;
  int rank_of(ParallelCoord c) const;
  // The ranks of `rank`'s group along one axis, in increasing coordinate order.
  std::vector<int> dp_group(int rank) const;
  std::vector<int> tp_group(int rank) const;
  std::vector<int> pp_group(int rank) const;
  // "dp 2 x tp 2 x pp 2"
  std::string str() const;
  bool operator==(const ParallelLayout&) const = default;
};

}  // namespace lmtune
