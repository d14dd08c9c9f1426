// Data-parallel training under real mpirun processes (`lmtune launch`), against one process
// with the same global batch:
//   * LoRA (dropout 0.1) and full fine-tuning at dp 2, 3 and 4, with gradient accumulation
//     2, on a model whose sizes divide by none of the rank counts (hidden 30, MLP 46, 3
//     layers): every step's loss and the final weights within 1e-5, and every rank's meta
//     prediction of its peak allocated and reserved bytes equal to the measured ones;
//   * activation recompute full and selective at dp 2 (LoRA and full fine-tuning), the
//     same checks;
//   * resume across layouts: a dp=2 checkpoint continued with dp=1 and dp=3 equals the
//     uninterrupted run, and with dp=2 is bit-identical to it;
//   * faults: a rank killed with SIGKILL mid-run ends every rank within 30 s, names the
//     rank, and leaves the last checkpoint intact and resumable; SIGTERM to the launcher
//     saves a checkpoint at the step boundary and the run resumes bit-identically; ranks
//     given different configs fail at once with a message naming the difference;
//   * the README's commands: `lmtune launch --nproc-per-node 2 -- train
//     configs/demo_lora.yaml train.max_steps=5`, and the same under a bare mpirun.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/processes.h"
#include "common/test_models.h"
#include "common/train_runs.h"
#include "trainer/io/safetensors.h"

namespace lmtune {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using testing::expect_losses_near;
using testing::expect_memory_predicted_exactly;
using testing::read_losses;
using testing::Tensors;
using testing::TrainRun;
using testing::weight_error;

std::string q(const fs::path& p) { return testing::quoted(p); }
bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }
Tensors parameters(const fs::path& checkpoint) { return testing::checkpoint_parameters(checkpoint); }

// Every tensor of a safetensors file, as f32 values.
Tensors safetensors_values(const fs::path& file) {
  const SafeTensorsReader r = SafeTensorsReader::open(file);
  auto alloc = Allocator::create(Device::cpu());
  Tensors out;
  for (const std::string& name : r.names()) {
    Tensor t = Tensor::empty(*alloc, r.get(name).shape, DType::f32, MemCategory::workspace);
    r.load_into(name, t);
    out[name] = t.to_f32();
  }
  return out;
}

class DataParallel : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (testing::stories15m_llama2c_dir().empty()) return;
    setup_ = new testing::TinyTraining(testing::temp_dir("lmtune-dp"), /*tied=*/false);
    root_ = new fs::path(setup_->root());
  }
  static void TearDownTestSuite() {
    delete setup_;
    delete root_;
    setup_ = nullptr;
    root_ = nullptr;
  }
  void SetUp() override {
    if (root_ == nullptr) GTEST_SKIP() << "stories15M (its tokenizer) not fetched";
  }

  static TrainRun train(const std::string& name, int ranks, const std::string& extra = "") {
    return setup_->train(name, ranks, extra);
  }

  // One process, once per method (the reference every layout is compared with).
  static const TrainRun& single(const std::string& method) {
    static std::map<std::string, TrainRun> cache;
    auto it = cache.find(method);
    if (it == cache.end()) it = cache.emplace(method, train("single-" + method, 1, overrides(method))).first;
    return it->second;
  }
  static std::string overrides(const std::string& method) {
    return method == "full" ? "method.type=full train.lr=0.001" : "";
  }

  static testing::TinyTraining* setup_;
  static fs::path* root_;
};
testing::TinyTraining* DataParallel::setup_ = nullptr;
fs::path* DataParallel::root_ = nullptr;

class DataParallelEquivalence : public DataParallel, public ::testing::WithParamInterface<std::tuple<std::string, int>> {};

