// The `lmtune` binary end to end: the stories15M acceptance output, the memory report,
// perplexity, and one test per kind of bad input (each must exit non-zero with one
// message that names the file and what is wrong — never a crash).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <regex>

#include "common/test_models.h"
#include "trainer/data/tokenizer.h"
#include "trainer/io/safetensors.h"
#include "trainer/model/config.h"
#include "trainer/model/llama.h"

namespace lmtune {
namespace {

namespace fs = std::filesystem;
using testing::run_lmtune;

std::string q(const fs::path& p) { return "'" + p.string() + "'"; }

void write_text(const fs::path& p, const std::string& s) {
  std::ofstream f(p, std::ios::binary);
  f << s;
}

std::string read_text(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// One line on stderr, naming `what`.
void expect_one_error(const testing::RunResult& r, const std::vector<std::string>& parts) {
  EXPECT_EQ(r.exit_code, 1) << "stderr: " << r.err;
  ASSERT_FALSE(r.err.empty());
  EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "expected one line, got: " << r.err;
  EXPECT_EQ(r.err.rfind("lmtune: error: ", 0), 0u) << r.err;
  for (const auto& p : parts) EXPECT_NE(r.err.find(p), std::string::npos) << "'" << p << "' not in: " << r.err;
}

// ---- stories15M acceptance -------------------------------------------------------------

TEST(Cli, Stories15MGreedyContinuation) {
  const fs::path dir = testing::stories15m_hf_dir();
  if (dir.empty()) GTEST_SKIP() << "stories15M not fetched";
  const auto r = run_lmtune("generate " + q(dir) + " --prompt 'Once upon a time' --max-new-tokens 40 --temperature 0");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out,
            "Once upon a time, there was a little girl named Lily. She loved to play outside in the sunshine. One day, "
            "she saw a big, red ball in the sky. It was the sun!\n");
}

TEST(Cli, Stories15MTokenIds) {
  const fs::path dir = testing::stories15m_hf_dir();
  if (dir.empty()) GTEST_SKIP() << "stories15M not fetched";
  const Tokenizer tok = Tokenizer::from_model_dir(dir);
  EXPECT_EQ(tok.encode("Once upon a time", AddBos::yes), (std::vector<int32_t>{1, 9038, 2501, 263, 931}));
}

TEST(Cli, MemoryReportPredictionIsExact) {
  const fs::path dir = testing::stories15m_hf_dir();
  if (dir.empty()) GTEST_SKIP() << "stories15M not fetched";
  const auto r = run_lmtune("generate " + q(dir) + " --prompt 'Once upon a time' --max-new-tokens 8 --temperature 0 "
                            "--memory-report");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* cat : {"weights", "trainable", "grads", "optimizer", "activations", "workspace", "comm", "quant",
                          "allocated", "reserved"})
    EXPECT_NE(r.err.find(std::string("  ") + cat), std::string::npos) << cat << " missing from:\n" << r.err;
  EXPECT_NE(r.err.find("prediction: exact"), std::string::npos) << r.err;
  // the weights row: measured == predicted == stories15M's 15,191,712 f32 parameters, plus the
  // allocator's rounding (512 B blocks; a large block keeps a segment tail under 1 MiB)
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.err, m, std::regex(R"(weights\s+(\d+)\s+(\d+))"))) << r.err;
  EXPECT_EQ(m[1], m[2]);
  const int64_t weights = std::stoll(m[1]);
  EXPECT_GE(weights, 15'191'712 * 4);
  EXPECT_LT(weights, 15'191'712 * 4 + (1 << 20) + 20 * 512);
}

TEST(Cli, PerplexityWindows) {
  const fs::path dir = testing::stories15m_hf_dir();
  if (dir.empty()) GTEST_SKIP() << "stories15M not fetched";
  const fs::path tmp = testing::temp_dir("lmtune-ppl");
  std::string text;
  for (int i = 0; i < 12; ++i)
    text += "Once upon a time, there was a little boy named Tim. Tim liked to play with his red ball in the park. ";
  write_text(tmp / "story.txt", text);
  const Tokenizer tok = Tokenizer::from_model_dir(dir);
  const int64_t n = static_cast<int64_t>(tok.encode(text, AddBos::yes).size());
  const std::regex line(R"(^nll=([0-9.]+) ppl=([0-9.]+) tokens=(\d+)\n$)");
  double nll_full = 0;
  for (int64_t seq : {int64_t{256}, int64_t{32}}) {
    const auto r = run_lmtune("perplexity " + q(dir) + " --text-file " + q(tmp / "story.txt") + " --seq-len " +
                              std::to_string(seq));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    std::smatch m;
    ASSERT_TRUE(std::regex_match(r.out, m, line)) << r.out;
    const double nll = std::stod(m[1]), ppl = std::stod(m[2]);
    EXPECT_NEAR(ppl, std::exp(nll), 1e-3 * ppl);
    const int64_t windows = (n + seq - 1) / seq;
    const int64_t last = n - (windows - 1) * seq;
    EXPECT_EQ(std::stoll(m[3]), n - windows + (last == 1 ? 1 : 0)) << "n=" << n;
    if (seq == 256) nll_full = nll;
    else EXPECT_GT(nll, nll_full);  // shorter context predicts worse
  }
  EXPECT_LT(nll_full, 2.0);  // a repeated simple story is easy for a TinyStories model
}

