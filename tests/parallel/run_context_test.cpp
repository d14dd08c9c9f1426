// detect_run_context() from the variables each launcher sets (set here by the test): Open
// MPI, Slurm, neither; which wins when several are present; every inconsistency is an
// error naming the variables. Also the Slurm task-list parser and the per-rank thread
// default. (The PMIx-only path needs MPI: tests/parallel/mpi/.)
#include "parallel/run_context.h"

#include <gtest/gtest.h>
#include <sched.h>
#include <unistd.h>

#include <map>
#include <optional>

#include "parallel/mpi_engine.h"
#include "trainer/core/error.h"

namespace lmtune {
namespace {

const char* const kVars[] = {"OMPI_COMM_WORLD_RANK",  "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
                             "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_PROCID",  "SLURM_NTASKS",
                             "SLURM_LOCALID",         "SLURM_TASKS_PER_NODE", "SLURM_NODEID",
                             "SLURM_NTASKS_PER_NODE", "PMIX_RANK",            "OMP_NUM_THREADS"};

// Clears the launcher variables for the test and restores them after.
class RunContextTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* v : kVars) {
      if (const char* x = std::getenv(v)) saved_[v] = x;
      unsetenv(v);
    }
  }
  void TearDown() override {
    for (const char* v : kVars) unsetenv(v);
    for (const auto& [k, v] : saved_) setenv(k.c_str(), v.c_str(), 1);
  }
  static void set(const std::map<std::string, std::string>& vars) {
    for (const auto& [k, v] : vars) setenv(k.c_str(), v.c_str(), 1);
  }
  static void ompi(int rank, int size, int local_rank, int local_size) {
    set({{"OMPI_COMM_WORLD_RANK", std::to_string(rank)},
         {"OMPI_COMM_WORLD_SIZE", std::to_string(size)},
         {"OMPI_COMM_WORLD_LOCAL_RANK", std::to_string(local_rank)},
         {"OMPI_COMM_WORLD_LOCAL_SIZE", std::to_string(local_size)}});
  }
  // The message of the Error detect_run_context() throws; fails when it does not throw.
  static std::string error() {
    try {
      detect_run_context();
    } catch (const Error& e) {
      return e.what();
    }
    ADD_FAILURE() << "detect_run_context() did not throw";
    return "";
  }

 private:
  std::map<std::string, std::string> saved_;
};

void expect_contains(const std::string& s, const std::vector<std::string>& parts) {
  for (const auto& p : parts) EXPECT_NE(s.find(p), std::string::npos) << "'" << p << "' not in: " << s;
}

TEST_F(RunContextTest, NoLauncherIsOneProcess) {
  const RunContext c = detect_run_context();
  EXPECT_EQ(c.rank, 0);
  EXPECT_EQ(c.world, 1);
  EXPECT_EQ(c.local_rank, 0);
  EXPECT_EQ(c.local_world, 1);
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  EXPECT_EQ(c.host, host);
  EXPECT_TRUE(c.writer());
  EXPECT_EQ(rank_from_environment(), std::nullopt);
  // a single process never initialises MPI (lmtune's main calls exactly this)
  EXPECT_FALSE(mpi::Engine::started());
}

TEST_F(RunContextTest, OpenMpi) {
  ompi(5, 8, 1, 4);
  const RunContext c = detect_run_context();
  EXPECT_EQ(c.rank, 5);
  EXPECT_EQ(c.world, 8);
  EXPECT_EQ(c.local_rank, 1);
  EXPECT_EQ(c.local_world, 4);
  EXPECT_FALSE(c.writer());
  EXPECT_EQ(rank_from_environment(), 5);
}

TEST_F(RunContextTest, OpenMpiWinsOverTheBatchStepsSlurmVariables) {
  // mpirun inside an sbatch script: every rank still sees the batch step's SLURM_*.
  set({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "16"}, {"SLURM_LOCALID", "0"}, {"SLURM_NTASKS_PER_NODE", "16"}});
  ompi(3, 4, 3, 4);
  setenv("PMIX_RANK", "3", 1);
  const RunContext c = detect_run_context();
  EXPECT_EQ(c.rank, 3);
  EXPECT_EQ(c.world, 4);
  EXPECT_EQ(c.local_world, 4);
}

TEST_F(RunContextTest, OpenMpiInconsistenciesNameTheVariables) {
  ompi(8, 8, 0, 1);
  expect_contains(error(), {"OMPI_COMM_WORLD_RANK=8", "OMPI_COMM_WORLD_SIZE=8"});
  ompi(1, 8, 2, 2);
  expect_contains(error(), {"OMPI_COMM_WORLD_LOCAL_RANK=2", "OMPI_COMM_WORLD_LOCAL_SIZE=2"});
  ompi(1, 2, 0, 4);
  expect_contains(error(), {"OMPI_COMM_WORLD_LOCAL_SIZE=4", "OMPI_COMM_WORLD_SIZE=2"});
  ompi(1, 0, 0, 1);
  expect_contains(error(), {"OMPI_COMM_WORLD_SIZE=0"});
  ompi(1, 2, 0, 1);
  setenv("OMPI_COMM_WORLD_RANK", "one", 1);
  expect_contains(error(), {"OMPI_COMM_WORLD_RANK='one'", "not a non-negative integer"});
  ompi(1, 2, 0, 1);
  unsetenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  expect_contains(error(), {"OMPI_COMM_WORLD_LOCAL_SIZE is not"});
  ompi(1, 2, 1, 2);
  setenv("PMIX_RANK", "0", 1);
  expect_contains(error(), {"PMIX_RANK=0", "rank 1", "OMPI_COMM_WORLD_RANK"});
}

