// `lmtune slurm` as text (no Slurm needed; tests/slurm/ runs the scripts on a real cluster):
// the #SBATCH lines, the step and the traps of the script it writes, which bash parses; the
// warning time measured from the last checkpoint (read back here from trainer_state.json and
// metrics.jsonl with an independent JSON reader); every kind of bad input refused before
// anything is written; and `lmtune train --plan`, the overlay the script passes on.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "common/test_models.h"

namespace lmtune {
namespace {

namespace fs = std::filesystem;
using testing::run_lmtune;

std::string q(const fs::path& p) {
  std::string s = "'";  // (not "'" + ...: GCC 12 warns -Wrestrict on that falsely)
  s += p.string();
  s += "'";
  return s;
}

std::string read_text(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

class SlurmScript : public ::testing::Test {
 protected:
  void SetUp() override {
    if (testing::stories15m_llama2c_dir().empty()) GTEST_SKIP() << "stories15M (its tokenizer) not fetched";
    root_ = testing::temp_dir("lmtune-slurm-script");
    model_ = testing::write_tiny_train_model(root_ / "model");
    testing::write_fox_and_bear_texts(root_ / "data");
    config_ = root_ / "cfg.yaml";
    std::ofstream(config_) << "model: {path: " << model_.string() << "}\n"
                           << "data: {train_files: [" << (root_ / "data" / "*.txt").string() << "], seq_len: 16}\n"
                           << "train: {max_steps: 4, micro_batch_size: 1, eval_every: 0, sample_tokens: 0, "
                              "threads: 1}\n"
                           << "output: {dir: " << (root_ / "run").string() << "}\n";
  }

  // `lmtune slurm CONFIG ARGS` expecting one error line holding every part; nothing written.
  void expect_refused(const std::string& args, const std::vector<std::string>& parts) {
    const auto r = run_lmtune("slurm " + q(config_) + " " + args + " --out " + q(root_ / "refused.sbatch"));
    EXPECT_EQ(r.exit_code, 1) << args << "\n" << r.err;
    EXPECT_EQ(r.err.rfind("lmtune: error: ", 0), 0u) << r.err;
    EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "expected one line: " << r.err;
    for (const auto& p : parts) EXPECT_TRUE(has(r.err, p)) << "'" << p << "' not in: " << r.err;
    EXPECT_FALSE(fs::exists(root_ / "refused.sbatch"));
  }

  fs::path root_, model_, config_;
};

TEST_F(SlurmScript, TheScriptSaysWhatTheJobNeeds) {
  const fs::path plan = root_ / "plan.yaml";
  std::ofstream(plan) << "parallel: {dp: 8}\ntrain: {micro_batch_size: 1, grad_accum_steps: 2}\n";
  const fs::path script = root_ / "jobs" / "job.sbatch";
  const auto r = run_lmtune("slurm " + q(config_) + " train.lr=0.001 --nodes 2 --gpus-per-node 4 --cpus-per-task 3 " +
                            "--time 1-00:00:00 --partition gpu,long --account proj --plan " + q(plan) + " --out " +
                            q(script));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err, "lmtune slurm: wrote " + script.string() + "\n");
  const std::string s = read_text(script);
  const std::string logs = (root_ / "jobs").string();  // the script's directory, by default
  for (const std::string& line : std::vector<std::string>{
           "#!/bin/bash\n# Slurm batch script for `lmtune train`, written by `lmtune slurm`.\n",
        "\n#SBATCH --job-name=lmtune-run\n", "\n#SBATCH --nodes=2\n", "\n#SBATCH --ntasks-per-node=4\n",
        "\n#SBATCH --cpus-per-task=3\n", "\n#SBATCH --time=1-00:00:00\n", "\n#SBATCH --partition=gpu,long\n",
        "\n#SBATCH --account=proj\n", "\n#SBATCH --chdir=" + fs::current_path().string() + "\n",
        "\n#SBATCH --output=" + logs + "/%x-%j.log\n", "\n#SBATCH --error=" + logs + "/%x-%j.log\n",
        "\n#SBATCH --open-mode=append\n", "\n#SBATCH --requeue\n",
        "\n#SBATCH --signal=B:USR1@300\n",  // nothing measured yet: the default
        "\nexport OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK\n", "\ntrap on_warning USR1\n", "\ntrap on_term TERM\n",
        "    scontrol requeue \"$SLURM_JOB_ID\"\n",
        "\nsrun --mpi=pmix --wait=60 --cpus-per-task=\"$SLURM_CPUS_PER_TASK\" \\\n  " + std::string(LMTUNE_BINARY) +
            " train " + config_.string() + " \\\n    --plan " + plan.string() +
            " \\\n    train.lr=0.001 \\\n    --threads \"$SLURM_CPUS_PER_TASK\" train.resume_from=auto &\n"})
    EXPECT_TRUE(has(s, line)) << "'" << line << "' not in:\n" << s;
  EXPECT_TRUE(has(s, "2 nodes x 4 tasks = 8 ranks, one task per rank (data parallelism over 8)")) << s;
  EXPECT_TRUE(has(s, "no checkpoint yet")) << s;
  EXPECT_FALSE(has(s, "#SBATCH --gpus")) << "this release trains on the CPU: no GPU is requested";
  std::istringstream lines(s);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("# ", 0) == 0 && line.rfind("#   ", 0) != 0) {
      EXPECT_LE(line.size(), 92u) << line;
    }
  }
  EXPECT_TRUE(fs::is_directory(root_ / "jobs"));
  const auto bash = testing::run_command("bash -n " + q(script));
  EXPECT_EQ(bash.exit_code, 0) << bash.err;

