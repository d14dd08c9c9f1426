#include "trainer/io/file_util.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "trainer/core/error.h"

namespace lmtune {

MappedFile::MappedFile(const std::filesystem::path& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  LMTUNE_CHECK(fd >= 0, "cannot open '", path.string(), "': ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    LMTUNE_THROW("cannot stat '", path.string(), "': ", std::strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    LMTUNE_THROW("'", path.string(), "' is not a regular file");
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    const int e = errno;
    ::close(fd);
    LMTUNE_CHECK(p != MAP_FAILED, "cannot map '", path.string(), "' (", size_, " bytes): ", std::strerror(e));
    data_ = static_cast<const uint8_t*>(p);
  } else {
    ::close(fd);
  }
}

MappedFile::~MappedFile() { release(); }

void MappedFile::release() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
  data_ = nullptr;
  size_ = 0;
}

MappedFile::MappedFile(MappedFile&& o) noexcept
    : path_(std::move(o.path_)), data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& o) noexcept {
  if (this != &o) {
    release();
    path_ = std::move(o.path_);
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

std::string read_file_to_string(const std::filesystem::path& path, std::string_view what) {
  std::ifstream in(path, std::ios::binary);
  LMTUNE_CHECK(in.good(), what, " '", path.string(), "': cannot open: ", std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  LMTUNE_CHECK(!in.bad(), what, " '", path.string(), "': read error");
  return ss.str();
}

namespace {
std::atomic<uint64_t> g_tmp_counter{0};
}

AtomicFileWriter::AtomicFileWriter(std::filesystem::path path) : path_(std::move(path)) {
  tmp_ = path_;
  tmp_ += ".tmp." + std::to_string(::getpid()) + "." + std::to_string(g_tmp_counter.fetch_add(1));
  file_ = std::fopen(tmp_.c_str(), "wb");
  LMTUNE_CHECK(file_ != nullptr, "cannot create '", tmp_.string(), "' (to write '", path_.string(),
               "'): ", std::strerror(errno));
  std::setvbuf(file_, nullptr, _IOFBF, 1 << 20);
}

AtomicFileWriter::~AtomicFileWriter() {
  if (file_ != nullptr) {
    std::fclose(file_);
    std::error_code ec;
    std::filesystem::remove(tmp_, ec);
  }
}

void AtomicFileWriter::write(const void* data, size_t n) {
  LMTUNE_ASSERT(file_ != nullptr, "write after commit");
  if (n == 0) return;
  LMTUNE_CHECK(std::fwrite(data, 1, n, file_) == n, "writing '", tmp_.string(), "' failed: ", std::strerror(errno));
}

void AtomicFileWriter::commit() {
  LMTUNE_ASSERT(file_ != nullptr, "commit twice");
  std::FILE* f = std::exchange(file_, nullptr);
  bool ok = std::fflush(f) == 0;
  int err = ok ? 0 : errno;
  if (ok && ::fsync(::fileno(f)) != 0) {
    ok = false;
    err = errno;
  }
  if (std::fclose(f) != 0 && ok) {
    ok = false;
    err = errno;
  }
  std::error_code ec;
  if (!ok) {
    std::filesystem::remove(tmp_, ec);
    LMTUNE_THROW("writing '", tmp_.string(), "' failed: ", std::strerror(err));
  }
  std::filesystem::rename(tmp_, path_, ec);
  if (ec) {
    std::error_code ec2;
    std::filesystem::remove(tmp_, ec2);
    LMTUNE_THROW("cannot rename '", tmp_.string(), "' to '", path_.string(), "': ", ec.message());
  }
}

void write_file_atomic(const std::filesystem::path& path, std::string_view contents) {
  AtomicFileWriter w(path);
  w.write(contents);
  w.commit();
}

AtomicDirectory::AtomicDirectory(std::filesystem::path path) : path_(std::move(path)) {
  const std::filesystem::path parent = path_.parent_path().empty() ? "." : path_.parent_path();
  std::string name = ".";  // appended piece by piece: GCC 12 warns (falsely) on "." + std::string at -O3
  name += path_.filename().string();
  name += ".tmp.";
  name += std::to_string(getpid());
  tmp_ = parent / name;
  std::filesystem::remove_all(tmp_);
  std::filesystem::create_directories(tmp_);
}

AtomicDirectory::~AtomicDirectory() {
  if (committed_) return;
  std::error_code ec;
  std::filesystem::remove_all(tmp_, ec);
}

void AtomicDirectory::commit() {
  LMTUNE_ASSERT(!committed_, "commit() twice");
  if (std::filesystem::exists(path_)) std::filesystem::remove_all(path_);
  std::filesystem::rename(tmp_, path_);
  committed_ = true;
}

}  // namespace lmtune
