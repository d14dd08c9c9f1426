// lmtune under a real Slurm (Debian's slurm-wlm 22.05, munge, Open MPI 4.1 over PMIx):
// scripts/slurm_cluster.sh starts munged, slurmctld and slurmd on this machine (CTest
// fixtures start and stop the clusters: tests/CMakeLists.txt, label "slurm"), and the tests
// submit jobs to it as a user would.
//   SlurmOneNode (one node, this machine): a job written by `lmtune slurm --submit` trains
//   and its run exports; the same with --launcher mpirun; a job requeued by `scontrol
//   requeue` and one warned by `scancel --signal=USR1 --batch` save, resume and end with
//   the losses and weights of a run that never stopped; `srun --mpi=pmix -n 2` directly; a bad
//   config fails at once with the message in the job's log.
//   SlurmTwoNodes (two network namespaces, one slurmd each): a 2-node job trains with one
//   rank per node over TCP, and so does `lmtune launch --nnodes 2 --hostfile`; both give
//   the losses of a one-node run.
// The reference runs (the uninterrupted, one-node ones) are `lmtune launch --nproc-per-node
// 2`: Open MPI's mpirun, without Slurm.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <regex>
#include <thread>

#include "common/test_models.h"
#include "trainer/io/safetensors.h"

namespace lmtune {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using testing::logged_losses;
using testing::RunResult;
using testing::run_command;

std::string q(const std::string& s) { return "'" + s + "'"; }
std::string q(const fs::path& p) { return q(p.string()); }

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// `Key=value` from `scontrol show job -o`'s one line.
std::string field(const std::string& job_line, const std::string& key) {
  const std::regex re("(^| )" + key + "=([^ ]*)");
  std::smatch m;
  return std::regex_search(job_line, m, re) ? m[2].str() : std::string();
}

// A cluster that scripts/slurm_cluster.sh started in the directory the environment variable
// names (CTest sets it).
class Cluster {
 public:
  explicit Cluster(const char* variable) {
    const char* d = std::getenv(variable);
    if (d != nullptr) dir_ = d;
  }
  // Why the tests cannot use it, or "" when they can.
  std::string unusable() const {
    if (dir_.empty()) return "not started (run the tests through CTest: ctest -L slurm)";
    if (fs::exists(dir_ / "unavailable")) return slurp(dir_ / "unavailable");
    if (!fs::exists(dir_ / "pids")) return "not running in " + dir_.string();
    return "";
  }
  const fs::path& dir() const { return dir_; }
  // A command line run as a client of the cluster, in node `node`'s network.
  RunResult exec(const std::string& command, int node = 1) const {
    return run_command(std::string(LMTUNE_SOURCE_DIR) + "/scripts/slurm_cluster.sh exec " + q(dir_) + " --node " +
                       std::to_string(node) + " -- " + command);
  }
  std::string job(const std::string& id) const { return exec("scontrol show job -o " + id).out; }
  // Waits for the job to end (up to `timeout`); returns its `scontrol show job -o` line.
  std::string wait_for_end(const std::string& id, std::chrono::seconds timeout = std::chrono::seconds(120)) const {
    const auto deadline = Clock::now() + timeout;
    std::string line;
    while (Clock::now() < deadline) {
      line = job(id);
      const std::string state = field(line, "JobState");
      if (state == "COMPLETED" || state == "FAILED" || state == "CANCELLED" || state == "TIMEOUT" ||
          state == "NODE_FAIL" || state == "OUT_OF_MEMORY" || state == "BOOT_FAIL" || state == "DEADLINE")
        return line;
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
    ADD_FAILURE() << "job " << id << " did not end within " << timeout.count() << " s: " << line
                  << exec("squeue").out;
    return line;
  }

 private:
  fs::path dir_;
};

class SlurmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (testing::stories15m_llama2c_dir().empty()) GTEST_SKIP() << "stories15M (its tokenizer) not fetched";
    if (const std::string why = cluster().unusable(); !why.empty()) GTEST_SKIP() << "the Slurm cluster: " << why;
    root_ = testing::temp_dir("lmtune-slurm");
    model_ = testing::write_tiny_train_model(root_ / "model");
    testing::write_fox_and_bear_texts(root_ / "data");
  }
  virtual const Cluster& cluster() const = 0;

