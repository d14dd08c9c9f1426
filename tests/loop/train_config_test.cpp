// The training config: parsing, defaults, overrides, the to_yaml round trip, the example
// configs under configs/, and one test per kind of bad config (each checking that the error
// names the file, the key and the problem).
#include "trainer/loop/train_config.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <string>
#include <vector>

#include "trainer/core/error.h"

namespace lmtune {
namespace {

namespace fs = std::filesystem;

class TrainConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "lmtune_cfg_XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    fs::create_directories(dir_ / "model");
    touch(dir_ / "model" / "config.json", "{}");
    fs::create_directories(dir_ / "data" / "train");
    fs::create_directories(dir_ / "data" / "val");
    touch(dir_ / "data" / "train" / "b.txt", "two");
    touch(dir_ / "data" / "train" / "a.txt", "one");
    touch(dir_ / "data" / "val" / "c.txt", "three");
    touch(dir_ / "adapter.safetensors", "x");
    fs::create_directories(dir_ / "ckpt" / "step_100");
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  static void touch(const fs::path& p, const std::string& text) {
    std::ofstream f(p, std::ios::binary);
    f << text;
  }
  fs::path write(const std::string& name, const std::string& text) const {
    const fs::path p = dir_ / name;
    touch(p, text);
    return p;
  }
  std::string path(const std::string& rel) const { return (dir_ / rel).string(); }

  // A valid config with only the required keys.
  std::string minimal() const {
    return "model:\n  path: " + path("model") +
           "\n"
           "data:\n  train_files: [" +
           path("data/train/*.txt") +
           "]\n"
           "train:\n  max_steps: 100\n"
           "output:\n  dir: " +
           path("run") + "\n";
  }

  // Loads `yaml` (written as bad.yaml) expecting an error; returns its message.
  std::string error_of(const std::string& yaml, const std::vector<std::string>& overrides = {}) const {
    const fs::path file = write("bad.yaml", yaml);
    try {
      load_train_config(file, overrides);
    } catch (const Error& e) {
      return e.what();
    }
    ADD_FAILURE() << "expected an error for:\n" << yaml;
    return {};
  }
  // The error names the file, and contains every one of `parts`.
  void expect_error(const std::string& yaml, std::initializer_list<std::string> parts,
                    const std::vector<std::string>& overrides = {}) const {
    const std::string msg = error_of(yaml, overrides);
    EXPECT_NE(msg.find("bad.yaml"), std::string::npos) << msg;
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "missing '" << p << "' in:\n" << msg;
  }

  fs::path dir_;
};

// Replaces the first occurrence of `from` in `s`.
std::string replace(std::string s, const std::string& from, const std::string& to) {
  const size_t at = s.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at != std::string::npos) s.replace(at, from.size(), to);
  return s;
}

// ---------------------------------------------------------------------------------------
// Valid configs.

