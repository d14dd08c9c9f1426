#include "parallel/run_context.h"

#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <thread>
#include <vector>

#include "parallel/mpi_engine.h"
#include "trainer/core/error.h"

namespace lmtune {

namespace {

// A set variable that is a non-negative integer; nullopt when unset.
std::optional<int> env_int(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  const long x = std::strtol(v, &end, 10);
  LMTUNE_CHECK(*v != '\0' && *end == '\0' && errno == 0 && x >= 0 && x <= INT_MAX, name, "='", v,
               "' is not a non-negative integer");
  return static_cast<int>(x);
}

int require(const char* name, const char* because) {
  const std::optional<int> v = env_int(name);
  LMTUNE_CHECK(v.has_value(), because, " is set but ", name, " is not");
  return *v;
}

std::string kv(const char* name, int value) { return std::string(name) + "=" + std::to_string(value); }

void check_consistent(const RunContext& c, const char* rank_var, const char* size_var, const char* local_rank_var,
                      const char* local_size_var) {
  LMTUNE_CHECK(c.world >= 1, kv(size_var, c.world), ": a run has at least one rank");
  LMTUNE_CHECK(c.rank < c.world, kv(rank_var, c.rank), " is not below ", kv(size_var, c.world));
  LMTUNE_CHECK(c.local_world >= 1, kv(local_size_var, c.local_world), ": a node has at least one rank");
  LMTUNE_CHECK(c.local_rank < c.local_world, kv(local_rank_var, c.local_rank), " is not below ",
               kv(local_size_var, c.local_world));
  LMTUNE_CHECK(c.local_world <= c.world, kv(local_size_var, c.local_world), " is more than ", kv(size_var, c.world));
  LMTUNE_CHECK(c.local_rank <= c.rank, kv(local_rank_var, c.local_rank), " is more than ", kv(rank_var, c.rank));
}

std::string host_name() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0) return "unknown-host";
  return buf;
}

// "2(x3),1" -> {2, 2, 2, 1}
std::vector<int> parse_tasks_per_node(const std::string& s, const char* variable) {
  std::vector<int> out;
  size_t i = 0;
  auto fail = [&] {
    LMTUNE_THROW(variable, "='", s, "' is not a Slurm task list (counts separated by commas, a repeated count ",
                 "written as N(xK), e.g. 2(x3),1)");
  };
  auto number = [&]() -> int {
    size_t j = i;
    while (j < s.size() && s[j] >= '0' && s[j] <= '9') ++j;
    if (j == i || j - i > 9) fail();
    const int x = std::stoi(s.substr(i, j - i));
    i = j;
    return x;
  };
  if (s.empty()) fail();
  while (true) {
    const int count = number();
    int repeat = 1;
    if (i < s.size() && s[i] == '(') {
      if (s.compare(i, 2, "(x") != 0) fail();
      i += 2;
      repeat = number();
      if (i >= s.size() || s[i] != ')') fail();
      ++i;
    }
    if (count < 1 || repeat < 1 || out.size() + repeat > 1'000'000) fail();
    out.insert(out.end(), static_cast<size_t>(repeat), count);
    if (i == s.size()) break;
    if (s[i] != ',') fail();
    ++i;
  }
  return out;
}

RunContext from_open_mpi() {
  const char* because = "OMPI_COMM_WORLD_RANK or OMPI_COMM_WORLD_SIZE";
  RunContext c;
  c.rank = require("OMPI_COMM_WORLD_RANK", because);
  c.world = require("OMPI_COMM_WORLD_SIZE", because);
  c.local_rank = require("OMPI_COMM_WORLD_LOCAL_RANK", because);
  c.local_world = require("OMPI_COMM_WORLD_LOCAL_SIZE", because);
  check_consistent(c, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
                   "OMPI_COMM_WORLD_LOCAL_SIZE");
  return c;
}

RunContext from_slurm() {
  const char* because = "SLURM_PROCID";
  RunContext c;
  c.rank = require("SLURM_PROCID", because);
  c.world = require("SLURM_NTASKS", because);
  c.local_rank = require("SLURM_LOCALID", because);
  const char* list = std::getenv("SLURM_TASKS_PER_NODE");
  const std::optional<int> node = env_int("SLURM_NODEID");
  const std::optional<int> per_node = env_int("SLURM_NTASKS_PER_NODE");
  const char* local_var = nullptr;
  if (list != nullptr && node.has_value()) {
    const int total = slurm_total_tasks(list, "SLURM_TASKS_PER_NODE");
    LMTUNE_CHECK(total == c.world, "SLURM_TASKS_PER_NODE='", list, "' adds up to ", total, " tasks but ",
                 kv("SLURM_NTASKS", c.world));
    c.local_world = slurm_tasks_on_node(list, *node, "SLURM_TASKS_PER_NODE");
    local_var = "SLURM_TASKS_PER_NODE[SLURM_NODEID]";
    LMTUNE_CHECK(!per_node.has_value() || *per_node == c.local_world, kv("SLURM_NTASKS_PER_NODE", *per_node),
                 " disagrees with SLURM_TASKS_PER_NODE='", list, "' at ", kv("SLURM_NODEID", *node), " (",
                 c.local_world, " tasks)");
  } else if (per_node.has_value()) {
    c.local_world = *per_node;
    local_var = "SLURM_NTASKS_PER_NODE";
  } else {
    LMTUNE_THROW("SLURM_PROCID is set but neither SLURM_TASKS_PER_NODE with SLURM_NODEID nor SLURM_NTASKS_PER_NODE "
                 "says how many tasks run on this node");
  }
  check_consistent(c, "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", local_var);
  return c;
}

