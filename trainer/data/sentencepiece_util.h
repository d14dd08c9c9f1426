// Spelling helpers of SentencePiece vocabularies, shared by the SentencePiece-BPE code
// (sentencepiece_bpe.cpp) and its tokenizer.json writer (tokenizer_hf_json.cpp). Internal.
#pragma once

#include <cstdio>
#include <string>
#include <string_view>

#include "trainer/data/unicode_text.h"

namespace lmtune::sentencepiece {

inline constexpr std::string_view kSpace = "\xE2\x96\x81";         // U+2581 "▁"
inline constexpr std::string_view kUnkSurface = " \xE2\x81\x87 ";  // " ⁇ ", SentencePiece's default

inline std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (true) {
    const size_t j = s.find(from, i);
    if (j == std::string_view::npos) break;
    out.append(s.substr(i, j - i));
    out.append(to);
    i = j + from.size();
  }
  out.append(s.substr(i));
  return out;
}

// Appends bytes as UTF-8, replacing each byte that starts no valid sequence with U+FFFD.
inline void append_utf8_checked(std::string& out, std::string_view bytes) {
  size_t i = 0;
  while (i < bytes.size()) {
    const size_t n = utf8_char_len(bytes, i);
    if (n == 1 && static_cast<uint8_t>(bytes[i]) >= 0x80) out.append("\xEF\xBF\xBD");
    else out.append(bytes.substr(i, n));
    i += n;
  }
}

inline std::string byte_piece(int b) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "<0x%02X>", b);
  return buf;
}

// "<0xNN>" -> NN, or -1.
inline int parse_byte_piece(std::string_view p) {
  if (p.size() != 6 || p.substr(0, 3) != "<0x" || p[5] != '>') return -1;
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  const int hi = hex(p[3]), lo = hex(p[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

}  // namespace lmtune::sentencepiece
