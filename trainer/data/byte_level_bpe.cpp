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
// a bijection), so the vocabulary and merges are read into byte strings once, at load.
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
#include <cstring>

#include <nlohmann/json.hpp>

#include "trainer/core/error.h"

namespace lmtune {

namespace {

using nlohmann::json;

constexpr size_t kSmallWord = 48;
constexpr size_t kCacheWordBytes = 64;
constexpr size_t kCacheEntries = 1 << 17;

// The patterns llama.cpp knows by name (tokenizer.ggml.pre), as tokenizer.json spells them.
constexpr std::string_view kLlama3Pattern =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
constexpr std::string_view kQwen2Pattern =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
// GPT-2's pattern, which ByteLevel applies itself when use_regex is true.
constexpr std::string_view kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

struct ByteTable {
  std::array<char32_t, 256> to_char{};
  std::array<int16_t, 324> to_byte{};  // code point (< 256 + 68) -> byte, -1 if none
  ByteTable() {
    to_byte.fill(-1);
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool self = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_char[b] = self ? static_cast<char32_t>(b) : next++;
      to_byte[to_char[b]] = static_cast<int16_t>(b);
    }
  }
};

const ByteTable& byte_table() {
  static const ByteTable t;
  return t;
}

// The raw bytes a vocabulary spelling stands for, or nullopt when a character is outside the
// byte-level alphabet.
std::optional<std::string> bytes_of_spelling(std::string_view s) {
  const ByteTable& t = byte_table();
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const size_t len = utf8_char_len(s, i);
    const char32_t c = utf8_decode(s, i, len);
    if ((len == 1 && static_cast<uint8_t>(s[i]) >= 0x80) || c >= t.to_byte.size() || t.to_byte[c] < 0)
      return std::nullopt;
    out.push_back(static_cast<char>(t.to_byte[c]));
    i += len;
  }
  return out;
}

uint64_t slot_of(uint64_t key, uint64_t mask) { return ((key * 0x9E3779B97F4A7C15ull) >> 20) & mask; }

std::string type_of(const json& j) { return j.is_object() && j.contains("type") && j["type"].is_string() ? j["type"].get<std::string>() : "(none)"; }

bool bool_field(const json& j, const char* key, bool fallback) {
  auto it = j.find(key);
  return it != j.end() && it->is_boolean() ? it->get<bool>() : fallback;
}

// A regex source for a Split pattern: {"Regex": "..."} as it is, {"String": "..."} quoted.
std::string split_pattern(const json& pt, const std::string& where) {
  LMTUNE_CHECK(pt.contains("pattern") && pt["pattern"].is_object(), where, ": Split has no 'pattern' object");
  const json& p = pt["pattern"];
  if (p.contains("Regex") && p["Regex"].is_string()) return p["Regex"].get<std::string>();
  if (p.contains("String") && p["String"].is_string()) {
    std::string lit = p["String"].get<std::string>();
    std::string out;
    for (char c : lit) {  // escape every ASCII punctuation character; the rest is literal
      if (std::strchr("\\^$.|?*+()[]{}-/", c) != nullptr) out.push_back('\\');
      out.push_back(c);
    }
    return out;
  }
  LMTUNE_THROW(where, ": Split pattern ", p.dump(), " is neither {\"Regex\": ...} nor {\"String\": ...}");
}

}  // namespace

char32_t byte_level_char(uint8_t b) { return byte_table().to_char[b]; }

std::string byte_level_spelling(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) append_utf8(out, byte_level_char(static_cast<uint8_t>(c)));
  return out;
}

// ---- loading ----

