#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "kernels/kernel_test_util.h"
#include "kernels/ops.h"

namespace lmtune {
namespace {

using test::dot;
using test::grad_check;
using test::random_tensor;
using test::rel_error;

struct Dims {
  int64_t B, T, Hq, Hkv, D;
};

// Full softmax matrix, in double. Query row t sits at position q_pos0 + t.
void naive_attention(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                     int64_t B, int64_t T, int64_t S, int64_t Hq, int64_t Hkv, int64_t D, int64_t q_pos0,
                     std::vector<double>& out, std::vector<double>& lse) {
  out.assign(static_cast<size_t>(B * T * Hq * D), 0.0);
  lse.assign(static_cast<size_t>(B * Hq * T), 0.0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t kvh = h / (Hq / Hkv);
      for (int64_t t = 0; t < T; ++t) {
        const int64_t pos = q_pos0 + t;
        std::vector<double> s(static_cast<size_t>(pos + 1));
        double mx = -INFINITY;
        for (int64_t j = 0; j <= pos; ++j) {
          double acc = 0.0;
          for (int64_t d = 0; d < D; ++d)
            acc += static_cast<double>(q[((b * T + t) * Hq + h) * D + d]) * k[((b * S + j) * Hkv + kvh) * D + d];
          s[j] = acc * scale;
          mx = std::max(mx, s[j]);
        }
        double sum = 0.0;
        for (double& x : s) sum += (x = std::exp(x - mx));
        for (int64_t j = 0; j <= pos; ++j)
          for (int64_t d = 0; d < D; ++d)
            out[((b * T + t) * Hq + h) * D + d] += s[j] / sum * v[((b * S + j) * Hkv + kvh) * D + d];
        lse[(b * Hq + h) * T + t] = mx + std::log(sum);
      }
    }
}

class AttentionForward : public ::testing::TestWithParam<Dims> {};

TEST_P(AttentionForward, MatchesNaiveSoftmax) {
  const Dims d = GetParam();
  auto alloc = test::cpu_allocator();
  Tensor q = random_tensor(*alloc, {d.B, d.T, d.Hq, d.D}, 1);
  Tensor k = random_tensor(*alloc, {d.B, d.T, d.Hkv, d.D}, 2);
  Tensor v = random_tensor(*alloc, {d.B, d.T, d.Hkv, d.D}, 3);
  Tensor out = Tensor::empty(*alloc, q.shape(), DType::f32, MemCategory::activations);
  Tensor lse = Tensor::empty(*alloc, {d.B, d.Hq, d.T}, DType::f32, MemCategory::activations);
  ops::attention_forward(out, &lse, q, k, v, 0);
  std::vector<double> ref_out, ref_lse;
  naive_attention(q.to_f32(), k.to_f32(), v.to_f32(), d.B, d.T, d.T, d.Hq, d.Hkv, d.D, 0, ref_out, ref_lse);
  EXPECT_LT(rel_error(out.to_f32(), ref_out), 1e-5);
  EXPECT_LT(rel_error(lse.to_f32(), ref_lse), 1e-5);
  // lse may be omitted
  Tensor out2 = Tensor::empty(*alloc, q.shape(), DType::f32, MemCategory::activations);
  ops::attention_forward(out2, nullptr, q, k, v, 0);
  EXPECT_EQ(out2.to_f32(), out.to_f32());
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionForward,
                         ::testing::Values(Dims{2, 5, 6, 2, 4}, Dims{2, 5, 6, 3, 8}, Dims{1, 7, 3, 3, 5},
                                           Dims{2, 70, 4, 2, 8},     // crosses query and key blocks
                                           Dims{1, 131, 3, 1, 48},   // several blocks, partial last
                                           Dims{1, 9, 2, 1, 256}));  // the largest head dim

// Decoding: query rows at q_pos0 > 0 against a KV cache give the full-sequence rows; cache
// rows past q_pos0 + T are never read (they hold NaN here).
TEST(Attention, DecodingRowsMatchFullSequence) {
  auto alloc = test::cpu_allocator();
  const int64_t B = 2, T = 77, Hq = 6, Hkv = 2, D = 8, S = 90;
  Tensor q = random_tensor(*alloc, {B, T, Hq, D}, 4);
  Tensor k = random_tensor(*alloc, {B, T, Hkv, D}, 5);
  Tensor v = random_tensor(*alloc, {B, T, Hkv, D}, 6);
  Tensor out = Tensor::empty(*alloc, q.shape(), DType::f32, MemCategory::activations);
  Tensor lse = Tensor::empty(*alloc, {B, Hq, T}, DType::f32, MemCategory::activations);
  ops::attention_forward(out, &lse, q, k, v, 0);
  const auto full = out.to_f32(), full_lse = lse.to_f32();
  const auto qv = q.to_f32(), kv = k.to_f32(), vv = v.to_f32();
  std::vector<float> kc(static_cast<size_t>(B * S * Hkv * D), std::numeric_limits<float>::quiet_NaN()), vc = kc;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < T * Hkv * D; ++i) {
      kc[b * S * Hkv * D + i] = kv[b * T * Hkv * D + i];
      vc[b * S * Hkv * D + i] = vv[b * T * Hkv * D + i];
    }
  Tensor kcache = test::tensor_from(*alloc, {B, S, Hkv, D}, kc);
  Tensor vcache = test::tensor_from(*alloc, {B, S, Hkv, D}, vc);
  for (int64_t pos0 : {int64_t{76}, int64_t{60}, int64_t{1}}) {
    const int64_t Tn = T - pos0;
    std::vector<float> qn;
    for (int64_t b = 0; b < B; ++b)
      qn.insert(qn.end(), qv.begin() + (b * T + pos0) * Hq * D, qv.begin() + (b * T + T) * Hq * D);
    Tensor qd = test::tensor_from(*alloc, {B, Tn, Hq, D}, qn);
    Tensor od = Tensor::empty(*alloc, qd.shape(), DType::f32, MemCategory::activations);
    Tensor ld = Tensor::empty(*alloc, {B, Hq, Tn}, DType::f32, MemCategory::activations);
    ops::attention_forward(od, &ld, qd, kcache, vcache, pos0);
    const auto o = od.to_f32(), l = ld.to_f32();
    double max_diff = 0.0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < Tn; ++t) {
        for (int64_t i = 0; i < Hq * D; ++i)
          max_diff = std::max<double>(max_diff, std::abs(o[(b * Tn + t) * Hq * D + i] -
                                                         full[(b * T + pos0 + t) * Hq * D + i]));
        for (int64_t h = 0; h < Hq; ++h)
          max_diff = std::max<double>(max_diff,
                                      std::abs(l[(b * Hq + h) * Tn + t] - full_lse[(b * Hq + h) * T + pos0 + t]));
      }
    EXPECT_LT(max_diff, 1e-5) << "q_pos0 = " << pos0;
  }
  // q_pos0 + T past the cache is an error
  Tensor od = Tensor::empty(*alloc, q.shape(), DType::f32, MemCategory::activations);
  EXPECT_THROW(ops::attention_forward(od, nullptr, q, kcache, vcache, 14), Error);
}

