// Byte-level BPE (GPT-2 style; Llama 3, Qwen 2/2.5/3): HF tokenizer.json with a `BPE` model
// under a `ByteLevel` pre-tokenizer. The model behind Tokenizer for such files; see the design
// notes in byte_level_bpe.cpp (encoding) and byte_level_bpe_json.cpp (what is read).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "trainer/data/added_tokens.h"
#include "trainer/data/unicode_text.h"

namespace lmtune {

// Words (pre-tokenizer pieces, SentencePiece segments) longer than this are encoded in
// consecutive windows of at most this many bytes, cut at character boundaries, so that the
// memory and time one word costs are bounded (see the design notes). Shorter words, which is
// every word of ordinary text, are encoded exactly.
inline constexpr size_t kMaxWordBytes = 16 * 1024;

// The byte <-> character table of GPT-2's byte-level alphabet: bytes 0x21-0x7E, 0xA1-0xAC and
// 0xAE-0xFF stand for themselves (as code points), the other 68 for U+0100 onwards in order.
char32_t byte_level_char(uint8_t b);
// The UTF-8 spelling of a byte string in that alphabet ("\n" -> "Ċ", " the" -> "Ġthe").
std::string byte_level_spelling(std::string_view bytes);

class ByteLevelBpe {
 public:
  // `j` is the whole tokenizer.json; `src` names it in errors. Reads model (vocab, merges,
  // ignore_merges), added_tokens, normalizer, pre_tokenizer; anything it would not reproduce
  // exactly is an error naming the key.
  ByteLevelBpe(const nlohmann::json& j, const std::string& src);

  int32_t vocab_size() const { return static_cast<int32_t>(pieces_.size()); }
  // The vocabulary spelling ("Ġthe"), or an added token's content.
  const std::string& piece(int32_t id) const { return pieces_[id]; }
  // What the token stands for in text: its raw bytes, or an added token's content.
  std::string_view bytes(int32_t id) const { return bytes_[id]; }
  bool is_added(int32_t id) const { return added_[id] != 0; }
  bool is_special(int32_t id) const { return added_[id] == 2; }
  // The id of a vocabulary spelling or added token content; -1 if none.
  int32_t find(std::string_view piece) const;
  // Merges in rank order, as (left id, right id).
  const std::vector<std::pair<int32_t, int32_t>>& merges() const { return merges_; }
  // llama.cpp's name for the pre-tokenizer (tokenizer.ggml.pre): "llama-bpe" for Llama 3's
  // pattern, "qwen2" for Qwen's, "gpt-2" for GPT-2's; empty when it is none of these.
  const std::string& llama_cpp_pre() const { return llama_cpp_pre_; }
  // The post-processor's (TemplateProcessing) first and last special tokens of a single
  // sequence, -1 when it adds none.
  int32_t template_bos() const { return template_bos_; }
  int32_t template_eos() const { return template_eos_; }

  struct Part {
    std::string_view text;
    SpecialTokens specials = SpecialTokens::parse;
  };
  // Encodes the concatenation of `parts` as one text (added tokens matched only inside parts
  // whose `specials` allow it), appending to ids. part_of, when given, receives for each id
  // the index of the part its first byte comes from.
  void encode(std::span<const Part> parts, std::vector<int32_t>& ids, std::vector<uint32_t>* part_of) const;

  // BPE of one word given as raw bytes (no pre-tokenization), appended to out. For tests.
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;

 private:
  struct EncodeState;
  void flush_chunk(EncodeState& st) const;
  void encode_pieces(std::string_view text, size_t level, EncodeState& st) const;
  void bpe_word(std::string_view word, EncodeState& st) const;
  void bpe_small(std::string_view word, std::vector<int32_t>& out) const;
  void bpe_heap(std::string_view word, EncodeState& st) const;
  // (rank, merged id) of a pair, or rank -1.
  std::pair<int32_t, int32_t> merge_of(int32_t left, int32_t right) const;

  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  using IdMap = std::unordered_map<std::string, int32_t, Hash, std::equal_to<>>;

  std::vector<std::string> pieces_;
  std::vector<std::string> bytes_;
  std::vector<uint8_t> added_;          // 0 model token, 1 added, 2 added special
  IdMap piece_ids_;                     // spelling / added content -> id
  IdMap byte_ids_;                      // raw bytes -> id (model tokens only)
  std::array<int32_t, 256> single_byte_{};
  std::vector<std::pair<int32_t, int32_t>> merges_;
  // (left, right) -> (rank, merged): open addressing, linear probing, power-of-two capacity
  // (the hot look-up of encoding; a node-based map costs twice as much).
  struct MergeSlot {
    uint64_t key = ~uint64_t{0};  // left << 32 | right; all ones: empty
    int32_t rank = -1, merged = -1;
  };
  std::vector<MergeSlot> merge_table_;
  uint64_t merge_mask_ = 0;
  static uint64_t merge_slot(uint64_t key, uint64_t mask) { return ((key * 0x9E3779B97F4A7C15ull) >> 20) & mask; }
  bool ignore_merges_ = false;
  AddedTokenMatcher raw_matcher_;         // added tokens with normalized == false
  AddedTokenMatcher normalized_matcher_;  // ... == true (matched after the normalizer)
  std::optional<UnicodeForm> normalizer_;
  std::vector<SplitRegex> splits_;  // applied in order; then ByteLevel (its own regex if use_regex)
  bool add_prefix_space_ = false;
  std::string llama_cpp_pre_;
  int32_t template_bos_ = -1, template_eos_ = -1;
};

}  // namespace lmtune
