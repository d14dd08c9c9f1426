// Helpers for the parity tests: running the PyTorch reference (tests/reference/llama_ref.py)
// as a subprocess, reading what it writes, and comparing tensors.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace lmtune::test_util {

// A fresh directory under the system temp dir, removed (recursively) on destruction
// unless LMTUNE_KEEP_TEST_DIRS is set in the environment.
class TempDir {
 public:
  explicit TempDir(const std::string& tag);
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

struct CommandResult {
  int exit_code = -1;   // the process's exit status (or -1 when it did not exit normally)
  std::string output;   // stdout and stderr together
  std::string command;  // what was run
  bool ok() const { return exit_code == 0; }
  // "command ... exited with N; output:\n..." for test failure messages.
  std::string describe() const;
};

// Single-quotes `s` for /bin/sh.
std::string shell_quote(const std::string& s);
// Runs `command` through /bin/sh with stdout and stderr captured (via a file in `scratch`).
CommandResult run_command(const std::string& command, const std::filesystem::path& scratch);
// Runs LMTUNE_PYTHON tests/reference/llama_ref.py <args...> (each argument quoted).
CommandResult run_reference(const std::vector<std::string>& args, const std::filesystem::path& scratch);

// A tensor read back from a safetensors file, widened to double.
struct HostTensor {
  std::vector<int64_t> shape;
  std::vector<double> data;
  int64_t numel() const { return static_cast<int64_t>(data.size()); }
};

// A minimal, independent safetensors reader (F64, F32, F16, BF16, I64, I32) for files the
// reference writes. Throws std::runtime_error on anything malformed.
std::map<std::string, HostTensor> read_safetensors_file(const std::filesystem::path& path);

// max |ours - ref| / max |ref| (max |ours - ref| when ref is all zeros); sizes must match.
struct Deviation {
  double rel = 0.0;      // the relative error above
  double max_abs = 0.0;  // max |ours - ref|
  double ref_max = 0.0;  // max |ref|
  int64_t worst = -1;    // index of the largest |ours - ref|
};
Deviation compare_tensors(const std::vector<float>& ours, const std::vector<double>& ref);

// Writes {"tokens": [[...]], "targets": [[...]]} for B rows of T (targets optional: empty).
void write_batch_json(const std::filesystem::path& path, const std::vector<int32_t>& tokens,
                      const std::vector<int32_t>& targets, int64_t B, int64_t T);

}  // namespace lmtune::test_util