class AttentionBackward : public ::testing::TestWithParam<Dims> {};

TEST_P(AttentionBackward, GradientsMatchFiniteDifferences) {
  const Dims d = GetParam();
  auto alloc = test::cpu_allocator();
  Tensor q = random_tensor(*alloc, {d.B, d.T, d.Hq, d.D}, 7);
  Tensor k = random_tensor(*alloc, {d.B, d.T, d.Hkv, d.D}, 8);
  Tensor v = random_tensor(*alloc, {d.B, d.T, d.Hkv, d.D}, 9);
  Tensor out = Tensor::empty(*alloc, q.shape(), DType::f32, MemCategory::activations);
  Tensor lse = Tensor::empty(*alloc, {d.B, d.Hq, d.T}, DType::f32, MemCategory::activations);
  const std::vector<float> R = test::randn(q.numel(), 10);
  auto loss = [&] {
    ops::attention_forward(out, nullptr, q, k, v, 0);
    return dot(out.to_f32(), R);
  };
  ops::attention_forward(out, &lse, q, k, v, 0);
  Tensor dout = test::tensor_from(*alloc, q.shape(), R);
  Tensor dq = Tensor::empty(*alloc, q.shape(), DType::f32, MemCategory::activations);
  Tensor dk = Tensor::empty(*alloc, k.shape(), DType::f32, MemCategory::activations);
  Tensor dv = Tensor::empty(*alloc, k.shape(), DType::f32, MemCategory::activations);
  dq.fill_(7.0f);  // written, not accumulated
  dk.fill_(7.0f);
  dv.fill_(7.0f);
  ops::attention_backward(dq, dk, dv, dout, q, k, v, out, lse);
  EXPECT_LT(grad_check(q, dq.to_f32(), loss), 1e-2);
  EXPECT_LT(grad_check(k, dk.to_f32(), loss), 1e-2);
  EXPECT_LT(grad_check(v, dv.to_f32(), loss), 1e-2);
  EXPECT_EQ(alloc->stats().of(MemCategory::workspace).current, 0);
}

// Group sizes Hq / Hkv = 1, 2, 3; the last shape crosses the 64-key block boundary.
INSTANTIATE_TEST_SUITE_P(Shapes, AttentionBackward,
                         ::testing::Values(Dims{2, 5, 6, 6, 4}, Dims{2, 5, 6, 3, 8}, Dims{2, 5, 6, 2, 4},
                                           Dims{1, 7, 3, 1, 5}, Dims{1, 70, 2, 1, 3}));

}  // namespace
}  // namespace lmtune
