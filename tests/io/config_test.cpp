#include "trainer/model/config.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "io/io_test_util.h"

namespace lmtune {
namespace {

using test::expect_error;
using test::TempDir;

nlohmann::json base_config() {
  return {{"hidden_size", 64},         {"intermediate_size", 172}, {"num_hidden_layers", 2},
          {"num_attention_heads", 4},  {"vocab_size", 300},        {"rms_norm_eps", 1e-6},
          {"rope_theta", 500000.0},    {"max_position_embeddings", 128}};
}

std::filesystem::path write_config(const TempDir& dir, const nlohmann::json& j) {
  const auto p = dir / "config.json";
  test::write_bytes(p, j.dump(2));
  return p;
}

TEST(Config, LoadsRequiredAndDefaults) {
  TempDir dir;
  const LlamaConfig c = load_llama_config(write_config(dir, base_config()));
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.intermediate_size, 172);
  EXPECT_EQ(c.num_hidden_layers, 2);
  EXPECT_EQ(c.num_attention_heads, 4);
  EXPECT_EQ(c.num_key_value_heads, 4);  // defaults to the number of heads
  EXPECT_EQ(c.vocab_size, 300);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.max_position_embeddings, 128);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_id, 2);
  EXPECT_EQ(c.head_dim(), 16);
  EXPECT_EQ(c.family, ModelFamily::llama);  // no model_type: llama
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::none);
  EXPECT_FALSE(c.qkv_bias());
  EXPECT_FALSE(c.o_bias());
  EXPECT_FALSE(c.qk_norm());
}

TEST(Config, OptionalKeysNullAndEosList) {
  TempDir dir;
  auto j = base_config();
  j["num_key_value_heads"] = 2;
  j["tie_word_embeddings"] = true;
  j["eos_token_id"] = {5, 7};
  j["bos_token_id"] = nullptr;
  j["torch_dtype"] = "bfloat16";
  j["rope_scaling"] = nullptr;
  const LlamaConfig c = load_llama_config(write_config(dir, j));
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.eos_token_id, 5);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
}

