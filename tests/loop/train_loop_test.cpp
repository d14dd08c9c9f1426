// The training loop end to end on a tiny random model: resume is bit-identical to an
// uninterrupted run (LoRA with dropout, and full fine-tuning), the loss goes down, a
// diverging run stops with a message naming the step, and exports read back.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "common/test_models.h"
#include "trainer/io/checkpoint.h"
#include "trainer/data/tokenizer.h"
#include "trainer/io/safetensors.h"
#include "trainer/loop/export.h"
#include "trainer/loop/train_config.h"
#include "trainer/loop/trainer.h"
#include "trainer/model/llama.h"

namespace lmtune {
namespace {

namespace fs = std::filesystem;

// A 2-layer width-32 model with random weights and stories15M's tokenizer.
fs::path make_tiny_model(const fs::path& dir) {
  LlamaConfig cfg;
  cfg.hidden_size = 32;
  cfg.intermediate_size = 64;
  cfg.num_hidden_layers = 2;
  cfg.num_attention_heads = 4;
  cfg.num_key_value_heads = 2;
  cfg.vocab_size = 32000;
  cfg.max_position_embeddings = 64;
  cfg.tie_word_embeddings = true;
  testing::write_random_model(dir, cfg, 11);
  return dir;
}

class TrainLoop : public ::testing::Test {
 protected:
  void SetUp() override {
    if (testing::stories15m_llama2c_dir().empty()) GTEST_SKIP() << "stories15M (its tokenizer) not fetched";
    root_ = testing::temp_dir("lmtune-train");
    model_ = make_tiny_model(root_ / "model");
    testing::write_fox_and_bear_texts(root_ / "data");
  }

  std::string config_yaml(const std::string& method, const fs::path& out) const {
    std::ostringstream y;
    y << "model:\n  path: " << model_.string() << "\n"
      << "method:\n  type: " << method << "\n  lora:\n    rank: 4\n    alpha: 8\n    dropout: 0.1\n"
      << "    target_modules: all-linear\n"
      << "data:\n  format: text\n  train_files: [" << (root_ / "data" / "*.txt").string() << "]\n"
      << "  validation_split: {fraction: 0.5}\n  seq_len: 16\n"
      << "train:\n  max_steps: 40\n  micro_batch_size: 2\n  grad_accum_steps: 2\n  lr: 0.003\n"
      << "  warmup_steps: 5\n  schedule: cosine\n  weight_decay: 0.01\n  max_grad_norm: 1.0\n  threads: 2\n"
      << "  eval_every: 0\n  eval_batches: 2\n  save_every: 20\n  sample_tokens: 0\n  seed: 3\n"
      << "output:\n  dir: " << out.string() << "\n";
    return y.str();
  }

  TrainConfig config(const std::string& method, const fs::path& out, std::vector<std::string> overrides = {}) {
    const fs::path file = root_ / (method + "-" + out.filename().string() + ".yaml");
    std::ofstream(file) << config_yaml(method, out);
    return load_train_config(file, overrides);
  }

  static TrainSummary run(const TrainConfig& c) {
    auto alloc = Allocator::create(Device::cpu());
    std::ostringstream log;
    return train(c, *alloc, Progress::quiet, log);
  }


