// The data pipeline — design note.
//
// Stages, each a plain function or value so that each can be tested alone:
//   patterns --expand_file_patterns--> files --read_documents--> Documents
//   --tokenize_documents--> Examples --PackedDataset::build--> rows --DataLoader--> Batches
//
// Documents. A Document is a list of Segments (text or a special token) each marked
// Trained::yes/no and with its special-token rule. Text format: one document per file, one
// trained segment (empty files are skipped). Alpaca: prompt (untrained) + output (trained).
// Chat: the conversation rendered by a chat template (chat_template.h: llama3, qwen3, chatml,
// llama2, plain; "auto" takes the one the model's tokenizer_config.json declares), where
// exactly the assistant turns — content and end-of-turn marker — are trained. Data text
// (files, fields, message content) follows data.parse_special_tokens; template markup is
// always parsed. A malformed JSONL line is an error "file:line: what is wrong"; blank lines
// are skipped.
//
// Tokenization depends on the tokenizer family, as the real tokenizers do:
//   byte-level (Llama 3, Qwen): a document's text segments are one text, encoded at once
//     (encode_parts), so the ids are exactly HF's tokenizer(apply_chat_template(...)); each
//     token is trained as the segment its first byte is in.
//   SentencePiece: adjacent segments with the same mark are joined, then each is encoded on
//     its own, so every segment starts with the tokenizer's dummy-prefix "▁", as HF's
//     encode(prompt) + encode(response) gives; this is also exactly what generation sees when
//     it encodes a rendered prompt and lets the model continue — the response's first token
//     is "▁word". Templates therefore end their prompt without a trailing space.
// BOS (add_bos) goes first with mask 0 — it is never a target — unless the template already
// wrote it (Llama 3's does); EOS (add_eos) goes last with mask 1 — the model learns to stop —
// unless the document already ends with it. Documents are tokenized on a few threads (the
// tokenizer's encode is const); the result does not depend on the thread count.
//
// Rows. T = seq_len. A row holds T + 1 tokens: inputs = row[:-1], targets = row[1:], and a
// target is -1 where its token's mask is 0 or it is padding (inputs there are pad_id, EOS).
//   Packing::on   examples are concatenated (in document order) into one stream s and cut
//                 into rows s[r*T .. r*T+T]: consecutive rows share one token, so every
//                 token of the stream but the first is a target exactly once; the last row
//                 is padded. Attention is not masked at document boundaries (as in GPT
//                 pre-training); BOS/EOS mark them.
//   Packing::off  one row per example, truncated to T + 1 tokens (counted in stats: examples
//                 and tokens) or padded.
// Rows with no trained target at all are dropped (counted in stats).
//
// Order. Rows stay in build order in the dataset. The loader visits them, epoch by epoch, in
// the order shuffled_order(num_rows, seed + epoch) (train, Shuffle::on) or row order
// (validation). shuffled_order is std::mt19937_64 (its output is fixed by the standard)
// driving our own Fisher–Yates with rejection sampling, because std::shuffle and
// std::uniform_int_distribution differ between standard libraries. An epoch is
// floor(num_rows / (B * shards)) steps; the rows left over are skipped in that epoch (a
// different few each epoch). The loader's whole state is (epoch, position): the permutation
// is a pure function of (seed, epoch), so restore() reproduces an uninterrupted run exactly.
// Under data parallelism every rank runs the same loader with its DataShard: a step consumes
// B * count rows of the permutation and rank r takes its B consecutive ones, so the global
// batch sequence equals a single process accumulating count micro-batches.
//
// The validation_fraction split shuffles document indices with shuffled_order(n, seed mixed
// with a constant), holds out round(fraction * n) (at least 1) and keeps both parts in
// document order. validation_every_nth = n holds out documents n-1, 2n-1, ... (0-based; with
// n = 10 over Moby-Dick's chapters this is scripts/fetch_data.sh's split).
#include "trainer/data/dataset.h"

#include <glob.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string_view>
#include <thread>
#include <unordered_set>

#include "trainer/core/error.h"
#include "trainer/io/file_util.h"