TEST_F(TrainConfigTest, FullConfigParsesToTheExpectedValues) {
  const std::string yaml = "model:\n  path: " + path("model") +
                           "\n  dtype: bf16\n"
                           "method:\n"
                           "  type: lora\n"
                           "  lora:\n"
                           "    rank: 16\n"
                           "    alpha: 32\n"
                           "    dropout: 0.05\n"
                           "    rslora: true\n"
                           "    target_modules: [v, q_proj, down]\n"
                           "    init_from: " +
                           path("adapter.safetensors") +
                           "\n"
                           "data:\n"
                           "  format: alpaca\n"
                           "  train_files:\n    - " +
                           path("data/train/*.txt") + "\n    - " + path("data/train/a.txt") +
                           "\n"
                           "  validation_split: {every_nth: 10}\n"
                           "  seq_len: 512\n"
                           "  packing: false\n"
                           "  add_bos: false\n"
                           "  add_eos: no\n"
                           "  prompt_template: \"Q: {instruction}\\nA:\"\n"
                           "  chat_template: llama2\n"
                           "  shuffle: false\n"
                           "  seed: 7\n"
                           "train:\n"
                           "  epochs: 2.5\n"
                           "  micro_batch_size: 4\n"
                           "  grad_accum_steps: 2\n"
                           "  lr: 1e-3\n"
                           "  min_lr_ratio: 0\n"
                           "  weight_decay: 0.01\n"
                           "  adam_beta1: 0.8\n"
                           "  adam_beta2: 0.95\n"
                           "  adam_eps: 1.0e-6\n"
                           "  warmup_steps: 30\n"
                           "  schedule: linear\n"
                           "  max_grad_norm: 0\n"
                           "  seed: 3\n"
                           "  threads: 2\n"
                           "  log_every: 5\n"
                           "  eval_every: 0\n"
                           "  eval_batches: 4\n"
                           "  save_every: 50\n"
                           "  sample_prompt: 'The whale'\n"
                           "  sample_tokens: 0\n"
                           "  resume_from: " +
                           path("ckpt/step_100") +
                           "\n"
                           "parallel: {dp: 1, tp: 1, pp: 1, zero: 0, recompute: none, offload: none}\n"
                           "output:\n  dir: " +
                           path("run") + "\n  overwrite: true\n";
  const TrainConfig c = load_train_config(write("full.yaml", yaml), {});
  EXPECT_EQ(c.model.path, dir_ / "model");
  EXPECT_EQ(c.model.dtype, DType::bf16);
  EXPECT_EQ(c.method.type, MethodType::lora);
  EXPECT_EQ(c.method.lora.rank, 16);
  EXPECT_DOUBLE_EQ(c.method.lora.alpha, 32.0);
  EXPECT_DOUBLE_EQ(c.method.lora.dropout, 0.05);
  EXPECT_TRUE(c.method.lora.rslora);
  EXPECT_DOUBLE_EQ(c.method.lora.scale(), 32.0 / 4.0);
  EXPECT_EQ(c.method.lora.target_modules, (std::vector<LoraTarget>{LoraTarget::q, LoraTarget::v, LoraTarget::down}));
  ASSERT_TRUE(c.method.lora.init_from.has_value());
  EXPECT_EQ(*c.method.lora.init_from, dir_ / "adapter.safetensors");
  EXPECT_EQ(c.data.format, DataFormat::alpaca);
  EXPECT_EQ(c.data.train_files.size(), 2u);
  // The glob's matches sorted; the explicit a.txt is a duplicate and dropped.
  EXPECT_EQ(c.data.train_paths, (std::vector<fs::path>{dir_ / "data/train/a.txt", dir_ / "data/train/b.txt"}));
  EXPECT_TRUE(c.data.validation_files.empty());
  EXPECT_EQ(c.data.validation_split.kind, ValidationSplitKind::every_nth);
  EXPECT_EQ(c.data.validation_split.every_nth, 10);
  EXPECT_EQ(c.data.seq_len, 512);
  EXPECT_FALSE(c.data.packing);
  EXPECT_FALSE(c.data.add_bos);
  EXPECT_FALSE(c.data.add_eos);
  EXPECT_EQ(c.data.prompt_template, "Q: {instruction}\nA:");
  EXPECT_EQ(c.data.chat_template, ChatTemplate::llama2);
  EXPECT_FALSE(c.data.shuffle);
  EXPECT_EQ(c.data.seed, 7u);
  EXPECT_FALSE(c.train.max_steps.has_value());
  ASSERT_TRUE(c.train.epochs.has_value());
  EXPECT_DOUBLE_EQ(*c.train.epochs, 2.5);
  EXPECT_EQ(c.train.micro_batch_size, 4);
  EXPECT_EQ(c.train.grad_accum_steps, 2);
  EXPECT_DOUBLE_EQ(c.train.lr, 1e-3);
  EXPECT_DOUBLE_EQ(c.train.min_lr_ratio, 0.0);
  EXPECT_DOUBLE_EQ(c.train.weight_decay, 0.01);
  EXPECT_DOUBLE_EQ(c.train.adam_beta1, 0.8);
  EXPECT_DOUBLE_EQ(c.train.adam_beta2, 0.95);
  EXPECT_DOUBLE_EQ(c.train.adam_eps, 1e-6);
  EXPECT_EQ(c.train.warmup_steps, 30);
  EXPECT_EQ(c.train.schedule, LrSchedule::linear);
  EXPECT_DOUBLE_EQ(c.train.max_grad_norm, 0.0);
  EXPECT_EQ(c.train.seed, 3u);
  EXPECT_EQ(c.train.threads, 2);
  EXPECT_EQ(c.train.log_every, 5);
  EXPECT_EQ(c.train.eval_every, 0);
  EXPECT_EQ(c.train.eval_batches, 4);
  EXPECT_EQ(c.train.save_every, 50);
  EXPECT_EQ(c.train.sample_prompt, "The whale");
  EXPECT_EQ(c.train.sample_tokens, 0);
  EXPECT_EQ(c.train.resume_from.mode, ResumeMode::checkpoint);
  EXPECT_EQ(c.train.resume_from.dir, dir_ / "ckpt/step_100");
  ParallelSection one_rank;
  one_rank.dp = 1;
  EXPECT_EQ(c.parallel, one_rank);
  EXPECT_EQ(c.output.dir, dir_ / "run");
  EXPECT_TRUE(c.output.overwrite);
}

TEST_F(TrainConfigTest, DefaultsAreFilledIn) {
  const TrainConfig c = load_train_config(write("min.yaml", minimal()), {});
  EXPECT_EQ(c.model.dtype, DType::f32);
  EXPECT_EQ(c.method.type, MethodType::lora);
  EXPECT_EQ(c.method.lora, LoraSection{});
  EXPECT_EQ(c.method.lora.rank, 8);
  EXPECT_DOUBLE_EQ(c.method.lora.alpha, 16.0);
  EXPECT_DOUBLE_EQ(c.method.lora.scale(), 2.0);
  EXPECT_EQ(c.method.lora.target_modules, (std::vector<LoraTarget>{LoraTarget::q, LoraTarget::v}));
  EXPECT_FALSE(c.method.lora.init_from.has_value());
  EXPECT_EQ(c.data.format, DataFormat::text);
  EXPECT_EQ(c.data.train_paths.size(), 2u);
  EXPECT_EQ(c.data.validation_split.kind, ValidationSplitKind::none);
  EXPECT_EQ(c.data.seq_len, 256);
  EXPECT_TRUE(c.data.packing && c.data.add_bos && c.data.add_eos && c.data.shuffle);
  EXPECT_TRUE(c.data.prompt_template.empty());  // the data pipeline's Stanford templates
  EXPECT_EQ(c.data.chat_template, ChatTemplate::auto_detect);
  EXPECT_EQ(c.data.seed, 0u);
  EXPECT_EQ(c.train.max_steps, 100);
  EXPECT_FALSE(c.train.epochs.has_value());
  EXPECT_EQ(c.train.micro_batch_size, 8);
  EXPECT_EQ(c.train.grad_accum_steps, 1);
  EXPECT_DOUBLE_EQ(c.train.lr, 3e-4);
  EXPECT_DOUBLE_EQ(c.train.min_lr_ratio, 0.1);
  EXPECT_DOUBLE_EQ(c.train.weight_decay, 0.0);
  EXPECT_DOUBLE_EQ(c.train.adam_beta1, 0.9);
  EXPECT_DOUBLE_EQ(c.train.adam_beta2, 0.999);
  EXPECT_DOUBLE_EQ(c.train.adam_eps, 1e-8);
  EXPECT_EQ(c.train.warmup_steps, 0);
  EXPECT_EQ(c.train.schedule, LrSchedule::cosine);
  EXPECT_DOUBLE_EQ(c.train.max_grad_norm, 1.0);
  EXPECT_EQ(c.train.threads, 0);
  EXPECT_EQ(c.train.log_every, 10);
  EXPECT_EQ(c.train.eval_every, 100);
  EXPECT_EQ(c.train.eval_batches, 20);
  EXPECT_EQ(c.train.save_every, 0);
  EXPECT_EQ(c.train.sample_prompt, "Once upon a time");
  EXPECT_EQ(c.train.sample_tokens, 40);
  EXPECT_EQ(c.train.resume_from.mode, ResumeMode::none);
  EXPECT_EQ(c.parallel, ParallelSection{});
  EXPECT_FALSE(c.output.overwrite);
}

