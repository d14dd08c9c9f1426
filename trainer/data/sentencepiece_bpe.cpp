// SentencePiece-style BPE (the Tokenizer's Family::sentencepiece) — design note.
//
// Vocabulary: pieces_ holds every id's piece in SentencePiece/HF spelling ("▁" for space,
// "<0xNN>" for the 256 byte-fallback tokens, "<unk>", "<s>", "</s>"), with a kind (normal,
// unknown, control, byte). Only normal pieces are in normal_ids_, the map encode uses, so a
// byte token or a control token is never produced by a lookup or a merge (llama2.c's
// tokenizer.bin stores the byte tokens as the raw bytes, which collide with real pieces such
// as " " or "!"; SentencePiece keeps them apart the same way).
//
// Encoding (exactly SentencePiece's BPE, bpe_model.cc): normalise (prepend "▁" when the
// text is non-empty, every " " -> "▁"); split into UTF-8 characters (a malformed byte is a
// character of its own); each character is a symbol in a doubly linked list over the
// normalised string (a symbol is always a contiguous span of it). Every adjacent pair that
// can merge goes into a max-heap keyed by its priority, ties to the leftmost pair:
//   MergeMode::score (tokenizer.bin): the pair's concatenation must be a normal piece; the
//     priority is that piece's score;
//   MergeMode::rank (tokenizer.json): the (left id, right id) pair must be in merges; the
//     priority is minus its rank.
// Pop the best; skip it if stale (either symbol already merged away or grown — symbols only
// grow, so "both alive, adjacent, lengths add up" proves the entry is current); merge; push
// the two new neighbour pairs. O(n log n). To keep the heap small and reuse work, the text is
// first cut between any two characters whose concatenation occurs inside no normal piece
// (for LLaMA: before each "▁" that follows a non-space): no merged symbol can span such a
// cut, so the segments encode independently with exactly the same result, and repeated
// segments (words) are encoded once per call (at most kCacheEntries of them). A segment longer
// than kMaxWordBytes (a long run of text in which every adjacent pair occurs inside some
// piece — 50 MB of one letter, say) is encoded in windows of at most that many bytes, cut at
// character boundaries, so one word costs bounded memory (a few hundred KiB of scratch) and
// O(n log kMaxWordBytes) time; every segment of ordinary text is far shorter and exact.
// Finally each symbol that is not a piece (a character outside the vocabulary) becomes its
// bytes' <0xNN> tokens, or <unk> where a byte token is missing. In rank mode (HF tokenizers' order) unknown characters become byte
// tokens before merging, as HF does; merges never involve them in practice.
//
// Decoding (Tokenizer::decode): "▁" -> " "; runs of byte tokens are joined and emitted as
// UTF-8 (malformed sequences become U+FFFD, as SentencePiece does); control tokens produce
// nothing; the one leading space of the dummy prefix is dropped at the start of the sequence.
#include "trainer/data/tokenizer.h"

#include <algorithm>
#include <cstring>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "trainer/core/error.h"
#include "trainer/data/byte_level_bpe.h"
#include "trainer/data/sentencepiece_util.h"
#include "trainer/io/file_util.h"

