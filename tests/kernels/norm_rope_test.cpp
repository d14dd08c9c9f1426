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

TEST(RmsNorm, ForwardMatchesNaive) {
  auto alloc = test::cpu_allocator();
  const int64_t N = 6, C = 12;
  const float eps = 1e-5f;
  Tensor inp = random_tensor(*alloc, {2, 3, C}, 1);
  Tensor w = random_tensor(*alloc, {C}, 2);
  Tensor out = Tensor::empty(*alloc, inp.shape(), DType::f32, MemCategory::activations);
  Tensor rstd = Tensor::empty(*alloc, {2, 3}, DType::f32, MemCategory::activations);
  ops::rmsnorm_forward(out, rstd, inp, w, eps);
  const auto x = inp.to_f32(), wv = w.to_f32();
  std::vector<double> ref(static_cast<size_t>(N * C)), ref_r(static_cast<size_t>(N));
  for (int64_t n = 0; n < N; ++n) {
    double ss = 0.0;
    for (int64_t c = 0; c < C; ++c) ss += static_cast<double>(x[n * C + c]) * x[n * C + c];
    ref_r[n] = 1.0 / std::sqrt(ss / C + eps);
    for (int64_t c = 0; c < C; ++c) ref[n * C + c] = x[n * C + c] * ref_r[n] * wv[c];
  }
  EXPECT_LT(rel_error(out.to_f32(), ref), 1e-6);
  EXPECT_LT(rel_error(rstd.to_f32(), ref_r), 1e-6);
}

TEST(RmsNorm, GradientsMatchFiniteDifferences) {
  auto alloc = test::cpu_allocator();
  const int64_t N = 5, C = 12;
  Tensor inp = random_tensor(*alloc, {N, C}, 3);
  Tensor w = random_tensor(*alloc, {C}, 4);
  Tensor out = Tensor::empty(*alloc, {N, C}, DType::f32, MemCategory::activations);
  Tensor rstd = Tensor::empty(*alloc, {N}, DType::f32, MemCategory::activations);
  const auto R = test::randn(N * C, 5);
  auto loss = [&] {
    ops::rmsnorm_forward(out, rstd, inp, w, 1e-5f);
    return dot(out.to_f32(), R);
  };
  loss();
  Tensor dout = test::tensor_from(*alloc, {N, C}, R);
  Tensor dinp = Tensor::empty(*alloc, {N, C}, DType::f32, MemCategory::activations);
  Tensor dw = Tensor::zeros(*alloc, {C}, DType::f32, MemCategory::grads);
  ops::rmsnorm_backward(dinp, dw, dout, inp, w, rstd);
  EXPECT_LT(grad_check(inp, dinp.to_f32(), loss, 1e-3f), 1e-2);
  EXPECT_LT(grad_check(w, dw.to_f32(), loss), 1e-2);

  // accumulate: dinp += grad, dweight += grad
  const auto g = dinp.to_f32(), gw = dw.to_f32();
  ops::rmsnorm_backward(dinp, dw, dout, inp, w, rstd, ops::GradWrite::accumulate);
  const auto g2 = dinp.to_f32(), gw2 = dw.to_f32();
  for (size_t i = 0; i < g.size(); ++i) EXPECT_NEAR(g2[i], 2 * g[i], 1e-5);
  for (size_t i = 0; i < gw.size(); ++i) EXPECT_NEAR(gw2[i], 2 * gw[i], 1e-5);
}

// The f32 frequency table theta^(-2i/D) / divisor[i] (divisors default to 1), as the model
// builds it from its config (trainer/model/rope.h).
Tensor freq_table(Allocator& alloc, int64_t D, double theta, const std::vector<double>& divisors = {}) {
  std::vector<float> f(static_cast<size_t>(D / 2));
  for (int64_t i = 0; i < D / 2; ++i)
    f[i] = static_cast<float>(std::pow(theta, -2.0 * i / D) / (divisors.empty() ? 1.0 : divisors[i]));
  Tensor t = Tensor::empty(alloc, {D / 2}, DType::f32, MemCategory::weights);
  t.copy_from_host(f.data(), DType::f32);
  return t;
}

// out[i] = x[i] cos - x[i + D/2] sin, out[i + D/2] = x[i + D/2] cos + x[i] sin, in double,
// with angle (pos0 + t) * inv_freq[i].
std::vector<double> naive_rope(const std::vector<float>& x, int64_t B, int64_t T, int64_t H, int64_t D, int64_t pos0,
                               const std::vector<float>& inv_freq) {
  std::vector<double> out(x.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < D / 2; ++i) {
          const double angle = static_cast<double>(pos0 + t) * static_cast<double>(inv_freq[i]);
          const int64_t base = ((b * T + t) * H + h) * D;
          const double a = x[base + i], c = x[base + i + D / 2];
          out[base + i] = a * std::cos(angle) - c * std::sin(angle);
          out[base + i + D / 2] = c * std::cos(angle) + a * std::sin(angle);
        }
  return out;
}

