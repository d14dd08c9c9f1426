// Every example in configs/ runs as it is: each trains for two steps (on stories15M, into a
// temporary run directory, evaluation and samples off), so a key that drifts from the
// schema, a data file that is not shipped or a seq_len the model cannot hold fails here.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include "common/test_models.h"
#include "trainer/loop/train_config.h"
#include "trainer/loop/trainer.h"

namespace lmtune {
namespace {

namespace fs = std::filesystem;

// Empty when what configs/<name> trains on has been fetched, else the reason to skip.
std::string missing_inputs(const std::string& name) {
  if (testing::stories15m_hf_dir().empty()) return "stories15M not fetched (scripts/fetch_model.sh)";
  const fs::path src(LMTUNE_SOURCE_DIR);
  std::ifstream f(src / "configs" / name);
  const std::string text((std::istreambuf_iterator<char>(f)), {});
  if (text.find("models/moby-dick") != std::string::npos && !fs::exists(src / "models" / "moby-dick" / ".complete"))
    return "Moby-Dick not fetched (scripts/fetch_data.sh)";
  return "";
}

// Trains configs/<name> for two steps on the model in `hf` (stories15M when empty).
TrainSummary run_config_for_two_steps(const std::string& name, fs::path hf = {}) {
  if (hf.empty()) hf = testing::stories15m_hf_dir();
  const fs::path src(LMTUNE_SOURCE_DIR);
  const fs::path out = testing::temp_dir("lmtune-configs") / "run";
  // relative paths in the examples are relative to the repository root
  const fs::path cwd = fs::current_path();
  fs::current_path(src);
  std::vector<std::string> overrides = {"model.path=" + hf.string(), "output.dir=" + out.string(),
                                        "train.epochs=null",         "train.max_steps=2",
                                        "train.warmup_steps=0",      "train.eval_every=0",
                                        "train.eval_batches=1",      "train.sample_tokens=0",
                                        "train.save_every=0",        "train.resume_from=null",
                                        "train.micro_batch_size=2",  "train.grad_accum_steps=1"};
  TrainSummary s;
  try {
    const TrainConfig c = load_train_config(src / "configs" / name, overrides);
    auto alloc = Allocator::create(Device::cpu());
    std::ostringstream log;
    s = train(c, *alloc, Progress::quiet, log);
  } catch (...) {
    fs::current_path(cwd);
    throw;
  }
  fs::current_path(cwd);
  EXPECT_TRUE(fs::exists(out / "checkpoint-2" / "index.json"));
  return s;
}

#define EXPECT_CONFIG_TRAINS(name)                                   \
  do {                                                               \
    const std::string why = missing_inputs(name);                    \
    if (!why.empty()) GTEST_SKIP() << why;                           \
    const TrainSummary s = run_config_for_two_steps(name);           \
    EXPECT_EQ(s.steps, 2);                                           \
    EXPECT_TRUE(std::isfinite(s.last_loss)) << s.last_loss;          \
  } while (0)

TEST(ConfigExamples, DemoLora) { EXPECT_CONFIG_TRAINS("demo_lora.yaml"); }
TEST(ConfigExamples, DemoQlora) { EXPECT_CONFIG_TRAINS("demo_qlora.yaml"); }
TEST(ConfigExamples, DemoQat) { EXPECT_CONFIG_TRAINS("demo_qat.yaml"); }
TEST(ConfigExamples, FullFinetune) { EXPECT_CONFIG_TRAINS("full_finetune.yaml"); }
TEST(ConfigExamples, AlpacaLora) { EXPECT_CONFIG_TRAINS("alpaca_lora.yaml"); }
TEST(ConfigExamples, ChatLora) { EXPECT_CONFIG_TRAINS("chat_lora.yaml"); }

// The Llama 3 chat example on a random small model of that architecture (GQA, rope_theta
// 500000, no rope_scaling) with the real Llama 3 tokenizer and chat template: auto-detection
// picks the llama3 renderer, and the run trains as shipped.
TEST(ConfigExamples, Llama3ChatLora) {
  const fs::path tdir = testing::real_tokenizer_dir("llama3");
  if (tdir.empty()) GTEST_SKIP() << "models/tokenizers not fetched (scripts/fetch_tokenizers.sh)";
  LlamaConfig cfg;
  cfg.hidden_size = 64;
  cfg.intermediate_size = 192;
  cfg.num_hidden_layers = 2;
  cfg.num_attention_heads = 4;
  cfg.num_key_value_heads = 2;
  cfg.vocab_size = 128256;
  cfg.rope_theta = 500000.0;
  cfg.rms_norm_eps = 1e-5;
  cfg.max_position_embeddings = 1024;
  cfg.tie_word_embeddings = true;
  cfg.bos_token_id = 128000;
  cfg.eos_token_id = 128001;
  const fs::path model = testing::temp_dir("lmtune-configs-llama3") / "model";
  testing::write_random_model_with_tokenizer(model, cfg, 3, tdir);
  const TrainSummary s = run_config_for_two_steps("llama3_chat_lora.yaml", model);
  EXPECT_EQ(s.steps, 2);
  EXPECT_TRUE(std::isfinite(s.last_loss)) << s.last_loss;
  // A random model over 128256 tokens starts near ln(128256) = 11.76 nats per token.
  EXPECT_GT(s.last_loss, 9.0);
  EXPECT_LT(s.last_loss, 15.0);
}

}  // namespace
}  // namespace lmtune
