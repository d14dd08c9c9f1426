#include "launch/slurm.h"

#include <sys/wait.h>

#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>

#include <nlohmann/json.hpp>

#include "launch/launcher.h"
#include "trainer/core/error.h"
#include "trainer/io/checkpoint.h"
#include "trainer/io/file_util.h"
#include "trainer/loop/train_config.h"
#include "trainer/loop/train_setup.h"

namespace lmtune::cli {

namespace {

namespace fs = std::filesystem;

constexpr int kDefaultGraceSeconds = 300;  // no checkpoint measured yet
// Slurm sends --signal up to 60 s early; the grace adds as much for the ranks' exit and the requeue.
constexpr int kSlurmSignalSlack = 60;
// The second line (after #!/bin/bash) of every script lmtune slurm writes: --out replaces
// only such a file.
constexpr const char* kMarker = "# Slurm batch script for `lmtune train`, written by `lmtune slurm`.";

enum class Launcher { srun, mpirun };

// Everything the batch script says, checked.
struct SlurmJob {
  std::string name;
  int nodes = 1, tasks_per_node = 1, cpus_per_task = 1, gpus_per_node = 0;
  bool cpus_per_task_given = false;
  int64_t dp = 1;
  std::string time, partition, account;  // partition, account: empty for the cluster's default
  fs::path workdir, log_dir;
  std::optional<fs::path> script;       // where it is written, when it is
  int grace_s = kDefaultGraceSeconds;
  std::string grace_why;  // how grace_s was chosen, for the comment
  Launcher launcher = Launcher::srun;
  std::string lmtune;                   // the binary, absolute
  fs::path config;                      // absolute
  std::optional<fs::path> plan;         // absolute
  std::vector<std::string> overrides;
  std::string regenerate;               // the lmtune slurm command line
};

// A word Slurm takes as a name (job, partition, account): no spaces, no shell characters.
std::string plain_word(const Args& args, const char* name, const std::string& fallback, bool commas) {
  const std::string v = args.get_string(name, fallback);
  const std::string ok = std::string("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.+-") +
                         (commas ? "," : "");
  LMTUNE_CHECK(v.find_first_not_of(ok) == std::string::npos, "--", name, " '", v,
               "' is not a Slurm name: expected letters, digits and _ . + -", commas ? " (several separated by ,)" : "");
  return v;
}

// "HH:MM:SS" or "D-HH:MM:SS" -> seconds; anything else names the option.
int64_t parse_time_limit(const std::string& s) {
  auto fail = [&]() -> int64_t {
    LMTUNE_THROW("--time '", s, "' is not a time limit: expected HH:MM:SS or D-HH:MM:SS (e.g. 02:00:00 or 1-12:00:00)");
  };
  int64_t days = 0;
  std::string rest = s;
  if (const size_t dash = s.find('-'); dash != std::string::npos) {
    const std::string d = s.substr(0, dash);
    if (d.empty() || d.size() > 3 || d.find_first_not_of("0123456789") != std::string::npos) return fail();
    days = std::stoll(d);
    rest = s.substr(dash + 1);
  }
  int64_t parts[3];
  size_t at = 0;
  for (int i = 0; i < 3; ++i) {
    const size_t end = i < 2 ? rest.find(':', at) : rest.size();
    if (end == std::string::npos) return fail();
    const std::string p = rest.substr(at, end - at);
    if (p.empty() || p.size() > (i == 0 ? 4 : 2) || p.find_first_not_of("0123456789") != std::string::npos)
      return fail();
    parts[i] = std::stoll(p);
    at = end + 1;
  }
  if (parts[1] > 59 || parts[2] > 59) return fail();
  const int64_t total = ((days * 24 + parts[0]) * 60 + parts[1]) * 60 + parts[2];
  if (total == 0) return fail();
  return total;
}

// The last step's step_seconds in metrics.jsonl; lines that do not parse (a run killed while
// writing one) are passed over.
std::optional<double> last_step_seconds(const fs::path& metrics) {
  std::ifstream in(metrics);
  std::optional<double> last;
  std::string line;
  while (std::getline(in, line)) {
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains("step_seconds") && j["step_seconds"].is_number())
      last = j["step_seconds"].get<double>();
  }
  return last;
}

// Makes `dir` (and its parents) or says why not, naming the option that chose it.
void make_directory(const fs::path& dir, const char* option) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  LMTUNE_CHECK(!ec && fs::is_directory(dir), option, ": cannot create the directory '", dir.string(), "': ",
               ec ? ec.message() : std::string("a file is in the way"));
}

