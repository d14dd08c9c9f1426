#include "launch/launcher.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "parallel/run_context.h"
#include "trainer/core/error.h"

extern char** environ;

namespace lmtune::cli {

namespace {

namespace fs = std::filesystem;

constexpr const char* kExtraArgsVariable = "LMTUNE_MPIRUN_ARGS";

// Every Open MPI setting lmtune relies on, in one place (the launcher, the multi-rank
// tests and the benchmarks all run through here). Each one, and why:
std::vector<std::string> mpirun_settings(int grace_period_s) {
  std::vector<std::string> s = {
      // More ranks than cores is how the tests and small runs work; lmtune sizes its
      // threads per rank itself.
      "--oversubscribe",
      // Open MPI binds each rank to one core when np <= 2 (to a socket above): that would
      // squeeze a rank's OpenMP threads onto one core. lmtune sets threads per rank instead.
      "--bind-to", "none",
      // Ranks never read the terminal (and mpirun runs in the background process group).
      "--stdin", "none",
      // Shared-memory messages by copy-in/copy-out rather than CMA (process_vm_readv):
      // CMA fails in containers whose seccomp profile or ptrace policy forbids it (Open
      // MPI then aborts mid-run), and on the machine we measured it was slower anyway
      // (README, "Measured").
      "--mca", "btl_vader_single_copy_mechanism", "none",
      // How long mpirun waits, once a rank has failed, before SIGTERM to the others, and
      // again before SIGKILL (see launcher.h).
      "--mca", "odls_base_sigkill_timeout", std::to_string(grace_period_s)};
  // Containers often run as root; Open MPI refuses that unless told.
  if (geteuid() == 0) s.push_back("--allow-run-as-root");
  return s;
}

bool on_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  if (path == nullptr) return false;
  std::stringstream ss(path);
  std::string dir;
  while (std::getline(ss, dir, ':'))
    if (!dir.empty() && access((fs::path(dir) / name).c_str(), X_OK) == 0) return true;
  return false;
}

int hosts_in(const std::string& hostfile) {
  std::ifstream f(hostfile);
  LMTUNE_CHECK(f.good(), "--hostfile '", hostfile, "' cannot be read");
  int n = 0;
  std::string line;
  while (std::getline(f, line)) {
    std::istringstream ls(line);
    std::string host;
    if (ls >> host && host[0] != '#') ++n;
  }
  return n;
}

int exit_code_of(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

// Starts argv in its own process group with stdin from /dev/null and `mask` restored.
pid_t spawn(const std::vector<std::string>& argv, const sigset_t& mask) {
  std::vector<char*> cargv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  LMTUNE_CHECK(pid >= 0, "lmtune launch: fork failed: ", std::strerror(errno));
  if (pid == 0) {
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM);  // the launcher died: mpirun stops the job
    if (getppid() != parent) _exit(1);
    const int fd = open("/dev/null", O_RDONLY);
    if (fd >= 0) dup2(fd, STDIN_FILENO);
    pthread_sigmask(SIG_SETMASK, &mask, nullptr);
    execvp(cargv[0], cargv.data());
    const std::string msg = std::string("lmtune launch: cannot run ") + cargv[0] + ": " + std::strerror(errno) + "\n";
    [[maybe_unused]] ssize_t w = write(STDERR_FILENO, msg.data(), msg.size());
    _exit(127);
  }
  setpgid(pid, pid);
  return pid;
}

}  // namespace

