// Every rank's memory, measured and predicted: the rows of `--memory-report` and of
// RUN_DIR/memory.json.
//
// memory.json is a list with one object per rank, in rank order:
//   {"rank", "peak_allocated", "peak_reserved", "peak_rss", "predicted_peak_allocated",
//    "predicted_peak_reserved", "by_category": {category: peak bytes}, "predicted_by_category",
//    "peak_phase", "predicted_peak_phase",
//    "host": {"peak_allocated", "peak_reserved", "predicted_peak_allocated",
//             "predicted_peak_reserved", "by_category", "predicted_by_category"}}
// (bytes, integers). "peak_*" are the run's tracked device allocator peaks, "peak_rss" the
// process's peak resident set (getrusage), "predicted_*" the meta-device replay of that
// rank's run; "host" the same for the host allocator that holds what parallel.offload
// moves off the device (all zero without offload).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "trainer/core/allocator.h"
#include "trainer/core/communicator.h"

namespace lmtune {

struct RankMemory {
  int rank = 0;
  MemoryStats measured, predicted;  // the device's allocator
  int64_t peak_rss = 0;
  MemoryStats host_measured, host_predicted;  // the host's allocator (parallel.offload)
  nlohmann::json to_json() const;
};

// This process's peak resident set size in bytes.
int64_t process_peak_rss();

// Every rank's row, in rank order, on every rank of `world`.
std::vector<RankMemory> gather_rank_memory(Communicator& world, const RankMemory& mine);
// Writes the rows as memory.json (atomically).
void write_memory_json(const std::filesystem::path& file, const std::vector<RankMemory>& rows);

}  // namespace lmtune