namespace lmtune {

namespace fs = std::filesystem;
using nlohmann::json;

DataFormat parse_data_format(const std::string& name) {
  if (name == "text") return DataFormat::text;
  if (name == "alpaca") return DataFormat::alpaca;
  if (name == "chat") return DataFormat::chat;
  LMTUNE_THROW("unknown data format '", name, "'; expected one of: text, alpaca, chat");
}

const char* data_format_name(DataFormat format) {
  switch (format) {
    case DataFormat::text: return "text";
    case DataFormat::alpaca: return "alpaca";
    case DataFormat::chat: return "chat";
  }
  return "?";
}

// ---- files ----

std::vector<std::string> expand_file_patterns(const std::vector<std::string>& patterns, const std::string& what) {
  LMTUNE_CHECK(!patterns.empty(), what, ": no files given");
  std::vector<std::string> files;
  std::unordered_set<std::string> seen;
  for (const std::string& pattern : patterns) {
    LMTUNE_CHECK(!pattern.empty(), what, ": an empty file pattern");
    glob_t g{};
    int flags = 0;
#ifdef GLOB_TILDE
    flags |= GLOB_TILDE;
#endif
    const int rc = glob(pattern.c_str(), flags, nullptr, &g);
    std::vector<std::string> matches;
    if (rc == 0) {
      for (size_t i = 0; i < g.gl_pathc; ++i) matches.emplace_back(g.gl_pathv[i]);
    }
    globfree(&g);
    if (rc == GLOB_NOMATCH || (rc == 0 && matches.empty())) {
      LMTUNE_THROW(what, ": pattern '", pattern, "' matches no file");
    }
    LMTUNE_CHECK(rc == 0, what, ": cannot expand pattern '", pattern, "' (glob error ", rc, ")");
    // glob(3) sorts by the locale's collation; byte order is the same everywhere.
    std::sort(matches.begin(), matches.end());
    for (std::string& m : matches) {
      std::error_code ec;
      LMTUNE_CHECK(!fs::is_directory(m, ec), what, ": pattern '", pattern, "' matches the directory '", m,
                   "'; name the files in it (e.g. '", m, "/*.txt')");
      if (seen.insert(m).second) files.push_back(std::move(m));
    }
  }
  return files;
}

// ---- templates ----

const char* const kAlpacaPromptWithInput =
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:";
const char* const kAlpacaPromptNoInput =
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:";

namespace {

// Replaces every {name} in one left-to-right pass (substituted text is not rescanned).
std::string substitute(std::string_view templ, const std::vector<std::pair<std::string_view, std::string_view>>& vars) {
  std::string out;
  out.reserve(templ.size() + 256);
  size_t i = 0;
  while (i < templ.size()) {
    bool replaced = false;
    if (templ[i] == '{') {
      for (const auto& [name, value] : vars) {
        if (templ.size() - i >= name.size() + 2 && templ.compare(i + 1, name.size(), name) == 0 &&
            templ[i + 1 + name.size()] == '}') {
          out.append(value);
          i += name.size() + 2;
          replaced = true;
          break;
        }
      }
    }
    if (!replaced) out.push_back(templ[i++]);
  }
  return out;
}

void push_text(std::vector<Segment>& segments, std::string text, Trained trained, SpecialTokens specials) {
  if (text.empty()) return;
  segments.push_back(Segment{Segment::Kind::text, std::move(text), trained, specials});
}

}  // namespace

std::string render_alpaca_prompt(const std::string& instruction, const std::string& input,
                                 const std::string& prompt_template) {
  std::string_view templ = prompt_template;
  if (templ.empty()) templ = input.empty() ? kAlpacaPromptNoInput : kAlpacaPromptWithInput;
  return substitute(templ, {{"instruction", instruction}, {"input", input}});
}

// ---- reading ----

namespace {

const char* json_type_name(const json& j) { return j.type_name(); }

// A required (or, with `optional`, possibly absent) string field of a JSONL record.
enum class FieldNeed { required, optional };
std::string string_field(const json& obj, const char* key, FieldNeed need, const std::string& where) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) {
    LMTUNE_CHECK(need == FieldNeed::optional, where, ": missing required field \"", key, "\"");
    return {};
  }
  LMTUNE_CHECK(it->is_string(), where, ": field \"", key, "\" must be a string, not ", json_type_name(*it));
  return it->get<std::string>();
}

