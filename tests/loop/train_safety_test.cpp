// The training loop's checks (in process, on a tiny random model): resuming refuses a config
// or data that would continue another run, naming each key that changed; cut and dropped
// examples are reported and logged; a LoRA rank no layer can hold is refused; and the
// out-of-memory advice names only what exists. Each test names the finding of issue 6 it
// covers; each failed on the code before the fix.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "common/test_models.h"
#include "trainer/loop/resume_check.h"
#include "trainer/loop/train_config.h"
#include "trainer/loop/trainer.h"

namespace lmtune {
namespace {

namespace fs = std::filesystem;

class TrainSafety : public ::testing::Test {
 protected:
  void SetUp() override {
    if (testing::stories15m_llama2c_dir().empty()) GTEST_SKIP() << "stories15M (its tokenizer) not fetched";
    root_ = testing::temp_dir("lmtune-train-safety");
    model_ = testing::write_tiny_train_model(root_ / "model");
    testing::write_fox_and_bear_texts(root_ / "data");
  }

  TrainConfig config(const fs::path& out, std::vector<std::string> overrides = {}) {
    const fs::path file = root_ / "cfg.yaml";
    std::ofstream(file) << "model: {path: " << model_.string() << "}\n"
                        << "method: {type: lora, lora: {rank: 4, alpha: 8, dropout: 0.1, target_modules: all-linear}}\n"
                        << "data: {format: text, train_files: [" << (root_ / "data" / "*.txt").string()
                        << "], seq_len: 16}\n"
                        << "train: {max_steps: 4, micro_batch_size: 2, lr: 0.003, eval_every: 0, sample_tokens: 0, "
                        << "threads: 1, save_every: 2}\n"
                        << "output: {dir: " << out.string() << "}\n";
    return load_train_config(file, overrides);
  }

  static TrainSummary run(const TrainConfig& c, std::ostream* log_out = nullptr) {
    auto alloc = Allocator::create(Device::cpu());
    std::ostringstream log;
    const TrainSummary s = train(c, *alloc, log_out ? Progress::lines : Progress::quiet, log_out ? *log_out : log);
    return s;
  }

