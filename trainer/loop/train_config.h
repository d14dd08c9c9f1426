// The training configuration: the YAML file `lmtune train` reads, parsed into typed structs.
//
// Design note.
//  - Schema. Six sections (model, method, data, train, parallel, output); every key has a
//    type, a range and (unless it is required) a default, all listed in train_config.cpp
//    and in the annotated examples under configs/. Required: model.path, data.train_files,
//    output.dir, and exactly one of train.max_steps / train.epochs.
//  - Nothing is silently accepted. An unknown section or key, a duplicate key, a value of
//    the wrong type (a list where a scalar belongs, a word where a number belongs), a value
//    out of range, an invalid enum value, a missing required key, a path that does not
//    exist, a glob that matches nothing, a parallel setting this release cannot run: each
//    is an lmtune::Error whose message names the file (with the line where the YAML has
//    one), the dotted key, the offending value and what was expected, plus the closest
//    valid key or value for a typo. All problems of a file are reported together.
//  - Overrides ("train.lr=1e-4", "method.lora.target_modules=[q,k]") use the dotted paths of
//    the file; the value is parsed as YAML. They are applied to the YAML tree before
//    validation, so an overridden value is checked exactly like one from the file, and an
//    error in it says which override it came from.
//  - Overlays (`lmtune train CONFIG --plan plan.yaml`; the planner writes them) are partial
//    configs in the same schema, applied after the file and before the overrides: a mapping
//    merges into the section it names, any other value replaces the one at its key. An
//    unknown key is an error naming the overlay file and line, and an invalid value from an
//    overlay is reported at the overlay's line.
//  - Paths. Relative paths are resolved against the current working directory (as torchtune
//    does), not the YAML file's directory, and stored absolute, so the resolved config means
//    the same thing wherever it is read again. Inputs must exist when the config is loaded
//    (model.path, every data.train_files / validation_files pattern, lora.init_from,
//    train.resume_from); output.dir is created later by the trainer.
//  - Round trip. to_yaml() writes every key with defaults filled in (optional keys that are
//    unset as null); load_train_config() of that text gives back an equal TrainConfig.
//    The trainer prints it at start and saves it with every checkpoint.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "trainer/core/dtype.h"
#include "trainer/data/dataset.h"  // DataFormat (text | alpaca | chat), shared with the data pipeline
#include "trainer/peft/quant_options.h"  // QatScheme
#include "trainer/model/recompute.h"  // Recompute (none | full | selective), shared with the model

