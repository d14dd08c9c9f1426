// GGUF tokenizer metadata — design note.
//
// llama.cpp rebuilds the tokenizer from these keys alone, so they must say exactly what the
// HF tokenizer does.
//
// SentencePiece (tokenizer.ggml.model "llama", pre "default"): tokens in SentencePiece
// spelling ("▁", "<0xNN>"), scores, token types (1 normal, 2 unknown, 3 control, 6 byte).
// Scores are Tokenizer::score: llama.cpp's SentencePiece tokenizer merges the highest-scoring
// piece first, and for tokenizer.json our score is minus the merge rank, so llama.cpp's
// merges follow HF's ranks. (The converter's LlamaHfVocab path writes -1000 for every token,
// which breaks that order; we don't copy it.) BOS is added, EOS is not.
//
// Byte-level BPE (model "gpt2", as the converter's _set_vocab_gpt2): tokens in GPT-2's
// byte-level spelling ("Ġthe") and added tokens' content; token types 1 normal, 3 control
// (special added tokens), 4 user_defined (other added tokens, e.g. Qwen's <think>); merges as
// "left right" strings in rank order; no scores. tokenizer.ggml.pre names the pre-tokenizer
// regex, which llama.cpp implements by name: "llama-bpe" (Llama 3's pattern; llama.cpp then
// also applies ignore_merges), "qwen2", "gpt-2". A pattern with no llama.cpp name is an error
// rather than a file that llama.cpp would tokenize differently. BOS/EOS/EOT ids are the
// tokenizer's (eot_token_id: <|eot_id|>, <|im_end|>); add_bos_token is true exactly when the
// tokenizer has a BOS (lmtune's generate and perplexity add it then; Qwen has none).
//
// Both: when config.json's vocab_size exceeds the tokenizer's (Qwen pads its embedding to
// 151936), the extra ids are "[PADn]" of type unused (5), as the converter pads them.
#include "trainer/io/gguf_vocab.h"

#include "trainer/core/error.h"
#include "trainer/data/byte_level_bpe.h"
#include "trainer/data/tokenizer.h"
#include "trainer/model/config.h"

namespace lmtune {

GgufVocab gguf_vocab(const Tokenizer& tok, const LlamaConfig& cfg, const std::string& src) {
  const int64_t V = cfg.vocab_size;
  LMTUNE_CHECK(tok.vocab_size() <= V, src, ": tokenizer.json has ", tok.vocab_size(),
               " tokens, more than config.json vocab_size ", V);
  GgufVocab g;
  const bool byte_level = tok.family() == Tokenizer::Family::byte_level;
  if (byte_level) {
    g.model = "gpt2";
    g.pre = tok.byte_level()->llama_cpp_pre();
    LMTUNE_CHECK(!g.pre.empty(), src, ": the tokenizer's pre-tokenizer regex is not one llama.cpp knows by name ",
                 "(Llama 3's, Qwen2's or GPT-2's), so llama.cpp would split text differently; GGUF export of this ",
                 "tokenizer is not supported");
  } else {
    g.model = "llama";
    g.pre = "default";
  }
  g.tokens.reserve(static_cast<size_t>(V));
  g.token_types.reserve(static_cast<size_t>(V));
  for (int32_t id = 0; id < tok.vocab_size(); ++id) {
    g.tokens.push_back(tok.piece(id));
    if (!byte_level) g.scores.push_back(tok.score(id));
    GgufTokenType tt = GgufTokenType::normal;
    switch (tok.kind(id)) {
      case Tokenizer::PieceKind::normal: tt = GgufTokenType::normal; break;
      case Tokenizer::PieceKind::unknown: tt = GgufTokenType::unknown; break;
      case Tokenizer::PieceKind::control: tt = GgufTokenType::control; break;
      case Tokenizer::PieceKind::byte: tt = GgufTokenType::byte; break;
      case Tokenizer::PieceKind::user_defined: tt = GgufTokenType::user_defined; break;
    }
    g.token_types.push_back(static_cast<int32_t>(tt));
  }
  for (int64_t id = tok.vocab_size(); id < V; ++id) {  // as the converter pads a short vocabulary
    g.tokens.push_back("[PAD" + std::to_string(id) + "]");
    if (!byte_level) g.scores.push_back(-1000.0f);
    g.token_types.push_back(static_cast<int32_t>(GgufTokenType::unused));
  }
  if (byte_level) {
    const auto& merges = tok.byte_level()->merges();
    g.merges.reserve(merges.size());
    for (const auto& [l, r] : merges) g.merges.push_back(tok.piece(l) + " " + tok.piece(r));
  }

  g.bos = tok.bos_id() >= 0 ? tok.bos_id() : cfg.bos_token_id;
  g.eos = tok.eos_id() >= 0 ? tok.eos_id() : cfg.eos_token_id;
  LMTUNE_CHECK(g.bos >= 0 && g.bos < V && g.eos >= 0 && g.eos < V, src, ": BOS/EOS ids ", g.bos, "/", g.eos,
               " are outside the vocabulary of ", V);
  g.eot = tok.eot_id();
  g.unk = tok.unk_id();
  g.add_bos = byte_level ? tok.bos_id() >= 0 : true;
  g.add_eos = false;
  return g;
}

}  // namespace lmtune