TEST(Config, SaveRoundTrip) {
  TempDir dir;
  LlamaConfig c;
  c.hidden_size = 288;
  c.intermediate_size = 768;
  c.num_hidden_layers = 6;
  c.num_attention_heads = 6;
  c.num_key_value_heads = 3;
  c.vocab_size = 32000;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.max_position_embeddings = 256;
  c.tie_word_embeddings = true;
  c.attention_bias = true;
  c.rope_scaling = {RopeScalingType::llama3, 8.0, 1.0, 4.0, 8192};
  c.bos_token_id = 1;
  c.eos_token_id = 2;
  c.torch_dtype = "float32";
  const auto p = dir / "config.json";
  save_llama_config(p, c);
  const auto j = nlohmann::json::parse(test::read_bytes(p));
  EXPECT_EQ(j["architectures"], nlohmann::json::array({"LlamaForCausalLM"}));
  EXPECT_EQ(j["model_type"], "llama");
  EXPECT_EQ(j["hidden_act"], "silu");
  EXPECT_EQ(j["head_dim"], 48);
  EXPECT_EQ(j["attention_bias"], true);
  // Llama 3.1's config.json spelling.
  EXPECT_EQ(j["rope_scaling"], nlohmann::json::parse(R"({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})"));
  const LlamaConfig d = load_llama_config(p);
  EXPECT_EQ(d.hidden_size, c.hidden_size);
  EXPECT_EQ(d.intermediate_size, c.intermediate_size);
  EXPECT_EQ(d.num_hidden_layers, c.num_hidden_layers);
  EXPECT_EQ(d.num_attention_heads, c.num_attention_heads);
  EXPECT_EQ(d.num_key_value_heads, c.num_key_value_heads);
  EXPECT_EQ(d.vocab_size, c.vocab_size);
  EXPECT_EQ(d.rms_norm_eps, c.rms_norm_eps);
  EXPECT_EQ(d.rope_theta, c.rope_theta);
  EXPECT_EQ(d.max_position_embeddings, c.max_position_embeddings);
  EXPECT_EQ(d.tie_word_embeddings, c.tie_word_embeddings);
  EXPECT_EQ(d.attention_bias, c.attention_bias);
  EXPECT_EQ(d.torch_dtype, c.torch_dtype);
  EXPECT_EQ(d.family, ModelFamily::llama);
  EXPECT_EQ(d.rope_scaling.type, RopeScalingType::llama3);
  EXPECT_EQ(d.rope_scaling.factor, 8.0);
  EXPECT_EQ(d.rope_scaling.low_freq_factor, 1.0);
  EXPECT_EQ(d.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(d.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_TRUE(d.qkv_bias());
  EXPECT_TRUE(d.o_bias());  // HF LlamaAttention: attention_bias biases o_proj too
}

TEST(Config, SaveRoundTripQwen) {
  TempDir dir;
  LlamaConfig c;
  c.family = ModelFamily::qwen3;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.attention_head_dim = 24;  // not 64 / 4
  c.vocab_size = 300;
  c.rope_theta = 1000000.0;
  c.rope_scaling.type = RopeScalingType::linear;
  c.rope_scaling.factor = 2.0;
  const auto p = dir / "config.json";
  save_llama_config(p, c);
  auto j = nlohmann::json::parse(test::read_bytes(p));
  EXPECT_EQ(j["architectures"], nlohmann::json::array({"Qwen3ForCausalLM"}));
  EXPECT_EQ(j["model_type"], "qwen3");
  EXPECT_EQ(j["head_dim"], 24);
  EXPECT_EQ(j["rope_scaling"], nlohmann::json::parse(R"({"rope_type": "linear", "factor": 2.0})"));
  EXPECT_EQ(j["use_sliding_window"], false);
  EXPECT_FALSE(j.contains("mlp_bias"));
  LlamaConfig d = load_llama_config(p);
  EXPECT_EQ(d.family, ModelFamily::qwen3);
  EXPECT_EQ(d.head_dim(), 24);
  EXPECT_EQ(d.q_dim(), 96);
  EXPECT_EQ(d.kv_dim(), 48);
  EXPECT_TRUE(d.qk_norm());
  EXPECT_FALSE(d.qkv_bias());
  EXPECT_EQ(d.rope_scaling.type, RopeScalingType::linear);
  EXPECT_EQ(d.rope_scaling.factor, 2.0);
  EXPECT_EQ(d.rope_theta, 1000000.0);

  c.family = ModelFamily::qwen2;
  c.attention_head_dim = 0;
  c.rope_scaling = {};
  save_llama_config(p, c);
  j = nlohmann::json::parse(test::read_bytes(p));
  EXPECT_EQ(j["architectures"], nlohmann::json::array({"Qwen2ForCausalLM"}));
  EXPECT_EQ(j["model_type"], "qwen2");
  EXPECT_FALSE(j.contains("attention_bias"));  // Qwen2Config has none: q/k/v biases always
  EXPECT_TRUE(j["rope_scaling"].is_null());
  d = load_llama_config(p);
  EXPECT_EQ(d.family, ModelFamily::qwen2);
  EXPECT_EQ(d.head_dim(), 16);
  EXPECT_TRUE(d.qkv_bias());
  EXPECT_FALSE(d.o_bias());
  EXPECT_FALSE(d.qk_norm());
}

// Configs as the hub has them (the keys that matter, values shrunk).
TEST(Config, QwenFamiliesFromModelType) {
  TempDir dir;
  auto j = base_config();
  j["model_type"] = "qwen2";
  j["architectures"] = {"Qwen2ForCausalLM"};
  j["num_key_value_heads"] = 2;
  j["use_sliding_window"] = false;
  j["sliding_window"] = 32768;  // ignored unless use_sliding_window (as HF Qwen2Config)
  j["max_window_layers"] = 28;
  j["tie_word_embeddings"] = true;
  LlamaConfig c = load_llama_config(write_config(dir, j));
  EXPECT_EQ(c.family, ModelFamily::qwen2);
  EXPECT_TRUE(c.qkv_bias());  // implied by the family: there is no attention_bias key
  EXPECT_FALSE(c.o_bias());
  EXPECT_FALSE(c.qk_norm());
  EXPECT_EQ(c.head_dim(), 16);
  j["attention_bias"] = false;  // HF's Qwen2 ignores the key; so do we
  c = load_llama_config(write_config(dir, j));
  EXPECT_TRUE(c.qkv_bias());

  j = base_config();
  j["model_type"] = "qwen3";
  j["head_dim"] = 32;  // Qwen3-0.6B: 16 heads of 128 on a width of 1024
  j["attention_bias"] = false;
  j["rope_scaling"] = nullptr;
  c = load_llama_config(write_config(dir, j));
  EXPECT_EQ(c.family, ModelFamily::qwen3);
  EXPECT_TRUE(c.qk_norm());
  EXPECT_FALSE(c.qkv_bias());
  EXPECT_EQ(c.head_dim(), 32);
  EXPECT_EQ(c.q_dim(), 128);
  j.erase("head_dim");
  EXPECT_EQ(load_llama_config(write_config(dir, j)).head_dim(), 128);  // Qwen3Config's default
  j["head_dim"] = nullptr;
  j["model_type"] = "llama";
  EXPECT_EQ(load_llama_config(write_config(dir, j)).head_dim(), 16);  // LlamaConfig: hidden / heads
  j["head_dim"] = 24;
  j["num_attention_heads"] = 3;  // 64 / 3 is no integer; with head_dim that is fine
  EXPECT_EQ(load_llama_config(write_config(dir, j)).q_dim(), 72);
}

TEST(Config, RopeScalingSpellings) {
  TempDir dir;
  auto j = base_config();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 4}};  // the older key, an integer factor
  LlamaConfig c = load_llama_config(write_config(dir, j));
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::linear);
  EXPECT_EQ(c.rope_scaling.factor, 4.0);
  j["rope_scaling"] = {{"rope_type", "default"}};
  EXPECT_EQ(load_llama_config(write_config(dir, j)).rope_scaling.type, RopeScalingType::none);
  // transformers 5 keeps rope_theta and the scaling together in rope_parameters.
  j.erase("rope_scaling");
  j["rope_parameters"] = {{"rope_type", "llama3"}, {"rope_theta", 500000.0}, {"factor", 32.0},
                          {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                          {"original_max_position_embeddings", 8192}};
  j["rope_theta"] = 10000.0;
  c = load_llama_config(write_config(dir, j));
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::llama3);
  EXPECT_EQ(c.rope_scaling.factor, 32.0);
  EXPECT_EQ(c.rope_theta, 500000.0);
}

