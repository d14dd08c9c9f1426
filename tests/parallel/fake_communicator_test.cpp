// The fake communicator of the meta device: every operation completes at once and takes no
// allocation (as the MPI one, whose own test checks the same), host values follow the
// "every rank holds the same values" rule, and bad arguments are rejected exactly as the
// MPI communicator rejects them (the checks are shared). Also the fake layout groups.
#include "parallel/fake_communicator.h"

#include <gtest/gtest.h>

#include "parallel/comm_checks.h"
#include "parallel/groups.h"
#include "trainer/core/error.h"

namespace lmtune {
namespace {

struct Meta {
  std::unique_ptr<Allocator> alloc = Allocator::create(Device::meta());
  Tensor t(Shape s, DType d = DType::f32) { return Tensor::empty(*alloc, std::move(s), d, MemCategory::grads); }
};

TEST(FakeCommunicator, EveryOperationCompletesAndAllocatesNothing) {
  Meta m;
  auto c = make_fake_communicator(2, 4);
  EXPECT_EQ(c->rank(), 2);
  EXPECT_EQ(c->size(), 4);
  EXPECT_EQ(c->backend(), "fake");
  Tensor big = m.t({4 * 1000});
  Tensor chunk = m.t({1000});
  Tensor half = m.t({4 * 8}, DType::bf16);
  Tensor half_chunk = m.t({8}, DType::bf16);
  const MemoryStats before = m.alloc->stats();

  std::vector<CommHandle> hs;
  hs.push_back(c->all_reduce_async(big, ReduceOp::sum));
  hs.push_back(c->reduce_scatter_async(big, chunk, ReduceOp::max));
  Tensor own = big.view(2 * 1000, {1000});
  hs.push_back(c->reduce_scatter_async(big, own, ReduceOp::sum));  // in place: chunk rank() of in
  hs.push_back(c->all_gather_async(chunk, big));
  hs.push_back(c->all_gather_async(own, big));
  hs.push_back(c->all_gather_async(half_chunk, half));
  hs.push_back(c->broadcast_async(half, 3));
  hs.push_back(c->send_async(chunk, 0, 7));
  hs.push_back(c->recv_async(chunk, 3, 7));
  for (auto& h : hs) {
    EXPECT_TRUE(h->done());
    h->wait();
  }
  c->all_reduce(big);
  c->barrier();

  const MemoryStats after = m.alloc->stats();
  EXPECT_EQ(after.allocated.current, before.allocated.current);
  EXPECT_EQ(after.allocated.peak, before.allocated.peak);
  EXPECT_EQ(after.num_allocs, before.num_allocs);
  EXPECT_EQ(after.of(MemCategory::comm).peak, 0);
}

TEST(FakeCommunicator, HostValuesAsIfEveryRankHeldTheSame) {
  auto c = make_fake_communicator(1, 4);
  std::vector<double> d = {1.5, -2.0, 0.0};
  c->all_reduce(std::span<double>(d), ReduceOp::sum);
  EXPECT_EQ(d, (std::vector<double>{6.0, -8.0, 0.0}));
  c->all_reduce(std::span<double>(d), ReduceOp::max);
  EXPECT_EQ(d, (std::vector<double>{6.0, -8.0, 0.0}));
  c->all_reduce(std::span<double>(d), ReduceOp::min);
  EXPECT_EQ(d, (std::vector<double>{6.0, -8.0, 0.0}));
  std::vector<int64_t> n = {int64_t{1} << 40, -3};
  c->all_reduce(std::span<int64_t>(n), ReduceOp::sum);
  EXPECT_EQ(n, (std::vector<int64_t>{int64_t{1} << 42, -12}));
  c->all_reduce(std::span<int64_t>(n), ReduceOp::min);
  EXPECT_EQ(n, (std::vector<int64_t>{int64_t{1} << 42, -12}));
  EXPECT_EQ(c->all_gather_bytes("ab\0c"), (std::vector<std::string>(4, "ab\0c")));
  EXPECT_EQ(c->all_gather_bytes(""), (std::vector<std::string>(4, "")));
  EXPECT_EQ(c->broadcast_bytes("hello", 0), "hello");
}

TEST(FakeCommunicator, RejectsWhatTheMpiCommunicatorRejects) {
  Meta m;
  auto c = make_fake_communicator(1, 4);
  Tensor f = m.t({16});
  Tensor b = m.t({16}, DType::bf16);
  Tensor i64 = m.t({4}, DType::i64);
  EXPECT_THROW(c->all_reduce_async(b, ReduceOp::sum), Error);  // reductions: f32 and i32 only
  EXPECT_THROW(c->all_reduce_async(i64, ReduceOp::sum), Error);
  Tensor chunk3 = m.t({3});
  EXPECT_THROW(c->reduce_scatter_async(f, chunk3, ReduceOp::sum), Error);  // 16 != 4 * 3
  Tensor chunk4 = m.t({4});
  EXPECT_THROW(c->all_gather_async(chunk4, b), Error);  // dtypes differ
  Tensor wrong_chunk = f.view(0, {4});                  // overlaps f but is chunk 0, not chunk 1
  EXPECT_THROW(c->all_gather_async(wrong_chunk, f), Error);
  Tensor straddling = f.view(2, {4});
  EXPECT_THROW(c->reduce_scatter_async(f, straddling, ReduceOp::sum), Error);
  EXPECT_NO_THROW(c->all_gather_async(f.view(4, {4}), f)->wait());
  EXPECT_THROW(c->broadcast_async(f, 4), Error);
  EXPECT_THROW(c->send_async(f, 1, 0), Error);  // to itself
  EXPECT_THROW(c->send_async(f, 0, kMaxTag + 1), Error);
  EXPECT_THROW(c->recv_async(f, -1, 0), Error);
  EXPECT_THROW(c->broadcast_bytes("x", 9), Error);
  auto cpu = Allocator::create(Device::cpu());
  Tensor on_cpu = Tensor::zeros(*cpu, {4}, DType::f32, MemCategory::grads);
  EXPECT_THROW(c->all_reduce_async(on_cpu, ReduceOp::sum), Error);  // the fake's tensors live on meta
  try {
    c->split(0, 0);
    FAIL() << "split of a fake communicator did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("make_fake_groups"), std::string::npos) << e.what();
  }
}

TEST(FakeCommunicator, LayoutGroups) {
  const ParallelLayout l{.dp = 2, .tp = 2, .pp = 2};
  // rank 6 = tp 0, dp 1, pp 1 (parallel/layout.h)
  GroupComms g = make_fake_groups(6, l);
  EXPECT_EQ(g.dp->rank(), 1);
  EXPECT_EQ(g.dp->size(), 2);
  EXPECT_EQ(g.tp->rank(), 0);
  EXPECT_EQ(g.tp->size(), 2);
  EXPECT_EQ(g.pp->rank(), 1);
  EXPECT_EQ(g.pp->size(), 2);
  GroupComms d = make_fake_groups(3, ParallelLayout{.dp = 4});
  EXPECT_EQ(d.dp->rank(), 3);
  EXPECT_EQ(d.dp->size(), 4);
  EXPECT_EQ(d.tp->size(), 1);
  EXPECT_EQ(d.pp->size(), 1);
  EXPECT_THROW(make_fake_communicator(4, 4), Error);
}

}  // namespace
}  // namespace lmtune