  // A LoRA config on the tiny model writing to `out`: one thread per rank, a loss logged
  // every step, constant lr (so the schedule does not depend on max_steps). Written to
  // `file` when given, else to a new file.
  fs::path config(const fs::path& out, int64_t max_steps, fs::path file = {}) {
    if (file.empty()) file = root_ / ("cfg-" + std::to_string(configs_++) + ".yaml");
    std::ofstream(file) << "model: {path: " << model_.string() << "}\n"
                        << "method: {type: lora, lora: {rank: 4, alpha: 8, target_modules: all-linear}}\n"
                        << "data: {format: text, train_files: [" << (root_ / "data" / "*.txt").string()
                        << "], seq_len: 16}\n"
                        << "train: {max_steps: " << max_steps << ", micro_batch_size: 2, lr: 0.003, "
                        << "schedule: constant, eval_every: 0, sample_tokens: 0, threads: 1, log_every: 1}\n"
                        << "output: {dir: " << out.string() << "}\n";
    return file;
  }

  // The same config trained by two ranks under Open MPI's mpirun, without Slurm.
  std::vector<std::string> reference_losses(int64_t max_steps, const fs::path& out) {
    const RunResult r = testing::run_lmtune("launch --nproc-per-node 2 -- train " + q(config(out, max_steps)) +
                                            " --quiet");
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return logged_losses(out);
  }

  // `lmtune slurm CONFIG ARGS --submit` as a client of the cluster; returns the job id, or ""
  // (after a failure) when it did not submit.
  std::string submit(const fs::path& cfg, const std::string& args, const std::string& env = "", int node = 1) {
    const RunResult r = cluster().exec((env.empty() ? "" : "env " + env + " ") + LMTUNE_BINARY + " slurm " + q(cfg) + " " +
                                           args + " --log-dir " + q(root_ / "logs") + " --submit",
                                       node);
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
    std::smatch m;
    const std::regex re("^submitted batch job ([0-9]+)\n$");
    EXPECT_TRUE(std::regex_match(r.out, m, re)) << r.out;
    return m.size() > 1 ? m[1].str() : "";
  }
  std::string log_of(const std::string& job_line) const { return slurp(field(job_line, "StdOut")); }

  // Waits until the run has logged step `step` (up to a minute).
  static bool wait_for_step(const fs::path& run, int64_t step) {
    const auto deadline = Clock::now() + std::chrono::seconds(60);
    while (Clock::now() < deadline) {
      if (logged_losses(run).size() >= static_cast<size_t>(step)) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }

  fs::path root_, model_;
  int configs_ = 0;
};

class SlurmOneNode : public SlurmTest {
 protected:
  const Cluster& cluster() const override {
    static const Cluster c("LMTUNE_SLURM_ONE_NODE");
    return c;
  }

