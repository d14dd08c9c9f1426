// Command-line parsing for the `lmtune` verbs: positional arguments plus `--name value` /
// `--name=value` options and `--flag` switches, each declared by the verb; a lone `--` ends
// the options (everything after it is positional). An unknown
// option, a missing value or a malformed number is an error naming it (with the closest
// valid option for a typo).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace lmtune::cli {

struct OptionSpec {
  std::string name;  // without the leading "--"
  bool takes_value;
  std::string help;
};

class Args {
 public:
  Args(std::string verb, const std::vector<std::string>& argv, const std::vector<OptionSpec>& spec);
  const std::vector<std::string>& positional() const { return positional_; }
  // Checks there are exactly n positional arguments, naming them in the error.
  void expect_positional(const std::vector<std::string>& names) const;
  bool flag(const std::string& name) const { return values_.count(name) > 0; }
  std::optional<std::string> get(const std::string& name) const;
  std::string get_string(const std::string& name, const std::string& fallback) const;
  int64_t get_int(const std::string& name, int64_t fallback) const;
  // get_int, checked to lie in [lo, hi] (the error names the option and the range).
  int get_int_in(const std::string& name, int64_t fallback, int64_t lo, int64_t hi) const;
  double get_double(const std::string& name, double fallback) const;

 private:
  std::string verb_;
  std::vector<std::string> positional_;
  std::map<std::string, std::string> values_;
};

}  // namespace lmtune::cli
