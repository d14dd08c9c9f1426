// Byte-level BPE — design note.
//
// What HF tokenizers does to a text, step by step, and how each step is reproduced here:
//  1. Added tokens (added_tokens.h): those with normalized == false are found in the raw text,
//     leftmost-longest; special ones only under SpecialTokens::parse. Each match becomes its
//     id; the stretches between go on.
//  2. The normalizer (none, or NFC/NFD/NFKC/NFKD — Qwen uses NFC) runs on each stretch, then
//     tokens with normalized == true are found in the result.
//  3. The pre-tokenizer: each `Split` regex (PCRE2, unicode_text.h) cuts the stretch into
//     pieces, matches and gaps alike ("Isolated"); `ByteLevel` then spells each byte as one
//     character of GPT-2's 256-character alphabet (and, with use_regex, first splits with
//     GPT-2's own pattern; with add_prefix_space, prepends a space to a stretch that does not
//     start with one).
//  4. The BPE model on each piece ("word"): with ignore_merges (Llama 3) a word that is a
//     vocabulary entry is that entry; otherwise start from one symbol per byte and repeatedly
//     merge the adjacent pair of lowest merge rank (leftmost among equal pairs) until no pair
//     has a rank. Every id is then the token of its symbol.
// Working on raw bytes instead of the alphabet's characters is the same thing (the alphabet is
// a bijection), so the vocabulary and merges are read into byte strings once, at load
// (byte_level_bpe_json.cpp). Merge look-ups go through an open-addressing table.
//
// BPE cost. Words up to kSmallWord bytes (nearly all) use arrays on the stack and a linear
// scan per merge; longer ones a linked list and a binary heap (O(n log n)); both give the
// lowest-rank-then-leftmost order. A word longer than kMaxWordBytes is encoded in windows of
// at most that many bytes (cut at character boundaries), so memory per word is bounded by a
// constant and time is O(n log kMaxWordBytes) whatever the input; below that length (every
// word of ordinary text: a whole line of letters without a space or punctuation would be
// needed) results are exact. Words up to kCacheWordBytes are cached for the length of one
// encode() call (at most kCacheEntries of them), which is what makes prose fast.
//
// Exactness. Encoding runs on any byte string. Invalid UTF-8 bytes never match the regex, so
// they form pieces of their own and encode to their byte tokens; decode (Tokenizer) joins the
// tokens' bytes, so decode(encode(x)) == x for every x. HF itself only takes valid text; for
// valid text every step above is HF's.
#include "trainer/data/byte_level_bpe.h"

#include <algorithm>

#include "trainer/core/error.h"