std::string shell_quote(const std::string& s) {
  if (!s.empty() && s.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-+=/.,:@%") ==
                        std::string::npos)
    return s;
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

std::string join_quoted(const std::vector<std::string>& argv) {
  std::string line;
  for (const auto& a : argv) {
    if (!line.empty()) line += ' ';
    line += shell_quote(a);
  }
  return line;
}

const char* const kLaunchUsage =
    "lmtune launch [--nproc-per-node N] [--nnodes M --node-rank R --hostfile FILE] [--threads T] "
    "[--grace-period S] [--log-dir DIR] [--dry-run] -- VERB ARGS...";

const std::vector<OptionSpec>& launch_options() {
  static const std::vector<OptionSpec> o = {
      {"nproc-per-node", true, "ranks on each node (default 1)"},
      {"nnodes", true, "nodes (default 1); more than one needs --hostfile and runs from node rank 0"},
      {"node-rank", true, "this node's rank (default 0); only node rank 0 starts anything"},
      {"hostfile", true, "Open MPI hostfile listing the nodes, one per line (first --nnodes are used)"},
      {"threads", true, "kernel threads per rank (default: this node's cores / --nproc-per-node, at least 1)"},
      {"grace-period", true,
       "seconds mpirun waits, once a rank has failed, before SIGTERM to the others, and again before SIGKILL "
       "(default 3)"},
      {"log-dir", true, "also write each rank's output to DIR/1/rank.N/{stdout,stderr}"},
      {"program", true, "run this program instead of lmtune (for tests and benchmarks)"},
      {"dry-run", false, "print the mpirun command and exit"},
      {"master-addr", true, "not used: node rank 0 starts every node over ssh (rejected, with an explanation)"},
      {"master-port", true, "not used (see --master-addr)"},
      {"help", false, "show this help"},
  };
  return o;
}

LaunchRequest parse_launch_request(const Args& args) {
  for (const char* name : {"master-addr", "master-port"})
    LMTUNE_CHECK(!args.get(name), "lmtune launch does not use --", name,
                 ": node rank 0 starts the ranks of every node through mpirun over ssh; list the nodes in "
                 "--hostfile and run the command on node rank 0 only");
  LaunchRequest r;
  r.nproc_per_node = args.get_int_in("nproc-per-node", 1, 1, 4096);
  r.nnodes = args.get_int_in("nnodes", 1, 1, 100000);
  r.node_rank = args.get_int_in("node-rank", 0, 0, r.nnodes - 1);
  r.hostfile = args.get_string("hostfile", "");
  r.threads = args.get_int_in("threads", 0, 0, 4096);
  r.grace_period_s = args.get_int_in("grace-period", kDefaultGracePeriod, 1, 3600);
  r.log_dir = args.get_string("log-dir", "");
  r.command = args.positional();
  if (const auto p = args.get("program")) {
    LMTUNE_CHECK(access(p->c_str(), X_OK) == 0, "--program '", *p, "' is not an executable file");
    r.program = fs::absolute(*p).string();
  } else {
    r.program = fs::read_symlink("/proc/self/exe").string();
    LMTUNE_CHECK(!r.command.empty(), "lmtune launch needs the command each rank runs, after '--': ", kLaunchUsage);
    LMTUNE_CHECK(r.command[0] != "launch", "lmtune launch cannot launch 'launch'");
  }
  if (r.nnodes > 1 && r.node_rank == 0 && std::getenv("SLURM_JOB_ID") == nullptr) {
    LMTUNE_CHECK(!r.hostfile.empty(), "--nnodes ", r.nnodes, " needs --hostfile FILE listing the nodes (node rank 0 ",
                 "starts every node's ranks over ssh), or to run inside a Slurm allocation (mpirun takes its nodes)");
  }
  if (!r.hostfile.empty() && r.node_rank == 0) {
    const int hosts = hosts_in(r.hostfile);
    LMTUNE_CHECK(hosts >= r.nnodes, "--hostfile '", r.hostfile, "' lists ", hosts, " node(s), fewer than --nnodes ",
                 r.nnodes);
  }
  return r;
}

std::vector<std::string> mpirun_command(const LaunchRequest& r, int node_cores) {
  std::vector<std::string> cmd = {"mpirun", "-np", std::to_string(r.nproc_per_node * r.nnodes)};
  const std::vector<std::string> settings = mpirun_settings(r.grace_period_s);
  cmd.insert(cmd.end(), settings.begin(), settings.end());
  if (!r.hostfile.empty()) cmd.insert(cmd.end(), {"--hostfile", r.hostfile});
  if (!r.hostfile.empty() || r.nnodes > 1)
    cmd.insert(cmd.end(), {"--map-by", "ppr:" + std::to_string(r.nproc_per_node) + ":node"});
  if (!r.log_dir.empty()) cmd.insert(cmd.end(), {"--output-filename", r.log_dir});

  // The ranks' environment: explicit, so that remote nodes get it too.
  auto pass = [&](const std::string& name, const std::string& fallback) {
    cmd.push_back("-x");
    cmd.push_back(std::getenv(name.c_str()) != nullptr || fallback.empty() ? name : name + "=" + fallback);
  };
  const int threads = r.threads > 0 ? r.threads : std::max(1, node_cores / r.nproc_per_node);
  if (r.threads > 0) cmd.insert(cmd.end(), {"-x", "OMP_NUM_THREADS=" + std::to_string(threads)});
  else pass("OMP_NUM_THREADS", std::to_string(threads));
  pass("OMP_WAIT_POLICY", "passive");
  cmd.insert(cmd.end(), {"-x", std::string(kSignalRelayEnv) + "=1"});
  std::vector<std::string> lmtune_vars;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string kv = *e;
    const std::string name = kv.substr(0, kv.find('='));
    if (name.rfind("LMTUNE_", 0) == 0 && name != kSignalRelayEnv && name != kExtraArgsVariable)
      lmtune_vars.push_back(name);
  }
  std::sort(lmtune_vars.begin(), lmtune_vars.end());
  for (const auto& name : lmtune_vars) cmd.insert(cmd.end(), {"-x", name});

  if (const char* extra = std::getenv(kExtraArgsVariable)) {
    std::istringstream ss(extra);
    std::string a;
    while (ss >> a) cmd.push_back(a);
  }
  cmd.push_back(r.program);
  cmd.insert(cmd.end(), r.command.begin(), r.command.end());
  return cmd;
}