Document alpaca_document(const json& rec, const DataOptions& options, const std::string& where) {
  const std::string instruction = string_field(rec, "instruction", FieldNeed::required, where);
  const std::string input = string_field(rec, "input", FieldNeed::optional, where);
  const std::string output = string_field(rec, "output", FieldNeed::required, where);
  Document doc;
  doc.source = where;
  push_text(doc.segments, render_alpaca_prompt(instruction, input, options.prompt_template), Trained::no,
            options.content_specials);
  push_text(doc.segments, output, Trained::yes, options.content_specials);
  return doc;
}

Document chat_document(const json& rec, const DataOptions& options, const std::string& where) {
  auto it = rec.find("messages");
  LMTUNE_CHECK(it != rec.end(), where, ": missing required field \"messages\"");
  LMTUNE_CHECK(it->is_array(), where, ": field \"messages\" must be an array, not ", json_type_name(*it));
  LMTUNE_CHECK(!it->empty(), where, ": \"messages\" is empty");
  std::vector<ChatMessage> messages;
  bool has_assistant = false;
  for (size_t i = 0; i < it->size(); ++i) {
    const json& m = (*it)[i];
    const std::string at = where + ": messages[" + std::to_string(i) + "]";
    LMTUNE_CHECK(m.is_object(), at, " must be an object, not ", json_type_name(m));
    std::string role = string_field(m, "role", FieldNeed::required, at);
    LMTUNE_CHECK(role == "system" || role == "user" || role == "assistant", at, ": unknown role \"", role,
                 "\"; expected \"system\", \"user\" or \"assistant\"");
    has_assistant |= role == "assistant";
    messages.push_back({std::move(role), string_field(m, "content", FieldNeed::required, at)});
  }
  LMTUNE_CHECK(has_assistant, where, ": no \"assistant\" message, so nothing to train on");
  Document doc;
  doc.source = where;
  doc.segments = render_chat(messages, options.chat_format ? *options.chat_format
                                                           : resolve_chat_format(options.chat_template, "", "", where),
                             options.content_specials);
  return doc;
}

void read_jsonl(const std::string& file, const DataOptions& options, std::vector<Document>& out) {
  const std::string content = read_file_to_string(file, "data file");
  std::string_view rest = content;
  int64_t line_no = 0;
  while (!rest.empty()) {
    const size_t nl = rest.find('\n');
    std::string_view line = rest.substr(0, nl);
    rest = nl == std::string_view::npos ? std::string_view{} : rest.substr(nl + 1);
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.find_first_not_of(" \t\r\f\v") == std::string_view::npos) continue;
    const std::string where = file + ":" + std::to_string(line_no);
    json rec;
    try {
      rec = json::parse(line);
    } catch (const json::parse_error& e) {
      std::string msg = e.what();
      // "[json.exception.parse_error.101] parse error at line 1, column 7: ..." -> "parse error at column 7: ...".
      if (const size_t p = msg.find("] "); p != std::string::npos) msg = msg.substr(p + 2);
      // The record is one line, so its "line 1" would only confuse next to the file's line.
      if (const size_t p = msg.find("at line 1, column "); p != std::string::npos) msg.replace(p, 18, "at column ");
      LMTUNE_THROW(where, ": invalid JSON: ", msg);
    }
    LMTUNE_CHECK(rec.is_object(), where, ": expected a JSON object, not ", json_type_name(rec));
    out.push_back(options.format == DataFormat::alpaca ? alpaca_document(rec, options, where)
                                                       : chat_document(rec, options, where));
  }
}

}  // namespace

std::vector<Document> read_documents(const std::vector<std::string>& files, const DataOptions& options) {
  std::vector<Document> docs;
  for (const std::string& file : files) {
    if (options.format == DataFormat::text) {
      std::string text = read_file_to_string(file, "data file");
      if (text.empty()) continue;
      Document doc;
      doc.source = file;
      doc.segments.push_back(Segment{Segment::Kind::text, std::move(text), Trained::yes, options.content_specials});
      docs.push_back(std::move(doc));
    } else {
      read_jsonl(file, options, docs);
    }
  }
  return docs;
}

// ---- tokenizing ----

