#include "trainer/core/allocator.h"

#include <sys/mman.h>

#include "trainer/core/error.h"
#include "trainer/core/strings.h"

namespace lmtune {

const char* mem_category_name(MemCategory c) {
  static constexpr const char* kNames[kNumMemCategories] = {
      "weights", "trainable", "grads", "optimizer", "activations", "workspace", "comm", "quant"};
  return kNames[static_cast<int>(c)];
}

std::string Device::str() const {
  switch (kind) {
    case DeviceKind::cpu: return "cpu";
    case DeviceKind::meta: return "meta";
    case DeviceKind::cuda: return "cuda:" + std::to_string(index);
  }
  return "?";
}

namespace {

class OsSegmentSource final : public SegmentSource {
 public:
  uintptr_t map(size_t bytes) override {
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    return p == MAP_FAILED ? 0 : reinterpret_cast<uintptr_t>(p);
  }
  void unmap(uintptr_t addr, size_t bytes) override { ::munmap(reinterpret_cast<void*>(addr), bytes); }
  Device device() const override { return Device::cpu(); }
};

// Fake addresses: a bump pointer in a range no real mapping uses. Never dereferenced.
class FakeSegmentSource final : public SegmentSource {
 public:
  uintptr_t map(size_t bytes) override {
    const uintptr_t a = next_;
    next_ += bytes;
    return a;
  }
  void unmap(uintptr_t, size_t) override {}
  Device device() const override { return Device::meta(); }

 private:
  uintptr_t next_ = uintptr_t{1} << 46;
};

}  // namespace

std::unique_ptr<SegmentSource> make_os_segment_source() { return std::make_unique<OsSegmentSource>(); }
std::unique_ptr<SegmentSource> make_fake_segment_source() { return std::make_unique<FakeSegmentSource>(); }

Allocator::Allocator(std::unique_ptr<SegmentSource> source, int64_t capacity)
    : source_(std::move(source)), device_(source_->device()), capacity_(capacity) {}

Allocator::~Allocator() {
  for (auto& [addr, seg] : segments_) source_->unmap(addr, seg.size);
}

std::unique_ptr<Allocator> Allocator::create(Device device, int64_t capacity) {
  switch (device.kind) {
    case DeviceKind::cpu: return std::make_unique<Allocator>(make_os_segment_source(), capacity);
    case DeviceKind::meta: return std::make_unique<Allocator>(make_fake_segment_source(), capacity);
    case DeviceKind::cuda: break;
  }
  LMTUNE_THROW("no allocator for device ", device.str(), " in this build");
}

size_t Allocator::round_size(size_t bytes) {
  if (bytes == 0) bytes = 1;
  return (bytes + kAlignment - 1) / kAlignment * kAlignment;
}

size_t Allocator::segment_size(size_t rounded) {
  if (rounded <= kSmallSize) return kSmallSegment;
  if (rounded < kMinLargeAlloc) return kLargeSegment;
  return (rounded + kRoundLarge - 1) / kRoundLarge * kRoundLarge;
}

void Allocator::record(MemCategory c, int64_t delta) {
  stats_.category[static_cast<int>(c)].add(delta);
  const int64_t before_peak = stats_.allocated.peak;
  stats_.allocated.add(delta);
  if (stats_.allocated.peak > before_peak) {
    for (int i = 0; i < kNumMemCategories; ++i) stats_.at_peak[i] = stats_.category[i].current;
    stats_.peak_phase = phase_;
  }
  if (timeline_on_)
    timeline_.push_back({stats_.num_allocs, c, delta, stats_.allocated.current, phase_});
}

bool Allocator::grow(size_t rounded, bool small) {
  const size_t seg = segment_size(rounded);
  if (stats_.reserved.current + static_cast<int64_t>(seg) > capacity_) return false;
  const uintptr_t addr = source_->map(seg);
  if (addr == 0) return false;
  const uint64_t seq = next_seq_++;
  segments_[addr] = Segment{seg, small, seq};
  const Chunk& c = chunks_[addr] = Chunk{addr, seg, addr, seq, small, true};
  (small ? free_small_ : free_large_).insert(c.key());
  stats_.reserved.add(static_cast<int64_t>(seg));
  ++stats_.num_segments;
  return true;
}

Block Allocator::allocate(size_t bytes, MemCategory category) {
  std::lock_guard<std::mutex> lock(mu_);
  const size_t rounded = round_size(bytes);
  const bool small = rounded <= kSmallSize;
  auto& pool = small ? free_small_ : free_large_;
  auto it = pool.lower_bound({rounded, 0, 0});
  if (it == pool.end()) {
    bool ok = grow(rounded, small);
    if (!ok) {
      release_free_segments();
      ok = grow(rounded, small);
    }
    if (!ok) {
      ++stats_.num_ooms;
      const int64_t free_bytes = capacity_ == kUnlimited ? -1 : capacity_ - stats_.reserved.current;
      detail::throw_error(
          ErrorKind::out_of_memory, __FILE__, __LINE__,
          detail::concat("out of memory on ", device_.str(), ": tried to allocate ", format_bytes(static_cast<int64_t>(rounded)),
                         " for '", mem_category_name(category), "' (capacity ",
                         capacity_ == kUnlimited ? std::string("unlimited") : format_bytes(capacity_), ", free ",
                         free_bytes < 0 ? std::string("unknown") : format_bytes(free_bytes), ", reserved ",
                         format_bytes(stats_.reserved.current), ", allocated ", format_bytes(stats_.allocated.current),
                         "). To fit: ", oom_advice_, "."));
    }
    it = pool.lower_bound({rounded, 0, 0});
    LMTUNE_ASSERT(it != pool.end());
  }
  const uintptr_t addr = it->addr;
  pool.erase(it);
  Chunk& c = chunks_.at(addr);
  const size_t remainder = c.size - rounded;
  const bool split = small ? remainder >= kAlignment : remainder > kSmallSize;
  if (split) {
    const Chunk& rest = chunks_[addr + rounded] = Chunk{addr + rounded, remainder, c.segment, c.seq, small, true};
    pool.insert(rest.key());
    c.size = rounded;
  }
  c.free = false;
  ++stats_.num_allocs;
  record(category, static_cast<int64_t>(c.size));
  return Block{addr, c.size, category};
}

void Allocator::free(const Block& block) {
  if (block.addr == 0) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = chunks_.find(block.addr);
  LMTUNE_ASSERT(it != chunks_.end() && !it->second.free, "free of an unknown or already free block");
  record(block.category, -static_cast<int64_t>(it->second.size));
  Chunk c = it->second;
  auto& pool = c.small ? free_small_ : free_large_;
  // coalesce with the next chunk
  auto next = std::next(it);
  if (next != chunks_.end() && next->second.free && next->second.segment == c.segment) {
    pool.erase(next->second.key());
    c.size += next->second.size;
    chunks_.erase(next);
  }
  // coalesce with the previous chunk
  if (it != chunks_.begin()) {
    auto prev = std::prev(it);
    if (prev->second.free && prev->second.segment == c.segment) {
      pool.erase(prev->second.key());
      prev->second.size += c.size;
      chunks_.erase(it);
      pool.insert(prev->second.key());
      return;
    }
  }
  c.free = true;
  it->second = c;
  pool.insert(c.key());
}

void Allocator::release_segment(uintptr_t addr) {
  const Segment seg = segments_.at(addr);
  (seg.small ? free_small_ : free_large_).erase({seg.size, seg.seq, addr});
  chunks_.erase(addr);
  source_->unmap(addr, seg.size);
  stats_.reserved.add(-static_cast<int64_t>(seg.size));
  segments_.erase(addr);
}

void Allocator::release_free_segments() {
  std::vector<uintptr_t> empty;
  for (auto& [addr, seg] : segments_) {
    const Chunk& c = chunks_.at(addr);
    if (c.free && c.size == seg.size) empty.push_back(addr);
  }
  for (uintptr_t a : empty) release_segment(a);
}

void Allocator::empty_cache() {
  std::lock_guard<std::mutex> lock(mu_);
  release_free_segments();
}

MemoryStats Allocator::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void Allocator::reset_peaks() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& s : stats_.category) s.peak = s.current;
  stats_.allocated.peak = stats_.allocated.current;
  stats_.reserved.peak = stats_.reserved.current;
  for (int i = 0; i < kNumMemCategories; ++i) stats_.at_peak[i] = stats_.category[i].current;
  stats_.peak_phase = phase_;
}

