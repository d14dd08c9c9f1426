// The meta device predicts a real run's memory exactly: the same code, the same allocator
// policy, fake addresses and kernels that do nothing (acceptance: for generate and for a
// forward+backward of stories15M at B=4, T=256, every category's peak and the reserved
// bytes agree to the byte; the same for small random models of the other families —
// Llama 3.1 rope scaling, Qwen3 q/k norms with a decoupled head_dim, Qwen2 biases — under
// full fine-tuning, LoRA and KV-cache decoding).
#include <gtest/gtest.h>

#include <random>

#include "common/test_models.h"
#include "model/memory_util.h"
#include "trainer/data/tokenizer.h"
#include "trainer/loop/inference.h"
#include "trainer/model/llama.h"

namespace lmtune {
namespace {

using test_util::expect_same_stats;

MemoryStats generate_stats(Device device, const std::filesystem::path& dir, std::vector<int32_t>* out_ids) {
  auto alloc = Allocator::create(device);
  const Tokenizer tok = Tokenizer::from_model_dir(dir);
  auto model = LlamaModel::load(dir, *alloc);
  SamplingOptions opts;
  opts.max_new_tokens = 40;
  opts.temperature = 0.0f;
  const auto ids = generate(*model, tok.encode("Once upon a time", AddBos::yes), opts, nullptr);
  if (out_ids) *out_ids = ids;
  return alloc->stats();
}

TEST(MetaDevice, GenerateStories15M) {
  const auto dir = testing::stories15m_hf_dir();
  if (dir.empty()) GTEST_SKIP() << "stories15M not fetched (scripts/fetch_model.sh)";
  std::vector<int32_t> ids;
  const MemoryStats real = generate_stats(Device::cpu(), dir, &ids);
  const MemoryStats meta = generate_stats(Device::meta(), dir, nullptr);
  ASSERT_EQ(ids.size(), 40u) << "the real run stopped early, so the meta run does more steps";
  EXPECT_GT(real.of(MemCategory::weights).peak, 15'000'000 * 4);
  expect_same_stats(real, meta);
}

MemoryStats train_step_stats(Device device, const std::filesystem::path& dir, double* loss) {
  auto alloc = Allocator::create(device);
  ModelOptions opts;
  opts.role = ParamRole::trainable;
  auto model = LlamaModel::load(dir, *alloc, opts);
  const int64_t B = 4, T = 256;
  std::mt19937 rng(3);
  std::vector<int32_t> tokens(B * T), targets(B * T);
  for (auto& t : tokens) t = static_cast<int32_t>(rng() % 32000);
  for (size_t i = 0; i < targets.size(); ++i) targets[i] = (i + 1) % T == 0 ? -1 : tokens[i + 1];
  const Tensor tok = make_token_tensor(*alloc, tokens, B, T);
  const Tensor tgt = make_token_tensor(*alloc, targets, B, T);
  const LossResult r = model->forward_backward(tok, tgt, 1.0f / static_cast<float>(B * (T - 1)));
  if (loss) *loss = r.mean();
  return alloc->stats();
}

TEST(MetaDevice, ForwardBackwardStories15M) {
  const auto dir = testing::stories15m_hf_dir();
  if (dir.empty()) GTEST_SKIP() << "stories15M not fetched (scripts/fetch_model.sh)";
  double loss = 0;
  const MemoryStats real = train_step_stats(Device::cpu(), dir, &loss);
  const MemoryStats meta = train_step_stats(Device::meta(), dir, nullptr);
  EXPECT_TRUE(std::isfinite(loss));
  EXPECT_GT(loss, 5.0);  // random tokens: close to log(32000) ~ 10.4, far above a trained fit
  EXPECT_GT(real.of(MemCategory::activations).peak, 4 * 256 * 288 * 4 * 6);
  EXPECT_GT(real.of(MemCategory::grads).peak, 15'000'000 * 4);
  expect_same_stats(real, meta);
}

// ---- the families beyond Llama 2, on random models built in memory ----

LlamaConfig family_config(const std::string& which) {
  LlamaConfig c;
  c.hidden_size = 96;
  c.intermediate_size = 160;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 6;
  c.num_key_value_heads = 2;
  c.vocab_size = 1000;
  c.max_position_embeddings = 512;
  if (which == "llama31") {
    c.rope_theta = 500000.0;
    c.rope_scaling = {RopeScalingType::llama3, 8.0, 1.0, 4.0, 64};
  } else if (which == "qwen3") {
    c.family = ModelFamily::qwen3;
    c.attention_head_dim = 24;  // q (144, 96), o (96, 144)
    c.rope_theta = 1000000.0;
  } else {
    c.family = ModelFamily::qwen2;  // q/k/v biases
    c.tie_word_embeddings = true;
  }
  return c;
}

// One training step (forward + backward) and then 8 decoding steps with a KV cache.
MemoryStats family_stats(Device device, const LlamaConfig& cfg, bool lora) {
  auto alloc = Allocator::create(device);
  ModelOptions opts;
  if (lora) {
    LoraOptions lo;
    lo.rank = 4;
    lo.targets = {"q", "k", "v", "o", "gate", "up", "down"};
    opts.lora = lo;
  } else {
    opts.role = ParamRole::trainable;
  }
  LlamaModel model(cfg, *alloc, opts);
  if (!device.is_meta()) {  // values do not change the allocations, but make the run a real one
    std::mt19937 rng(5);
    std::normal_distribution<float> n(0.0f, 0.05f);
    for (ParamRef& p : model.parameters()) {
      float* d = p.value.data<float>();
      for (int64_t i = 0; i < p.value.numel(); ++i) d[i] = (p.value.dim() == 1 ? 1.0f : 0.0f) + n(rng);
    }
  }
  const int64_t B = 2, T = 48;
  std::vector<int32_t> tokens(B * T), targets(B * T);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>((i * 37 + 11) % 1000);
  for (size_t i = 0; i < targets.size(); ++i) targets[i] = (i + 1) % T == 0 ? -1 : tokens[i + 1];
  const LossResult r = model.forward_backward(make_token_tensor(*alloc, tokens, B, T),
                                              make_token_tensor(*alloc, targets, B, T), 1.0f);
  if (!device.is_meta()) {
    EXPECT_TRUE(std::isfinite(r.mean()));
  }
  KVCache cache = model.make_kv_cache(1, 16);
  Tensor logits = model.forward_cached(make_token_tensor(*alloc, std::vector<int32_t>(8, 3), 1, 8), cache);
  for (int step = 0; step < 8; ++step)
    logits = model.forward_cached(make_token_tensor(*alloc, {static_cast<int32_t>(step)}, 1, 1), cache);
  return alloc->stats();
}

TEST(MetaDevice, FamiliesTrainAndDecode) {
  for (const char* which : {"llama31", "qwen3", "qwen2"}) {
    for (bool lora : {false, true}) {
      SCOPED_TRACE(std::string(which) + (lora ? " lora" : " full"));
      const LlamaConfig cfg = family_config(which);
      const MemoryStats real = family_stats(Device::cpu(), cfg, lora);
      const MemoryStats meta = family_stats(Device::meta(), cfg, lora);
      EXPECT_GT(real.of(MemCategory::activations).peak, 2 * 48 * 96 * 4 * 6);
      expect_same_stats(real, meta);
    }
  }
}

}  // namespace
}  // namespace lmtune