  // Written again over its own script; a file it did not write is left alone.
  EXPECT_EQ(run_lmtune("slurm " + q(config_) + " --nodes 1 --tasks-per-node 2 --gpus-per-node 0 --time 02:00:00 " +
                       "--out " + q(script))
                .exit_code,
            0);
  EXPECT_TRUE(has(read_text(script), "\n#SBATCH --ntasks-per-node=2\n"));
  std::ofstream(root_ / "mine.sh") << "#!/bin/bash\necho mine\n";
  const auto mine = run_lmtune("slurm " + q(config_) + " --nodes 1 --gpus-per-node 1 --time 02:00:00 --out " +
                               q(root_ / "mine.sh"));
  EXPECT_EQ(mine.exit_code, 1);
  EXPECT_TRUE(has(mine.err, "exists and is not a script lmtune slurm wrote; it is left alone")) << mine.err;
  EXPECT_EQ(read_text(root_ / "mine.sh"), "#!/bin/bash\necho mine\n");
}

TEST_F(SlurmScript, MpirunLauncherRunsLmtuneLaunchInsideTheAllocation) {
  const auto r = run_lmtune("slurm " + q(config_) + " --nodes 3 --gpus-per-node 2 --time 04:00:00 --launcher mpirun");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::string step = "\n";
  step += LMTUNE_BINARY;
  step += " launch --nnodes 3 --nproc-per-node 2 --threads \"$SLURM_CPUS_PER_TASK\" -- \\\n  train ";
  step += config_.string();
  step += " \\\n    --threads \"$SLURM_CPUS_PER_TASK\" train.resume_from=auto &\n";
  EXPECT_TRUE(has(r.out, step)) << r.out;
  EXPECT_FALSE(has(r.out, "srun --mpi"));
}

// The warning time is 2 x (the last step + the last save) + 60 s, from what the run recorded.
TEST_F(SlurmScript, WarningTimeComesFromTheLastCheckpoint) {
  const auto t = run_lmtune("train " + q(config_) + " train.save_every=2 --quiet");
  ASSERT_EQ(t.exit_code, 0) << t.err;
  const auto state = nlohmann::json::parse(read_text(root_ / "run" / "checkpoint-4" / "trainer_state.json"));
  ASSERT_TRUE(state.contains("save_seconds")) << state.dump();
  const double save = state["save_seconds"].get<double>();
  EXPECT_GT(save, 0.0);
  EXPECT_LT(save, 60.0);
  double step = -1;
  std::ifstream metrics(root_ / "run" / "metrics.jsonl");
  for (std::string line; std::getline(metrics, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("step_seconds")) step = j["step_seconds"].get<double>();
  }
  ASSERT_GE(step, 0.0);
  const int expected = static_cast<int>(std::ceil(2 * (step + save))) + 60;
  const auto r = run_lmtune("slurm " + q(config_) + " --nodes 1 --gpus-per-node 1 --time 00:10:00");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(has(r.out, "\n#SBATCH --signal=B:USR1@" + std::to_string(expected) + "\n")) << r.out;
  EXPECT_TRUE(has(r.out, "the save of checkpoint-4")) << r.out;
  const auto g = run_lmtune("slurm " + q(config_) + " --nodes 1 --gpus-per-node 1 --time 00:10:00 --grace 90");
  EXPECT_TRUE(has(g.out, "\n#SBATCH --signal=B:USR1@90\n")) << g.out;
  EXPECT_TRUE(has(g.out, "90 s is set by --grace")) << g.out;
}

