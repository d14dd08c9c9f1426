// The tokenizer metadata of a GGUF file (tokenizer.ggml.*), as llama.cpp's converter writes it
// for the two tokenizer families: SentencePiece ("llama") and byte-level BPE ("gpt2"). See the
// design note in gguf_vocab.cpp.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lmtune {

class Tokenizer;
struct LlamaConfig;

// llama.cpp's token types (llama_token_type / gguf.TokenType).
enum class GgufTokenType : int32_t { normal = 1, unknown = 2, control = 3, user_defined = 4, unused = 5, byte = 6 };

struct GgufVocab {
  std::string model;                 // tokenizer.ggml.model: "llama" | "gpt2"
  std::string pre;                   // tokenizer.ggml.pre: "default" | "llama-bpe" | "qwen2" | "gpt-2"
  std::vector<std::string> tokens;   // config.json's vocab_size of them ([PADn] fill the rest)
  std::vector<float> scores;         // empty: not written (gpt2)
  std::vector<int32_t> token_types;  // GgufTokenType values
  std::vector<std::string> merges;   // "left right" in rank order; empty: not written (llama)
  int64_t bos = -1, eos = -1, eot = -1, unk = -1;  // -1: not written (bos and eos always are)
  bool add_bos = true, add_eos = false;
};

// The vocabulary metadata for `tok` in a model of `cfg` (vocab_size >= the tokenizer's).
// `src` names the export in errors (a byte-level pre-tokenizer llama.cpp has no name for).
GgufVocab gguf_vocab(const Tokenizer& tok, const LlamaConfig& cfg, const std::string& src);

}  // namespace lmtune