  void expect_resume_is_exact(const std::string& method) {
    const fs::path a = root_ / (method + "-a"), b = root_ / (method + "-b");
    const TrainConfig ca = config(method, a);
    run(ca);
    // A second run starts from A's checkpoint-20 (what a run stopped at step 20 left) in a
    // directory of its own and continues to step 40.
    fs::create_directories(b);
    fs::copy(a / "checkpoint-20", b / "checkpoint-20", fs::copy_options::recursive);
    run(config(method, b, {"train.resume_from=auto"}));

    const auto la = testing::logged_losses(a), lb = testing::logged_losses(b);
    ASSERT_EQ(la.size(), 40u);
    ASSERT_EQ(lb.size(), 20u) << "the resumed run logs steps 21..40";
    for (size_t i = 0; i < 20; ++i) EXPECT_EQ(lb[i], la[20 + i]) << "step " << 21 + i;
    EXPECT_EQ(testing::read_checkpoint_tensors(a / "checkpoint-40"),
              testing::read_checkpoint_tensors(b / "checkpoint-40"));
    // and the loss went down
    const double first = std::stod(la.front().substr(la.front().find(':') + 1));
    const double last = std::stod(la.back().substr(la.back().find(':') + 1));
    EXPECT_LT(last, first * 0.9) << la.front() << " -> " << la.back();
  }

