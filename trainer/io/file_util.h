// Small file helpers shared by the readers and writers in trainer/io and trainer/data:
// a read-only memory map, whole-file reads with errors that name the file, and atomic
// writes (a temporary file in the same directory, flushed, fsync'ed and renamed into place,
// so a reader never sees a half-written file, and a failed write leaves the old file as it
// was), and atomic directories that replace only what lmtune wrote.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <string_view>
#include <functional>
#include <initializer_list>
#include <vector>

namespace lmtune {

// The names lmtune writes into a directory of some kind (and so may replace or remove
// there): a fixed list, or a rule for names that vary (a checkpoint's shard-R-of-W files).
class NameSet {
 public:
  NameSet(std::vector<std::string> names);  // NOLINT: a list converts implicitly
  NameSet(std::initializer_list<std::string> names) : NameSet(std::vector<std::string>(names)) {}
  explicit NameSet(std::function<bool(std::string_view)> rule) : rule_(std::move(rule)) {}
  bool contains(std::string_view name) const { return rule_(name); }

 private:
  std::function<bool(std::string_view)> rule_;
};

// A whole file mapped read-only. An empty file maps to size() == 0 and data() == nullptr.
class MappedFile {
 public:
  explicit MappedFile(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  void release();
  std::filesystem::path path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Reads a whole file into a string; `what` ("config.json", "tokenizer.json") is used in errors.
std::string read_file_to_string(const std::filesystem::path& path, std::string_view what);

// Whether a write may replace what an earlier lmtune write of the same kind left at its path.
enum class Overwrite { no, yes };

// The tag every temporary name lmtune makes carries: "<host>.<pid>.<n>" (n counts up in
// the process), so that processes on different hosts sharing a filesystem never collide.
std::string temporary_tag();
// gethostname(), or "host" when it has none.
std::string host_name();

// Streams into `<path>.tmp.<tag>`; commit() flushes, fsyncs and renames it onto `path`.
// Destroyed without commit() (an exception on the way), the temporary file is removed.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::filesystem::path path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(const void* data, size_t n);
  void write(std::string_view s) { write(s.data(), s.size()); }
  void commit();
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  std::filesystem::path tmp_;
  std::FILE* file_ = nullptr;
};

// A directory filled under a temporary sibling name and moved onto `path` by commit(), so
// that a directory at `path` is always complete. It never deletes anything it did not write:
//  - The staging directory `.<name>.tmp.<tag>` is made new (mkdir, never reused); what is
//    written there is the caller's to fill.
//  - commit() onto a path that does not exist is a rename. Onto an existing directory, that
//    directory must hold nothing but regular files named in `replaceable` (the names an
//    earlier write of the same kind writes); anything else is an error naming it, raised
//    before anything moved. The two directories are then swapped with
//    renameat2(RENAME_EXCHANGE) — where the filesystem lacks it, the old one is first
//    renamed aside to `.<name>.old.<tag>` — so the new content is in place before any old
//    byte is removed; then the old content (now at the staging or aside name) is removed
//    file by file, `replaceable` names only, and its directory last.
//  - Destroyed without commit(), the staging directory and what was written into it are
//    removed.
// `what` names the setting that chose `path` ("--out") in errors.
class AtomicDirectory {
 public:
  AtomicDirectory(std::filesystem::path path, NameSet replaceable, std::string what = "");
  ~AtomicDirectory();
  AtomicDirectory(const AtomicDirectory&) = delete;
  AtomicDirectory& operator=(const AtomicDirectory&) = delete;
  const std::filesystem::path& staging() const { return tmp_; }  // write here
  void commit();

 private:
  std::filesystem::path path_;
  std::filesystem::path tmp_;
  NameSet replaceable_;
  std::string what_;  // "'<path>'" or "<what> '<path>'", for errors
  bool committed_ = false;
};

// The first entry of directory `dir` that is not a regular file named in `names`, or "".
std::string first_foreign_entry(const std::filesystem::path& dir, const NameSet& names);
// Removes the files named in `names` from `dir`, then `dir` itself. Anything else in it is
// an error naming it (`what` says what dir is: "checkpoint"), raised before anything is removed.
void remove_written_directory(const std::filesystem::path& dir, const NameSet& names,
                              std::string_view what);

// write_file_atomic(path, contents): the whole of `contents`, atomically.
void write_file_atomic(const std::filesystem::path& path, std::string_view contents);

}  // namespace lmtune
