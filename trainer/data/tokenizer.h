// SentencePiece-style BPE tokenizer with byte fallback (LLaMA, Llama-2, TinyLlama, llama2.c).
// Reads llama2.c tokenizer.bin and HF tokenizer.json (model.type "BPE", byte_fallback);
// writes an HF tokenizer.json that transformers' LlamaTokenizerFast loads. See the design
// note in tokenizer.cpp.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace lmtune {

enum class AddBos { no, yes };
enum class AddEos { no, yes };

class Tokenizer {
 public:
  enum class PieceKind : uint8_t {
    normal,   // an ordinary piece; takes part in encoding
    unknown,  // <unk>
    control,  // <s>, </s> and other special tokens: never produced by encode's merges, decode to nothing
    byte,     // <0xNN> byte-fallback token
  };
  // How the BPE picks the next pair to merge.
  enum class MergeMode {
    score,  // highest score of the merged piece (SentencePiece; tokenizer.bin)
    rank,   // lowest merge rank (HF tokenizers; tokenizer.json)
  };

  // llama2.c tokenizer.bin: int32 max_token_length, then per token float32 score, int32
  // len, len bytes. vocab_size < 0 reads tokens to the end of the file; otherwise exactly
  // vocab_size tokens must be there and nothing after them.
  static Tokenizer from_llama2c(const std::filesystem::path& tokenizer_bin, int64_t vocab_size = -1);
  // HF tokenizer.json of a SentencePiece-BPE model (model.type "BPE", byte_fallback true).
  static Tokenizer from_hf_json(const std::filesystem::path& tokenizer_json);
  // dir/tokenizer.json.
  static Tokenizer from_model_dir(const std::filesystem::path& dir);

  // SentencePiece BPE encoding (see tokenizer.cpp). The text is never scanned for special
  // tokens: "<s>" in it is encoded as the characters '<', 's', '>' (as SentencePiece does;
  // HF tokenizers would split it out as the special token). Thread-safe (const, no caches).
  std::vector<int32_t> encode(std::string_view text, AddBos add_bos, AddEos add_eos = AddEos::no) const;
  // Whole-sequence decode: control tokens vanish, byte tokens are joined into UTF-8 (invalid
  // sequences become U+FFFD), "▁" becomes " ", and the leading space of the dummy prefix is
  // dropped at the start of the sequence.
  std::string decode(std::span<const int32_t> ids) const;
  // Streaming decode of one token given the previous one (-1 at the start of the sequence):
  // the text to print after prev_id's. Byte tokens give their raw byte.
  std::string decode_token(int32_t prev_id, int32_t id) const;

  int32_t vocab_size() const { return static_cast<int32_t>(pieces_.size()); }
  int32_t bos_id() const { return bos_id_; }  // -1 when the vocabulary has no <s>
  int32_t eos_id() const { return eos_id_; }
  int32_t unk_id() const { return unk_id_; }
  // The piece in SentencePiece spelling: "▁" (U+2581) for spaces, "<0xNN>" for byte
  // tokens, "<unk>" / "<s>" / "</s>" for the special ones.
  const std::string& piece(int32_t id) const;
  // tokenizer.bin scores; for tokenizer.json (which has none) minus the rank of the first
  // merge producing the piece, 0 for pieces no merge produces.
  float score(int32_t id) const;
  PieceKind kind(int32_t id) const;
  MergeMode merge_mode() const { return mode_; }
  // The id of a normal piece in SentencePiece spelling, or -1.
  int32_t piece_id(std::string_view piece) const;

  // Writes an HF tokenizer.json (atomically). Merges: kept as read from tokenizer.json, or
  // generated from the vocabulary and scores as HF's LlamaConverter does.
  void save_hf_json(const std::filesystem::path& path) const;

 private:
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  using PieceMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

  struct EncodeScratch;
  Tokenizer() = default;
  void encode_segment(std::string_view normalized, EncodeScratch& scratch, std::vector<int32_t>& out) const;
  void finish_vocab(const std::string& source);  // builds maps, checks required tokens
  std::vector<std::pair<int32_t, int32_t>> generate_merges() const;
  void append_piece_text(std::string& out, int32_t id, bool strip_leading_space) const;

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::vector<PieceKind> kinds_;
  PieceMap normal_ids_;  // normal pieces only: what encode may produce
  std::array<int32_t, 256> byte_ids_{};
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merge_ranks_;  // (left, right) -> (rank, merged)
  std::vector<std::pair<int32_t, int32_t>> merges_;                        // rank order (rank mode)
  std::unordered_set<std::string, StringHash, std::equal_to<>> bigrams_;  // char pairs inside normal pieces
  bool segmentable_ = false;
  MergeMode mode_ = MergeMode::score;
  bool add_dummy_prefix_ = true;
  int32_t bos_id_ = -1, eos_id_ = -1, unk_id_ = -1;
};

}  // namespace lmtune