  fs::path root_, model_;
};

TEST_F(TrainLoop, LoraResumeIsBitIdentical) { expect_resume_is_exact("lora"); }

TEST_F(TrainLoop, FullFineTuningResumeIsBitIdentical) { expect_resume_is_exact("full"); }

TEST_F(TrainLoop, DivergingLossStopsWithTheStep) {
  const fs::path out = root_ / "nan";
  const TrainConfig c = config("full", out, {"train.lr=1.0e30", "train.max_grad_norm=0", "train.warmup_steps=0"});
  try {
    run(c);
    FAIL() << "expected the run to stop";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("the loss became"), std::string::npos) << m;
    EXPECT_NE(m.find("at step "), std::string::npos) << m;
    EXPECT_NE(m.find("train.lr"), std::string::npos) << m;
  }
  EXPECT_FALSE(fs::exists(out / "checkpoint-40"));
}

TEST_F(TrainLoop, ExistingRunIsNotOverwrittenSilently) {
  const fs::path out = root_ / "twice";
  run(config("lora", out, {"train.max_steps=2", "train.warmup_steps=0", "train.save_every=0"}));
  EXPECT_THROW(run(config("lora", out, {"train.max_steps=2", "train.warmup_steps=0"})), Error);
  EXPECT_NO_THROW(run(config("lora", out, {"train.max_steps=2", "train.warmup_steps=0", "output.overwrite=true"})));
}

std::string mod_name() { return "model.layers.1.mlp.down_proj.weight"; }

// The PEFT export holds PEFT's names and shapes, and folding it into the base by hand gives
// the HF export's weights.
TEST_F(TrainLoop, ExportsAgreeWithEachOther) {
  const fs::path out = root_ / "exp";
  run(config("lora", out, {"train.max_steps=4", "train.warmup_steps=0", "train.save_every=0"}));
  auto alloc = Allocator::create(Device::cpu());
  export_run(out, ExportFormat::hf, root_ / "hf", "f32", *alloc);
  export_run(out, ExportFormat::peft, root_ / "peft", "f32", *alloc);
  // The prediction runs the same export on meta: exact, also when tensors are converted.
  const MemoryStats predicted = predict_export_memory(out, ExportFormat::hf, "f32");
  EXPECT_EQ(alloc->stats().allocated.peak, predicted.allocated.peak);
  EXPECT_EQ(alloc->stats().of(MemCategory::trainable).peak, predicted.of(MemCategory::trainable).peak);
  auto alloc16 = Allocator::create(Device::cpu());
  export_run(out, ExportFormat::hf, root_ / "hf16", "bf16", *alloc16);
  const MemoryStats predicted16 = predict_export_memory(out, ExportFormat::hf, "bf16");
  EXPECT_GT(alloc16->stats().of(MemCategory::workspace).peak, 0) << "bf16 copies go through the allocator";
  EXPECT_EQ(alloc16->stats().of(MemCategory::workspace).peak, predicted16.of(MemCategory::workspace).peak);
  EXPECT_EQ(alloc16->stats().allocated.peak, predicted16.allocated.peak);
  EXPECT_EQ(SafeTensorsReader::open(root_ / "hf16").get(mod_name()).dtype, DType::bf16);
  const SafeTensorsReader base = SafeTensorsReader::open(model_);
  const SafeTensorsReader merged = SafeTensorsReader::open(root_ / "hf");
  const SafeTensorsReader peft = SafeTensorsReader::open(root_ / "peft" / "adapter_model.safetensors");
  const auto cfg = nlohmann::json::parse(std::ifstream(root_ / "peft" / "adapter_config.json"));
  EXPECT_EQ(cfg["peft_type"], "LORA");
  EXPECT_EQ(cfg["task_type"], "CAUSAL_LM");
  EXPECT_EQ(cfg["r"], 4);
  EXPECT_EQ(cfg["target_modules"].size(), 7u);
  const double scale = cfg["lora_alpha"].get<double>() / cfg["r"].get<double>();
  EXPECT_EQ(peft.size(), 2u * 7u * 2u);  // A and B, 7 modules, 2 layers
  const std::string mod = "model.layers.1.mlp.down_proj";
  const SafeTensorInfo& a = peft.get("base_model.model." + mod + ".lora_A.weight");
  const SafeTensorInfo& b = peft.get("base_model.model." + mod + ".lora_B.weight");
  ASSERT_EQ(a.shape, (Shape{4, 64}));
  ASSERT_EQ(b.shape, (Shape{32, 4}));
  const SafeTensorInfo& w0 = base.get(mod + ".weight");
  const SafeTensorInfo& w1 = merged.get(mod + ".weight");
  const auto* A = static_cast<const float*>(a.data);
  const auto* B = static_cast<const float*>(b.data);
  const auto* W0 = static_cast<const float*>(w0.data);
  const auto* W1 = static_cast<const float*>(w1.data);
  double max_err = 0, max_delta = 0;
  for (int i = 0; i < 32; ++i)
    for (int j = 0; j < 64; ++j) {
      double d = 0;
      for (int k = 0; k < 4; ++k) d += static_cast<double>(B[i * 4 + k]) * A[k * 64 + j];
      max_err = std::max(max_err, std::abs(W0[i * 64 + j] + scale * d - W1[i * 64 + j]));
      max_delta = std::max(max_delta, std::abs(scale * d));
    }
  EXPECT_GT(max_delta, 1e-4) << "training must have moved B away from zero";
  EXPECT_LT(max_err, 1e-6);
}

// The loss of the run's trained model, put together by hand: the base model with the
// checkpoint's trainable tensors (LoRA: rank 4, alpha 8 on all linear layers, as config_yaml).
LossResult trained_model_loss(const fs::path& base, const fs::path& run_dir, bool lora,
                              const std::vector<int32_t>& ids, const std::vector<int32_t>& next, Allocator& alloc) {
  ModelOptions opts;
  if (lora) {
    LoraOptions lo;
    lo.rank = 4;
    lo.alpha = 8;
    lo.targets = {"q", "k", "v", "o", "gate", "up", "down"};
    opts.lora = lo;
  }
  auto model = LlamaModel::load(base, alloc, opts);
  const CheckpointReader r = CheckpointReader::open(run_dir / "checkpoint-3");
  size_t loaded = 0, states = 0;
  for (ParamRef& p : model->parameters()) {
    if (!r.contains(p.name)) continue;
    r.read_full(p.name, p.value);
    ++loaded;
  }
  for (const std::string& n : r.names()) states += n.ends_with(".exp_avg") || n.ends_with(".exp_avg_sq");
  EXPECT_EQ(loaded + states, r.names().size());
  const int64_t T = static_cast<int64_t>(ids.size());
  return model->forward_loss(make_token_tensor(alloc, ids, 1, T), make_token_tensor(alloc, next, 1, T));
}

// The families beyond Llama 2 through the user's path: full fine-tuning of a Qwen3-style
// model (q/k norms train too, head_dim 12 != 32 / 4, llama3 rope scaling) and a LoRA run
// on a Qwen2-style one; the HF exports are read back by lmtune with the same config, and
// compute what the trained model computes.
TEST_F(TrainLoop, QwenAndScaledRopeExportsLoadAgain) {
  for (const char* family : {"qwen3", "qwen2"}) {
    SCOPED_TRACE(family);
    LlamaConfig cfg;
    cfg.hidden_size = 32;
    cfg.intermediate_size = 64;
    cfg.num_hidden_layers = 2;
    cfg.num_attention_heads = 4;
    cfg.num_key_value_heads = 2;
    cfg.vocab_size = 32000;
    cfg.max_position_embeddings = 64;
    if (std::string(family) == "qwen3") {
      cfg.family = ModelFamily::qwen3;
      cfg.attention_head_dim = 12;
      cfg.rope_scaling = {RopeScalingType::llama3, 4.0, 1.0, 4.0, 32};
    } else {
      cfg.family = ModelFamily::qwen2;
      cfg.tie_word_embeddings = true;
      cfg.rope_scaling = {RopeScalingType::linear, 2.0};
    }
    const fs::path base = root_ / (std::string(family) + "-base");
    testing::write_random_model(base, cfg, 5);
    const std::string method = std::string(family) == "qwen3" ? "full" : "lora";
    const fs::path out = root_ / (std::string(family) + "-run");
    run(config(method, out, {"model.path=" + base.string(), "train.max_steps=3", "train.warmup_steps=0",
                             "train.save_every=0", "method.lora.dropout=0"}));
    auto alloc = Allocator::create(Device::cpu());
    const fs::path hf = root_ / (std::string(family) + "-hf");
    export_run(out, ExportFormat::hf, hf, "f32", *alloc);

    const LlamaConfig back = load_llama_config(hf / "config.json");
    EXPECT_EQ(back.family, cfg.family);
    EXPECT_EQ(back.head_dim(), cfg.head_dim());
    EXPECT_EQ(back.rope_scaling.type, cfg.rope_scaling.type);
    EXPECT_EQ(back.rope_scaling.factor, cfg.rope_scaling.factor);
    EXPECT_EQ(back.rope_scaling.original_max_position_embeddings, cfg.rope_scaling.original_max_position_embeddings);
    EXPECT_EQ(back.qkv_bias(), cfg.qkv_bias());
    auto exported = LlamaModel::load(hf, *alloc);  // strict: every tensor named, every shape right
    const SafeTensorsReader before = SafeTensorsReader::open(base), after = SafeTensorsReader::open(hf);
    const std::string moved = std::string(family) == "qwen3" ? "model.layers.0.self_attn.q_norm.weight"
                                                             : "model.layers.0.self_attn.q_proj.weight";
    EXPECT_NE(0, std::memcmp(before.get(moved).data, after.get(moved).data, before.get(moved).nbytes))
        << moved << " did not change in training";

    // The run's own model (base + checkpoint) and the export give the same loss.
    const std::vector<int32_t> ids = {1, 400, 29, 17, 3000, 5, 77, 901};
    const std::vector<int32_t> next = {400, 29, 17, 3000, 5, 77, 901, 2};
    const LossResult le = exported->forward_loss(make_token_tensor(*alloc, ids, 1, 8),
                                                 make_token_tensor(*alloc, next, 1, 8));
    auto original = LlamaModel::load(base, *alloc);
    const LossResult lb = original->forward_loss(make_token_tensor(*alloc, ids, 1, 8),
                                                 make_token_tensor(*alloc, next, 1, 8));
    EXPECT_NE(le.sum, lb.sum) << "training should change the loss";
    const LossResult lt = trained_model_loss(base, out, method == "lora", ids, next, *alloc);
    EXPECT_NEAR(le.sum, lt.sum, 1e-5 * std::abs(lt.sum));
  }
}

}  // namespace
}  // namespace lmtune
