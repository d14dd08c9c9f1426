// GGUF Q4_0 export and QAT (method.qat: q4_0) against llama.cpp:
//  * lmtune's Q4_0 and Q8_0 block codecs produce the bytes ggml's own quantizer does
//    (ggml_quantize_chunk, run through tests/reference/gguf_llama_cpp_run.cpp);
//  * `--dtype q4_0` puts the blocks' projections in Q4_0 and token_embd in Q8_0;
//  * a QAT run exported to Q4_0: the file holds exactly the values the fake-quantized
//    forward computes with, and llama.cpp's greedy continuation of a prompt equals that
//    of lmtune's fake-quantized forward, token for token, for 40 tokens.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <random>

#include "common/test_models.h"
#include "io/llama_cpp_util.h"
#include "kernels/cpu/quant.h"
#include "trainer/data/tokenizer.h"
#include "trainer/io/gguf.h"
#include "trainer/io/safetensors.h"

namespace lmtune {
namespace {

namespace fs = std::filesystem;
using test::quote;

std::vector<uint8_t> ggml_quantize(const fs::path& runner, const std::string& type, const std::vector<float>& x,
                                   int64_t row, const fs::path& dir) {
  {
    std::ofstream f(dir / "in.f32", std::ios::binary);
    f.write(reinterpret_cast<const char*>(x.data()), static_cast<std::streamsize>(x.size() * 4));
  }
  const auto r = testing::run_command(quote(runner.string()) + " quantize " + type + " " + std::to_string(row) + " " +
                                      quote((dir / "in.f32").string()) + " " + quote((dir / "out.bin").string()));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  std::ifstream f(dir / "out.bin", std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

TEST(GgufQ4_0, CodecsMatchGgmlsOwnQuantizer) {
  REQUIRE_LLAMA_CPP(runner);
  const fs::path dir = testing::temp_dir("lmtune-q4-codec");
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  const int64_t row = 128;
  std::vector<float> x(static_cast<size_t>(row * 64));
  for (float& v : x) v = normal(rng);
  std::fill(x.begin(), x.begin() + 32, 0.0f);  // an all-zero block
  x[40] = -0.5f, x[50] = 0.5f;                 // equal magnitudes: the first one sets the sign of d
  for (int i = 0; i < 32; ++i) x[64 + i] = (static_cast<float>(i % 17) - 8.0f) / 8.0f;  // values on the grid
  for (int i = 0; i < 32; ++i) x[96 + i] = (static_cast<float>(i) - 15.5f) / 127.0f * 3.0f;  // halves for Q8_0
  x[200] = 1e-30f;
  for (const auto& [type, bytes] : {std::pair<std::string, size_t>{"q4_0", cpu::kQ4_0BlockBytes},
                                    {"q8_0", cpu::kQ8_0BlockBytes}}) {
    SCOPED_TRACE(type);
    const std::vector<uint8_t> theirs = ggml_quantize(runner, type, x, row, dir);
    std::vector<uint8_t> ours(x.size() / 32 * bytes);
    if (type == "q4_0") cpu::quantize_q4_0(x.data(), static_cast<int64_t>(x.size()), ours.data());
    else cpu::quantize_q8_0(x.data(), static_cast<int64_t>(x.size()), ours.data());
    ASSERT_EQ(ours.size(), theirs.size());
    size_t first = ours.size();
    for (size_t i = 0; i < ours.size() && first == ours.size(); ++i) first = ours[i] != theirs[i] ? i : first;
    EXPECT_EQ(first, ours.size()) << "first different byte " << first << " (block " << first / bytes << ")";
    // fake quantization is dequantize(quantize(.)) of these very bytes
    std::vector<float> fq(x.size()), deq(x.size());
    if (type == "q4_0") {
      cpu::fake_quant_q4_0(fq.data(), x.data(), static_cast<int64_t>(x.size()));
      cpu::dequantize_q4_0(theirs.data(), static_cast<int64_t>(x.size()), deq.data());
    } else {
      cpu::fake_quant_q8_0(fq.data(), x.data(), static_cast<int64_t>(x.size()));
      cpu::dequantize_q8_0(theirs.data(), static_cast<int64_t>(x.size()), deq.data());
    }
    EXPECT_EQ(std::memcmp(fq.data(), deq.data(), fq.size() * 4), 0);
  }
}

// Values of a GGUF tensor against the fake quantization of the HF tensor it came from
// (q/k rows permuted into llama.cpp's order first): equal to the last bit.
void expect_fake_quantized(const GgufFile& g, const std::string& gguf_name, const SafeTensorsReader& hf,
                           const std::string& hf_name, int64_t permute_heads, bool q4) {
  const SafeTensorInfo& t = hf.get(hf_name);
  std::vector<float> w(static_cast<size_t>(t.numel()));
  std::memcpy(w.data(), t.data, w.size() * 4);
  const int64_t rows = t.shape[0], cols = t.shape[1];
  if (permute_heads > 0) {
    std::vector<float> p(w.size());
    const int64_t hd = rows / permute_heads;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t h = r / hd, k = r % hd;
      const int64_t src = h * hd + (k % 2) * (hd / 2) + k / 2;
      std::memcpy(p.data() + r * cols, w.data() + src * cols, static_cast<size_t>(cols) * 4);
    }
    w = p;
  }
  std::vector<float> fq(w.size());
  if (q4) cpu::fake_quant_q4_0(fq.data(), w.data(), static_cast<int64_t>(w.size()));
  else cpu::fake_quant_q8_0(fq.data(), w.data(), static_cast<int64_t>(w.size()));
  const std::vector<float> stored = g.tensor_f32(gguf_name);
  ASSERT_EQ(stored.size(), fq.size()) << gguf_name;
  EXPECT_EQ(std::memcmp(stored.data(), fq.data(), fq.size() * 4), 0) << gguf_name;
}

TEST(GgufQ4_0, ProjectionsQ4_0EmbeddingQ8_0) {
  const fs::path hf = testing::stories15m_hf_dir();
  if (hf.empty()) GTEST_SKIP() << "stories15M not fetched";
  const fs::path out = testing::temp_dir("lmtune-q4-plan") / "m.gguf";
  export_gguf(hf, out, GgufType::q4_0);
  const GgufFile g = read_gguf(out);
  EXPECT_EQ(g.at("general.file_type").as_uint(), 2u);  // MOSTLY_Q4_0
  for (const GgufTensorInfo& t : g.tensors) {
    const bool matrix = t.dims.size() == 2;
    const GgmlType want = !matrix ? GgmlType::f32 : t.name.starts_with("blk.") ? GgmlType::q4_0 : GgmlType::q8_0;
    EXPECT_EQ(t.type, want) << t.name;
  }
  EXPECT_EQ(g.find_tensor("output.weight"), nullptr) << "stories15M is tied";
  const SafeTensorsReader st = SafeTensorsReader::open(hf);
  expect_fake_quantized(g, "blk.2.attn_q.weight", st, "model.layers.2.self_attn.q_proj.weight", 6, true);
  expect_fake_quantized(g, "blk.5.ffn_down.weight", st, "model.layers.5.mlp.down_proj.weight", 0, true);
  expect_fake_quantized(g, "token_embd.weight", st, "model.embed_tokens.weight", 0, false);
}

// Acceptance: a QAT model's Q4_0 GGUF in llama.cpp and lmtune's fake-quantized forward agree
// on the greedy continuation, token for token, for 40 tokens.
TEST(GgufQ4_0, QatModelContinuesInLlamaCppAsInLmtune) {
  const fs::path hf = testing::stories15m_hf_dir();
  if (hf.empty()) GTEST_SKIP() << "stories15M not fetched";
  REQUIRE_LLAMA_CPP(runner);
  const fs::path dir = testing::temp_dir("lmtune-qat-gguf");
  {
    std::ofstream text(dir / "sea.txt");
    for (int i = 0; i < 30; ++i)
      text << "The old sailor looked at the grey sea and the white whale rose from the waves. The ship turned "
              "north, and every man on the deck was silent while the captain spoke of the long voyage home.\n";
  }
  std::ofstream(dir / "cfg.yaml") << "model: {path: " << hf.string() << "}\n"
                                  << "method: {type: lora, lora: {rank: 8, alpha: 16, target_modules: all-linear}, "
                                     "qat: {scheme: q4_0}}\n"
                                  << "data: {format: text, train_files: [" << (dir / "sea.txt").string()
                                  << "], seq_len: 64}\n"
                                  << "train: {max_steps: 6, micro_batch_size: 4, lr: 0.005, eval_every: 0, "
                                     "sample_tokens: 0, threads: 2}\n"
                                  << "output: {dir: " << (dir / "run").string() << "}\n";
  const auto trained = testing::run_lmtune("train " + quote((dir / "cfg.yaml").string()) + " --quiet");
  ASSERT_EQ(trained.exit_code, 0) << trained.err;
  for (const std::string& fmt : {"--format hf --out " + quote((dir / "hf").string()),
                                 "--format gguf --dtype q4_0 --out " + quote((dir / "q4.gguf").string())}) {
    const auto ex = testing::run_lmtune("export " + quote((dir / "run").string()) + " " + fmt);
    ASSERT_EQ(ex.exit_code, 0) << ex.err;
  }
  // the file holds the fake-quantized values of the merged weights
  const GgufFile g = read_gguf(dir / "q4.gguf");
  const SafeTensorsReader merged = SafeTensorsReader::open(dir / "hf");
  expect_fake_quantized(g, "blk.0.attn_k.weight", merged, "model.layers.0.self_attn.k_proj.weight", 6, true);
  expect_fake_quantized(g, "blk.3.ffn_up.weight", merged, "model.layers.3.mlp.up_proj.weight", 0, true);

  const Tokenizer tok = Tokenizer::from_model_dir(dir / "hf");
  const char* prompt_text = "Once upon a time";
  const std::vector<int32_t> prompt = tok.encode(prompt_text, AddBos::yes);
  ModelOptions qat;
  qat.qat = QatScheme::q4_0;
  const std::vector<int32_t> ours = test::lmtune_greedy(dir / "hf", prompt, 40, qat);
  const test::LlamaCppRun theirs = test::run_llama_cpp(runner, dir / "q4.gguf", 40, prompt_text);
  EXPECT_EQ(theirs.prompt_ids, prompt);
  EXPECT_EQ(theirs.ids, ours) << "llama.cpp on the Q4_0 file and lmtune's QAT forward continue differently";
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), ours.begin(), ours.end());
  const bool differs = ours != test::lmtune_greedy(dir / "hf", prompt, 40);
  std::cout << "[ qat q4_0 ] " << tok.decode(all) << "\n[ qat q4_0 ] the float forward of the same weights "
            << (differs ? "continues differently" : "continues the same way") << "\n";
}

}  // namespace
}  // namespace lmtune
