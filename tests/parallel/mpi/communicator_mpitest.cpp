// The MPI communicator on 2, 3 and 4 real ranks (CTest runs this binary under mpirun):
// every operation with exact, hand-derived expected values built from rank-dependent data
// (sums of ranks, gathers in rank order, reduce-scatter chunks, broadcast from each root,
// send/recv rings), splits into the groups of every ParallelLayout of the world size,
// host values, asynchronous overlap and in-order completion, the watchdog, MPI errors, and
// that no operation takes memory from the allocator. Also the RunContext as mpirun sets it,
// and the PMIx-only path of detect_run_context().
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <map>
#include <numeric>
#include <thread>

#include "parallel/comm_checks.h"
#include "parallel/groups.h"
#include "parallel/mpi_communicator.h"
#include "parallel/run_context.h"
#include "tests/parallel/mpi/mpi_test_env.h"
#include "trainer/core/error.h"

namespace lmtune {
namespace {

using testing::world;

struct Cpu {
  std::unique_ptr<Allocator> alloc = Allocator::create(Device::cpu());
  Tensor f32(int64_t n, const std::function<float(int64_t)>& fn) {
    Tensor t = Tensor::empty(*alloc, {n}, DType::f32, MemCategory::grads);
    for (int64_t i = 0; i < n; ++i) t.data<float>()[i] = fn(i);
    return t;
  }
  Tensor i32(int64_t n, const std::function<int32_t(int64_t)>& fn) {
    Tensor t = Tensor::empty(*alloc, {n}, DType::i32, MemCategory::grads);
    for (int64_t i = 0; i < n; ++i) t.data<int32_t>()[i] = fn(i);
    return t;
  }
  // bf16 or f16 from float values (all small integers here, so exact).
  Tensor half(DType d, int64_t n, const std::function<float(int64_t)>& fn) {
    std::vector<float> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) v[i] = fn(i);
    Tensor t = Tensor::empty(*alloc, {n}, d, MemCategory::grads);
    t.copy_from_host(v.data(), DType::f32);
    return t;
  }
};

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(MpiRun, RunContextAgreesWithMpi) {
  const RunContext& c = testing::run_context();
  EXPECT_EQ(c.rank, world().rank());
  EXPECT_EQ(c.world, world().size());
  EXPECT_GE(c.world, 2);
  // one node: every rank is local
  EXPECT_EQ(c.local_rank, c.rank);
  EXPECT_EQ(c.local_world, c.world);
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  EXPECT_EQ(c.host, host);
  EXPECT_EQ(world().backend(), "mpi");
  EXPECT_EQ(rank_from_environment(), c.rank);
}

TEST(MpiRun, PmixOnlyDetectionAsksMpi) {
  if (std::getenv("PMIX_RANK") == nullptr) GTEST_SKIP() << "this mpirun sets no PMIX_RANK";
  std::map<std::string, std::string> saved;
  for (const char* v : {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
                        "OMPI_COMM_WORLD_LOCAL_SIZE"}) {
    if (const char* x = std::getenv(v)) saved[v] = x;
    unsetenv(v);
  }
  const RunContext c = detect_run_context();
  for (const auto& [k, v] : saved) setenv(k.c_str(), v.c_str(), 1);
  EXPECT_EQ(c.rank, world().rank());
  EXPECT_EQ(c.world, world().size());
  EXPECT_EQ(c.local_rank, world().rank());
  EXPECT_EQ(c.local_world, world().size());
}

TEST(MpiCommunicator, AllReduceSumMaxMin) {
  Cpu m;
  const int r = world().rank(), p = world().size();
  for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{1000}, int64_t{1} << 20}) {
    SCOPED_TRACE(n);
    // element i of rank q: (q + 1) * (i % 97 + 1), and its negation for min
    auto val = [](int q, int64_t i) { return (q + 1) * static_cast<int>(i % 97 + 1); };
    Tensor s = m.f32(n, [&](int64_t i) { return static_cast<float>(val(r, i)); });
    Tensor mx = m.i32(n, [&](int64_t i) { return val(r, i); });
    Tensor mn = m.i32(n, [&](int64_t i) { return -val(r, i); });
    Tensor fmin = m.f32(n, [&](int64_t i) { return static_cast<float>(val(r, i)) + 0.5f; });
    world().all_reduce(s, ReduceOp::sum);
    world().all_reduce(mx, ReduceOp::max);
    world().all_reduce(mn, ReduceOp::min);
    world().all_reduce(fmin, ReduceOp::min);
    const int ranks_sum = p * (p + 1) / 2;  // sum over q of (q + 1)
    for (int64_t i = 0; i < n; ++i) {
      const int base = static_cast<int>(i % 97 + 1);
      ASSERT_EQ(s.data<float>()[i], static_cast<float>(base * ranks_sum)) << i;
      ASSERT_EQ(mx.data<int32_t>()[i], base * p) << i;
      ASSERT_EQ(mn.data<int32_t>()[i], -base * p) << i;
      ASSERT_EQ(fmin.data<float>()[i], static_cast<float>(base) + 0.5f) << i;
    }
  }
}