Example tokenize_document(const Document& document, const Tokenizer& tokenizer, AddBos add_bos, AddEos add_eos) {
  Example ex;
  auto push = [&](int32_t id, Trained t) {
    ex.tokens.push_back(id);
    ex.train_mask.push_back(static_cast<uint8_t>(t));
  };
  const auto& segs = document.segments;
  std::vector<TextPart> parts;
  std::vector<Trained> part_trained;
  std::vector<std::string> joined;  // SentencePiece: adjacent segments of one mark, joined
  std::vector<uint32_t> part_of;
  for (size_t i = 0; i < segs.size();) {
    const Segment& seg = segs[i];
    if (seg.kind != Segment::Kind::text) {
      const bool bos = seg.kind == Segment::Kind::bos;
      const int32_t id = bos ? tokenizer.bos_id() : tokenizer.eos_id();
      LMTUNE_CHECK(id >= 0, document.source, ": the chat template needs the tokenizer's ", bos ? "BOS" : "EOS",
                   " token, which it lacks");
      push(id, seg.trained);
      ++i;
      continue;
    }
    // A run of text segments, encoded together.
    size_t j = i;
    while (j < segs.size() && segs[j].kind == Segment::Kind::text) ++j;
    parts.clear();
    part_trained.clear();
    joined.clear();
    if (tokenizer.family() == Tokenizer::Family::byte_level) {
      for (size_t k = i; k < j; ++k) {
        parts.push_back({segs[k].text, segs[k].specials});
        part_trained.push_back(segs[k].trained);
      }
    } else {
      for (size_t k = i; k < j; ++k) {
        if (k > i && segs[k].trained == segs[k - 1].trained) joined.back() += segs[k].text;
        else joined.push_back(segs[k].text), part_trained.push_back(segs[k].trained);
      }
      for (const std::string& t : joined) parts.push_back({t, SpecialTokens::literal});
    }
    part_of.clear();
    const size_t before = ex.tokens.size();
    tokenizer.encode_parts(parts, ex.tokens, &part_of);
    for (size_t k = before; k < ex.tokens.size(); ++k)
      ex.train_mask.push_back(static_cast<uint8_t>(part_trained[part_of[k - before]]));
    i = j;
  }
  if (add_bos == AddBos::yes) {
    LMTUNE_CHECK(tokenizer.bos_id() >= 0, document.source, ": data.add_bos is true but the tokenizer has no BOS ",
                 "token (Qwen models use none); set data.add_bos: false");
    if (ex.tokens.empty() || ex.tokens.front() != tokenizer.bos_id()) {  // a template may have written it
      ex.tokens.insert(ex.tokens.begin(), tokenizer.bos_id());
      ex.train_mask.insert(ex.train_mask.begin(), 0);
    } else {
      ex.train_mask.front() = 0;
    }
  }
  if (add_eos == AddEos::yes) {
    LMTUNE_CHECK(tokenizer.eos_id() >= 0, document.source, ": data.add_eos is true but the tokenizer has no EOS token");
    if (ex.tokens.empty() || ex.tokens.back() != tokenizer.eos_id()) push(tokenizer.eos_id(), Trained::yes);
  }
  return ex;
}

std::vector<Example> tokenize_documents(const std::vector<Document>& documents, const Tokenizer& tokenizer,
                                        AddBos add_bos, AddEos add_eos) {
  std::vector<Example> out(documents.size());
  const size_t n = documents.size();
  const size_t hw = std::max(1u, std::thread::hardware_concurrency());
  const size_t workers = std::min({hw, size_t{8}, n});
  if (workers <= 1) {
    for (size_t i = 0; i < n; ++i) out[i] = tokenize_document(documents[i], tokenizer, add_bos, add_eos);
    return out;
  }
  // Documents are handed out one at a time (chapters differ a lot in length); each lands at
  // its own index, so the result does not depend on the scheduling.
  std::atomic<size_t> next{0};
  std::vector<std::exception_ptr> errors(workers);
  std::vector<std::thread> threads;
  for (size_t w = 0; w < workers; ++w) {
    threads.emplace_back([&, w] {
      try {
        for (size_t i = next++; i < n; i = next++) out[i] = tokenize_document(documents[i], tokenizer, add_bos, add_eos);
      } catch (...) {
        errors[w] = std::current_exception();
        next = n;
      }
    });
  }
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  return out;
}

