// Shared test helpers: the real stories15M model (imported once per test process into a
// temporary directory) and running the lmtune binary as a subprocess.
#pragma once

#include <filesystem>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "trainer/model/config.h"

namespace lmtune::testing {

// models/stories15M/{model.bin,tokenizer.bin}; empty path when not fetched.
std::filesystem::path stories15m_llama2c_dir();
// An HF directory imported from stories15M (once per process); empty when not fetched.
std::filesystem::path stories15m_hf_dir();
// A fresh temporary directory, removed at process exit.
std::filesystem::path temp_dir(const std::string& prefix);

// Writes an HF model directory: config.json for `cfg`, model.safetensors with random weights
// (N(0, 0.2); norm weights 1 + N(0, 0.02)) and stories15M's tokenizer.json (stories15M must
// be fetched). `skip` leaves that tensor out; `halve` writes that tensor with half its
// elements, flattened (both for bad-input tests).
void write_random_model(const std::filesystem::path& dir, const LlamaConfig& cfg, uint64_t seed,
                        const std::string& skip = "", const std::string& halve = "");
// The same with the tokenizer files (tokenizer.json, tokenizer_config.json) of `tokenizer_dir`.
void write_random_model_with_tokenizer(const std::filesystem::path& dir, const LlamaConfig& cfg, uint64_t seed,
                                       const std::filesystem::path& tokenizer_dir);

// A real byte-level tokenizer fetched by scripts/fetch_tokenizers.sh: "llama3" or "qwen3"
// (models/tokenizers/<name>/{tokenizer.json,tokenizer_config.json}); empty when not fetched.
std::filesystem::path real_tokenizer_dir(const std::string& name);
// @huggingface/tokenizers (models/tokenizers/hf-tokenizers-js); empty when not fetched or
// when node is not installed.
std::filesystem::path hf_tokenizers_js_dir();

// A 2-layer, width-32 model (4 query heads, 2 KV heads of 8, MLP 64, context 64) with
// random weights (seed) and stories15M's tokenizer: fast enough to train in a test.
std::filesystem::path write_tiny_train_model(const std::filesystem::path& dir, uint64_t seed = 11);

// Two short stories (DIR/a.txt, DIR/b.txt; DIR is made) for the tiny model to train on.
void write_fox_and_bear_texts(const std::filesystem::path& dir);

struct RunResult {
  int exit_code;
  std::string out;  // stdout
  std::string err;  // stderr
};
// Runs `LMTUNE_BINARY args...` (args passed through the shell, so quote them).
RunResult run_lmtune(const std::string& args);
// Runs any shell command line.
RunResult run_command(const std::string& cmd);

// `LMTUNE_BINARY args...` started in the background (through the shell, which execs it, so
// pid is lmtune's own), its stdout and stderr going to files.
struct Background {
  int pid = -1;
  std::filesystem::path out, err;
};
Background start_lmtune(const std::string& args);
// Waits for it; exit_code is 128 + N when signal N ended it, as a shell reports it.
RunResult wait_lmtune(const Background& b);

// "step:loss" of every step line of RUN_DIR/metrics.jsonl, in order (the loss as JSON wrote it,
// every digit).
std::vector<std::string> logged_losses(const std::filesystem::path& run_dir);

// Every logical tensor of a training checkpoint (any layout, any format version), read
// through CheckpointReader as f32 values, by name.
std::map<std::string, std::vector<float>> read_checkpoint_tensors(const std::filesystem::path& checkpoint_dir);

}  // namespace lmtune::testing