TEST(MpiCommunicator, ReduceScatterSeparateAndInPlace) {
  Cpu m;
  const int r = world().rank(), p = world().size();
  const int64_t n = 1001;
  // element j of rank q: q * 10000 + j; chunk r of the sum: 10000 * p(p-1)/2 + p * (r n + k)
  auto make_in = [&] { return m.f32(p * n, [&](int64_t j) { return static_cast<float>(r * 10000 + j); }); };
  auto expected = [&](int64_t k) { return static_cast<float>(10000 * p * (p - 1) / 2 + p * (r * n + k)); };
  Tensor in = make_in();
  Tensor out = m.f32(n, [](int64_t) { return -1.0f; });
  world().reduce_scatter(in, out, ReduceOp::sum);
  for (int64_t k = 0; k < n; ++k) ASSERT_EQ(out.data<float>()[k], expected(k)) << k;
  for (int64_t j = 0; j < p * n; ++j) ASSERT_EQ(in.data<float>()[j], static_cast<float>(r * 10000 + j));  // untouched

  Tensor in2 = make_in();
  Tensor own = in2.view(r * n, {n});
  world().reduce_scatter(in2, own, ReduceOp::sum);
  for (int64_t k = 0; k < n; ++k) ASSERT_EQ(own.data<float>()[k], expected(k)) << k;

  Tensor mx_in = m.i32(p * n, [&](int64_t j) { return (j % 5 == r % 5) ? 1000 + r : -r; });
  Tensor mx_out = m.i32(n, [](int64_t) { return 0; });
  world().reduce_scatter(mx_in, mx_out, ReduceOp::max);
  for (int64_t k = 0; k < n; ++k) {
    const int64_t j = r * n + k;
    int best = std::numeric_limits<int>::min();
    for (int q = 0; q < p; ++q) best = std::max(best, (j % 5 == q % 5) ? 1000 + q : -q);
    ASSERT_EQ(mx_out.data<int32_t>()[k], best) << k;
  }
}