// ---- shuffling ----

namespace {
// Uniform in [0, bound): reject the lowest 2^64 mod bound values so every residue is
// equally likely (OpenBSD's arc4random_uniform).
uint64_t uniform_below(std::mt19937_64& rng, uint64_t bound) {
  const uint64_t threshold = (0 - bound) % bound;
  for (;;) {
    const uint64_t x = rng();
    if (x >= threshold) return x % bound;
  }
}
}  // namespace

std::vector<int64_t> shuffled_order(int64_t n, uint64_t seed) {
  LMTUNE_ASSERT(n >= 0);
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  std::mt19937_64 rng(seed);
  for (int64_t i = n - 1; i > 0; --i) {
    const int64_t j = static_cast<int64_t>(uniform_below(rng, static_cast<uint64_t>(i) + 1));
    std::swap(order[i], order[j]);
  }
  return order;
}

// ---- rows ----

PackedDataset PackedDataset::build(const std::vector<Example>& examples, int64_t seq_len, Packing packing,
                                   Shuffle shuffle, int32_t pad_id) {
  LMTUNE_CHECK(seq_len >= 1, "seq_len must be at least 1, got ", seq_len);
  PackedDataset ds;
  ds.seq_len_ = seq_len;
  ds.shuffle_ = shuffle;
  const int64_t T = seq_len;
  ds.stats_.examples = static_cast<int64_t>(examples.size());
  for (const Example& ex : examples) {
    LMTUNE_ASSERT(ex.tokens.size() == ex.train_mask.size(), "tokens and train_mask differ in length");
    ds.stats_.tokens += static_cast<int64_t>(ex.tokens.size());
  }

  // Appends the row row_tokens[0..n) (n <= T + 1) with its mask, padded; drops it when no
  // target is trained.
  auto add_row = [&](const int32_t* tok, const uint8_t* mask, int64_t n) {
    const size_t at = ds.inputs_.size();
    ds.inputs_.resize(at + T, pad_id);
    ds.targets_.resize(at + T, -1);
    int64_t trained = 0;
    for (int64_t t = 0; t < T; ++t) {
      if (t < n) ds.inputs_[at + t] = tok[t];
      if (t + 1 < n && mask[t + 1]) {
        ds.targets_[at + t] = tok[t + 1];
        ++trained;
      }
    }
    if (trained == 0) {
      ds.inputs_.resize(at);
      ds.targets_.resize(at);
      ++ds.stats_.dropped_rows;
      return;
    }
    ds.stats_.targets += trained;
  };

  if (packing == Packing::on) {
    std::vector<int32_t> stream;
    std::vector<uint8_t> mask;
    stream.reserve(static_cast<size_t>(ds.stats_.tokens));
    mask.reserve(static_cast<size_t>(ds.stats_.tokens));
    for (const Example& ex : examples) {
      stream.insert(stream.end(), ex.tokens.begin(), ex.tokens.end());
      mask.insert(mask.end(), ex.train_mask.begin(), ex.train_mask.end());
    }
    const int64_t n = static_cast<int64_t>(stream.size());
    for (int64_t start = 0; start + 1 < n; start += T) {
      add_row(stream.data() + start, mask.data() + start, std::min(T + 1, n - start));
    }
  } else {
    for (const Example& ex : examples) {
      const int64_t n = static_cast<int64_t>(ex.tokens.size());
      if (n > T + 1) {
        ++ds.stats_.truncated_examples;
        ds.stats_.truncated_tokens += n - (T + 1);
      }
      add_row(ex.tokens.data(), ex.train_mask.data(), std::min(T + 1, n));
    }
  }
  return ds;
}

uint64_t PackedDataset::content_hash() const {
  // FNV-1a over 32-bit words, with a final avalanche: fast, and any change of a token,
  // a target or the row count changes it (up to 2^-64 collisions).
  uint64_t h = 0xcbf29ce484222325ull ^ static_cast<uint64_t>(seq_len_);
  for (const std::vector<int32_t>* v : {&inputs_, &targets_})
    for (int32_t x : *v) h = (h ^ static_cast<uint32_t>(x)) * 0x100000001b3ull;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  return h ^ (h >> 33);
}

