// The meta device performs exactly the allocation sequence of the CPU: the same calls on
// meta tensors and on CPU tensors leave the same allocator statistics behind.
#include <gtest/gtest.h>

#include "kernels/kernel_test_util.h"
#include "kernels/ops.h"

namespace lmtune {
namespace {

// A small training-like sequence of every op, on whatever device `alloc` is.
void run_ops(Allocator& alloc) {
  auto act = [&](Shape s) { return Tensor::zeros(alloc, std::move(s), DType::f32, MemCategory::activations); };
  auto filled = [&](Shape s, float v, MemCategory c) {
    Tensor t = Tensor::empty(alloc, std::move(s), DType::f32, c);
    t.fill_(v);
    return t;
  };
  const int64_t B = 2, T = 70, Hq = 4, Hkv = 2, D = 16, C = Hq * D, V = 5000, F = 96;
  const int64_t N = B * T;
  Tensor tokens = test::int_tensor(alloc, {B, T}, std::vector<int32_t>(N, 7));
  Tensor emb = filled({V, C}, 0.01f, MemCategory::trainable);
  Tensor emb_half = Tensor::zeros(alloc, {V, C}, DType::bf16, MemCategory::weights);
  Tensor x = act({B, T, C});
  ops::embedding_forward(x, tokens, emb);
  ops::embedding_forward(x, tokens, emb_half);

  Tensor norm_w = filled({C}, 1.0f, MemCategory::trainable);
  Tensor xn = act({B, T, C}), rstd = act({B, T});
  ops::rmsnorm_forward(xn, rstd, x, norm_w, 1e-5f);

  // q projection from a bf16 weight bigger than one conversion chunk
  Tensor wq_half = Tensor::zeros(alloc, {C * 1024, C}, DType::bf16, MemCategory::weights);
  Tensor big = act({B, T, C * 1024});
  ops::linear_forward(big, xn, wq_half, nullptr);
  Tensor wq = filled({C, C}, 0.01f, MemCategory::trainable);
  Tensor wk = filled({Hkv * D, C}, 0.01f, MemCategory::trainable);
  Tensor q = act({B, T, Hq, D}), k = act({B, T, Hkv, D}), v = act({B, T, Hkv, D});
  Tensor q2 = q.reshape({B, T, C}), k2 = k.reshape({B, T, Hkv * D}), v2 = v.reshape({B, T, Hkv * D});
  ops::linear_forward(q2, xn, wq, nullptr);
  ops::linear_forward(k2, xn, wk, nullptr);
  ops::linear_forward(v2, xn, wk, nullptr);
  Tensor freqs = filled({D / 2}, 0.1f, MemCategory::weights);
  ops::rope_forward(q, q, 0, freqs);
  ops::rope_forward(k, k, 0, freqs);
  Tensor att = act({B, T, Hq, D}), lse = act({B, Hq, T});
  ops::attention_forward(att, &lse, q, k, v, 0);
  ops::add_forward(x, x, att.reshape({B, T, C}));

  Tensor wg = filled({F, C}, 0.01f, MemCategory::trainable);
  Tensor g = act({N, F}), u = act({N, F}), h = act({N, F});
  ops::linear_forward(g, x, wg, nullptr);
  ops::linear_forward(u, x, wg, nullptr);
  ops::swiglu_forward(h, g, u);

  // lm_head with chunks whose logits exceed the small pool
  Tensor targets = test::int_tensor(alloc, {N}, std::vector<int32_t>(N, 3));
  Tensor dx = act({B, T, C});
  Tensor demb = Tensor::zeros(alloc, {V, C}, DType::f32, MemCategory::grads);
  int64_t count = 0;
  ops::lm_head_cross_entropy(x, emb, targets, &count, nullptr, &dx, &demb, 1.0f / N, 64);

  // backward
  Tensor dh = act({N, F}), dg = act({N, F}), du = act({N, F});
  ops::swiglu_backward(dg, du, dh, g, u);
  Tensor dwg = Tensor::zeros(alloc, {F, C}, DType::f32, MemCategory::grads);
  ops::linear_backward(&dx, &dwg, nullptr, dg, x, wg, ops::GradWrite::accumulate);
  Tensor dq = act({B, T, Hq, D}), dk = act({B, T, Hkv, D}), dv = act({B, T, Hkv, D});
  ops::attention_backward(dq, dk, dv, att, q, k, v, att, lse);
  ops::rope_backward(dq, dq, 0, freqs);
  Tensor dbig = act({B, T, C * 1024});
  ops::linear_backward(&dx, nullptr, nullptr, dbig, xn, wq_half, ops::GradWrite::accumulate);
  Tensor dxn = act({B, T, C});
  Tensor dnorm = Tensor::zeros(alloc, {C}, DType::f32, MemCategory::grads);
  ops::rmsnorm_backward(dxn, dnorm, dx, x, norm_w, rstd);
  ops::embedding_backward(demb, dxn, tokens);
  ops::add_inplace(dx, dxn);
  Tensor m = Tensor::zeros(alloc, {V, C}, DType::f32, MemCategory::optimizer);
  Tensor s = Tensor::zeros(alloc, {V, C}, DType::f32, MemCategory::optimizer);
  ops::adamw_step(emb, demb, m, s, ops::AdamWParams{}, 1);
  (void)ops::sum_squares(demb);
}

TEST(Meta, SameAllocationSequenceAsCpu) {
  auto cpu = Allocator::create(Device::cpu());
  auto meta = Allocator::create(Device::meta());
  cpu->enable_timeline(true);
  meta->enable_timeline(true);
  run_ops(*cpu);
  run_ops(*meta);
  const MemoryStats a = cpu->stats(), b = meta->stats();
  for (int c = 0; c < kNumMemCategories; ++c) {
    EXPECT_EQ(a.category[c].peak, b.category[c].peak) << mem_category_name(static_cast<MemCategory>(c));
    EXPECT_EQ(a.category[c].current, b.category[c].current) << mem_category_name(static_cast<MemCategory>(c));
  }
  EXPECT_GT(a.of(MemCategory::workspace).peak, 0);
  EXPECT_EQ(a.allocated.peak, b.allocated.peak);
  EXPECT_EQ(a.reserved.peak, b.reserved.peak);
  EXPECT_EQ(a.reserved.current, b.reserved.current);
  EXPECT_EQ(a.num_allocs, b.num_allocs);
  EXPECT_EQ(a.num_segments, b.num_segments);
  const auto ta = cpu->timeline(), tb = meta->timeline();
  ASSERT_EQ(ta.size(), tb.size());
  for (size_t i = 0; i < ta.size(); ++i) {
    EXPECT_EQ(ta[i].delta, tb[i].delta) << "event " << i;
    EXPECT_EQ(ta[i].category, tb[i].category) << "event " << i;
  }
}

TEST(Meta, OpsOnMetaComputeNothing) {
  auto meta = Allocator::create(Device::meta());
  Tensor t = Tensor::empty(*meta, {4, 4}, DType::f32, MemCategory::activations);
  EXPECT_EQ(ops::sum_squares(t), 0.0);
  EXPECT_THROW(ops::argmax_row(t, 0), Error);
  Tensor targets = test::int_tensor(*meta, {4}, {0, 1, 2, 3});
  int64_t count = -1;
  EXPECT_EQ(ops::lm_head_cross_entropy(t, t, targets, &count, nullptr, nullptr, nullptr, 1.0f), 0.0);
  EXPECT_EQ(count, 0);
}

}  // namespace
}  // namespace lmtune
