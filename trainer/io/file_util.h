// Small file helpers shared by the readers and writers in trainer/io and trainer/data:
// a read-only memory map, whole-file reads with errors that name the file, and atomic
// writes (a temporary file in the same directory, flushed, fsync'ed and renamed into place,
// so a reader never sees a half-written file, and a failed write leaves the old file as it was).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <string_view>

namespace lmtune {

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

// Streams into `<path>.tmp.<pid>.<n>`; commit() flushes, fsyncs and renames it onto `path`.
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

// A directory filled under a hidden temporary sibling name (`.<name>.tmp.<pid>`) and
// renamed onto `path` by commit(), replacing what was there: a directory that exists at
// `path` is complete. Destroyed without commit(), the temporary directory is removed.
class AtomicDirectory {
 public:
  explicit AtomicDirectory(std::filesystem::path path);
  ~AtomicDirectory();
  AtomicDirectory(const AtomicDirectory&) = delete;
  AtomicDirectory& operator=(const AtomicDirectory&) = delete;
  const std::filesystem::path& staging() const { return tmp_; }  // write here
  void commit();

 private:
  std::filesystem::path path_;
  std::filesystem::path tmp_;
  bool committed_ = false;
};

// write_file_atomic(path, contents): the whole of `contents`, atomically.
void write_file_atomic(const std::filesystem::path& path, std::string_view contents);

}  // namespace lmtune