  // The message of the Error train() throws ("" when it does not throw).
  static std::string error_of(const TrainConfig& c) {
    try {
      run(c);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  }

  // A finished run whose checkpoint-2 is resumed by the tests.
  fs::path trained() {
    const fs::path out = root_ / "run";
    run(config(out));
    fs::remove_all(out / "checkpoint-4");
    return out;
  }

  fs::path root_, model_;
};

#define EXPECT_HAS(text, part) EXPECT_NE((text).find(part), std::string::npos) << "'" << (part) << "' not in: " << (text)

// ---- finding 7: resume refuses what would continue another run ------------------------------

TEST_F(TrainSafety, ResumeNamesEveryKeyThatMustNotChange) {
  const fs::path out = trained();
  const std::string m = error_of(config(out, {"train.resume_from=auto", "data.seq_len=12", "train.micro_batch_size=1",
                                              "method.lora.alpha=16"}));
  EXPECT_HAS(m, "cannot resume '" + (out / "checkpoint-2").string() + "'");
  EXPECT_HAS(m, "data.seq_len (saved: 16, now: 12)");
  EXPECT_HAS(m, "train.micro_batch_size x parallel.dp, the global micro-batch (saved: 2 x 1, now: 1 x 1)");
  EXPECT_HAS(m, "method.lora.alpha (saved: 8.0, now: 16.0)");
  EXPECT_HAS(m, "README");
  EXPECT_EQ(m.find("train.lr"), std::string::npos) << m;
  EXPECT_TRUE(fs::exists(out / "checkpoint-2")) << "a refused resume changes nothing";
}

TEST_F(TrainSafety, ResumeRefusesAnotherModelOfTheSameShapes) {
  const fs::path out = trained();
  const fs::path other = testing::write_tiny_train_model(root_ / "other-model", 12);
  const std::string m = error_of(config(out, {"train.resume_from=auto", "model.path=" + other.string()}));
  EXPECT_HAS(m, "model.path (saved: " + model_.string() + ", now: " + other.string() + ")");
}

TEST_F(TrainSafety, ResumingALoraCheckpointAsFullFineTuningSaysSo) {
  const fs::path out = trained();
  const std::string m = error_of(config(out, {"train.resume_from=auto", "method.type=full"}));
  EXPECT_HAS(m, "cannot resume '" + (out / "checkpoint-2").string() + "' as full fine-tuning");
  EXPECT_HAS(m, "LoRA");
  EXPECT_HAS(m, "lmtune export");
}

TEST_F(TrainSafety, ResumeRefusesChangedDataFilesUnderTheSamePattern) {
  const fs::path out = trained();
  std::ofstream(root_ / "data" / "c.txt") << "A third story, about an owl who could not sleep at night at all.\n";
  const std::string m = error_of(config(out, {"train.resume_from=auto"}));
  EXPECT_HAS(m, "the training data is not what it was trained on");
  EXPECT_HAS(m, "data.train_files");
  fs::remove(root_ / "data" / "c.txt");
  std::ofstream(root_ / "data" / "b.txt", std::ios::app) << "The end.\n";
  EXPECT_HAS(error_of(config(out, {"train.resume_from=auto"})), "the training data is not what it was trained on");
}

TEST_F(TrainSafety, ResumeAcceptsTheKeysThatMayChange) {
  const fs::path out = trained();
  const TrainSummary s = run(config(out, {"train.resume_from=auto", "train.max_steps=5", "train.lr=0.001",
                                          "train.warmup_steps=1", "train.schedule=linear", "train.weight_decay=0.1",
                                          "train.max_grad_norm=0.5", "train.adam_beta2=0.99", "train.seed=7",
                                          "method.lora.dropout=0", "train.threads=2", "train.log_every=1",
                                          "train.eval_every=1", "train.save_every=0"}));
  EXPECT_EQ(s.steps, 5);
  EXPECT_TRUE(fs::exists(out / "checkpoint-5"));
}

TEST(ResumeCheck, TheFixedKeysAreConfigKeys) {
  const std::vector<std::string> all = train_config_keys();
  for (const std::string& k : resume_fixed_keys())
    EXPECT_NE(std::find(all.begin(), all.end(), k), all.end()) << k << " is not a config key";
  for (const std::string& k : resume_fixed_keys()) EXPECT_NE(k.rfind("parallel.", 0), 0u) << k;
}

// ---- finding 8: cut and dropped examples are said and logged -------------------------------

TEST_F(TrainSafety, WithoutPackingCutAndDroppedExamplesAreReported) {
  // Six Alpaca records under a short template, rows of 17 tokens: three fit; two have a long
  // response (cut, kept: their response starts inside the row); one has a long instruction
  // (cut, and dropped: no response token is left in the row).
  std::string forty;
  for (int i = 0; i < 40; ++i) forty += "fox ";
  std::ofstream f(root_ / "alpaca.jsonl");
  f << R"({"instruction": "Hi", "output": "Hello"})" << "\n"
    << R"({"instruction": "Go", "output": "Ok"})" << "\n"
    << R"({"instruction": "Run", "output": "Yes"})" << "\n"
    << R"({"instruction": "Tell", "output": ")" << forty << "\"}\n"
    << R"({"instruction": "Say", "output": ")" << forty << "\"}\n"
    << R"({"instruction": ")" << forty << R"(", "output": "Yes"})" << "\n";
  f.close();
  const fs::path out = root_ / "alpaca-run";
  std::ostringstream log;
  run(config(out, {"data.format=alpaca", "data.train_files=[" + (root_ / "alpaca.jsonl").string() + "]",
                   "data.packing=false", "data.prompt_template='Q: {instruction} A:'", "train.max_steps=1"}),
      &log);
  EXPECT_HAS(log.str(), "data: of 6 training examples, 3 were longer than data.seq_len + 1 = 17 tokens and cut (");
  EXPECT_HAS(log.str(), "and 1 was dropped: no trained token in the first 17; raise data.seq_len or set "
                        "data.packing=true to keep them\n");
  std::ifstream in(out / "metrics.jsonl");
  std::string first;
  std::getline(in, first);
  const auto j = nlohmann::json::parse(first);
  EXPECT_EQ(j["step"], 0);
  EXPECT_EQ(j["data"]["train"]["examples"], 6);
  EXPECT_EQ(j["data"]["train"]["truncated_examples"], 3);
  EXPECT_EQ(j["data"]["train"]["dropped_rows"], 1);
  EXPECT_EQ(j["data"]["train"]["rows"], 5);
  EXPECT_GE(j["data"]["train"]["truncated_tokens"].get<int64_t>(), 3 * (40 - 17));
}

// ---- finding 9: a LoRA rank no layer can hold ------------------------------------------------

TEST_F(TrainSafety, LoraRankAboveALayersSmallerDimensionIsRefused) {
  // k_proj maps 32 -> 2 KV heads x 8 = 16
  const fs::path out = root_ / "rank";
  const std::string m = error_of(config(out, {"method.lora.rank=20", "method.lora.target_modules=[q, k]"}));
  EXPECT_HAS(m, "method.lora.rank = 20 is larger than the smaller dimension of self_attn.k_proj (in_features 32, "
                "out_features 16");
  EXPECT_HAS(m, "at most 16");
  EXPECT_FALSE(fs::exists(out)) << "refused before it wrote anything";
  EXPECT_EQ(error_of(config(out, {"method.lora.rank=16", "method.lora.target_modules=[q, k]",
                                  "train.max_steps=1"})),
            "");
}

// ---- finding 12: the out-of-memory advice names what exists ----------------------------------

TEST_F(TrainSafety, OutOfMemoryAdviceNamesOnlyWhatExists) {
  const TrainConfig c = config(root_ / "oom", {"method.type=full"});
  auto alloc = Allocator::create(Device::cpu(), 3 << 20);  // less than the weights
  std::ostringstream log;
  try {
    train(c, *alloc, Progress::quiet, log);
    FAIL() << "expected out of memory";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(e.kind(), ErrorKind::out_of_memory);
    EXPECT_HAS(m, "a smaller train.micro_batch_size (now 2) with more train.grad_accum_steps (now 1)");
    EXPECT_HAS(m, "a shorter data.seq_len (now 16)");
    EXPECT_HAS(m, "LoRA instead of full fine-tuning (method.type: lora)");
    EXPECT_HAS(m, "activation recompute (parallel.recompute: full, or selective; now none)");
    for (const char* absent : {"lmtune plan", "shards", "offload", "ZeRO"})
      EXPECT_EQ(m.find(absent), std::string::npos) << absent << " does not exist yet: " << m;
  }
}

}  // namespace
}  // namespace lmtune