TEST_F(SlurmScript, BadInputIsRefusedBeforeAnythingIsWritten) {
  const std::string ok = " --nodes 1 --gpus-per-node 2 --time 02:00:00";
  expect_refused("--gpus-per-node 2 --time 02:00:00", {"'lmtune slurm' needs --nodes"});
  expect_refused("--nodes 1 --gpus-per-node 2", {"'lmtune slurm' needs --time"});
  expect_refused("--nodes 0 --gpus-per-node 2 --time 02:00:00", {"--nodes 0 is out of range"});
  expect_refused("--nodes 1 --gpus-per-node 0 --time 02:00:00", {"--gpus-per-node 0 needs --tasks-per-node"});
  expect_refused("--nodes 1 --gpus-per-node 2 --time 2:00", {"--time '2:00' is not a time limit", "HH:MM:SS"});
  expect_refused("--nodes 1 --gpus-per-node 2 --time 01:61:00", {"--time '01:61:00' is not a time limit"});
  expect_refused("--nodes 1 --gpus-per-node 2 --time 00:05:00", {"--time 00:05:00 (300 s) leaves no time to train",
                                                                  "the warning comes 300 s before the end"});
  expect_refused(ok + " --partition 'a b'", {"--partition 'a b' is not a Slurm name"});
  expect_refused(ok + " --account 'x;rm'", {"--account 'x;rm' is not a Slurm name"});
  expect_refused(ok + " --launcher mpiexec", {"--launcher 'mpiexec': expected srun or mpirun"});
  expect_refused(ok + " parallel.dp=4", {"the job has 1 node(s) x 2 task(s) = 2 ranks", "parallel.dp"});
  expect_refused(ok + " train.resume_from=auto", {"lmtune slurm sets train.resume_from=auto itself"});
  expect_refused(ok + " train.lrr=1", {"unknown key 'train.lrr'", "did you mean 'train.lr'?"});
  const fs::path plan = root_ / "plan.yaml";
  std::ofstream(plan) << "train: {micro_batch: 2}\n";
  expect_refused(ok + " --plan " + q(plan), {plan.string() + ":1: unknown key 'train.micro_batch'"});
  expect_refused(ok + " --plan " + q(root_ / "none.yaml"), {"config overlay", "none.yaml' does not exist"});
  expect_refused(ok + " --log-dir " + q(config_ / "logs"), {"--log-dir: cannot create the directory '" +
                                                              (config_ / "logs").string() + "'"});
  // --submit where there is no sbatch: said, after the script is written
  const auto r = testing::run_command("env PATH=/nonexistent " + std::string(LMTUNE_BINARY) + " slurm " +
                                      q(config_) + ok + " --log-dir " + q(root_ / "logs") + " --submit");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(has(r.err, "is Slurm's sbatch on PATH?")) << r.err;
  EXPECT_TRUE(fs::exists(root_ / "logs" / "lmtune-run.sbatch"));
}

// `lmtune train --plan`: the overlay applies after the file and before the overrides.
TEST_F(SlurmScript, TrainAppliesThePlan) {
  const fs::path plan = root_ / "plan.yaml";
  std::ofstream(plan) << "train: {max_steps: 3, micro_batch_size: 2}\n";
  const auto r = run_lmtune("train " + q(config_) + " --plan " + q(plan) + " train.max_steps=2 --quiet");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string resolved = read_text(root_ / "run" / "config.yaml");
  EXPECT_TRUE(has(resolved, "  max_steps: 2\n")) << resolved;
  EXPECT_TRUE(has(resolved, "  micro_batch_size: 2\n")) << resolved;
  EXPECT_EQ(testing::logged_losses(root_ / "run").size(), 2u);

  std::ofstream(plan) << "train: {micro_batch_size: 0}\n";
  const auto bad = run_lmtune("train " + q(config_) + " --plan " + q(plan) + " --quiet");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_TRUE(has(bad.err, plan.string() + ":1: train.micro_batch_size:")) << bad.err;
}

}  // namespace
}  // namespace lmtune