void raise_sigterm(int) { kill(getpid(), SIGTERM); }

// PMIx without Open MPI's or Slurm's variables: the size comes from MPI.
RunContext from_pmix_and_mpi(int pmix_rank) {
  auto engine = mpi::Engine::instance();
  struct Result {
    int rank = -1, size = 0, local_rank = -1, local_size = 0;
  };
  auto res = std::make_shared<Result>();
  engine->call(
      "reading the run's size from MPI",
      [res] {
        MPI_Comm_rank(MPI_COMM_WORLD, &res->rank);
        MPI_Comm_size(MPI_COMM_WORLD, &res->size);
        MPI_Comm node = MPI_COMM_NULL;
        const int rc = MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
        LMTUNE_CHECK(rc == MPI_SUCCESS, "MPI_Comm_split_type(MPI_COMM_TYPE_SHARED) failed: ", mpi::error_string(rc));
        MPI_Comm_rank(node, &res->local_rank);
        MPI_Comm_size(node, &res->local_size);
        MPI_Comm_free(&node);
      },
      std::chrono::minutes(5));
  LMTUNE_CHECK(res->rank == pmix_rank, kv("PMIX_RANK", pmix_rank), " but MPI says this process is rank ", res->rank);
  RunContext c;
  c.rank = res->rank;
  c.world = res->size;
  c.local_rank = res->local_rank;
  c.local_world = res->local_size;
  return c;
}

}  // namespace

int slurm_tasks_on_node(const std::string& tasks_per_node, int node, const char* variable) {
  const std::vector<int> counts = parse_tasks_per_node(tasks_per_node, variable);
  LMTUNE_CHECK(node >= 0 && node < static_cast<int>(counts.size()), kv("SLURM_NODEID", node), " but ", variable, "='",
               tasks_per_node, "' lists ", counts.size(), " node(s)");
  return counts[static_cast<size_t>(node)];
}

int slurm_total_tasks(const std::string& tasks_per_node, const char* variable) {
  int64_t total = 0;
  for (int c : parse_tasks_per_node(tasks_per_node, variable)) total += c;
  LMTUNE_CHECK(total <= INT_MAX, variable, "='", tasks_per_node, "' adds up to too many tasks");
  return static_cast<int>(total);
}

RunContext detect_run_context() {
  RunContext c;
  if (std::getenv("OMPI_COMM_WORLD_RANK") != nullptr || std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr) {
    c = from_open_mpi();
  } else if (std::getenv("SLURM_PROCID") != nullptr) {
    c = from_slurm();
  } else if (const std::optional<int> pmix = env_int("PMIX_RANK")) {
    c = from_pmix_and_mpi(*pmix);
  }
  if (const std::optional<int> pmix = env_int("PMIX_RANK"); pmix && c.world > 1)
    LMTUNE_CHECK(*pmix == c.rank, kv("PMIX_RANK", *pmix), " disagrees with the rank ", c.rank, " from ",
                 std::getenv("OMPI_COMM_WORLD_RANK") ? "OMPI_COMM_WORLD_RANK" : "SLURM_PROCID");
  c.host = host_name();
  return c;
}

std::optional<int> rank_from_environment() {
  for (const char* name : {"OMPI_COMM_WORLD_RANK", "SLURM_PROCID", "PMIX_RANK"}) {
    const char* v = std::getenv(name);
    if (v == nullptr) continue;
    char* end = nullptr;
    const long x = std::strtol(v, &end, 10);
    if (*v != '\0' && *end == '\0' && x >= 0 && x <= INT_MAX) return static_cast<int>(x);
    return std::nullopt;
  }
  return std::nullopt;
}

int default_threads_per_rank(const RunContext& ctx) {
  if (ctx.world <= 1 || std::getenv("OMP_NUM_THREADS") != nullptr) return 0;
  return std::max(1, usable_cores() / std::max(1, ctx.local_world));
}

void install_launch_signal_relay() {
  const char* v = std::getenv(kSignalRelayEnv);
  if (v == nullptr || std::string(v) != "1") return;
  struct sigaction sa {};
  sa.sa_handler = raise_sigterm;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGUSR2, &sa, nullptr);
}

}  // namespace lmtune
