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
  c.bos_token_id = 1;
  c.eos_token_id = 2;
  c.torch_dtype = "float32";
  const auto p = dir / "config.json";
  save_llama_config(p, c);
  const auto j = nlohmann::json::parse(test::read_bytes(p));
  EXPECT_EQ(j["architectures"], nlohmann::json::array({"LlamaForCausalLM"}));
  EXPECT_EQ(j["model_type"], "llama");
  EXPECT_EQ(j["hidden_act"], "silu");
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
  expect_error([&] { load_llama_config(p); }, {p.string(), "num_attention_heads (5)", "does not divide hidden_size (64)"});
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

// Llama 3.1's rope_scaling: refused with what it is, not silently ignored.
TEST(ConfigErrors, RopeScalingIsRefused) {
  TempDir dir;
  auto j = base_config();
  j["rope_scaling"] = {{"factor", 8.0}, {"high_freq_factor", 4.0}, {"low_freq_factor", 1.0},
                       {"original_max_position_embeddings", 8192}, {"rope_type", "llama3"}};
  const auto p = write_config(dir, j);
  expect_error([&] { load_llama_config(p); }, {p.string(), "rope_scaling of type 'llama3'", "not supported yet"});
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  const auto p2 = write_config(dir, j);
  expect_error([&] { load_llama_config(p2); }, {p2.string(), "rope_scaling of type 'linear'"});
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
