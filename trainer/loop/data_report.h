// What the data pipeline left out, said once at the start of a run and written to the
// metrics: with data.packing=false every example longer than seq_len + 1 tokens is cut, and
// one whose trained tokens (an Alpaca response, an assistant turn) all lie past the cut is
// dropped. Packed data loses nothing.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "trainer/data/dataset.h"

namespace lmtune {

// One line (ending in '\n') per split that lost examples or tokens under Packing::off; ""
// when none did.
std::string data_loss_report(const DataSplit& data, int64_t seq_len, Packing packing);
// {"examples", "truncated_examples", "truncated_tokens", "dropped_rows", "rows"} per split
// ("train", and "validation" when there is validation data); without packing a row is an
// example, so dropped_rows counts the examples dropped.
nlohmann::json data_stats_json(const DataSplit& data);

}  // namespace lmtune
