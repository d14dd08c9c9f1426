#include "trainer/core/allocator.h"

#include <gtest/gtest.h>

#include <random>

#include "trainer/core/error.h"
#include "trainer/core/tensor.h"

namespace lmtune {
namespace {

TEST(Allocator, RoundsAndCountsPerCategory) {
  auto a = Allocator::create(Device::cpu());
  const Block b1 = a->allocate(1, MemCategory::weights);
  const Block b2 = a->allocate(513, MemCategory::activations);
  EXPECT_EQ(b1.size, 512u);
  EXPECT_EQ(b2.size, 1024u);
  MemoryStats s = a->stats();
  EXPECT_EQ(s.of(MemCategory::weights).current, 512);
  EXPECT_EQ(s.of(MemCategory::activations).current, 1024);
  EXPECT_EQ(s.allocated.current, 1536);
  EXPECT_EQ(s.reserved.current, static_cast<int64_t>(Allocator::kSmallSegment));  // both from one small segment
  a->free(b2);
  s = a->stats();
  EXPECT_EQ(s.of(MemCategory::activations).current, 0);
  EXPECT_EQ(s.of(MemCategory::activations).peak, 1024);
  EXPECT_EQ(s.allocated.peak, 1536);
  a->free(b1);
  EXPECT_EQ(a->stats().allocated.current, 0);
}

TEST(Allocator, SegmentSizesFollowThePolicy) {
  EXPECT_EQ(Allocator::segment_size(512), Allocator::kSmallSegment);
  EXPECT_EQ(Allocator::segment_size(Allocator::kSmallSize), Allocator::kSmallSegment);
  EXPECT_EQ(Allocator::segment_size(Allocator::kSmallSize + 512), Allocator::kLargeSegment);
  EXPECT_EQ(Allocator::segment_size(11u << 20), 12u << 20);
  auto a = Allocator::create(Device::cpu());
  const Block big = a->allocate(3u << 20, MemCategory::weights);
  EXPECT_EQ(a->stats().reserved.current, static_cast<int64_t>(Allocator::kLargeSegment));
  // the 17 MiB remainder serves a second large request without a new segment
  const Block big2 = a->allocate(5u << 20, MemCategory::weights);
  EXPECT_EQ(a->stats().reserved.current, static_cast<int64_t>(Allocator::kLargeSegment));
  EXPECT_EQ(big2.addr, big.addr + (3u << 20));
  a->free(big);
  a->free(big2);
  a->empty_cache();
  EXPECT_EQ(a->stats().reserved.current, 0);
}

TEST(Allocator, FreedBlocksCoalesceAndAreReused) {
  auto a = Allocator::create(Device::cpu());
  const Block x = a->allocate(4096, MemCategory::workspace);
  const Block y = a->allocate(4096, MemCategory::workspace);
  const Block z = a->allocate(4096, MemCategory::workspace);
  a->free(x);
  a->free(y);  // x and y coalesce into one 8 KiB free block
  const Block w = a->allocate(8192, MemCategory::workspace);
  EXPECT_EQ(w.addr, x.addr);
  a->free(w);
  a->free(z);
  EXPECT_EQ(a->stats().allocated.current, 0);
  EXPECT_EQ(a->stats().reserved.current, static_cast<int64_t>(Allocator::kSmallSegment));
}

TEST(Allocator, CpuMemoryIsReal) {
  auto a = Allocator::create(Device::cpu());
  Tensor t = Tensor::zeros(*a, {1000}, DType::f32, MemCategory::activations);
  t.fill_(2.5f);
  float* p = t.data<float>();
  EXPECT_EQ(p[0], 2.5f);
  EXPECT_EQ(p[999], 2.5f);
}

// The meta device runs the same policy over fake addresses: any allocation sequence gives
// identical stats on both.
TEST(Allocator, MetaMatchesCpuForARandomSequence) {
  auto cpu = Allocator::create(Device::cpu());
  auto meta = Allocator::create(Device::meta());
  std::mt19937 rng(7);
  std::vector<std::pair<Block, Block>> live;
  for (int i = 0; i < 2000; ++i) {
    if (!live.empty() && rng() % 3 == 0) {
      const size_t k = rng() % live.size();
      cpu->free(live[k].first);
      meta->free(live[k].second);
      live.erase(live.begin() + static_cast<long>(k));
    } else {
      const size_t bytes = (rng() % 4 == 0) ? (rng() % (24u << 20)) : (rng() % 100000);
      const auto cat = static_cast<MemCategory>(rng() % kNumMemCategories);
      live.emplace_back(cpu->allocate(bytes, cat), meta->allocate(bytes, cat));
    }
    if (i % 100 == 0) {
      cpu->set_phase("step " + std::to_string(i));
      meta->set_phase("step " + std::to_string(i));
    }
  }
  const MemoryStats c = cpu->stats(), m = meta->stats();
  for (int k = 0; k < kNumMemCategories; ++k) {
    EXPECT_EQ(c.category[k].peak, m.category[k].peak) << mem_category_name(static_cast<MemCategory>(k));
    EXPECT_EQ(c.category[k].current, m.category[k].current);
    EXPECT_EQ(c.at_peak[k], m.at_peak[k]);
  }
  EXPECT_EQ(c.allocated.peak, m.allocated.peak);
  EXPECT_EQ(c.reserved.peak, m.reserved.peak);
  EXPECT_EQ(c.reserved.current, m.reserved.current);
  EXPECT_EQ(c.peak_phase, m.peak_phase);
  EXPECT_GT(c.allocated.peak, 0);
  for (auto& [b1, b2] : live) {
    cpu->free(b1);
    meta->free(b2);
  }
}

// Segments handed out at falling addresses (as a top-down mmap does) or in a scrambled
// order: the allocator must choose the same blocks as over rising fake addresses, since
// its ties are broken by segment age, never by raw addresses across segments.
class ScrambledSource final : public SegmentSource {
 public:
  uintptr_t map(size_t bytes) override {
    // a fresh 1 TiB window per segment, windows in a pseudo-random order
    const uint64_t slot = (n_++ * 7919) % 4096;
    return (uintptr_t{1} << 50) - (slot + 1) * (uintptr_t{1} << 40);
  }
  void unmap(uintptr_t, size_t) override {}
  Device device() const override { return Device::meta(); }

