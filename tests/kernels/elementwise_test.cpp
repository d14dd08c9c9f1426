#include <gtest/gtest.h>

#include <cmath>

#include "kernels/kernel_test_util.h"
#include "kernels/ops.h"

namespace lmtune {
namespace {

using test::dot;
using test::grad_check;
using test::int_tensor;
using test::random_tensor;
using test::rel_error;

TEST(SwiGlu, ForwardAndGradients) {
  auto alloc = test::cpu_allocator();
  const int64_t N = 5, H = 7;
  Tensor gate = random_tensor(*alloc, {N, H}, 1, 2.0f);
  Tensor up = random_tensor(*alloc, {N, H}, 2);
  Tensor out = Tensor::empty(*alloc, {N, H}, DType::f32, MemCategory::activations);
  ops::swiglu_forward(out, gate, up);
  const auto g = gate.to_f32(), u = up.to_f32();
  std::vector<double> ref(g.size());
  for (size_t i = 0; i < g.size(); ++i) ref[i] = g[i] / (1.0 + std::exp(-static_cast<double>(g[i]))) * u[i];
  EXPECT_LT(rel_error(out.to_f32(), ref), 1e-6);

  const auto R = test::randn(N * H, 3);
  auto loss = [&] {
    ops::swiglu_forward(out, gate, up);
    return dot(out.to_f32(), R);
  };
  Tensor dout = test::tensor_from(*alloc, {N, H}, R);
  Tensor dgate = Tensor::empty(*alloc, {N, H}, DType::f32, MemCategory::activations);
  Tensor dup = Tensor::empty(*alloc, {N, H}, DType::f32, MemCategory::activations);
  ops::swiglu_backward(dgate, dup, dout, gate, up);
  EXPECT_LT(grad_check(gate, dgate.to_f32(), loss), 1e-2);
  EXPECT_LT(grad_check(up, dup.to_f32(), loss), 1e-2);
}

TEST(Add, ForwardAliasAndInplace) {
  auto alloc = test::cpu_allocator();
  Tensor a = random_tensor(*alloc, {3, 11}, 4);
  Tensor b = random_tensor(*alloc, {3, 11}, 5);
  Tensor out = Tensor::empty(*alloc, {3, 11}, DType::f32, MemCategory::activations);
  const auto av = a.to_f32(), bv = b.to_f32();
  ops::add_forward(out, a, b);
  const auto ov = out.to_f32();
  for (size_t i = 0; i < av.size(); ++i) EXPECT_EQ(ov[i], av[i] + bv[i]);
  ops::add_forward(a, a, b);  // out aliases a
  EXPECT_EQ(a.to_f32(), ov);
  ops::add_inplace(a, b);
  const auto a2 = a.to_f32();
  for (size_t i = 0; i < av.size(); ++i) EXPECT_EQ(a2[i], ov[i] + bv[i]);
}

TEST(Embedding, ForwardBackwardAndHalfTables) {
  auto alloc = test::cpu_allocator();
  const int64_t V = 10, C = 12;
  const std::vector<int32_t> ids = {3, 0, 9, 3, 3, 7, 0};  // repeated ids: scatter-add
  const int64_t N = static_cast<int64_t>(ids.size());
  Tensor tokens = int_tensor(*alloc, {1, N}, ids);
  Tensor table = random_tensor(*alloc, {V, C}, 6);
  Tensor out = Tensor::empty(*alloc, {1, N, C}, DType::f32, MemCategory::activations);
  ops::embedding_forward(out, tokens, table);
  const auto tv = table.to_f32(), ov = out.to_f32();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) EXPECT_EQ(ov[n * C + c], tv[ids[n] * C + c]);

  for (DType dt : {DType::bf16, DType::f16}) {
    Tensor half = Tensor::empty(*alloc, {V, C}, dt, MemCategory::weights);
    half.copy_from_host(tv.data(), DType::f32);
    const auto hv = half.to_f32();
    ops::embedding_forward(out, tokens, half);
    const auto o2 = out.to_f32();
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c) EXPECT_EQ(o2[n * C + c], hv[ids[n] * C + c]);
  }

  const auto R = test::randn(N * C, 7);
  auto loss = [&] {
    ops::embedding_forward(out, tokens, table);
    return dot(out.to_f32(), R);
  };
  Tensor dout = test::tensor_from(*alloc, {N, C}, R);
  Tensor dtable = Tensor::zeros(*alloc, {V, C}, DType::f32, MemCategory::grads);
  ops::embedding_backward(dtable, dout, tokens);
  EXPECT_LT(grad_check(table, dtable.to_f32(), loss), 1e-3);
  // += on a second call
  const auto d1 = dtable.to_f32();
  ops::embedding_backward(dtable, dout, tokens);
  const auto d2 = dtable.to_f32();
  for (size_t i = 0; i < d1.size(); ++i) EXPECT_FLOAT_EQ(d2[i], 2 * d1[i]);
}

