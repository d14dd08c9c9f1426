// The run directory of a training run (output.dir): who may write it, what lmtune owns in
// it, and what a run may do to it when it starts.
//
// Design note.
//  - One writer. A run holds an exclusive flock(2) on RUN_DIR/.lmtune.lock for its whole
//    life. The kernel drops the lock when the process ends, however it ends (kill -9
//    included), so a lock is never stale and needs no cleanup; a second run on the same
//    directory fails at once with the host and pid written in the file. flock is
//    advisory and works across hosts on a shared filesystem where the filesystem supports
//    it (local filesystems; NFS through the kernel's POSIX-lock emulation). The lock file
//    is never deleted while a run owns the directory (deleting a lock file races with a
//    process about to lock it); RunDirLock removes it only when it made it and the run
//    was refused before it wrote anything (keep() was not called). Under multi-process
//    training one process per run takes the lock (the writer, rank 0): the caller decides
//    which, and only the holder may call prepare_run_dir().
//  - Ownership. In a run directory lmtune owns: .lmtune.lock, config.yaml,
//    metrics.jsonl, checkpoint-<N>/ (holding exactly checkpoint_file_names()), and the
//    temporaries of those (config.yaml.tmp.*, metrics.jsonl.tmp.*, .checkpoint-<N>.tmp.*,
//    .checkpoint-<N>.old.*). A directory is a run directory when it held the lock file
//    before this run, or holds an lmtune checkpoint. Everything else in it is the user's,
//    and lmtune never removes or replaces it; in a directory that is not a run directory
//    nothing at all is lmtune's.
//  - Starting (prepare_run_dir, under the lock):
//      not a run directory, not empty:  overwrite=false -> error naming what is there;
//                                       overwrite=true  -> the run writes next to those
//                                       files, unless one has a name lmtune writes (error)
//      a run directory with a checkpoint, starting fresh:
//                                       overwrite=false -> error (resume or overwrite);
//                                       overwrite=true  -> lmtune's files are removed
//      a run directory without checkpoint (a run that failed before its first save):
//                                       a fresh start (or resume_from=auto) goes ahead
//    Then temporaries that a killed run left behind are removed: with the lock held, no
//    live process owns them.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "trainer/io/file_util.h"  // Overwrite

namespace lmtune {

enum class RunStart { fresh, resume };

class RunDirLock {
 public:
  // Creates `dir` if needed and takes its lock, or throws: naming `key` (the setting that
  // chose the directory, "output.dir"), the path and the OS reason when it cannot be
  // created or written, and the holder's host and pid when another run holds it.
  static RunDirLock acquire(const std::filesystem::path& dir, std::string_view key);
  RunDirLock(RunDirLock&& other) noexcept;
  RunDirLock& operator=(RunDirLock&&) = delete;
  RunDirLock(const RunDirLock&) = delete;
  ~RunDirLock();

  const std::filesystem::path& dir() const { return dir_; }
  const std::string& key() const { return key_; }
  // Whether the lock file was there before this run: the directory was an lmtune run
  // directory already.
  bool lock_file_existed() const { return lock_file_existed_; }
  // The run has taken the directory: the lock file stays when the lock is released.
  void keep() { keep_ = true; }

 private:
  RunDirLock(std::filesystem::path dir, std::string key, int fd, bool existed, bool created_dir);
  std::filesystem::path dir_;
  std::string key_;
  int fd_ = -1;
  bool lock_file_existed_ = false;
  bool created_dir_ = false;
  bool keep_ = false;
};

// The lock file's name inside a run directory.
extern const char* const kRunDirLockFile;

// Applies the rules of the design note to the locked directory, removes stale
// temporaries, and (fresh start) the previous run's metrics. Errors name lock.key().
void prepare_run_dir(const RunDirLock& lock, RunStart start, Overwrite overwrite);

// Whether `name` (an entry of a run directory) is a temporary lmtune makes there.
bool is_run_dir_temporary(std::string_view name);

}  // namespace lmtune
