#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace lmtune {

// Levenshtein distance (for "did you mean" suggestions).
size_t edit_distance(std::string_view a, std::string_view b);
// The candidate closest to `word`, or "" when none is plausibly a typo of it.
std::string closest_match(std::string_view word, const std::vector<std::string>& candidates);
// "1.23 MiB" style.
std::string format_bytes(int64_t bytes);

}  // namespace lmtune