 private:
  uint64_t n_ = 0;
};

TEST(Allocator, ChoicesDoNotDependOnSegmentAddresses) {
  auto rising = Allocator::create(Device::meta());
  Allocator scrambled(std::make_unique<ScrambledSource>());
  std::mt19937 rng(11);
  std::vector<std::pair<Block, Block>> live;
  for (int i = 0; i < 3000; ++i) {
    if (!live.empty() && rng() % 3 == 0) {
      const size_t k = rng() % live.size();
      rising->free(live[k].first);
      scrambled.free(live[k].second);
      live.erase(live.begin() + static_cast<long>(k));
    } else {
      // sizes that tie often: a few fixed sizes, small and large
      static constexpr size_t kSizes[] = {4096, 65536, 1u << 20, 3u << 20, 12u << 20, 700};
      const size_t bytes = kSizes[rng() % 6];
      live.emplace_back(rising->allocate(bytes, MemCategory::activations),
                        scrambled.allocate(bytes, MemCategory::activations));
    }
    if (i % 500 == 0) {
      rising->empty_cache();
      scrambled.empty_cache();
    }
    ASSERT_EQ(rising->stats().reserved.current, scrambled.stats().reserved.current) << "event " << i;
  }
  EXPECT_EQ(rising->stats().reserved.peak, scrambled.stats().reserved.peak);
  EXPECT_EQ(rising->state_fingerprint(), scrambled.state_fingerprint());
  for (auto& [a, b] : live) {
    rising->free(a);
    scrambled.free(b);
  }
}

TEST(Allocator, FingerprintSeesThePoolShapeNotTheHistory) {
  auto a = Allocator::create(Device::meta());
  const Block keep = a->allocate(5000, MemCategory::weights);
  auto cycle = [&] {  // what one training step does to the pool: take, then give back
    const Block x = a->allocate(3u << 20, MemCategory::activations);
    const Block y = a->allocate(100, MemCategory::workspace);
    a->free(x);
    a->free(y);
  };
  cycle();
  const uint64_t after_one = a->state_fingerprint();
  cycle();
  EXPECT_EQ(a->state_fingerprint(), after_one) << "a repeat that changes nothing keeps the fingerprint";
  const Block held = a->allocate(100, MemCategory::activations);
  EXPECT_NE(a->state_fingerprint(), after_one) << "a block still held is part of the state";
  a->free(held);
  EXPECT_EQ(a->state_fingerprint(), after_one) << "freed, the small chunk coalesces back";
  const Block big = a->allocate(30u << 20, MemCategory::activations);  // a new segment
  a->free(big);
  EXPECT_NE(a->state_fingerprint(), after_one) << "a cached segment more is another state";
  a->empty_cache();
  EXPECT_NE(a->state_fingerprint(), after_one) << "empty_cache also returns the step's own free segments";
  a->free(keep);
}

TEST(Allocator, OutOfMemoryNamesTheNumbersAndCategory) {
  auto a = Allocator::create(Device::meta(), 64 << 20);
  const Block b = a->allocate(40 << 20, MemCategory::weights);
  try {
    a->allocate(30 << 20, MemCategory::activations);
    FAIL() << "expected out of memory";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(e.kind(), ErrorKind::out_of_memory);
    EXPECT_NE(m.find("tried to allocate 30.00 MiB"), std::string::npos) << m;
    EXPECT_NE(m.find("'activations'"), std::string::npos) << m;
    EXPECT_NE(m.find("capacity 64.00 MiB"), std::string::npos) << m;
    EXPECT_NE(m.find("free 24.00 MiB"), std::string::npos) << m;
    EXPECT_NE(m.find("reserved 40.00 MiB"), std::string::npos) << m;
    EXPECT_NE(m.find("allocated 40.00 MiB"), std::string::npos) << m;
    EXPECT_NE(m.find("To fit: free memory on the device, or use a smaller model."), std::string::npos) << m;
  }
  // the command that uses the allocator says which of its knobs lower memory
  a->set_oom_advice("use a shorter --seq-len");
  try {
    a->allocate(30 << 20, MemCategory::activations);
    FAIL() << "expected out of memory";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("To fit: use a shorter --seq-len."), std::string::npos) << e.what();
  }
  a->free(b);
  // after freeing, the cached segment is released to make room
  const Block c = a->allocate(60 << 20, MemCategory::activations);
  EXPECT_EQ(a->stats().reserved.current, 60 << 20);
  a->free(c);
}

TEST(Allocator, PeakBreakdownAndPhase) {
  auto a = Allocator::create(Device::meta());
  a->set_phase("load");
  const Block w = a->allocate(1 << 20, MemCategory::weights);
  a->set_phase("forward");
  const Block x = a->allocate(3 << 20, MemCategory::activations);
  a->free(x);
  a->set_phase("after");
  const Block y = a->allocate(2 << 20, MemCategory::grads);
  const MemoryStats s = a->stats();
  EXPECT_EQ(s.peak_phase, "forward");
  EXPECT_EQ(s.at_peak[static_cast<int>(MemCategory::activations)], 3 << 20);
  EXPECT_EQ(s.at_peak[static_cast<int>(MemCategory::grads)], 0);
  EXPECT_EQ(s.allocated.peak, 4 << 20);
  a->free(w);
  a->free(y);
}

TEST(Allocator, TimelineRecordsEvents) {
  auto a = Allocator::create(Device::meta());
  a->enable_timeline(true);
  const Block b = a->allocate(1000, MemCategory::comm);
  a->free(b);
  const auto tl = a->timeline();
  ASSERT_EQ(tl.size(), 2u);
  EXPECT_EQ(tl[0].delta, 1024);
  EXPECT_EQ(tl[1].delta, -1024);
  EXPECT_EQ(tl[1].allocated, 0);
  EXPECT_EQ(tl[0].category, MemCategory::comm);
}

TEST(Tensor, ViewsShareStorage) {
  auto a = Allocator::create(Device::cpu());
  Tensor flat = Tensor::zeros(*a, {10}, DType::f32, MemCategory::trainable);
  Tensor v = flat.view(4, {2, 3});
  v.fill_(1.0f);
  const auto all = flat.to_f32();
  EXPECT_EQ(all[3], 0.0f);
  EXPECT_EQ(all[4], 1.0f);
  EXPECT_EQ(all[9], 1.0f);
  EXPECT_THROW(flat.view(8, {3}), Error);
  const int64_t before = a->stats().allocated.current;
  { Tensor w = flat.view(0, {5}); }
  EXPECT_EQ(a->stats().allocated.current, before);  // views allocate nothing
}

}  // namespace
}  // namespace lmtune
