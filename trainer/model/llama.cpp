#include "trainer/model/llama.h"

#include <algorithm>
#include <set>

#include "kernels/ops.h"
#include "trainer/io/safetensors.h"
#include "trainer/model/rope.h"
#include "trainer/peft/lora.h"
#include "trainer/peft/nf4.h"
#include "trainer/peft/qat.h"

namespace lmtune {

namespace {

Tensor act(Allocator& alloc, Shape shape, DType dtype = DType::f32) {
  return Tensor::empty(alloc, std::move(shape), dtype, MemCategory::activations);
}

}  // namespace

// ---------------------------------------------------------------------------------------
// LlamaBlock

LlamaBlock::LlamaBlock(const LlamaConfig& cfg, Allocator& alloc, const UnitLayout& layout,
                       const LinearFactory& factory, int index, Tensor rope_inv_freq, Recompute recompute)
    : cfg_(cfg),
      alloc_(alloc),
      layout_(layout),
      index_(index),
      recompute_(recompute),
      rope_inv_freq_(std::move(rope_inv_freq)) {
  const std::string prefix = "model.layers." + std::to_string(index) + ".";
  ln1_row_ = layout.index(prefix + "input_layernorm.weight");
  ln2_row_ = layout.index(prefix + "post_attention_layernorm.weight");
  if (cfg.qk_norm()) {
    qn_row_ = layout.index(prefix + "self_attn.q_norm.weight");
    kn_row_ = layout.index(prefix + "self_attn.k_norm.weight");
  }
  const std::vector<ProjSpec> specs = block_proj_specs(cfg);
  for (int p = 0; p < kNumProj; ++p) proj_[p] = factory.make(specs[p], prefix, layout);
}

void LlamaBlock::bind(std::span<const Tensor> params, std::span<const Tensor> grads) {
  LMTUNE_ASSERT(params.size() == layout_.rows.size() && (grads.empty() || grads.size() == params.size()),
                "binding unit '", layout_.name, "': ", params.size(), " parameter views for ", layout_.rows.size(),
                " rows");
  ln1_w_ = params[ln1_row_];
  ln2_w_ = params[ln2_row_];
  dln1_w_ = grads.empty() ? Tensor() : grads[ln1_row_];
  dln2_w_ = grads.empty() ? Tensor() : grads[ln2_row_];
  if (qn_row_ >= 0) {
    qn_w_ = params[qn_row_];
    kn_w_ = params[kn_row_];
    dqn_w_ = grads.empty() ? Tensor() : grads[qn_row_];
    dkn_w_ = grads.empty() ? Tensor() : grads[kn_row_];
  }
  trains_ = false;
  for (const Tensor& g : grads) trains_ = trains_ || g.defined();
  for (auto& p : proj_) p->bind(params, grads);
}

LinearContext LlamaBlock::proj_context(const MicroBatchContext& ctx, int p, Phase phase) const {
  return {ctx.seed * 1000003ull + static_cast<uint64_t>(index_) * 16 + static_cast<uint64_t>(p), ctx.row_offset, phase};
}

void LlamaBlock::merge_adapters() {
  for (auto& p : proj_) p->merge_adapter();
}

Tensor LlamaBlock::forward(const Tensor& x, int64_t B, int64_t T, int64_t pos0, KVCache* cache,
                           BlockActivations* save, const MicroBatchContext& ctx) {
  LMTUNE_ASSERT(cache != nullptr || pos0 == 0, "a forward at pos0 > 0 needs a KV cache");
  if (save == nullptr) return run_forward(x, B, T, pos0, cache, ctx, kEvalPass, nullptr);
  // a training forward keeps what the recompute policy says (recompute.h)
  const Keep keep = recompute_ == Recompute::full        ? Keep::input
                    : recompute_ == Recompute::selective ? Keep::all_but_attention
                                                         : Keep::all;
  return run_forward(x, B, T, pos0, cache, ctx, {Phase::train, keep, Output::compute}, save);
}

Tensor LlamaBlock::run_forward(const Tensor& x, int64_t B, int64_t T, int64_t pos0, KVCache* cache,
                               const MicroBatchContext& ctx, const Pass& pass, BlockActivations* save) {
  const int64_t N = B * T, C = cfg_.hidden_size, H = cfg_.intermediate_size;
  const int64_t Hq = cfg_.num_attention_heads, D = cfg_.head_dim();
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  const Phase phase = pass.phase;
  const bool keep_attention = pass.keep == Keep::all, keep_rest = pass.keep != Keep::input;
  BlockActivations a;
  a.x_in = x;
  a.ctx = ctx;

  a.ln1 = act(alloc_, {N, C});
  a.ln1_rstd = act(alloc_, {N});
  ops::rmsnorm_forward(a.ln1, a.ln1_rstd, x, ln1_w_, eps);
  attention_inner(a, B, T, pos0, cache, phase, pass.keep);
  if (!keep_rest) a.ln1 = a.ln1_rstd = Tensor();
  if (!keep_attention) a.q = a.k = a.v = Tensor();

  a.res1 = act(alloc_, {N, C});
  proj(kO).forward(a.res1, a.att.reshape({N, Hq * D}), proj_context(ctx, kO, phase));
  if (!keep_attention) a.att = Tensor();
  ops::add_inplace(a.res1, x);

  a.ln2 = act(alloc_, {N, C});
  a.ln2_rstd = act(alloc_, {N});
  ops::rmsnorm_forward(a.ln2, a.ln2_rstd, a.res1, ln2_w_, eps);
  a.gate = act(alloc_, {N, H});
  a.up = act(alloc_, {N, H});
  proj(kGate).forward(a.gate, a.ln2, proj_context(ctx, kGate, phase));
  proj(kUp).forward(a.up, a.ln2, proj_context(ctx, kUp, phase));
  a.act = act(alloc_, {N, H});
  ops::swiglu_forward(a.act, a.gate, a.up);
  if (!keep_rest) a.gate = a.up = a.ln2 = a.ln2_rstd = Tensor();  // before the last matmul
  Tensor out;
  if (pass.output == Output::compute) {
    out = act(alloc_, {N, C});
    proj(kDown).forward(out, a.act, proj_context(ctx, kDown, phase));
    ops::add_inplace(out, a.res1);
  }
  if (save != nullptr) {
    if (!keep_rest) a.res1 = a.act = Tensor();  // full recompute: the input (and ctx) only
    *save = std::move(a);
  }
  return out;
}

void LlamaBlock::attention_inner(BlockActivations& a, int64_t B, int64_t T, int64_t pos0, KVCache* cache,
                                 Phase phase, Keep keep) {
  const int64_t N = B * T, Hq = cfg_.num_attention_heads, Hkv = cfg_.num_key_value_heads, D = cfg_.head_dim();
  const bool qk_norm = qn_row_ >= 0;
  a.q = act(alloc_, {B, T, Hq, D});
  a.k = act(alloc_, {B, T, Hkv, D});
  a.v = act(alloc_, {B, T, Hkv, D});
  // Qwen3: the projections land in q_pre / k_pre and each head is RMS-normalised into q / k.
  if (qk_norm) {
    a.q_pre = act(alloc_, {B, T, Hq, D});
    a.k_pre = act(alloc_, {B, T, Hkv, D});
  }
  {
    Tensor q2 = (qk_norm ? a.q_pre : a.q).reshape({N, Hq * D}), k2 = (qk_norm ? a.k_pre : a.k).reshape({N, Hkv * D});
    Tensor v2 = a.v.reshape({N, Hkv * D});
    proj(kQ).forward(q2, a.ln1, proj_context(a.ctx, kQ, phase));
    proj(kK).forward(k2, a.ln1, proj_context(a.ctx, kK, phase));
    proj(kV).forward(v2, a.ln1, proj_context(a.ctx, kV, phase));
  }
  if (qk_norm) {
    const float eps = static_cast<float>(cfg_.rms_norm_eps);
    a.q_rstd = act(alloc_, {N * Hq});
    a.k_rstd = act(alloc_, {N * Hkv});
    ops::rmsnorm_forward(a.q, a.q_rstd, a.q_pre, qn_w_, eps);
    ops::rmsnorm_forward(a.k, a.k_rstd, a.k_pre, kn_w_, eps);
    if (keep != Keep::all) a.q_pre = a.k_pre = a.q_rstd = a.k_rstd = Tensor();  // only the backward reads them
  }
  ops::rope_forward(a.q, a.q, pos0, rope_inv_freq_);
  ops::rope_forward(a.k, a.k, pos0, rope_inv_freq_);

  Tensor keys = a.k, values = a.v;
  if (cache != nullptr) {
    Tensor& ck = cache->k[index_];
    Tensor& cv = cache->v[index_];
    const int64_t S = cache->capacity, kvd = Hkv * D;
    LMTUNE_CHECK(pos0 + T <= S, "the KV cache holds ", S, " positions; ", pos0 + T, " were asked for");
    for (int64_t b = 0; b < B; ++b) {
      ck.view((b * S + pos0) * kvd, {T * kvd}).copy_(a.k.view(b * T * kvd, {T * kvd}));
      cv.view((b * S + pos0) * kvd, {T * kvd}).copy_(a.v.view(b * T * kvd, {T * kvd}));
    }
    keys = ck;
    values = cv;
  }
  a.att = act(alloc_, {B, T, Hq, D});
  if (keep == Keep::all) a.att_lse = act(alloc_, {B, Hq, T});
  ops::attention_forward(a.att, keep == Keep::all ? &a.att_lse : nullptr, a.q, keys, values, pos0);
}

void LlamaBlock::backward(Tensor& dx, BlockActivations& s, int64_t B, int64_t T) {
  using ops::GradWrite;
  const int64_t N = B * T, C = cfg_.hidden_size, H = cfg_.intermediate_size;
  const int64_t Hq = cfg_.num_attention_heads, Hkv = cfg_.num_key_value_heads, D = cfg_.head_dim();
  LMTUNE_ASSERT(trains_, "backward through a block that does not train (no gradients bound)");
  LMTUNE_ASSERT(s.x_in.defined() && s.ln1.defined() == (recompute_ != Recompute::full) &&
                    s.att.defined() == (recompute_ == Recompute::none),
                "block ", index_, ": backward given activations its forward did not save under this recompute policy");
  if (recompute_ == Recompute::full) {  // everything from the input, but the output (recompute.h)
    BlockActivations rebuilt;
    run_forward(s.x_in, B, T, 0, nullptr, s.ctx, {Phase::train, Keep::all, Output::skip}, &rebuilt);
    s = std::move(rebuilt);
  }

  // MLP branch: out = res1 + down(silu(gate(ln2)) * up(ln2)),  ln2 = rmsnorm(res1)
  {
    Tensor da = act(alloc_, {N, H});
    proj(kDown).backward(&da, dx, s.act, proj_context(s.ctx, kDown, Phase::train), GradWrite::assign);
    s.act = Tensor();
    Tensor dgate = act(alloc_, {N, H}), dup = act(alloc_, {N, H});
    ops::swiglu_backward(dgate, dup, da, s.gate, s.up);
    da = s.gate = s.up = Tensor();
    Tensor dln2 = act(alloc_, {N, C});
    proj(kGate).backward(&dln2, dgate, s.ln2, proj_context(s.ctx, kGate, Phase::train), GradWrite::assign);
    dgate = Tensor();
    proj(kUp).backward(&dln2, dup, s.ln2, proj_context(s.ctx, kUp, Phase::train), GradWrite::accumulate);
    dup = s.ln2 = Tensor();
    // dx becomes d loss / d res1: the residual path plus the norm's contribution.
    ops::rmsnorm_backward(dx, dln2_w_.defined() ? &dln2_w_ : nullptr, dln2, s.res1, ln2_w_, s.ln2_rstd, GradWrite::accumulate);
    s.res1 = s.ln2_rstd = Tensor();
  }
  // Attention branch: res1 = x_in + o(attention(rope(q(ln1)), rope(k(ln1)), v(ln1))),  ln1 = rmsnorm(x_in)
  // (Qwen3: rope(q_norm(q(ln1))) and rope(k_norm(k(ln1))), each head normalised on its own)
  {
    if (recompute_ == Recompute::selective)  // the attention internals from ln1 (recompute.h)
      attention_inner(s, B, T, 0, nullptr, Phase::train, Keep::all);
    Tensor datt = act(alloc_, {B, T, Hq, D});
    Tensor datt2 = datt.reshape({N, Hq * D});
    proj(kO).backward(&datt2, dx, s.att.reshape({N, Hq * D}), proj_context(s.ctx, kO, Phase::train), GradWrite::assign);
    Tensor dq = act(alloc_, {B, T, Hq, D}), dk = act(alloc_, {B, T, Hkv, D}), dv = act(alloc_, {B, T, Hkv, D});
    ops::attention_backward(dq, dk, dv, datt, s.q, s.k, s.v, s.att, s.att_lse);
    datt = datt2 = s.att = s.att_lse = s.q = s.k = s.v = Tensor();
    ops::rope_backward(dq, dq, 0, rope_inv_freq_);
    ops::rope_backward(dk, dk, 0, rope_inv_freq_);
    if (qn_row_ >= 0) {  // through the per-head norms: dq, dk become d loss / d projection output
      Tensor dq_pre = act(alloc_, {B, T, Hq, D});
      ops::rmsnorm_backward(dq_pre, dqn_w_.defined() ? &dqn_w_ : nullptr, dq, s.q_pre, qn_w_, s.q_rstd,
                            GradWrite::assign);
      dq = std::move(dq_pre);
      s.q_pre = s.q_rstd = Tensor();
      Tensor dk_pre = act(alloc_, {B, T, Hkv, D});
      ops::rmsnorm_backward(dk_pre, dkn_w_.defined() ? &dkn_w_ : nullptr, dk, s.k_pre, kn_w_, s.k_rstd,
                            GradWrite::assign);
      dk = std::move(dk_pre);
      s.k_pre = s.k_rstd = Tensor();
    }
    Tensor dln1 = act(alloc_, {N, C});
    proj(kQ).backward(&dln1, dq.reshape({N, Hq * D}), s.ln1, proj_context(s.ctx, kQ, Phase::train), GradWrite::assign);
    dq = Tensor();
    proj(kK).backward(&dln1, dk.reshape({N, Hkv * D}), s.ln1, proj_context(s.ctx, kK, Phase::train), GradWrite::accumulate);
    dk = Tensor();
    proj(kV).backward(&dln1, dv.reshape({N, Hkv * D}), s.ln1, proj_context(s.ctx, kV, Phase::train), GradWrite::accumulate);
    dv = s.ln1 = Tensor();
    ops::rmsnorm_backward(dx, dln1_w_.defined() ? &dln1_w_ : nullptr, dln1, s.x_in, ln1_w_, s.ln1_rstd, GradWrite::accumulate);
  }
  s = BlockActivations{};
}

// ---------------------------------------------------------------------------------------
// LlamaModel

namespace {
LlamaConfig validated(const LlamaConfig& cfg) {
  cfg.validate("model config");
  return cfg;
}
}  // namespace

LlamaModel::LlamaModel(const LlamaConfig& cfg, Allocator& alloc, ModelOptions opts, ParamStorage storage)
    : cfg_(validated(cfg)),
      alloc_(alloc),
      opts_(std::move(opts)),
      layout_(model_param_layout(cfg_, opts_)),
      factory_(opts_),
      storage_(storage) {
  if (opts_.qat != QatScheme::none) check_qat_dims(cfg_.hidden_size, cfg_.q_dim(), cfg_.intermediate_size);
  const int U = layout_.num_units();
  {
    const std::vector<double> f64 = lmtune::rope_inv_freq(cfg_);
    const std::vector<float> f32(f64.begin(), f64.end());
    rope_inv_freq_ = Tensor::empty(alloc, {static_cast<int64_t>(f32.size())}, DType::f32, MemCategory::weights);
    rope_inv_freq_.copy_from_host(f32.data(), DType::f32);
  }
  for (int l = 0; l < layout_.num_blocks(); ++l)
    blocks_.push_back(std::make_unique<LlamaBlock>(cfg_, alloc, layout_.units[ModelLayout::block_unit(l)], factory_, l,
                                                   rope_inv_freq_, opts_.recompute));
  params_.resize(U);
  grads_.resize(U);
  for (int u = 0; u < U; ++u) {
    params_[u].resize(layout_.units[u].rows.size());
    grads_[u].resize(layout_.units[u].rows.size());
  }
  embed_row_ = layout_.units[ModelLayout::embed_unit()].index("model.embed_tokens.weight");
  const UnitLayout& head = layout_.units[layout_.head_unit()];
  norm_row_ = head.index("model.norm.weight");
  head_row_ = head.find("lm_head.weight");
  if (storage != ParamStorage::dense) return;
  for (int u = 0; u < U; ++u) {
    UnitBuffers b;
    for (const ParamGroup& g : layout_.units[u].groups)
      b.groups.push_back(Tensor::zeros(alloc, {g.numel}, g.dtype, g.category));
    bind_params(u, b);
  }
  init_adapters();
}

std::unique_ptr<LlamaModel> LlamaModel::load(const std::filesystem::path& dir, Allocator& alloc, ModelOptions opts) {
  LMTUNE_CHECK(std::filesystem::is_directory(dir), "model directory '", dir.string(), "' does not exist");
  const LlamaConfig cfg = load_llama_config(dir / "config.json");
  const SafeTensorsReader reader = SafeTensorsReader::open(dir);
  auto model = std::make_unique<LlamaModel>(cfg, alloc, std::move(opts));
  model->load_weights(reader);
  return model;
}

bool is_adapter_name(std::string_view name) {
  return name.find(".lora_A.") != std::string_view::npos || name.find(".lora_B.") != std::string_view::npos;
}

void LlamaModel::load_weights(const SafeTensorsReader& reader) {
  std::set<std::string> used;
  for (int u = 0; u < layout_.num_units(); ++u)
    for (std::string& name : load_unit_weights(reader, u)) used.insert(std::move(name));
  check_unused_weights(reader, used);
}

std::vector<std::string> LlamaModel::load_unit_weights(const SafeTensorsReader& reader, int unit) {
  const UnitLayout& layout = layout_.units[unit];
  std::vector<std::string> used;
  for (size_t i = 0; i < layout.rows.size(); ++i) {
    const std::string& name = layout.rows[i].name;
    if (is_adapter_name(name)) continue;
    LMTUNE_ASSERT(params_[unit][i].defined(), "unit '", layout.name, "' is not bound");
    // NF4 storage (QLoRA), a bitsandbytes checkpoint, or NF4 values (trainer/peft/nf4.h)
    if (const auto names = nf4_load_row(reader, layout, static_cast<int>(i), params_[unit], opts_.base_quant)) {
      used.insert(used.end(), names->begin(), names->end());
      continue;
    }
    reader.load_into(name, params_[unit][i]);
    used.push_back(name);
  }
  return used;
}

void LlamaModel::check_unused_weights(const SafeTensorsReader& reader, const std::set<std::string>& wanted) const {
  // Strict, as torch's load_state_dict: a tensor this model would not use means the
  // checkpoint is of another architecture (biases or norms its config.json does not declare).
  for (const std::string& name : reader.names()) {
    if (wanted.count(name) || name.ends_with("rotary_emb.inv_freq")) continue;
    if (name == "lm_head.weight" && cfg_.tie_word_embeddings) continue;  // some tied checkpoints store it
    LMTUNE_THROW("'", reader.source().string(), "' holds tensor '", name,
                 "', which a LLaMA model with this config.json does not have (another architecture, or a "
                 "config.json that does not match the weights)");
  }
}

void LlamaModel::bind_params(int unit, const UnitBuffers& buffers) {
  params_[unit] = row_views(layout_.units[unit], buffers);
  if (unit >= 1 && unit <= num_blocks()) blocks_[unit - 1]->bind(params_[unit], grads_[unit]);
}

void LlamaModel::bind_grads(int unit, const UnitBuffers& buffers) {
  grads_[unit] = row_views(layout_.units[unit], buffers);
  if (unit >= 1 && unit <= num_blocks()) blocks_[unit - 1]->bind(params_[unit], grads_[unit]);
}

void LlamaModel::allocate_grads(int64_t bucket_bytes) {
  LMTUNE_CHECK(opts_.role == ParamRole::trainable || opts_.lora.has_value(),
               "gradients requested for a model with nothing to train (frozen weights, no adapters)");
  if (!buckets_.empty()) return;
  LMTUNE_CHECK(opts_.role != ParamRole::trainable || opts_.weight_dtype == DType::f32,
               "training the base weights needs them in f32 (model.dtype f32), not ", dtype_name(opts_.weight_dtype));
  for (const std::vector<int>& units : grad_bucket_units(layout_, bucket_bytes)) {
    int64_t total = 0;
    for (int u : units) total += layout_.units[u].trainable_numel();
    GradBucket bucket{Tensor::zeros(alloc_, {total}, DType::f32, MemCategory::grads), units};
    int64_t offset = 0;
    for (int u : units) {
      UnitBuffers g;
      for (const ParamGroup& pg : layout_.units[u].groups) {
        g.groups.push_back(pg.trains ? bucket.flat.view(offset, {pg.numel}) : Tensor());
        if (pg.trains) offset += pg.numel;
      }
      bind_grads(u, g);
    }
    buckets_.push_back(std::move(bucket));
  }
}

void LlamaModel::zero_grads() {
  for (GradBucket& b : buckets_) b.flat.zero_();
}

std::vector<ParamRef> LlamaModel::parameters() {
  std::vector<ParamRef> out;
  for (int u = 0; u < layout_.num_units(); ++u)
    for (size_t i = 0; i < layout_.units[u].rows.size(); ++i)
      out.push_back({layout_.units[u].rows[i].name, params_[u][i], grads_[u][i], {}, 0});
  return out;
}

std::vector<ParamRef> LlamaModel::trainable_parameters() {
  std::vector<ParamRef> out;
  for (ParamRef& p : parameters())
    if (p.grad.defined()) out.push_back(p);
  return out;
}

void LlamaModel::init_adapters() {
  for (int l = 0; l < num_blocks(); ++l) init_adapters(ModelLayout::block_unit(l));
}

void LlamaModel::init_adapters(int unit) {
  if (!opts_.lora || unit < 1 || unit > num_blocks()) return;
  const auto& targets = lora_target_names();
  {
    const int u = unit, l = unit - 1;
    for (size_t p = 0; p < targets.size(); ++p) {
      const int row = layout_.units[u].find("model.layers." + std::to_string(l) + "." + lora_module_path(targets[p]) +
                                            ".lora_A.weight");
      if (row < 0 || !params_[u][row].defined()) continue;
      lora_init_a(params_[u][row], opts_.seed * 1000003ull + static_cast<uint64_t>(l) * 16 + p);
    }
  }
}

void LlamaModel::merge_adapters() {
  for (auto& b : blocks_) b->merge_adapters();
}

const Tensor& LlamaModel::lm_head_weight() const {
  return head_row_ >= 0 ? params_[layout_.head_unit()][head_row_] : params_[ModelLayout::embed_unit()][embed_row_];
}

Tensor& LlamaModel::lm_head_grad() {
  return head_row_ >= 0 ? grads_[layout_.head_unit()][head_row_] : grads_[ModelLayout::embed_unit()][embed_row_];
}

Tensor LlamaModel::embed_forward(const Tensor& tokens) {
  Tensor x = act(alloc_, {tokens.numel(), cfg_.hidden_size});
  ops::embedding_forward(x, tokens.reshape({tokens.numel()}), params_[ModelLayout::embed_unit()][embed_row_]);
  if (opts_.qat != QatScheme::none) ops::fake_quant_q8_0(x, x);  // the Q8_0 table's rows (gradient: straight through)
  return x;
}

LlamaModel::HeadOperands LlamaModel::head_operands(const Tensor& xf) const {
  if (opts_.qat == QatScheme::none) return {xf, lm_head_weight()};
  // QAT: output.weight is Q8_0 in the export, and llama.cpp quantizes its input to Q8_0
  const Tensor& w = lm_head_weight();
  HeadOperands h{Tensor::empty(alloc_, xf.shape(), DType::f32, MemCategory::workspace),
                 Tensor::empty(alloc_, w.shape(), DType::f32, MemCategory::workspace)};
  ops::fake_quant_q8_0(h.x, xf);
  ops::fake_quant_q8_0(h.w, w);
  return h;
}

void LlamaModel::embed_backward(const Tensor& dx, const Tensor& tokens) {
  Tensor& g = grads_[ModelLayout::embed_unit()][embed_row_];
  if (g.defined()) ops::embedding_backward(g, dx, tokens.reshape({tokens.numel()}));
}

Tensor LlamaModel::final_norm(const Tensor& x, Tensor* rstd_out) {
  Tensor y = act(alloc_, x.shape()), rstd = act(alloc_, {x.size(0)});
  ops::rmsnorm_forward(y, rstd, x, params_[layout_.head_unit()][norm_row_], static_cast<float>(cfg_.rms_norm_eps));
  if (rstd_out != nullptr) *rstd_out = std::move(rstd);
  return y;
}

LossResult LlamaModel::head_loss_forward_backward(const Tensor& x, const Tensor& targets, float loss_scale,
                                                  Tensor& dx) {
  const int64_t N = x.size(0), C = cfg_.hidden_size;
  Tensor rstd;
  Tensor xf = final_norm(x, &rstd);
  Tensor dxf = act(alloc_, {N, C});
  Tensor& dhead = lm_head_grad();
  LossResult r;
  {
    const HeadOperands h = head_operands(xf);
    xf = Tensor();
    r.sum = ops::lm_head_cross_entropy(h.x, h.w, targets.reshape({N}), &r.count, nullptr, &dxf,
                                       dhead.defined() ? &dhead : nullptr, loss_scale);
  }
  alloc_.set_phase("backward final norm");
  dx = act(alloc_, {N, C});
  Tensor& dnorm = grads_[layout_.head_unit()][norm_row_];
  ops::rmsnorm_backward(dx, dnorm.defined() ? &dnorm : nullptr, dxf, x, params_[layout_.head_unit()][norm_row_],
                        rstd, ops::GradWrite::assign);
  return r;
}

LossResult LlamaModel::head_loss(const Tensor& x, const Tensor& targets) {
  const int64_t N = x.size(0);
  const HeadOperands h = head_operands(final_norm(x, nullptr));
  LossResult r;
  r.sum = ops::lm_head_cross_entropy(h.x, h.w, targets.reshape({N}), &r.count, nullptr, nullptr, nullptr, 1.0f);
  return r;
}

LossResult LlamaModel::forward_backward(const Tensor& tokens, const Tensor& targets, float loss_scale,
                                        const MicroBatchContext& ctx, UnitHooks* hooks) {
  LMTUNE_ASSERT(tokens.dim() == 2 && targets.shape() == tokens.shape(), "tokens ", shape_str(tokens.shape()),
                " and targets ", shape_str(targets.shape()), " must both be (B, T)");
  if (storage_ == ParamStorage::dense) allocate_grads();
  UnitHooks none;
  UnitHooks& h = hooks != nullptr ? *hooks : none;
  const int64_t B = tokens.size(0), T = tokens.size(1);
  const int L = num_blocks(), head = layout_.head_unit();
  std::vector<BlockActivations> saved(static_cast<size_t>(L));

  alloc_.set_phase("forward embedding");
  h.before_forward(ModelLayout::embed_unit());
  Tensor x = embed_forward(tokens);
  h.after_forward(ModelLayout::embed_unit());
  for (int l = 0; l < L; ++l) {
    alloc_.set_phase("forward layer " + std::to_string(l));
    h.before_forward(ModelLayout::block_unit(l));
    x = blocks_[l]->forward(x, B, T, 0, nullptr, &saved[l], ctx);
    h.after_forward(ModelLayout::block_unit(l));
  }
  alloc_.set_phase("loss");
  h.before_forward(head);
  h.before_backward(head);
  Tensor dx;
  const LossResult r = head_loss_forward_backward(x, targets, loss_scale, dx);
  x = Tensor();
  h.after_backward(head);
  for (int l = L - 1; l >= 0; --l) {
    alloc_.set_phase("backward layer " + std::to_string(l));
    h.before_backward(ModelLayout::block_unit(l));
    blocks_[l]->backward(dx, saved[l], B, T);
    h.after_backward(ModelLayout::block_unit(l));
  }
  alloc_.set_phase("backward embedding");
  h.before_backward(ModelLayout::embed_unit());
  embed_backward(dx, tokens);
  h.after_backward(ModelLayout::embed_unit());
  alloc_.set_phase("");
  return r;
}

LossResult LlamaModel::forward_loss(const Tensor& tokens, const Tensor& targets, UnitHooks* hooks) {
  UnitHooks none;
  UnitHooks& h = hooks != nullptr ? *hooks : none;
  const int64_t B = tokens.size(0), T = tokens.size(1);
  h.before_forward(ModelLayout::embed_unit());
  Tensor x = embed_forward(tokens);
  h.after_forward(ModelLayout::embed_unit());
  for (int l = 0; l < num_blocks(); ++l) {
    h.before_forward(ModelLayout::block_unit(l));
    x = blocks_[l]->forward(x, B, T, 0, nullptr, nullptr);
    h.after_forward(ModelLayout::block_unit(l));
  }
  h.before_forward(layout_.head_unit());
  const LossResult r = head_loss(x, targets);
  h.after_forward(layout_.head_unit());
  return r;
}

Tensor LlamaModel::forward_logits(const Tensor& tokens) {
  const int64_t B = tokens.size(0), T = tokens.size(1), N = B * T;
  Tensor x = embed_forward(tokens);
  for (auto& b : blocks_) x = b->forward(x, B, T, 0, nullptr, nullptr);
  x = final_norm(x, nullptr);
  const HeadOperands h = head_operands(x);
  x = Tensor();
  Tensor logits = act(alloc_, {N, cfg_.vocab_size});
  ops::linear_forward(logits, h.x, h.w, nullptr);
  return logits;
}

KVCache LlamaModel::make_kv_cache(int64_t batch, int64_t capacity) {
  KVCache c;
  c.capacity = capacity;
  for (size_t l = 0; l < blocks_.size(); ++l) {
    c.k.push_back(act(alloc_, {batch, capacity, cfg_.num_key_value_heads, cfg_.head_dim()}));
    c.v.push_back(act(alloc_, {batch, capacity, cfg_.num_key_value_heads, cfg_.head_dim()}));
  }
  return c;
}

Tensor LlamaModel::forward_cached(const Tensor& tokens, KVCache& cache, UnitHooks* hooks) {
  UnitHooks none;
  UnitHooks& h = hooks != nullptr ? *hooks : none;
  const int64_t B = tokens.size(0), T = tokens.size(1), C = cfg_.hidden_size;
  LMTUNE_ASSERT(!cache.k.empty() && cache.k[0].size(0) == B, "KV cache batch does not match tokens ",
                shape_str(tokens.shape()));
  const int64_t pos0 = cache.length;
  h.before_forward(ModelLayout::embed_unit());
  Tensor x = embed_forward(tokens);
  h.after_forward(ModelLayout::embed_unit());
  for (int l = 0; l < num_blocks(); ++l) {
    h.before_forward(ModelLayout::block_unit(l));
    x = blocks_[l]->forward(x, B, T, pos0, &cache, nullptr);
    h.after_forward(ModelLayout::block_unit(l));
  }
  cache.length += T;
  Tensor last = act(alloc_, {B, C});
  for (int64_t b = 0; b < B; ++b) last.view(b * C, {C}).copy_(x.view((b * T + T - 1) * C, {C}));
  x = Tensor();
  h.before_forward(layout_.head_unit());
  const HeadOperands ho = head_operands(final_norm(last, nullptr));
  last = Tensor();
  Tensor logits = act(alloc_, {B, cfg_.vocab_size});
  ops::linear_forward(logits, ho.x, ho.w, nullptr);
  h.after_forward(layout_.head_unit());
  return logits;
}

Tensor make_token_tensor(Allocator& alloc, const std::vector<int32_t>& ids, int64_t B, int64_t T) {
  LMTUNE_ASSERT(static_cast<int64_t>(ids.size()) == B * T, ids.size(), " ids for a (", B, ", ", T, ") batch");
  Tensor t = act(alloc, {B, T}, DType::i32);
  t.copy_from_host(ids.data(), DType::i32);
  return t;
}

}  // namespace lmtune