namespace lmtune {

using namespace sentencepiece;
using nlohmann::json;

namespace {

constexpr size_t kCacheSegmentBytes = 64;
constexpr size_t kCacheEntries = 1 << 17;

// Does a tokenizer.bin piece stand for byte b? llama2.c files hold it as the raw byte, as
// the UTF-8 of code point b (Meta's export), or as "<0xNN>" (sentencepiece export).
bool is_llama2c_byte_piece(std::string_view p, int b) {
  if (parse_byte_piece(p) == b) return true;
  if (p.size() == 1 && static_cast<uint8_t>(p[0]) == b) return true;
  if (b >= 0x80 && p.size() == 2 && static_cast<uint8_t>(p[0]) == (0xC0 | (b >> 6)) &&
      static_cast<uint8_t>(p[1]) == (0x80 | (b & 0x3F)))
    return true;
  return false;
}

template <typename T>
T read_le(const std::string& s, size_t off) {
  T v;
  std::memcpy(&v, s.data() + off, sizeof(T));
  return v;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Loading

Tokenizer Tokenizer::from_llama2c(const std::filesystem::path& path, int64_t vocab_size) {
  const std::string src = "tokenizer.bin " + path.string();
  LMTUNE_CHECK(std::filesystem::exists(path), src, ": file not found");
  const std::string data = read_file_to_string(path, "tokenizer.bin");
  LMTUNE_CHECK(data.size() >= 4, src, ": truncated: ", data.size(), " bytes, too short for the header");
  const int32_t max_len = read_le<int32_t>(data, 0);
  LMTUNE_CHECK(max_len > 0, src, ": max_token_length ", max_len, " is not positive (not a llama2.c tokenizer?)");
  Tokenizer t;
  size_t off = 4;
  std::vector<std::string> raw;
  while (vocab_size < 0 ? off < data.size() : static_cast<int64_t>(raw.size()) < vocab_size) {
    const size_t i = raw.size();
    LMTUNE_CHECK(off + 8 <= data.size(), src, ": truncated at token ", i,
                 vocab_size >= 0 ? " of " + std::to_string(vocab_size) : std::string(), " (offset ", off,
                 ", file is ", data.size(), " bytes)");
    const float score = read_le<float>(data, off);
    const int32_t len = read_le<int32_t>(data, off + 4);
    off += 8;
    LMTUNE_CHECK(len >= 0, src, ": token ", i, " has negative length ", len);
    LMTUNE_CHECK(static_cast<size_t>(len) <= data.size() - off, src, ": truncated at token ", i,
                 vocab_size >= 0 ? " of " + std::to_string(vocab_size) : std::string(), " (length ", len,
                 " at offset ", off, " runs past the end of the file, ", data.size(), " bytes)");
    raw.emplace_back(data.data() + off, static_cast<size_t>(len));
    t.scores_.push_back(score);
    off += static_cast<size_t>(len);
  }
  LMTUNE_CHECK(off == data.size(), src, ": ", data.size() - off, " bytes left after the ", raw.size(),
               " tokens of the vocabulary (does vocab_size match the model?)");
  LMTUNE_CHECK(raw.size() >= 259, src, ": only ", raw.size(),
               " tokens; a llama2.c vocabulary has <unk>, <s>, </s> and 256 byte tokens first");
  const size_t n = raw.size();
  t.pieces_.resize(n);
  t.kinds_.assign(n, PieceKind::normal);
  t.pieces_[0] = "<unk>";
  t.kinds_[0] = PieceKind::unknown;
  t.pieces_[1] = "<s>";
  t.kinds_[1] = PieceKind::control;
  t.pieces_[2] = "</s>";
  t.kinds_[2] = PieceKind::control;
  for (int b = 0; b < 256; ++b) {
    LMTUNE_CHECK(is_llama2c_byte_piece(raw[3 + b], b), src, ": token ", 3 + b,
                 " should be the byte-fallback token for byte ", b, " but is '", raw[3 + b], "'");
    t.pieces_[3 + b] = byte_piece(b);
    t.kinds_[3 + b] = PieceKind::byte;
  }
  for (size_t i = 259; i < n; ++i) t.pieces_[i] = replace_all(raw[i], " ", kSpace);
  t.mode_ = MergeMode::score;
  t.add_dummy_prefix_ = true;
  t.finish_vocab(src);
  return t;
}

Tokenizer Tokenizer::from_sentencepiece_json(const json& j, const std::string& src) {
  const json& m = j["model"];
  LMTUNE_CHECK(m.contains("vocab") && m["vocab"].is_object(), src, ": model.vocab is missing or not an object");

  std::vector<std::pair<std::string, int64_t>> entries;
  for (const auto& [piece, id] : m["vocab"].items()) {
    LMTUNE_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0, src, ": model.vocab['", piece,
                 "'] is not a non-negative integer id");
    entries.emplace_back(piece, id.get<int64_t>());
  }
  struct Added {
    std::string content;
    int64_t id;
    bool special;
  };
  std::vector<Added> added;
  if (j.contains("added_tokens") && j["added_tokens"].is_array()) {
    for (const auto& a : j["added_tokens"]) {
      LMTUNE_CHECK(a.is_object() && a.contains("id") && a["id"].is_number_integer() && a.contains("content") &&
                       a["content"].is_string(),
                   src, ": added_tokens entry ", a.dump(), " needs an integer 'id' and a string 'content'");
      added.push_back({a["content"].get<std::string>(), a["id"].get<int64_t>(),
                       a.value("special", false)});
      LMTUNE_CHECK(added.back().id >= 0, src, ": added token '", added.back().content, "' has a negative id");
    }
  }
  int64_t n = 0;
  for (const auto& e : entries) n = std::max(n, e.second + 1);
  for (const auto& a : added) n = std::max(n, a.id + 1);
  LMTUNE_CHECK(n > 0 && n < (int64_t{1} << 31), src, ": vocabulary size ", n, " is out of range");
  Tokenizer t;
  t.pieces_.resize(static_cast<size_t>(n));
  t.kinds_.assign(static_cast<size_t>(n), PieceKind::normal);
  t.scores_.assign(static_cast<size_t>(n), 0.0f);
  std::vector<char> seen(static_cast<size_t>(n), 0);
  for (const auto& [piece, id] : entries) {
    LMTUNE_CHECK(!seen[id], src, ": id ", id, " is given to both '", t.pieces_[id], "' and '", piece, "'");
    seen[id] = 1;
    t.pieces_[id] = piece;
    if (parse_byte_piece(piece) >= 0) t.kinds_[id] = PieceKind::byte;
  }
  for (const auto& a : added) {
    LMTUNE_CHECK(!seen[a.id] || t.pieces_[a.id] == a.content, src, ": added token '", a.content, "' has id ", a.id,
                 " which the vocabulary gives to '", t.pieces_[a.id], "'");
    seen[a.id] = 1;
    t.pieces_[a.id] = a.content;
    if (a.special) t.kinds_[a.id] = PieceKind::control;
  }
  for (int64_t i = 0; i < n; ++i) LMTUNE_CHECK(seen[i], src, ": no token has id ", i, " (ids must be 0..", n - 1, ")");
  if (m.contains("unk_token") && m["unk_token"].is_string()) {
    const std::string unk = m["unk_token"].get<std::string>();
    for (int64_t i = 0; i < n; ++i)
      if (t.pieces_[i] == unk) {
        t.kinds_[i] = PieceKind::unknown;
        break;
      }
  }

  // Merges: "a b" strings (tokenizers < 0.20) or ["a", "b"] pairs.
  PieceMap all_ids;
  for (int64_t i = 0; i < n; ++i) all_ids.emplace(t.pieces_[i], static_cast<int32_t>(i));
  LMTUNE_CHECK(m.contains("merges") && m["merges"].is_array(), src, ": model.merges is missing or not an array");
  const json& merges = m["merges"];
  for (size_t r = 0; r < merges.size(); ++r) {
    const json& mg = merges[r];
    std::string a, b;
    if (mg.is_string()) {
      const std::string s = mg.get<std::string>();
      const size_t sp = s.find(' ');
      LMTUNE_CHECK(sp != std::string::npos && s.find(' ', sp + 1) == std::string::npos, src, ": merge ", r, " '", s,
                   "' is not two pieces separated by one space");
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (mg.is_array() && mg.size() == 2 && mg[0].is_string() && mg[1].is_string()) {
      a = mg[0].get<std::string>();
      b = mg[1].get<std::string>();
    } else {
      LMTUNE_THROW(src, ": merge ", r, " ", mg.dump(), " is neither \"a b\" nor [\"a\", \"b\"]");
    }
    auto ia = all_ids.find(a), ib = all_ids.find(b), im = all_ids.find(a + b);
    LMTUNE_CHECK(ia != all_ids.end() && ib != all_ids.end(), src, ": merge ", r, " ('", a, "', '", b,
                 "') uses a piece that is not in the vocabulary");
    LMTUNE_CHECK(im != all_ids.end(), src, ": merge ", r, " ('", a, "', '", b, "') makes '", a + b,
                 "' which is not in the vocabulary");
    const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(ia->second)) << 32) |
                         static_cast<uint32_t>(ib->second);
    t.merges_.emplace_back(ia->second, ib->second);
    if (t.merge_ranks_.emplace(key, std::make_pair(static_cast<int32_t>(r), im->second)).second &&
        t.scores_[im->second] == 0.0f)
      t.scores_[im->second] = -static_cast<float>(r + 1);
  }