TEST_F(RunContextTest, SlurmTaskListWithNodeId) {
  // srun -N4 -n7: 2 tasks on each of nodes 0..2, one on node 3
  set({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "7"}, {"SLURM_LOCALID", "1"}, {"SLURM_TASKS_PER_NODE", "2(x3),1"},
       {"SLURM_NODEID", "2"}, {"PMIX_RANK", "5"}});
  RunContext c = detect_run_context();
  EXPECT_EQ(c.rank, 5);
  EXPECT_EQ(c.world, 7);
  EXPECT_EQ(c.local_rank, 1);
  EXPECT_EQ(c.local_world, 2);
  set({{"SLURM_PROCID", "6"}, {"SLURM_LOCALID", "0"}, {"SLURM_NODEID", "3"}, {"PMIX_RANK", "6"}});
  c = detect_run_context();
  EXPECT_EQ(c.rank, 6);
  EXPECT_EQ(c.local_world, 1);
  EXPECT_EQ(rank_from_environment(), 6);
}

TEST_F(RunContextTest, SlurmTasksPerNodeCount) {
  set({{"SLURM_PROCID", "3"}, {"SLURM_NTASKS", "8"}, {"SLURM_LOCALID", "3"}, {"SLURM_NTASKS_PER_NODE", "4"}});
  const RunContext c = detect_run_context();
  EXPECT_EQ(c.rank, 3);
  EXPECT_EQ(c.world, 8);
  EXPECT_EQ(c.local_world, 4);
}

TEST_F(RunContextTest, SlurmInconsistenciesNameTheVariables) {
  set({{"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "6"}, {"SLURM_LOCALID", "1"}, {"SLURM_TASKS_PER_NODE", "2(x3),1"},
       {"SLURM_NODEID", "0"}});
  expect_contains(error(), {"SLURM_TASKS_PER_NODE='2(x3),1'", "7 tasks", "SLURM_NTASKS=6"});
  set({{"SLURM_NTASKS", "7"}, {"SLURM_NTASKS_PER_NODE", "3"}});
  expect_contains(error(), {"SLURM_NTASKS_PER_NODE=3", "SLURM_TASKS_PER_NODE='2(x3),1'", "SLURM_NODEID=0"});
  unsetenv("SLURM_NTASKS_PER_NODE");
  setenv("SLURM_NODEID", "4", 1);
  expect_contains(error(), {"SLURM_NODEID=4", "lists 4 node(s)"});
  setenv("SLURM_NODEID", "0", 1);
  setenv("SLURM_TASKS_PER_NODE", "2(x3", 1);
  expect_contains(error(), {"SLURM_TASKS_PER_NODE='2(x3'", "not a Slurm task list"});
  setenv("SLURM_TASKS_PER_NODE", "2(x3),1", 1);
  setenv("SLURM_LOCALID", "2", 1);
  expect_contains(error(), {"SLURM_LOCALID=2", "is not below"});
  unsetenv("SLURM_TASKS_PER_NODE");
  expect_contains(error(), {"SLURM_PROCID is set but neither SLURM_TASKS_PER_NODE"});
  unsetenv("SLURM_NTASKS");
  expect_contains(error(), {"SLURM_NTASKS is not"});
}

TEST(SlurmTaskList, Parses) {
  EXPECT_EQ(slurm_tasks_on_node("4", 0, "V"), 4);
  EXPECT_EQ(slurm_total_tasks("4", "V"), 4);
  EXPECT_EQ(slurm_tasks_on_node("1,2,3", 2, "V"), 3);
  EXPECT_EQ(slurm_total_tasks("1,2,3", "V"), 6);
  const std::vector<int> expected = {3, 3, 2, 2, 5};
  for (int n = 0; n < 5; ++n) EXPECT_EQ(slurm_tasks_on_node("3(x2),2(x2),5", n, "V"), expected[n]);
  EXPECT_EQ(slurm_total_tasks("3(x2),2(x2),5", "V"), 15);
  EXPECT_EQ(slurm_total_tasks("16(x128)", "V"), 2048);
  for (const char* bad : {"", ",", "2,", "(x2)", "2(x)", "2(y3)", "2(x3", "0", "2(x0)", "a", "-1", "1 ,2"})
    EXPECT_THROW(slurm_total_tasks(bad, "V"), Error) << "'" << bad << "'";
}

TEST_F(RunContextTest, ThreadsPerRankDefault) {
  cpu_set_t set;
  CPU_ZERO(&set);
  ASSERT_EQ(sched_getaffinity(0, sizeof set, &set), 0);
  const int cores = CPU_COUNT(&set);
  RunContext one;
  EXPECT_EQ(default_threads_per_rank(one), 0);  // single process: the OpenMP default
  RunContext four{.rank = 1, .world = 4, .local_rank = 1, .local_world = 2, .host = "h"};
  EXPECT_EQ(default_threads_per_rank(four), std::max(1, cores / 2));
  RunContext crowded{.rank = 0, .world = 64, .local_rank = 0, .local_world = 64, .host = "h"};
  EXPECT_EQ(default_threads_per_rank(crowded), std::max(1, cores / 64));
  EXPECT_GE(default_threads_per_rank(crowded), 1);
  setenv("OMP_NUM_THREADS", "3", 1);  // the user said: leave OpenMP to it
  EXPECT_EQ(default_threads_per_rank(four), 0);
}

}  // namespace
}  // namespace lmtune