TEST_F(TrainConfigTest, OverridesApplyBeforeValidation) {
  const std::string yaml = replace(minimal(), "max_steps: 100", "max_steps: 100\n  lr: fast");  // fixed by override
  const TrainConfig c = load_train_config(
      write("o.yaml", yaml), {"train.lr=1e-4", "method.lora.target_modules=[q,k]", "data.validation_split={fraction: 0.25}",
                              "output.overwrite=true", "parallel.dp=1", "method.lora.rank = 4", "train.resume_from=auto",
                              "data.validation_files=" + path("data/val/*.txt"), "data.validation_split=",
                              "data.prompt_template=Do {instruction}: {input}", "model.dtype=bfloat16"});
  EXPECT_DOUBLE_EQ(c.train.lr, 1e-4);
  EXPECT_EQ(c.method.lora.target_modules, (std::vector<LoraTarget>{LoraTarget::q, LoraTarget::k}));
  EXPECT_EQ(c.method.lora.rank, 4);
  EXPECT_TRUE(c.output.overwrite);
  EXPECT_EQ(c.train.resume_from.mode, ResumeMode::latest);
  // The later override of validation_split (empty: null) wins over the earlier one.
  EXPECT_EQ(c.data.validation_split.kind, ValidationSplitKind::none);
  EXPECT_EQ(c.data.validation_paths, (std::vector<fs::path>{dir_ / "data/val/c.txt"}));
  EXPECT_EQ(c.data.prompt_template, "Do {instruction}: {input}");
  EXPECT_EQ(c.model.dtype, DType::bf16);
}

TEST_F(TrainConfigTest, AllLinearAndPeftNames) {
  const std::string yaml = minimal() + "method:\n  lora:\n    target_modules: all-linear\n";
  const TrainConfig c = load_train_config(write("a.yaml", yaml), {});
  EXPECT_EQ(c.method.lora.target_modules.size(), 7u);
  const TrainConfig d = load_train_config(
      write("b.yaml", minimal()), {"method.lora.target_modules=[q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]"});
  EXPECT_EQ(c.method.lora.target_modules, d.method.lora.target_modules);
  EXPECT_NE(to_yaml(c).find("target_modules: all-linear"), std::string::npos);
}

TEST_F(TrainConfigTest, RoundTripThroughToYaml) {
  TrainConfig c = load_train_config(write("min.yaml", minimal()), {"data.validation_files=[" + path("data/val/c.txt") + "]"});
  // Non-default values, including strings that YAML would read as something else if unquoted.
  c.model.dtype = DType::f16;
  c.method.type = MethodType::full;
  c.method.lora.rank = 3;
  c.method.lora.alpha = 0.1 + 0.2;  // not exactly representable in short decimal
  c.method.lora.dropout = 1.0 / 3.0;
  c.method.lora.target_modules = {LoraTarget::k, LoraTarget::o, LoraTarget::up};
  c.method.lora.init_from = dir_ / "adapter.safetensors";
  c.method.qat.scheme = QatScheme::q4_0;
  c.data.format = DataFormat::chat;
  c.data.seq_len = 1024;
  c.data.prompt_template = "  leading spaces {instruction}\n\n### R:\n";
  c.data.chat_template = ChatTemplate::plain;
  c.data.seed = 123456789012345ull;
  c.train.max_steps.reset();
  c.train.epochs = 3.0;
  c.train.lr = 3e-4;
  c.train.adam_eps = 1e-8;
  c.train.min_lr_ratio = 1.0;
  c.train.sample_prompt = "yes";
  c.train.resume_from = {ResumeMode::checkpoint, dir_ / "ckpt/step_100"};
  c.output.overwrite = true;
  for (const std::string prompt : {"yes", "123", "null", "a: b # c", "'quoted'", "", "multi\nline", "- dash", "~"}) {
    c.train.sample_prompt = prompt;
    const std::string text = to_yaml(c);
    const TrainConfig back = load_train_config(write("rt.yaml", text), {});
    EXPECT_EQ(back, c) << text;
  }
  // The other ValidationSplit kinds and the defaults round-trip too.
  TrainConfig m = load_train_config(write("min.yaml", minimal()), {});
  EXPECT_EQ(load_train_config(write("rt.yaml", to_yaml(m)), {}), m) << to_yaml(m);
  m.data.validation_split = {ValidationSplitKind::fraction, 0, 0.05};
  EXPECT_EQ(load_train_config(write("rt.yaml", to_yaml(m)), {}), m) << to_yaml(m);
  m.data.validation_split = {ValidationSplitKind::every_nth, 7, 0.0};
  m.train.resume_from = {ResumeMode::latest, {}};
  EXPECT_EQ(load_train_config(write("rt.yaml", to_yaml(m)), {}), m) << to_yaml(m);
}

