// ZeRO stages 1-3 and CPU offload under real mpirun processes (`lmtune launch`), against one
// process with the same global batch, on a model with tied embeddings (so ZeRO-3's head
// also gathers the embedding) whose sizes divide by no rank count:
//   * zero 1, 2, 3 x dp 2, 3, 4 x LoRA (dropout 0.1) and full fine-tuning, gradient
//     accumulation 2: every step's loss within 1e-5, the final (gathered) weights within
//     1e-5, every rank's meta prediction of its device (and host) peaks exact;
//   * zero 3 with offload optimizer and offload params, and with recompute full and
//     selective, likewise;
//   * what each stage divides: at dp 4, zero 3 holds at most 0.3x the model states
//     (parameters, gradients, optimizer) of one process, zero 1 divides the optimizer only;
//     offload moves the optimizer (and the shards) into the host's allocator;
//   * a checkpoint saved with zero 3 at dp 4 resumes with zero 0 in one process and with
//     zero 2 at dp 3, each equal to the uninterrupted run.
#include <gtest/gtest.h>

#include <fstream>
#include <map>

#include "common/test_models.h"
#include "common/train_runs.h"

namespace lmtune {
namespace {

namespace fs = std::filesystem;
using testing::TrainRun;

class Zero : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (testing::stories15m_llama2c_dir().empty()) return;
    setup_ = new testing::TinyTraining(testing::temp_dir("lmtune-zero"), /*tied=*/true);
  }
  static void TearDownTestSuite() {
    delete setup_;
    setup_ = nullptr;
  }
  void SetUp() override {
    if (setup_ == nullptr) GTEST_SKIP() << "stories15M (its tokenizer) not fetched";
  }
  static std::string method_overrides(const std::string& method) {
    return method == "full" ? "method.type=full train.lr=0.001 " : "";
  }
  static const TrainRun& single(const std::string& method) {
    static std::map<std::string, TrainRun> cache;
    auto it = cache.find(method);
    if (it == cache.end()) it = cache.emplace(method, setup_->train("single-" + method, 1, method_overrides(method))).first;
    return it->second;
  }
  // A run of `ranks` ranks compared with one process: losses, weights, memory.
  static TrainRun expect_equal_to_one_process(const std::string& name, const std::string& method, int ranks,
                                              const std::string& overrides) {
    const TrainRun& one = single(method);
    EXPECT_EQ(one.result.exit_code, 0) << one.result.err;
    const TrainRun r = setup_->train(name, ranks, method_overrides(method) + overrides);
    EXPECT_EQ(r.result.exit_code, 0) << r.result.err;
    if (r.result.exit_code != 0 || one.result.exit_code != 0) return r;
    testing::expect_losses_near(r.losses, one.losses, name);
    EXPECT_LE(testing::weight_error(testing::checkpoint_parameters(r.dir / "checkpoint-6"),
                                    testing::checkpoint_parameters(one.dir / "checkpoint-6")),
              1e-5)
        << name;
    testing::expect_memory_predicted_exactly(r, ranks);
    return r;
  }
  // metrics.jsonl's line of the last step.
  static nlohmann::json last_step(const fs::path& dir) {
    nlohmann::json j;
    std::ifstream in(dir / "metrics.jsonl");
    std::string line;
    while (std::getline(in, line))
      if (line.find("\"loss\"") != std::string::npos) j = nlohmann::json::parse(line);
    return j;
  }
  static int64_t model_states(const nlohmann::json& rank) {
    int64_t n = 0;
    for (const char* c : {"weights", "trainable", "grads", "optimizer"}) n += rank["by_category"][c].get<int64_t>();
    return n;
  }

  static testing::TinyTraining* setup_;
};
testing::TinyTraining* Zero::setup_ = nullptr;

class ZeroEquivalence : public Zero, public ::testing::WithParamInterface<std::tuple<std::string, int, int>> {};

TEST_P(ZeroEquivalence, MatchesOneProcess) {
  const auto& [method, zero, dp] = GetParam();
  const std::string name = method + "-zero" + std::to_string(zero) + "-dp" + std::to_string(dp);
  const TrainRun r = expect_equal_to_one_process(name, method, dp, "parallel.zero=" + std::to_string(zero));
  if (r.result.exit_code != 0) return;
  // what each stage sends per step: stage 1 reduce-scatters the gradients once and
  // all-gathers the trainable parameters once (as much as an all-reduce), stage 2
  // reduce-scatters every micro-batch (2 here), stage 3 gathers every unit — frozen base
  // weights too — before each forward and each backward of each micro-batch
  const nlohmann::json last = last_step(r.dir);
  const int64_t reduced = last["reduced_bytes"].get<int64_t>(), gathered = last["gathered_bytes"].get<int64_t>();
  const int64_t trainable = r.memory[0]["by_category"]["trainable"].get<int64_t>();  // this rank's bytes
  if (zero == 1) {
    EXPECT_EQ(reduced, gathered) << name;
  } else if (zero == 2) {
    EXPECT_EQ(reduced, 2 * gathered) << name;
  } else {
    EXPECT_GE(gathered, 4 * dp * (trainable - 512 * 16)) << name;
  }
  EXPECT_GT(reduced, 0) << name;
}