TEST(ConfigErrors, UnsupportedRopeScalingTypesAreRefused) {
  TempDir dir;
  for (const char* type : {"dynamic", "yarn", "longrope", "su", "mrope", "ntk"}) {
    SCOPED_TRACE(type);
    auto j = base_config();
    j["rope_scaling"] = {{"rope_type", type}, {"factor", 4.0}, {"original_max_position_embeddings", 4096}};
    const auto p = write_config(dir, j);
    expect_error([&] { load_llama_config(p); }, {"config.json " + p.string(), "'rope_scaling'",
                                                  std::string("rope_type '") + type + "'", "not support",
                                                  "supported: default, linear, llama3"});
  }
  auto j = base_config();
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0}};
  auto p = write_config(dir, j);
  expect_error([&] { load_llama_config(p); }, {p.string(), "'rope_scaling'", "needs 'original_max_position_embeddings'"});
  j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 2.0}, {"attention_factor", 0.5}};
  p = write_config(dir, j);
  expect_error([&] { load_llama_config(p); }, {p.string(), "'rope_scaling'", "'attention_factor'"});
  j["rope_scaling"] = {{"factor", 2.0}};
  p = write_config(dir, j);
  expect_error([&] { load_llama_config(p); }, {p.string(), "'rope_scaling' has no 'rope_type'"});
  j["rope_scaling"] = "linear";
  p = write_config(dir, j);
  expect_error([&] { load_llama_config(p); }, {p.string(), "'rope_scaling'", "an object or null"});
  j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", -2.0}};
  p = write_config(dir, j);
  expect_error([&] { load_llama_config(p); }, {p.string(), "rope_scaling.factor", "positive"});
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 4.0}, {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  p = write_config(dir, j);
  expect_error([&] { load_llama_config(p); }, {p.string(), "low_freq_factor < high_freq_factor"});
}