TEST_F(TrainConfigTest, ToYamlWritesEveryKey) {
  const TrainConfig c = load_train_config(write("min.yaml", minimal()), {});
  const YAML::Node n = YAML::Load(to_yaml(c));
  for (const std::string& key : train_config_keys()) {
    YAML::Node cur = n;
    size_t b = 0;
    std::string rest = key;
    for (size_t d; (d = rest.find('.', b)) != std::string::npos; b = d + 1) cur.reset(cur[rest.substr(b, d - b)]);
    const YAML::Node& leaf = cur;
    EXPECT_TRUE(leaf[rest.substr(b)].IsDefined() || key.find("validation_split.") != std::string::npos) << key;
  }
}

TEST_F(TrainConfigTest, RelativePathsResolveAgainstTheCurrentDirectory) {
  const fs::path rel = fs::relative(dir_, fs::current_path());
  fs::create_directories(dir_ / "sub");
  const std::string yaml = "model: {path: " + (rel / "model").string() + "}\ndata: {train_files: [" +
                           (rel / "data/train/a.txt").string() + "]}\ntrain: {max_steps: 1}\noutput: {dir: " +
                           (rel / "run").string() + "}\n";
  const TrainConfig c = load_train_config(write("sub/cfg.yaml", yaml), {});
  EXPECT_EQ(c.model.path, (fs::current_path() / rel / "model").lexically_normal());
  EXPECT_TRUE(c.model.path.is_absolute());
  EXPECT_EQ(c.data.train_paths, (std::vector<fs::path>{(fs::current_path() / rel / "data/train/a.txt").lexically_normal()}));
  // Relative to the YAML file's directory they would not exist:
  const std::string msg = [&] {
    try {
      load_train_config(write("sub/bad.yaml", replace(yaml, (rel / "model").string(), "model")), {});
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  }();
  EXPECT_NE(msg.find("model.path"), std::string::npos) << msg;
  EXPECT_NE(msg.find("resolved against the current directory"), std::string::npos) << msg;
}

TEST_F(TrainConfigTest, KeyListCoversTheSchema) {
  const std::vector<std::string> keys = train_config_keys();
  for (const char* k : {"model.path", "method.lora.target_modules", "data.validation_split.every_nth", "train.resume_from",
                        "parallel.offload", "output.overwrite"})
    EXPECT_NE(std::find(keys.begin(), keys.end(), k), keys.end()) << k;
}

// Every configs/*.yaml parses, with its input paths pointed at temp files by overrides
// (so a typo in any key of those files fails here).
TEST_F(TrainConfigTest, ExampleConfigsParse) {
  const fs::path configs = fs::path(LMTUNE_SOURCE_DIR) / "configs";
  ASSERT_TRUE(fs::is_directory(configs)) << configs;
  int n = 0;
  for (const auto& entry : fs::directory_iterator(configs)) {
    if (entry.path().extension() != ".yaml") continue;
    SCOPED_TRACE(entry.path().string());
    const YAML::Node y = YAML::LoadFile(entry.path().string());
    std::vector<std::string> overrides = {"model.path=" + path("model"),
                                          "data.train_files=[" + path("data/train/*.txt") + "]"};
    const YAML::Node vf = y["data"] ? y["data"]["validation_files"] : YAML::Node();
    if (vf && !vf.IsNull() && !(vf.IsSequence() && vf.size() == 0))
      overrides.push_back("data.validation_files=[" + path("data/val/*.txt") + "]");
    if (y["method"] && y["method"]["lora"] && y["method"]["lora"]["init_from"] &&
        !y["method"]["lora"]["init_from"].IsNull())
      overrides.push_back("method.lora.init_from=" + path("adapter.safetensors"));
    if (y["train"] && y["train"]["resume_from"] && !y["train"]["resume_from"].IsNull() &&
        y["train"]["resume_from"].as<std::string>() != "auto")
      overrides.push_back("train.resume_from=" + path("ckpt/step_100"));
    TrainConfig c;
    try {
      c = load_train_config(entry.path(), overrides);
    } catch (const Error& e) {
      ADD_FAILURE() << e.what();
      continue;
    }
    // And the resolved form reads back the same.
    EXPECT_EQ(load_train_config(write("rt.yaml", to_yaml(c)), {}), c);
    if (entry.path().filename() == "demo_lora.yaml") {
      EXPECT_EQ(c.method.type, MethodType::lora);
      EXPECT_EQ(c.method.lora.target_modules.size(), 7u);
      EXPECT_EQ(c.method.lora.rank, 8);
      EXPECT_EQ(c.data.format, DataFormat::text);
      EXPECT_EQ(c.data.seq_len, 256);
      EXPECT_EQ(c.train.micro_batch_size, 8);
      EXPECT_EQ(c.train.eval_every, 50);
      EXPECT_EQ(c.output.dir, (fs::current_path() / "runs/demo-lora").lexically_normal());
    }
    if (entry.path().filename() == "alpaca_lora.yaml") {
      EXPECT_EQ(c.data.format, DataFormat::alpaca);
      EXPECT_TRUE(c.data.prompt_template.empty());
    }
    if (entry.path().filename() == "chat_lora.yaml") {
      EXPECT_EQ(c.data.format, DataFormat::chat);
    }
    if (entry.path().filename() == "full_finetune.yaml") {
      EXPECT_EQ(c.method.type, MethodType::full);
    }
    ++n;
  }
  EXPECT_GE(n, 4);
}

// ---------------------------------------------------------------------------------------
// Bad configs: one test per kind of problem.

TEST_F(TrainConfigTest, BadUnknownKeySuggestsTheClosest) {
  expect_error(replace(minimal(), "max_steps: 100", "max_step: 100"),
               {"train.max_step", "unknown key", "did you mean 'train.max_steps'?"});
}

TEST_F(TrainConfigTest, BadUnknownSection) {
  expect_error(minimal() + "trian:\n  lr: 1e-4\n", {"trian", "unknown section", "did you mean 'train'?"});
}

TEST_F(TrainConfigTest, BadKeyInTheWrongSection) {
  expect_error(replace(minimal(), "data:\n", "data:\n  lr: 0.1\n"), {"data.lr", "unknown key", "'train.lr'"});
}

TEST_F(TrainConfigTest, BadUnknownNestedKey) {
  expect_error(minimal() + "method:\n  lora:\n    ranks: 4\n",
               {"method.lora.ranks", "unknown key", "did you mean 'method.lora.rank'?"});
}

TEST_F(TrainConfigTest, BadStringWhereANumberBelongs) {
  expect_error(replace(minimal(), "max_steps: 100", "max_steps: 100\n  lr: fast"),
               {"bad.yaml:", "train.lr: expected a number > 0, got 'fast'"});
}

TEST_F(TrainConfigTest, BadListWhereAScalarBelongs) {
  expect_error(replace(minimal(), "max_steps: 100", "max_steps: 100\n  micro_batch_size: [4, 8]"),
               {"train.micro_batch_size", "expected an integer >= 1", "got a list [4, 8]"});
}

TEST_F(TrainConfigTest, BadFractionWhereAnIntegerBelongs) {
  expect_error(replace(minimal(), "max_steps: 100", "max_steps: 2.5"),
               {"train.max_steps", "expected an integer >= 1", "'2.5'"});
}

TEST_F(TrainConfigTest, BadNegativeLearningRate) {
  expect_error(replace(minimal(), "max_steps: 100", "max_steps: 100\n  lr: -0.001"),
               {"train.lr", "expected a number > 0", "'-0.001'"});
}

TEST_F(TrainConfigTest, BadLoraRankZero) {
  expect_error(minimal() + "method:\n  lora:\n    rank: 0\n", {"method.lora.rank", "expected an integer >= 1", "'0'"});
}

TEST_F(TrainConfigTest, BadLoraDropoutOne) {
  expect_error(minimal() + "method:\n  lora:\n    dropout: 1.0\n",
               {"method.lora.dropout", "expected a number in [0, 1)", "'1.0'"});
}

TEST_F(TrainConfigTest, BadAdamBeta) {
  expect_error(replace(minimal(), "max_steps: 100", "max_steps: 100\n  adam_beta2: 1"),
               {"train.adam_beta2", "expected a number in [0, 1)", "'1'"});
}

TEST_F(TrainConfigTest, BadSeqLenTooShort) {
  expect_error(replace(minimal(), "data:\n", "data:\n  seq_len: 1\n"), {"data.seq_len", "expected an integer >= 2", "'1'"});
}

TEST_F(TrainConfigTest, BadBool) {
  expect_error(replace(minimal(), "data:\n", "data:\n  packing: maybe\n"),
               {"data.packing", "expected true or false", "'maybe'"});
}

TEST_F(TrainConfigTest, BadEnumMethodType) {
  expect_error(minimal() + "method:\n  type: lorra\n",
               {"method.type", "expected one of lora, full, qlora", "'lorra'", "did you mean 'lora'?"});
}

TEST_F(TrainConfigTest, QloraAndQatParse) {
  const TrainConfig q = load_train_config(write("q.yaml", minimal() + "method:\n  type: qlora\n"), {});
  EXPECT_EQ(q.method.type, MethodType::qlora);
  EXPECT_TRUE(uses_lora(q.method.type));
  EXPECT_EQ(q.method.qat.scheme, QatScheme::none);
  const TrainConfig a = load_train_config(write("a.yaml", minimal() + "method:\n  qat:\n    scheme: q4_0\n"), {});
  EXPECT_EQ(a.method.type, MethodType::lora);
  EXPECT_EQ(a.method.qat.scheme, QatScheme::q4_0);
  EXPECT_EQ(load_train_config(write("a.yaml", minimal()), {"method.qat.scheme=q4_0"}).method.qat.scheme,
            QatScheme::q4_0);
}

TEST_F(TrainConfigTest, BadQatScheme) {
  expect_error(minimal() + "method:\n  qat:\n    scheme: q4_1\n",
               {"method.qat.scheme", "expected one of none, q4_0", "'q4_1'", "did you mean 'q4_0'?"});
  expect_error(minimal() + "method:\n  qat:\n    schema: q4_0\n", {"method.qat.schema", "did you mean 'method.qat.scheme'?"});
}

TEST_F(TrainConfigTest, BadQuantizationCombinations) {
  expect_error(replace(minimal(), "data:\n", "  dtype: bf16\ndata:\n") + "method:\n  type: qlora\n",
               {"model.dtype", "qlora", "NF4", "bf16"});
  expect_error(minimal() + "method:\n  type: qlora\n  qat:\n    scheme: q4_0\n",
               {"method.qat.scheme", "qlora", "method.type lora"});
  expect_error(minimal() + "method:\n  lora:\n    dropout: 0.1\n  qat:\n    scheme: q4_0\n",
               {"method.lora.dropout", "W + scaling B A", "set method.lora.dropout to 0"});
}

TEST_F(TrainConfigTest, BadEnumSchedule) {
  expect_error(replace(minimal(), "max_steps: 100", "max_steps: 100\n  schedule: step"),
               {"train.schedule", "expected one of cosine, linear, constant", "'step'"});
}

TEST_F(TrainConfigTest, BadEnumModelDType) {
  expect_error(replace(minimal(), "model:\n", "model:\n  dtype: int8\n"),
               {"model.dtype", "expected one of f32, bf16, f16", "'int8'"});
}

TEST_F(TrainConfigTest, BadEnumDataFormat) {
  expect_error(replace(minimal(), "data:\n", "data:\n  format: jsonl\n"),
               {"data.format", "expected one of text, alpaca, chat", "'jsonl'"});
}

TEST_F(TrainConfigTest, BadTargetModule) {
  expect_error(minimal() + "method:\n  lora:\n    target_modules: [q, gte]\n",
               {"method.lora.target_modules[1]", "unknown module 'gte'", "did you mean 'gate'?"});
}

TEST_F(TrainConfigTest, BadTargetModulesString) {
  expect_error(minimal() + "method:\n  lora:\n    target_modules: all_linear\n",
               {"method.lora.target_modules", "'all_linear'", "did you mean 'all-linear'?"});
}

TEST_F(TrainConfigTest, BadTargetModuleTwice) {
  expect_error(minimal() + "method:\n  lora:\n    target_modules: [q, v, q_proj]\n",
               {"method.lora.target_modules[2]", "'q_proj'", "more than once"});
}

TEST_F(TrainConfigTest, BadMissingModelPath) {
  expect_error("data:\n  train_files: [" + path("data/train/a.txt") + "]\ntrain: {max_steps: 1}\noutput: {dir: r}\n",
               {"model.path", "required key is missing"});
}

TEST_F(TrainConfigTest, BadMissingTrainFiles) {
  expect_error("model: {path: " + path("model") + "}\ntrain: {max_steps: 1}\noutput: {dir: r}\n",
               {"data.train_files", "required key is missing"});
}

TEST_F(TrainConfigTest, BadMissingOutputDir) {
  expect_error(replace(minimal(), "output:\n  dir: " + path("run"), "output:\n  overwrite: true"),
               {"output.dir", "required key is missing"});
}

TEST_F(TrainConfigTest, BadOutputDirIsAFile) {
  expect_error(replace(minimal(), path("run"), path("adapter.safetensors")),
               {"output.dir", path("adapter.safetensors"), "is not a directory"});
}

TEST_F(TrainConfigTest, BadNeitherMaxStepsNorEpochs) {
  expect_error(replace(minimal(), "max_steps: 100", "lr: 1e-4"), {"train.max_steps", "train.epochs", "exactly one"});
}

TEST_F(TrainConfigTest, BadBothMaxStepsAndEpochs) {
  expect_error(replace(minimal(), "max_steps: 100", "max_steps: 100\n  epochs: 1"),
               {"train.max_steps", "train.epochs", "both set", "exactly one"});
}

TEST_F(TrainConfigTest, BadModelPathDoesNotExist) {
  expect_error(replace(minimal(), path("model"), path("nomodel")),
               {"model.path", "directory '" + path("nomodel") + "'", "does not exist"});
}

TEST_F(TrainConfigTest, BadModelPathWithoutConfigJson) {
  expect_error(replace(minimal(), path("model"), path("data")), {"model.path", "has no config.json"});
}

TEST_F(TrainConfigTest, BadTrainGlobMatchesNothing) {
  expect_error(replace(minimal(), path("data/train/*.txt"), path("data/train/*.jsonl")),
               {"data.train_files[0]", path("data/train/*.jsonl"), "matches no files"});
}

TEST_F(TrainConfigTest, BadTrainFileDoesNotExist) {
  expect_error(replace(minimal(), path("data/train/*.txt"), path("data/train/z.txt")),
               {"data.train_files[0]", path("data/train/z.txt"), "does not exist"});
}

TEST_F(TrainConfigTest, BadEmptyTrainFiles) {
  expect_error(replace(minimal(), "[" + path("data/train/*.txt") + "]", "[]"),
               {"data.train_files", "at least one", "empty list"});
}

TEST_F(TrainConfigTest, BadInitFromDoesNotExist) {
  expect_error(minimal() + "method:\n  lora:\n    init_from: " + path("missing.safetensors") + "\n",
               {"method.lora.init_from", path("missing.safetensors"), "does not exist"});
}

TEST_F(TrainConfigTest, BadResumeFromDoesNotExist) {
  expect_error(replace(minimal(), "max_steps: 100", "max_steps: 100\n  resume_from: " + path("ckpt/step_9")),
               {"train.resume_from", path("ckpt/step_9"), "does not exist"});
}

TEST_F(TrainConfigTest, BadYamlSyntaxNamesTheLine) {
  expect_error("model:\n  path: x\ndata:\n  train_files: [a, b\ntrain:\n  max_steps: 1\n",
               {"bad.yaml:", "YAML syntax error"});
  const std::string msg = error_of("model:\n  path: x\n   bad: [\n");
  EXPECT_NE(msg.find("bad.yaml:3:"), std::string::npos) << msg;
}

TEST_F(TrainConfigTest, BadDuplicateKey) {
  expect_error(replace(minimal(), "max_steps: 100", "max_steps: 100\n  max_steps: 200"),
               {"train.max_steps", "appears more than once"});
}

TEST_F(TrainConfigTest, BadSectionIsNotAMapping) {
  expect_error(minimal() + "parallel: 4\n", {"parallel", "expected a mapping of keys", "'4'"});
}

TEST_F(TrainConfigTest, BadOverrideWithoutEquals) {
  expect_error(minimal(), {"override 'train.lr'", "expected key=value"}, {"train.lr"});
}

TEST_F(TrainConfigTest, BadOverrideUnknownKey) {
  expect_error(minimal(), {"override 'train.lrr=1e-4'", "unknown key 'train.lrr'", "did you mean 'train.lr'?"},
               {"train.lrr=1e-4"});
}

TEST_F(TrainConfigTest, BadOverrideValue) {
  expect_error(minimal(), {"train.lr: expected a number > 0, got 'fast'", "from the override 'train.lr=fast'"},
               {"train.lr=fast"});
}

TEST_F(TrainConfigTest, BadOverrideIntoAScalar) {
  expect_error(minimal() + "method: lora\n", {"method", "method.lora.rank=4", "not a mapping"}, {"method.lora.rank=4"});
}

TEST_F(TrainConfigTest, DataParallelSettings) {
  const TrainConfig c = parse_train_config(minimal() + "parallel:\n  dp: 4\n  bucket_mb: 1.5\n  overlap_grad_reduce: false\n",
                                           "cfg.yaml", {});
  EXPECT_EQ(c.parallel.dp, 4);
  EXPECT_EQ(c.parallel.bucket_mb, 1.5);
  EXPECT_FALSE(c.parallel.overlap_grad_reduce);
  const TrainConfig a = parse_train_config(minimal(), "cfg.yaml", {"parallel.dp=auto"});
  EXPECT_EQ(a.parallel.dp, ParallelSection::kAuto);
  // "auto" survives the round trip through the resolved YAML
  EXPECT_NE(to_yaml(a).find("dp: auto"), std::string::npos);
  EXPECT_EQ(parse_train_config(to_yaml(a), "resolved.yaml", {}), a);
}

TEST_F(TrainConfigTest, BadParallelDataParallel) {
  expect_error(minimal() + "parallel:\n  dp: 0\n", {"parallel.dp", "expected an integer >= 1 or 'auto'", "'0'"});
  expect_error(minimal() + "parallel:\n  dp: all\n", {"parallel.dp", "expected an integer >= 1 or 'auto'", "'all'"});
  expect_error(minimal() + "parallel:\n  bucket_mb: 0\n", {"parallel.bucket_mb", "(0, 1e6]"});
}

TEST_F(TrainConfigTest, BadParallelTensorParallelNotSupportedYet) {
  expect_error(minimal() + "parallel:\n  tp: 2\n", {"parallel.tp", "tp=2", "not supported yet"});
}

TEST_F(TrainConfigTest, RecomputeSettings) {
  for (const auto& [text, value] : {std::pair{"none", Recompute::none}, std::pair{"full", Recompute::full},
                                    std::pair{"selective", Recompute::selective}}) {
    const TrainConfig c =
        parse_train_config(minimal() + "parallel:\n  recompute: " + text + "\n", "cfg.yaml", {});
    EXPECT_EQ(c.parallel.recompute, value) << text;
    EXPECT_NE(to_yaml(c).find(std::string("recompute: ") + text), std::string::npos) << text;
    EXPECT_EQ(parse_train_config(to_yaml(c), "resolved.yaml", {}), c) << text;
  }
  EXPECT_EQ(parse_train_config(minimal(), "cfg.yaml", {"parallel.recompute=selective"}).parallel.recompute,
            Recompute::selective);
}

TEST_F(TrainConfigTest, BadParallelRecompute) {
  expect_error(minimal() + "parallel:\n  recompute: ful\n",
               {"parallel.recompute", "expected one of none, full, selective", "'ful'", "did you mean 'full'?"});
  expect_error(minimal() + "parallel:\n  recompute: true\n", {"parallel.recompute", "'true'"});
}

TEST_F(TrainConfigTest, BadParallelZeroOutOfRange) {
  expect_error(minimal() + "parallel:\n  zero: 4\n", {"parallel.zero", "expected one of 0, 1, 2, 3", "'4'"});
}

TEST_F(TrainConfigTest, BadValidationSplitEveryNth) {
  expect_error(replace(minimal(), "data:\n", "data:\n  validation_split: {every_nth: 1}\n"),
               {"data.validation_split.every_nth", "expected an integer >= 2", "'1'"});
}

TEST_F(TrainConfigTest, BadValidationSplitFraction) {
  expect_error(replace(minimal(), "data:\n", "data:\n  validation_split: {fraction: 1.5}\n"),
               {"data.validation_split.fraction", "expected a number in (0, 1)", "'1.5'"});
}

TEST_F(TrainConfigTest, BadValidationSplitAndFilesBoth) {
  expect_error(replace(minimal(), "data:\n",
                       "data:\n  validation_split: {fraction: 0.1}\n  validation_files: [" + path("data/val/c.txt") + "]\n"),
               {"data.validation_split", "not both"});
}

TEST_F(TrainConfigTest, BadPromptTemplateWithoutInstruction) {
  expect_error(replace(minimal(), "data:\n", "data:\n  format: alpaca\n  prompt_template: 'Q: {input}'\n"),
               {"data.prompt_template", "must contain {instruction}", "'Q: {input}'"});
}

TEST_F(TrainConfigTest, BadPromptTemplatePlaceholderTypo) {
  expect_error(replace(minimal(), "data:\n", "data:\n  prompt_template: '{instrution} {input}'\n"),
               {"data.prompt_template", "unknown placeholder '{instrution}'", "did you mean '{instruction}'?"});
}

TEST_F(TrainConfigTest, BadPromptTemplateWithOutputPlaceholder) {
  expect_error(replace(minimal(), "data:\n", "data:\n  prompt_template: '{instruction} => {output}'\n"),
               {"data.prompt_template", "'{output}'", "appended after it"});
}

TEST_F(TrainConfigTest, WarmupLongerThanTrainingIsAllowed) {
  // `train.max_steps=5` on a config with 20 warmup steps is a smoke test, not an error.
  const TrainConfig c =
      load_train_config(write("ok.yaml", replace(minimal(), "max_steps: 100", "max_steps: 100\n  warmup_steps: 500")), {});
  EXPECT_EQ(c.train.warmup_steps, 500);
}

TEST_F(TrainConfigTest, BadConfigFileMissing) {
  try {
    load_train_config(dir_ / "nope.yaml", {});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("nope.yaml' does not exist"), std::string::npos) << e.what();
  }
}