  // The dummy prefix: a Prepend("▁") normaliser, or a Metaspace pre-tokenizer that adds one.
  bool prefix = false;
  auto scan_normalizer = [&](const json& nz, auto& self) -> void {
    if (!nz.is_object()) return;
    const std::string ty = nz.value("type", "");
    if (ty == "Prepend" && nz.value("prepend", "") == kSpace) prefix = true;
    if (ty == "Sequence" && nz.contains("normalizers"))
      for (const auto& x : nz["normalizers"]) self(x, self);
  };
  if (j.contains("normalizer")) scan_normalizer(j["normalizer"], scan_normalizer);
  auto scan_pre = [&](const json& pt, auto& self) -> void {
    if (!pt.is_object()) return;
    const std::string ty = pt.value("type", "");
    if (ty == "Metaspace") {
      if (pt.contains("prepend_scheme") && pt["prepend_scheme"].is_string())
        prefix = prefix || pt["prepend_scheme"].get<std::string>() != "never";
      else
        prefix = prefix || pt.value("add_prefix_space", true);
    }
    if (ty == "Sequence" && pt.contains("pretokenizers"))
      for (const auto& x : pt["pretokenizers"]) self(x, self);
  };
  if (j.contains("pre_tokenizer")) scan_pre(j["pre_tokenizer"], scan_pre);
  t.add_dummy_prefix_ = prefix;
  t.mode_ = MergeMode::rank;
  t.finish_vocab(src);
  return t;
}

void Tokenizer::finish_vocab(const std::string& src) {
  byte_ids_.fill(-1);
  normal_ids_.clear();
  bos_id_ = eos_id_ = unk_id_ = -1;
  const auto n = static_cast<int32_t>(pieces_.size());
  for (int32_t i = 0; i < n; ++i) {
    switch (kinds_[i]) {
      case PieceKind::normal: normal_ids_.emplace(pieces_[i], i); break;  // first id wins
      case PieceKind::byte: {
        const int b = parse_byte_piece(pieces_[i]);
        if (byte_ids_[b] < 0) byte_ids_[b] = i;
        break;
      }
      case PieceKind::unknown:
        if (unk_id_ < 0) unk_id_ = i;
        break;
      case PieceKind::control:
        if (pieces_[i] == "<s>" && bos_id_ < 0) bos_id_ = i;
        if (pieces_[i] == "</s>" && eos_id_ < 0) eos_id_ = i;
        break;
      case PieceKind::user_defined:
        break;
    }
  }
  // Adjacent-character pairs inside normal pieces (see encode). Segmenting is exact when
  // every merge result is a normal piece spelled as its parts' text: always in score mode;
  // in rank mode unless some merge involves a byte, control or unknown token.
  bigrams_.clear();
  for (int32_t i = 0; i < n; ++i) {
    if (kinds_[i] != PieceKind::normal) continue;
    const std::string_view p = pieces_[i];
    size_t a = 0;
    if (p.empty()) continue;
    size_t b = utf8_char_len(p, 0);
    while (b < p.size()) {
      const size_t len = utf8_char_len(p, b);
      bigrams_.emplace(p.substr(a, b + len - a));
      a = b;
      b += len;
    }
  }
  segmentable_ = true;
  if (mode_ == MergeMode::rank)
    for (const auto& [l, r] : merges_)
      if (kinds_[l] != PieceKind::normal || kinds_[r] != PieceKind::normal) segmentable_ = false;
  for (const auto& [key, rank_merged] : merge_ranks_)
    if (kinds_[rank_merged.second] != PieceKind::normal) segmentable_ = false;

  int missing = 0;
  for (int b = 0; b < 256; ++b) missing += byte_ids_[b] < 0;
  LMTUNE_CHECK(missing == 0 || unk_id_ >= 0, src, ": ", missing,
               " byte-fallback tokens <0xNN> are missing and there is no <unk> token to stand in for them");
}

// ---------------------------------------------------------------------------------------
// Encoding

namespace {

struct Symbol {
  uint32_t begin, len;
  int32_t id;  // -1: a character outside the vocabulary (score mode)
  int32_t prev, next;
};

struct Cand {
  double priority;
  uint32_t begin;
  uint32_t len;
  int32_t left, right, merged;
};

struct CandWorse {
  bool operator()(const Cand& a, const Cand& b) const {
    return a.priority != b.priority ? a.priority < b.priority : a.begin > b.begin;
  }
};

}  // namespace

// Scratch buffers reused across the segments of one encode() call.
struct Tokenizer::EncodeScratch {
  std::vector<Symbol> sym;
  std::vector<Cand> heap;
};

void Tokenizer::encode_segment(std::string_view ns, EncodeScratch& scratch, std::vector<int32_t>& out) const {
  std::vector<Symbol>& sym = scratch.sym;
  std::vector<Cand>& heap = scratch.heap;
  sym.clear();
  heap.clear();
  for (size_t i = 0; i < ns.size();) {
    const size_t len = utf8_char_len(ns, i);
    auto it = normal_ids_.find(ns.substr(i, len));
    const int32_t id = it == normal_ids_.end() ? -1 : it->second;
    if (id < 0 && mode_ == MergeMode::rank) {
      for (size_t k = 0; k < len; ++k) {
        const int32_t bid = byte_ids_[static_cast<uint8_t>(ns[i + k])];
        sym.push_back({static_cast<uint32_t>(i + k), 1, bid >= 0 ? bid : unk_id_, 0, 0});
      }
    } else {
      sym.push_back({static_cast<uint32_t>(i), static_cast<uint32_t>(len), id, 0, 0});
    }
    i += len;
  }
  const auto count = static_cast<int32_t>(sym.size());
  for (int32_t k = 0; k < count; ++k) {
    sym[k].prev = k - 1;
    sym[k].next = k + 1 < count ? k + 1 : -1;
  }

  const CandWorse worse;
  auto try_pair = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    const Symbol& a = sym[l];
    const Symbol& b = sym[r];
    if (mode_ == MergeMode::score) {
      auto it = normal_ids_.find(ns.substr(a.begin, a.len + b.len));
      if (it == normal_ids_.end()) return;
      heap.push_back({scores_[it->second], a.begin, a.len + b.len, l, r, it->second});
    } else {
      if (a.id < 0 || b.id < 0) return;
      const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(a.id)) << 32) | static_cast<uint32_t>(b.id);
      auto it = merge_ranks_.find(key);
      if (it == merge_ranks_.end()) return;
      heap.push_back({-static_cast<double>(it->second.first), a.begin, a.len + b.len, l, r, it->second.second});
    }
    std::push_heap(heap.begin(), heap.end(), worse);
  };
  for (int32_t k = 0; k + 1 < count; ++k) try_pair(k, k + 1);

  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), worse);
    const Cand c = heap.back();
    heap.pop_back();
    Symbol& a = sym[c.left];
    Symbol& b = sym[c.right];
    if (a.len == 0 || b.len == 0 || a.next != c.right || a.len + b.len != c.len) continue;  // stale
    a.len += b.len;
    a.id = c.merged;
    a.next = b.next;
    if (b.next >= 0) sym[b.next].prev = c.left;
    b.len = 0;
    try_pair(a.prev, c.left);
    try_pair(c.left, a.next);
  }

  for (int32_t k = count > 0 ? 0 : -1; k >= 0; k = sym[k].next) {
    const Symbol& sy = sym[k];
    if (sy.id >= 0) {
      out.push_back(sy.id);
      continue;
    }
    for (uint32_t q = 0; q < sy.len; ++q) {
      const int32_t bid = byte_ids_[static_cast<uint8_t>(ns[sy.begin + q])];
      if (bid >= 0) {
        out.push_back(bid);
      } else {
        out.push_back(unk_id_);
        break;  // fuse_unk: one <unk> for the character
      }
    }
  }
}