std::span<const int32_t> PackedDataset::inputs(int64_t row) const {
  LMTUNE_ASSERT(row >= 0 && row < num_rows(), "row ", row, " of ", num_rows());
  return {inputs_.data() + row * seq_len_, static_cast<size_t>(seq_len_)};
}

std::span<const int32_t> PackedDataset::targets(int64_t row) const {
  LMTUNE_ASSERT(row >= 0 && row < num_rows(), "row ", row, " of ", num_rows());
  return {targets_.data() + row * seq_len_, static_cast<size_t>(seq_len_)};
}

// ---- the whole pipeline ----

namespace {

std::string join_patterns(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& p : v) s += (s.empty() ? "'" : ", '") + p + "'";
  return s;
}

PackedDataset pack(const std::vector<Document>& docs, const DataOptions& options, const Tokenizer& tokenizer,
                   Shuffle shuffle) {
  const std::vector<Example> examples = tokenize_documents(docs, tokenizer, options.add_bos, options.add_eos);
  const int32_t pad_id = tokenizer.eos_id() >= 0 ? tokenizer.eos_id() : 0;
  return PackedDataset::build(examples, options.seq_len, options.packing, shuffle, pad_id);
}

}  // namespace

DataSplit load_data(const DataOptions& given, const Tokenizer& tokenizer) {
  DataOptions options = given;
  LMTUNE_CHECK(options.seq_len >= 1, "seq_len must be at least 1, got ", options.seq_len);
  LMTUNE_CHECK(options.validation_fraction >= 0.0 && options.validation_fraction < 1.0,
               "validation_fraction must be in [0, 1), got ", options.validation_fraction);
  LMTUNE_CHECK(options.validation_every_nth == 0 || options.validation_every_nth >= 2,
               "validation_every_nth must be 0 (off) or at least 2, got ", options.validation_every_nth);
  LMTUNE_CHECK(int{!options.validation_files.empty()} + int{options.validation_fraction > 0.0} +
                       int{options.validation_every_nth > 0} <= 1,
               "set at most one of validation_files, validation_fraction and validation_every_nth");
  if (options.format == DataFormat::chat && !options.chat_format) {
    const std::string bos = tokenizer.bos_id() >= 0 ? tokenizer.piece(tokenizer.bos_id()) : "";
    options.chat_format = resolve_chat_format(options.chat_template, tokenizer.chat_template(), bos,
                                              "the model's tokenizer_config.json");
  }
  if (options.format == DataFormat::alpaca && !options.prompt_template.empty()) {
    LMTUNE_CHECK(options.prompt_template.find("{instruction}") != std::string::npos,
                 "prompt_template has no {instruction} placeholder");
  }

  const std::vector<std::string> train_files = expand_file_patterns(options.train_files, "train_files");
  std::vector<Document> train_docs = read_documents(train_files, options);
  LMTUNE_CHECK(!train_docs.empty(), "train_files (", join_patterns(options.train_files),
               ") hold no documents: every file is empty");

  std::vector<Document> val_docs;
  if (!options.validation_files.empty()) {
    const std::vector<std::string> files = expand_file_patterns(options.validation_files, "validation_files");
    val_docs = read_documents(files, options);
    LMTUNE_CHECK(!val_docs.empty(), "validation_files (", join_patterns(options.validation_files),
                 ") hold no documents: every file is empty");
  } else if (options.validation_fraction > 0.0 || options.validation_every_nth > 0) {
    const int64_t n = static_cast<int64_t>(train_docs.size());
    std::vector<uint8_t> held(static_cast<size_t>(n), 0);
    if (options.validation_every_nth > 0) {
      const int64_t every = options.validation_every_nth;
      LMTUNE_CHECK(n >= every, "validation_every_nth ", every, " holds out nothing from ", n,
                   " documents; lower it or use validation_files");
      for (int64_t i = every - 1; i < n; i += every) held[i] = 1;
    } else {
      const int64_t n_val = std::max<int64_t>(1, std::llround(options.validation_fraction * static_cast<double>(n)));
      LMTUNE_CHECK(n_val < n, "validation_fraction ", options.validation_fraction, " of ", n,
                   " documents leaves no training documents; add documents or use validation_files");
      const std::vector<int64_t> order = shuffled_order(n, options.seed ^ 0x9e3779b97f4a7c15ull);
      for (int64_t i = 0; i < n_val; ++i) held[order[i]] = 1;
    }
    std::vector<Document> kept;
    for (int64_t i = 0; i < n; ++i) (held[i] ? val_docs : kept).push_back(std::move(train_docs[i]));
    train_docs = std::move(kept);
  }

  DataSplit split;
  split.chat_format = options.chat_format;
  split.train = pack(train_docs, options, tokenizer, options.shuffle);
  LMTUNE_CHECK(split.train.num_rows() > 0, "train data (", join_patterns(options.train_files),
               ") gives no row with a trained token (", train_docs.size(), " documents, ",
               split.train.stats().tokens, " tokens, seq_len ", options.seq_len, ")");
  if (!val_docs.empty()) split.validation = pack(val_docs, options, tokenizer, Shuffle::off);
  return split;
}