std::string seconds_text(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, s < 10 ? "%.2f s" : "%.0f s", s);
  return buf;
}

// The warning time before the job's end (see the note in slurm.h).
void choose_grace(SlurmJob& job, const TrainConfig& c, const Args& args) {
  if (args.get("grace")) {
    job.grace_s = args.get_int_in("grace", 0, 1, 65535);
    job.grace_why = "set by --grace";
    return;
  }
  const std::optional<fs::path> ckpt = latest_checkpoint(c.output.dir);
  const std::optional<double> save = ckpt ? checkpoint_save_seconds(*ckpt) : std::nullopt;
  if (!save) {
    job.grace_s = kDefaultGraceSeconds;
    job.grace_why = ckpt ? "the default: " + ckpt->string() + " does not record how long its save took"
                         : "the default: " + c.output.dir.string() + " holds no checkpoint yet to measure a save by";
    return;
  }
  const double step = last_step_seconds(c.output.dir / "metrics.jsonl").value_or(0.0);
  job.grace_s = static_cast<int>(std::min(65535.0, std::ceil(2 * (step + *save)) + kSlurmSignalSlack));
  job.grace_why = "2 x (the last step, " + seconds_text(step) + ", + the save of " + ckpt->filename().string() + ", " +
                  seconds_text(*save) + ", measured in " + c.output.dir.string() + ") + 60 s";
}

// `text` as "# " comment lines of at most 92 characters (a word longer than that keeps its
// own line).
std::string comment(const std::string& text) {
  std::string out, line;
  std::istringstream words(text);
  std::string w;
  while (words >> w) {
    if (!line.empty() && line.size() + 1 + w.size() > 90) {
      out += "# " + line + "\n";
      line.clear();
    }
    if (!line.empty()) line += ' ';
    line += w;
  }
  if (!line.empty()) out += "# " + line + "\n";
  return out;
}

std::string plural(int n, const std::string& word) { return std::to_string(n) + " " + word + (n == 1 ? "" : "s"); }

