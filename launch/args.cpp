#include "launch/args.h"

#include <cerrno>
#include <cstdlib>

#include "trainer/core/error.h"
#include "trainer/core/strings.h"

namespace lmtune::cli {

Args::Args(std::string verb, const std::vector<std::string>& argv, const std::vector<OptionSpec>& spec)
    : verb_(std::move(verb)) {
  std::vector<std::string> names;
  for (const auto& o : spec) names.push_back("--" + o.name);
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (a == "--") {  // the end of the options: the rest is positional (lmtune launch -- VERB --opt ...)
      positional_.insert(positional_.end(), argv.begin() + static_cast<std::ptrdiff_t>(i) + 1, argv.end());
      break;
    }
    if (a.size() < 3 || a.rfind("--", 0) != 0) {
      positional_.push_back(a);
      continue;
    }
    std::string name = a.substr(2), value;
    bool inline_value = false;
    if (const size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      inline_value = true;
    }
    const OptionSpec* o = nullptr;
    for (const auto& s : spec)
      if (s.name == name) o = &s;
    if (o == nullptr) {
      const std::string near = closest_match("--" + name, names);
      LMTUNE_THROW("unknown option '--", name, "' for 'lmtune ", verb_, "'",
                   near.empty() ? std::string() : " (did you mean '" + near + "'?)", "; see 'lmtune ", verb_,
                   " --help'");
    }
    if (o->takes_value && !inline_value) {
      LMTUNE_CHECK(i + 1 < argv.size(), "option '--", name, "' of 'lmtune ", verb_, "' needs a value");
      value = argv[++i];
    }
    LMTUNE_CHECK(o->takes_value || !inline_value, "option '--", name, "' is a switch and takes no value");
    values_[name] = value;
  }
}

void Args::expect_positional(const std::vector<std::string>& names) const {
  if (positional_.size() == names.size()) return;
  std::string usage;
  for (const auto& n : names) usage += " " + n;
  LMTUNE_THROW("'lmtune ", verb_, "' takes ", names.size(), " argument(s):", usage, "; got ", positional_.size());
}

std::optional<std::string> Args::get(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  return it->second;
}

std::string Args::get_string(const std::string& name, const std::string& fallback) const {
  return get(name).value_or(fallback);
}

int64_t Args::get_int(const std::string& name, int64_t fallback) const {
  const auto v = get(name);
  if (!v) return fallback;
  char* end = nullptr;
  errno = 0;
  const long long x = std::strtoll(v->c_str(), &end, 10);
  LMTUNE_CHECK(!v->empty() && *end == '\0' && errno == 0, "option '--", name, "' expects an integer, got '", *v, "'");
  return x;
}

int Args::get_int_in(const std::string& name, int64_t fallback, int64_t lo, int64_t hi) const {
  const int64_t v = get_int(name, fallback);
  LMTUNE_CHECK(v >= lo && v <= hi, "--", name, " ", v, " is out of range (", lo, "..", hi, ")");
  return static_cast<int>(v);
}

double Args::get_double(const std::string& name, double fallback) const {
  const auto v = get(name);
  if (!v) return fallback;
  char* end = nullptr;
  errno = 0;
  const double x = std::strtod(v->c_str(), &end);
  LMTUNE_CHECK(!v->empty() && *end == '\0' && errno == 0, "option '--", name, "' expects a number, got '", *v, "'");
  return x;
}

}  // namespace lmtune::cli
