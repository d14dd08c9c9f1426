#include "trainer/model/param_layout.h"

#include "trainer/core/error.h"
#include "trainer/model/linear.h"
#include "trainer/peft/nf4.h"

namespace lmtune {

const char* param_group_kind_name(ParamGroupKind k) {
  switch (k) {
    case ParamGroupKind::base: return "base";
    case ParamGroupKind::base_f32: return "base_f32";
    case ParamGroupKind::adapters: return "adapters";
    case ParamGroupKind::nf4_codes: return "nf4_codes";
    case ParamGroupKind::nf4_absmax: return "nf4_absmax";
    case ParamGroupKind::nf4_tables: return "nf4_tables";
  }
  return "?";
}

int UnitLayout::find(std::string_view row_name) const {
  for (size_t i = 0; i < rows.size(); ++i)
    if (rows[i].name == row_name) return static_cast<int>(i);
  return -1;
}

int UnitLayout::index(std::string_view row_name) const {
  const int i = find(row_name);
  LMTUNE_ASSERT(i >= 0, "unit '", name, "' has no parameter '", row_name, "'");
  return i;
}

int UnitLayout::group_of(ParamGroupKind kind) const {
  for (size_t g = 0; g < groups.size(); ++g)
    if (groups[g].kind == kind) return static_cast<int>(g);
  return -1;
}

bool UnitLayout::trains() const {
  for (const ParamGroup& g : groups)
    if (g.trains) return true;
  return false;
}

int64_t UnitLayout::trainable_numel() const {
  int64_t n = 0;
  for (const ParamGroup& g : groups)
    if (g.trains) n += g.numel;
  return n;
}

UnitLayoutBuilder::UnitLayoutBuilder(std::string unit_name, const ModelOptions& opts) : opts_(opts) {
  unit_.name = std::move(unit_name);
}

void UnitLayoutBuilder::add(ParamGroupKind kind, std::string name, Shape shape, Shape weight_shape) {
  ParamRow r;
  r.name = std::move(name);
  r.shape = std::move(shape);
  r.weight_shape = std::move(weight_shape);
  pending_.emplace_back(kind, std::move(r));
}

UnitLayout UnitLayoutBuilder::finish() {
  const bool base_trains = opts_.role == ParamRole::trainable;
  const MemCategory base_cat = base_trains ? MemCategory::trainable : MemCategory::weights;
  for (ParamGroupKind kind : {ParamGroupKind::base, ParamGroupKind::base_f32, ParamGroupKind::adapters,
                              ParamGroupKind::nf4_codes, ParamGroupKind::nf4_absmax, ParamGroupKind::nf4_tables}) {
    const bool quant = kind == ParamGroupKind::nf4_codes || kind == ParamGroupKind::nf4_absmax ||
                       kind == ParamGroupKind::nf4_tables;
    ParamGroup g;
    g.kind = kind;
    g.dtype = kind == ParamGroupKind::base                                           ? opts_.weight_dtype
              : kind == ParamGroupKind::nf4_codes || kind == ParamGroupKind::nf4_absmax ? DType::u8
                                                                                        : DType::f32;
    g.category = kind == ParamGroupKind::adapters ? MemCategory::trainable : quant ? MemCategory::quant : base_cat;
    g.trains = kind == ParamGroupKind::adapters || (base_trains && !quant);
    g.shard_quantum = kind == ParamGroupKind::nf4_codes ? nf4_block_bytes() : 1;
    const int index = static_cast<int>(unit_.groups.size());
    bool any = false;
    for (auto& [k, row] : pending_) {
      if (k != kind) continue;
      any = true;
      row.dtype = g.dtype;
      row.group = index;
      row.offset = g.numel;
      g.numel += row.numel();
    }
    if (any) unit_.groups.push_back(g);
  }
  // rows in the order they were added
  for (auto& [k, row] : pending_) unit_.rows.push_back(std::move(row));
  pending_.clear();
  return std::move(unit_);
}

std::vector<std::vector<int>> grad_bucket_units(const ModelLayout& layout, int64_t bucket_bytes) {
  std::vector<std::vector<int>> groups;
  int64_t current = 0;
  for (int u = layout.num_units() - 1; u >= 0; --u) {
    const int64_t n = layout.units[u].trainable_numel();
    if (n == 0) continue;
    if (groups.empty() || (current > 0 && (current + n) * 4 > bucket_bytes)) {
      groups.emplace_back();
      current = 0;
    }
    groups.back().push_back(u);
    current += n;
  }
  return groups;
}

std::vector<Tensor> row_views(const UnitLayout& layout, const UnitBuffers& buffers) {
  LMTUNE_ASSERT(buffers.groups.size() == layout.groups.size(), "unit '", layout.name, "' has ", layout.groups.size(),
                " parameter groups; ", buffers.groups.size(), " buffers were given");
  std::vector<Tensor> views(layout.rows.size());
  for (size_t i = 0; i < layout.rows.size(); ++i) {
    const ParamRow& r = layout.rows[i];
    const Tensor& flat = buffers.groups[r.group];
    if (!flat.defined()) continue;
    LMTUNE_ASSERT(flat.numel() >= layout.groups[r.group].numel, "unit '", layout.name, "': group ", r.group, " holds ",
                  flat.numel(), " elements, its layout needs ", layout.groups[r.group].numel);
    views[i] = flat.view(r.offset, r.shape);
  }
  return views;
}

std::vector<ProjSpec> block_proj_specs(const LlamaConfig& cfg) {
  const int64_t C = cfg.hidden_size, H = cfg.intermediate_size;
  const int64_t qd = cfg.q_dim(), kvd = cfg.kv_dim();
  const bool b = cfg.qkv_bias(), ob = cfg.o_bias();
  return {{"q", 0, qd, C, b},       {"k", 1, kvd, C, b},     {"v", 2, kvd, C, b},    {"o", 3, C, qd, ob},
          {"gate", 4, H, C, false}, {"up", 5, H, C, false}, {"down", 6, C, H, false}};
}

ModelLayout model_param_layout(const LlamaConfig& cfg, const ModelOptions& opts) {
  const int64_t C = cfg.hidden_size, V = cfg.vocab_size;
  const LinearFactory factory(opts);
  ModelLayout m;
  {
    UnitLayoutBuilder b("embed", opts);
    b.add(ParamGroupKind::base_f32, "model.embed_tokens.weight", {V, C});
    m.units.push_back(b.finish());
  }
  const std::vector<ProjSpec> projs = block_proj_specs(cfg);
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    const std::string prefix = "model.layers." + std::to_string(l) + ".";
    UnitLayoutBuilder b("layers." + std::to_string(l), opts);
    b.add(ParamGroupKind::base_f32, prefix + "input_layernorm.weight", {C});
    b.add(ParamGroupKind::base_f32, prefix + "post_attention_layernorm.weight", {C});
    if (cfg.qk_norm()) {
      b.add(ParamGroupKind::base_f32, prefix + "self_attn.q_norm.weight", {cfg.head_dim()});
      b.add(ParamGroupKind::base_f32, prefix + "self_attn.k_norm.weight", {cfg.head_dim()});
    }
    for (const ProjSpec& p : projs) factory.declare(p, prefix, b);
    m.units.push_back(b.finish());
  }
  {
    UnitLayoutBuilder b("head", opts);
    b.add(ParamGroupKind::base_f32, "model.norm.weight", {C});
    if (!cfg.tie_word_embeddings) b.add(ParamGroupKind::base_f32, "lm_head.weight", {V, C});
    m.units.push_back(b.finish());
  }
  return m;
}

}  // namespace lmtune