std::string render(const SlurmJob& j) {
  const bool srun = j.launcher == Launcher::srun;
  const std::string log = (j.log_dir / (j.name + "-JOBID.log")).string();
  std::ostringstream s;
  s << "#!/bin/bash\n" << kMarker << "\n"
    << "# Submit it with\n#   sbatch " << (j.script ? shell_quote(j.script->string()) : std::string("FILE"))
    << "\n# and watch it with `squeue -j JOBID` and\n#   tail -f " << log << "\n"
    << "# Written by (run it again rather than editing this file):\n#   " << j.regenerate << "\n#\n";

  s << comment("The job: " + plural(j.nodes, "node") + " x " + plural(j.tasks_per_node, "task") + " = " +
               plural(j.nodes * j.tasks_per_node, "rank") + ", one task per rank (data parallelism over " +
               std::to_string(j.dp) + ")." +
               (j.gpus_per_node > 0 ? " This release of lmtune trains on the CPU: the " +
                                          std::to_string(j.gpus_per_node) +
                                          " ranks per node of --gpus-per-node are CPU tasks, and no GPU is requested."
                                    : std::string()));
  s << "#SBATCH --job-name=" << j.name << "\n"
    << "#SBATCH --nodes=" << j.nodes << "\n"
    << "#SBATCH --ntasks-per-node=" << j.tasks_per_node << "\n"
    << comment("Cores per rank; each rank runs as many kernel threads" +
               std::string(j.cpus_per_task_given ? "." : " (1 by default: --cpus-per-task C gives each rank C)."))
    << "#SBATCH --cpus-per-task=" << j.cpus_per_task << "\n"
    << "#SBATCH --time=" << j.time << "\n";
  if (!j.partition.empty()) s << "#SBATCH --partition=" << j.partition << "\n";
  if (!j.account.empty()) s << "#SBATCH --account=" << j.account << "\n";
  s << comment("Run where `lmtune slurm` ran, so that relative paths in the config mean the same.")
    << "#SBATCH --chdir=" << j.workdir.string() << "\n"
    << comment("One log for this script and every rank (%x: the job name, %j: the job id); a requeued job "
               "appends to it rather than starting it again.")
    << "#SBATCH --output=" << (j.log_dir / "%x-%j.log").string() << "\n"
    << "#SBATCH --error=" << (j.log_dir / "%x-%j.log").string() << "\n"
    << "#SBATCH --open-mode=append\n"
    << comment("Preemption and the time limit. The job may be requeued (by the cluster, or by itself below). " +
               std::to_string(j.grace_s) +
               " s before the time limit Slurm sends SIGUSR1 to this script (up to 60 s earlier: it checks once a "
               "minute); " + std::to_string(j.grace_s) + " s is " + j.grace_why + ".")
    << "#SBATCH --requeue\n"
    << "#SBATCH --signal=B:USR1@" << j.grace_s << "\n\n";

  s << comment("Threads per rank: one per core Slurm gave the task. Idle OpenMP threads sleep rather than spin, "
               "so they leave the cores to the MPI progress threads.")
    << "export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK\n"
    << "export OMP_WAIT_POLICY=passive\n\n"
    << "echo \"lmtune-slurm: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST, "
       "$(date)\"\n\n";

  s << comment("SIGUSR1 (the time limit or a preemption is near; or `scancel --signal=USR1 --batch JOBID`): pass it "
               "to the ranks. Each finishes the step it is in; together they save a checkpoint and exit 138 (128 + "
               "SIGUSR1). Then the job requeues itself: Slurm starts it again, with the same job id, once the "
               "requeue delay (AuthInfo cred_expire in slurm.conf, 120 s by default) is over, and "
               "train.resume_from=auto continues from that checkpoint.")
    << "step=\n"
    << "on_warning() {\n"
    << "  echo \"lmtune-slurm: SIGUSR1 at $(date +%T): every rank saves a checkpoint and stops\"\n"
    << "  local rc=138\n"
    << "  if [[ -n $step ]]; then\n"
    << "    kill -USR1 \"$step\"  # " << (srun ? "srun passes it to every task" : "to lmtune launch, mpirun, every rank")
    << "\n"
    << "    wait \"$step\"; rc=$?\n"
    << "  fi\n"
    << "  if (( rc == 138 )); then\n"
    << "    echo \"lmtune-slurm: checkpoint saved; requeueing job $SLURM_JOB_ID\"\n"
    << "    scontrol requeue \"$SLURM_JOB_ID\"\n"
    << "  else\n"
    << "    echo \"lmtune-slurm: the ranks ended with exit code $rc; not requeueing\"\n"
    << "  fi\n"
    << "  exit \"$rc\"\n"
    << "}\n"
    << comment("SIGTERM (scancel, scontrol requeue, the time limit itself): Slurm sends it to every rank too. Each "
               "finishes its step and saves a checkpoint; they have KillWait (slurm.conf, 30 s by default) before "
               "SIGKILL. A requeue started elsewhere resumes from that checkpoint.")
    << "on_term() {\n"
    << "  echo \"lmtune-slurm: SIGTERM at $(date +%T): the ranks save a checkpoint and stop\"\n"
    << "  [[ -n $step ]] && wait \"$step\"\n"
    << "  exit 143\n"
    << "}\n"
    << "trap on_warning USR1\n"
    << "trap on_term TERM\n\n";

  if (srun) {
    s << comment("The ranks: srun starts one task per rank and hands Open MPI its rank and the job's size over "
                 "PMIx (--mpi=pmix). --wait: once a rank has ended, the others get 60 s to end too, so a rank that "
                 "crashed does not leave its peers waiting (a rank that fails with an error stops the whole step "
                 "itself, through MPI_Abort). srun passes --cpus-per-task on to the tasks only when told (Slurm "
                 "22.05 and later).");
  } else {
    s << comment("The ranks: `lmtune launch` runs Open MPI's mpirun (every Open MPI setting lmtune uses lives "
                 "there); inside the allocation mpirun takes the nodes from Slurm and starts its daemons with srun. "
                 "On SIGTERM (scancel, scontrol requeue) mpirun stops the ranks itself within its grace period, "
                 "which may be too short for a checkpoint; the SIGUSR1 warning is served as with srun.");
  }
  s << comment("train.resume_from=auto: a requeued job continues from the run directory's last checkpoint (a new "
               "run starts at step 0). --threads: the cores Slurm gave each rank.");
  if (srun) {
    s << "srun --mpi=pmix --wait=60 --cpus-per-task=\"$SLURM_CPUS_PER_TASK\" \\\n  " << shell_quote(j.lmtune)
      << " train";
  } else {
    s << shell_quote(j.lmtune) << " launch --nnodes " << j.nodes << " --nproc-per-node " << j.tasks_per_node
      << " --threads \"$SLURM_CPUS_PER_TASK\" -- \\\n  train";
  }
  s << " " << shell_quote(j.config.string()) << " \\\n";
  if (j.plan) s << "    --plan " << shell_quote(j.plan->string()) << " \\\n";
  if (!j.overrides.empty()) s << "    " << join_quoted(j.overrides) << " \\\n";
  s << "    --threads \"$SLURM_CPUS_PER_TASK\" train.resume_from=auto &\n"
    << "step=$!\n"
    << "wait \"$step\"  # a trap that runs ends the script itself\n"
    << "exit $?\n";
  return s.str();
}

