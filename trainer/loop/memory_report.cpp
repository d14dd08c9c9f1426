#include "trainer/loop/memory_report.h"

#include <sys/resource.h>

#include "trainer/io/file_util.h"

namespace lmtune {

namespace {

nlohmann::json categories(const MemoryStats& m) {
  nlohmann::json j = nlohmann::json::object();
  for (int c = 0; c < kNumMemCategories; ++c) j[mem_category_name(static_cast<MemCategory>(c))] = m.category[c].peak;
  return j;
}

MemoryStats stats_from(const nlohmann::json& j, const char* prefix_alloc, const char* prefix_res, const char* cats,
                       const char* phase) {
  MemoryStats m;
  m.allocated.peak = j.at(prefix_alloc).get<int64_t>();
  m.reserved.peak = j.at(prefix_res).get<int64_t>();
  for (int c = 0; c < kNumMemCategories; ++c)
    m.category[c].peak = j.at(cats).at(mem_category_name(static_cast<MemCategory>(c))).get<int64_t>();
  if (phase != nullptr) m.peak_phase = j.at(phase).get<std::string>();
  return m;
}

}  // namespace

nlohmann::json RankMemory::to_json() const {
  return {{"rank", rank},
          {"peak_allocated", measured.allocated.peak},
          {"peak_reserved", measured.reserved.peak},
          {"peak_rss", peak_rss},
          {"predicted_peak_allocated", predicted.allocated.peak},
          {"predicted_peak_reserved", predicted.reserved.peak},
          {"by_category", categories(measured)},
          {"predicted_by_category", categories(predicted)},
          {"peak_phase", measured.peak_phase},
          {"predicted_peak_phase", predicted.peak_phase},
          {"host",
           {{"peak_allocated", host_measured.allocated.peak},
            {"peak_reserved", host_measured.reserved.peak},
            {"predicted_peak_allocated", host_predicted.allocated.peak},
            {"predicted_peak_reserved", host_predicted.reserved.peak},
            {"by_category", categories(host_measured)},
            {"predicted_by_category", categories(host_predicted)}}}};
}

int64_t process_peak_rss() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<int64_t>(u.ru_maxrss) * 1024;
}

std::vector<RankMemory> gather_rank_memory(Communicator& world, const RankMemory& mine) {
  std::vector<RankMemory> rows;
  for (const std::string& text : world.all_gather_bytes(mine.to_json().dump())) {
    const nlohmann::json j = nlohmann::json::parse(text);
    RankMemory r;
    r.rank = j.at("rank").get<int>();
    r.peak_rss = j.at("peak_rss").get<int64_t>();
    r.measured = stats_from(j, "peak_allocated", "peak_reserved", "by_category", "peak_phase");
    r.predicted = stats_from(j, "predicted_peak_allocated", "predicted_peak_reserved", "predicted_by_category",
                             "predicted_peak_phase");
    const nlohmann::json& h = j.at("host");
    r.host_measured = stats_from(h, "peak_allocated", "peak_reserved", "by_category", nullptr);
    r.host_predicted = stats_from(h, "predicted_peak_allocated", "predicted_peak_reserved", "predicted_by_category", nullptr);
    rows.push_back(std::move(r));
  }
  return rows;
}

void write_memory_json(const std::filesystem::path& file, const std::vector<RankMemory>& rows) {
  nlohmann::json j = nlohmann::json::array();
  for (const RankMemory& r : rows) j.push_back(r.to_json());
  write_file_atomic(file, j.dump(2) + "\n");
}

}  // namespace lmtune
