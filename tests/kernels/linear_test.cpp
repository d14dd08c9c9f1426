#include <gtest/gtest.h>

#include <tuple>

#include "kernels/kernel_test_util.h"
#include "kernels/ops.h"

namespace lmtune {
namespace {

using test::dot;
using test::grad_check;
using test::random_tensor;
using test::rel_error;

// out[n, o] = sum_i inp[n, i] w[o, i] + b[o], in double
std::vector<double> naive_linear(const std::vector<float>& inp, const std::vector<float>& w,
                                 const std::vector<float>* b, int64_t N, int64_t IC, int64_t OC) {
  std::vector<double> out(static_cast<size_t>(N * OC));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < OC; ++o) {
      double s = b ? (*b)[o] : 0.0;
      for (int64_t i = 0; i < IC; ++i) s += static_cast<double>(inp[n * IC + i]) * w[o * IC + i];
      out[n * OC + o] = s;
    }
  return out;
}

TEST(Linear, ForwardMatchesNaive) {
  auto alloc = test::cpu_allocator();
  const int64_t N = 7, IC = 13, OC = 11;
  Tensor inp = random_tensor(*alloc, {N, IC}, 1);
  Tensor w = random_tensor(*alloc, {OC, IC}, 2);
  Tensor b = random_tensor(*alloc, {OC}, 3);
  Tensor out = Tensor::empty(*alloc, {N, OC}, DType::f32, MemCategory::activations);
  ops::linear_forward(out, inp, w, &b);
  const auto bv = b.to_f32();
  EXPECT_LT(rel_error(out.to_f32(), naive_linear(inp.to_f32(), w.to_f32(), &bv, N, IC, OC)), 1e-5);
  ops::linear_forward(out, inp, w, nullptr);
  EXPECT_LT(rel_error(out.to_f32(), naive_linear(inp.to_f32(), w.to_f32(), nullptr, N, IC, OC)), 1e-5);
}

TEST(Linear, ThreeDimensionalInputFlattensLeadingDims) {
  auto alloc = test::cpu_allocator();
  Tensor inp = random_tensor(*alloc, {2, 3, 5}, 4);
  Tensor w = random_tensor(*alloc, {6, 5}, 5);
  Tensor out = Tensor::empty(*alloc, {2, 3, 6}, DType::f32, MemCategory::activations);
  ops::linear_forward(out, inp, w, nullptr);
  EXPECT_LT(rel_error(out.to_f32(), naive_linear(inp.to_f32(), w.to_f32(), nullptr, 6, 5, 6)), 1e-5);
}

TEST(Linear, GradientsMatchFiniteDifferences) {
  auto alloc = test::cpu_allocator();
  const int64_t N = 5, IC = 7, OC = 6;
  Tensor inp = random_tensor(*alloc, {N, IC}, 11);
  Tensor w = random_tensor(*alloc, {OC, IC}, 12);
  Tensor b = random_tensor(*alloc, {OC}, 13);
  Tensor out = Tensor::empty(*alloc, {N, OC}, DType::f32, MemCategory::activations);
  const std::vector<float> R = test::randn(N * OC, 14);
  auto loss = [&] {
    ops::linear_forward(out, inp, w, &b);
    return dot(out.to_f32(), R);
  };
  Tensor dout = test::tensor_from(*alloc, {N, OC}, R);
  Tensor dinp = Tensor::empty(*alloc, {N, IC}, DType::f32, MemCategory::activations);
  Tensor dw = Tensor::zeros(*alloc, {OC, IC}, DType::f32, MemCategory::grads);
  Tensor db = Tensor::zeros(*alloc, {OC}, DType::f32, MemCategory::grads);
  ops::linear_backward(&dinp, &dw, &db, dout, inp, w);
  EXPECT_LT(grad_check(inp, dinp.to_f32(), loss), 1e-2);
  EXPECT_LT(grad_check(w, dw.to_f32(), loss), 1e-2);
  EXPECT_LT(grad_check(b, db.to_f32(), loss), 1e-2);
}

TEST(Linear, GradWriteAccumulateAndParameterGradsAccumulate) {
  auto alloc = test::cpu_allocator();
  const int64_t N = 4, IC = 9, OC = 5;
  Tensor inp = random_tensor(*alloc, {N, IC}, 21);
  Tensor w = random_tensor(*alloc, {OC, IC}, 22);
  Tensor dout = random_tensor(*alloc, {N, OC}, 23);
  Tensor dinp1 = Tensor::empty(*alloc, {N, IC}, DType::f32, MemCategory::activations);
  Tensor dw = Tensor::zeros(*alloc, {OC, IC}, DType::f32, MemCategory::grads);
  Tensor db = Tensor::zeros(*alloc, {OC}, DType::f32, MemCategory::grads);
  dinp1.fill_(123.0f);  // assign must overwrite garbage
  ops::linear_backward(&dinp1, &dw, &db, dout, inp, w);
  const auto g1 = dinp1.to_f32(), dw1 = dw.to_f32(), db1 = db.to_f32();
  Tensor dinp2 = test::random_tensor(*alloc, {N, IC}, 24);
  const auto base = dinp2.to_f32();
  ops::linear_backward(&dinp2, &dw, &db, dout, inp, w, ops::GradWrite::accumulate);
  const auto g2 = dinp2.to_f32(), dw2 = dw.to_f32(), db2 = db.to_f32();
  for (size_t i = 0; i < g1.size(); ++i) EXPECT_NEAR(g2[i], base[i] + g1[i], 1e-5);
  for (size_t i = 0; i < dw1.size(); ++i) EXPECT_NEAR(dw2[i], 2 * dw1[i], 1e-5);
  for (size_t i = 0; i < db1.size(); ++i) EXPECT_NEAR(db2[i], 2 * db1[i], 1e-5);
  // nullptr outputs are skipped
  ops::linear_backward(nullptr, nullptr, nullptr, dout, inp, w);
}

// bf16/f16 weights: same result as f32 weights rounded to that type. OC * IC is above the
// conversion chunk (4M elements), so several chunks and the chunked dinp accumulation run.
class LinearHalfWeights : public ::testing::TestWithParam<DType> {};

TEST_P(LinearHalfWeights, MatchRoundedF32Weights) {
  const DType dt = GetParam();
  auto alloc = test::cpu_allocator();
  const int64_t N = 3, IC = 1000, OC = 4500;
  Tensor inp = random_tensor(*alloc, {N, IC}, 31);
  const auto wv = test::randn(OC * IC, 32, 0.05f);
  Tensor w_half = Tensor::empty(*alloc, {OC, IC}, dt, MemCategory::weights);
  w_half.copy_from_host(wv.data(), DType::f32);
  Tensor w_round = test::tensor_from(*alloc, {OC, IC}, w_half.to_f32(), MemCategory::weights);
  Tensor b = random_tensor(*alloc, {OC}, 33);
  Tensor out_half = Tensor::empty(*alloc, {N, OC}, DType::f32, MemCategory::activations);
  Tensor out_ref = Tensor::empty(*alloc, {N, OC}, DType::f32, MemCategory::activations);
  ops::linear_forward(out_half, inp, w_half, &b);
  ops::linear_forward(out_ref, inp, w_round, &b);
  EXPECT_LT(rel_error(out_half.to_f32(), out_ref.to_f32()), 1e-5);

  Tensor dout = random_tensor(*alloc, {N, OC}, 34);
  Tensor dinp_half = random_tensor(*alloc, {N, IC}, 35);
  Tensor dinp_ref = test::tensor_from(*alloc, {N, IC}, dinp_half.to_f32());
  ops::linear_backward(&dinp_half, nullptr, nullptr, dout, inp, w_half, ops::GradWrite::accumulate);
  ops::linear_backward(&dinp_ref, nullptr, nullptr, dout, inp, w_round, ops::GradWrite::accumulate);
  EXPECT_LT(rel_error(dinp_half.to_f32(), dinp_ref.to_f32()), 1e-5);
  ops::linear_backward(&dinp_half, nullptr, nullptr, dout, inp, w_half);
  ops::linear_backward(&dinp_ref, nullptr, nullptr, dout, inp, w_round);
  EXPECT_LT(rel_error(dinp_half.to_f32(), dinp_ref.to_f32()), 1e-5);
  // The conversion workspace was given back.
  EXPECT_EQ(alloc->stats().of(MemCategory::workspace).current, 0);
  EXPECT_GT(alloc->stats().of(MemCategory::workspace).peak, 0);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, LinearHalfWeights, ::testing::Values(DType::bf16, DType::f16));

// Shapes big enough that gemm() splits C over threads (by columns or by rows, with and without
// transposed operands); all three products against double references.
TEST(Linear, ThreadedGemmPanelsMatchNaive) {
  auto alloc = test::cpu_allocator();
  for (auto [N, IC, OC] : {std::tuple<int64_t, int64_t, int64_t>{37, 70, 301}, {301, 70, 37}, {130, 129, 131}}) {
    Tensor inp = random_tensor(*alloc, {N, IC}, 41);
    Tensor w = random_tensor(*alloc, {OC, IC}, 42);
    Tensor dout = random_tensor(*alloc, {N, OC}, 43);
    Tensor out = Tensor::empty(*alloc, {N, OC}, DType::f32, MemCategory::activations);
    Tensor dinp = Tensor::empty(*alloc, {N, IC}, DType::f32, MemCategory::activations);
    Tensor dw = Tensor::zeros(*alloc, {OC, IC}, DType::f32, MemCategory::grads);
    ops::linear_forward(out, inp, w, nullptr);
    ops::linear_backward(&dinp, &dw, nullptr, dout, inp, w);
    const auto x = inp.to_f32(), wv = w.to_f32(), g = dout.to_f32();
    EXPECT_LT(rel_error(out.to_f32(), naive_linear(x, wv, nullptr, N, IC, OC)), 1e-5);
    std::vector<double> ref_dinp(static_cast<size_t>(N * IC), 0.0), ref_dw(static_cast<size_t>(OC * IC), 0.0);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t o = 0; o < OC; ++o)
        for (int64_t i = 0; i < IC; ++i) {
          ref_dinp[n * IC + i] += static_cast<double>(g[n * OC + o]) * wv[o * IC + i];
          ref_dw[o * IC + i] += static_cast<double>(g[n * OC + o]) * x[n * IC + i];
        }
    EXPECT_LT(rel_error(dinp.to_f32(), ref_dinp), 1e-5) << N << " " << IC << " " << OC;
    EXPECT_LT(rel_error(dw.to_f32(), ref_dw), 1e-5) << N << " " << IC << " " << OC;
  }
}

TEST(Linear, ShapeMismatchIsAnError) {
  auto alloc = test::cpu_allocator();
  Tensor inp = random_tensor(*alloc, {4, 5}, 1);
  Tensor w = random_tensor(*alloc, {3, 6}, 2);
  Tensor out = Tensor::empty(*alloc, {4, 3}, DType::f32, MemCategory::activations);
  EXPECT_THROW(ops::linear_forward(out, inp, w, nullptr), Error);
}

}  // namespace
}  // namespace lmtune