// The lmtune slurm command line, for the script's header.
std::string command_line(const Args& args) {
  std::vector<std::string> words = {"lmtune", "slurm"};
  for (const std::string& p : args.positional()) words.push_back(p);
  for (const OptionSpec& o : slurm_options()) {
    if (!args.flag(o.name) || o.name == "submit" || o.name == "out") continue;
    words.push_back("--" + o.name);
    if (o.takes_value) words.push_back(*args.get(o.name));
  }
  return join_quoted(words);
}

// Runs `sbatch --parsable FILE`; returns the job id.
std::string submit(const fs::path& script) {
  const std::string cmd = "sbatch --parsable " + shell_quote(script.string()) + " 2>&1";
  std::FILE* p = popen(cmd.c_str(), "r");
  LMTUNE_CHECK(p != nullptr, "cannot run sbatch");
  std::string out;
  char buf[512];
  while (std::fgets(buf, sizeof buf, p) != nullptr) out += buf;
  const int status = pclose(p);
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  LMTUNE_CHECK(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0, "sbatch ", script.string(), " failed",
               WIFEXITED(status) && WEXITSTATUS(status) == 127 ? " (is Slurm's sbatch on PATH?)" : "", ": ", out);
  // "<id>" or "<id>;<cluster>"
  const std::string id = out.substr(out.rfind('\n') == std::string::npos ? 0 : out.rfind('\n') + 1);
  const std::string number = id.substr(0, id.find(';'));
  LMTUNE_CHECK(!number.empty() && number.find_first_not_of("0123456789") == std::string::npos,
               "sbatch did not answer with a job id: '", out, "'");
  return number;
}

}  // namespace

const char* const kSlurmUsage =
    "lmtune slurm CONFIG.yaml [key=value ...] --nodes N --gpus-per-node G --time HH:MM:SS [--tasks-per-node T] "
    "[--cpus-per-task C] [--partition P] [--account A] [--plan PLAN.yaml] [--launcher srun|mpirun] [--job-name NAME] "
    "[--log-dir DIR] [--grace S] [--out FILE] [--submit]";

const std::vector<OptionSpec>& slurm_options() {
  static const std::vector<OptionSpec> o = {
      {"nodes", true, "nodes (required)"},
      {"gpus-per-node", true, "ranks per node, one per GPU (required; this release trains on the CPU: CPU tasks)"},
      {"tasks-per-node", true, "ranks per node (default: --gpus-per-node)"},
      {"cpus-per-task", true, "cores per rank, and its kernel threads (default 1)"},
      {"time", true, "time limit, HH:MM:SS or D-HH:MM:SS (required)"},
      {"partition", true, "partition (default: the cluster's)"},
      {"account", true, "account to charge (default: yours)"},
      {"plan", true, "config overlay (plan.yaml, as `lmtune plan` writes it), passed on to train --plan"},
      {"launcher", true, "srun (default: srun --mpi=pmix) or mpirun (lmtune launch inside the allocation)"},
      {"job-name", true, "job name (default: lmtune-<output.dir's name>)"},
      {"log-dir", true, "where the job's log goes (default: the directory of --out, else the current one)"},
      {"grace", true, "seconds of warning (SIGUSR1) before the time limit (default: sized from the last checkpoint)"},
      {"out", true, "write the script here (default: print it)"},
      {"submit", false, "write the script and submit it with sbatch; prints the job id"},
      {"help", false, "show this help"},
  };
  return o;
}

