#include <gtest/gtest.h>

#include <cmath>

#include "kernels/kernel_test_util.h"
#include "kernels/ops.h"

namespace lmtune {
namespace {

using test::grad_check;
using test::int_tensor;
using test::random_tensor;
using test::rel_error;

struct CeResult {
  double loss;
  int64_t count;
  std::vector<float> row_loss, dx, dweight;
};

CeResult run_ce(Allocator& alloc, const Tensor& x, const Tensor& w, const Tensor& targets, int64_t chunk_rows,
                float scale) {
  const int64_t N = targets.numel();
  Tensor row_loss = Tensor::empty(alloc, {N}, DType::f32, MemCategory::activations);
  Tensor dx = Tensor::empty(alloc, x.shape(), DType::f32, MemCategory::activations);
  dx.fill_(5.0f);  // written, not accumulated
  Tensor dw = Tensor::zeros(alloc, w.shape(), DType::f32, MemCategory::grads);
  CeResult r;
  r.loss = ops::lm_head_cross_entropy(x, w, targets, &r.count, &row_loss, &dx, &dw, scale, chunk_rows);
  r.row_loss = row_loss.to_f32();
  r.dx = dx.to_f32();
  r.dweight = dw.to_f32();
  return r;
}

TEST(LmHeadCrossEntropy, MatchesNaiveWithIgnoredTargets) {
  auto alloc = test::cpu_allocator();
  const int64_t N = 7, C = 5, V = 11;
  Tensor x = random_tensor(*alloc, {N, C}, 1);
  Tensor w = random_tensor(*alloc, {V, C}, 2);
  const std::vector<int32_t> tv = {3, -1, 10, 0, -100, 5, 3};
  Tensor targets = int_tensor(*alloc, {N}, tv);
  const CeResult r = run_ce(*alloc, x, w, targets, 3, 0.5f);
  const auto xv = x.to_f32(), wv = w.to_f32();
  double ref = 0.0;
  std::vector<double> ref_rows(N, 0.0);
  for (int64_t n = 0; n < N; ++n) {
    if (tv[n] < 0) continue;
    std::vector<double> l(V);
    double mx = -INFINITY;
    for (int64_t v = 0; v < V; ++v) {
      l[v] = 0.0;
      for (int64_t c = 0; c < C; ++c) l[v] += static_cast<double>(xv[n * C + c]) * wv[v * C + c];
      mx = std::max(mx, l[v]);
    }
    double s = 0.0;
    for (double z : l) s += std::exp(z - mx);
    ref_rows[n] = mx + std::log(s) - l[tv[n]];
    ref += ref_rows[n];
  }
  EXPECT_EQ(r.count, 5);
  EXPECT_NEAR(r.loss, ref, 1e-5 * std::abs(ref));
  EXPECT_LT(rel_error(r.row_loss, ref_rows), 1e-5);
  for (int64_t c = 0; c < C; ++c) {
    EXPECT_EQ(r.dx[1 * C + c], 0.0f);  // ignored rows get zero gradient
    EXPECT_EQ(r.dx[4 * C + c], 0.0f);
  }
}

TEST(LmHeadCrossEntropy, GradientsMatchFiniteDifferences) {
  auto alloc = test::cpu_allocator();
  const int64_t N = 6, C = 5, V = 9;
  const float scale = 0.25f;
  Tensor x = random_tensor(*alloc, {N, C}, 3);
  Tensor w = random_tensor(*alloc, {V, C}, 4);
  Tensor targets = int_tensor(*alloc, {N}, {1, 8, -1, 0, 4, 4});
  const CeResult r = run_ce(*alloc, x, w, targets, 4, scale);
  auto loss = [&] {
    return scale * ops::lm_head_cross_entropy(x, w, targets, nullptr, nullptr, nullptr, nullptr, 1.0f, 4);
  };
  EXPECT_LT(grad_check(x, r.dx, loss), 1e-2);
  EXPECT_LT(grad_check(w, r.dweight, loss), 1e-2);
}

TEST(LmHeadCrossEntropy, ChunkSizeDoesNotChangeTheResult) {
  auto alloc = test::cpu_allocator();
  const int64_t N = 10, C = 12, V = 37;
  Tensor x = random_tensor(*alloc, {2, 5, C}, 5);
  Tensor w = random_tensor(*alloc, {V, C}, 6);
  Tensor targets = int_tensor(*alloc, {2, 5}, {1, 36, -1, 0, 4, 4, 17, -1, 2, 9});
  const CeResult ref = run_ce(*alloc, x, w, targets, N, 1.0f / 8);
  for (int64_t chunk : {1, 3, 4, 7, 256}) {
    const CeResult r = run_ce(*alloc, x, w, targets, chunk, 1.0f / 8);
    EXPECT_EQ(r.count, 8);
    EXPECT_NEAR(r.loss, ref.loss, 1e-6 * std::abs(ref.loss)) << chunk;
    EXPECT_LT(rel_error(r.row_loss, ref.row_loss), 1e-6) << chunk;
    EXPECT_LT(rel_error(r.dx, ref.dx), 1e-5) << chunk;
    EXPECT_LT(rel_error(r.dweight, ref.dweight), 1e-5) << chunk;
  }
  // forward only: same loss, no gradient buffers needed
  int64_t count = -1;
  const double loss = ops::lm_head_cross_entropy(x, w, targets, &count, nullptr, nullptr, nullptr, 1.0f, 3);
  EXPECT_EQ(count, 8);
  EXPECT_NEAR(loss, ref.loss, 1e-6 * std::abs(ref.loss));
  EXPECT_EQ(alloc->stats().of(MemCategory::workspace).current, 0);
}

TEST(LmHeadCrossEntropy, TargetOutsideVocabularyIsAUserError) {
  auto alloc = test::cpu_allocator();
  Tensor x = random_tensor(*alloc, {3, 4}, 7);
  Tensor w = random_tensor(*alloc, {6, 4}, 8);
  Tensor targets = int_tensor(*alloc, {3}, {1, 6, 2});
  try {
    ops::lm_head_cross_entropy(x, w, targets, nullptr, nullptr, nullptr, nullptr, 1.0f);
    FAIL() << "no error for target 6 with V = 6";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::user);
    EXPECT_NE(std::string(e.what()).find("target 6"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lmtune
