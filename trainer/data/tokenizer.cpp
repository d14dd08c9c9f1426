// The Tokenizer — design note.
//
// One class for the two families of LLaMA-family tokenizers, chosen by the file:
//   tokenizer.bin, or tokenizer.json whose model has byte_fallback and no ByteLevel
//     pre-tokenizer  -> Family::sentencepiece (sentencepiece_bpe.cpp; written back by
//     tokenizer_hf_json.cpp);
//   tokenizer.json with a ByteLevel pre-tokenizer -> Family::byte_level (byte_level_bpe.cpp,
//     which owns the vocabulary's bytes, merges, added tokens, normaliser and regexes; this
//     class keeps the spellings and kinds every caller reads).
// Everything a caller does — encode, encode_parts, decode, decode_token, piece/kind/score —
// goes through this file, which dispatches on the family; the families differ where the real
// tokenizers differ (documented per function in tokenizer.h): SentencePiece never parses
// special tokens and encodes each part of a text on its own (a dummy prefix each);
// byte-level parses them (unless told not to) and encodes the parts as one text.
//
// tokenizer_config.json (from_model_dir) supplies what tokenizer.json lacks: for byte-level
// tokenizers the BOS and EOS (bos_token / eos_token, as a string or {"content": ...}; a name
// that is not a token is an error), and for both the chat template (chat_template, a string or
// a list of {name, template} of which "default" is taken; chat_template.jinja wins when the
// directory has one). Without the file a byte-level tokenizer takes BOS/EOS from its
// TemplateProcessing post-processor, if any.
#include "trainer/data/tokenizer.h"

#include <nlohmann/json.hpp>

#include "trainer/core/error.h"
#include "trainer/data/byte_level_bpe.h"
#include "trainer/data/sentencepiece_util.h"
#include "trainer/io/file_util.h"

namespace lmtune {

using namespace sentencepiece;
using nlohmann::json;

namespace {

bool has_byte_level_pre_tokenizer(const json& j) {
  auto it = j.find("pre_tokenizer");
  if (it == j.end() || !it->is_object()) return false;
  if (it->value("type", "") == "ByteLevel") return true;
  if (it->value("type", "") != "Sequence" || !it->contains("pretokenizers") || !(*it)["pretokenizers"].is_array())
    return false;
  for (const json& p : (*it)["pretokenizers"])
    if (p.is_object() && p.value("type", "") == "ByteLevel") return true;
  return false;
}

}  // namespace

// ---- loading ----

Tokenizer Tokenizer::from_model_dir(const std::filesystem::path& dir) {
  const auto p = dir / "tokenizer.json";
  LMTUNE_CHECK(std::filesystem::exists(p), "model directory '", dir.string(), "' has no tokenizer.json");
  Tokenizer t = from_hf_json(p);
  t.read_tokenizer_config(dir);
  return t;
}

Tokenizer Tokenizer::from_hf_json(const std::filesystem::path& path) {
  const std::string src = "tokenizer.json " + path.string();
  LMTUNE_CHECK(std::filesystem::exists(path), src, ": file not found");
  const std::string text = read_file_to_string(path, "tokenizer.json");
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    LMTUNE_THROW(src, ": not valid JSON: ", e.what());
  }
  LMTUNE_CHECK(j.is_object() && j.contains("model") && j["model"].is_object(), src, ": no 'model' object");
  const json& m = j["model"];
  const std::string type = m.contains("type") && m["type"].is_string() ? m["type"].get<std::string>() : "(none)";
  LMTUNE_CHECK(type == "BPE", src, ": model type '", type,
               "' is not supported; lmtune reads BPE tokenizers: SentencePiece-style with byte fallback (LLaMA, "
               "Llama-2, Mistral) and byte-level (Llama 3, Qwen)");
  // The readers check what they use; a value of an unexpected JSON type deep inside still
  // becomes one line naming the file, never a crash.
  try {
    if (has_byte_level_pre_tokenizer(j)) return from_byte_level_json(j, src);
    const bool byte_fallback =
        m.contains("byte_fallback") && m["byte_fallback"].is_boolean() && m["byte_fallback"].get<bool>();
    LMTUNE_CHECK(byte_fallback, src, ": model type 'BPE' without byte_fallback and without a ByteLevel pre-tokenizer ",
                 "is not supported; lmtune reads SentencePiece-style BPE with byte fallback and byte-level BPE");
    return from_sentencepiece_json(j, src);
  } catch (const json::exception& e) {
    LMTUNE_THROW(src, ": unexpected structure: ", e.what());
  }
}

