// The run directory's rules (run_dir.h) and AtomicDirectory (file_util.h): the lock, what a
// start may do to a directory, the stale temporaries it removes, and a directory replaced
// only when it holds what lmtune wrote, never removed before the new one is in place.
#include <gtest/gtest.h>

#include <unistd.h>

#include <fstream>

#include "common/test_models.h"
#include "trainer/core/error.h"
#include "trainer/io/checkpoint.h"
#include "trainer/io/file_util.h"
#include "trainer/io/run_dir.h"

namespace lmtune {
namespace {

namespace fs = std::filesystem;

void write_text(const fs::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }
std::string read_text(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}
std::vector<std::string> entries(const fs::path& dir) {
  std::vector<std::string> v;
  for (const auto& e : fs::directory_iterator(dir)) v.push_back(e.path().filename().string());
  std::sort(v.begin(), v.end());
  return v;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// A checkpoint directory as save_checkpoint leaves it (contents do not matter here).
void fake_checkpoint(const fs::path& dir) {
  fs::create_directories(dir);
  for (const char* n : {"index.json", "trainer_state.json", "config.yaml", "shard-00000-of-00002.safetensors",
                        "shard-00001-of-00002.safetensors"})
    write_text(dir / n, n);
}

// ---- AtomicDirectory ------------------------------------------------------------------------

TEST(AtomicDirectory, ReplacesOnlyAnEarlierWriteOfTheSameKind) {
  const fs::path root = testing::temp_dir("lmtune-atomic");
  const fs::path target = root / "out";
  const std::vector<std::string> names = {"a.bin", "b.json"};
  {
    AtomicDirectory d(target, names);
    EXPECT_EQ(d.staging().parent_path(), root);
    EXPECT_EQ(d.staging().filename().string().rfind(".out.tmp.", 0), 0u) << d.staging();
    write_text(d.staging() / "a.bin", "one");
    write_text(d.staging() / "b.json", "one");
    d.commit();
  }
  EXPECT_EQ(entries(root), (std::vector<std::string>{"out"}));
  {
    AtomicDirectory d(target, names);
    write_text(d.staging() / "a.bin", "two");  // b.json is not written this time
    d.commit();
  }
  EXPECT_EQ(entries(target), (std::vector<std::string>{"a.bin"}));
  EXPECT_EQ(read_text(target / "a.bin"), "two");
  EXPECT_EQ(entries(root), (std::vector<std::string>{"out"})) << "the old content is gone";

  // a file lmtune does not write there: refused before anything moves, and kept
  write_text(target / "mine.txt", "mine");
  {
    AtomicDirectory d(target, names);
    write_text(d.staging() / "a.bin", "three");
    const std::string m = error_of([&] { d.commit(); });
    EXPECT_NE(m.find("'mine.txt'"), std::string::npos) << m;
  }
  EXPECT_EQ(read_text(target / "a.bin"), "two");
  EXPECT_EQ(read_text(target / "mine.txt"), "mine");
  EXPECT_EQ(entries(root), (std::vector<std::string>{"out"})) << "the staging directory was removed";

  // nor a directory in place of a name it writes
  fs::remove(target / "mine.txt");
  fs::create_directories(target / "b.json");
  {
    AtomicDirectory d(target, names);
    EXPECT_NE(error_of([&] { d.commit(); }).find("'b.json'"), std::string::npos);
  }
  EXPECT_TRUE(fs::is_directory(target / "b.json"));
}

TEST(AtomicDirectory, NeverReusesAnExistingStagingName) {
  const fs::path root = testing::temp_dir("lmtune-atomic");
  AtomicDirectory a(root / "x", {"f"});
  AtomicDirectory b(root / "x", {"f"});
  EXPECT_NE(a.staging(), b.staging());
  write_text(a.staging() / "f", "a");
  b.commit();  // an empty directory
  EXPECT_EQ(read_text(a.staging() / "f"), "a") << "b's staging never touched a's";
}

// ---- the lock ------------------------------------------------------------------------------

TEST(RunDirLock, ASecondHolderIsRefusedNamingTheFirst) {
  const fs::path dir = testing::temp_dir("lmtune-lock") / "run";
  {
    RunDirLock first = RunDirLock::acquire(dir, "output.dir");
    first.keep();
    EXPECT_EQ(read_text(dir / kRunDirLockFile), host_name() + " " + std::to_string(getpid()) + "\n");
    const std::string m = error_of([&] { RunDirLock::acquire(dir, "output.dir"); });
    EXPECT_NE(m.find("output.dir '" + dir.string() + "' is in use by another lmtune run (host " + host_name() +
                     ", pid " + std::to_string(getpid()) + ")"),
              std::string::npos)
        << m;
  }
  RunDirLock again = RunDirLock::acquire(dir, "output.dir");  // released with the first
  EXPECT_TRUE(again.lock_file_existed());
}

TEST(RunDirLock, ARefusedRunLeavesNothingBehind) {
  const fs::path root = testing::temp_dir("lmtune-lock");
  { RunDirLock lock = RunDirLock::acquire(root / "new", "output.dir"); }  // not kept
  EXPECT_FALSE(fs::exists(root / "new"));
  fs::create_directories(root / "existing");
  { RunDirLock lock = RunDirLock::acquire(root / "existing", "output.dir"); }
  EXPECT_TRUE(fs::exists(root / "existing"));
  EXPECT_TRUE(fs::is_empty(root / "existing"));
}

TEST(RunDirLock, AFileInTheWayIsNamed) {
  const fs::path root = testing::temp_dir("lmtune-lock");
  write_text(root / "f", "x");
  EXPECT_NE(error_of([&] { RunDirLock::acquire(root / "f", "output.dir"); }).find("is a file, not a directory"),
            std::string::npos);
  const std::string m = error_of([&] { RunDirLock::acquire(root / "f" / "run", "output.dir"); });
  EXPECT_NE(m.find("cannot create output.dir '" + (root / "f" / "run").string() + "': Not a directory"),
            std::string::npos)
      << m;
}

// ---- starting in a directory ---------------------------------------------------------------

TEST(PrepareRunDir, AFolderThatHoldsNoRun) {
  const fs::path dir = testing::temp_dir("lmtune-prep");
  write_text(dir / "notes.txt", "mine");
  {
    RunDirLock lock = RunDirLock::acquire(dir, "output.dir");
    EXPECT_NE(error_of([&] { prepare_run_dir(lock, RunStart::fresh, Overwrite::no); }).find("holds no lmtune run"),
              std::string::npos);
  }
  EXPECT_EQ(entries(dir), (std::vector<std::string>{"notes.txt"})) << "the refused run left no lock file";
  {
    RunDirLock lock = RunDirLock::acquire(dir, "output.dir");
    prepare_run_dir(lock, RunStart::fresh, Overwrite::yes);  // next to notes.txt
  }
  write_text(dir / "config.yaml", "mine");
  RunDirLock lock = RunDirLock::acquire(dir, "output.dir");
  EXPECT_NE(error_of([&] { prepare_run_dir(lock, RunStart::fresh, Overwrite::yes); }).find("'config.yaml', which no "
                                                                                          "lmtune run wrote"),
            std::string::npos);
  EXPECT_EQ(read_text(dir / "config.yaml"), "mine");
}

TEST(PrepareRunDir, ARunWithCheckpoints) {
  const fs::path dir = testing::temp_dir("lmtune-prep");
  fake_checkpoint(dir / "checkpoint-2");
  fake_checkpoint(dir / "checkpoint-10");
  fs::create_directories(dir / "checkpoint-7");  // another tool's: not lmtune's
  write_text(dir / "checkpoint-7" / "optimizer.pt", "theirs");
  write_text(dir / "metrics.jsonl", "{}\n");
  write_text(dir / "notes.txt", "mine");
  RunDirLock lock = RunDirLock::acquire(dir, "output.dir");
  EXPECT_NE(error_of([&] { prepare_run_dir(lock, RunStart::fresh, Overwrite::no); })
                .find("already holds a run (latest checkpoint: checkpoint-10)"),
            std::string::npos);
  prepare_run_dir(lock, RunStart::resume, Overwrite::no);  // resuming keeps everything
  EXPECT_EQ(entries(dir), (std::vector<std::string>{".lmtune.lock", "checkpoint-10", "checkpoint-2", "checkpoint-7",
                                                    "metrics.jsonl", "notes.txt"}));
  // a file of the user's inside a checkpoint stops overwrite=true before it removes anything
  write_text(dir / "checkpoint-10" / "eval.txt", "mine");
  EXPECT_NE(error_of([&] { prepare_run_dir(lock, RunStart::fresh, Overwrite::yes); }).find("'eval.txt'"),
            std::string::npos);
  EXPECT_TRUE(fs::exists(dir / "checkpoint-2" / "index.json"));
  fs::remove(dir / "checkpoint-10" / "eval.txt");
  prepare_run_dir(lock, RunStart::fresh, Overwrite::yes);
  EXPECT_EQ(entries(dir), (std::vector<std::string>{".lmtune.lock", "checkpoint-7", "notes.txt"}));
  EXPECT_EQ(read_text(dir / "checkpoint-7" / "optimizer.pt"), "theirs");
}

TEST(PrepareRunDir, StaleTemporariesGoOnlyFromARunDirectory) {
  const std::vector<std::string> temps = {".checkpoint-3.tmp.4242", ".checkpoint-3.tmp.node7.4242.0",
                                          ".checkpoint-12.old.node7.4242.1", "config.yaml.tmp.node7.4242.2",
                                          "metrics.jsonl.tmp.4242.0"};
  const std::vector<std::string> look_alike = {".checkpoint-3.backup", ".checkpoint-.tmp.1", ".checkpoint-x.tmp.1",
                                               "checkpoint-3.tmp.1", "config.yaml.bak", ".checkpoint-3.tmp."};
  for (const auto& n : temps) EXPECT_TRUE(is_run_dir_temporary(n)) << n;
  for (const auto& n : look_alike) EXPECT_FALSE(is_run_dir_temporary(n)) << n;

  const fs::path dir = testing::temp_dir("lmtune-prep");
  fake_checkpoint(dir / "checkpoint-2");
  for (const auto& n : temps) {
    fs::create_directories(dir / n);
    write_text(dir / n / "trainable.safetensors", "partial");
  }
  for (const auto& n : look_alike) write_text(dir / n, "mine");
  RunDirLock lock = RunDirLock::acquire(dir, "output.dir");
  prepare_run_dir(lock, RunStart::resume, Overwrite::no);
  for (const auto& n : temps) EXPECT_FALSE(fs::exists(dir / n)) << n;
  for (const auto& n : look_alike) EXPECT_EQ(read_text(dir / n), "mine") << n;
}

}  // namespace
}  // namespace lmtune
