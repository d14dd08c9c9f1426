// The tracked allocator — design note.
//
// Every byte of device memory (and every large host buffer standing in for it) comes from
// an Allocator, tagged with a MemCategory. The allocator keeps current and peak bytes per
// category, total allocated and reserved bytes, the per-category breakdown at the moment
// of the total peak (and the phase label set at that moment), and optionally a timeline.
//
// Policy (one implementation, shared by every device — this is what makes the meta
// device exact):
//   * Sizes are rounded up to kAlignment (512 B).
//   * Requests <= kSmallSize (1 MiB) are served from the small pool, carved out of
//     kSmallSegment (2 MiB) segments; larger ones from the large pool, whose segments are
//     kLargeSegment (20 MiB) for requests < 10 MiB and the request rounded up to 2 MiB
//     otherwise. (The same shape as PyTorch's CUDACachingAllocator.)
//   * Best fit within a pool (smallest free block that fits; on ties the oldest segment,
//     then the lowest address in it — never raw addresses across segments, so that the
//     choice does not depend on where the source maps segments: meta chooses as cpu does);
//     a block is split when the remainder is >= kAlignment (small pool) or > kSmallSize
//     (large pool); freed blocks coalesce with free neighbours in the same segment.
//   * Segments are never returned to the source while in use; empty_cache() returns the
//     wholly free ones. When a new segment would exceed the capacity, the allocator first
//     empties its cache and retries, then throws an out-of-memory Error that names the
//     requested, free, reserved and allocated bytes and the category that asked.
// Segment sources: CPU maps real memory from the OS (MAP_POPULATE, so "reserved" is
// memory the process really holds); meta hands out fake addresses and touches nothing;
// CUDA (later) uses cudaMalloc. Only the source differs between devices.
//
// Invariants: allocated <= reserved <= capacity; sum over categories == allocated.
// Thread-safe (one mutex); allocation is not on any hot inner loop.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "trainer/core/device.h"

namespace lmtune {

enum class MemCategory : uint8_t { weights, trainable, grads, optimizer, activations, workspace, comm, quant };
inline constexpr int kNumMemCategories = 8;
const char* mem_category_name(MemCategory c);

struct Stat {
  int64_t current = 0;
  int64_t peak = 0;
  void add(int64_t delta) {
    current += delta;
    if (current > peak) peak = current;
  }
};

struct MemoryStats {
  std::array<Stat, kNumMemCategories> category{};  // allocated (rounded) bytes per category
  Stat allocated;                                  // sum over categories
  Stat reserved;                                   // bytes held from the segment source
  std::array<int64_t, kNumMemCategories> at_peak{};  // per-category bytes when `allocated` peaked
  std::string peak_phase;                            // phase label when `allocated` peaked
  int64_t num_allocs = 0;
  int64_t num_segments = 0;
  int64_t num_ooms = 0;
  const Stat& of(MemCategory c) const { return category[static_cast<int>(c)]; }
};

struct TimelineEvent {
  int64_t seq;          // allocation/free counter
  MemCategory category;
  int64_t delta;        // +bytes on allocate, -bytes on free
  int64_t allocated;    // total allocated after the event
  std::string phase;
};

// Where segments come from. map() returns an address (real or fake) or 0 on failure.
class SegmentSource {
 public:
  virtual ~SegmentSource() = default;
  virtual uintptr_t map(size_t bytes) = 0;
  virtual void unmap(uintptr_t addr, size_t bytes) = 0;
  virtual Device device() const = 0;
};

std::unique_ptr<SegmentSource> make_os_segment_source();    // CPU: real memory from the OS
std::unique_ptr<SegmentSource> make_fake_segment_source();  // meta: fake addresses

// A handle to one allocation; the owner (Storage) gives it back with Allocator::free.
struct Block {
  uintptr_t addr = 0;
  size_t size = 0;  // rounded size
  MemCategory category = MemCategory::workspace;
};

class Allocator {
 public:
  static constexpr size_t kAlignment = 512;
  static constexpr size_t kSmallSize = 1 << 20;
  static constexpr size_t kSmallSegment = 2 << 20;
  static constexpr size_t kLargeSegment = 20 << 20;
  static constexpr size_t kMinLargeAlloc = 10 << 20;
  static constexpr size_t kRoundLarge = 2 << 20;
  static constexpr int64_t kUnlimited = INT64_MAX;

  explicit Allocator(std::unique_ptr<SegmentSource> source, int64_t capacity = kUnlimited);
  ~Allocator();
  Allocator(const Allocator&) = delete;
  Allocator& operator=(const Allocator&) = delete;

  // A CPU allocator (real memory) or a meta allocator (same policy, fake addresses).
  static std::unique_ptr<Allocator> create(Device device, int64_t capacity = kUnlimited);

  Block allocate(size_t bytes, MemCategory category);
  void free(const Block& block);
  void empty_cache();  // return wholly free segments to the source

  Device device() const { return device_; }
  int64_t capacity() const { return capacity_; }
  MemoryStats stats() const;
  void reset_peaks();  // peaks := current values
  // A label for "where in the step we are" (e.g. "forward layer 3"); recorded at the peak.
  void set_phase(std::string phase);
  // What an out-of-memory error tells the user to do, after its numbers. The allocator does
  // not know which knobs the command that uses it has; that command says (the trainer names
  // its config keys). Default: kDefaultOomAdvice.
  void set_oom_advice(std::string advice);
  static constexpr const char* kDefaultOomAdvice = "free memory on the device, or use a smaller model";
  void enable_timeline(bool on);
  std::vector<TimelineEvent> timeline() const;
  // A hash of the pool's shape — every segment in the order it was created, with its
  // chunks (offset, size, free) — and of the bytes in use per category. Two moments with
  // the same fingerprint serve any further sequence of requests alike, whatever the
  // addresses: the meta replay of a run uses it to skip repeats that change nothing.
  uint64_t state_fingerprint() const;

  static size_t round_size(size_t bytes);
  static size_t segment_size(size_t rounded);

 private:
  struct FreeKey {
    size_t size;
    uint64_t seq;  // the segment's creation number
    uintptr_t addr;
    bool operator<(const FreeKey& o) const {
      if (size != o.size) return size < o.size;
      return seq != o.seq ? seq < o.seq : addr < o.addr;
    }
  };
  struct Chunk {  // a block inside a segment, free or in use
    uintptr_t addr;
    size_t size;
    uintptr_t segment;
    uint64_t seq;  // the segment's creation number
    bool small;
    bool free;
    FreeKey key() const { return {size, seq, addr}; }
  };
  struct Segment {
    size_t size;
    bool small;
    uint64_t seq;
  };

  void record(MemCategory c, int64_t delta);
  bool grow(size_t rounded, bool small);
  void release_segment(uintptr_t addr);
  void release_free_segments();

  std::unique_ptr<SegmentSource> source_;
  Device device_;
  int64_t capacity_;
  mutable std::mutex mu_;
  std::map<uintptr_t, Chunk> chunks_;  // every chunk by address (for coalescing)
  std::set<FreeKey> free_small_, free_large_;
  std::map<uintptr_t, Segment> segments_;
  uint64_t next_seq_ = 0;
  MemoryStats stats_;
  std::string phase_;
  std::string oom_advice_ = kDefaultOomAdvice;
  bool timeline_on_ = false;
  std::vector<TimelineEvent> timeline_;
};

}  // namespace lmtune