namespace lmtune {

namespace {

constexpr size_t kSmallWord = 48;
constexpr size_t kCacheWordBytes = 64;
constexpr size_t kCacheEntries = 1 << 17;

}  // namespace

std::pair<int32_t, int32_t> ByteLevelBpe::merge_of(int32_t left, int32_t right) const {
  const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  for (uint64_t h = merge_slot(key, merge_mask_);; h = (h + 1) & merge_mask_) {
    const MergeSlot& slot = merge_table_[h];
    if (slot.key == key) return {slot.rank, slot.merged};
    if (slot.key == ~uint64_t{0}) return {-1, -1};
  }
}

// ---- encoding ----

struct ByteLevelBpe::EncodeState {
  std::vector<int32_t>* ids = nullptr;
  std::vector<uint32_t>* part_of = nullptr;
  // The current chunk (text between added tokens, normalised) and where each part's text
  // starts in it.
  std::string chunk;
  std::vector<std::pair<size_t, uint32_t>> bounds;
  size_t bound_at = 0;
  // Word cache for this call: word -> [offset, offset + count) in cached.
  std::unordered_map<std::string, std::pair<uint32_t, uint32_t>, Hash, std::equal_to<>> cache;
  std::vector<int32_t> cached;
  // Heap BPE scratch.
  struct Sym {
    int32_t id, prev, next;
  };
  struct Cand {
    uint64_t key;  // rank << 32 | left index: lowest first
    int32_t left_id, right_id, right, merged;
  };
  std::vector<Sym> sym;
  std::vector<Cand> heap;
  std::vector<int32_t> word_ids;
};

void ByteLevelBpe::bpe_small(std::string_view word, std::vector<int32_t>& out) const {
  const size_t n = word.size();
  int32_t ids[kSmallWord], rank[kSmallWord], merged[kSmallWord];
  for (size_t k = 0; k < n; ++k) ids[k] = single_byte_[static_cast<uint8_t>(word[k])];
  size_t count = n;
  auto set_pair = [&](size_t k) {
    const auto [r, m] = merge_of(ids[k], ids[k + 1]);
    rank[k] = r;
    merged[k] = m;
  };
  for (size_t k = 0; k + 1 < count; ++k) set_pair(k);
  while (count > 1) {
    size_t best = count;
    for (size_t k = 0; k + 1 < count; ++k)
      if (rank[k] >= 0 && (best == count || rank[k] < rank[best])) best = k;
    if (best == count) break;
    ids[best] = merged[best];
    for (size_t k = best + 1; k + 1 < count; ++k) ids[k] = ids[k + 1];
    for (size_t k = best + 1; k + 2 < count; ++k) {
      rank[k] = rank[k + 1];
      merged[k] = merged[k + 1];
    }
    --count;
    if (best > 0) set_pair(best - 1);
    if (best + 1 < count) set_pair(best);
  }
  out.insert(out.end(), ids, ids + count);
}

void ByteLevelBpe::bpe_heap(std::string_view word, EncodeState& st) const {
  auto& sym = st.sym;
  auto& heap = st.heap;
  sym.clear();
  heap.clear();
  const auto n = static_cast<int32_t>(word.size());
  for (int32_t k = 0; k < n; ++k) sym.push_back({single_byte_[static_cast<uint8_t>(word[k])], k - 1, k + 1 < n ? k + 1 : -1});
  const auto worse = [](const EncodeState::Cand& a, const EncodeState::Cand& b) { return a.key > b.key; };
  auto try_pair = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    const auto [rank, m] = merge_of(sym[l].id, sym[r].id);
    if (rank < 0) return;
    heap.push_back({static_cast<uint64_t>(rank) << 32 | static_cast<uint32_t>(l), sym[l].id, sym[r].id, r, m});
    std::push_heap(heap.begin(), heap.end(), worse);
  };
  for (int32_t k = 0; k + 1 < n; ++k) try_pair(k, k + 1);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), worse);
    const EncodeState::Cand c = heap.back();
    heap.pop_back();
    const auto l = static_cast<int32_t>(c.key & 0xFFFFFFFFu);
    auto& a = sym[l];
    if (a.id < 0 || a.next != c.right || a.id != c.left_id || sym[c.right].id != c.right_id) continue;  // stale
    auto& b = sym[c.right];
    a.id = c.merged;
    a.next = b.next;
    if (b.next >= 0) sym[b.next].prev = l;
    b.id = -1;
    try_pair(a.prev, l);
    try_pair(l, a.next);
  }
  for (int32_t k = n > 0 ? 0 : -1; k >= 0; k = sym[k].next) st.word_ids.push_back(sym[k].id);
}

void ByteLevelBpe::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  EncodeState st;
  st.ids = &out;
  bpe_word(word, st);
}

void ByteLevelBpe::bpe_word(std::string_view word, EncodeState& st) const {
  // Long words: windows of at most kMaxWordBytes, cut at character boundaries.
  if (word.size() > kMaxWordBytes) {
    size_t begin = 0;
    while (begin < word.size()) {
      size_t end = begin;
      while (end < word.size()) {
        const size_t len = utf8_char_len(word, end);
        if (end + len - begin > kMaxWordBytes) break;
        end += len;
      }
      bpe_word(word.substr(begin, end - begin), st);
      begin = end;
    }
    return;
  }
  std::vector<int32_t>& out = *st.ids;
  const bool cacheable = word.size() <= kCacheWordBytes;
  if (cacheable) {
    if (auto it = st.cache.find(word); it != st.cache.end()) {
      out.insert(out.end(), st.cached.begin() + it->second.first,
                 st.cached.begin() + it->second.first + it->second.second);
      return;
    }
  }
  const size_t before = out.size();
  if (ignore_merges_) {
    if (auto it = byte_ids_.find(word); it != byte_ids_.end()) out.push_back(it->second);
  }
  if (out.size() == before) {
    if (word.size() == 1) {
      out.push_back(single_byte_[static_cast<uint8_t>(word[0])]);
    } else if (word.size() <= kSmallWord) {
      bpe_small(word, out);
    } else {
      st.word_ids.clear();
      bpe_heap(word, st);
      out.insert(out.end(), st.word_ids.begin(), st.word_ids.end());
    }
  }
  if (cacheable && st.cache.size() < kCacheEntries) {
    const auto at = static_cast<uint32_t>(st.cached.size());
    st.cached.insert(st.cached.end(), out.begin() + static_cast<std::ptrdiff_t>(before), out.end());
    st.cache.emplace(std::string(word), std::make_pair(at, static_cast<uint32_t>(out.size() - before)));
  }
}

