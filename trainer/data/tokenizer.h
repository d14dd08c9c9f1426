// Tokenizers of the LLaMA family, behind one class:
//   SentencePiece-style BPE with byte fallback (LLaMA, Llama-2, Mistral, TinyLlama, llama2.c):
//     llama2.c tokenizer.bin, or HF tokenizer.json (model.type "BPE", byte_fallback);
//   byte-level BPE (Llama 3, Qwen 2/2.5/3): HF tokenizer.json with a ByteLevel pre-tokenizer
//     (trainer/data/byte_level_bpe.h).
// A model directory's tokenizer_config.json (when present) adds the BOS/EOS names and the chat
// template. See the design note in tokenizer.cpp.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "trainer/data/added_tokens.h"

namespace lmtune {

class ByteLevelBpe;

enum class AddBos { no, yes };
enum class AddEos { no, yes };

// One piece of a text to encode as a whole (Tokenizer::encode_parts).
struct TextPart {
  std::string_view text;
  SpecialTokens specials = SpecialTokens::parse;
};

class Tokenizer {
 public:
  enum class Family {
    sentencepiece,  // SentencePiece-style BPE with byte fallback
    byte_level,     // GPT-2-style byte-level BPE
  };
  enum class PieceKind : uint8_t {
    normal,        // an ordinary piece; takes part in encoding
    unknown,       // <unk>
    control,       // <s>, </s> and other special tokens: never produced by encode's merges
    byte,          // <0xNN> byte-fallback token
    user_defined,  // a non-special added token (Qwen's <think>): matched in text like a special one
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
  // HF tokenizer.json: a SentencePiece-BPE model (model.type "BPE", byte_fallback true) or a
  // byte-level BPE (a ByteLevel pre-tokenizer). Anything else is an error naming the file.
  static Tokenizer from_hf_json(const std::filesystem::path& tokenizer_json);
  // dir/tokenizer.json, plus dir/tokenizer_config.json when it exists (bos_token, eos_token,
  // chat_template) and dir/chat_template.jinja (newer transformers keep the template there).
  static Tokenizer from_model_dir(const std::filesystem::path& dir);

  // Encodes text. add_bos / add_eos add the tokenizer's BOS / EOS when it has one (Qwen has no
  // BOS: nothing is added, as HF's add_special_tokens does).
  //  SentencePiece: exactly SentencePiece's BPE; the text is never scanned for special
  //    tokens ("<s>" is '<', 's', '>'), whatever `specials` says.
  //  byte-level: exactly HF tokenizers' encoding (valid UTF-8; invalid bytes become their byte
  //    tokens); added tokens are matched first, special ones only under SpecialTokens::parse
  //    (the default, as HF tokenizers do).
  // Thread-safe (const; caches live for one call).
  std::vector<int32_t> encode(std::string_view text, AddBos add_bos, AddEos add_eos = AddEos::no) const;
  std::vector<int32_t> encode(std::string_view text, SpecialTokens specials, AddBos add_bos,
                              AddEos add_eos = AddEos::no) const;
  // Encodes a text given as consecutive parts, each with its own special-token rule (a chat
  // template's markup is parsed, the user's content may be literal), appending to ids; no BOS
  // or EOS. part_of, when given, receives for each id the index of the part its first byte is
  // in. byte-level: the parts are one text (exactly encode() of their concatenation when all
  // parts parse specials). SentencePiece: each part is encoded on its own (its own dummy
  // prefix), as encode(prompt) + encode(response) is in HF.
  void encode_parts(std::span<const TextPart> parts, std::vector<int32_t>& ids,
                    std::vector<uint32_t>* part_of = nullptr) const;
  // Whole-sequence decode.
  //  SentencePiece: control tokens vanish, byte tokens are joined into UTF-8 (invalid
  //    sequences become U+FFFD), "▁" becomes " ", and the leading space of the dummy prefix is
  //    dropped at the start of the sequence.
  //  byte-level: the tokens' bytes, and added tokens' text (special ones included), joined:
  //    decode(encode(x)) == x for every byte string x.
  std::string decode(std::span<const int32_t> ids) const;
  // Streaming decode of one token given the previous one (-1 at the start of the sequence):
  // the text to print after prev_id's. Byte tokens give their raw bytes.
  std::string decode_token(int32_t prev_id, int32_t id) const;

  Family family() const { return family_; }
  int32_t vocab_size() const { return static_cast<int32_t>(pieces_.size()); }
  // SentencePiece: <s> / </s>. byte-level: tokenizer_config.json's bos_token / eos_token, else
  // the post-processor's template. -1 when there is none.
  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }
  int32_t unk_id() const { return unk_id_; }
  // The end-of-turn token of chat models (<|eot_id|>, <|im_end|>, <|end|>, <end_of_turn>), -1
  // when the vocabulary has none.
  int32_t eot_id() const { return eot_id_; }
  // The chat template the model directory declares (Jinja source), empty when none.
  const std::string& chat_template() const { return chat_template_; }
  // The byte-level model (merges, pre-tokenizer name), nullptr for SentencePiece.
  const ByteLevelBpe* byte_level() const { return byte_level_.get(); }
  // The piece as the vocabulary spells it. SentencePiece: "▁" (U+2581) for spaces, "<0xNN>"
  // for byte tokens, "<unk>" / "<s>" / "</s>" for the special ones. byte-level: GPT-2's
  // alphabet ("Ġthe"), or an added token's content.
  const std::string& piece(int32_t id) const;
  // tokenizer.bin scores; for tokenizer.json (which has none) minus the rank of the first
  // merge producing the piece, 0 for pieces no merge produces (SentencePiece); 0 (byte-level).
  float score(int32_t id) const;
  PieceKind kind(int32_t id) const;
  MergeMode merge_mode() const { return mode_; }
  // The id of a normal piece in the vocabulary's spelling (byte-level: also an added token's
  // content), or -1.
  int32_t piece_id(std::string_view piece) const;

  // Writes an HF tokenizer.json (atomically) for a SentencePiece tokenizer. Merges: kept as
  // read from tokenizer.json, or generated from the vocabulary and scores as HF's
  // LlamaConverter does. A byte-level tokenizer is an error (copy its tokenizer.json).
  void save_hf_json(const std::filesystem::path& path) const;

 private:
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  using PieceMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

  struct EncodeScratch;
  Tokenizer() = default;
  static Tokenizer from_sentencepiece_json(const nlohmann::json& j, const std::string& source);
  static Tokenizer from_byte_level_json(const nlohmann::json& j, const std::string& source);
  void read_tokenizer_config(const std::filesystem::path& dir);
  void find_eot();
  void encode_sentencepiece(std::string_view text, std::vector<int32_t>& out) const;
  void encode_segment(std::string_view normalized, EncodeScratch& scratch, std::vector<int32_t>& out) const;
  void finish_vocab(const std::string& source);  // builds maps, checks required tokens
  std::vector<std::pair<int32_t, int32_t>> generate_merges() const;
  void append_piece_text(std::string& out, int32_t id, bool strip_leading_space) const;

  Family family_ = Family::sentencepiece;
  std::shared_ptr<const ByteLevelBpe> byte_level_;  // byte-level only
  std::string chat_template_;
  int32_t eot_id_ = -1;
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
