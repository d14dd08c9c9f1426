#include "common/test_models.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <sstream>
#include <vector>

#include <random>

#include <nlohmann/json.hpp>

#include "trainer/data/tokenizer.h"
#include "trainer/io/checkpoint.h"
#include "trainer/io/llama2c.h"
#include "trainer/io/safetensors.h"
#include "trainer/model/llama.h"

namespace lmtune::testing {

namespace fs = std::filesystem;

namespace {
std::vector<fs::path>& cleanup_list() {
  static std::vector<fs::path> dirs;
  static const bool registered = [] {
    std::atexit([] {
      std::error_code ec;
      for (const auto& d : cleanup_list()) fs::remove_all(d, ec);
    });
    return true;
  }();
  (void)registered;
  return dirs;
}

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}
}  // namespace

fs::path temp_dir(const std::string& prefix) {
  std::string templ = (fs::temp_directory_path() / (prefix + "-XXXXXX")).string();
  char* made = mkdtemp(templ.data());
  if (made == nullptr) throw std::runtime_error("mkdtemp failed for " + templ);
  cleanup_list().push_back(made);
  return made;
}

fs::path stories15m_llama2c_dir() {
  const fs::path d = fs::path(LMTUNE_MODELS_DIR) / "stories15M";
  if (fs::exists(d / "model.bin") && fs::exists(d / "tokenizer.bin")) return d;
  return {};
}

fs::path stories15m_hf_dir() {
  static std::once_flag once;
  static fs::path dir;
  std::call_once(once, [] {
    const fs::path src = stories15m_llama2c_dir();
    if (src.empty()) return;
    const fs::path out = temp_dir("lmtune-stories15M") / "hf";
    import_llama2c(src / "model.bin", src / "tokenizer.bin", out);
    dir = out;
  });
  return dir;
}

namespace {
void write_random_weights(const fs::path& dir, const LlamaConfig& cfg, uint64_t seed, const std::string& skip,
                          const std::string& halve) {
  fs::create_directories(dir);
  save_llama_config(dir / "config.json", cfg);
  auto alloc = Allocator::create(Device::cpu());
  LlamaModel model(cfg, *alloc);
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::normal_distribution<float> n(0.0f, 0.2f);
  SafeTensorsWriter w;
  for (ParamRef& p : model.parameters()) {
    float* d = p.value.data<float>();
    const bool norm = p.value.dim() == 1 && p.name.find("norm") != std::string::npos;
    for (int64_t i = 0; i < p.value.numel(); ++i) d[i] = norm ? 1.0f + 0.1f * n(rng) : n(rng);
    if (p.name == skip) continue;
    w.add(p.name, p.name == halve ? p.value.view(0, {p.value.numel() / 2}) : p.value);
  }
  w.write(dir / "model.safetensors");
}
}  // namespace

void write_random_model(const fs::path& dir, const LlamaConfig& cfg, uint64_t seed, const std::string& skip,
                        const std::string& halve) {
  write_random_weights(dir, cfg, seed, skip, halve);
  Tokenizer::from_llama2c(stories15m_llama2c_dir() / "tokenizer.bin").save_hf_json(dir / "tokenizer.json");
}

fs::path write_tiny_train_model(const fs::path& dir, uint64_t seed) {
  LlamaConfig cfg;
  cfg.hidden_size = 32;
  cfg.intermediate_size = 64;
  cfg.num_hidden_layers = 2;
  cfg.num_attention_heads = 4;
  cfg.num_key_value_heads = 2;
  cfg.vocab_size = 32000;
  cfg.max_position_embeddings = 64;
  cfg.tie_word_embeddings = true;
  write_random_model(dir, cfg, seed);
  return dir;
}

void write_random_model_with_tokenizer(const fs::path& dir, const LlamaConfig& cfg, uint64_t seed,
                                       const fs::path& tokenizer_dir) {
  write_random_weights(dir, cfg, seed, "", "");
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
    fs::copy_file(tokenizer_dir / f, dir / f, fs::copy_options::overwrite_existing);
}

fs::path real_tokenizer_dir(const std::string& name) {
  const fs::path root = fs::path(LMTUNE_MODELS_DIR) / "tokenizers";
  const fs::path d = root / name;
  if (fs::exists(root / ".complete") && fs::exists(d / "tokenizer.json") && fs::exists(d / "tokenizer_config.json"))
    return d;
  return {};
}

fs::path hf_tokenizers_js_dir() {
  const fs::path d = fs::path(LMTUNE_MODELS_DIR) / "tokenizers" / "hf-tokenizers-js";
  if (!fs::exists(d / "dist" / "tokenizers.mjs")) return {};
  if (run_command("node --version").exit_code != 0) return {};
  return d;
}

void write_fox_and_bear_texts(const fs::path& dir) {
  fs::create_directories(dir);
  std::ofstream(dir / "a.txt")
      << "Once upon a time there was a little fox who lived in the woods. Every morning the fox ran to the "
         "river to drink and to look at the fish. One day the fox met a bear, and they became friends.\n";
  std::ofstream(dir / "b.txt")
      << "The bear and the fox walked together through the forest. They found berries and honey, and they "
         "shared everything. When winter came, the bear slept and the fox kept watch over the cave.\n";
}

RunResult run_command(const std::string& cmd) {
  const fs::path d = temp_dir("lmtune-run");
  const std::string full = cmd + " >" + (d / "out").string() + " 2>" + (d / "err").string();
  const int status = std::system(full.c_str());
  RunResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  r.out = slurp(d / "out");
  r.err = slurp(d / "err");
  return r;
}

RunResult run_lmtune(const std::string& args) { return run_command(std::string(LMTUNE_BINARY) + " " + args); }

Background start_lmtune(const std::string& args) {
  Background b;
  const fs::path d = temp_dir("lmtune-bg");
  b.out = d / "out";
  b.err = d / "err";
  const std::string cmd =
      "exec " + std::string(LMTUNE_BINARY) + " " + args + " >" + b.out.string() + " 2>" + b.err.string();
  const pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  b.pid = pid;
  return b;
}

RunResult wait_lmtune(const Background& b) {
  int status = 0;
  while (waitpid(b.pid, &status, 0) < 0 && errno == EINTR) {
  }
  RunResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  r.out = slurp(b.out);
  r.err = slurp(b.err);
  return r;
}

std::vector<std::string> logged_losses(const fs::path& run_dir) {
  std::vector<std::string> out;
  std::ifstream in(run_dir / "metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) out.push_back(std::to_string(j["step"].get<int64_t>()) + ":" + j["loss"].dump());
  }
  return out;
}

std::map<std::string, std::vector<float>> read_checkpoint_tensors(const fs::path& checkpoint_dir) {
  const CheckpointReader r = CheckpointReader::open(checkpoint_dir);
  auto alloc = Allocator::create(Device::cpu());
  std::map<std::string, std::vector<float>> out;
  for (const std::string& name : r.names()) {
    Tensor t = Tensor::empty(*alloc, r.shape(name), DType::f32, MemCategory::workspace);
    r.read_full(name, t);
    out[name] = t.to_f32();
  }
  return out;
}

}  // namespace lmtune::testing
