// LoRA on the LLaMA model: an untrained adapter (B = 0) leaves the model unchanged, adapter
// gradients match central finite differences, only adapters train, a bf16 base halves the
// projection memory and stays close to f32, and dropout masks are reproducible by seed.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "common/test_models.h"
#include "trainer/model/llama.h"

namespace lmtune {
namespace {

namespace fs = std::filesystem;

LlamaConfig tiny_config() {
  LlamaConfig cfg;
  cfg.hidden_size = 24;
  cfg.intermediate_size = 40;
  cfg.num_hidden_layers = 2;
  cfg.num_attention_heads = 3;
  cfg.num_key_value_heads = 1;
  cfg.vocab_size = 32000;
  cfg.max_position_embeddings = 32;
  cfg.rope_theta = 30000;
  return cfg;
}

class Lora : public ::testing::Test {
 protected:
  void SetUp() override {
    if (testing::stories15m_llama2c_dir().empty()) GTEST_SKIP() << "stories15M (its tokenizer) not fetched";
    dir_ = testing::temp_dir("lmtune-lora") / "model";
    testing::write_random_model(dir_, tiny_config(), 5);
    std::mt19937 rng(9);
    for (int i = 0; i < B * T; ++i) {
      tokens_.push_back(static_cast<int32_t>(rng() % 32000));
      targets_.push_back(i % 5 == 4 ? -1 : static_cast<int32_t>(rng() % 32000));
    }
  }
  static ModelOptions lora_options(DType dtype = DType::f32, double dropout = 0.0) {
    ModelOptions o;
    o.weight_dtype = dtype;
    LoraOptions lo;
    lo.rank = 4;
    lo.alpha = 8;
    lo.dropout = dropout;
    lo.targets = {"q", "k", "v", "o", "gate", "up", "down"};
    o.lora = lo;
    o.seed = 2;
    return o;
  }
  double loss(LlamaModel& m, Allocator& a) {
    return m.forward_loss(make_token_tensor(a, tokens_, B, T), make_token_tensor(a, targets_, B, T)).sum;
  }
  static constexpr int B = 2, T = 7;
  fs::path dir_;
  std::vector<int32_t> tokens_, targets_;
};

TEST_F(Lora, ZeroBLeavesTheModelUnchanged) {
  auto a = Allocator::create(Device::cpu());
  auto base = LlamaModel::load(dir_, *a);
  auto lora = LlamaModel::load(dir_, *a, lora_options());
  EXPECT_EQ(loss(*base, *a), loss(*lora, *a));
  // A is initialised (Kaiming-uniform), B is zero
  for (const ParamRef& p : lora->parameters()) {
    if (p.name.find("lora_B") != std::string::npos) {
      EXPECT_EQ(ops::sum_squares(p.value), 0.0) << p.name;
    }
    if (p.name.find("lora_A") != std::string::npos) {
      EXPECT_GT(ops::sum_squares(p.value), 0.0) << p.name;
    }
  }
}

TEST_F(Lora, OnlyAdaptersTrainAndTheirGradientsMatchFiniteDifferences) {
  auto a = Allocator::create(Device::cpu());
  auto model = LlamaModel::load(dir_, *a, lora_options());
  model->allocate_grads();
  const auto trainable = model->trainable_parameters();
  ASSERT_EQ(trainable.size(), 2u * 7u * 2u);
  for (const ParamRef& p : trainable) EXPECT_TRUE(is_adapter_name(p.name)) << p.name;
  // Move B away from zero so both A and B have non-trivial gradients.
  std::mt19937 rng(4);
  std::normal_distribution<float> n(0.0f, 0.3f);
  for (const ParamRef& p : trainable) {
    float* d = p.value.data<float>();
    for (int64_t i = 0; i < p.value.numel(); ++i) d[i] = n(rng);
  }
  model->zero_grads();
  model->forward_backward(make_token_tensor(*a, tokens_, B, T), make_token_tensor(*a, targets_, B, T), 1.0f);
  int checked = 0;
  for (const ParamRef& p : trainable) {
    if (p.name.find("layers.1.mlp.down_proj") == std::string::npos &&
        p.name.find("layers.0.self_attn.k_proj") == std::string::npos)
      continue;
    float* w = p.value.data<float>();
    const float* g = p.grad.data<float>();
    for (int64_t i : {int64_t{0}, p.value.numel() / 3, p.value.numel() - 1}) {
      const float saved = w[i];
      const float eps = 1e-2f;
      w[i] = saved + eps;
      const double up = loss(*model, *a);
      w[i] = saved - eps;
      const double down = loss(*model, *a);
      w[i] = saved;
      const double numeric = (up - down) / (2.0 * eps);
      EXPECT_NEAR(g[i], numeric, 2e-2 * std::max(1.0, std::abs(numeric))) << p.name << "[" << i << "]";
      ++checked;
    }
  }
  EXPECT_EQ(checked, 4 * 3);
}

TEST_F(Lora, Bf16BaseHalvesProjectionMemory) {
  auto a32 = Allocator::create(Device::meta());
  auto a16 = Allocator::create(Device::meta());
  const auto meta32 = LlamaModel::load(dir_, *a32, lora_options(DType::f32));
  const auto meta16 = LlamaModel::load(dir_, *a16, lora_options(DType::bf16));
  const LlamaConfig c = tiny_config();
  const int64_t proj = c.num_hidden_layers *
                       (2 * c.hidden_size * c.hidden_size + 2 * c.kv_dim() * c.hidden_size +
                        3 * c.hidden_size * c.intermediate_size);
  const int64_t w32 = a32->stats().of(MemCategory::weights).current;
  const int64_t w16 = a16->stats().of(MemCategory::weights).current;
  EXPECT_NEAR(static_cast<double>(w32 - w16), static_cast<double>(proj * 2), 2.0 * 512 * c.num_hidden_layers);
  // and the bf16 model computes nearly the same loss
  auto c32 = Allocator::create(Device::cpu());
  auto c16 = Allocator::create(Device::cpu());
  auto m32 = LlamaModel::load(dir_, *c32, lora_options(DType::f32));
  auto m16 = LlamaModel::load(dir_, *c16, lora_options(DType::bf16));
  const double l32 = loss(*m32, *c32), l16 = loss(*m16, *c16);
  EXPECT_NE(l32, l16);
  EXPECT_NEAR(l16, l32, 1e-2 * std::abs(l32));
}

TEST_F(Lora, DropoutIsReproducibleBySeed) {
  auto a = Allocator::create(Device::cpu());
  auto model = LlamaModel::load(dir_, *a, lora_options(DType::f32, 0.3));
  model->allocate_grads();
  for (const ParamRef& p : model->trainable_parameters()) p.value.data<float>()[0] = 0.5f;  // B != 0
  auto step_loss = [&](uint64_t seed) {
    model->zero_grads();
    return model
        ->forward_backward(make_token_tensor(*a, tokens_, B, T), make_token_tensor(*a, targets_, B, T), 1.0f,
                           MicroBatchContext{seed, 0})
        .sum;
  };
  const double a1 = step_loss(1), a2 = step_loss(1), b1 = step_loss(2);
  EXPECT_EQ(a1, a2);
  EXPECT_NE(a1, b1);
}

// Data parallelism splits a micro-batch by rows: the rank holding row 1 passes row_offset
// = 1 * T and draws exactly the dropout masks one process draws for that row, so the two
// halves' losses and summed gradients equal the whole batch's.
TEST_F(Lora, DropoutOfARowDependsOnItsGlobalIndexOnly) {
  auto a = Allocator::create(Device::cpu());
  auto model = LlamaModel::load(dir_, *a, lora_options(DType::f32, 0.3));
  model->allocate_grads();
  for (const ParamRef& p : model->trainable_parameters()) p.value.data<float>()[0] = 0.5f;  // B != 0
  const MicroBatchContext whole{7, 0};
  model->zero_grads();
  const LossResult full =
      model->forward_backward(make_token_tensor(*a, tokens_, B, T), make_token_tensor(*a, targets_, B, T), 1.0f, whole);
  std::vector<std::vector<float>> full_grads;
  for (const ParamRef& p : model->trainable_parameters()) full_grads.push_back(p.grad.to_f32());

  auto half = [&](int row, int64_t offset) {
    const std::vector<int32_t> tok(tokens_.begin() + row * T, tokens_.begin() + (row + 1) * T);
    const std::vector<int32_t> tgt(targets_.begin() + row * T, targets_.begin() + (row + 1) * T);
    return model->forward_backward(make_token_tensor(*a, tok, 1, T), make_token_tensor(*a, tgt, 1, T), 1.0f,
                                   MicroBatchContext{7, offset});
  };
  model->zero_grads();
  const double split = half(0, 0).sum + half(1, T).sum;
  EXPECT_NEAR(split, full.sum, 1e-6 * std::abs(full.sum));  // f32 GEMMs of 1 row vs 2
  size_t i = 0;
  double worst = 0, scale = 0;
  for (const ParamRef& p : model->trainable_parameters()) {
    const auto g = p.grad.to_f32();
    for (size_t k = 0; k < g.size(); ++k) {
      worst = std::max(worst, static_cast<double>(std::abs(g[k] - full_grads[i][k])));
      scale = std::max(scale, static_cast<double>(std::abs(full_grads[i][k])));
    }
    ++i;
  }
  EXPECT_GT(scale, 0.0);
  EXPECT_LE(worst, 1e-5 * scale);

  // The second row drawn as if it were the first (offset 0) is another mask, another loss.
  model->zero_grads();
  EXPECT_NE(half(1, 0).sum, half(1, T).sum);
}

// Dropout is a training-time draw: evaluation (forward_loss) computes the plain function,
// the same value whatever the dropout probability.
TEST_F(Lora, EvaluationDoesNotDropOut) {
  auto a = Allocator::create(Device::cpu());
  auto plain = LlamaModel::load(dir_, *a, lora_options(DType::f32, 0.0));
  auto dropped = LlamaModel::load(dir_, *a, lora_options(DType::f32, 0.5));
  for (auto* m : {plain.get(), dropped.get()}) {
    m->allocate_grads();
    for (const ParamRef& p : m->trainable_parameters()) p.value.data<float>()[0] = 0.5f;  // B != 0
  }
  EXPECT_EQ(loss(*plain, *a), loss(*dropped, *a));
  // while training does drop
  const double train_plain = plain->forward_backward(make_token_tensor(*a, tokens_, B, T),
                                                     make_token_tensor(*a, targets_, B, T), 1.0f, {3, 0}).sum;
  const double train_dropped = dropped->forward_backward(make_token_tensor(*a, tokens_, B, T),
                                                         make_token_tensor(*a, targets_, B, T), 1.0f, {3, 0}).sum;
  EXPECT_NE(train_plain, train_dropped);
}

}  // namespace
}  // namespace lmtune
