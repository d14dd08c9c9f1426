#include "trainer/core/error.h"

#include <cstring>

namespace lmtune {

std::string Error::describe() const {
  // Keep only the path below the source root so messages stay short.
  const char* f = file_;
  for (const char* root : {"/trainer/", "/kernels/", "/parallel/", "/estimator/", "/launch/"}) {
    if (const char* p = std::strstr(file_, root)) { f = p + 1; break; }
  }
  return detail::concat(what(), " (at ", f, ":", line_, ")");
}

namespace detail {
void throw_error(ErrorKind kind, const char* file, int line, const std::string& msg) {
  throw Error(kind, file, line, msg);
}
}  // namespace detail

}  // namespace lmtune
