// Reading a byte-level BPE tokenizer.json — design note.
//
// ByteLevelBpe's constructor takes what HF tokenizers would use and refuses by name whatever
// it would not reproduce exactly:
//   model        BPE: vocab (every entry spelled in GPT-2's byte-level alphabet, which is
//                decoded to raw bytes here), merges ("a b" or ["a", "b"], in rank order; both
//                parts and their concatenation must be entries), ignore_merges; no dropout,
//                no byte_fallback, no continuing_subword_prefix / end_of_word_suffix.
//   added_tokens id, content, special, lstrip, rstrip, single_word, normalized (HF's default
//                for normalized: not special).
//   normalizer   none, NFC, NFD, NFKC, NFKD (or one of them in a Sequence).
//   pre_tokenizer  Split (Regex or String pattern, behavior Isolated, not inverted) any
//                number of times, then ByteLevel (add_prefix_space, use_regex: GPT-2's
//                pattern). The single pattern of Llama 3, Qwen2/3 or GPT-2 is recognised by
//                its exact text and named as llama.cpp names it (tokenizer.ggml.pre).
//   decoder      ByteLevel (alone or in a Sequence) or none.
//   post_processor ByteLevel or TemplateProcessing (its first and last special tokens of a
//                single sequence are the BOS / EOS when tokenizer_config.json names none).
// Every id from 0 to the largest must be a vocabulary entry or an added token, and the
// vocabulary must hold all 256 single bytes, so that every byte string is encodable.
#include "trainer/data/byte_level_bpe.h"

#include <algorithm>
#include <cstring>

#include <nlohmann/json.hpp>

#include "trainer/core/error.h"

namespace lmtune {

namespace {

using nlohmann::json;

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
    for (uint64_t h = merge_slot(key, merge_mask_);; h = (h + 1) & merge_mask_) {
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

}  // namespace lmtune
