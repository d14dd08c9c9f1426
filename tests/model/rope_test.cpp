// RoPE's frequency table from a config (trainer/model/rope.h), against values worked out
// by hand; the model's forward against the PyTorch reference is in parity_test.cpp.
#include "trainer/model/rope.h"

#include <gtest/gtest.h>

#include <cmath>
#include <numbers>

#include "trainer/core/allocator.h"
#include "trainer/model/llama.h"

namespace lmtune {
namespace {

LlamaConfig config(int64_t head_dim, double theta) {
  LlamaConfig c;
  c.hidden_size = head_dim * 2;
  c.intermediate_size = 8;
  c.num_hidden_layers = 1;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 2;
  c.vocab_size = 10;
  c.rope_theta = theta;
  return c;
}

TEST(RopeTable, DefaultAndLinear) {
  LlamaConfig c = config(8, 10000.0);
  const std::vector<double> f = rope_inv_freq(c);
  ASSERT_EQ(f.size(), 4u);
  EXPECT_DOUBLE_EQ(f[0], 1.0);
  EXPECT_NEAR(f[1], 0.1, 1e-15);   // 10000^(-2/8)
  EXPECT_NEAR(f[2], 0.01, 1e-15);  // 10000^(-4/8)
  EXPECT_NEAR(f[3], 0.001, 1e-16);
  c.rope_scaling.type = RopeScalingType::linear;
  c.rope_scaling.factor = 4.0;
  const std::vector<double> g = rope_inv_freq(c);
  for (size_t i = 0; i < 4; ++i) EXPECT_NEAR(g[i], f[i] / 4.0, 1e-16) << i;
  for (double d : rope_freq_divisors(c)) EXPECT_EQ(d, 4.0);
}

// Llama 3.1's bands on a small config: D = 16, theta 10000, original length 64, factor 4,
// low 1, high 4. Pair i has wavelength w_i = 2 pi 10000^(i/8): w_0 = 6.28 < 64/4 is kept;
// w_1 = 19.87 and w_2 = 62.83 lie in [16, 64] and are smoothed; w_3.. > 64 are divided by 4.
// In the smoothed band s = (64 / w - 1) / 3 and the divisor 1 / ((1 - s) / 4 + s) reduces to
// 4 w / 64 = w / 16: 1.2418 for pair 1 and 5 pi / 4 for pair 2.
TEST(RopeTable, Llama3BandsWorkedByHand) {
  LlamaConfig c = config(16, 10000.0);
  c.rope_scaling = {RopeScalingType::llama3, 4.0, 1.0, 4.0, 64};
  const std::vector<double> d = rope_freq_divisors(c);
  ASSERT_EQ(d.size(), 8u);
  EXPECT_EQ(d[0], 1.0);
  EXPECT_NEAR(d[1], 2 * std::numbers::pi * std::pow(10.0, 0.5) / 16, 1e-12);
  EXPECT_NEAR(d[2], 5 * std::numbers::pi / 4, 1e-12);
  for (size_t i = 3; i < 8; ++i) EXPECT_EQ(d[i], 4.0) << i;
  const std::vector<double> f = rope_inv_freq(c);
  for (size_t i = 0; i < 8; ++i) EXPECT_NEAR(f[i], std::pow(10000.0, -static_cast<double>(i) / 8) / d[i], 1e-15);
}

// Llama 3.1 8B (theta 500000, D 128, factor 8, low 1, high 4, original 8192): wavelengths
// 2 pi 500000^(i/64) cross 2048 between i = 28 and 29 and 8192 between 34 and 35, so 29
// pairs are kept, 6 smoothed and 29 divided by 8 (the reference's Meta loop agrees).
TEST(RopeTable, Llama31EightBBands) {
  LlamaConfig c = config(128, 500000.0);
  c.rope_scaling = {RopeScalingType::llama3, 8.0, 1.0, 4.0, 8192};
  const std::vector<double> d = rope_freq_divisors(c);
  ASSERT_EQ(d.size(), 64u);
  int kept = 0, smoothed = 0, scaled = 0;
  for (size_t i = 0; i < d.size(); ++i) {
    if (d[i] == 1.0) {
      ++kept;
      EXPECT_LE(i, 28u);
    } else if (d[i] == 8.0) {
      ++scaled;
      EXPECT_GE(i, 35u);
    } else {
      ++smoothed;
      EXPECT_GT(d[i], 1.0);
      EXPECT_LT(d[i], 8.0);
      if (i > 29) {
        EXPECT_GT(d[i], d[i - 1]);  // rising through the band
      }
    }
  }
  EXPECT_EQ(kept, 29);
  EXPECT_EQ(smoothed, 6);
  EXPECT_EQ(scaled, 29);
}

// The model computes the table once, as f32, through its allocator (category weights).
TEST(RopeTable, ModelHoldsTheTable) {
  LlamaConfig c = config(16, 10000.0);
  c.rope_scaling = {RopeScalingType::llama3, 4.0, 1.0, 4.0, 64};
  auto alloc = Allocator::create(Device::cpu());
  LlamaModel model(c, *alloc);
  const Tensor& t = model.rope_inv_freq();
  ASSERT_EQ(t.shape(), (Shape{8}));
  EXPECT_EQ(t.category(), MemCategory::weights);
  const std::vector<float> v = t.to_f32();
  const std::vector<double> f = rope_inv_freq(c);
  for (size_t i = 0; i < 8; ++i) EXPECT_EQ(v[i], static_cast<float>(f[i])) << i;
}

}  // namespace
}  // namespace lmtune