TEST(MpiCommunicator, AllGatherInRankOrderEveryDtype) {
  Cpu m;
  const int r = world().rank(), p = world().size();
  const int64_t n = 37;
  auto v = [&](int q, int64_t k) { return static_cast<float>(q * 50 + k); };  // < 256: exact in bf16
  {
    Tensor in = m.f32(n, [&](int64_t k) { return v(r, k); });
    Tensor out = m.f32(p * n, [](int64_t) { return -1.0f; });
    world().all_gather(in, out);
    for (int64_t j = 0; j < p * n; ++j) ASSERT_EQ(out.data<float>()[j], v(static_cast<int>(j / n), j % n)) << j;
  }
  {
    Tensor out = m.i32(p * n, [&](int64_t j) { return j / n == r ? r * 1000 + static_cast<int>(j % n) : -1; });
    Tensor own = out.view(r * n, {n});
    world().all_gather(own, out);  // in place
    for (int64_t j = 0; j < p * n; ++j) ASSERT_EQ(out.data<int32_t>()[j], (j / n) * 1000 + j % n) << j;
  }
  for (DType d : {DType::bf16, DType::f16}) {
    SCOPED_TRACE(dtype_name(d));
    Tensor in = m.half(d, n, [&](int64_t k) { return v(r, k); });
    Tensor out = m.half(d, p * n, [](int64_t) { return -1.0f; });
    world().all_gather(in, out);
    const std::vector<float> got = out.to_f32();
    for (int64_t j = 0; j < p * n; ++j) ASSERT_EQ(got[j], v(static_cast<int>(j / n), j % n)) << j;
  }
  {  // bytes (NF4 codes), in place
    auto byte = [](int64_t q, int64_t k) { return static_cast<uint8_t>((q * 37 + k * 11) & 0xff); };
    auto alloc = Allocator::create(Device::cpu());
    Tensor out = Tensor::zeros(*alloc, {p * n}, DType::u8, MemCategory::quant);
    for (int64_t k = 0; k < n; ++k) out.data<uint8_t>()[r * n + k] = byte(r, k);
    Tensor own = out.view(r * n, {n});
    world().all_gather(own, out);
    for (int64_t j = 0; j < p * n; ++j) ASSERT_EQ(out.data<uint8_t>()[j], byte(j / n, j % n)) << j;
  }
}

TEST(MpiCommunicator, BroadcastFromEveryRoot) {
  Cpu m;
  const int r = world().rank(), p = world().size();
  for (int root = 0; root < p; ++root) {
    Tensor t = m.f32(300, [&](int64_t k) { return r == root ? static_cast<float>(root * 1000 + k) : -1.0f; });
    world().broadcast(t, root);
    for (int64_t k = 0; k < 300; ++k) ASSERT_EQ(t.data<float>()[k], static_cast<float>(root * 1000 + k));
    Tensor h = m.half(DType::bf16, 5, [&](int64_t k) { return r == root ? static_cast<float>(root + k) : 0.0f; });
    world().broadcast(h, root);
    const std::vector<float> got = h.to_f32();
    for (int64_t k = 0; k < 5; ++k) ASSERT_EQ(got[k], static_cast<float>(root + k));
  }
}

TEST(MpiCommunicator, SendRecvRingAndTags) {
  Cpu m;
  const int r = world().rank(), p = world().size();
  const int next = (r + 1) % p, prev = (r + p - 1) % p;
  // a ring: each rank sends to the next and receives from the previous, with two tags
  // received in the opposite order to the one they were sent in
  Tensor a = m.f32(64, [&](int64_t k) { return static_cast<float>(r * 100 + k); });
  Tensor b = m.half(DType::f16, 8, [&](int64_t k) { return static_cast<float>(r * 10 + k); });
  Tensor ra = m.f32(64, [](int64_t) { return 0.0f; });
  Tensor rb = m.half(DType::f16, 8, [](int64_t) { return 0.0f; });
  CommHandle recv_b = world().recv_async(rb, prev, 2);
  CommHandle recv_a = world().recv_async(ra, prev, 1);
  CommHandle send_a = world().send_async(a, next, 1);
  CommHandle send_b = world().send_async(b, next, 2);
  recv_b->wait();
  recv_a->wait();
  send_a->wait();
  send_b->wait();
  for (int64_t k = 0; k < 64; ++k) ASSERT_EQ(ra.data<float>()[k], static_cast<float>(prev * 100 + k));
  const std::vector<float> got = rb.to_f32();
  for (int64_t k = 0; k < 8; ++k) ASSERT_EQ(got[k], static_cast<float>(prev * 10 + k));
}

