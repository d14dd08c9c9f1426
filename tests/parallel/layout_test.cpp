// ParallelLayout without processes: the worked examples of parallel/layout.h, round trips
// rank -> coordinate -> rank for every rank of several layouts, and groups that partition
// the world along each axis.
#include "parallel/layout.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "trainer/core/error.h"

namespace lmtune {
namespace {

using Groups = std::vector<std::vector<int>>;

// The distinct groups along one axis, in order of their first rank.
template <typename F>
Groups all_groups(const ParallelLayout& l, F group_of) {
  std::set<std::vector<int>> s;
  for (int r = 0; r < l.world(); ++r) s.insert(group_of(r));
  return Groups(s.begin(), s.end());
}

TEST(ParallelLayout, WorkedExampleEightRanks) {
  const ParallelLayout l{.dp = 2, .tp = 2, .pp = 2};
  EXPECT_EQ(l.world(), 8);
  EXPECT_EQ(l.str(), "dp 2 x tp 2 x pp 2");
  EXPECT_EQ(all_groups(l, [&](int r) { return l.tp_group(r); }), (Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}}));
  EXPECT_EQ(all_groups(l, [&](int r) { return l.dp_group(r); }), (Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}}));
  EXPECT_EQ(all_groups(l, [&](int r) { return l.pp_group(r); }), (Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}}));
  // rank = tp + 2 * (dp + 2 * pp): rank 6 is tp 0, dp 1, pp 1
  EXPECT_EQ(l.coord(6), (ParallelCoord{.dp = 1, .tp = 0, .pp = 1}));
  EXPECT_EQ(l.rank_of({.dp = 0, .tp = 1, .pp = 1}), 5);
}

TEST(ParallelLayout, WorkedExampleFourRanksDataParallel) {
  const ParallelLayout l{.dp = 4, .tp = 1, .pp = 1};
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(l.dp_group(r), (std::vector<int>{0, 1, 2, 3}));
    EXPECT_EQ(l.tp_group(r), (std::vector<int>{r}));
    EXPECT_EQ(l.pp_group(r), (std::vector<int>{r}));
    EXPECT_EQ(l.coord(r), (ParallelCoord{.dp = r, .tp = 0, .pp = 0}));
  }
}

TEST(ParallelLayout, RoundTripsAndPartitions) {
  const std::vector<ParallelLayout> layouts = {{1, 1, 1}, {3, 1, 1}, {1, 4, 1}, {1, 1, 5}, {2, 3, 1},
                                               {3, 2, 4}, {4, 2, 2}, {2, 4, 3}, {1, 2, 3}};
  for (const ParallelLayout& l : layouts) {
    SCOPED_TRACE(l.str());
    std::set<int> seen;
    for (int r = 0; r < l.world(); ++r) {
      const ParallelCoord c = l.coord(r);
      EXPECT_GE(c.dp, 0);
      EXPECT_LT(c.dp, l.dp);
      EXPECT_GE(c.tp, 0);
      EXPECT_LT(c.tp, l.tp);
      EXPECT_GE(c.pp, 0);
      EXPECT_LT(c.pp, l.pp);
      EXPECT_EQ(l.rank_of(c), r);
      // the Megatron formula, written out independently
      EXPECT_EQ(r, c.tp + l.tp * c.dp + l.tp * l.dp * c.pp);
      seen.insert(r);
    }
    EXPECT_EQ(static_cast<int>(seen.size()), l.world());

    struct Axis {
      int size;
      std::vector<int> (ParallelLayout::*group)(int) const;
      int ParallelCoord::*varies;
    };
    for (const Axis& a : {Axis{l.dp, &ParallelLayout::dp_group, &ParallelCoord::dp},
                          Axis{l.tp, &ParallelLayout::tp_group, &ParallelCoord::tp},
                          Axis{l.pp, &ParallelLayout::pp_group, &ParallelCoord::pp}}) {
      const Groups gs = all_groups(l, [&](int r) { return (l.*a.group)(r); });
      // world / size groups of `size` ranks each, disjoint, covering every rank
      EXPECT_EQ(static_cast<int>(gs.size()) * a.size, l.world());
      std::vector<int> all;
      for (const auto& g : gs) {
        ASSERT_EQ(static_cast<int>(g.size()), a.size);
        for (size_t i = 0; i < g.size(); ++i) {
          // in increasing coordinate order along the axis, the other coordinates fixed
          const ParallelCoord c = l.coord(g[i]), c0 = l.coord(g[0]);
          EXPECT_EQ(c.*a.varies, static_cast<int>(i));
          ParallelCoord same = c;
          same.*a.varies = c0.*a.varies;
          EXPECT_EQ(same, c0);
          all.push_back(g[i]);
        }
      }
      std::sort(all.begin(), all.end());
      for (int r = 0; r < l.world(); ++r) EXPECT_EQ(all[r], r);
      // every member of a group reports that same group
      for (const auto& g : gs)
        for (int r : g) EXPECT_EQ((l.*a.group)(r), g);
    }
  }
}

TEST(ParallelLayout, BadDegreesAndRanksAreErrors) {
  EXPECT_THROW((ParallelLayout{0, 1, 1}.coord(0)), Error);
  EXPECT_THROW((ParallelLayout{2, 2, 1}.coord(4)), Error);
  EXPECT_THROW((ParallelLayout{2, 2, 1}.coord(-1)), Error);
  EXPECT_THROW((ParallelLayout{2, 2, 1}.rank_of({.dp = 2, .tp = 0, .pp = 0})), Error);
  try {
    ParallelLayout{2, -1, 1}.coord(0);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tp -1"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lmtune
