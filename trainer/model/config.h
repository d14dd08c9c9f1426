// LLaMA-family model configuration, read from / written to HF config.json.
//
// One decoder shape covers the families we support; config.json's model_type says which
// one a checkpoint is, and the family fixes what the keys mean (as HF's classes do):
//   llama  LlamaForCausalLM   attention_bias: biases on q, k, v and o
//   qwen2  Qwen2ForCausalLM   biases on q, k, v always (no attention_bias key), none on o
//   qwen3  Qwen3ForCausalLM   RMSNorm over each head of q and k (q_norm, k_norm, weight (D))
//                             after the projection, before RoPE; attention_bias as llama;
//                             head_dim defaults to 128 (Qwen3Config)
// head_dim may differ from hidden_size / num_attention_heads (q: (Hq*D, C), o: (C, Hq*D)).
// RoPE scaling (rope_scaling): none, linear (positions / factor) or llama3 (Llama 3.1's
// frequency bands); anything else is refused at load. What the scaling does to each
// frequency is in trainer/model/rope.h.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace lmtune {

enum class ModelFamily { llama, qwen2, qwen3 };
// HF's model_type: "llama", "qwen2", "qwen3".
std::string_view model_family_name(ModelFamily f);

enum class RopeScalingType { none, linear, llama3 };
std::string_view rope_scaling_type_name(RopeScalingType t);  // "default", "linear", "llama3"

// config.json rope_scaling (HF names). linear uses factor; llama3 all four.
struct RopeScaling {
  RopeScalingType type = RopeScalingType::none;
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct LlamaConfig {
  ModelFamily family = ModelFamily::llama;  // config.json model_type
  int64_t hidden_size = 0;              // C
  int64_t intermediate_size = 0;        // H (SwiGLU hidden)
  int64_t num_hidden_layers = 0;        // L
  int64_t num_attention_heads = 0;      // Hq
  int64_t num_key_value_heads = 0;      // Hkv (== Hq when absent from config.json)
  int64_t attention_head_dim = 0;       // config.json head_dim (D); 0: hidden_size / num_attention_heads
  int64_t vocab_size = 0;               // V
  double rms_norm_eps = 1e-6;            // HF LlamaConfig's default when config.json omits it
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  int64_t max_position_embeddings = 2048;
  bool tie_word_embeddings = false;
  bool attention_bias = false;          // config.json attention_bias (llama, qwen3: q, k, v and o)
  int64_t bos_token_id = 1;
  int64_t eos_token_id = 2;
  std::string torch_dtype = "float32";  // as written to config.json

  int64_t head_dim() const {
    return attention_head_dim > 0 ? attention_head_dim : hidden_size / num_attention_heads;
  }
  int64_t q_dim() const { return head_dim() * num_attention_heads; }
  int64_t kv_dim() const { return head_dim() * num_key_value_heads; }
  bool qkv_bias() const { return family == ModelFamily::qwen2 || attention_bias; }
  bool o_bias() const { return family != ModelFamily::qwen2 && attention_bias; }
  bool qk_norm() const { return family == ModelFamily::qwen3; }
  // Checks the values are consistent (heads divide the width, etc.); throws naming `source`.
  void validate(const std::string& source) const;
};

// Reads config.json. Required keys: hidden_size, intermediate_size, num_hidden_layers,
// num_attention_heads, vocab_size. A missing required key, a wrong type, an inconsistent
// value, a model_type or rope_scaling type we do not support is an error naming the file
// and the key.
LlamaConfig load_llama_config(const std::filesystem::path& config_json);
// Writes config.json as HF writes it for the family's *ForCausalLM (atomically: temp file
// + rename); load_llama_config reads back the same config.
void save_llama_config(const std::filesystem::path& config_json, const LlamaConfig& cfg);

}  // namespace lmtune
