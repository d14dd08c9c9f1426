// Added-token matching — design note.
//
// HF tokenizers find added tokens before anything else touches the text: an Aho-Corasick
// automaton with leftmost-longest semantics over the token contents; the stretches between
// matches go on to the normalizer, pre-tokenizer and model, and each match becomes its id.
// Here the same semantics come from a byte trie: scanning left to right, at each position the
// longest token that matches there and passes its conditions wins; if none does, the scan
// moves one byte on. Only positions whose byte starts some token are tried (first_byte_), so
// ordinary text costs one table look-up per byte; a match attempt costs at most the longest
// token's length, so the whole split is O(text * longest token), with no allocation besides
// the output.
//
// Conditions, as HF's AddedVocabulary applies them to the longest match at a position (a
// match that fails them stays text and the scan resumes after it):
//   special + SpecialTokens::literal  -> never matches (the text stays text)
//   single_word  -> no alphanumeric character right before or right after the match
//   lstrip / rstrip -> the match takes the Unicode whitespace before / after it (never
//                      reaching back past the previous split)
#include "trainer/data/added_tokens.h"

#include <algorithm>

#include "trainer/core/error.h"
#include "trainer/data/unicode_text.h"

namespace lmtune {

AddedTokenMatcher::AddedTokenMatcher(const std::vector<AddedToken>& tokens) : tokens_(tokens) {
  nodes_.emplace_back();
  for (size_t t = 0; t < tokens_.size(); ++t) {
    const std::string& s = tokens_[t].content;
    LMTUNE_ASSERT(!s.empty(), "an added token with empty content");
    first_byte_[static_cast<uint8_t>(s[0])] = true;
    int32_t node = 0;
    for (char ch : s) {
      const auto b = static_cast<uint8_t>(ch);
      int32_t next = child(node, b);
      if (next < 0) {
        next = static_cast<int32_t>(nodes_.size());
        nodes_.emplace_back();
        auto& v = nodes_[node].next;
        v.insert(std::lower_bound(v.begin(), v.end(), std::make_pair(b, int32_t{-1})), {b, next});
      }
      node = next;
    }
    if (nodes_[node].token < 0) nodes_[node].token = static_cast<int32_t>(t);  // the first of duplicates wins
  }
}

int32_t AddedTokenMatcher::child(int32_t node, uint8_t b) const {
  const auto& v = nodes_[node].next;
  auto it = std::lower_bound(v.begin(), v.end(), std::make_pair(b, int32_t{-1}));
  return it != v.end() && it->first == b ? it->second : -1;
}

bool AddedTokenMatcher::word_char_before(std::string_view text, size_t i) const {
  if (i == 0) return false;
  const size_t s = utf8_prev_start(text, i);
  return is_unicode_alphanumeric(utf8_decode(text, s, i - s));
}

bool AddedTokenMatcher::word_char_at(std::string_view text, size_t i) const {
  if (i >= text.size()) return false;
  return is_unicode_alphanumeric(utf8_decode(text, i, utf8_char_len(text, i)));
}

void AddedTokenMatcher::split(std::string_view text, SpecialTokens mode, std::vector<AddedSplit>& out) const {
  size_t plain_begin = 0;  // start of the pending plain stretch
  size_t i = 0;
  const size_t n = text.size();
  while (i < n) {
    if (!first_byte_[static_cast<uint8_t>(text[i])]) {
      ++i;
      continue;
    }
    // The longest token starting at i.
    int32_t best = -1;
    size_t best_end = 0;
    int32_t node = 0;
    for (size_t k = i; k < n; ++k) {
      node = child(node, static_cast<uint8_t>(text[k]));
      if (node < 0) break;
      if (nodes_[node].token >= 0) {
        best = nodes_[node].token;
        best_end = k + 1;
      }
    }
    if (best < 0) {
      ++i;
      continue;
    }
    // A match that fails its conditions stays text, and the scan resumes after it (HF drops
    // such a match from its non-overlapping match list; it does not try shorter ones).
    const AddedToken& cand = tokens_[best];
    if ((cand.special && mode == SpecialTokens::literal) ||
        (cand.single_word && (word_char_before(text, i) || word_char_at(text, best_end)))) {
      i = best_end;
      continue;
    }
    const AddedToken& tok = tokens_[best];
    size_t begin = i, end = best_end;
    if (tok.lstrip) {
      while (begin > plain_begin) {
        const size_t s = utf8_prev_start(text, begin);
        if (!is_unicode_white_space(utf8_decode(text, s, begin - s))) break;
        begin = s;
      }
    }
    if (tok.rstrip) {
      while (end < n) {
        const size_t len = utf8_char_len(text, end);
        if (!is_unicode_white_space(utf8_decode(text, end, len))) break;
        end += len;
      }
    }
    if (begin > plain_begin) out.push_back({plain_begin, begin, -1});
    out.push_back({begin, end, tok.id});
    plain_begin = i = end;
  }
  if (plain_begin < n) out.push_back({plain_begin, n, -1});
}

}  // namespace lmtune