TEST_P(DataParallelEquivalence, MatchesOneProcess) {
  const auto& [method, dp] = GetParam();
  const TrainRun& one = single(method);
  ASSERT_EQ(one.result.exit_code, 0) << one.result.err;
  ASSERT_EQ(one.losses.size(), 6u);
  expect_memory_predicted_exactly(one, 1);

  const TrainRun r = train(method + "-dp" + std::to_string(dp), dp, overrides(method));
  ASSERT_EQ(r.result.exit_code, 0) << r.result.err;
  expect_losses_near(r.losses, one.losses, method + " dp" + std::to_string(dp));
  EXPECT_LE(weight_error(parameters(r.dir / "checkpoint-6"), parameters(one.dir / "checkpoint-6")), 1e-5);
  expect_memory_predicted_exactly(r, dp);
  // every rank wrote its shard of the checkpoint
  for (int k = 0; k < dp; ++k) {
    char name[64];
    std::snprintf(name, sizeof name, "shard-%05d-of-%05d.safetensors", k, dp);
    EXPECT_TRUE(fs::exists(r.dir / "checkpoint-6" / name)) << name;
  }
  // one writer: a single metrics line per step
  EXPECT_EQ(r.losses.size(), 6u);
  if (dp != 3) return;
  // `lmtune export` (one process) reads the sharded checkpoint as it reads one process's
  const std::string format = method == "lora" ? "peft" : "hf";
  const fs::path a = r.dir / "export", b = one.dir / "export";
  for (const auto& [run, out] : {std::pair{r.dir, a}, std::pair{one.dir, b}}) {
    const testing::RunResult e = testing::run_lmtune("export " + q(run) + " --format " + format + " --out " + q(out));
    ASSERT_EQ(e.exit_code, 0) << e.err;
  }
  const std::string file = method == "lora" ? "adapter_model.safetensors" : "model.safetensors";
  EXPECT_LE(weight_error(safetensors_values(a / file), safetensors_values(b / file)), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Layouts, DataParallelEquivalence,
                         ::testing::Combine(::testing::Values("lora", "full"), ::testing::Values(2, 3, 4)),
                         [](const auto& info) {
                           return std::get<0>(info.param) + "_dp" + std::to_string(std::get<1>(info.param));
                         });

// Activation recompute under real processes: dp 2 with the suite's gradient accumulation 2
// and LoRA dropout 0.1, against one process without recompute (recompute itself changes
// no bit: tests/model/recompute_test.cpp).
class DataParallelRecompute : public DataParallel,
                              public ::testing::WithParamInterface<std::tuple<std::string, std::string>> {};

TEST_P(DataParallelRecompute, MatchesOneProcess) {
  const auto& [method, recompute] = GetParam();
  const TrainRun& one = single(method);
  ASSERT_EQ(one.result.exit_code, 0) << one.result.err;
  const TrainRun r = train(method + "-dp2-recompute-" + recompute, 2,
                           overrides(method) + " parallel.recompute=" + recompute);
  ASSERT_EQ(r.result.exit_code, 0) << r.result.err;
  expect_losses_near(r.losses, one.losses, method + " dp2 recompute " + recompute);
  EXPECT_LE(weight_error(parameters(r.dir / "checkpoint-6"), parameters(one.dir / "checkpoint-6")), 1e-5);
  expect_memory_predicted_exactly(r, 2);
}

INSTANTIATE_TEST_SUITE_P(Policies, DataParallelRecompute,
                         ::testing::Combine(::testing::Values("lora", "full"), ::testing::Values("full", "selective")),
                         [](const auto& info) {
                           return std::get<0>(info.param) + "_recompute_" + std::get<1>(info.param);
                         });

TEST_F(DataParallel, ResumesUnderAnotherLayout) {
  const TrainRun& one = single("lora");
  ASSERT_EQ(one.result.exit_code, 0) << one.result.err;
  const TrainRun two = train("resume-dp2", 2);
  ASSERT_EQ(two.result.exit_code, 0) << two.result.err;
  const fs::path saved = two.dir / "checkpoint-3";
  for (int dp : {1, 3, 2}) {
    const TrainRun r = train("resumed-dp2-as-dp" + std::to_string(dp), dp, "train.resume_from=" + q(saved));
    ASSERT_EQ(r.result.exit_code, 0) << r.result.err;
    ASSERT_EQ(r.losses.size(), 3u) << "the resumed run logs steps 4..6";
    const std::vector<double> tail(one.losses.begin() + 3, one.losses.end());
    expect_losses_near(r.losses, tail, "resumed as dp" + std::to_string(dp));
    EXPECT_LE(weight_error(parameters(r.dir / "checkpoint-6"), parameters(one.dir / "checkpoint-6")), 1e-5);
    expect_memory_predicted_exactly(r, dp);
    if (dp == 2) {  // the same layout: bit for bit
      const std::vector<double> two_tail(two.losses.begin() + 3, two.losses.end());
      EXPECT_EQ(r.losses, two_tail);
      EXPECT_EQ(testing::read_checkpoint_tensors(r.dir / "checkpoint-6"),
                testing::read_checkpoint_tensors(two.dir / "checkpoint-6"));
    }
  }
}

// Waits until `dir` holds checkpoint-N for some N >= `step`; returns N (0 on timeout).
int64_t wait_for_checkpoint(const fs::path& dir, int64_t step) {
  const auto t0 = Clock::now();
  while (std::chrono::duration<double>(Clock::now() - t0).count() < 120) {
    for (int64_t n = step; n < step + 200; ++n)
      if (fs::exists(dir / ("checkpoint-" + std::to_string(n)) / "index.json")) return n;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return 0;
}

TEST_F(DataParallel, RankKilledMidRunEndsTheJobAndTheCheckpointResumes) {
  const fs::path out = *root_ / "killed";
  const std::string cfg = "train " + q(*root_ / "cfg.yaml") + " output.dir=" + q(out) +
                          " train.micro_batch_size=6 train.max_steps=100000 train.save_every=2 train.eval_every=0 "
                          "train.sample_tokens=0 --quiet";
  const testing::Background b = testing::start_lmtune("launch --nproc-per-node 2 --grace-period 2 -- " + cfg);
  const std::vector<pid_t> ranks = testing::wait_for_ranks(b.pid, 2);
  ASSERT_EQ(ranks.size(), 2u);
  ASSERT_GT(wait_for_checkpoint(out, 4), 0);
  // rank 1 is the rank whose environment says so
  pid_t victim = 0;
  for (pid_t p : ranks) {
    std::ifstream env("/proc/" + std::to_string(p) + "/environ", std::ios::binary);
    const std::string all((std::istreambuf_iterator<char>(env)), {});
    if (contains(all, std::string("OMPI_COMM_WORLD_RANK=1") + '\0')) victim = p;
  }
  ASSERT_NE(victim, 0);
  const auto t0 = Clock::now();
  kill(victim, SIGKILL);
  const testing::RunResult r = testing::wait_lmtune(b);
  const double took = std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_LT(took, 30) << r.err;
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(contains(r.err, "rank 1")) << r.err;
  EXPECT_TRUE(contains(r.err, "signal 9")) << r.err;
  // mpirun has sent its SIGKILLs when it exits; under load the kernel may take a moment more
  for (pid_t p : ranks) {
    while (testing::running(p) && std::chrono::duration<double>(Clock::now() - t0).count() < 30)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    EXPECT_FALSE(testing::running(p)) << "rank process " << p << " survived 30 s";
  }

  // the last checkpoint is whole, and the run goes on from it
  const int64_t last = wait_for_checkpoint(out, 2);
  int64_t latest = last;
  for (int64_t n = last; n < last + 400; ++n)
    if (fs::exists(out / ("checkpoint-" + std::to_string(n)))) latest = n;
  EXPECT_FALSE(testing::read_checkpoint_tensors(out / ("checkpoint-" + std::to_string(latest))).empty());
  const testing::RunResult resumed = testing::run_lmtune(
      "launch --nproc-per-node 2 --grace-period 2 -- train " + q(*root_ / "cfg.yaml") + " output.dir=" + q(out) +
      " train.micro_batch_size=6 train.max_steps=" + std::to_string(latest + 2) +
      " train.save_every=2 train.eval_every=0 train.sample_tokens=0 train.resume_from=auto --quiet");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  EXPECT_TRUE(fs::exists(out / ("checkpoint-" + std::to_string(latest + 2)) / "index.json"));
}

TEST_F(DataParallel, SigtermToTheLauncherSavesTheStepAndTheRunResumesBitIdentically) {
  // a constant schedule, so that the run's length does not change its steps
  const std::string common = " train.micro_batch_size=6 train.schedule=constant train.warmup_steps=0 "
                             "train.save_every=0 train.eval_every=0 train.sample_tokens=0 --quiet";
  const fs::path out = *root_ / "stopped";
  const testing::Background b = testing::start_lmtune("launch --nproc-per-node 2 --grace-period 5 -- train " +
                                                      q(*root_ / "cfg.yaml") + " output.dir=" + q(out) +
                                                      " train.max_steps=100000" + common);
  ASSERT_EQ(testing::wait_for_ranks(b.pid, 2).size(), 2u);
  const auto t0 = Clock::now();
  while (read_losses(out).size() < 2 && std::chrono::duration<double>(Clock::now() - t0).count() < 120)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  kill(b.pid, SIGTERM);
  const testing::RunResult r = testing::wait_lmtune(b);
  ASSERT_EQ(r.exit_code, 128 + SIGTERM) << r.err;
  const int64_t k = static_cast<int64_t>(read_losses(out).size());
  ASSERT_GE(k, 2);
  EXPECT_TRUE(contains(r.err, "lmtune: stopped by SIGTERM after step " + std::to_string(k) + "; saved " +
                                  (out / ("checkpoint-" + std::to_string(k))).string()))
      << r.err;
  ASSERT_TRUE(fs::exists(out / ("checkpoint-" + std::to_string(k)) / "index.json"));

  const std::string end = " train.max_steps=" + std::to_string(k + 2);
  const testing::RunResult resumed = testing::run_lmtune("launch --nproc-per-node 2 -- train " + q(*root_ / "cfg.yaml") +
                                                         " output.dir=" + q(out) + " train.resume_from=auto" + end + common);
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  const fs::path ref = *root_ / "not-stopped";
  const testing::RunResult straight = testing::run_lmtune("launch --nproc-per-node 2 -- train " +
                                                          q(*root_ / "cfg.yaml") + " output.dir=" + q(ref) + end + common);
  ASSERT_EQ(straight.exit_code, 0) << straight.err;
  EXPECT_EQ(read_losses(out), read_losses(ref));
  const std::string last = "checkpoint-" + std::to_string(k + 2);
  EXPECT_EQ(testing::read_checkpoint_tensors(out / last), testing::read_checkpoint_tensors(ref / last));
}

TEST_F(DataParallel, RanksGivenDifferentConfigsFailAtOnce) {
  // mpirun's own MPMD form: rank 0 and rank 1 run different command lines
  const std::string train = std::string(LMTUNE_BINARY) + " train " + q(*root_ / "cfg.yaml") + " output.dir=" +
                            q(*root_ / "mismatch") + " train.micro_batch_size=6 ";
  const auto t0 = Clock::now();
  const testing::RunResult r = testing::run_command(
      "OMP_NUM_THREADS=1 mpirun --oversubscribe --bind-to none --allow-run-as-root -np 1 " + train +
      "train.lr=0.003 : -np 1 " + train + "train.lr=0.002");
  EXPECT_NE(r.exit_code, 0) << r.err;
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 60) << r.err;
  EXPECT_TRUE(contains(r.err, "rank 1 runs another config than rank 0")) << r.err;
  EXPECT_TRUE(contains(r.err, "rank 0 has '  lr: 0.003'")) << r.err;
  EXPECT_TRUE(contains(r.err, "rank 1 has '  lr: 0.002'")) << r.err;
}

// The README's commands, as they are, on the demo config (stories15M, LoRA).
TEST_F(DataParallel, ReadmeLaunchAndMpirunCommands) {
  const fs::path hf = testing::stories15m_hf_dir();
  const std::string tail = " train.max_steps=5 model.path=" + q(hf) + " train.eval_batches=2 train.sample_tokens=8";
  const std::string src = q(LMTUNE_SOURCE_DIR);
  const fs::path a = *root_ / "demo-launch", b = *root_ / "demo-mpirun";
  const testing::RunResult launched = testing::run_command(
      "cd " + src + " && " + LMTUNE_BINARY + " launch --nproc-per-node 2 -- train configs/demo_lora.yaml" + tail +
      " output.dir=" + q(a));
  ASSERT_EQ(launched.exit_code, 0) << launched.err;
  EXPECT_TRUE(contains(launched.err, "ranks: 2 (dp 2), ")) << launched.err;
  EXPECT_TRUE(contains(launched.err, "global batch 2 x 8 x 1 = 16 rows of 256 tokens")) << launched.err;
  const testing::RunResult mpi = testing::run_command(
      "cd " + src + " && OMP_NUM_THREADS=1 mpirun -np 2 --oversubscribe --allow-run-as-root " + LMTUNE_BINARY +
      " train configs/demo_lora.yaml train.max_steps=2 model.path=" + q(hf) + " train.eval_batches=1 " +
      "train.sample_tokens=0 output.dir=" + q(b));
  ASSERT_EQ(mpi.exit_code, 0) << mpi.err;
  // the same layout and threads, and the warmup (20 steps) makes the first steps' learning
  // rates independent of the run's length: the same first steps
  const std::vector<double> five = read_losses(a), two = read_losses(b);
  ASSERT_EQ(five.size(), 5u);
  ASSERT_EQ(two.size(), 2u);
  EXPECT_EQ(std::vector<double>(five.begin(), five.begin() + 2), two);
}

}  // namespace
}  // namespace lmtune
