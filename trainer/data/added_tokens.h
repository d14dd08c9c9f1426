// The `added_tokens` of an HF tokenizer.json (special tokens such as <|eot_id|> and
// <|im_start|>, and plain added tokens such as Qwen's <think>), found in text before it is
// pre-tokenized, as HF tokenizers find them. See added_tokens.cpp.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace lmtune {

// Whether text that spells a special token becomes that token.
enum class SpecialTokens {
  parse,    // yes: HF tokenizers' default ("<|eot_id|>" in text -> id 128009)
  literal,  // no: spelled out as ordinary text (HF's split_special_tokens=True; tiktoken with
            // no special tokens allowed), so data cannot inject control tokens
};

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;      // a control token; not matched under SpecialTokens::literal
  bool lstrip = false;       // the match takes the whitespace before it
  bool rstrip = false;       // ... and after it
  bool single_word = false;  // matches only where no word character touches it
  bool normalized = false;   // matched in normalised text (after the normalizer), not raw text
};

// One stretch of a split: plain text [begin, end) when id < 0, else an added token whose
// match (with any whitespace lstrip/rstrip took) covers [begin, end).
struct AddedSplit {
  size_t begin = 0, end = 0;
  int32_t id = -1;
};

// Leftmost-longest matching of a set of added tokens (a byte trie), as HF's
// AddedVocabulary does with its Aho-Corasick automaton.
class AddedTokenMatcher {
 public:
  AddedTokenMatcher() = default;
  explicit AddedTokenMatcher(const std::vector<AddedToken>& tokens);

  bool empty() const { return tokens_.empty(); }
  // Appends the splits of text to out (they tile it; plain stretches are never empty).
  void split(std::string_view text, SpecialTokens mode, std::vector<AddedSplit>& out) const;

 private:
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> next;  // sorted by byte
    int32_t token = -1;                             // index into tokens_ when a token ends here
  };
  int32_t child(int32_t node, uint8_t b) const;
  bool word_char_before(std::string_view text, size_t i) const;
  bool word_char_at(std::string_view text, size_t i) const;

  std::vector<AddedToken> tokens_;
  std::vector<Node> nodes_;
  bool first_byte_[256] = {};
};

}  // namespace lmtune