TEST(Embedding, TokenOutsideVocabularyIsAUserError) {
  auto alloc = test::cpu_allocator();
  Tensor table = random_tensor(*alloc, {10, 4}, 1);
  Tensor out = Tensor::empty(*alloc, {2, 4}, DType::f32, MemCategory::activations);
  for (int32_t bad : {10, -1}) {
    Tensor tokens = int_tensor(*alloc, {2}, {1, bad});
    try {
      ops::embedding_forward(out, tokens, table);
      FAIL() << "no error for token " << bad;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::user);
      const std::string msg = e.what();
      EXPECT_NE(msg.find(std::to_string(bad)), std::string::npos) << msg;
      EXPECT_NE(msg.find("10"), std::string::npos) << msg;
    }
  }
}

TEST(AdamW, TwoStepsMatchHandComputedUpdate) {
  auto alloc = test::cpu_allocator();
  const std::vector<float> p0 = {0.5f, -1.0f, 2.0f}, g1 = {0.1f, -0.2f, 0.3f}, g2 = {-0.05f, 0.4f, 0.0f};
  Tensor param = test::tensor_from(*alloc, {3}, p0, MemCategory::trainable);
  Tensor m = Tensor::zeros(*alloc, {3}, DType::f32, MemCategory::optimizer);
  Tensor v = Tensor::zeros(*alloc, {3}, DType::f32, MemCategory::optimizer);
  ops::AdamWParams hp;
  hp.lr = 0.01f;
  hp.beta1 = 0.9f;
  hp.beta2 = 0.99f;
  hp.eps = 1e-6f;
  hp.weight_decay = 0.1f;
  Tensor grad1 = test::tensor_from(*alloc, {3}, g1, MemCategory::grads);
  Tensor grad2 = test::tensor_from(*alloc, {3}, g2, MemCategory::grads);
  ops::adamw_step(param, grad1, m, v, hp, 1);
  ops::adamw_step(param, grad2, m, v, hp, 2);
  const auto pv = param.to_f32();
  for (int i = 0; i < 3; ++i) {
    double p = p0[i], mm = 0.0, vv = 0.0;
    const double gs[2] = {g1[i], g2[i]};
    for (int t = 1; t <= 2; ++t) {
      const double g = gs[t - 1];
      mm = 0.9 * mm + 0.1 * g;
      vv = 0.99 * vv + 0.01 * g * g;
      const double mhat = mm / (1.0 - std::pow(0.9, t)), vhat = vv / (1.0 - std::pow(0.99, t));
      p -= 0.01 * (mhat / (std::sqrt(vhat) + 1e-6) + 0.1 * p);
    }
    EXPECT_NEAR(pv[i], p, 1e-6) << i;
  }
  // step 1 by hand for element 0: mhat = g, vhat = g^2, so p -= lr * (sign(g) + wd p)
  Tensor p1 = test::tensor_from(*alloc, {1}, {0.5f});
  Tensor m1 = Tensor::zeros(*alloc, {1}, DType::f32, MemCategory::optimizer);
  Tensor v1 = Tensor::zeros(*alloc, {1}, DType::f32, MemCategory::optimizer);
  Tensor gg = test::tensor_from(*alloc, {1}, {0.1f});
  ops::adamw_step(p1, gg, m1, v1, hp, 1);
  EXPECT_NEAR(p1.to_f32()[0], 0.5 - 0.01 * (0.1 / (0.1 + 1e-6) + 0.1 * 0.5), 1e-7);
}

TEST(Reduce, ArgmaxAndSumSquares) {
  auto alloc = test::cpu_allocator();
  Tensor logits = test::tensor_from(*alloc, {2, 5}, {1, 3, 2, 3, 0, -5, -4, -1, -2, -1});
  EXPECT_EQ(ops::argmax_row(logits, 0), 1);
  EXPECT_EQ(ops::argmax_row(logits, 1), 2);
  EXPECT_THROW(ops::argmax_row(logits, 2), Error);
  const auto xv = test::randn(100003, 3);
  Tensor x = test::tensor_from(*alloc, {100003}, xv);
  double ref = 0.0;
  for (float f : xv) ref += static_cast<double>(f) * f;
  EXPECT_NEAR(ops::sum_squares(x), ref, 1e-9 * ref);
}

}  // namespace
}  // namespace lmtune