TEST(ConfigErrors, UnsupportedModelTypesAndFeatures) {
  TempDir dir;
  auto j = base_config();
  j["model_type"] = "mistral";
  auto p = write_config(dir, j);
  expect_error([&] { load_llama_config(p); }, {p.string(), "model_type 'mistral'", "supported: llama, qwen2, qwen3"});
  j = base_config();
  j["model_type"] = "qwen2";
  j["use_sliding_window"] = true;
  p = write_config(dir, j);
  expect_error([&] { load_llama_config(p); }, {p.string(), "'use_sliding_window'"});
  j = base_config();
  j["mlp_bias"] = true;
  p = write_config(dir, j);
  expect_error([&] { load_llama_config(p); }, {p.string(), "'mlp_bias'"});
  j = base_config();
  j["head_dim"] = 15;
  p = write_config(dir, j);
  expect_error([&] { load_llama_config(p); }, {p.string(), "head dimension 15", "even"});
  j["head_dim"] = 512;
  p = write_config(dir, j);
  expect_error([&] { load_llama_config(p); }, {p.string(), "head dimension 512", "256"});
}

TEST(ConfigErrors, MissingKey) {
  TempDir dir;
  auto j = base_config();
  j.erase("hidden_size");
  const auto p = write_config(dir, j);
  expect_error([&] { load_llama_config(p); }, {"config.json " + p.string(), "missing required key 'hidden_size'"});
}

TEST(ConfigErrors, WrongType) {
  TempDir dir;
  auto j = base_config();
  j["num_hidden_layers"] = "two";
  const auto p = write_config(dir, j);
  expect_error([&] { load_llama_config(p); }, {p.string(), "'num_hidden_layers'", "must be an integer", "a string"});
  j = base_config();
  j["tie_word_embeddings"] = 1;
  const auto p2 = write_config(dir, j);
  expect_error([&] { load_llama_config(p2); }, {p2.string(), "'tie_word_embeddings'", "boolean"});
  j = base_config();
  j["hidden_size"] = 64.5;
  const auto p3 = write_config(dir, j);
  expect_error([&] { load_llama_config(p3); }, {p3.string(), "'hidden_size'", "integer"});
}

TEST(ConfigErrors, InconsistentHeads) {
  TempDir dir;
  auto j = base_config();
  j["num_attention_heads"] = 5;  // does not divide 64
  const auto p = write_config(dir, j);
  expect_error([&] { load_llama_config(p); },
               {p.string(), "num_attention_heads (5)", "does not divide hidden_size (64)", "no 'head_dim'"});
  j = base_config();
  j["num_key_value_heads"] = 3;  // does not divide 4
  const auto p2 = write_config(dir, j);
  expect_error([&] { load_llama_config(p2); }, {p2.string(), "num_key_value_heads (3)", "does not divide"});
  j = base_config();
  j["num_attention_heads"] = 64;  // head_dim 1: odd
  const auto p3 = write_config(dir, j);
  expect_error([&] { load_llama_config(p3); }, {p3.string(), "must be even"});
  j = base_config();
  j["intermediate_size"] = 0;
  const auto p4 = write_config(dir, j);
  expect_error([&] { load_llama_config(p4); }, {p4.string(), "'intermediate_size' must be positive"});
}

TEST(ConfigErrors, NotJsonAndMissingFile) {
  TempDir dir;
  const auto p = dir / "config.json";
  test::write_bytes(p, "{\"hidden_size\": 64,");
  expect_error([&] { load_llama_config(p); }, {p.string(), "not valid JSON"});
  expect_error([&] { load_llama_config(dir / "nope.json"); }, {"nope.json", "not found"});
}

}  // namespace
}  // namespace lmtune
