// Shared test helpers: the real stories15M model (imported once per test process into a
// temporary directory) and running the lmtune binary as a subprocess.
#pragma once

#include <filesystem>
#include <string>

namespace lmtune::testing {

// models/stories15M/{model.bin,tokenizer.bin}; empty path when not fetched.
std::filesystem::path stories15m_llama2c_dir();
// An HF directory imported from stories15M (once per process); empty when not fetched.
std::filesystem::path stories15m_hf_dir();
// A fresh temporary directory, removed at process exit.
std::filesystem::path temp_dir(const std::string& prefix);

struct RunResult {
  int exit_code;
  std::string out;  // stdout
  std::string err;  // stderr
};
// Runs `LMTUNE_BINARY args...` (args passed through the shell, so quote them).
RunResult run_lmtune(const std::string& args);
// Runs any shell command line.
RunResult run_command(const std::string& cmd);

}  // namespace lmtune::testing
