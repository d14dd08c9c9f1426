#include "trainer/io/llama2c.h"

#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "io/io_test_util.h"
#include "trainer/data/tokenizer.h"
#include "trainer/io/safetensors.h"
#include "trainer/model/config.h"

namespace lmtune {
namespace {

using test::expect_error;
using test::TempDir;

struct Dims {
  int32_t dim, hidden, layers, heads, kv_heads, vocab, seq;
};

// The raw float arrays of a model.bin, located independently of the importer.
struct RawModel {
  Dims d;
  std::string bytes;
  size_t embed, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, wcls;  // float offsets
  const float* f(size_t off) const { return reinterpret_cast<const float*>(bytes.data() + 28) + off; }
};

RawModel locate(std::string bytes) {
  RawModel r;
  std::memcpy(&r.d, bytes.data(), 28);
  r.bytes = std::move(bytes);
  const size_t C = r.d.dim, H = r.d.hidden, L = r.d.layers, V = std::abs(r.d.vocab);
  const size_t kv = C / r.d.heads * r.d.kv_heads, hs = C / r.d.heads;
  size_t o = 0;
  r.embed = o; o += V * C;
  r.rms_att = o; o += L * C;
  r.wq = o; o += L * C * C;
  r.wk = o; o += L * kv * C;
  r.wv = o; o += L * kv * C;
  r.wo = o; o += L * C * C;
  r.rms_ffn = o; o += L * C;
  r.w1 = o; o += L * H * C;
  r.w2 = o; o += L * C * H;
  r.w3 = o; o += L * H * C;
  r.rms_final = o; o += C;
  o += r.d.seq * hs;  // freq_cis_real + freq_cis_imag
  r.wcls = o;
  return r;
}

std::string make_model_bin(const Dims& d) {
  const size_t C = d.dim, H = d.hidden, L = d.layers, V = std::abs(d.vocab);
  const size_t kv = C / d.heads * d.kv_heads, hs = C / d.heads;
  size_t n = V * C + 2 * L * C + 2 * L * C * C + 2 * L * kv * C + 3 * L * H * C + C + d.seq * hs;
  if (d.vocab < 0) n += V * C;
  std::string out(reinterpret_cast<const char*>(&d), 28);
  for (size_t i = 0; i < n; ++i) {
    const float v = static_cast<float>(i) * 0.25f - 100.0f;
    out.append(reinterpret_cast<const char*>(&v), 4);
  }
  return out;
}

const float* tensor_f32(const SafeTensorsReader& r, const std::string& name, const Shape& shape) {
  const SafeTensorInfo& t = r.get(name);
  EXPECT_EQ(t.dtype, DType::f32) << name;
  EXPECT_EQ(t.shape, shape) << name;
  return static_cast<const float*>(t.data);
}

// q/k: HF row h*D + i holds llama2.c row h*D + 2*(i % (D/2)) + (i >= D/2).
void expect_permuted(const float* hf, const float* raw, int64_t n_heads, int64_t rows, int64_t cols, const std::string& what) {
  const int64_t D = rows / n_heads;
  for (int64_t h = 0; h < n_heads; ++h)
    for (int64_t i = 0; i < D; ++i) {
      const int64_t src = h * D + 2 * (i % (D / 2)) + (i >= D / 2 ? 1 : 0);
      ASSERT_EQ(0, std::memcmp(hf + (h * D + i) * cols, raw + src * cols, cols * sizeof(float)))
          << what << " head " << h << " row " << i;
    }
}

void check_import(const RawModel& m, const std::filesystem::path& out) {
  const Dims& d = m.d;
  const int64_t C = d.dim, H = d.hidden, V = std::abs(d.vocab), kv = C / d.heads * d.kv_heads;
  const LlamaConfig cfg = load_llama_config(out / "config.json");
  EXPECT_EQ(cfg.hidden_size, C);
  EXPECT_EQ(cfg.intermediate_size, H);
  EXPECT_EQ(cfg.num_hidden_layers, d.layers);
  EXPECT_EQ(cfg.num_attention_heads, d.heads);
  EXPECT_EQ(cfg.num_key_value_heads, d.kv_heads);
  EXPECT_EQ(cfg.vocab_size, V);
  EXPECT_EQ(cfg.max_position_embeddings, d.seq);
  EXPECT_EQ(cfg.tie_word_embeddings, d.vocab > 0);
  EXPECT_DOUBLE_EQ(cfg.rope_theta, 10000.0);
  EXPECT_DOUBLE_EQ(cfg.rms_norm_eps, 1e-5);
  EXPECT_EQ(cfg.bos_token_id, 1);
  EXPECT_EQ(cfg.eos_token_id, 2);
  const auto cj = nlohmann::json::parse(test::read_bytes(out / "config.json"));
  EXPECT_EQ(cj["architectures"][0], "LlamaForCausalLM");
  EXPECT_EQ(cj["model_type"], "llama");

  const auto r = SafeTensorsReader::open(out);
  EXPECT_EQ(r.size(), static_cast<size_t>(2 + 9 * d.layers + (d.vocab < 0 ? 1 : 0)));
  EXPECT_EQ(r.contains("lm_head.weight"), d.vocab < 0);
  EXPECT_EQ(0, std::memcmp(tensor_f32(r, "model.embed_tokens.weight", {V, C}), m.f(m.embed), V * C * 4));
  EXPECT_EQ(0, std::memcmp(tensor_f32(r, "model.norm.weight", {C}), m.f(m.rms_final), C * 4));
  if (d.vocab < 0) {
    EXPECT_EQ(0, std::memcmp(tensor_f32(r, "lm_head.weight", {V, C}), m.f(m.wcls), V * C * 4));
  }
  for (int64_t l = 0; l < d.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    EXPECT_EQ(0, std::memcmp(tensor_f32(r, p + "input_layernorm.weight", {C}), m.f(m.rms_att + l * C), C * 4));
    EXPECT_EQ(0, std::memcmp(tensor_f32(r, p + "post_attention_layernorm.weight", {C}), m.f(m.rms_ffn + l * C), C * 4));
    expect_permuted(tensor_f32(r, p + "self_attn.q_proj.weight", {C, C}), m.f(m.wq + l * C * C), d.heads, C, C, p + "q");
    expect_permuted(tensor_f32(r, p + "self_attn.k_proj.weight", {kv, C}), m.f(m.wk + l * kv * C), d.kv_heads, kv, C,
                    p + "k");
    EXPECT_EQ(0, std::memcmp(tensor_f32(r, p + "self_attn.v_proj.weight", {kv, C}), m.f(m.wv + l * kv * C), kv * C * 4));
    EXPECT_EQ(0, std::memcmp(tensor_f32(r, p + "self_attn.o_proj.weight", {C, C}), m.f(m.wo + l * C * C), C * C * 4));
    EXPECT_EQ(0, std::memcmp(tensor_f32(r, p + "mlp.gate_proj.weight", {H, C}), m.f(m.w1 + l * H * C), H * C * 4));
    EXPECT_EQ(0, std::memcmp(tensor_f32(r, p + "mlp.down_proj.weight", {C, H}), m.f(m.w2 + l * C * H), C * H * 4));
    EXPECT_EQ(0, std::memcmp(tensor_f32(r, p + "mlp.up_proj.weight", {H, C}), m.f(m.w3 + l * H * C), H * C * 4));
  }

  const auto tc = nlohmann::json::parse(test::read_bytes(out / "tokenizer_config.json"));
  EXPECT_EQ(tc["tokenizer_class"], "LlamaTokenizer");
  EXPECT_EQ(tc["bos_token"], "<s>");
  EXPECT_EQ(tc["eos_token"], "</s>");
  EXPECT_EQ(tc["unk_token"], "<unk>");
  EXPECT_EQ(tc["add_bos_token"], true);
  EXPECT_EQ(tc["add_eos_token"], false);
  EXPECT_EQ(tc["model_max_length"], d.seq);
  const auto gc = nlohmann::json::parse(test::read_bytes(out / "generation_config.json"));
  EXPECT_EQ(gc["bos_token_id"], 1);
  EXPECT_EQ(gc["eos_token_id"], 2);
  for (const auto& e : std::filesystem::directory_iterator(out))
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << e.path();
}

TEST(Llama2c, ImportStories15M) {
  if (!test::have_stories()) GTEST_SKIP() << "models/stories15M is missing (run scripts/fetch_model.sh)";
  TempDir dir;
  const auto out = dir / "stories15M-hf";
  import_llama2c(test::stories_dir() / "model.bin", test::stories_dir() / "tokenizer.bin", out);
  const RawModel m = locate(test::read_bytes(test::stories_dir() / "model.bin"));
  EXPECT_EQ(m.d.dim, 288);
  EXPECT_EQ(m.d.vocab, 32000);
  check_import(m, out);
  const Tokenizer t = Tokenizer::from_model_dir(out);
  EXPECT_EQ(t.encode("Once upon a time", AddBos::yes), (std::vector<int32_t>{1, 9038, 2501, 263, 931}));
  // Importing again over the same directory replaces the files cleanly.
  import_llama2c(test::stories_dir() / "model.bin", test::stories_dir() / "tokenizer.bin", out);
  check_import(m, out);
}

TEST(Llama2c, ImportSyntheticUnsharedGqa) {
  TempDir dir;
  const Dims d{8, 12, 2, 2, 1, -262, 4};
  test::write_bytes(dir / "model.bin", make_model_bin(d));
  test::write_bytes(dir / "tokenizer.bin", test::make_tokenizer_bin({{" a", -1}, {" b", -2}, {" ab", -3}}));
  const Llama2cHeader h = read_llama2c_header(dir / "model.bin");
  EXPECT_FALSE(h.shared_classifier);
  EXPECT_EQ(h.vocab_size, -262);
  const auto out = dir / "hf";
  // A stale sharded save in the way: the import must leave a readable single-file model.
  std::filesystem::create_directories(out);
  test::write_bytes(out / "model.safetensors.index.json", R"({"weight_map": {"x": "model-00001-of-00002.safetensors"}})");
  test::write_bytes(out / "model-00001-of-00002.safetensors", "junk");
  import_llama2c(dir / "model.bin", dir / "tokenizer.bin", out);
  EXPECT_FALSE(std::filesystem::exists(out / "model.safetensors.index.json"));
  EXPECT_FALSE(std::filesystem::exists(out / "model-00001-of-00002.safetensors"));
  check_import(locate(test::read_bytes(dir / "model.bin")), out);
}

TEST(Llama2cErrors, WrongSizeModelBin) {
  TempDir dir;
  const Dims d{8, 12, 2, 2, 2, 262, 4};
  std::string bin = make_model_bin(d);
  const auto p = dir / "model.bin";
  const std::string expected = std::to_string(bin.size());
  test::write_bytes(p, bin.substr(0, bin.size() - 40));
  test::write_bytes(dir / "tokenizer.bin", test::make_tokenizer_bin({{" a", -1}, {" b", -2}, {" ab", -3}}));
  expect_error([&] { import_llama2c(p, dir / "tokenizer.bin", dir / "out"); },
               {p.string(), "size mismatch", expected + " bytes", std::to_string(bin.size() - 40) + " bytes"});
  EXPECT_FALSE(std::filesystem::exists(dir / "out" / "config.json"));
  // The size of an unshared classifier with a positive vocab_size: the hint names the sign.
  Dims u = d;
  u.vocab = -262;
  test::write_bytes(p, make_model_bin(u).replace(20, 4, std::string(reinterpret_cast<const char*>(&d.vocab), 4)));
  expect_error([&] { read_llama2c_header(p); }, {p.string(), "size mismatch", "sign of vocab_size"});
  // Nonsense header.
  test::write_bytes(p, std::string(28, '\xff'));
  expect_error([&] { read_llama2c_header(p); }, {p.string(), "header field dim = -1"});
  test::write_bytes(p, std::string(10, '\0'));
  expect_error([&] { read_llama2c_header(p); }, {p.string(), "truncated"});
}

TEST(Llama2cErrors, TokenizerVocabMismatch) {
  TempDir dir;
  const Dims d{8, 12, 1, 2, 2, 300, 4};
  test::write_bytes(dir / "model.bin", make_model_bin(d));
  const auto tp = dir / "tokenizer.bin";
  test::write_bytes(tp, test::make_tokenizer_bin({{" a", -1}}));
  expect_error([&] { import_llama2c(dir / "model.bin", tp, dir / "out"); }, {tp.string(), "truncated at token 260 of 300"});
}

}  // namespace
}  // namespace lmtune