Tokenizer Tokenizer::from_byte_level_json(const json& j, const std::string& src) {
  Tokenizer t;
  t.family_ = Family::byte_level;
  auto model = std::make_shared<const ByteLevelBpe>(j, src);
  const int32_t n = model->vocab_size();
  t.pieces_.resize(static_cast<size_t>(n));
  t.kinds_.assign(static_cast<size_t>(n), PieceKind::normal);
  t.scores_.assign(static_cast<size_t>(n), 0.0f);
  for (int32_t i = 0; i < n; ++i) {
    t.pieces_[i] = model->piece(i);
    if (model->is_special(i)) t.kinds_[i] = PieceKind::control;
    else if (model->is_added(i)) t.kinds_[i] = PieceKind::user_defined;
  }
  t.bos_id_ = model->template_bos();
  t.eos_id_ = model->template_eos();
  t.byte_level_ = std::move(model);
  t.mode_ = MergeMode::rank;
  t.add_dummy_prefix_ = false;
  t.find_eot();
  return t;
}

void Tokenizer::read_tokenizer_config(const std::filesystem::path& dir) {
  const auto p = dir / "tokenizer_config.json";
  if (std::filesystem::exists(p)) try {
    const std::string src = "tokenizer_config.json " + p.string();
    json c;
    try {
      c = json::parse(read_file_to_string(p, "tokenizer_config.json"));
    } catch (const json::parse_error& e) {
      LMTUNE_THROW(src, ": not valid JSON: ", e.what());
    }
    LMTUNE_CHECK(c.is_object(), src, ": expected a JSON object");
    // A token name: "..." or {"content": "...", ...} (AddedToken); null means none.
    auto token_name = [&](const char* key) -> std::optional<std::string> {
      auto it = c.find(key);
      if (it == c.end() || it->is_null()) return std::nullopt;
      if (it->is_string()) return it->get<std::string>();
      if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
        return (*it)["content"].get<std::string>();
      LMTUNE_THROW(src, ": key '", key, "' must be a string or an object with 'content', got ", it->dump());
    };
    if (family_ == Family::byte_level) {
      for (auto [key, id] : {std::pair{"bos_token", &bos_id_}, std::pair{"eos_token", &eos_id_}}) {
        auto it = c.find(key);
        if (it == c.end()) continue;  // keep what tokenizer.json says
        const auto name = token_name(key);
        if (!name) {
          *id = -1;
          continue;
        }
        const int32_t found = byte_level_->find(*name);
        LMTUNE_CHECK(found >= 0, src, ": ", key, " '", *name, "' is not a token of tokenizer.json");
        *id = found;
      }
    }
    if (auto it = c.find("chat_template"); it != c.end() && !it->is_null()) {
      if (it->is_string()) {
        chat_template_ = it->get<std::string>();
      } else if (it->is_array()) {
        for (const json& e : *it)
          if (e.is_object() && e.value("name", "") == "default" && e.contains("template") && e["template"].is_string())
            chat_template_ = e["template"].get<std::string>();
        LMTUNE_CHECK(!chat_template_.empty(), src, ": chat_template is a list without a \"default\" template");
      } else {
        LMTUNE_THROW(src, ": chat_template must be a string or a list of {name, template}, got ", it->type_name());
      }
    }
  } catch (const json::exception& e) {
    LMTUNE_THROW("tokenizer_config.json ", p.string(), ": unexpected structure: ", e.what());
  }
  const auto jinja = dir / "chat_template.jinja";
  if (std::filesystem::exists(jinja)) chat_template_ = read_file_to_string(jinja, "chat_template.jinja");
}

