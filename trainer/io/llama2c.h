// Import of llama2.c checkpoints (model.bin, legacy format) and tokenizer.bin into an HF
// model directory (config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
// generation_config.json).
#pragma once

#include <cstdint>
#include <filesystem>

namespace lmtune {

// The 7-int32 header of a llama2.c model.bin.
struct Llama2cHeader {
  int32_t dim = 0;
  int32_t hidden_dim = 0;
  int32_t n_layers = 0;
  int32_t n_heads = 0;
  int32_t n_kv_heads = 0;
  int32_t vocab_size = 0;  // negative in the file: the classifier is not shared with the embedding
  int32_t seq_len = 0;
  bool shared_classifier = true;
};

// Reads and validates the header (sizes positive and consistent, file size exactly the one
// the header implies). Errors name the file, the expected and the actual byte count.
Llama2cHeader read_llama2c_header(const std::filesystem::path& model_bin);
// Bytes a model.bin with this header must have.
uint64_t llama2c_expected_bytes(const Llama2cHeader& h);

// Writes out_dir/{config.json, model.safetensors (F32, HF names; q/k permuted from
// llama2.c's interleaved RoPE to HF's rotate-half layout), tokenizer.json,
// tokenizer_config.json, generation_config.json}. out_dir is created if needed; existing
// files of those names are replaced, each atomically.
void import_llama2c(const std::filesystem::path& model_bin, const std::filesystem::path& tokenizer_bin,
                    const std::filesystem::path& out_dir);

}  // namespace lmtune