void Tokenizer::encode_sentencepiece(std::string_view text, std::vector<int32_t>& out) const {
  if (!text.empty()) {
    // Normalise.
    std::string norm;
    norm.reserve(text.size() + text.size() / 4 + 3);
    if (add_dummy_prefix_) norm.append(kSpace);
    for (char c : text) {
      if (c == ' ') norm.append(kSpace);
      else norm.push_back(c);
    }
    LMTUNE_CHECK(norm.size() < UINT32_MAX, "encode: text of ", text.size(), " bytes is too long (limit 4 GiB)");
    const std::string_view ns(norm);
    out.reserve(out.size() + norm.size() / 3 + 2);

    // Cut the text between two characters whose concatenation occurs in no piece: no
    // merged symbol can ever span such a cut, so the segments encode independently (and
    // identical segments identically — they are cached for this call).
    EncodeScratch scratch;
    std::unordered_map<std::string_view, std::pair<size_t, size_t>> cache;  // segment -> range in out
    auto emit = [&](std::string_view seg) {
      if (auto it = cache.find(seg); it != cache.end()) {
        for (size_t k = 0; k < it->second.second; ++k) out.push_back(out[it->second.first + k]);
        return;
      }
      const size_t before = out.size();
      // A long segment: windows of at most kMaxWordBytes, cut at character boundaries.
      for (size_t w = 0; w < seg.size();) {
        size_t end = w;
        while (end < seg.size() && end + utf8_char_len(seg, end) - w <= kMaxWordBytes) end += utf8_char_len(seg, end);
        encode_segment(seg.substr(w, end - w), scratch, out);
        w = end;
      }
      if (seg.size() <= kCacheSegmentBytes && cache.size() < kCacheEntries)
        cache.emplace(seg, std::make_pair(before, out.size() - before));
    };
    if (!segmentable_) {
      emit(ns);
    } else {
      size_t seg_begin = 0, prev_char = 0;
      size_t i = utf8_char_len(ns, 0);
      while (i < ns.size()) {
        const size_t len = utf8_char_len(ns, i);
        if (!bigrams_.count(ns.substr(prev_char, i + len - prev_char))) {
          emit(ns.substr(seg_begin, i - seg_begin));
          seg_begin = i;
        }
        prev_char = i;
        i += len;
      }
      emit(ns.substr(seg_begin));
    }
  }
}


}  // namespace lmtune
