// The parameter layout table: a pure function of (config, options) — names, logical
// shapes, groups (dtype, category, trainability) and offsets, checked against sizes worked
// out by hand; and the model's views sit exactly where the table says.
#include <gtest/gtest.h>

#include "trainer/model/llama.h"
#include "trainer/model/param_layout.h"

namespace lmtune {
namespace {

// bias: a Qwen2-style model (q/k/v biases, none on o).
LlamaConfig config(bool bias, bool tied) {
  LlamaConfig c;
  c.family = bias ? ModelFamily::qwen2 : ModelFamily::llama;
  c.hidden_size = 24;        // C
  c.intermediate_size = 40;  // H
  c.num_hidden_layers = 3;
  c.num_attention_heads = 6;  // D = 4, qd = 24
  c.num_key_value_heads = 2;  // kvd = 8
  c.vocab_size = 50;
  c.tie_word_embeddings = tied;
  return c;
}

TEST(ParamLayout, FrozenBaseWithLoraOnQAndV) {
  ModelOptions o;
  o.weight_dtype = DType::bf16;
  LoraOptions lo;
  lo.rank = 3;
  lo.targets = {"q", "v"};
  o.lora = lo;
  const ModelLayout m = model_param_layout(config(/*bias=*/true, /*tied=*/false), o);
  ASSERT_EQ(m.num_units(), 5);
  EXPECT_EQ(m.units[0].name, "embed");
  EXPECT_EQ(m.units[2].name, "layers.1");
  EXPECT_EQ(m.head_unit(), 4);

  const UnitLayout& b = m.units[ModelLayout::block_unit(1)];
  ASSERT_EQ(b.groups.size(), 3u);
  // base: q (24x24) k (8x24) v (8x24) o (24x24) gate (40x24) up (40x24) down (24x40)
  EXPECT_EQ(b.groups[0].kind, ParamGroupKind::base);
  EXPECT_EQ(b.groups[0].dtype, DType::bf16);
  EXPECT_EQ(b.groups[0].category, MemCategory::weights);
  EXPECT_FALSE(b.groups[0].trains);
  EXPECT_EQ(b.groups[0].numel, 576 + 192 + 192 + 576 + 960 + 960 + 960);
  EXPECT_EQ(b.groups[0].nbytes(), 2 * b.groups[0].numel);
  // base_f32: two norms (24 each) and the q/k/v biases (24, 8, 8)
  EXPECT_EQ(b.groups[1].kind, ParamGroupKind::base_f32);
  EXPECT_EQ(b.groups[1].dtype, DType::f32);
  EXPECT_EQ(b.groups[1].numel, 24 + 24 + 24 + 8 + 8);
  // adapters: q A (3x24) B (24x3), v A (3x24) B (8x3)
  EXPECT_EQ(b.groups[2].kind, ParamGroupKind::adapters);
  EXPECT_EQ(b.groups[2].category, MemCategory::trainable);
  EXPECT_TRUE(b.groups[2].trains);
  EXPECT_EQ(b.groups[2].numel, 72 + 72 + 72 + 24);
  EXPECT_EQ(b.trainable_numel(), 240);

  const ParamRow& v_w = b.rows[b.index("model.layers.1.self_attn.v_proj.weight")];
  EXPECT_EQ(v_w.shape, (Shape{8, 24}));
  EXPECT_EQ(v_w.group, 0);
  EXPECT_EQ(v_w.offset, 576 + 192);
  EXPECT_EQ(v_w.byte_offset(), 2 * (576 + 192));
  const ParamRow& k_b = b.rows[b.index("model.layers.1.self_attn.k_proj.bias")];
  EXPECT_EQ(k_b.group, 1);
  EXPECT_EQ(k_b.offset, 24 + 24 + 24);  // after both norms and the q bias
  const ParamRow& v_b = b.rows[b.index("model.layers.1.self_attn.v_proj.lora_B.weight")];
  EXPECT_EQ(v_b.shape, (Shape{8, 3}));
  EXPECT_EQ(v_b.group, 2);
  EXPECT_EQ(v_b.offset, 72 + 72 + 72);
  EXPECT_EQ(b.find("model.layers.1.self_attn.k_proj.lora_A.weight"), -1);

  // every group is tiled exactly by its rows, in order, without gaps or overlaps
  for (const UnitLayout& u : m.units)
    for (size_t g = 0; g < u.groups.size(); ++g) {
      int64_t next = 0;
      for (const ParamRow& r : u.rows)
        if (r.group == static_cast<int>(g)) {
          EXPECT_EQ(r.offset, next) << r.name;
          next += r.numel();
        }
      EXPECT_EQ(next, u.groups[g].numel) << u.name << " group " << g;
    }

  // outer units: the embedding, and the head's norm and untied lm_head, all f32
  EXPECT_EQ(m.units[0].rows.at(0).name, "model.embed_tokens.weight");
  EXPECT_EQ(m.units[0].groups.at(0).numel, 50 * 24);
  const UnitLayout& h = m.units[m.head_unit()];
  ASSERT_EQ(h.rows.size(), 2u);
  EXPECT_EQ(h.rows[1].name, "lm_head.weight");
  EXPECT_EQ(h.rows[1].offset, 24);
  EXPECT_FALSE(h.trains());
}

TEST(ParamLayout, FullFineTuningTiedHead) {
  ModelOptions o;
  o.role = ParamRole::trainable;
  const ModelLayout m = model_param_layout(config(false, /*tied=*/true), o);
  const UnitLayout& h = m.units[m.head_unit()];
  ASSERT_EQ(h.rows.size(), 1u);  // the tied head has only the final norm
  EXPECT_EQ(h.rows[0].name, "model.norm.weight");
  const UnitLayout& b = m.units[1];
  ASSERT_EQ(b.groups.size(), 2u);  // no biases, no adapters: base and the two norms
  EXPECT_EQ(b.groups[0].category, MemCategory::trainable);
  EXPECT_TRUE(b.groups[0].trains);
  EXPECT_EQ(b.groups[1].numel, 48);
  EXPECT_EQ(b.trainable_numel(), 4416 + 48);
}

// Qwen3: q_norm and k_norm (head_dim each) after the block's two norms; head_dim 10 is not
// 24 / 6, so q is (60, 24) and o (24, 60). Llama with attention_bias: q, k, v and o biases.
TEST(ParamLayout, Qwen3QkNormsHeadDimAndLlamaAttentionBias) {
  LlamaConfig c = config(false, false);
  c.family = ModelFamily::qwen3;
  c.attention_head_dim = 10;  // qd = 60, kvd = 20
  ModelOptions o;
  ModelLayout m = model_param_layout(c, o);
  const UnitLayout& b = m.units[1];
  ASSERT_EQ(b.groups.size(), 2u);
  EXPECT_EQ(b.groups[0].numel, 60 * 24 + 20 * 24 + 20 * 24 + 24 * 60 + 3 * 960);
  EXPECT_EQ(b.groups[1].numel, 24 + 24 + 10 + 10);
  EXPECT_EQ(b.rows[b.index("model.layers.0.self_attn.q_proj.weight")].shape, (Shape{60, 24}));
  EXPECT_EQ(b.rows[b.index("model.layers.0.self_attn.o_proj.weight")].shape, (Shape{24, 60}));
  const ParamRow& qn = b.rows[b.index("model.layers.0.self_attn.q_norm.weight")];
  const ParamRow& kn = b.rows[b.index("model.layers.0.self_attn.k_norm.weight")];
  EXPECT_EQ(qn.shape, (Shape{10}));
  EXPECT_EQ(qn.group, 1);
  EXPECT_EQ(qn.offset, 48);
  EXPECT_EQ(kn.offset, 58);
  EXPECT_EQ(b.find("model.layers.0.self_attn.q_proj.bias"), -1);

  c = config(false, false);
  c.attention_bias = true;  // llama
  m = model_param_layout(c, o);
  const UnitLayout& l = m.units[2];
  EXPECT_EQ(l.groups[1].numel, 24 + 24 + 24 + 8 + 8 + 24);
  EXPECT_EQ(l.rows[l.index("model.layers.1.self_attn.o_proj.bias")].offset, 24 + 24 + 24 + 8 + 8);
  EXPECT_EQ(l.find("model.layers.1.self_attn.q_norm.weight"), -1);
}

// The model's parameter views are the table's rows in the buffers it allocated; gradient
// buckets hold whole units in backward order and never exceed their size unless one unit does.
TEST(ParamLayout, ModelViewsAndGradientBucketsFollowTheTable) {
  auto alloc = Allocator::create(Device::meta());
  ModelOptions o;
  o.role = ParamRole::trainable;
  LlamaModel model(config(true, false), *alloc, o);
  const ModelLayout& m = model.layout();
  std::vector<ParamRef> params = model.parameters();
  size_t i = 0;
  for (const UnitLayout& u : m.units) {
    std::vector<const char*> group_start(u.groups.size(), nullptr);  // the buffer of each group
    for (size_t k = 0; k < u.rows.size(); ++k) {
      const ParamRow& r = u.rows[k];
      const ParamRef& p = params[i + k];
      ASSERT_EQ(p.name, r.name);
      EXPECT_EQ(p.value.shape(), r.shape);
      const char* at = static_cast<const char*>(p.value.raw());
      if (group_start[r.group] == nullptr) group_start[r.group] = at - r.byte_offset();
      EXPECT_EQ(at - group_start[r.group], r.byte_offset()) << r.name;
    }
    i += u.rows.size();
  }
  EXPECT_EQ(i, params.size());

  const int64_t unit_bytes = m.units[1].trainable_numel() * 4;  // every block is the same size
  model.allocate_grads(2 * unit_bytes + 1);
  const auto& buckets = model.grad_buckets();
  ASSERT_FALSE(buckets.empty());
  EXPECT_EQ(buckets.front().units.front(), m.head_unit());
  std::vector<int> order;
  for (const GradBucket& b : buckets) {
    int64_t n = 0;
    for (int u : b.units) {
      order.push_back(u);
      n += m.units[u].trainable_numel();
    }
    EXPECT_EQ(b.flat.numel(), n);
    EXPECT_TRUE(b.units.size() == 1 || n * 4 <= 2 * unit_bytes + 1) << "bucket of " << b.units.size() << " units";
  }
  EXPECT_EQ(order, (std::vector<int>{4, 3, 2, 1, 0}));
  for (const ParamRef& p : model.parameters()) EXPECT_TRUE(p.grad.defined()) << p.name;
}

}  // namespace
}  // namespace lmtune
