// LLaMA-family model configuration, read from / written to HF config.json.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace lmtune {

struct LlamaConfig {
  int64_t hidden_size = 0;              // C
  int64_t intermediate_size = 0;        // H (SwiGLU hidden)
  int64_t num_hidden_layers = 0;        // L
  int64_t num_attention_heads = 0;      // Hq
  int64_t num_key_value_heads = 0;      // Hkv (== Hq when absent from config.json)
  int64_t vocab_size = 0;               // V
  double rms_norm_eps = 1e-6;            // HF LlamaConfig's default when config.json omits it
  double rope_theta = 10000.0;
  int64_t max_position_embeddings = 2048;
  bool tie_word_embeddings = false;
  bool attention_bias = false;          // q/k/v biases (Qwen2-style checkpoints)
  int64_t bos_token_id = 1;
  int64_t eos_token_id = 2;
  std::string torch_dtype = "float32";  // as written to config.json

  int64_t head_dim() const { return hidden_size / num_attention_heads; }
  int64_t kv_dim() const { return head_dim() * num_key_value_heads; }
  // Checks the values are consistent (heads divide the width, etc.); throws naming `source`.
  void validate(const std::string& source) const;
};

// Reads config.json. Required keys: hidden_size, intermediate_size, num_hidden_layers,
// num_attention_heads, vocab_size. A missing required key, a wrong type or an
// inconsistent value is an error naming the file and the key.
LlamaConfig load_llama_config(const std::filesystem::path& config_json);
// Writes config.json for LlamaForCausalLM (atomically: temp file + rename).
void save_llama_config(const std::filesystem::path& config_json, const LlamaConfig& cfg);

}  // namespace lmtune
