// Activation recompute through the training loop (train() in process): with
// parallel.recompute full or selective, a run's per-step losses and final weights equal
// those of recompute none bit for bit — LoRA with dropout 0.1 and full fine-tuning, a Llama
// and a Qwen3 model (q/k norms), gradient accumulation 2 — and a run saved under none
// resumes under full bit-identically (LoRA). Every run's meta prediction of its peaks
// equals the measured ones, and the activation peak falls from none to selective to full.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "common/test_models.h"
#include "trainer/loop/train_config.h"
#include "trainer/loop/trainer.h"

namespace lmtune {
namespace {

namespace fs = std::filesystem;

class RecomputeTraining : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (testing::stories15m_llama2c_dir().empty()) return;
    root_ = new fs::path(testing::temp_dir("lmtune-recompute"));
    for (const char* family : {"llama", "qwen3"}) {
      LlamaConfig cfg;
      cfg.family = std::string(family) == "qwen3" ? ModelFamily::qwen3 : ModelFamily::llama;
      cfg.hidden_size = 32;
      cfg.intermediate_size = 56;
      cfg.num_hidden_layers = 2;
      cfg.num_attention_heads = 4;
      cfg.num_key_value_heads = 2;
      if (cfg.family == ModelFamily::qwen3) cfg.attention_head_dim = 12;
      cfg.vocab_size = 32000;
      cfg.max_position_embeddings = 64;
      cfg.tie_word_embeddings = true;
      testing::write_random_model(*root_ / family, cfg, 13);
    }
    fs::create_directories(*root_ / "data");
    std::ofstream(*root_ / "data" / "a.txt")
        << "Once upon a time there was a little fox who lived in the woods. Every morning the fox ran to the "
           "river to drink and to look at the fish. One day the fox met a bear, and they became friends. The "
           "bear and the fox walked together through the forest. They found berries and honey.\n";
  }
  static void TearDownTestSuite() {
    delete root_;
    root_ = nullptr;
  }
  void SetUp() override {
    if (root_ == nullptr) GTEST_SKIP() << "stories15M (its tokenizer) not fetched";
  }

  struct Run {
    std::vector<double> losses;
    std::map<std::string, std::vector<float>> weights;  // the last checkpoint
    TrainSummary summary;
  };

  static Run train_run(const std::string& family, const std::string& method, const std::string& name,
                       const std::vector<std::string>& overrides) {
    const fs::path out = *root_ / (family + "-" + method + "-" + name);
    std::ofstream(*root_ / "cfg.yaml")
        << "model: {path: " << (*root_ / family).string() << "}\n"
        << "method: {type: " << method << ", lora: {rank: 4, alpha: 8, dropout: 0.1, target_modules: all-linear}}\n"
        << "data: {format: text, train_files: [" << (*root_ / "data" / "*.txt").string() << "], seq_len: 16}\n"
        << "train: {max_steps: 4, micro_batch_size: 2, grad_accum_steps: 2, lr: 0.003, warmup_steps: 1, "
        << "weight_decay: 0.01, max_grad_norm: 1.0, eval_every: 0, sample_tokens: 0, save_every: 2, threads: 1, "
        << "log_every: 1, seed: 5}\n"
        << "output: {dir: " << out.string() << "}\n";
    const TrainConfig c = load_train_config(*root_ / "cfg.yaml", overrides);
    auto alloc = Allocator::create(Device::cpu());
    std::ostringstream log;
    Run r;
    r.summary = train(c, *alloc, Progress::quiet, log);
    std::ifstream in(out / "metrics.jsonl");
    std::string line;
    while (std::getline(in, line)) {
      const auto j = nlohmann::json::parse(line);
      if (j.contains("loss")) r.losses.push_back(j["loss"].get<double>());
    }
    r.weights = testing::read_checkpoint_tensors(r.summary.last_checkpoint);
    return r;
  }

  static void expect_predicted_exactly(const Run& r) {
    ASSERT_EQ(r.summary.memory.size(), 1u);
    const RankMemory& m = r.summary.memory[0];
    EXPECT_EQ(m.predicted.allocated.peak, m.measured.allocated.peak);
    EXPECT_EQ(m.predicted.reserved.peak, m.measured.reserved.peak);
    for (int c = 0; c < kNumMemCategories; ++c)
      EXPECT_EQ(m.predicted.category[c].peak, m.measured.category[c].peak)
          << mem_category_name(static_cast<MemCategory>(c));
  }
  static int64_t activation_peak(const Run& r) {
    return r.summary.memory[0].measured.of(MemCategory::activations).peak;
  }

  static fs::path* root_;
};
fs::path* RecomputeTraining::root_ = nullptr;

class RecomputeTrainingModels : public RecomputeTraining,
                                public ::testing::WithParamInterface<std::tuple<std::string, std::string>> {};

TEST_P(RecomputeTrainingModels, SameLossesAndWeightsBitForBit) {
  const auto& [family, method] = GetParam();
  const Run none = train_run(family, method, "none", {});
  ASSERT_EQ(none.losses.size(), 4u);
  EXPECT_FALSE(none.weights.empty());
  expect_predicted_exactly(none);
  const Run selective = train_run(family, method, "selective", {"parallel.recompute=selective"});
  const Run full = train_run(family, method, "full", {"parallel.recompute=full"});
  for (const Run* r : {&selective, &full}) {
    EXPECT_EQ(r->losses, none.losses);
    EXPECT_EQ(r->weights, none.weights);
    expect_predicted_exactly(*r);
  }
  EXPECT_LT(activation_peak(selective), activation_peak(none));
  EXPECT_LT(activation_peak(full), activation_peak(selective));
}

INSTANTIATE_TEST_SUITE_P(Models, RecomputeTrainingModels,
                         ::testing::Combine(::testing::Values("llama", "qwen3"), ::testing::Values("lora", "full")),
                         [](const auto& info) { return std::get<0>(info.param) + "_" + std::get<1>(info.param); });

TEST_F(RecomputeTraining, SavedUnderNoneResumesUnderFullBitIdentically) {
  const Run none = train_run("llama", "lora", "straight", {});
  const fs::path saved = *root_ / "llama-lora-straight" / "checkpoint-2";
  const Run resumed =
      train_run("llama", "lora", "resumed", {"parallel.recompute=full", "train.resume_from=" + saved.string()});
  ASSERT_EQ(resumed.losses.size(), 2u) << "the resumed run logs steps 3 and 4";
  EXPECT_EQ(resumed.losses, std::vector<double>(none.losses.begin() + 2, none.losses.end()));
  EXPECT_EQ(resumed.weights, none.weights);
  expect_predicted_exactly(resumed);
}

}  // namespace
}  // namespace lmtune