// Every (dp, tp, pp) with dp * tp * pp == size.
std::vector<ParallelLayout> layouts_of(int size) {
  std::vector<ParallelLayout> out;
  for (int dp = 1; dp <= size; ++dp)
    for (int tp = 1; tp <= size; ++tp)
      for (int pp = 1; pp <= size; ++pp)
        if (dp * tp * pp == size) out.push_back({dp, tp, pp});
  return out;
}

TEST(MpiCommunicator, SplitIntoLayoutGroups) {
  Cpu m;
  const int r = world().rank();
  for (const ParallelLayout& l : layouts_of(world().size())) {
    SCOPED_TRACE(l.str());
    GroupComms g = split_groups(world(), l);
    const ParallelCoord c = l.coord(r);
    struct Axis {
      Communicator& comm;
      std::vector<int> members;
      int coord;
    };
    for (Axis a : {Axis{*g.dp, l.dp_group(r), c.dp}, Axis{*g.tp, l.tp_group(r), c.tp},
                   Axis{*g.pp, l.pp_group(r), c.pp}}) {
      const int n = static_cast<int>(a.members.size());
      ASSERT_EQ(a.comm.size(), n);
      EXPECT_EQ(a.comm.rank(), a.coord);
      // the sum of the members' global ranks, and their gather in group order
      Tensor sum = m.i32(3, [&](int64_t k) { return r * static_cast<int>(k + 1); });
      a.comm.all_reduce(sum, ReduceOp::sum);
      const int members_sum = std::accumulate(a.members.begin(), a.members.end(), 0);
      for (int k = 0; k < 3; ++k) EXPECT_EQ(sum.data<int32_t>()[k], members_sum * (k + 1));
      Tensor mine = m.i32(1, [&](int64_t) { return r; });
      Tensor all = m.i32(n, [](int64_t) { return -1; });
      a.comm.all_gather(mine, all);
      for (int i = 0; i < n; ++i) EXPECT_EQ(all.data<int32_t>()[i], a.members[i]);
      EXPECT_EQ(a.comm.all_gather_bytes(std::to_string(r)).size(), static_cast<size_t>(n));
    }
  }
  EXPECT_THROW(split_groups(world(), ParallelLayout{world().size() + 1, 1, 1}), Error);
}

TEST(MpiCommunicator, SplitByColorAndKey) {
  Cpu m;
  const int r = world().rank(), p = world().size();
  // odd and even ranks, each ordered by descending global rank (key = -rank)
  auto half = world().split(r % 2, -r);
  std::vector<int> members;
  for (int q = p - 1; q >= 0; --q)
    if (q % 2 == r % 2) members.push_back(q);
  ASSERT_EQ(half->size(), static_cast<int>(members.size()));
  EXPECT_EQ(members[half->rank()], r);
  Tensor mine = m.i32(1, [&](int64_t) { return r; });
  Tensor all = m.i32(half->size(), [](int64_t) { return -1; });
  half->all_gather(mine, all);
  for (int i = 0; i < half->size(); ++i) EXPECT_EQ(all.data<int32_t>()[i], members[i]);
  // a split of a split
  auto again = half->split(0, half->rank());
  EXPECT_EQ(again->size(), half->size());
  EXPECT_EQ(again->rank(), half->rank());
  again->barrier();
}