  // A job stopped by `stop` (a command line given the job id) once it has logged a few
  // steps saves step k and is requeued. Before it starts again (the requeue delay, 11 s on
  // the test cluster) its config is given max_steps k + 20 (a key that may change on
  // resume), so the job's length does not depend on how fast this machine is; the resumed
  // job ends with the losses and weights of a run of k + 20 steps that never stopped.
  // Returns the job's log.
  std::string stop_requeue_and_compare(const std::string& stop, const std::string& signal) {
    const fs::path run = root_ / "run", ref = root_ / "reference";
    const fs::path cfg = config(run, 1000000);
    const std::string id = submit(cfg, "--nodes 1 --gpus-per-node 2 --time 00:10:00");
    if (id.empty()) return {};
    EXPECT_TRUE(wait_for_step(run, 2)) << "the job did not train: " << cluster().job(id);
    const RunResult s = cluster().exec(stop + " " + id);
    EXPECT_EQ(s.exit_code, 0) << s.out << s.err;
    // stopped after step k with a checkpoint
    const std::regex stopped("lmtune: stopped by " + signal + " after step ([0-9]+); saved (" + run.string() +
                             "/checkpoint-[0-9]+)");
    const fs::path log_file = field(cluster().job(id), "StdOut");
    std::smatch m;
    std::string log;
    for (const auto deadline = Clock::now() + std::chrono::seconds(60);
         !std::regex_search(log = slurp(log_file), m, stopped) && Clock::now() < deadline;)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (m.size() != 3) {
      ADD_FAILURE() << "no checkpoint saved on " << signal << ":\n" << log;
      cluster().exec("scancel " + id);
      return log;
    }
    const int64_t k = std::stoll(m[1].str());
    const int64_t steps = k + 20;
    config(run, steps, cfg);  // before the requeued job reads it
    EXPECT_EQ(m[2].str(), (run / ("checkpoint-" + std::to_string(k))).string());
    std::cout << "stopped after step " << k << "\n";

    const std::string line = wait_for_end(id);
    log = log_of(line);
    EXPECT_EQ(field(line, "JobState"), "COMPLETED") << line << "\n" << log;
    EXPECT_EQ(field(line, "Restarts"), "1") << line;
    EXPECT_TRUE(has(log, "lmtune-slurm: job " + id + " (restart 1)")) << log;
    EXPECT_TRUE(has(log, "resumed from " + m[2].str() + " at step " + std::to_string(k))) << log;
    const std::vector<std::string> expected = reference_losses(steps, ref);
    EXPECT_EQ(expected.size(), static_cast<size_t>(steps));
    EXPECT_EQ(logged_losses(run), expected);
    const std::string last = "checkpoint-" + std::to_string(steps);
    EXPECT_EQ(testing::read_checkpoint_tensors(run / last), testing::read_checkpoint_tensors(ref / last));
    return log;
  }
  std::string wait_for_end(const std::string& id) const { return cluster().wait_for_end(id); }
};

class SlurmTwoNodes : public SlurmTest {
 protected:
  const Cluster& cluster() const override {
    static const Cluster c("LMTUNE_SLURM_TWO_NODES");
    return c;
  }
};

// (1) The job `lmtune slurm --submit` writes trains two ranks; the run exports.
TEST_F(SlurmOneNode, SubmittedJobTrainsAndExports) {
  const fs::path run = root_ / "run";
  const std::string id = submit(config(run, 4), "--nodes 1 --gpus-per-node 2 --time 00:10:00");
  ASSERT_FALSE(id.empty());
  const std::string line = cluster().wait_for_end(id);
  const std::string log = log_of(line);
  EXPECT_EQ(field(line, "JobState"), "COMPLETED") << line << "\n" << log;
  EXPECT_EQ(field(line, "ExitCode"), "0:0");
  EXPECT_EQ(field(line, "NumTasks"), "2");
  EXPECT_TRUE(has(log, "ranks: 2 (dp 2), 1 thread per rank")) << log;
  EXPECT_TRUE(has(log, "done: 4 steps")) << log;
  EXPECT_EQ(logged_losses(run), reference_losses(4, root_ / "reference"));

  const RunResult e = testing::run_lmtune("export " + q(run) + " --format hf --out " + q(root_ / "hf"));
  ASSERT_EQ(e.exit_code, 0) << e.err;
  const SafeTensorsReader merged = SafeTensorsReader::open(root_ / "hf" / "model.safetensors");
  EXPECT_TRUE(merged.contains("model.layers.0.self_attn.q_proj.weight"));
}

// The same job with the ranks started by mpirun inside the allocation (lmtune launch).
TEST_F(SlurmOneNode, MpirunLauncherTrainsTheSame) {
  const fs::path run = root_ / "run";
  const std::string id = submit(config(run, 4), "--nodes 1 --gpus-per-node 2 --time 00:10:00 --launcher mpirun");
  ASSERT_FALSE(id.empty());
  const std::string line = cluster().wait_for_end(id);
  const std::string log = log_of(line);
  EXPECT_EQ(field(line, "JobState"), "COMPLETED") << line << "\n" << log;
  EXPECT_TRUE(has(log, "lmtune launch: mpirun -np 2")) << log;
  EXPECT_EQ(logged_losses(run), reference_losses(4, root_ / "reference"));
}

// (2) `scontrol requeue` of a running job: SIGTERM reaches every rank, they save the step;
// the requeued job resumes from that checkpoint and ends bit-identical to a run that never
// stopped.
TEST_F(SlurmOneNode, ScontrolRequeueResumesBitIdentically) {
  const std::string log = stop_requeue_and_compare("scontrol requeue", "SIGTERM");
  EXPECT_TRUE(has(log, "lmtune-slurm: SIGTERM")) << log;
}

// (2) The warning signal, as at the time limit: the script passes SIGUSR1 to the ranks,
// they save, and the job requeues itself.
TEST_F(SlurmOneNode, WarningSignalSavesAndRequeuesItself) {
  const std::string log = stop_requeue_and_compare("scancel --signal=USR1 --batch", "SIGUSR1");
  EXPECT_TRUE(has(log, "lmtune-slurm: checkpoint saved; requeueing job")) << log;
}

// (3) srun starting the ranks directly (its own allocation); the ranks read Slurm's variables.
TEST_F(SlurmOneNode, SrunStartsTheRanksDirectly) {
  const fs::path run = root_ / "run";
  const RunResult r = cluster().exec("srun --mpi=pmix -n 2 " + std::string(LMTUNE_BINARY) + " train " +
                                     q(config(run, 4)));
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_TRUE(has(r.err, "ranks: 2 (dp 2), 1 thread per rank")) << r.err;
  EXPECT_EQ(logged_losses(run), reference_losses(4, root_ / "reference"));
}

// (4) A job whose config went bad after the script was written fails at once, its message
// in the job's log, and is not requeued.
TEST_F(SlurmOneNode, BadConfigFailsFastWithTheMessageInTheLog) {
  const fs::path cfg = config(root_ / "run", 4);
  const fs::path script = root_ / "job.sbatch";
  const RunResult g = testing::run_lmtune("slurm " + q(cfg) + " --nodes 1 --gpus-per-node 2 --time 00:10:00 --out " +
                                          q(script) + " --log-dir " + q(root_ / "logs"));
  ASSERT_EQ(g.exit_code, 0) << g.err;
  std::string text = slurp(cfg);
  text.replace(text.find("max_steps"), 9, "max_step");
  std::ofstream(cfg) << text;
  const auto t0 = Clock::now();
  const RunResult s = cluster().exec("sbatch --parsable " + q(script));
  ASSERT_EQ(s.exit_code, 0) << s.err;
  const std::string id = s.out.substr(0, s.out.find_first_of(";\n"));
  const std::string line = cluster().wait_for_end(id);
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  const std::string log = log_of(line);
  EXPECT_EQ(field(line, "JobState"), "FAILED") << line;
  EXPECT_EQ(field(line, "Restarts"), "0") << line;
  EXPECT_TRUE(has(log, "lmtune: rank 0: error: ")) << log;
  EXPECT_TRUE(has(log, cfg.string() + ":4: train.max_step: unknown key; did you mean 'train.max_steps'?")) << log;
  EXPECT_LT(seconds, 30.0) << log;
}

// (5) Two nodes (network namespaces joined by a veth pair, a slurmd each): one rank per
// node, over TCP; the losses of the one-node run.
TEST_F(SlurmTwoNodes, OneRankPerNodeOverTcp) {
  const std::vector<std::string> expected = reference_losses(6, root_ / "reference");
  const fs::path run = root_ / "run";
  const std::string id = submit(config(run, 6), "--nodes 2 --gpus-per-node 1 --time 00:10:00",
                                "OMPI_MCA_btl=tcp,self OMPI_MCA_btl_tcp_if_include=192.0.2.0/24");
  ASSERT_FALSE(id.empty());
  ASSERT_FALSE(id.empty());
  const std::string line = cluster().wait_for_end(id);
  const std::string log = log_of(line);
  EXPECT_EQ(field(line, "JobState"), "COMPLETED") << line << "\n" << log;
  EXPECT_EQ(field(line, "NodeList"), "node[1-2]") << line;
  EXPECT_EQ(field(line, "NumTasks"), "2") << line;
  EXPECT_TRUE(has(log, "ranks: 2 (dp 2), 1 thread per rank")) << log;
  EXPECT_EQ(logged_losses(run), expected);

  // lmtune launch across the same two nodes, without Slurm: mpirun in node1's namespace
  // starts node2's rank through the rsh agent, which enters node2's namespace.
  const fs::path run2 = root_ / "run2";
  const RunResult r = cluster().exec("env LMTUNE_MPIRUN_ARGS=" + q(slurp(cluster().dir() / "mpirun-args")) + " " +
                                     LMTUNE_BINARY + " launch --nnodes 2 --nproc-per-node 1 --hostfile " +
                                     q(cluster().dir() / "hosts") + " -- train " + q(config(run2, 6)) + " --quiet");
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_TRUE(has(slurp(cluster().dir() / "log" / "rsh-agent.log"), "192.0.2.2"));
  EXPECT_EQ(logged_losses(run2), expected);
}

}  // namespace
}  // namespace lmtune