// ---- the loader ----

DataLoader::DataLoader(const PackedDataset& dataset, int64_t micro_batch_size, uint64_t seed, DataShard shard)
    : dataset_(&dataset), micro_batch_size_(micro_batch_size), seed_(seed), shard_(shard) {
  LMTUNE_CHECK(micro_batch_size >= 1, "micro_batch_size must be at least 1, got ", micro_batch_size);
  LMTUNE_CHECK(shard.count >= 1 && shard.rank >= 0 && shard.rank < shard.count, "data shard ", shard.rank, " of ",
               shard.count, " is out of range");
  const int64_t rows_per_step = micro_batch_size * shard.count;
  steps_per_epoch_ = dataset.num_rows() / rows_per_step;
  LMTUNE_CHECK(steps_per_epoch_ >= 1, "the dataset has ", dataset.num_rows(), " rows of ", dataset.seq_len(),
               " tokens, fewer than one step needs (micro_batch_size ", micro_batch_size, " x ", shard.count,
               " data-parallel ranks); add data or lower micro_batch_size or seq_len");
}

const std::vector<int64_t>& DataLoader::order_for(int64_t epoch) {
  if (order_epoch_ != epoch) {
    const int64_t n = dataset_->num_rows();
    if (dataset_->shuffle() == Shuffle::on) {
      order_ = shuffled_order(n, seed_ + static_cast<uint64_t>(epoch));
    } else {
      order_.resize(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) order_[i] = i;
    }
    order_epoch_ = epoch;
  }
  return order_;
}

Batch DataLoader::next() {
  const int64_t rows_per_step = micro_batch_size_ * shard_.count;
  if (state_.position + rows_per_step > steps_per_epoch_ * rows_per_step) {
    ++state_.epoch;
    state_.position = 0;
  }
  const std::vector<int64_t>& order = order_for(state_.epoch);
  const int64_t T = dataset_->seq_len();
  Batch b;
  b.B = micro_batch_size_;
  b.T = T;
  b.tokens.resize(static_cast<size_t>(b.B * T));
  b.targets.resize(static_cast<size_t>(b.B * T));
  const int64_t first = state_.position + shard_.rank * micro_batch_size_;
  for (int64_t i = 0; i < b.B; ++i) {
    const int64_t row = order[first + i];
    const auto in = dataset_->inputs(row);
    const auto tg = dataset_->targets(row);
    std::copy(in.begin(), in.end(), b.tokens.begin() + i * T);
    std::copy(tg.begin(), tg.end(), b.targets.begin() + i * T);
    for (int32_t t : tg) b.num_targets += t >= 0;
  }
  state_.position += rows_per_step;
  return b;
}

void DataLoader::restore(State state) {
  const int64_t rows_per_step = micro_batch_size_ * shard_.count;
  LMTUNE_CHECK(state.epoch >= 0 && state.position >= 0 && state.position <= steps_per_epoch_ * rows_per_step,
               "cannot restore the data loader to epoch ", state.epoch, ", position ", state.position,
               ": an epoch here is ", steps_per_epoch_ * rows_per_step,
               " rows (was the checkpoint saved with other data or another batch size?)");
  state_ = state;
}

}  // namespace lmtune
