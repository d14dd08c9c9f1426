// The data pipeline: documents (plain text, Alpaca JSONL, chat JSONL) -> tokenized examples
// with a loss mask -> fixed-length rows (packed or padded) -> a resumable, deterministic
// loader of micro-batches. See the design note at the top of dataset.cpp.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "trainer/data/chat_template.h"
#include "trainer/data/tokenizer.h"

namespace lmtune {

enum class DataFormat {
  text,    // every file is one document, every token trained
  alpaca,  // JSONL {"instruction", "input"?, "output"}: the prompt is masked, the output trained
  chat,    // JSONL {"messages": [{"role", "content"}, ...]}: only assistant turns trained
};
enum class Packing { off, on };
enum class Shuffle { off, on };

// Parses "text" / "alpaca" / "chat" (the config layer's spelling); an error lists the choices.
DataFormat parse_data_format(const std::string& name);
const char* data_format_name(DataFormat format);

// Everything the data pipeline needs, as plain values (the config layer fills it in).
struct DataOptions {
  DataFormat format = DataFormat::text;
  std::vector<std::string> train_files;       // paths or glob(3) patterns, expanded in order
  std::vector<std::string> validation_files;  // empty: use validation_fraction (or no validation)
  double validation_fraction = 0.0;           // in [0, 1): share of train documents held out (by seed)
  int64_t validation_every_nth = 0;           // n >= 2: hold out documents i with i % n == n - 1; 0: off
  int64_t seq_len = 256;                      // tokens per row (model inputs); rows hold seq_len + 1
  Packing packing = Packing::on;
  AddBos add_bos = AddBos::yes;  // BOS first in every example (never a target)
  AddEos add_eos = AddEos::yes;  // EOS last in every example (trained)
  // Alpaca prompt with {instruction} and {input} placeholders. Empty: Stanford Alpaca's two
  // templates (with input / without input).
  std::string prompt_template;
  // "auto" (the model's declared template; chatml when it declares none) or a renderer name
  // (chat_template.h). load_data resolves it into chat_format with the tokenizer.
  std::string chat_template = "auto";
  std::optional<ChatFormat> chat_format;
  // Whether text in the data that spells a special token (<|eot_id|>) becomes that token
  // (byte-level tokenizers; a chat template's own markup always does).
  SpecialTokens content_specials = SpecialTokens::parse;
  Shuffle shuffle = Shuffle::on;         // shuffle the train rows (validation is never shuffled)
  uint64_t seed = 0;                     // validation_fraction split and row shuffling
};

// ---- documents ----

// One training example before tokenization: segments in order; `source` is "file" or
// "file:line" (for messages).
struct Document {
  std::vector<Segment> segments;
  std::string source;
};

// Expands each pattern with glob(3) (sorted; a path without wildcards must exist), in the
// order of the patterns, dropping repeats. A pattern that matches nothing is an error that
// names it; `what` ("train_files") is used in errors.
std::vector<std::string> expand_file_patterns(const std::vector<std::string>& patterns, const std::string& what);

// The two default Alpaca templates (Stanford Alpaca's wording).
extern const char* const kAlpacaPromptWithInput;
extern const char* const kAlpacaPromptNoInput;
// The prompt of one Alpaca record: `prompt_template` (or the default for whether `input` is
// empty) with {instruction} and {input} substituted.
std::string render_alpaca_prompt(const std::string& instruction, const std::string& input,
                                 const std::string& prompt_template);

// Reads the documents of `files` (already expanded). Text: one document per file, empty
// files skipped. Alpaca / chat: one document per non-blank line; a malformed line is an
// error naming the file and the 1-based line number.
std::vector<Document> read_documents(const std::vector<std::string>& files, const DataOptions& options);

// ---- tokenized examples ----

struct Example {
  std::vector<int32_t> tokens;
  std::vector<uint8_t> train_mask;  // 1 where the token is a training target (predicted), else 0
};

// The segments encoded (byte-level: as one text, each token masked as the segment its first
// byte is in; SentencePiece: adjacent segments of the same mark joined, each encoded on its
// own), then BOS first (mask 0) and EOS last (mask 1) as the options say, unless the
// document already starts / ends with that token.
Example tokenize_document(const Document& document, const Tokenizer& tokenizer, AddBos add_bos, AddEos add_eos);
// All documents, in order, on a few threads.
std::vector<Example> tokenize_documents(const std::vector<Document>& documents, const Tokenizer& tokenizer,
                                        AddBos add_bos, AddEos add_eos);

// ---- fixed-length rows ----

// A deterministic permutation of 0..n-1: std::mt19937_64(seed) driving our own Fisher–Yates
// with rejection sampling, so the order is the same with every standard library.
std::vector<int64_t> shuffled_order(int64_t n, uint64_t seed);

class PackedDataset {
 public:
  struct Stats {
    int64_t examples = 0;          // examples it was built from
    int64_t tokens = 0;            // their tokens, masked or not
    int64_t targets = 0;           // targets that are not -1, over all rows kept
    int64_t truncated_examples = 0;  // examples cut to seq_len + 1 tokens by Packing::off
    int64_t truncated_tokens = 0;    // tokens cut off by Packing::off
    int64_t dropped_rows = 0;        // rows left out because not one of their targets is trained
                                     // (with Packing::off: examples whose trained part was cut off)
  };

