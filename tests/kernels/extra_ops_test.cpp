// scale_inplace, dropout, linear_forward with GradWrite/scale, rmsnorm_backward without a
// weight gradient (the ops LoRA, the optimizer and frozen norms use).
#include <gtest/gtest.h>

#include <cmath>

#include "kernels/kernel_test_util.h"
#include "kernels/ops.h"

namespace lmtune {
namespace {

using test::dot;
using test::grad_check;
using test::random_tensor;
using test::rel_error;

TEST(ExtraOps, ScaleInplace) {
  auto alloc = test::cpu_allocator();
  Tensor t = random_tensor(*alloc, {3, 7}, 1);
  const auto before = t.to_f32();
  ops::scale_inplace(t, -0.5f);
  const auto after = t.to_f32();
  for (size_t i = 0; i < before.size(); ++i) EXPECT_EQ(after[i], -0.5f * before[i]);
}

TEST(ExtraOps, LinearForwardAccumulateWithScale) {
  auto alloc = test::cpu_allocator();
  const int64_t N = 5, IC = 7, OC = 6;
  Tensor inp = random_tensor(*alloc, {N, IC}, 2);
  Tensor w = random_tensor(*alloc, {OC, IC}, 3);
  Tensor b = random_tensor(*alloc, {OC}, 4);
  const auto bv = b.to_f32();
  for (DType dt : {DType::f32, DType::bf16}) {
    Tensor wt = Tensor::empty(*alloc, {OC, IC}, dt, MemCategory::weights);
    wt.copy_from_host(w.to_f32().data(), DType::f32);
    Tensor wr = test::tensor_from(*alloc, {OC, IC}, wt.to_f32());
    Tensor ref = Tensor::empty(*alloc, {N, OC}, DType::f32, MemCategory::activations);
    ops::linear_forward(ref, inp, wr, nullptr);
    const auto rv = ref.to_f32();
    Tensor out = random_tensor(*alloc, {N, OC}, 5);
    const auto base = out.to_f32();
    ops::linear_forward(out, inp, wt, &b, ops::GradWrite::accumulate, 0.25f);
    const auto ov = out.to_f32();
    for (int64_t n = 0; n < N; ++n)
      for (int64_t o = 0; o < OC; ++o)
        EXPECT_NEAR(ov[n * OC + o], base[n * OC + o] + 0.25f * rv[n * OC + o] + bv[o], 1e-5);
    ops::linear_forward(out, inp, wt, nullptr, ops::GradWrite::assign, 2.0f);
    const auto o2 = out.to_f32();
    for (size_t i = 0; i < o2.size(); ++i) EXPECT_NEAR(o2[i], 2.0f * rv[i], 1e-5);
  }
}

TEST(ExtraOps, RmsNormBackwardWithoutWeightGrad) {
  auto alloc = test::cpu_allocator();
  const int64_t N = 4, C = 9;
  Tensor inp = random_tensor(*alloc, {N, C}, 6);
  Tensor w = random_tensor(*alloc, {C}, 7);
  Tensor out = Tensor::empty(*alloc, {N, C}, DType::f32, MemCategory::activations);
  Tensor rstd = Tensor::empty(*alloc, {N}, DType::f32, MemCategory::activations);
  ops::rmsnorm_forward(out, rstd, inp, w, 1e-5f);
  Tensor dout = random_tensor(*alloc, {N, C}, 8);
  Tensor d1 = Tensor::empty(*alloc, {N, C}, DType::f32, MemCategory::activations);
  Tensor d2 = Tensor::empty(*alloc, {N, C}, DType::f32, MemCategory::activations);
  Tensor dw = Tensor::zeros(*alloc, {C}, DType::f32, MemCategory::grads);
  ops::rmsnorm_backward(d1, dw, dout, inp, w, rstd);
  ops::rmsnorm_backward(d2, nullptr, dout, inp, w, rstd, ops::GradWrite::assign);
  EXPECT_EQ(d1.to_f32(), d2.to_f32());
}

TEST(ExtraOps, DropoutMaskIsReproducibleAndGradientMatches) {
  auto alloc = test::cpu_allocator();
  const int64_t N = 6, C = 1000;
  const float p = 0.3f;
  Tensor inp = random_tensor(*alloc, {N, C}, 9);
  Tensor out = Tensor::empty(*alloc, {N, C}, DType::f32, MemCategory::activations);
  ops::dropout_forward(out, inp, p, 42);
  const auto iv = inp.to_f32(), ov = out.to_f32();
  int64_t dropped = 0;
  for (size_t i = 0; i < iv.size(); ++i) {
    if (ov[i] == 0.0f) {
      ++dropped;
    } else {
      EXPECT_NEAR(ov[i], iv[i] / (1.0f - p), 1e-6);
    }
  }
  EXPECT_NEAR(static_cast<double>(dropped) / (N * C), p, 0.03);
  Tensor out2 = Tensor::empty(*alloc, {N, C}, DType::f32, MemCategory::activations);
  ops::dropout_forward(out2, inp, p, 42);
  EXPECT_EQ(out2.to_f32(), ov);
  ops::dropout_forward(out2, inp, p, 43);
  EXPECT_NE(out2.to_f32(), ov);

  // backward: the same mask; assign and accumulate
  Tensor small = random_tensor(*alloc, {3, 5}, 10);
  Tensor so = Tensor::empty(*alloc, {3, 5}, DType::f32, MemCategory::activations);
  const auto R = test::randn(15, 11);
  auto loss = [&] {
    ops::dropout_forward(so, small, 0.5f, 7);
    return dot(so.to_f32(), R);
  };
  Tensor dout = test::tensor_from(*alloc, {3, 5}, R);
  Tensor dinp = Tensor::empty(*alloc, {3, 5}, DType::f32, MemCategory::activations);
  ops::dropout_backward(dinp, dout, 0.5f, 7, 0, ops::GradWrite::assign);
  EXPECT_LT(grad_check(small, dinp.to_f32(), loss), 1e-3);
  const auto g = dinp.to_f32();
  ops::dropout_backward(dinp, dout, 0.5f, 7, 0, ops::GradWrite::accumulate);
  const auto g2 = dinp.to_f32();
  for (size_t i = 0; i < g.size(); ++i) EXPECT_EQ(g2[i], 2 * g[i]);
}

// A data-parallel rank drops the elements of its rows exactly as one process holding the
// whole batch does: the two halves with index0 = 0 and N*C reproduce the whole tensor's mask.
TEST(ExtraOps, DropoutIndexOffsetSplitsTheMaskByRows) {
  auto alloc = test::cpu_allocator();
  const int64_t N = 4, C = 37;
  Tensor inp = random_tensor(*alloc, {2 * N, C}, 12);
  Tensor whole = Tensor::empty(*alloc, {2 * N, C}, DType::f32, MemCategory::activations);
  ops::dropout_forward(whole, inp, 0.4f, 99);
  std::vector<float> halves;
  for (int64_t h = 0; h < 2; ++h) {
    Tensor part = Tensor::empty(*alloc, {N, C}, DType::f32, MemCategory::activations);
    ops::dropout_forward(part, inp.view(h * N * C, {N, C}), 0.4f, 99, h * N * C);
    const auto v = part.to_f32();
    halves.insert(halves.end(), v.begin(), v.end());
  }
  EXPECT_EQ(halves, whole.to_f32());
  // and the offset matters: the second half drawn at offset 0 is another mask
  Tensor wrong = Tensor::empty(*alloc, {N, C}, DType::f32, MemCategory::activations);
  ops::dropout_forward(wrong, inp.view(N * C, {N, C}), 0.4f, 99, 0);
  EXPECT_NE(wrong.to_f32(), std::vector<float>(halves.begin() + N * C, halves.end()));
}

// W += s * B A against a hand loop in double.
TEST(ExtraOps, LoraMergeAddsTheScaledProduct) {
  auto alloc = test::cpu_allocator();
  const int64_t OC = 7, IC = 5, r = 3;
  Tensor w = random_tensor(*alloc, {OC, IC}, 13), a = random_tensor(*alloc, {r, IC}, 14),
         b = random_tensor(*alloc, {OC, r}, 15);
  const auto w0 = w.to_f32(), av = a.to_f32(), bv = b.to_f32();
  ops::lora_merge(w, a, b, 0.75f);
  const auto w1 = w.to_f32();
  for (int64_t i = 0; i < OC; ++i)
    for (int64_t j = 0; j < IC; ++j) {
      double acc = 0;
      for (int64_t k = 0; k < r; ++k) acc += static_cast<double>(bv[i * r + k]) * av[k * IC + j];
      EXPECT_FLOAT_EQ(w1[i * IC + j], w0[i * IC + j] + static_cast<float>(0.75 * acc));
    }
}

}  // namespace
}  // namespace lmtune