void Tokenizer::find_eot() {
  eot_id_ = -1;
  for (const char* name : {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>"}) {
    const int32_t id = family_ == Family::byte_level ? byte_level_->find(name) : -1;
    if (id >= 0 && kinds_[id] == PieceKind::control) {
      eot_id_ = id;
      return;
    }
  }
}

// ---- encoding ----

std::vector<int32_t> Tokenizer::encode(std::string_view text, AddBos add_bos, AddEos add_eos) const {
  return encode(text, SpecialTokens::parse, add_bos, add_eos);
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, SpecialTokens specials, AddBos add_bos,
                                       AddEos add_eos) const {
  std::vector<int32_t> out;
  if (add_bos == AddBos::yes && bos_id_ >= 0) out.push_back(bos_id_);
  const TextPart part{text, specials};
  encode_parts(std::span<const TextPart>(&part, 1), out);
  if (add_eos == AddEos::yes && eos_id_ >= 0) out.push_back(eos_id_);
  return out;
}

void Tokenizer::encode_parts(std::span<const TextPart> parts, std::vector<int32_t>& ids,
                             std::vector<uint32_t>* part_of) const {
  if (family_ == Family::byte_level) {
    std::vector<ByteLevelBpe::Part> p;
    p.reserve(parts.size());
    for (const TextPart& t : parts) p.push_back({t.text, t.specials});
    byte_level_->encode(p, ids, part_of);
    return;
  }
  for (uint32_t k = 0; k < parts.size(); ++k) {
    const size_t before = ids.size();
    encode_sentencepiece(parts[k].text, ids);
    if (part_of != nullptr) part_of->insert(part_of->end(), ids.size() - before, k);
  }
}

// ---- decoding ----

const std::string& Tokenizer::piece(int32_t id) const {
  LMTUNE_CHECK(id >= 0 && id < vocab_size(), "token id ", id, " is out of range [0, ", vocab_size(), ")");
  return pieces_[id];
}

float Tokenizer::score(int32_t id) const {
  LMTUNE_CHECK(id >= 0 && id < vocab_size(), "token id ", id, " is out of range [0, ", vocab_size(), ")");
  return scores_[id];
}

Tokenizer::PieceKind Tokenizer::kind(int32_t id) const {
  LMTUNE_CHECK(id >= 0 && id < vocab_size(), "token id ", id, " is out of range [0, ", vocab_size(), ")");
  return kinds_[id];
}

int32_t Tokenizer::piece_id(std::string_view p) const {
  if (family_ == Family::byte_level) return byte_level_->find(p);
  auto it = normal_ids_.find(p);
  return it == normal_ids_.end() ? -1 : it->second;
}

void Tokenizer::append_piece_text(std::string& out, int32_t id, bool strip_leading_space) const {
  std::string s = kinds_[id] == PieceKind::unknown ? std::string(kUnkSurface) : replace_all(pieces_[id], kSpace, " ");
  if (strip_leading_space && !s.empty() && s[0] == ' ') s.erase(0, 1);
  out += s;
}

std::string Tokenizer::decode(std::span<const int32_t> ids) const {
  std::string out;
  if (family_ == Family::byte_level) {
    for (int32_t id : ids) {
      LMTUNE_CHECK(id >= 0 && id < vocab_size(), "decode: token id ", id, " is out of range [0, ", vocab_size(), ")");
      out.append(byte_level_->bytes(id));
    }
    return out;
  }
  std::string bytes;
  bool at_start = true;
  for (int32_t id : ids) {
    LMTUNE_CHECK(id >= 0 && id < vocab_size(), "decode: token id ", id, " is out of range [0, ", vocab_size(), ")");
    const PieceKind k = kinds_[id];
    if (k == PieceKind::byte) {
      bytes.push_back(static_cast<char>(parse_byte_piece(pieces_[id])));
      at_start = false;
      continue;
    }
    if (!bytes.empty()) {
      append_utf8_checked(out, bytes);
      bytes.clear();
    }
    if (k == PieceKind::control) continue;
    append_piece_text(out, id, at_start && add_dummy_prefix_);
    at_start = false;
  }
  if (!bytes.empty()) append_utf8_checked(out, bytes);
  return out;
}

std::string Tokenizer::decode_token(int32_t prev_id, int32_t id) const {
  LMTUNE_CHECK(id >= 0 && id < vocab_size(), "decode_token: token id ", id, " is out of range [0, ", vocab_size(), ")");
  if (family_ == Family::byte_level) return std::string(byte_level_->bytes(id));
  const PieceKind k = kinds_[id];
  if (k == PieceKind::control) return {};
  if (k == PieceKind::byte) return std::string(1, static_cast<char>(parse_byte_piece(pieces_[id])));
  std::string out;
  const bool at_start = prev_id < 0 || (prev_id == bos_id_ && bos_id_ >= 0);
  append_piece_text(out, id, at_start && add_dummy_prefix_);
  return out;
}

}  // namespace lmtune