// ---- bad input -------------------------------------------------------------------------

// A tiny valid model (1 layer, width 16) with stories15M's tokenizer, written by lmtune's
// own writer; each bad-input test corrupts one part of a copy.
class BadInput : public ::testing::Test {
 protected:
  void SetUp() override {
    const fs::path src = testing::stories15m_llama2c_dir();
    if (src.empty()) GTEST_SKIP() << "stories15M not fetched (its tokenizer is used)";
    dir_ = testing::temp_dir("lmtune-bad") / "model";
    LlamaConfig cfg;
    cfg.hidden_size = 16;
    cfg.intermediate_size = 32;
    cfg.num_hidden_layers = 1;
    cfg.num_attention_heads = 2;
    cfg.num_key_value_heads = 2;
    cfg.vocab_size = 32000;
    cfg.max_position_embeddings = 64;
    cfg.tie_word_embeddings = true;
    testing::write_random_model(dir_, cfg, 1, skip_, wrong_shape_);
  }
  testing::RunResult generate() {
    return run_lmtune("generate " + q(dir_) + " --prompt 'Once upon a time' --max-new-tokens 3 --temperature 0");
  }
  fs::path st() const { return dir_ / "model.safetensors"; }

  fs::path dir_;
  std::string skip_, wrong_shape_;
};

TEST_F(BadInput, TheValidTinyModelRuns) {
  const auto r = generate();
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("Once upon a time", 0), 0u);
}

TEST_F(BadInput, TruncatedSafetensors) {
  fs::resize_file(st(), fs::file_size(st()) / 2);
  expect_one_error(generate(), {"model.safetensors"});
}

TEST_F(BadInput, HeaderOffsetsPastTheEnd) {
  std::string bytes = read_text(st());
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  std::string header = bytes.substr(8, n);
  // Push the last tensor's end offset (the largest) past the data section, keeping every
  // byte count: its digits become 9s.
  const std::regex off(R"("data_offsets":\[(\d+),(\d+)\])");
  int64_t best_end = -1;
  size_t best_pos = 0, best_len = 0;
  for (auto it = std::sregex_iterator(header.begin(), header.end(), off); it != std::sregex_iterator(); ++it) {
    const int64_t end = std::stoll((*it)[2]);
    if (end > best_end) {
      best_end = end;
      best_pos = static_cast<size_t>(it->position(2));
      best_len = static_cast<size_t>(it->length(2));
    }
  }
  ASSERT_GT(best_end, 0);
  header.replace(best_pos, best_len, std::string(best_len, '9'));
  ASSERT_GT(std::stoll(header.substr(best_pos, best_len)), best_end);
  bytes.replace(8, n, header);
  write_text(st(), bytes);
  expect_one_error(generate(), {"model.safetensors", "offsets"});
}

TEST_F(BadInput, MissingTensor) {
  skip_ = "model.norm.weight";
  SetUp();
  expect_one_error(generate(), {"model.norm.weight", "model"});
}

TEST_F(BadInput, WrongShape) {
  wrong_shape_ = "model.layers.0.self_attn.q_proj.weight";
  SetUp();
  expect_one_error(generate(), {"model.layers.0.self_attn.q_proj.weight", "model.safetensors", "[16, 16]", "[128]"});
}

TEST_F(BadInput, ConfigMissingKey) {
  std::string cfg = read_text(dir_ / "config.json");
  cfg = std::regex_replace(cfg, std::regex(R"("hidden_size"\s*:\s*16\s*,?)"), "");
  write_text(dir_ / "config.json", cfg);
  expect_one_error(generate(), {"config.json", "hidden_size"});
}

