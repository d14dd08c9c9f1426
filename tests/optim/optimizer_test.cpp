// Learning-rate schedules against hand-computed values, and gradient clipping.
#include "trainer/optim/optimizer.h"

#include <gtest/gtest.h>

#include <cmath>

namespace lmtune {
namespace {

constexpr double kPi = 3.14159265358979323846;

TEST(Schedule, WarmupIsLinearFromLrOverWarmup) {
  const ScheduleOptions s{ScheduleKind::cosine, 1e-3, 0.1, 4, 20};
  EXPECT_DOUBLE_EQ(learning_rate(s, 0), 0.25e-3);
  EXPECT_DOUBLE_EQ(learning_rate(s, 1), 0.50e-3);
  EXPECT_DOUBLE_EQ(learning_rate(s, 3), 1.00e-3);
}

TEST(Schedule, CosineDecaysToTheFloorAtTheLastStep) {
  // 20 steps, 4 of warmup: the decay runs over steps 4..19 (15 intervals)
  const ScheduleOptions s{ScheduleKind::cosine, 1e-3, 0.1, 4, 20};
  EXPECT_DOUBLE_EQ(learning_rate(s, 4), 1e-3);
  EXPECT_NEAR(learning_rate(s, 19), 1e-4, 1e-15);
  const double mid = 1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + std::cos(kPi * 7.0 / 15.0));  // step 11
  EXPECT_NEAR(learning_rate(s, 11), mid, 1e-15);
}

TEST(Schedule, LinearAndConstant) {
  const ScheduleOptions lin{ScheduleKind::linear, 2e-3, 0.0, 0, 11};
  EXPECT_DOUBLE_EQ(learning_rate(lin, 0), 2e-3);
  EXPECT_NEAR(learning_rate(lin, 5), 1e-3, 1e-15);
  EXPECT_NEAR(learning_rate(lin, 10), 0.0, 1e-15);
  const ScheduleOptions con{ScheduleKind::constant, 5e-4, 0.1, 2, 100};
  EXPECT_DOUBLE_EQ(learning_rate(con, 0), 2.5e-4);
  EXPECT_DOUBLE_EQ(learning_rate(con, 2), 5e-4);
  EXPECT_DOUBLE_EQ(learning_rate(con, 99), 5e-4);
}

TEST(Clip, ScalesToTheMaxNormOnlyWhenAbove) {
  auto a = Allocator::create(Device::cpu());
  Tensor g1 = Tensor::zeros(*a, {2}, DType::f32, MemCategory::grads);
  Tensor g2 = Tensor::zeros(*a, {1}, DType::f32, MemCategory::grads);
  g1.data<float>()[0] = 3.0f;
  g2.data<float>()[0] = 4.0f;  // global norm 5
  const std::vector<ParamRef> params = {{"a", g1, g1, {}, 0}, {"b", g2, g2, {}, 0}};
  EXPECT_DOUBLE_EQ(clip_grad_norm(params, 10.0), 5.0);
  EXPECT_FLOAT_EQ(g1.data<float>()[0], 3.0f);  // below the max: untouched
  EXPECT_DOUBLE_EQ(clip_grad_norm(params, 1.0), 5.0);
  EXPECT_NEAR(grad_norm(params), 1.0, 1e-6);  // torch's coefficient: max / (norm + 1e-6)
  EXPECT_NEAR(g1.data<float>()[0], 0.6f, 1e-6);
  EXPECT_NEAR(g2.data<float>()[0], 0.8f, 1e-6);
}

TEST(AdamW, FirstStepMovesEachWeightByLrTimesTheSignOfItsGradient) {
  auto a = Allocator::create(Device::cpu());
  Tensor w = Tensor::zeros(*a, {3}, DType::f32, MemCategory::trainable);
  Tensor g = Tensor::zeros(*a, {3}, DType::f32, MemCategory::grads);
  float* wp = w.data<float>();
  float* gp = g.data<float>();
  wp[0] = 1.0f, wp[1] = -2.0f, wp[2] = 0.5f;
  gp[0] = 0.3f, gp[1] = -7.0f, gp[2] = 0.0f;
  AdamW opt({{"w", w, g, {}, 0}}, *a, {0.9, 0.999, 1e-8, 0.1});
  opt.step(0.01);
  // bias-corrected m/sqrt(v) = sign(g) on step 1; decay p -= lr * wd * p
  EXPECT_NEAR(wp[0], 1.0 - 0.01 * 0.1 * 1.0 - 0.01, 1e-6);
  EXPECT_NEAR(wp[1], -2.0 + 0.01 * 0.1 * 2.0 + 0.01, 1e-6);
  EXPECT_NEAR(wp[2], 0.5 - 0.01 * 0.1 * 0.5, 1e-7);
  EXPECT_EQ(opt.steps_taken(), 1);
  EXPECT_EQ(a->stats().of(MemCategory::optimizer).current, 2 * 512);  // m and v
}

}  // namespace
}  // namespace lmtune