TEST(MpiCommunicator, HostValues) {
  const int r = world().rank(), p = world().size();
  std::vector<double> d = {r + 0.5, -1.0 * r, 1e300};
  std::vector<double> dmax = d, dmin = d;
  world().all_reduce(std::span<double>(d), ReduceOp::sum);
  world().all_reduce(std::span<double>(dmax), ReduceOp::max);
  world().all_reduce(std::span<double>(dmin), ReduceOp::min);
  const double ranks = p * (p - 1) / 2.0;
  EXPECT_EQ(d[0], ranks + 0.5 * p);
  EXPECT_EQ(d[1], -ranks);
  EXPECT_EQ(d[2], 1e300 * p);
  EXPECT_EQ(dmax[0], (p - 1) + 0.5);
  EXPECT_EQ(dmin[1], -(p - 1.0));
  std::vector<int64_t> n = {(int64_t{1} << 40) * r, 7};
  world().all_reduce(std::span<int64_t>(n), ReduceOp::sum);
  EXPECT_EQ(n[0], (int64_t{1} << 40) * p * (p - 1) / 2);
  EXPECT_EQ(n[1], 7 * p);
  std::vector<int64_t> none;
  world().all_reduce(std::span<int64_t>(none), ReduceOp::sum);

  // rank q contributes q copies of 'a' + q then a NUL and 'z' (rank 0: nothing)
  const std::string mine = r ? std::string(static_cast<size_t>(r), static_cast<char>('a' + r)) + std::string("\0z", 2)
                             : std::string();
  const std::vector<std::string> all = world().all_gather_bytes(mine);
  ASSERT_EQ(all.size(), static_cast<size_t>(p));
  for (int q = 0; q < p; ++q) {
    const std::string want = q ? std::string(static_cast<size_t>(q), static_cast<char>('a' + q)) + std::string("\0z", 2)
                               : std::string();
    EXPECT_EQ(all[q], want) << q;
  }
  for (int root = 0; root < p; ++root) {
    const std::string payload = std::string(static_cast<size_t>(root * 3 + 1), static_cast<char>('A' + root));
    EXPECT_EQ(world().broadcast_bytes(r == root ? payload : "ignored", root), payload);
  }
  EXPECT_EQ(world().broadcast_bytes(r == 0 ? "" : "not this", 0), "");
}

