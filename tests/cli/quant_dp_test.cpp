// QLoRA and QAT under data parallelism and ZeRO-3: `lmtune launch --nproc-per-node 2 --
// train` (dp 2, half the micro-batch per rank; also with parallel.zero=3, which shards the
// NF4 storage on whole blocks) computes the losses one process computes (relative error
// <= 1e-5 at every step), and every rank's meta-device prediction in memory.json equals
// what that rank measured, to the byte.
//
// The exception is QAT with full fine-tuning after its first step: the all-reduced gradient
// sums the two halves of the batch in another order than one process does, the updated
// weights differ in their last bits, and a weight that lies within that noise of a Q4_0
// rounding boundary moves by a whole quantization step (an eighth of its block's largest
// value) in one run and not in the other. The first step (same weights on both) is held to
// 1e-5; later ones to that discontinuity's drift (measured: 5.8e-4 at step 4). Under LoRA
// the fake-quantized weight is W + scaling B A with W the same on both sides, and the
// adapters' noise stays below every boundary here (measured 3.8e-6).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "common/test_models.h"
#include "common/train_runs.h"

namespace lmtune {
namespace {

namespace fs = std::filesystem;

std::string q(const fs::path& p) { return testing::quoted(p); }

void expect_dp2_matches_one_process(const std::string& method, const std::string& qat, double later_tol = 1e-5,
                                    const std::string& parallel = "") {
  SCOPED_TRACE(method + ", qat " + qat + " " + parallel);
  const fs::path root = testing::temp_dir("lmtune-quant-dp");
  const fs::path model = testing::write_tiny_train_model(root / "model");
  {
    std::ofstream text(root / "text.txt");
    for (int i = 0; i < 8; ++i)
      text << "The little fox ran to the river to drink and to look at the silver fish, and the bear slept.\n";
  }
  std::ofstream(root / "cfg.yaml")
      << "model: {path: " << model.string() << "}\n"
      << "method: {type: " << method << ", lora: {rank: 4, alpha: 8, target_modules: all-linear}, qat: {scheme: "
      << qat << "}}\n"
      << "data: {train_files: [" << (root / "text.txt").string() << "], seq_len: 16}\n"
      << "train: {max_steps: 4, micro_batch_size: 4, lr: 0.01, eval_every: 0, sample_tokens: 0, threads: 1}\n"
      << "output: {dir: " << (root / "one").string() << "}\n";
  const std::string cfg = q(root / "cfg.yaml");
  const auto one = testing::run_lmtune("train " + cfg + " --quiet");
  ASSERT_EQ(one.exit_code, 0) << one.err;
  const auto two = testing::run_lmtune("launch --nproc-per-node 2 -- train " + cfg + " --quiet parallel.dp=2 "
                                       "train.micro_batch_size=2 output.dir=" + q(root / "two") + " " + parallel);
  ASSERT_EQ(two.exit_code, 0) << two.err;
  const std::vector<double> a = testing::read_losses(root / "one"), b = testing::read_losses(root / "two");
  ASSERT_EQ(a.size(), 4u);
  ASSERT_EQ(b.size(), a.size());
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double rel = std::abs(a[i] - b[i]) / std::abs(a[i]);
    EXPECT_LE(rel, i == 0 ? 1e-5 : later_tol) << "step " << i + 1 << ": one process " << a[i] << ", dp 2 " << b[i];
    worst = std::max(worst, rel);
  }
  EXPECT_LT(a.back(), a.front()) << "the loss did not go down";
  testing::TrainRun run;
  run.dir = root / "two";
  run.memory = nlohmann::json::parse(std::ifstream(root / "two" / "memory.json"));
  testing::expect_memory_predicted_exactly(run, 2);
  const nlohmann::json& memory = run.memory;
  std::printf("[ %s qat %s ] dp 2 vs one process: worst loss rel error %.2e; per-rank prediction exact (%lld bytes)\n",
              method.c_str(), qat.c_str(), worst, static_cast<long long>(memory[0]["peak_allocated"].get<int64_t>()));
}

TEST(QuantDataParallel, QloraUnderDp2MatchesOneProcess) {
  if (testing::stories15m_llama2c_dir().empty()) GTEST_SKIP() << "stories15M (its tokenizer) not fetched";
  expect_dp2_matches_one_process("qlora", "none");
}

TEST(QuantDataParallel, QatUnderDp2MatchesOneProcess) {
  if (testing::stories15m_llama2c_dir().empty()) GTEST_SKIP() << "stories15M (its tokenizer) not fetched";
  expect_dp2_matches_one_process("lora", "q4_0");
  expect_dp2_matches_one_process("full", "q4_0", 3e-3);
}

TEST(QuantDataParallel, QloraAndQatUnderZero3MatchOneProcess) {
  if (testing::stories15m_llama2c_dir().empty()) GTEST_SKIP() << "stories15M (its tokenizer) not fetched";
  expect_dp2_matches_one_process("qlora", "none", 1e-5, "parallel.zero=3");
  expect_dp2_matches_one_process("lora", "q4_0", 1e-5, "parallel.zero=3");
}

}  // namespace
}  // namespace lmtune
