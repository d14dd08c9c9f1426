// llama.cpp as the independent reader of lmtune's GGUF files: the runner
// (tests/reference/gguf_llama_cpp_run.cpp, compiled once per process against the prebuilt
// libraries in models/llama.cpp) and lmtune's own greedy continuation to compare it with.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "trainer/model/param_layout.h"

namespace lmtune::test {

// Single-quoted for the shell.
std::string quote(const std::string& s);

// Fetches llama.cpp (once; skipped without npm) and compiles the runner against its headers.
// Returns the runner's path, or empty with `why` set ("FAILED ..." when it could not compile).
std::filesystem::path llama_cpp_runner(std::string& why);

struct LlamaCppRun {
  std::vector<int32_t> prompt_ids;
  std::vector<int32_t> ids;
  std::string text;
};

// The runner's greedy continuation of `prompt` (BOS added) for n tokens; with `forced`,
// teacher-forced on those ids (its argmax at every step is still reported).
LlamaCppRun run_llama_cpp(const std::filesystem::path& runner, const std::filesystem::path& gguf, int n,
                          const std::string& prompt, const std::vector<int32_t>& forced = {});

// lmtune's greedy continuation of the model in `dir`, built with `opts` (QAT's fake
// quantized forward, say), on one thread.
std::vector<int32_t> lmtune_greedy(const std::filesystem::path& dir, const std::vector<int32_t>& prompt, int n,
                                   const ModelOptions& opts = {});

}  // namespace lmtune::test

#define REQUIRE_LLAMA_CPP(runner)                                \
  std::string why_;                                              \
  const fs::path runner = ::lmtune::test::llama_cpp_runner(why_); \
  if (why_.rfind("FAILED", 0) == 0) FAIL() << why_;               \
  if (runner.empty()) GTEST_SKIP() << why_