ByteLevelBpe::ByteLevelBpe(const json& j, const std::string& src) {
  const json& m = j["model"];
  LMTUNE_CHECK(!bool_field(m, "byte_fallback", false), src,
               ": model.byte_fallback is true under a ByteLevel pre-tokenizer, which lmtune does not support");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    auto it = m.find(key);
    LMTUNE_CHECK(it == m.end() || it->is_null() || (it->is_string() && it->get<std::string>().empty()), src,
                 ": model.", key, " ", it->dump(), " is not supported (byte-level BPE has none)");
  }
  if (auto it = m.find("dropout"); it != m.end() && !it->is_null()) {
    LMTUNE_CHECK(it->is_number() && it->get<double>() == 0.0, src, ": model.dropout ", it->dump(),
                 " is not supported (BPE dropout makes encoding random)");
  }
  ignore_merges_ = bool_field(m, "ignore_merges", false);

  // Vocabulary and added tokens.
  LMTUNE_CHECK(m.contains("vocab") && m["vocab"].is_object(), src, ": model.vocab is missing or not an object");
  int64_t n = 0;
  for (const auto& [piece, id] : m["vocab"].items()) {
    LMTUNE_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0 && id.get<int64_t>() < (int64_t{1} << 30), src,
                 ": model.vocab['", piece, "'] is not a valid id: ", id.dump());
    n = std::max(n, id.get<int64_t>() + 1);
  }
  std::vector<AddedToken> added;
  if (auto it = j.find("added_tokens"); it != j.end() && !it->is_null()) {
    LMTUNE_CHECK(it->is_array(), src, ": added_tokens is not an array");
    for (size_t k = 0; k < it->size(); ++k) {
      const json& a = (*it)[k];
      const std::string where = src + ": added_tokens[" + std::to_string(k) + "]";
      LMTUNE_CHECK(a.is_object() && a.contains("id") && a["id"].is_number_integer() && a.contains("content") &&
                       a["content"].is_string(),
                   where, " needs an integer 'id' and a string 'content'");
      AddedToken t;
      const int64_t id = a["id"].get<int64_t>();
      LMTUNE_CHECK(id >= 0 && id < (1 << 30), where, ": id ", id, " is out of range");
      t.id = static_cast<int32_t>(id);
      t.content = a["content"].get<std::string>();
      LMTUNE_CHECK(!t.content.empty(), where, ": empty content");
      t.special = bool_field(a, "special", false);
      t.lstrip = bool_field(a, "lstrip", false);
      t.rstrip = bool_field(a, "rstrip", false);
      t.single_word = bool_field(a, "single_word", false);
      t.normalized = bool_field(a, "normalized", !t.special);
      n = std::max<int64_t>(n, t.id + 1);
      added.push_back(std::move(t));
    }
  }
  pieces_.assign(static_cast<size_t>(n), std::string());
  bytes_.assign(static_cast<size_t>(n), std::string());
  added_.assign(static_cast<size_t>(n), 0);
  std::vector<uint8_t> seen(static_cast<size_t>(n), 0);
  piece_ids_.reserve(static_cast<size_t>(n));
  byte_ids_.reserve(static_cast<size_t>(n));
  for (const auto& [piece, idj] : m["vocab"].items()) {
    const auto id = idj.get<int32_t>();
    LMTUNE_CHECK(!seen[id], src, ": id ", id, " is given to both '", pieces_[id], "' and '", piece, "'");
    seen[id] = 1;
    auto b = bytes_of_spelling(piece);
    LMTUNE_CHECK(b.has_value(), src, ": vocabulary entry '", piece, "' (id ", id,
                 ") is not spelled in the byte-level alphabet");
    pieces_[id] = piece;
    bytes_[id] = std::move(*b);
    piece_ids_.emplace(piece, id);
    byte_ids_.emplace(bytes_[id], id);
  }
  for (const AddedToken& t : added) {
    LMTUNE_CHECK(!seen[t.id] || added_[t.id] != 0 || pieces_[t.id] == t.content || bytes_[t.id] == t.content, src,
                 ": added token '", t.content, "' has id ", t.id, " which the vocabulary gives to '", pieces_[t.id], "'");
    seen[t.id] = 1;
    pieces_[t.id] = t.content;
    bytes_[t.id] = t.content;
    added_[t.id] = t.special ? 2 : 1;
    piece_ids_[t.content] = t.id;
  }
  for (int64_t i = 0; i < n; ++i)
    LMTUNE_CHECK(seen[i], src, ": no token has id ", i, " (ids must be 0..", n - 1, ")");
  single_byte_.fill(-1);
  for (int b = 0; b < 256; ++b) {
    auto it = byte_ids_.find(std::string(1, static_cast<char>(b)));
    LMTUNE_CHECK(it != byte_ids_.end(), src, ": the vocabulary has no token for byte 0x", std::hex, b, std::dec, " ('",
                 byte_level_spelling(std::string(1, static_cast<char>(b))),
                 "'), so some text could not be encoded; a byte-level vocabulary has all 256");
    single_byte_[b] = it->second;
  }
  std::vector<AddedToken> raw, normalized;
  for (const AddedToken& t : added) (t.normalized ? normalized : raw).push_back(t);
  raw_matcher_ = AddedTokenMatcher(raw);
  normalized_matcher_ = AddedTokenMatcher(normalized);

  // Merges: "a b" strings or ["a", "b"] pairs, in rank order.
  LMTUNE_CHECK(m.contains("merges") && m["merges"].is_array(), src, ": model.merges is missing or not an array");
  const json& merges = m["merges"];
  merges_.reserve(merges.size());
  size_t capacity = 16;
  while (capacity < 2 * merges.size()) capacity *= 2;
  merge_table_.assign(capacity, MergeSlot{});
  merge_mask_ = capacity - 1;
  std::string joined;
  for (size_t r = 0; r < merges.size(); ++r) {
    const json& mg = merges[r];
    std::string_view a, b;
    if (mg.is_string()) {
      const std::string& s = mg.get_ref<const std::string&>();
      const size_t sp = s.find(' ');
      LMTUNE_CHECK(sp != std::string::npos && s.find(' ', sp + 1) == std::string::npos, src, ": merge ", r, " '", s,
                   "' is not two pieces separated by one space");
      a = std::string_view(s).substr(0, sp);
      b = std::string_view(s).substr(sp + 1);
    } else if (mg.is_array() && mg.size() == 2 && mg[0].is_string() && mg[1].is_string()) {
      a = mg[0].get_ref<const std::string&>();
      b = mg[1].get_ref<const std::string&>();
    } else {
      LMTUNE_THROW(src, ": merge ", r, " ", mg.dump(), " is neither \"a b\" nor [\"a\", \"b\"]");
    }
    auto ia = piece_ids_.find(a), ib = piece_ids_.find(b);
    LMTUNE_CHECK(ia != piece_ids_.end() && ib != piece_ids_.end(), src, ": merge ", r, " ('", a, "', '", b,
                 "') uses a piece that is not in the vocabulary");
    joined.assign(a).append(b);
    auto im = piece_ids_.find(joined);
    LMTUNE_CHECK(im != piece_ids_.end(), src, ": merge ", r, " ('", a, "', '", b, "') makes '", joined,
                 "' which is not in the vocabulary");
    const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(ia->second)) << 32) | static_cast<uint32_t>(ib->second);
    merges_.emplace_back(ia->second, ib->second);
    for (uint64_t h = slot_of(key, merge_mask_);; h = (h + 1) & merge_mask_) {
      MergeSlot& slot = merge_table_[h];
      if (slot.key == key) break;  // a repeated merge: the first rank stands
      if (slot.key == ~uint64_t{0}) {
        slot = {key, static_cast<int32_t>(r), im->second};
        break;
      }
    }
  }

  // Normalizer.
  auto form_of = [&](const json& nz) -> std::optional<UnicodeForm> {
    const std::string t = type_of(nz);
    if (t == "NFC") return UnicodeForm::nfc;
    if (t == "NFD") return UnicodeForm::nfd;
    if (t == "NFKC") return UnicodeForm::nfkc;
    if (t == "NFKD") return UnicodeForm::nfkd;
    LMTUNE_THROW(src, ": normalizer '", t, "' is not supported with a byte-level BPE model (lmtune reads none, NFC, ",
                 "NFD, NFKC, NFKD)");
  };
  if (auto it = j.find("normalizer"); it != j.end() && !it->is_null()) {
    if (type_of(*it) == "Sequence") {
      for (const json& x : it->value("normalizers", json::array())) {
        LMTUNE_CHECK(!normalizer_.has_value(), src, ": more than one Unicode normalizer in a Sequence is not supported");
        normalizer_ = form_of(x);
      }
    } else {
      normalizer_ = form_of(*it);
    }
  }

  // Pre-tokenizer: Split*, then ByteLevel.
  std::vector<const json*> pre;
  if (auto it = j.find("pre_tokenizer"); it != j.end() && it->is_object()) {
    if (type_of(*it) == "Sequence") {
      LMTUNE_CHECK(it->contains("pretokenizers") && (*it)["pretokenizers"].is_array(), src,
                   ": pre_tokenizer Sequence has no 'pretokenizers' array");
      for (const json& x : (*it)["pretokenizers"]) pre.push_back(&x);
    } else {
      pre.push_back(&*it);
    }
  }
  LMTUNE_CHECK(!pre.empty() && type_of(*pre.back()) == "ByteLevel", src,
               ": a byte-level BPE needs ByteLevel as the last pre-tokenizer");
  std::vector<std::string> patterns;
  for (size_t k = 0; k + 1 < pre.size(); ++k) {
    const json& pt = *pre[k];
    const std::string where = src + ": pre_tokenizer " + std::to_string(k);
    const std::string t = type_of(pt);
    LMTUNE_CHECK(t == "Split", where, ": '", t,
                 "' is not supported (lmtune reads a Sequence of Split pre-tokenizers ending in ByteLevel)");
    const std::string behavior = pt.value("behavior", "Isolated");
    LMTUNE_CHECK(behavior == "Isolated", where, ": Split behavior '", behavior, "' is not supported (only Isolated)");
    LMTUNE_CHECK(!bool_field(pt, "invert", false), where, ": Split with invert: true is not supported");
    patterns.push_back(split_pattern(pt, where));
  }
  const json& bl = *pre.back();
  add_prefix_space_ = bool_field(bl, "add_prefix_space", true);
  if (bool_field(bl, "use_regex", true)) patterns.emplace_back(kGpt2Pattern);
  for (const std::string& p : patterns) splits_.emplace_back(p, src + ": pre-tokenizer pattern");
  if (patterns.size() == 1 && !add_prefix_space_) {
    if (patterns[0] == kLlama3Pattern) llama_cpp_pre_ = "llama-bpe";
    else if (patterns[0] == kQwen2Pattern) llama_cpp_pre_ = "qwen2";
    else if (patterns[0] == kGpt2Pattern) llama_cpp_pre_ = "gpt-2";
  }

  // Decoder: ByteLevel (alone or in a Sequence) or none; anything else would change decode.
  if (auto it = j.find("decoder"); it != j.end() && !it->is_null()) {
    std::vector<const json*> dec;
    if (type_of(*it) == "Sequence") {
      for (const json& x : it->value("decoders", json::array())) dec.push_back(&x);
    } else {
      dec.push_back(&*it);
    }
    for (const json* d : dec)
      LMTUNE_CHECK(type_of(*d) == "ByteLevel", src, ": decoder '", type_of(*d),
                   "' is not supported with a byte-level BPE model (only ByteLevel)");
  }

  // Post-processor: TemplateProcessing's special tokens around a single sequence.
  if (auto it = j.find("post_processor"); it != j.end() && !it->is_null()) {
    std::vector<const json*> procs;
    if (type_of(*it) == "Sequence") {
      for (const json& x : it->value("processors", json::array())) procs.push_back(&x);
    } else {
      procs.push_back(&*it);
    }
    for (const json* p : procs) {
      const std::string t = type_of(*p);
      if (t == "ByteLevel") continue;
      LMTUNE_CHECK(t == "TemplateProcessing", src, ": post_processor '", t,
                   "' is not supported (lmtune reads ByteLevel and TemplateProcessing)");
      const json single = p->value("single", json::array());
      auto special_id = [&](const json& item) -> int32_t {
        if (!item.is_object() || !item.contains("SpecialToken")) return -1;
        const std::string name = item["SpecialToken"].value("id", "");
        const json& st = p->value("special_tokens", json::object());
        if (st.contains(name) && st[name].contains("ids") && st[name]["ids"].is_array() && st[name]["ids"].size() == 1)
          return st[name]["ids"][0].get<int32_t>();
        auto f = piece_ids_.find(name);
        return f == piece_ids_.end() ? -1 : f->second;
      };
      if (single.is_array() && !single.empty()) {
        template_bos_ = special_id(single.front());
        if (single.size() > 1) template_eos_ = special_id(single.back());
      }
    }
  }
}

int32_t ByteLevelBpe::find(std::string_view piece) const {
  auto it = piece_ids_.find(piece);
  return it == piece_ids_.end() ? -1 : it->second;
}

std::pair<int32_t, int32_t> ByteLevelBpe::merge_of(int32_t left, int32_t right) const {
  const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  for (uint64_t h = slot_of(key, merge_mask_);; h = (h + 1) & merge_mask_) {
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
