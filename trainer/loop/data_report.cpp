#include "trainer/loop/data_report.h"

namespace lmtune {

namespace {

std::string was(int64_t n) { return std::to_string(n) + (n == 1 ? " was" : " were"); }

std::string split_report(const PackedDataset& ds, const char* split, int64_t seq_len, Packing packing) {
  const PackedDataset::Stats& s = ds.stats();
  if (packing == Packing::on || (s.truncated_examples == 0 && s.dropped_rows == 0)) return {};
  const std::string row = std::to_string(seq_len + 1);
  std::string line = "data: of " + std::to_string(s.examples) + " " + split + " examples, ";
  if (s.truncated_examples > 0)
    line += was(s.truncated_examples) + " longer than data.seq_len + 1 = " + row + " tokens and cut (" +
            std::to_string(s.truncated_tokens) + " tokens left out)";
  if (s.truncated_examples > 0 && s.dropped_rows > 0) line += ", and ";
  if (s.dropped_rows > 0) line += was(s.dropped_rows) + " dropped: no trained token in the first " + row;
  return line + "; raise data.seq_len or set data.packing=true to keep them\n";
}

nlohmann::json split_json(const PackedDataset& ds) {
  const PackedDataset::Stats& s = ds.stats();
  return {{"examples", s.examples},
          {"truncated_examples", s.truncated_examples},
          {"truncated_tokens", s.truncated_tokens},
          {"dropped_rows", s.dropped_rows},
          {"rows", ds.num_rows()}};
}

}  // namespace

std::string data_loss_report(const DataSplit& data, int64_t seq_len, Packing packing) {
  return split_report(data.train, "training", seq_len, packing) +
         split_report(data.validation, "validation", seq_len, packing);
}

nlohmann::json data_stats_json(const DataSplit& data) {
  nlohmann::json j = {{"train", split_json(data.train)}};
  if (data.validation.stats().examples > 0) j["validation"] = split_json(data.validation);
  return j;
}

}  // namespace lmtune