TEST_F(TrainConfigTest, BadSeveralProblemsAreReportedTogether) {
  const std::string msg =
      error_of(replace(minimal(), "max_steps: 100", "max_steps: 100\n  lr: fast\n  shedule: cosine\n  log_every: 0"));
  EXPECT_NE(msg.find("3 problems"), std::string::npos) << msg;
  EXPECT_NE(msg.find("train.lr"), std::string::npos) << msg;
  EXPECT_NE(msg.find("did you mean 'train.schedule'?"), std::string::npos) << msg;
  EXPECT_NE(msg.find("train.log_every"), std::string::npos) << msg;
}

// ---------------------------------------------------------------------------------------
// Overlays (lmtune train --plan): after the file, before the overrides.

TEST_F(TrainConfigTest, OverlayMergesSectionsAndReplacesValues) {
  const fs::path cfg = write("o.yaml", replace(minimal(), "max_steps: 100", "max_steps: 100\n  lr: 0.01") +
                                           "method:\n  lora:\n    rank: 8\n    alpha: 32\n"
                                           "    target_modules: [q, k, v]\n");
  const fs::path plan = write("plan.yaml",
                              "# written by the planner\n"
                              "parallel: {dp: 4}\n"
                              "train: {micro_batch_size: 2, grad_accum_steps: 4}\n"
                              "method: {lora: {rank: 16, target_modules: [o]}}\n");
  const TrainConfig c = load_train_config(cfg, {"train.grad_accum_steps=3"}, {plan});
  EXPECT_EQ(c.parallel.dp, 4);
  EXPECT_EQ(c.train.micro_batch_size, 2);
  EXPECT_EQ(c.train.grad_accum_steps, 3) << "an override comes after the overlay";
  EXPECT_DOUBLE_EQ(c.train.lr, 0.01) << "keys the overlay does not name keep the file's value";
  EXPECT_EQ(*c.train.max_steps, 100);
  EXPECT_EQ(c.method.lora.rank, 16);
  EXPECT_DOUBLE_EQ(c.method.lora.alpha, 32.0) << "a mapping merges into its section";
  EXPECT_EQ(c.method.lora.target_modules, (std::vector<LoraTarget>{LoraTarget::o})) << "a list replaces";
  // an empty overlay changes nothing
  EXPECT_EQ(load_train_config(cfg, {}, {write("empty.yaml", "# nothing\n")}), load_train_config(cfg, {}));
}