int run_launch(const Args& args) {
  const LaunchRequest r = parse_launch_request(args);
  if (r.node_rank != 0) {
    std::cerr << "lmtune launch: node rank " << r.node_rank << " of " << r.nnodes
              << " has nothing to start: node rank 0 starts the ranks of every node through mpirun over ssh (the "
                 "nodes in its --hostfile); run this command on node rank 0 only\n";
    return 0;
  }
  LMTUNE_CHECK(on_path("mpirun") || args.flag("dry-run"),
               "lmtune launch needs Open MPI's mpirun on PATH (Debian: apt-get install openmpi-bin)");
  const std::vector<std::string> cmd = mpirun_command(r, usable_cores());
  std::cerr << "lmtune launch: " << join_quoted(cmd) << std::endl;
  if (args.flag("dry-run")) return 0;

  sigset_t handled, old;
  sigemptyset(&handled);
  for (int s : {SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2, SIGCHLD}) sigaddset(&handled, s);
  pthread_sigmask(SIG_BLOCK, &handled, &old);
  const pid_t pid = spawn(cmd, old);

  int relayed = 0;
  while (true) {
    siginfo_t info;
    const int s = sigwaitinfo(&handled, &info);
    if (s < 0) continue;  // EINTR
    if (s == SIGCHLD) {
      int status = 0;
      if (waitpid(pid, &status, WNOHANG) == pid) {
        pthread_sigmask(SIG_SETMASK, &old, nullptr);
        return exit_code_of(status);
      }
    } else if (s == SIGUSR1 || s == SIGUSR2) {
      kill(pid, s);  // mpirun forwards these to every rank itself
    } else if (relayed++ == 0) {
      std::cerr << "lmtune launch: got SIG" << sigabbrev_np(s)
                << "; passing SIGTERM to every rank (relayed through mpirun as SIGUSR2)" << std::endl;
      kill(pid, SIGUSR2);
    } else {
      std::cerr << "lmtune launch: got SIG" << sigabbrev_np(s) << " again; asking mpirun to stop the job" << std::endl;
      kill(pid, SIGTERM);
    }
  }
}

}  // namespace lmtune::cli