int run_slurm(const Args& args) {
  const auto& pos = args.positional();
  LMTUNE_CHECK(!pos.empty(), "usage: ", kSlurmUsage);
  for (const char* required : {"nodes", "gpus-per-node", "time"})
    LMTUNE_CHECK(args.get(required).has_value(), "'lmtune slurm' needs --", required, "; usage: ", kSlurmUsage);
  std::vector<std::string> overrides(pos.begin() + 1, pos.end());
  for (const std::string& o : overrides) {
    LMTUNE_CHECK(o.find('=') != std::string::npos, "'", o,
                 "' is not an override; overrides look like train.lr=1e-4 (the dotted key of the config, '=', a value)");
    LMTUNE_CHECK(o.rfind("train.resume_from", 0) != 0, "'", o,
                 "': lmtune slurm sets train.resume_from=auto itself, so that a requeued job continues from its last "
                 "checkpoint");
  }

  SlurmJob job;
  job.nodes = args.get_int_in("nodes", 1, 1, 100000);
  job.gpus_per_node = args.get_int_in("gpus-per-node", 0, 0, 1024);
  job.tasks_per_node = args.get_int_in("tasks-per-node", job.gpus_per_node, 0, 4096);
  LMTUNE_CHECK(job.tasks_per_node >= 1, "--gpus-per-node 0 needs --tasks-per-node T: the ranks per node");
  job.cpus_per_task_given = args.get("cpus-per-task").has_value();
  job.cpus_per_task = args.get_int_in("cpus-per-task", 1, 1, 4096);
  job.time = args.get_string("time", "");
  const int64_t limit_s = parse_time_limit(job.time);
  job.partition = plain_word(args, "partition", "", true);
  job.account = plain_word(args, "account", "", false);
  const std::string launcher = args.get_string("launcher", "srun");
  LMTUNE_CHECK(launcher == "srun" || launcher == "mpirun", "--launcher '", launcher, "': expected srun or mpirun");
  job.launcher = launcher == "srun" ? Launcher::srun : Launcher::mpirun;

  // The config, as the ranks will read it: with the plan and the overrides, and its layout.
  const fs::path config = fs::absolute(pos[0]);
  std::vector<fs::path> overlays;
  if (const auto plan = args.get("plan")) overlays.push_back(fs::absolute(*plan));
  const TrainConfig cfg = load_train_config(config, overrides, overlays);
  const int ranks = job.nodes * job.tasks_per_node;
  TrainConfig laid_out;
  try {
    laid_out = resolve_layout(cfg, ranks);
  } catch (const Error& e) {
    LMTUNE_THROW("the job has ", job.nodes, " node(s) x ", job.tasks_per_node, " task(s) = ", ranks,
                 " ranks, which ", config.string(), " does not fit: ", e.what());
  }
  job.dp = laid_out.parallel.dp;
  job.config = config;
  if (!overlays.empty()) job.plan = overlays[0];
  job.overrides = overrides;

  std::string default_name = "lmtune-" + cfg.output.dir.filename().string();
  for (char& ch : default_name)
    if (!std::isalnum(static_cast<unsigned char>(ch)) && std::string("_.+-").find(ch) == std::string::npos) ch = '-';
  job.name = plain_word(args, "job-name", default_name, false);
  choose_grace(job, cfg, args);
  LMTUNE_CHECK(limit_s > job.grace_s + kSlurmSignalSlack, "--time ", job.time, " (", limit_s,
               " s) leaves no time to train: the warning comes ", job.grace_s, " s before the end (", job.grace_why,
               ") and up to 60 s earlier still; give a longer --time or a shorter --grace");

  const std::optional<std::string> out = args.get("out");
  const bool submitting = args.flag("submit");
  job.workdir = fs::current_path();
  job.log_dir = fs::absolute(args.get("log-dir") ? fs::path(*args.get("log-dir"))
                                                 : out ? fs::absolute(*out).parent_path() : job.workdir)
                    .lexically_normal();
  job.lmtune = fs::read_symlink("/proc/self/exe").string();
  job.regenerate = command_line(args);
  if (out || submitting) job.script = out ? fs::absolute(*out) : job.log_dir / (job.name + ".sbatch");
  const std::string text = render(job);

  if (!job.script) {
    make_directory(job.log_dir, "--log-dir");  // Slurm does not make the log's directory
    std::cout << text;
    return 0;
  }
  const fs::path script = *job.script;
  if (fs::exists(script)) {
    std::ifstream f(script);
    std::string first, second;
    std::getline(f, first);
    std::getline(f, second);
    LMTUNE_CHECK(second == kMarker, "'", script.string(),
                 "' exists and is not a script lmtune slurm wrote; it is left alone (choose another --out)");
  }
  make_directory(job.log_dir, "--log-dir");
  make_directory(script.parent_path(), "--out");
  write_file_atomic(script, text);
  std::cerr << "lmtune slurm: wrote " << script.string() << "\n";
  if (!submitting) return 0;
  const std::string id = submit(script);
  std::cout << "submitted batch job " << id << "\n";
  std::cerr << "lmtune slurm: log " << (job.log_dir / (job.name + "-" + id + ".log")).string() << "; watch with `squeue -j "
            << id << "`; stop and requeue with `scancel --signal=USR1 --batch " << id << "`\n";
  return 0;
}

}  // namespace lmtune::cli