TEST_F(TrainConfigTest, BadOverlayUnknownKeyNamesTheOverlayFile) {
  const fs::path cfg = write("good.yaml", minimal());
  const fs::path plan = write("plan.yaml", "parallel: {dp: 2}\ntrain:\n  micro_batch: 2\nparalel: {dp: 2}\n");
  try {
    load_train_config(cfg, {}, {plan});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find(plan.string() + ":3: unknown key 'train.micro_batch'; did you mean 'train.micro_batch_size'?"),
              std::string::npos) << m;
    EXPECT_NE(m.find(plan.string() + ":4: unknown key 'paralel'; did you mean 'parallel'?"), std::string::npos) << m;
  }
}

TEST_F(TrainConfigTest, BadOverlayValueIsReportedAtTheOverlaysLine) {
  const fs::path cfg = write("good.yaml", minimal());
  const fs::path plan = write("plan.yaml", "parallel:\n  dp: 0\n");
  try {
    load_train_config(cfg, {}, {plan});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(plan.string() + ":2: parallel.dp: expected an integer >= 1 or 'auto'"),
              std::string::npos) << e.what();
  }
}

TEST_F(TrainConfigTest, BadOverlayIsNotAConfig) {
  const fs::path cfg = write("good.yaml", minimal());
  const auto message = [&](const std::string& text) {
    try {
      load_train_config(cfg, {}, {write("plan.yaml", text)});
    } catch (const Error& e) {
      return std::string(e.what());
    }
    ADD_FAILURE() << "expected an error for the overlay:\n" << text;
    return std::string();
  };
  EXPECT_NE(message("- dp: 2\n").find("plan.yaml:1: expected a mapping of sections"), std::string::npos);
  EXPECT_NE(message("train: {lr: [1, 2}\n").find("plan.yaml:1:"), std::string::npos);
  EXPECT_NE(message("train: {lr: [1, 2}\n").find("YAML syntax error"), std::string::npos);
  try {
    load_train_config(cfg, {}, {dir_ / "no-plan.yaml"});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("config overlay '" + (dir_ / "no-plan.yaml").string() + "' does not exist"),
              std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lmtune