namespace lmtune {

// qlora: LoRA (method.lora) over a base whose projection matrices are stored as NF4.
enum class MethodType { lora, full, qlora };
// The methods that train LoRA adapters (method.lora): lora and qlora.
bool uses_lora(MethodType t);
// The linear layers of a LLaMA block LoRA can adapt (PEFT's q_proj ... down_proj).
enum class LoraTarget { q, k, v, o, gate, up, down };
enum class ChatTemplate { auto_detect, llama3, qwen3, chatml, llama2, plain };  // YAML: auto | llama3 | ...
enum class LrSchedule { cosine, linear, constant };
enum class Offload { none, optimizer, params };
enum class ValidationSplitKind { none, every_nth, fraction };
enum class ResumeMode { none, latest, checkpoint };  // YAML: null | "auto" | a checkpoint dir

std::string_view to_string(MethodType v);
std::string_view to_string(QatScheme v);
std::string_view to_string(LoraTarget v);
std::string_view to_string(DataFormat v);
std::string_view to_string(ChatTemplate v);
std::string_view to_string(LrSchedule v);
std::string_view to_string(Recompute v);
std::string_view to_string(Offload v);

struct ModelSection {
  std::filesystem::path path;  // absolute; a Hugging Face model directory (config.json inside)
  DType dtype = DType::f32;    // storage dtype of the frozen base weights: f32, bf16 or f16
  bool operator==(const ModelSection&) const = default;
};

struct LoraSection {
  int64_t rank = 8;
  double alpha = 16.0;
  double dropout = 0.0;  // [0, 1)
  bool rslora = false;   // scale alpha / sqrt(rank) instead of alpha / rank
  // Sorted in enum order, no duplicates, never empty. "all-linear" in YAML is all seven.
  std::vector<LoraTarget> target_modules = {LoraTarget::q, LoraTarget::v};
  std::optional<std::filesystem::path> init_from;  // absolute; safetensors with PEFT key names
  double scale() const;
  bool operator==(const LoraSection&) const = default;
};

// Quantization-aware training, with method.type lora or full (trainer/peft/qat.h).
struct QatSection {
  QatScheme scheme = QatScheme::none;  // YAML: none | q4_0
  bool operator==(const QatSection&) const = default;
};

struct MethodSection {
  MethodType type = MethodType::lora;
  LoraSection lora;  // read (and validated) whatever the type; used by lora and qlora
  QatSection qat;
  bool operator==(const MethodSection&) const = default;
};

struct ValidationSplit {
  ValidationSplitKind kind = ValidationSplitKind::none;
  int64_t every_nth = 0;  // kind == every_nth: hold out every n-th document (n >= 2)
  double fraction = 0.0;  // kind == fraction: hold out this share of documents, (0, 1)
  bool operator==(const ValidationSplit&) const = default;
};

struct DataSection {
  DataFormat format = DataFormat::text;
  // Patterns as written (absolute), and the files they match: each pattern's matches
  // sorted, patterns in order, duplicates dropped. Never empty for train.
  std::vector<std::string> train_files;
  std::vector<std::filesystem::path> train_paths;
  std::vector<std::string> validation_files;  // empty: none
  std::vector<std::filesystem::path> validation_paths;
  ValidationSplit validation_split;  // only when validation_files is empty
  int64_t seq_len = 256;
  bool packing = true;
  bool add_bos = true;
  bool add_eos = true;
  // alpaca: the prompt, with {instruction} and optionally {input}; the record's output is
  // appended after it (and is what the loss is taken on). Empty: Stanford Alpaca's two
  // templates (with input / without input), as the data pipeline renders them.
  std::string prompt_template;
  // chat: auto (the model's declared template, chatml when it declares none) or a built-in
  // renderer (trainer/data/chat_template.h).
  ChatTemplate chat_template = ChatTemplate::auto_detect;
  // Text in the data that spells a special token (<|eot_id|>) becomes that token (true, as HF
  // tokenizers do) or stays text (false, so data cannot inject control tokens). Byte-level
  // tokenizers; SentencePiece ones never parse special tokens.
  bool parse_special_tokens = true;
  bool shuffle = true;
  uint64_t seed = 0;
  bool operator==(const DataSection&) const = default;
};

struct ResumeFrom {
  ResumeMode mode = ResumeMode::none;
  std::filesystem::path dir;  // mode == checkpoint: an existing checkpoint directory (absolute)
  bool operator==(const ResumeFrom&) const = default;
};

struct TrainSection {
  // Exactly one of the two is set.
  std::optional<int64_t> max_steps;  // >= 1 optimizer steps
  std::optional<double> epochs;      // > 0 passes over the training data
  int64_t micro_batch_size = 8;
  int64_t grad_accum_steps = 1;
  double lr = 3e-4;
  double min_lr_ratio = 0.1;  // the schedule decays to lr * min_lr_ratio
  double weight_decay = 0.0;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_eps = 1e-8;
  int64_t warmup_steps = 0;
  LrSchedule schedule = LrSchedule::cosine;
  double max_grad_norm = 1.0;  // 0: no clipping
  uint64_t seed = 0;
  int64_t threads = 0;  // 0: all cores
  int64_t log_every = 10;
  int64_t eval_every = 100;  // 0: only at the end
  int64_t eval_batches = 20;
  int64_t save_every = 0;  // 0: only at the end
  std::string sample_prompt = "Once upon a time";
  int64_t sample_tokens = 40;  // 0: no samples
  ResumeFrom resume_from;
  bool operator==(const TrainSection&) const = default;
};

// How the ranks share the work. This release runs data parallelism with ZeRO 0-3, CPU
// offload and activation recompute; tp and pp accept only their single-process values.
struct ParallelSection {
  static constexpr int64_t kAuto = 0;  // dp: the world size divided by tp * pp
  int64_t dp = kAuto;  // data-parallel ranks, or kAuto ("auto" in YAML, the default)
  int64_t tp = 1;
  int64_t pp = 1;
  int64_t zero = 0;  // ZeRO stage 0..3
  Recompute recompute = Recompute::none;
  Offload offload = Offload::none;  // params needs zero 3
  int64_t prefetch = 1;             // ZeRO-3: units gathered ahead of the one computing
  double bucket_mb = 25.0;          // gradient bucket size for the data-parallel all-reduce
  bool overlap_grad_reduce = true;  // start a bucket's all-reduce during backward
  bool operator==(const ParallelSection&) const = default;
};

struct OutputSection {
  std::filesystem::path dir;  // absolute; the run directory
  bool overwrite = false;
  bool operator==(const OutputSection&) const = default;
};

struct TrainConfig {
  ModelSection model;
  MethodSection method;
  DataSection data;
  TrainSection train;
  ParallelSection parallel;
  OutputSection output;
  bool operator==(const TrainConfig&) const = default;
};

// A partial config applied over the file (see the note); source_name is its file in messages.
struct ConfigOverlay {
  std::string yaml_text;
  std::string source_name;
};

// Reads `yaml_file`, applies the overlay files in order, then `overrides` ("key.sub=value",
// value parsed as YAML) and validates the result. Throws lmtune::Error listing every problem
// found.
TrainConfig load_train_config(const std::filesystem::path& yaml_file, const std::vector<std::string>& overrides,
                              const std::vector<std::filesystem::path>& overlay_files = {});

// The same from YAML text; `source_name` stands for the file in error messages.
TrainConfig parse_train_config(std::string_view yaml_text, std::string_view source_name,
                               const std::vector<std::string>& overrides,
                               const std::vector<ConfigOverlay>& overlays = {});

// The fully resolved config as YAML: every key, defaults filled in, unset optional keys as
// null. load_train_config() reads it back to an equal TrainConfig.
std::string to_yaml(const TrainConfig& config);

// Every valid dotted key ("model", "model.path", ..., "method.lora.rank", ...), in schema order.
std::vector<std::string> train_config_keys();

}  // namespace lmtune