TEST(Rope, ForwardMatchesFormulaIncludingLargePositions) {
  auto alloc = test::cpu_allocator();
  const int64_t B = 2, T = 5, H = 3, D = 8;
  Tensor x = random_tensor(*alloc, {B, T, H, D}, 6);
  Tensor out = Tensor::empty(*alloc, x.shape(), DType::f32, MemCategory::activations);
  for (auto [pos0, theta] : {std::pair<int64_t, double>{0, 10000.0}, {3, 10000.0}, {100000, 500000.0},
                             {1000003, 1e6}}) {
    const Tensor freqs = freq_table(*alloc, D, theta);
    ops::rope_forward(out, x, pos0, freqs);
    EXPECT_LT(rel_error(out.to_f32(), naive_rope(x.to_f32(), B, T, H, D, pos0, freqs.to_f32())), 1e-5)
        << "pos0 " << pos0 << " theta " << theta;
  }
  // The table is the rotation: pair 0 of a unit vector at position 2 with inv_freq[0] = 1 is
  // (cos 2, sin 2); pair 1 with inv_freq[1] = 0.25 (a scaled band) is (cos 0.5, sin 0.5).
  Tensor e = Tensor::zeros(*alloc, {1, 3, 1, 4}, DType::f32, MemCategory::activations);
  std::vector<float> ev(12, 0.0f);
  ev[8] = ev[9] = 1.0f;  // t = 2: x[0] = x[1] = 1
  e.copy_from_host(ev.data(), DType::f32);
  std::vector<float> table = {1.0f, 0.25f};
  Tensor f = Tensor::empty(*alloc, {2}, DType::f32, MemCategory::weights);
  f.copy_from_host(table.data(), DType::f32);
  ops::rope_forward(e, e, 0, f);
  const auto r = e.to_f32();
  EXPECT_NEAR(r[8], std::cos(2.0), 1e-6);
  EXPECT_NEAR(r[10], std::sin(2.0), 1e-6);
  EXPECT_NEAR(r[9], std::cos(0.5), 1e-6);
  EXPECT_NEAR(r[11], std::sin(0.5), 1e-6);
}

TEST(Rope, DecodingRowsMatchFullSequenceAndInPlace) {
  auto alloc = test::cpu_allocator();
  const int64_t B = 1, T = 9, H = 2, D = 6;
  const Tensor freqs = freq_table(*alloc, D, 10000.0);
  const auto xv = test::randn(B * T * H * D, 7);
  Tensor x = test::tensor_from(*alloc, {B, T, H, D}, xv);
  Tensor full = Tensor::empty(*alloc, x.shape(), DType::f32, MemCategory::activations);
  ops::rope_forward(full, x, 0, freqs);
  const auto fv = full.to_f32();
  const int64_t pos0 = 6;
  std::vector<float> tail(xv.begin() + pos0 * H * D, xv.end());
  Tensor part = test::tensor_from(*alloc, {B, T - pos0, H, D}, tail);
  ops::rope_forward(part, part, pos0, freqs);  // in place
  EXPECT_EQ(part.to_f32(), std::vector<float>(fv.begin() + pos0 * H * D, fv.end()));
}

TEST(Rope, BackwardIsInverseRotationAndMatchesFiniteDifferences) {
  auto alloc = test::cpu_allocator();
  const int64_t B = 2, T = 5, H = 3, D = 8;
  // Unscaled, and with scaled bands (Llama 3.1-like divisors 1, 1.7, 8, 8).
  for (const std::vector<double>& divisors : {std::vector<double>{}, std::vector<double>{1.0, 1.7, 8.0, 8.0}}) {
    SCOPED_TRACE(divisors.empty() ? "unscaled" : "scaled");
    const Tensor freqs = freq_table(*alloc, D, 10000.0, divisors);
    Tensor x = random_tensor(*alloc, {B, T, H, D}, 8);
    Tensor out = Tensor::empty(*alloc, x.shape(), DType::f32, MemCategory::activations);
    const auto R = test::randn(x.numel(), 9);
    auto loss = [&] {
      ops::rope_forward(out, x, 4, freqs);
      return dot(out.to_f32(), R);
    };
    Tensor dx = test::tensor_from(*alloc, x.shape(), R);
    ops::rope_backward(dx, dx, 4, freqs);  // in place
    EXPECT_LT(grad_check(x, dx.to_f32(), loss), 1e-2);
    // R^T R = I
    ops::rope_forward(out, x, 4, freqs);
    EXPECT_LT(rel_error(out.to_f32(), naive_rope(x.to_f32(), B, T, H, D, 4, freqs.to_f32())), 1e-5);
    ops::rope_backward(out, out, 4, freqs);
    EXPECT_LT(rel_error(out.to_f32(), x.to_f32()), 1e-6);
  }
}

TEST(Rope, OddHeadDimAndWrongTableAreErrors) {
  auto alloc = test::cpu_allocator();
  Tensor x = random_tensor(*alloc, {1, 2, 1, 5}, 1);
  const Tensor f2 = freq_table(*alloc, 4, 10000.0);
  EXPECT_THROW(ops::rope_forward(x, x, 0, f2), Error);
  Tensor y = random_tensor(*alloc, {1, 2, 1, 8}, 1);
  EXPECT_THROW(ops::rope_forward(y, y, 0, f2), Error);  // a table of 2 for D/2 = 4
}

}  // namespace
}  // namespace lmtune
