#include "trainer/io/run_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "trainer/core/error.h"
#include "trainer/io/checkpoint.h"
#include "trainer/io/file_util.h"

namespace lmtune {

namespace fs = std::filesystem;

const char* const kRunDirLockFile = ".lmtune.lock";

namespace {

bool starts_with(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

// "checkpoint-<digits>"
bool is_checkpoint_name(std::string_view name) {
  if (!starts_with(name, "checkpoint-") || name.size() == 11) return false;
  return name.substr(11).find_first_not_of("0123456789") == std::string_view::npos;
}

// A name lmtune writes in a run directory (so that a file of that name must be lmtune's).
bool is_written_name(std::string_view name) {
  return name == "config.yaml" || name == "metrics.jsonl" || name == kRunDirLockFile || is_checkpoint_name(name) ||
         is_run_dir_temporary(name);
}

// "'a', 'b', 'c' and 4 more"
std::string some_names(std::vector<std::string> names) {
  std::sort(names.begin(), names.end());
  std::string s;
  const size_t shown = std::min<size_t>(names.size(), 3);
  for (size_t i = 0; i < shown; ++i) s += (i ? ", '" : "'") + names[i] + "'";
  if (names.size() > shown) s += " and " + std::to_string(names.size() - shown) + " more";
  return s;
}

std::string read_holder(int fd) {
  char buf[256] = {};
  const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
  std::string s = n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  const size_t sp = s.find(' ');
  if (s.empty() || sp == std::string::npos) return "another lmtune run (host and pid not yet written)";
  return "another lmtune run (host " + s.substr(0, sp) + ", pid " + s.substr(sp + 1) + ")";
}

}  // namespace

bool is_run_dir_temporary(std::string_view name) {
  if (starts_with(name, "config.yaml.tmp.") || starts_with(name, "metrics.jsonl.tmp.")) return true;
  if (!starts_with(name, ".checkpoint-")) return false;
  const std::string_view rest = name.substr(12);
  const size_t digits = rest.find_first_not_of("0123456789");
  if (digits == 0 || digits == std::string_view::npos) return false;
  const std::string_view tail = rest.substr(digits);
  return (starts_with(tail, ".tmp.") || starts_with(tail, ".old.")) && tail.size() > 5;
}

RunDirLock::RunDirLock(fs::path dir, std::string key, int fd, bool existed, bool created_dir)
    : dir_(std::move(dir)), key_(std::move(key)), fd_(fd), lock_file_existed_(existed), created_dir_(created_dir) {}

RunDirLock::RunDirLock(RunDirLock&& o) noexcept
    : dir_(std::move(o.dir_)),
      key_(std::move(o.key_)),
      fd_(std::exchange(o.fd_, -1)),
      lock_file_existed_(o.lock_file_existed_),
      created_dir_(o.created_dir_),
      keep_(o.keep_) {}

RunDirLock::~RunDirLock() {
  if (fd_ < 0) return;
  if (!keep_ && !lock_file_existed_) {  // refused before it wrote anything: leave no trace
    ::unlink((dir_ / kRunDirLockFile).c_str());
    if (created_dir_) ::rmdir(dir_.c_str());  // only when empty
  }
  ::close(fd_);  // releases the lock
}

RunDirLock RunDirLock::acquire(const fs::path& dir, std::string_view key) {
  std::error_code ec;
  const fs::file_status st = fs::status(dir, ec);
  bool created_dir = false;
  if (!fs::exists(st)) {
    created_dir = fs::create_directories(dir, ec);
    LMTUNE_CHECK(!ec, "cannot create ", key, " '", dir.string(), "': ", ec.message());
  } else {
    LMTUNE_CHECK(fs::is_directory(st), key, " '", dir.string(), "' is a file, not a directory");
  }
  const fs::path file = dir / kRunDirLockFile;
  for (int attempt = 0; attempt < 100; ++attempt) {
    bool existed = false;
    int fd = ::open(file.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0 && errno == EEXIST) {
      existed = true;
      fd = ::open(file.c_str(), O_RDWR | O_CLOEXEC);
      if (fd < 0 && errno == ENOENT) continue;  // removed in between: try again
    }
    if (fd < 0) {
      const int e = errno;
      if (created_dir) ::rmdir(dir.c_str());
      LMTUNE_THROW("cannot write ", key, " '", dir.string(), "': cannot open '", file.string(), "': ",
                   std::strerror(e));
    }
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      const int e = errno;
      const std::string holder = e == EWOULDBLOCK ? read_holder(fd) : std::string();
      ::close(fd);
      LMTUNE_CHECK(e == EWOULDBLOCK, "cannot lock ", key, " '", dir.string(), "' (", file.string(),
                   "): ", std::strerror(e));
      LMTUNE_THROW(key, " '", dir.string(), "' is in use by ", holder, "; wait for that run to end, or choose another ",
                   key);
    }
    // The file may have been unlinked (by a refused run that made it) between open and
    // flock: the lock counts only on the file the path names now.
    struct stat by_fd {}, by_path {};
    if (::fstat(fd, &by_fd) != 0 || ::stat(file.c_str(), &by_path) != 0 || by_fd.st_ino != by_path.st_ino ||
        by_fd.st_dev != by_path.st_dev) {
      ::close(fd);
      continue;
    }
    const std::string holder = host_name() + " " + std::to_string(::getpid()) + "\n";
    if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, holder.data(), holder.size(), 0) != static_cast<ssize_t>(holder.size())) {
      const int e = errno;
      RunDirLock refused(dir, std::string(key), fd, existed, created_dir);  // releases and cleans up
      LMTUNE_THROW("cannot write ", key, " '", dir.string(), "': writing '", file.string(), "' failed: ",
                   std::strerror(e));
    }
    return RunDirLock(dir, std::string(key), fd, existed, created_dir);
  }
  LMTUNE_THROW("cannot lock ", key, " '", dir.string(), "': its lock file keeps being replaced");
}