void Allocator::set_phase(std::string phase) {
  std::lock_guard<std::mutex> lock(mu_);
  phase_ = std::move(phase);
}

void Allocator::set_oom_advice(std::string advice) {
  std::lock_guard<std::mutex> lock(mu_);
  oom_advice_ = std::move(advice);
}

void Allocator::enable_timeline(bool on) {
  std::lock_guard<std::mutex> lock(mu_);
  timeline_on_ = on;
}

std::vector<TimelineEvent> Allocator::timeline() const {
  std::lock_guard<std::mutex> lock(mu_);
  return timeline_;
}

uint64_t Allocator::state_fingerprint() const {
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a over 64-bit words
  auto mix = [&h](uint64_t v) {
    h ^= v;
    h *= 0x100000001b3ull;
  };
  std::map<uint64_t, uintptr_t> by_seq;  // segments in creation order
  for (const auto& [addr, seg] : segments_) by_seq[seg.seq] = addr;
  uint64_t order = 0;  // only the relative order of segments matters to future choices
  for (const auto& [seq, addr] : by_seq) {
    const Segment& seg = segments_.at(addr);
    mix(order++);
    mix(seg.size);
    mix(seg.small);
    for (auto it = chunks_.find(addr); it != chunks_.end() && it->second.segment == addr; ++it) {
      mix(it->second.addr - addr);
      mix(it->second.size);
      mix(it->second.free);
    }
  }
  for (const Stat& c : stats_.category) mix(static_cast<uint64_t>(c.current));
  return h;
}

}  // namespace lmtune