void ByteLevelBpe::encode_pieces(std::string_view text, size_t level, EncodeState& st) const {
  if (level == splits_.size()) {
    const size_t first = st.ids->size();
    bpe_word(text, st);
    if (st.part_of != nullptr) {
      // Each token's first byte, mapped to the part it came from (tokens come in text order).
      size_t at = static_cast<size_t>(text.data() - st.chunk.data());
      for (size_t k = first; k < st.ids->size(); ++k) {
        while (st.bound_at + 1 < st.bounds.size() && st.bounds[st.bound_at + 1].first <= at) ++st.bound_at;
        st.part_of->push_back(st.bounds[st.bound_at].second);
        at += bytes_[(*st.ids)[k]].size();
      }
    }
    return;
  }
  splits_[level].split(text, [&](size_t b, size_t e) { encode_pieces(text.substr(b, e - b), level + 1, st); });
}

void ByteLevelBpe::flush_chunk(EncodeState& st) const {
  if (st.chunk.empty()) return;
  if (add_prefix_space_ && st.chunk[0] != ' ') {
    st.chunk.insert(st.chunk.begin(), ' ');
    for (size_t k = 1; k < st.bounds.size(); ++k) ++st.bounds[k].first;
  }
  st.bound_at = 0;
  encode_pieces(st.chunk, 0, st);
  st.chunk.clear();
  st.bounds.clear();
}

void ByteLevelBpe::encode(std::span<const Part> parts, std::vector<int32_t>& ids, std::vector<uint32_t>* part_of) const {
  EncodeState st;
  st.ids = &ids;
  st.part_of = part_of;
  std::vector<AddedSplit> splits, inner;
  std::string normalized;
  auto emit_token = [&](int32_t id, uint32_t part) {
    flush_chunk(st);
    ids.push_back(id);
    if (part_of != nullptr) part_of->push_back(part);
  };
  auto add_text = [&](std::string_view text, uint32_t part) {
    if (text.empty()) return;
    st.bounds.emplace_back(st.chunk.size(), part);
    st.chunk.append(text);
  };
  for (uint32_t p = 0; p < parts.size(); ++p) {
    const Part& part = parts[p];
    LMTUNE_CHECK(part.text.size() < UINT32_MAX, "encode: text of ", part.text.size(), " bytes is too long (limit 4 GiB)");
    splits.clear();
    if (raw_matcher_.empty()) splits.push_back({0, part.text.size(), -1});
    else raw_matcher_.split(part.text, part.specials, splits);
    for (const AddedSplit& s : splits) {
      if (s.id >= 0) {
        emit_token(s.id, p);
        continue;
      }
      std::string_view text = part.text.substr(s.begin, s.end - s.begin);
      if (normalizer_ && !is_unicode_normalized(*normalizer_, text)) {
        normalized.clear();
        unicode_normalize(*normalizer_, text, normalized);
        text = normalized;
      }
      if (normalized_matcher_.empty()) {
        add_text(text, p);
        continue;
      }
      inner.clear();
      normalized_matcher_.split(text, part.specials, inner);
      for (const AddedSplit& t : inner) {
        if (t.id >= 0) emit_token(t.id, p);
        else add_text(text.substr(t.begin, t.end - t.begin), p);
      }
    }
  }
  flush_chunk(st);
}

}  // namespace lmtune