void prepare_run_dir(const RunDirLock& lock, RunStart start, Overwrite overwrite) {
  const fs::path& dir = lock.dir();
  const std::string& key = lock.key();
  std::vector<std::string> entries, checkpoints;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name == kRunDirLockFile) continue;
    entries.push_back(name);
    if (is_checkpoint_dir(it->path())) checkpoints.push_back(name);
  }
  LMTUNE_CHECK(!ec, "cannot list ", key, " '", dir.string(), "': ", ec.message());

  if (!lock.lock_file_existed() && checkpoints.empty()) {  // not a run directory: nothing in it is lmtune's
    if (entries.empty()) return;
    LMTUNE_CHECK(overwrite == Overwrite::yes, key, " '", dir.string(), "' is not empty and holds no lmtune run (",
                 some_names(entries), "); choose a new or empty directory, or set output.overwrite=true to write "
                 "the run next to these files (they are kept)");
    for (const std::string& n : entries)
      LMTUNE_CHECK(!is_written_name(n), key, " '", dir.string(), "' holds '", n,
                   "', which no lmtune run wrote and a run would replace; move it away or choose another ", key);
    return;
  }

  for (const std::string& n : entries) {
    if (!is_run_dir_temporary(n)) continue;
    fs::remove_all(dir / n, ec);  // a killed run's: with the lock held no live process owns it
    LMTUNE_CHECK(!ec, "cannot remove the stale temporary '", (dir / n).string(), "': ", ec.message());
  }
  if (start == RunStart::resume) return;
  if (!checkpoints.empty()) {
    std::sort(checkpoints.begin(), checkpoints.end(), [](const std::string& a, const std::string& b) {
      return std::stoll(a.substr(11)) < std::stoll(b.substr(11));
    });
    LMTUNE_CHECK(overwrite == Overwrite::yes, key, " '", dir.string(), "' already holds a run (latest checkpoint: ",
                 checkpoints.back(), "); set train.resume_from=auto to continue it, or output.overwrite=true to "
                 "replace it");
    for (const std::string& c : checkpoints) {  // check them all before removing any
      const std::string foreign = first_foreign_entry(dir / c, checkpoint_file_names());
      LMTUNE_CHECK(foreign.empty(), "output.overwrite=true would remove '", (dir / c).string(), "', but it holds '",
                   foreign, "', which lmtune did not write; move that out of it and run again");
    }
    for (const std::string& c : checkpoints) remove_written_directory(dir / c, checkpoint_file_names(), "checkpoint");
  }
  fs::remove(dir / "metrics.jsonl", ec);
  LMTUNE_CHECK(!ec, "cannot remove '", (dir / "metrics.jsonl").string(), "': ", ec.message());
}

}  // namespace lmtune
