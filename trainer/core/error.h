// Errors. Library code throws lmtune::Error (carrying file:line and a message a user can
// act on); only launch/ catches it and turns it into an exit code.
//   LMTUNE_CHECK(cond, msg...)  — user errors: bad config, file, argument.
//   LMTUNE_ASSERT(cond, msg...) — invariants of our own code; on in release builds.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace lmtune {

enum class ErrorKind { user, internal, out_of_memory };

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const char* file, int line, const std::string& message)
      : std::runtime_error(message), kind_(kind), file_(file), line_(line) {}
  ErrorKind kind() const { return kind_; }
  const char* file() const { return file_; }
  int line() const { return line_; }
  // "message (at trainer/io/safetensors.cpp:123)"
  std::string describe() const;

 private:
  ErrorKind kind_;
  const char* file_;
  int line_;
};

namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
[[noreturn]] void throw_error(ErrorKind kind, const char* file, int line, const std::string& msg);
}  // namespace detail

}  // namespace lmtune

#define LMTUNE_THROW(...) \
  ::lmtune::detail::throw_error(::lmtune::ErrorKind::user, __FILE__, __LINE__, ::lmtune::detail::concat(__VA_ARGS__))

#define LMTUNE_CHECK(cond, ...)                                                              \
  do {                                                                                       \
    if (!(cond)) [[unlikely]]                                                                \
      ::lmtune::detail::throw_error(::lmtune::ErrorKind::user, __FILE__, __LINE__,           \
                                    ::lmtune::detail::concat(__VA_ARGS__));                  \
  } while (0)

#define LMTUNE_ASSERT(cond, ...)                                                             \
  do {                                                                                       \
    if (!(cond)) [[unlikely]]                                                                \
      ::lmtune::detail::throw_error(::lmtune::ErrorKind::internal, __FILE__, __LINE__,       \
                                    ::lmtune::detail::concat("internal error: " #cond " ",   \
                                                             ##__VA_ARGS__));                \
  } while (0)
