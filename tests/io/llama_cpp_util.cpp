#include "io/llama_cpp_util.h"

#include <gtest/gtest.h>

#include <mutex>
#include <sstream>

#include "common/test_models.h"
#include "kernels/ops.h"
#include "trainer/loop/inference.h"
#include "trainer/model/llama.h"

namespace lmtune::test {

namespace fs = std::filesystem;
namespace testing = ::lmtune::testing;

namespace {

std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> v;
  std::istringstream in(s);
  int32_t x;
  while (in >> x) v.push_back(x);
  return v;
}

}  // namespace

std::string quote(const std::string& s) {
  std::string r = "'";
  for (char c : s) r += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return r + "'";
}

fs::path llama_cpp_runner(std::string& why) {
  static std::once_flag once;
  static fs::path runner;
  static std::string reason;
  std::call_once(once, [] {
    const fs::path src = fs::path(LMTUNE_SOURCE_DIR);
    const fs::path llama = fs::path(LMTUNE_MODELS_DIR) / "llama.cpp";
    if (!fs::exists(llama / "lib" / "libllama.so")) {
      if (testing::run_command("command -v npm && command -v node").exit_code != 0) {
        reason = "llama.cpp not fetched and npm/node not found (scripts/fetch_llama_cpp.sh)";
        return;
      }
      const auto r = testing::run_command(quote((src / "scripts" / "fetch_llama_cpp.sh").string()));
      if (r.exit_code != 0 || !fs::exists(llama / "lib" / "libllama.so")) {
        reason = "scripts/fetch_llama_cpp.sh failed (offline?): " + r.err;
        return;
      }
    }
    const fs::path bin = testing::temp_dir("lmtune-llama-cpp") / "gguf_llama_cpp_run";
    const std::string lib = fs::canonical(llama / "lib").string();
    const std::string cmd = "c++ -std=c++17 -O2 -I" + quote((llama / "include").string()) + " " +
                            quote((src / "tests" / "reference" / "gguf_llama_cpp_run.cpp").string()) + " -o " +
                            quote(bin.string()) + " -L" + quote(lib) + " -l:libllama.so -l:libggml.so -lggml-base" +
                            " -Wl,-rpath," + quote(lib);
    const auto r = testing::run_command(cmd);
    if (r.exit_code != 0) {
      reason = "FAILED to compile the llama.cpp runner: " + r.err;
      return;
    }
    runner = bin;
  });
  why = reason;
  return runner;
}

LlamaCppRun run_llama_cpp(const fs::path& runner, const fs::path& gguf, int n, const std::string& prompt,
                          const std::vector<int32_t>& forced) {
  const std::string lib = fs::canonical(fs::path(LMTUNE_MODELS_DIR) / "llama.cpp" / "lib").string();
  std::string cmd = quote(runner.string()) + " " + quote(gguf.string()) + " " + quote(lib) + " " + std::to_string(n) +
                    " " + quote(prompt);
  if (!forced.empty()) {
    std::string f;
    for (size_t i = 0; i < forced.size(); ++i) {
      if (i != 0) f += ',';
      f += std::to_string(forced[i]);
    }
    cmd += " " + f;
  }
  const auto r = testing::run_command(cmd);
  EXPECT_EQ(r.exit_code, 0) << cmd << "\n" << r.err;
  LlamaCppRun out;
  std::istringstream in(r.out);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("prompt_ids:", 0) == 0) out.prompt_ids = parse_ids(line.substr(11));
    if (line.rfind("ids:", 0) == 0) out.ids = parse_ids(line.substr(4));
    if (line.rfind("text: ", 0) == 0) out.text = line.substr(6);
  }
  return out;
}

// One thread: a 15M model gains nothing from more, and spinning OpenMP threads on a shared
// machine cost a lot.
std::vector<int32_t> lmtune_greedy(const fs::path& dir, const std::vector<int32_t>& prompt, int n,
                                   const ModelOptions& model_opts) {
  struct OneThread {
    int saved = ops::num_threads();
    OneThread() { ops::set_num_threads(1); }
    ~OneThread() { ops::set_num_threads(saved); }
  } one_thread;
  auto alloc = Allocator::create(Device::cpu());
  auto model = LlamaModel::load(dir, *alloc, model_opts);
  SamplingOptions opts;
  opts.max_new_tokens = n;
  opts.temperature = 0.0f;
  return generate(*model, prompt, opts, nullptr, StopAtEos::no);
}

}  // namespace lmtune::test
