// SentencePiece tokenizers written as HF tokenizer.json — design note.
//
// tokenizer.json written by save_hf_json is what HF's LlamaConverter produces: BPE with
// byte_fallback and fuse_unk, merges generated from the vocabulary (every split of a piece
// into two pieces of the vocabulary is a merge; merges ordered by the merged piece's score,
// highest first, then the parts' ids), the Prepend/Replace normaliser, no pre-tokenizer,
// the Replace/ByteFallback/Fuse/Strip decoder and a TemplateProcessing that adds <s>.
#include "trainer/data/tokenizer.h"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "trainer/core/error.h"
#include "trainer/data/sentencepiece_util.h"
#include "trainer/io/file_util.h"

namespace lmtune {

using namespace sentencepiece;

std::vector<std::pair<int32_t, int32_t>> Tokenizer::generate_merges() const {
  // As transformers' SentencePieceExtractor: vocab = {piece: id} over every piece.
  PieceMap vocab;
  for (int32_t i = 0; i < vocab_size(); ++i) vocab[pieces_[i]] = i;  // a later id wins, as in a Python dict
  struct M {
    float score;
    int32_t l, r;
  };
  std::vector<M> merges;
  std::vector<M> local;
  for (int32_t i = 0; i < vocab_size(); ++i) {
    const std::string_view p = pieces_[i];
    local.clear();
    for (size_t cut = utf8_char_len(p, 0); cut < p.size(); cut += utf8_char_len(p, cut)) {
      auto il = vocab.find(p.substr(0, cut));
      if (il == vocab.end()) continue;
      auto ir = vocab.find(p.substr(cut));
      if (ir == vocab.end()) continue;
      local.push_back({scores_[i], il->second, ir->second});
    }
    std::sort(local.begin(), local.end(), [](const M& a, const M& b) { return a.l != b.l ? a.l < b.l : a.r < b.r; });
    merges.insert(merges.end(), local.begin(), local.end());
  }
  std::stable_sort(merges.begin(), merges.end(), [](const M& a, const M& b) { return a.score > b.score; });
  std::vector<std::pair<int32_t, int32_t>> out;
  out.reserve(merges.size());
  for (const M& m : merges) out.emplace_back(m.l, m.r);
  return out;
}

void Tokenizer::save_hf_json(const std::filesystem::path& path) const {
  LMTUNE_CHECK(family_ == Family::sentencepiece, "cannot write tokenizer.json ", path.string(),
               ": lmtune writes SentencePiece tokenizers only; copy a byte-level tokenizer's own tokenizer.json");
  using ojson = nlohmann::ordered_json;
  const std::string space(kSpace);
  ojson j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  ojson added = ojson::array();
  for (int32_t i = 0; i < vocab_size(); ++i) {
    if (kinds_[i] != PieceKind::control && kinds_[i] != PieceKind::unknown) continue;
    added.push_back({{"id", i},
                     {"content", pieces_[i]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  j["added_tokens"] = added;
  ojson replace_space = {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", space}};
  if (add_dummy_prefix_) {
    j["normalizer"] = {{"type", "Sequence"},
                       {"normalizers", ojson::array({ojson{{"type", "Prepend"}, {"prepend", space}}, replace_space})}};
  } else {
    j["normalizer"] = replace_space;
  }
  j["pre_tokenizer"] = nullptr;
  if (bos_id_ >= 0) {
    const std::string bos = pieces_[bos_id_];
    auto special = [&](int type_id) { return ojson{{"SpecialToken", {{"id", bos}, {"type_id", type_id}}}}; };
    auto seq = [](const char* id, int type_id) { return ojson{{"Sequence", {{"id", id}, {"type_id", type_id}}}}; };
    j["post_processor"] = {
        {"type", "TemplateProcessing"},
        {"single", ojson::array({special(0), seq("A", 0)})},
        {"pair", ojson::array({special(0), seq("A", 0), special(1), seq("B", 1)})},
        {"special_tokens", {{bos, {{"id", bos}, {"ids", ojson::array({bos_id_})}, {"tokens", ojson::array({bos})}}}}}};
  } else {
    j["post_processor"] = nullptr;
  }
  ojson decoders = ojson::array();
  decoders.push_back({{"type", "Replace"}, {"pattern", {{"String", space}}}, {"content", " "}});
  decoders.push_back({{"type", "ByteFallback"}});
  decoders.push_back({{"type", "Fuse"}});
  if (add_dummy_prefix_) decoders.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
  j["decoder"] = {{"type", "Sequence"}, {"decoders", decoders}};

  ojson model;
  model["type"] = "BPE";
  model["dropout"] = nullptr;
  model["unk_token"] = unk_id_ >= 0 ? ojson(pieces_[unk_id_]) : ojson(nullptr);
  model["continuing_subword_prefix"] = nullptr;
  model["end_of_word_suffix"] = nullptr;
  model["fuse_unk"] = true;
  model["byte_fallback"] = true;
  model["ignore_merges"] = false;
  // ordered_json's object lookups are linear: check uniqueness with a hash map and append
  // to the underlying vector directly (in id order, as HF writes it).
  ojson vocab = ojson::object();
  {
    PieceMap seen;
    auto& obj = vocab.get_ref<ojson::object_t&>();
    obj.reserve(pieces_.size());
    for (int32_t i = 0; i < vocab_size(); ++i) {
      auto [it, fresh] = seen.emplace(pieces_[i], i);
      LMTUNE_CHECK(fresh, "cannot write tokenizer.json ", path.string(), ": piece '", pieces_[i],
                   "' appears twice (ids ", it->second, " and ", i, ")");
      obj.ojson::object_t::Container::emplace_back(pieces_[i], ojson(i));
    }
  }
  model["vocab"] = std::move(vocab);
  const auto merges = mode_ == MergeMode::rank ? merges_ : generate_merges();
  bool any_space = false;
  for (const auto& p : pieces_) any_space = any_space || p.find(' ') != std::string::npos;
  ojson jm = ojson::array();
  for (const auto& [l, r] : merges) {
    if (any_space) jm.push_back(ojson::array({pieces_[l], pieces_[r]}));
    else jm.push_back(pieces_[l] + " " + pieces_[r]);
  }
  model["merges"] = std::move(jm);
  j["model"] = std::move(model);
  std::string text;
  try {
    text = j.dump(2);
  } catch (const nlohmann::json::type_error& e) {
    LMTUNE_THROW("cannot write tokenizer.json ", path.string(), ": ", e.what(), " (a piece is not valid UTF-8)");
  }
  write_file_atomic(path, text + "\n");
}

}  // namespace lmtune