INSTANTIATE_TEST_SUITE_P(Stages, ZeroEquivalence,
                         ::testing::Combine(::testing::Values("lora", "full"), ::testing::Values(1, 2, 3),
                                            ::testing::Values(2, 3, 4)),
                         [](const auto& info) {
                           return std::get<0>(info.param) + "_zero" + std::to_string(std::get<1>(info.param)) + "_dp" +
                                  std::to_string(std::get<2>(info.param));
                         });

TEST_F(Zero, OffloadOptimizerAndParams) {
  const TrainRun opt = expect_equal_to_one_process("lora-zero3-offload-optimizer", "lora", 2,
                                                   "parallel.zero=3 parallel.offload=optimizer");
  const TrainRun params =
      expect_equal_to_one_process("full-zero3-offload-params", "full", 3, "parallel.zero=3 parallel.offload=params");
  ASSERT_EQ(opt.result.exit_code, 0);
  ASSERT_EQ(params.result.exit_code, 0);
  // the optimizer's moments live in the host's allocator, not the device's
  EXPECT_EQ(opt.memory[0]["by_category"]["optimizer"].get<int64_t>(), 0);
  EXPECT_GT(opt.memory[0]["host"]["by_category"]["optimizer"].get<int64_t>(), 0);
  // with params, the shards of parameters and gradients too: the device holds only what
  // is gathered (comm), activations and workspace (and RoPE's table)
  const nlohmann::json& dev = params.memory[0]["by_category"];
  EXPECT_EQ(dev["trainable"].get<int64_t>(), 0);
  EXPECT_EQ(dev["grads"].get<int64_t>(), 0);
  EXPECT_LE(dev["weights"].get<int64_t>(), 4096) << "only RoPE's frequency table";
  EXPECT_GT(dev["comm"].get<int64_t>(), 0);
  const nlohmann::json& host = params.memory[0]["host"]["by_category"];
  EXPECT_GT(host["trainable"].get<int64_t>(), 0);
  EXPECT_GT(host["grads"].get<int64_t>(), 0);
  EXPECT_GT(host["optimizer"].get<int64_t>(), 0);
}

TEST_F(Zero, Zero3WithRecompute) {
  // the rebuild runs inside each block's backward, while ZeRO-3 holds it gathered
  expect_equal_to_one_process("lora-zero3-recompute-full", "lora", 2, "parallel.zero=3 parallel.recompute=full");
  expect_equal_to_one_process("full-zero3-recompute-selective", "full", 3,
                              "parallel.zero=3 parallel.recompute=selective");
}

TEST_F(Zero, WhatEachStageDivides) {
  const TrainRun& one = single("full");
  ASSERT_EQ(one.result.exit_code, 0) << one.result.err;
  const TrainRun z1 = setup_->train("divides-zero1", 4, method_overrides("full") + "parallel.zero=1");
  const TrainRun z3 = setup_->train("divides-zero3", 4, method_overrides("full") + "parallel.zero=3");
  ASSERT_EQ(z1.result.exit_code, 0) << z1.result.err;
  ASSERT_EQ(z3.result.exit_code, 0) << z3.result.err;
  const int64_t states1 = model_states(one.memory[0]);
  for (int r = 0; r < 4; ++r) {
    EXPECT_LE(model_states(z3.memory[r]), states1 * 3 / 10) << "rank " << r;
    // zero 1: the optimizer state divided by 4, parameters and gradients whole (give or
    // take the allocator's 512-byte rounding of each piece: the chunks cut tensors apart,
    // the buckets join them)
    const auto& c1 = z1.memory[r]["by_category"];
    const auto& c0 = one.memory[0]["by_category"];
    const int64_t rounding = 64 * 1024;
    EXPECT_LE(c1["optimizer"].get<int64_t>(), c0["optimizer"].get<int64_t>() / 4 + rounding) << "rank " << r;
    EXPECT_GE(c1["trainable"].get<int64_t>(), c0["trainable"].get<int64_t>() - rounding) << "rank " << r;
    EXPECT_GE(c1["grads"].get<int64_t>(), c0["grads"].get<int64_t>() - rounding) << "rank " << r;
  }
}

TEST_F(Zero, ResumesUnderAnotherStageAndLayout) {
  const TrainRun& one = single("lora");
  ASSERT_EQ(one.result.exit_code, 0) << one.result.err;
  const TrainRun z3 = setup_->train("resume-zero3-dp4", 4, "parallel.zero=3");
  ASSERT_EQ(z3.result.exit_code, 0) << z3.result.err;
  const std::vector<double> tail(one.losses.begin() + 3, one.losses.end());
  for (const auto& [name, ranks, overrides] :
       {std::tuple{"as-zero0-dp1", 1, "parallel.zero=0"}, std::tuple{"as-zero2-dp3", 3, "parallel.zero=2"}}) {
    const TrainRun r = setup_->train(name, ranks,
                                     std::string(overrides) + " train.resume_from=" +
                                         testing::quoted(z3.dir / "checkpoint-3"));
    ASSERT_EQ(r.result.exit_code, 0) << r.result.err;
    testing::expect_losses_near(r.losses, tail, name);
    EXPECT_LE(testing::weight_error(testing::checkpoint_parameters(r.dir / "checkpoint-6"),
                                    testing::checkpoint_parameters(one.dir / "checkpoint-6")),
              1e-5)
        << name;
    testing::expect_memory_predicted_exactly(r, ranks);
  }
}

}  // namespace
}  // namespace lmtune