  PackedDataset() = default;
  // Packing::on: the examples are concatenated into one stream s and cut into rows
  // s[r*T .. r*T + T] (T + 1 tokens; consecutive rows share one token so that every token
  // but the first is a target exactly once); the last row is padded. Packing::off: one row
  // per example, truncated to T + 1 tokens or padded. Inputs are row[:-1], targets row[1:],
  // with -1 where the target token's mask is 0 or where it is padding. Padding inputs are
  // `pad_id`. Rows without any trained target are dropped. `shuffle` is kept for the loader.
  static PackedDataset build(const std::vector<Example>& examples, int64_t seq_len, Packing packing,
                             Shuffle shuffle, int32_t pad_id);

  int64_t num_rows() const { return seq_len_ > 0 ? static_cast<int64_t>(inputs_.size()) / seq_len_ : 0; }
  int64_t seq_len() const { return seq_len_; }
  Shuffle shuffle() const { return shuffle_; }
  const Stats& stats() const { return stats_; }
  // A 64-bit hash of every row's inputs and targets, in order (with num_rows(), what a
  // checkpoint records to tell that a resume reads the same rows).
  uint64_t content_hash() const;
  std::span<const int32_t> inputs(int64_t row) const;   // (T,)
  std::span<const int32_t> targets(int64_t row) const;  // (T,), -1 = ignored

 private:
  int64_t seq_len_ = 0;
  Shuffle shuffle_ = Shuffle::off;
  std::vector<int32_t> inputs_;   // (num_rows, T)
  std::vector<int32_t> targets_;  // (num_rows, T)
  Stats stats_;
};

struct DataSplit {
  PackedDataset train;
  PackedDataset validation;             // num_rows() == 0 when there is no validation data
  std::optional<ChatFormat> chat_format;  // chat data: the template used
};

// The whole pipeline: expand patterns, read, split off validation (validation_files, or
// validation_fraction of the train documents chosen by seed, or every n-th train document;
// at most one of the three), tokenize, pack.
DataSplit load_data(const DataOptions& options, const Tokenizer& tokenizer);

// ---- the loader ----

struct Batch {
  std::vector<int32_t> tokens;   // (B, T)
  std::vector<int32_t> targets;  // (B, T), -1 = ignored
  int64_t B = 0, T = 0;
  int64_t num_targets = 0;       // targets that are not -1
};

// Which slice of every global batch this process takes (data parallel): a step consumes
// micro_batch_size * count rows, and rank r takes the r-th micro_batch_size of them.
struct DataShard {
  int64_t rank = 0;
  int64_t count = 1;
};

// Yields micro-batches of rows in the order of a per-epoch permutation (shuffled_order with
// seed + epoch when the dataset says Shuffle::on, else row order). The dataset must outlive
// the loader. An epoch is steps_per_epoch() steps; the rows left over at its end (fewer than
// a step needs) are not used in that epoch. state()/restore() resume exactly where a loader
// stopped: a restored loader yields the same batches an uninterrupted one would.
class DataLoader {
 public:
  struct State {
    int64_t epoch = 0;
    int64_t position = 0;  // rows of this epoch's order consumed (all shards together)
  };

  DataLoader(const PackedDataset& dataset, int64_t micro_batch_size, uint64_t seed, DataShard shard = {});

  Batch next();
  State state() const { return state_; }
  void restore(State state);
  int64_t steps_per_epoch() const { return steps_per_epoch_; }
  int64_t micro_batch_size() const { return micro_batch_size_; }

 private:
  const std::vector<int64_t>& order_for(int64_t epoch);

  const PackedDataset* dataset_;
  int64_t micro_batch_size_;
  uint64_t seed_;
  DataShard shard_;
  int64_t steps_per_epoch_;
  State state_;
  int64_t order_epoch_ = -1;
  std::vector<int64_t> order_;
};

}  // namespace lmtune
