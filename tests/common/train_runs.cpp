#include "common/train_runs.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

namespace lmtune::testing {

namespace fs = std::filesystem;

std::string quoted(const fs::path& p) {
  std::string s = "'";  // not "'" + ...: GCC 12 warns (-Wrestrict) on that falsely
  s += p.string();
  s += "'";
  return s;
}

std::vector<double> read_losses(const fs::path& dir) {
  std::vector<double> out;
  std::ifstream in(dir / "metrics.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) out.push_back(j["loss"].get<double>());
  }
  return out;
}

Tensors checkpoint_parameters(const fs::path& checkpoint) {
  Tensors all = read_checkpoint_tensors(checkpoint);
  std::erase_if(all, [](const auto& kv) { return kv.first.ends_with(".exp_avg") || kv.first.ends_with(".exp_avg_sq"); });
  return all;
}

double weight_error(const Tensors& a, const Tensors& b) {
  EXPECT_EQ(a.size(), b.size());
  double diff = 0, ref = 0;
  for (const auto& [name, vb] : b) {
    const auto it = a.find(name);
    if (it == a.end()) {
      ADD_FAILURE() << name << " missing";
      continue;
    }
    EXPECT_EQ(it->second.size(), vb.size()) << name;
    for (size_t i = 0; i < vb.size() && i < it->second.size(); ++i) {
      diff = std::max(diff, static_cast<double>(std::fabs(it->second[i] - vb[i])));
      ref = std::max(ref, static_cast<double>(std::fabs(vb[i])));
    }
  }
  return diff / std::max(ref, 1e-30);
}

void expect_losses_near(const std::vector<double>& got, const std::vector<double>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_LE(std::fabs(got[i] - want[i]) / std::fabs(want[i]), 1e-5)
        << what << ", step " << i + 1 << ": " << got[i] << " vs " << want[i];
}

void expect_memory_predicted_exactly(const TrainRun& r, int ranks) {
  ASSERT_TRUE(r.memory.is_array()) << r.dir;
  ASSERT_EQ(r.memory.size(), static_cast<size_t>(ranks)) << r.memory.dump();
  for (int k = 0; k < ranks; ++k) {
    const auto& m = r.memory[k];
    const std::string where = r.dir.string() + " rank " + std::to_string(k);
    EXPECT_EQ(m["rank"].get<int>(), k);
    EXPECT_GT(m["peak_allocated"].get<int64_t>(), 0);
    EXPECT_GT(m["peak_rss"].get<int64_t>(), m["peak_reserved"].get<int64_t>() / 2);
    EXPECT_EQ(m["predicted_peak_allocated"].get<int64_t>(), m["peak_allocated"].get<int64_t>()) << where;
    EXPECT_EQ(m["predicted_peak_reserved"].get<int64_t>(), m["peak_reserved"].get<int64_t>()) << where;
    EXPECT_EQ(m["predicted_by_category"], m["by_category"]) << where;
    const auto& h = m["host"];
    EXPECT_EQ(h["predicted_peak_allocated"].get<int64_t>(), h["peak_allocated"].get<int64_t>()) << where << " (host)";
    EXPECT_EQ(h["predicted_peak_reserved"].get<int64_t>(), h["peak_reserved"].get<int64_t>()) << where << " (host)";
    EXPECT_EQ(h["predicted_by_category"], h["by_category"]) << where << " (host)";
  }
}

TinyTraining::TinyTraining(const fs::path& root, bool tied) : root_(root) {
  LlamaConfig cfg;
  cfg.hidden_size = 30;  // divides by none of 4, ... and the flat groups neither by 3
  cfg.intermediate_size = 46;
  cfg.num_hidden_layers = 3;
  cfg.num_attention_heads = 3;
  cfg.num_key_value_heads = 1;
  cfg.vocab_size = 32000;
  cfg.max_position_embeddings = 64;
  cfg.tie_word_embeddings = tied;
  write_random_model(root_ / "model", cfg, 5);
  const fs::path moby = fs::path(LMTUNE_MODELS_DIR) / "moby-dick";
  fs::create_directories(root_ / "train");
  fs::create_directories(root_ / "val");
  fs::copy_file(moby / "train" / "001.txt", root_ / "train" / "001.txt");
  fs::copy_file(moby / "train" / "002.txt", root_ / "train" / "002.txt");
  fs::copy_file(moby / "validation" / fs::directory_iterator(moby / "validation")->path().filename(),
                root_ / "val" / "v.txt");
  std::ofstream(root_ / "cfg.yaml")
      << "model: {path: " << (root_ / "model").string() << "}\n"
      << "method: {type: lora, lora: {rank: 4, alpha: 8, dropout: 0.1, target_modules: all-linear}}\n"
      << "data: {format: text, train_files: [" << (root_ / "train" / "*.txt").string() << "], validation_files: ["
      << (root_ / "val" / "*.txt").string() << "], seq_len: 32}\n"
      << "train: {max_steps: 6, micro_batch_size: 12, grad_accum_steps: 2, lr: 0.003, warmup_steps: 1, "
      << "weight_decay: 0.01, max_grad_norm: 1.0, eval_every: 3, eval_batches: 2, sample_tokens: 6, "
      << "save_every: 3, threads: 1, log_every: 1}\n"
      << "output: {dir: " << (root_ / "unused").string() << "}\n";
}

TrainRun TinyTraining::train(const std::string& name, int ranks, const std::string& overrides) const {
  TrainRun r;
  r.dir = root_ / name;
  const std::string args = "train " + quoted(config()) + " output.dir=" + quoted(r.dir) +
                           " train.micro_batch_size=" + std::to_string(12 / ranks) + " " + overrides + " --quiet";
  r.result = run_lmtune(ranks == 1 ? args
                                   : "launch --nproc-per-node " + std::to_string(ranks) + " --grace-period 2 -- " + args);
  r.losses = read_losses(r.dir);
  std::ifstream mem(r.dir / "memory.json");
  if (mem) r.memory = nlohmann::json::parse(mem);
  return r;
}

}  // namespace lmtune::testing