TEST_F(BadInput, TokenizerOfAnotherModelType) {
  write_text(dir_ / "tokenizer.json",
             R"({"version":"1.0","model":{"type":"WordPiece","unk_token":"[UNK]","vocab":{"[UNK]":0,"a":1}}})");
  expect_one_error(generate(), {"tokenizer.json", "WordPiece"});
}

TEST_F(BadInput, ModelDirectoryDoesNotExist) {
  const auto r = run_lmtune("generate " + q(dir_ / "nope") + " --prompt hi");
  expect_one_error(r, {(dir_ / "nope").string(), "does not exist"});
}

TEST_F(BadInput, PerplexityTextFileDoesNotExist) {
  expect_one_error(run_lmtune("perplexity " + q(dir_) + " --text-file /nonexistent/x.txt"),
                   {"/nonexistent/x.txt", "cannot open"});
}

// ---- lmtune tokenize ------------------------------------------------------------------

// The ids `lmtune tokenize` prints are encode()'s; --json, --literal-specials and --bos change
// what they say; --decode / --ids-file give the file's bytes back exactly (invalid UTF-8
// included); bad ids and conflicting inputs are one-line errors.
TEST(CliTokenize, EncodesAndDecodesExactly) {
  const fs::path dir = testing::real_tokenizer_dir("llama3");
  if (dir.empty()) GTEST_SKIP() << "models/tokenizers not fetched (scripts/fetch_tokenizers.sh)";
  const Tokenizer tok = Tokenizer::from_model_dir(dir);
  const fs::path tmp = testing::temp_dir("lmtune-cli-tok");
  const std::string text = "Hello world<|eot_id|> 12345 caf\xC3\xA9 \xFF\xFE end\n";
  write_text(tmp / "in.txt", text);
  auto ids_line = [](const std::vector<int32_t>& ids, const char* sep) {
    std::string s;
    for (size_t i = 0; i < ids.size(); ++i) s += (i ? sep : "") + std::to_string(ids[i]);
    return s;
  };
  const auto ids = tok.encode(text, AddBos::no);
  ASSERT_NE(std::find(ids.begin(), ids.end(), tok.eot_id()), ids.end());
  auto r = run_lmtune("tokenize " + q(dir) + " --text-file " + q(tmp / "in.txt"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, ids_line(ids, " ") + "\n");
  r = run_lmtune("tokenize " + q(dir) + " --text-file " + q(tmp / "in.txt") + " --json --bos --literal-specials");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto literal = tok.encode(text, SpecialTokens::literal, AddBos::yes);
  EXPECT_EQ(literal.front(), tok.bos_id());
  EXPECT_EQ(std::find(literal.begin(), literal.end(), tok.eot_id()), literal.end());
  EXPECT_EQ(r.out, "[" + ids_line(literal, ", ") + "]\n");
  literal.erase(literal.begin());

  // Round trips, through a file of ids and through --decode.
  write_text(tmp / "ids.txt", ids_line(ids, " "));
  r = run_lmtune("tokenize " + q(dir) + " --ids-file " + q(tmp / "ids.txt"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, text);
  r = run_lmtune("tokenize " + q(dir) + " --decode '[" + ids_line(literal, ",") + "]'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, text);

  expect_one_error(run_lmtune("tokenize " + q(dir) + " --decode '12 x3'"), {"--decode", "'x3' is not a token id"});
  expect_one_error(run_lmtune("tokenize " + q(dir) + " --decode '999999'"), {"token id 999999 is out of range"});
  expect_one_error(run_lmtune("tokenize " + q(dir) + " --text hi --decode 1"), {"exactly one of"});
}

TEST(CliUsage, UnknownOptionSuggestsTheClosest) {
  const auto r = run_lmtune("generate somewhere --temprature 0");
  expect_one_error(r, {"--temprature", "did you mean '--temperature'"});
}

TEST(CliUsage, MalformedNumber) {
  const fs::path dir = testing::temp_dir("lmtune-usage");
  expect_one_error(run_lmtune("generate " + q(dir) + " --prompt hi --max-new-tokens lots"),
                   {"--max-new-tokens", "integer", "lots"});
}

TEST(CliUsage, UnknownCommand) {
  const auto r = run_lmtune("generat x");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("did you mean 'generate'"), std::string::npos) << r.err;
}

TEST(CliUsage, ImportOfAFileThatIsNotThere) {
  const fs::path dir = testing::temp_dir("lmtune-import");
  expect_one_error(run_lmtune("import llama2c /nonexistent/model.bin /nonexistent/tok.bin " + q(dir / "out")),
                   {"/nonexistent/model.bin"});
}

}  // namespace
}  // namespace lmtune
