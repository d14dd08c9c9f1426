#include "trainer/io/file_util.h"

#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
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

std::string errno_text(int e) { return std::strerror(e); }
}  // namespace

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return "host";
  std::string h(buf);
  for (char& ch : h)
    if (ch == '/' || ch == ' ') ch = '_';
  return h;
}

std::string temporary_tag() {
  static const std::string host = host_name();
  return host + "." + std::to_string(::getpid()) + "." + std::to_string(g_tmp_counter.fetch_add(1));
}

AtomicFileWriter::AtomicFileWriter(std::filesystem::path path) : path_(std::move(path)) {
  tmp_ = path_;
  tmp_ += ".tmp." + temporary_tag();
  file_ = std::fopen(tmp_.c_str(), "wbx");  // x: never onto an existing file
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

namespace fs = std::filesystem;

NameSet::NameSet(std::vector<std::string> names)
    : rule_([names = std::move(names)](std::string_view n) {
        return std::find(names.begin(), names.end(), n) != names.end();
      }) {}

std::string first_foreign_entry(const fs::path& dir, const NameSet& names) {
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string n = it->path().filename().string();
    if (!names.contains(n) || !it->is_regular_file(ec) || it->is_symlink(ec)) return n;
  }
  LMTUNE_CHECK(!ec, "cannot list '", dir.string(), "': ", ec.message());
  return {};
}

namespace {
// Removes the regular files of `dir` that `names` contains (what an lmtune write left).
void remove_named_files(const fs::path& dir, const NameSet& names) {
  std::error_code ec;
  std::vector<fs::path> files;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
    if (names.contains(it->path().filename().string()) && fs::is_regular_file(fs::symlink_status(it->path(), ec)))
      files.push_back(it->path());
  for (const fs::path& f : files) {
    fs::remove(f, ec);
    LMTUNE_CHECK(!ec, "cannot remove '", f.string(), "': ", ec.message());
  }
}
}  // namespace

void remove_written_directory(const fs::path& dir, const NameSet& names, std::string_view what) {
  const std::string foreign = first_foreign_entry(dir, names);
  LMTUNE_CHECK(foreign.empty(), what, " '", dir.string(), "' holds '", foreign,
               "', which lmtune did not write; move it out of there and run again");
  remove_named_files(dir, names);
  std::error_code ec;
  fs::remove(dir, ec);
  LMTUNE_CHECK(!ec, "cannot remove '", dir.string(), "': ", ec.message());
}

AtomicDirectory::AtomicDirectory(fs::path path, NameSet replaceable, std::string what)
    : path_(std::move(path)), replaceable_(std::move(replaceable)) {
  what_ = (what.empty() ? "'" : what + " '") + path_.string() + "'";
  LMTUNE_ASSERT(!path_.filename().empty() && path_.filename() != "." && path_.filename() != "..",
                "AtomicDirectory needs a path that names a directory, got '", path_.string(), "'");
  const fs::path parent = path_.parent_path().empty() ? "." : path_.parent_path();
  std::string name = ".";  // appended piece by piece: GCC 12 warns (falsely) on "." + std::string at -O3
  name += path_.filename().string();
  name += ".tmp.";
  name += temporary_tag();
  tmp_ = parent / name;
  if (::mkdir(tmp_.c_str(), 0777) != 0) {
    const int e = errno;
    LMTUNE_THROW("cannot write ", what_, ": cannot create '", tmp_.string(), "': ", errno_text(e));
  }
}

AtomicDirectory::~AtomicDirectory() {
  if (committed_) return;
  std::error_code ec;
  fs::remove_all(tmp_, ec);  // made by this object, filled by its owner: nothing else is in there
}

void AtomicDirectory::commit() {
  LMTUNE_ASSERT(!committed_, "commit() twice");
  // Onto a new path: a rename that refuses to replace anything that appeared meanwhile.
  if (::renameat2(AT_FDCWD, tmp_.c_str(), AT_FDCWD, path_.c_str(), RENAME_NOREPLACE) == 0) {
    committed_ = true;
    return;
  }
  int e = errno;
  if (e == EINVAL || e == ENOSYS) {  // a filesystem without renameat2 flags
    std::error_code ec;
    if (!fs::exists(path_, ec) && ::rename(tmp_.c_str(), path_.c_str()) == 0) {
      committed_ = true;
      return;
    }
    e = errno;
  }
  if (e != EEXIST && e != ENOTEMPTY && e != EINVAL && e != ENOSYS && e != EISDIR && e != ENOTDIR)
    LMTUNE_THROW("cannot write ", what_, ": cannot rename '", tmp_.string(), "' onto it: ", errno_text(e));

  // Onto an existing directory: only one that holds what an earlier write of this kind wrote.
  std::error_code ec;
  LMTUNE_CHECK(fs::is_directory(fs::symlink_status(path_, ec)), "cannot write ", what_,
               ": it exists and is not a directory");
  const std::string foreign = first_foreign_entry(path_, replaceable_);
  LMTUNE_CHECK(foreign.empty(), "cannot replace ", what_, ": it holds '", foreign,
               "', which lmtune does not write there; move it away or choose another path");
  fs::path old = tmp_;  // where the old content ends up
  if (::renameat2(AT_FDCWD, tmp_.c_str(), AT_FDCWD, path_.c_str(), RENAME_EXCHANGE) != 0) {
    e = errno;
    LMTUNE_CHECK(e == EINVAL || e == ENOSYS, "cannot replace ", what_, " with '", tmp_.string(), "': ",
                 errno_text(e));
    std::string name = ".";
    name += path_.filename().string();
    name += ".old.";
    name += temporary_tag();
    old = path_.parent_path() / name;
    if (::rename(path_.c_str(), old.c_str()) != 0) {
      e = errno;
      LMTUNE_THROW("cannot replace ", what_, ": cannot move it aside to '", old.string(), "': ",
                   errno_text(e));
    }
    if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
      e = errno;
      ::rename(old.c_str(), path_.c_str());  // put the old one back
      LMTUNE_THROW("cannot replace ", what_, ": cannot rename '", tmp_.string(), "' onto it: ",
                   errno_text(e));
    }
  }
  committed_ = true;
  // The old content: the replaceable files only (checked above), then its directory. A file
  // that appeared there meanwhile keeps the directory (and itself) where it is.
  try {
    remove_named_files(old, replaceable_);
  } catch (const Error&) {
    return;  // the new content is in place; what could not be removed stays at its temporary name
  }
  fs::remove(old, ec);
}

}  // namespace lmtune