TEST(MpiCommunicator, AsyncOverlapsComputeAndCompletesInOrder) {
  Cpu m;
  const int r = world().rank(), p = world().size();
  const int64_t n = 1 << 20;
  Tensor big = m.f32(n, [&](int64_t i) { return static_cast<float>((r + 1) * (i % 13)); });
  CommHandle h = world().all_reduce_async(big, ReduceOp::sum);
  // compute while the reduction runs
  double acc = 0;
  for (int i = 0; i < 2'000'000; ++i) acc += std::sqrt(static_cast<double>(i));
  EXPECT_GT(acc, 0);
  // it completes without the caller ever waiting: the progress thread drives it
  for (int i = 0; i < 60'000 && !h->done(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_TRUE(h->done());
  h->wait();
  const float ranks = static_cast<float>(p * (p + 1) / 2);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(big.data<float>()[i], ranks * static_cast<float>(i % 13)) << i;

  // many outstanding operations: when the last one is done, every earlier one is
  std::vector<Tensor> ts;
  std::vector<CommHandle> hs;
  for (int k = 0; k < 8; ++k) {
    ts.push_back(m.f32(1000 * (k + 1), [&](int64_t i) { return static_cast<float>(r + k + i % 3); }));
    hs.push_back(world().all_reduce_async(ts.back(), ReduceOp::sum));
  }
  Tensor g_in = m.i32(4, [&](int64_t k) { return r * 4 + static_cast<int>(k); });
  Tensor g_out = m.i32(4 * p, [](int64_t) { return -1; });
  hs.push_back(world().all_gather_async(g_in, g_out));
  hs.back()->wait();
  for (size_t k = 0; k < hs.size(); ++k) EXPECT_TRUE(hs[k]->done()) << k;
  for (int k = 0; k < 8; ++k) {
    for (int64_t i = 0; i < ts[k].numel(); ++i)
      ASSERT_EQ(ts[k].data<float>()[i], static_cast<float>(p * (p - 1) / 2 + p * (k + i % 3))) << k << " " << i;
  }
  for (int j = 0; j < 4 * p; ++j) EXPECT_EQ(g_out.data<int32_t>()[j], j);
  for (auto& hh : hs) hh->wait();  // waiting again is fine
}

TEST(MpiCommunicator, WatchdogNamesTheOperation) {
  Cpu m;
  const int r = world().rank();
  auto impatient = make_mpi_world_communicator(testing::run_context(), std::chrono::milliseconds(1000));
  Tensor t = m.f32(4, [&](int64_t k) { return r == 1 ? static_cast<float>(40 + k) : 0.0f; });
  CommHandle h;
  if (r == 0) {
    h = impatient->recv_async(t, 1, 99);  // rank 1 sends only after the barrier below
    const std::string msg = error_of([&] { h->wait(); });
    EXPECT_NE(msg.find("recv of 4 f32 from rank 1 (tag 99)"), std::string::npos) << msg;
    EXPECT_NE(msg.find("did not complete within 1 s"), std::string::npos) << msg;
    EXPECT_NE(msg.find(kCommTimeoutEnv), std::string::npos) << msg;
  }
  world().barrier();
  if (r == 1) impatient->send(t, 0, 99);
  if (r == 0) {
    h->wait();  // the operation was still in flight; now it completes
    for (int k = 0; k < 4; ++k) EXPECT_EQ(t.data<float>()[k], static_cast<float>(40 + k));
  }
}

TEST(MpiCommunicator, MpiErrorsNameTheOperationAndPeer) {
  Cpu m;
  const int r = world().rank();
  // rank 0 sends 8 floats; rank 1 has room for 4: MPI reports truncation on rank 1
  if (r == 0) {
    Tensor t = m.f32(8, [](int64_t k) { return static_cast<float>(k); });
    world().send(t, 1, 5);
  } else if (r == 1) {
    Tensor t = m.f32(4, [](int64_t) { return 0.0f; });
    const std::string msg = error_of([&] { world().recv(t, 0, 5); });
    EXPECT_NE(msg.find("MPI error in recv of 4 f32 from rank 0 (tag 5) (peer rank 0)"), std::string::npos) << msg;
    EXPECT_NE(msg.find("communicator world (rank 1 of"), std::string::npos) << msg;
    EXPECT_NE(msg.find("TRUNCATE"), std::string::npos) << msg;
  }
  world().barrier();
  // argument errors are thrown before anything is posted, on every rank alike
  Tensor b = m.half(DType::bf16, 4, [](int64_t) { return 1.0f; });
  EXPECT_THROW(world().all_reduce(b), Error);
  Tensor f = m.f32(4, [](int64_t) { return 1.0f; });
  EXPECT_THROW(world().send_async(f, (r + 1) % world().size(), kMaxTag + 1), Error);
  EXPECT_THROW(world().broadcast(f, world().size()), Error);
  world().barrier();
}

TEST(MpiCommunicator, TakesNoAllocatorMemory) {
  Cpu m;
  const int r = world().rank(), p = world().size();
  Tensor big = m.f32(p * 1000, [&](int64_t i) { return static_cast<float>(r + i); });
  Tensor chunk = m.f32(1000, [](int64_t) { return 0.0f; });
  Tensor bytes_dst = m.i32(p * 2, [](int64_t) { return 0; });
  Tensor bytes_src = m.i32(2, [&](int64_t) { return r; });
  const MemoryStats before = m.alloc->stats();
  world().all_reduce(big);
  world().reduce_scatter(big, chunk);
  Tensor own = big.view(r * 1000, {1000});
  world().reduce_scatter(big, own);
  world().all_gather(chunk, big);
  world().all_gather(own, big);
  world().all_gather(bytes_src, bytes_dst);
  world().broadcast(chunk, p - 1);
  Tensor got = big.view(0, {1000});
  CommHandle recv = world().recv_async(got, (r + p - 1) % p, 0);
  world().send(chunk, (r + 1) % p, 0);
  recv->wait();
  world().barrier();
  const MemoryStats after = m.alloc->stats();
  EXPECT_EQ(after.allocated.peak, before.allocated.peak);
  EXPECT_EQ(after.num_allocs, before.num_allocs);
  EXPECT_EQ(after.of(MemCategory::comm).peak, 0);
}

}  // namespace
}  // namespace lmtune
