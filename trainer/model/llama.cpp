#include "trainer/model/llama.h"

#include <algorithm>
#include <set>

#include "kernels/ops.h"
#include "trainer/io/safetensors.h"

namespace lmtune {

namespace {

MemCategory param_category(ParamRole role) {
  return role == ParamRole::trainable ? MemCategory::trainable : MemCategory::weights;
}

Tensor act(Allocator& alloc, Shape shape, DType dtype = DType::f32) {
  return Tensor::empty(alloc, std::move(shape), dtype, MemCategory::activations);
}

// Carves consecutive views out of a flat buffer.
class Carver {
 public:
  explicit Carver(const Tensor& flat) : flat_(flat) {}
  Tensor take(Shape shape) {
    Tensor t = flat_.view(offset_, shape);
    offset_ += shape_numel(shape);
    return t;
  }
  int64_t used() const { return offset_; }

 private:
  const Tensor& flat_;
  int64_t offset_ = 0;
};

struct BlockSizes {
  int64_t C, H, qd, kvd;
  int64_t matrices() const { return qd * C + 2 * kvd * C + C * qd + 3 * H * C; }
};

BlockSizes block_sizes(const LlamaConfig& cfg) {
  return {cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads * cfg.head_dim(), cfg.kv_dim()};
}

int64_t block_vectors(const LlamaConfig& cfg) {
  const BlockSizes s = block_sizes(cfg);
  return 2 * s.C + (cfg.attention_bias ? s.qd + 2 * s.kvd : 0);
}

}  // namespace

// ---------------------------------------------------------------------------------------
// LlamaBlock

namespace {
struct ProjShape {
  int64_t out, in;
};
std::array<ProjShape, LlamaBlock::kNumProj> proj_shapes(const LlamaConfig& cfg) {
  const BlockSizes s = block_sizes(cfg);
  return {{{s.qd, s.C}, {s.kvd, s.C}, {s.kvd, s.C}, {s.C, s.qd}, {s.H, s.C}, {s.H, s.C}, {s.C, s.H}}};
}
}  // namespace

LlamaBlock::LlamaBlock(const LlamaConfig& cfg, Allocator& alloc, const ModelOptions& opts, int index)
    : cfg_(cfg), alloc_(alloc), opts_(opts), index_(index) {
  const BlockSizes s = block_sizes(cfg);
  const MemCategory cat = param_category(opts.role);
  matrices_ = Tensor::zeros(alloc, {s.matrices()}, opts.weight_dtype, cat);
  vectors_ = Tensor::zeros(alloc, {block_vectors(cfg)}, DType::f32, cat);
  Carver m(matrices_), vec(vectors_);
  ln1_w_ = vec.take({s.C});
  ln2_w_ = vec.take({s.C});
  std::array<Tensor, kNumProj> bias;
  if (cfg.attention_bias) {
    bias[kQ] = vec.take({s.qd});
    bias[kK] = vec.take({s.kvd});
    bias[kV] = vec.take({s.kvd});
  }
  const auto shapes = proj_shapes(cfg);
  for (int p = 0; p < kNumProj; ++p) {
    auto dense = std::make_unique<DenseLinear>(m.take({shapes[p].out, shapes[p].in}), bias[p]);
    dense_[p] = dense.get();
    proj_[p] = std::move(dense);
  }
  LMTUNE_ASSERT(m.used() == matrices_.numel() && vec.used() == vectors_.numel());

  if (!opts.lora) return;
  const LoraOptions& lo = *opts.lora;
  std::vector<int> targets;
  for (int p = 0; p < kNumProj; ++p)
    if (std::find(lo.targets.begin(), lo.targets.end(), lora_target_names()[p]) != lo.targets.end())
      targets.push_back(p);
  int64_t total = 0;
  for (int p : targets) total += lo.rank * (shapes[p].in + shapes[p].out);
  adapters_ = Tensor::zeros(alloc, {total}, DType::f32, MemCategory::trainable);  // B stays zero
  Carver ad(adapters_);
  for (int p : targets) {
    Tensor a = ad.take({lo.rank, shapes[p].in});
    Tensor b = ad.take({shapes[p].out, lo.rank});
    lora_init_a(a, opts.seed * 1000003ull + static_cast<uint64_t>(index) * 16 + static_cast<uint64_t>(p));
    auto l = std::make_unique<LoraLinear>(std::move(proj_[p]), a, b, static_cast<float>(lo.scaling()),
                                          static_cast<float>(lo.dropout));
    lora_[p] = l.get();
    proj_[p] = std::move(l);
  }
}

void LlamaBlock::allocate_grads() {
  if (opts_.role == ParamRole::trainable && !grad_matrices_.defined()) {
    LMTUNE_CHECK(opts_.weight_dtype == DType::f32, "training the base weights needs them in f32 (model.dtype f32), not ",
                 dtype_name(opts_.weight_dtype));
    const BlockSizes s = block_sizes(cfg_);
    grad_matrices_ = Tensor::zeros(alloc_, {matrices_.numel()}, DType::f32, MemCategory::grads);
    grad_vectors_ = Tensor::zeros(alloc_, {vectors_.numel()}, DType::f32, MemCategory::grads);
    Carver m(grad_matrices_), vec(grad_vectors_);
    dln1_w_ = vec.take({s.C});
    dln2_w_ = vec.take({s.C});
    std::array<Tensor, kNumProj> dbias;
    if (cfg_.attention_bias) {
      dbias[kQ] = vec.take({s.qd});
      dbias[kK] = vec.take({s.kvd});
      dbias[kV] = vec.take({s.kvd});
    }
    const auto shapes = proj_shapes(cfg_);
    for (int p = 0; p < kNumProj; ++p) dense_[p]->set_grads(m.take({shapes[p].out, shapes[p].in}), dbias[p]);
  }
  if (adapters_.defined() && !grad_adapters_.defined()) {
    grad_adapters_ = Tensor::zeros(alloc_, adapters_.shape(), DType::f32, MemCategory::grads);
    Carver g(grad_adapters_);
    for (int p = 0; p < kNumProj; ++p)
      if (lora_[p] != nullptr) {
        Tensor da = g.take(lora_[p]->a().shape());
        Tensor db = g.take(lora_[p]->b().shape());
        lora_[p]->set_grads(da, db);
      }
  }
}

void LlamaBlock::set_dropout_seed(uint64_t seed) {
  for (int p = 0; p < kNumProj; ++p)
    if (lora_[p] != nullptr) lora_[p]->set_dropout_seed(seed * 1000003ull + static_cast<uint64_t>(index_) * 16 + p);
}

void LlamaBlock::merge_adapters() {
  if (matrices_.is_meta()) return;
  for (int p = 0; p < kNumProj; ++p) {
    if (lora_[p] == nullptr) continue;
    LMTUNE_CHECK(matrices_.dtype() == DType::f32, "merging adapters needs f32 base weights, not ",
                 dtype_name(matrices_.dtype()));
    const Tensor& w = dense_[p]->weight();
    const int64_t out = w.size(0), in = w.size(1), r = lora_[p]->a().size(0);
    float* W = w.data<float>();
    const float* A = lora_[p]->a().data<float>();
    float* B = lora_[p]->b().data<float>();
    const double s = lora_[p]->scaling();
#pragma omp parallel for
    for (int64_t i = 0; i < out; ++i)
      for (int64_t j = 0; j < in; ++j) {
        double acc = 0;
        for (int64_t k = 0; k < r; ++k) acc += static_cast<double>(B[i * r + k]) * A[k * in + j];
        W[i * in + j] += static_cast<float>(s * acc);
      }
    Tensor(lora_[p]->b()).zero_();
  }
}

void LlamaBlock::collect_parameters(std::vector<ParamRef>& out) {
  const std::string p = "model.layers." + std::to_string(index_) + ".";
  out.push_back({p + "input_layernorm.weight", ln1_w_, dln1_w_});
  for (int i = kQ; i <= kO; ++i) proj_[i]->collect_parameters(p + lora_module_path(lora_target_names()[i]), out);
  out.push_back({p + "post_attention_layernorm.weight", ln2_w_, dln2_w_});
  for (int i = kGate; i <= kDown; ++i) proj_[i]->collect_parameters(p + lora_module_path(lora_target_names()[i]), out);
}

Tensor LlamaBlock::forward(const Tensor& x, int64_t B, int64_t T, int64_t pos0, KVCache* cache,
                           BlockActivations* save) {
  const int64_t N = B * T, C = cfg_.hidden_size, H = cfg_.intermediate_size;
  const int64_t Hq = cfg_.num_attention_heads, Hkv = cfg_.num_key_value_heads, D = cfg_.head_dim();
  const float theta = static_cast<float>(cfg_.rope_theta);
  const float eps = static_cast<float>(cfg_.rms_norm_eps);
  LMTUNE_ASSERT(cache != nullptr || pos0 == 0, "a forward at pos0 > 0 needs a KV cache");

  Tensor ln1 = act(alloc_, {N, C}), ln1_rstd = act(alloc_, {N});
  ops::rmsnorm_forward(ln1, ln1_rstd, x, ln1_w_, eps);

  Tensor q = act(alloc_, {B, T, Hq, D}), k = act(alloc_, {B, T, Hkv, D}), v = act(alloc_, {B, T, Hkv, D});
  Tensor q2 = q.reshape({N, Hq * D}), k2 = k.reshape({N, Hkv * D}), v2 = v.reshape({N, Hkv * D});
  proj(kQ).forward(q2, ln1);
  proj(kK).forward(k2, ln1);
  proj(kV).forward(v2, ln1);
  ops::rope_forward(q, q, pos0, theta);
  ops::rope_forward(k, k, pos0, theta);

  Tensor keys = k, values = v;
  if (cache != nullptr) {
    Tensor& ck = cache->k[index_];
    Tensor& cv = cache->v[index_];
    const int64_t S = cache->capacity, kvd = Hkv * D;
    LMTUNE_CHECK(pos0 + T <= S, "the KV cache holds ", S, " positions; ", pos0 + T, " were asked for");
    for (int64_t b = 0; b < B; ++b) {
      ck.view((b * S + pos0) * kvd, {T * kvd}).copy_(k.view(b * T * kvd, {T * kvd}));
      cv.view((b * S + pos0) * kvd, {T * kvd}).copy_(v.view(b * T * kvd, {T * kvd}));
    }
    keys = ck;
    values = cv;
  }

  Tensor att = act(alloc_, {B, T, Hq, D});
  Tensor lse;
  if (save != nullptr) lse = act(alloc_, {B, Hq, T});
  ops::attention_forward(att, save != nullptr ? &lse : nullptr, q, keys, values, pos0);
  keys = Tensor();
  values = Tensor();

  Tensor res1 = act(alloc_, {N, C});
  proj(kO).forward(res1, att.reshape({N, Hq * D}));
  ops::add_inplace(res1, x);

  Tensor ln2 = act(alloc_, {N, C}), ln2_rstd = act(alloc_, {N});
  ops::rmsnorm_forward(ln2, ln2_rstd, res1, ln2_w_, eps);
  Tensor gate = act(alloc_, {N, H}), up = act(alloc_, {N, H});
  proj(kGate).forward(gate, ln2);
  proj(kUp).forward(up, ln2);
  Tensor a = act(alloc_, {N, H});
  ops::swiglu_forward(a, gate, up);
  if (save == nullptr) {  // inference: release what no one needs before the last matmul
    gate = up = ln2 = ln2_rstd = Tensor();
  }
  Tensor out = act(alloc_, {N, C});
  proj(kDown).forward(out, a);
  ops::add_inplace(out, res1);

  if (save != nullptr) {
    *save = BlockActivations{x, std::move(ln1), std::move(ln1_rstd), std::move(q), std::move(k), std::move(v),
                             std::move(att), std::move(lse), std::move(res1), std::move(ln2), std::move(ln2_rstd),
                             std::move(gate), std::move(up), std::move(a)};
  }
  return out;
}

void LlamaBlock::backward(Tensor& dx, BlockActivations& s, int64_t B, int64_t T) {
  using ops::GradWrite;
  const int64_t N = B * T, C = cfg_.hidden_size, H = cfg_.intermediate_size;
  const int64_t Hq = cfg_.num_attention_heads, Hkv = cfg_.num_key_value_heads, D = cfg_.head_dim();
  const float theta = static_cast<float>(cfg_.rope_theta);
  LMTUNE_ASSERT(grad_matrices_.defined() || grad_adapters_.defined(), "backward through a block that does not train");

  // MLP branch: out = res1 + down(silu(gate(ln2)) * up(ln2)),  ln2 = rmsnorm(res1)
  {
    Tensor da = act(alloc_, {N, H});
    proj(kDown).backward(&da, dx, s.act, GradWrite::assign);
    s.act = Tensor();
    Tensor dgate = act(alloc_, {N, H}), dup = act(alloc_, {N, H});
    ops::swiglu_backward(dgate, dup, da, s.gate, s.up);
    da = s.gate = s.up = Tensor();
    Tensor dln2 = act(alloc_, {N, C});
    proj(kGate).backward(&dln2, dgate, s.ln2, GradWrite::assign);
    dgate = Tensor();
    proj(kUp).backward(&dln2, dup, s.ln2, GradWrite::accumulate);
    dup = s.ln2 = Tensor();
    // dx becomes d loss / d res1: the residual path plus the norm's contribution.
    ops::rmsnorm_backward(dx, dln2_w_.defined() ? &dln2_w_ : nullptr, dln2, s.res1, ln2_w_, s.ln2_rstd, GradWrite::accumulate);
    s.res1 = s.ln2_rstd = Tensor();
  }
  // Attention branch: res1 = x_in + o(attention(rope(q(ln1)), rope(k(ln1)), v(ln1))),  ln1 = rmsnorm(x_in)
  {
    Tensor datt = act(alloc_, {B, T, Hq, D});
    Tensor datt2 = datt.reshape({N, Hq * D});
    proj(kO).backward(&datt2, dx, s.att.reshape({N, Hq * D}), GradWrite::assign);
    Tensor dq = act(alloc_, {B, T, Hq, D}), dk = act(alloc_, {B, T, Hkv, D}), dv = act(alloc_, {B, T, Hkv, D});
    ops::attention_backward(dq, dk, dv, datt, s.q, s.k, s.v, s.att, s.att_lse);
    datt = datt2 = s.att = s.att_lse = s.q = s.k = s.v = Tensor();
    ops::rope_backward(dq, dq, 0, theta);
    ops::rope_backward(dk, dk, 0, theta);
    Tensor dln1 = act(alloc_, {N, C});
    proj(kQ).backward(&dln1, dq.reshape({N, Hq * D}), s.ln1, GradWrite::assign);
    dq = Tensor();
    proj(kK).backward(&dln1, dk.reshape({N, Hkv * D}), s.ln1, GradWrite::accumulate);
    dk = Tensor();
    proj(kV).backward(&dln1, dv.reshape({N, Hkv * D}), s.ln1, GradWrite::accumulate);
    dv = s.ln1 = Tensor();
    ops::rmsnorm_backward(dx, dln1_w_.defined() ? &dln1_w_ : nullptr, dln1, s.x_in, ln1_w_, s.ln1_rstd, GradWrite::accumulate);
  }
  s = BlockActivations{};
}

// ---------------------------------------------------------------------------------------
// LlamaModel

LlamaModel::LlamaModel(const LlamaConfig& cfg, Allocator& alloc, ModelOptions opts)
    : cfg_(cfg), alloc_(alloc), opts_(opts) {
  cfg_.validate("model config");
  const MemCategory cat = param_category(opts.role);
  const int64_t C = cfg.hidden_size, V = cfg.vocab_size;
  embed_w_ = Tensor::zeros(alloc, {V, C}, DType::f32, cat);
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l)
    blocks_.push_back(std::make_unique<LlamaBlock>(cfg, alloc, opts, static_cast<int>(l)));
  norm_w_ = Tensor::zeros(alloc, {C}, DType::f32, cat);
  if (!cfg.tie_word_embeddings) head_w_ = Tensor::zeros(alloc, {V, C}, DType::f32, cat);
}

std::unique_ptr<LlamaModel> LlamaModel::load(const std::filesystem::path& dir, Allocator& alloc, ModelOptions opts) {
  LMTUNE_CHECK(std::filesystem::is_directory(dir), "model directory '", dir.string(), "' does not exist");
  const LlamaConfig cfg = load_llama_config(dir / "config.json");
  const SafeTensorsReader reader = SafeTensorsReader::open(dir);
  auto model = std::make_unique<LlamaModel>(cfg, alloc, opts);
  model->load_weights(reader);
  return model;
}

bool is_adapter_name(std::string_view name) {
  return name.find(".lora_A.") != std::string_view::npos || name.find(".lora_B.") != std::string_view::npos;
}

void LlamaModel::load_weights(const SafeTensorsReader& reader) {
  std::set<std::string> wanted;
  for (ParamRef& p : parameters()) {
    if (is_adapter_name(p.name)) continue;
    reader.load_into(p.name, p.value);
    wanted.insert(p.name);
  }
  // Strict, as torch's load_state_dict: a tensor this model would not use means the
  // checkpoint is of another architecture (an o_proj bias, a model_type we do not know).
  for (const std::string& name : reader.names()) {
    if (wanted.count(name) || name.ends_with("rotary_emb.inv_freq")) continue;
    if (name == "lm_head.weight" && cfg_.tie_word_embeddings) continue;  // some tied checkpoints store it
    LMTUNE_THROW("'", reader.source().string(), "' holds tensor '", name,
                 "', which a LLaMA model with this config.json does not have (another architecture, or a "
                 "config.json that does not match the weights)");
  }
}

std::vector<ParamRef> LlamaModel::parameters() {
  std::vector<ParamRef> out;
  out.push_back({"model.embed_tokens.weight", embed_w_, dembed_w_});
  for (auto& b : blocks_) b->collect_parameters(out);
  out.push_back({"model.norm.weight", norm_w_, dnorm_w_});
  if (head_w_.defined()) out.push_back({"lm_head.weight", head_w_, dhead_w_});
  return out;
}

void LlamaModel::allocate_grads() {
  LMTUNE_CHECK(opts_.role == ParamRole::trainable || opts_.lora.has_value(),
               "gradients requested for a model with nothing to train (frozen weights, no adapters)");
  if (grads_allocated_) return;
  grads_allocated_ = true;
  const bool base = opts_.role == ParamRole::trainable;
  if (base) dembed_w_ = Tensor::zeros(alloc_, embed_w_.shape(), DType::f32, MemCategory::grads);
  for (auto& b : blocks_) b->allocate_grads();
  if (base) dnorm_w_ = Tensor::zeros(alloc_, norm_w_.shape(), DType::f32, MemCategory::grads);
  if (base && head_w_.defined()) dhead_w_ = Tensor::zeros(alloc_, head_w_.shape(), DType::f32, MemCategory::grads);
}

std::vector<ParamRef> LlamaModel::trainable_parameters() {
  std::vector<ParamRef> out;
  for (ParamRef& p : parameters())
    if (p.grad.defined()) out.push_back(p);
  return out;
}

void LlamaModel::merge_adapters() {
  for (auto& b : blocks_) b->merge_adapters();
}

void LlamaModel::set_dropout_seed(uint64_t seed) {
  for (auto& b : blocks_) b->set_dropout_seed(seed);
}

void LlamaModel::zero_grads() {
  for (ParamRef& p : parameters())
    if (p.grad.defined()) p.grad.zero_();
}

const Tensor& LlamaModel::lm_head_weight() const { return head_w_.defined() ? head_w_ : embed_w_; }

Tensor LlamaModel::embed(const Tensor& tokens) {
  Tensor x = act(alloc_, {tokens.numel(), cfg_.hidden_size});
  ops::embedding_forward(x, tokens.reshape({tokens.numel()}), embed_w_);
  return x;
}

Tensor LlamaModel::final_norm(const Tensor& x, Tensor* rstd_out) {
  Tensor y = act(alloc_, x.shape()), rstd = act(alloc_, {x.size(0)});
  ops::rmsnorm_forward(y, rstd, x, norm_w_, static_cast<float>(cfg_.rms_norm_eps));
  if (rstd_out != nullptr) *rstd_out = std::move(rstd);
  return y;
}

LossResult LlamaModel::forward_backward(const Tensor& tokens, const Tensor& targets, float loss_scale) {
  LMTUNE_ASSERT(tokens.dim() == 2 && targets.shape() == tokens.shape(), "tokens ", shape_str(tokens.shape()),
                " and targets ", shape_str(targets.shape()), " must both be (B, T)");
  allocate_grads();
  const int64_t B = tokens.size(0), T = tokens.size(1), N = B * T, C = cfg_.hidden_size;
  const int L = static_cast<int>(blocks_.size());
  std::vector<BlockActivations> saved(static_cast<size_t>(L));

  alloc_.set_phase("forward embedding");
  Tensor x = embed(tokens);
  for (int l = 0; l < L; ++l) {
    alloc_.set_phase("forward layer " + std::to_string(l));
    x = blocks_[l]->forward(x, B, T, 0, nullptr, &saved[l]);
  }
  alloc_.set_phase("loss");
  Tensor rstd;
  Tensor xf = final_norm(x, &rstd);
  Tensor dxf = act(alloc_, {N, C});
  Tensor& dhead = head_w_.defined() ? dhead_w_ : dembed_w_;
  LossResult r;
  r.sum = ops::lm_head_cross_entropy(xf, lm_head_weight(), targets.reshape({N}), &r.count, nullptr, &dxf,
                                     dhead.defined() ? &dhead : nullptr, loss_scale);
  xf = Tensor();
  alloc_.set_phase("backward final norm");
  Tensor dx = act(alloc_, {N, C});
  ops::rmsnorm_backward(dx, dnorm_w_.defined() ? &dnorm_w_ : nullptr, dxf, x, norm_w_, rstd, ops::GradWrite::assign);
  dxf = x = rstd = Tensor();
  for (int l = L - 1; l >= 0; --l) {
    alloc_.set_phase("backward layer " + std::to_string(l));
    blocks_[l]->backward(dx, saved[l], B, T);
  }
  alloc_.set_phase("backward embedding");
  if (dembed_w_.defined()) ops::embedding_backward(dembed_w_, dx, tokens.reshape({N}));
  alloc_.set_phase("");
  return r;
}

LossResult LlamaModel::forward_loss(const Tensor& tokens, const Tensor& targets) {
  const int64_t B = tokens.size(0), T = tokens.size(1), N = B * T;
  Tensor x = embed(tokens);
  for (auto& b : blocks_) x = b->forward(x, B, T, 0, nullptr, nullptr);
  Tensor xf = final_norm(x, nullptr);
  x = Tensor();
  LossResult r;
  r.sum = ops::lm_head_cross_entropy(xf, lm_head_weight(), targets.reshape({N}), &r.count, nullptr, nullptr, nullptr,
                                     1.0f);
  return r;
}

Tensor LlamaModel::forward_logits(const Tensor& tokens) {
  const int64_t B = tokens.size(0), T = tokens.size(1), N = B * T;
  Tensor x = embed(tokens);
  for (auto& b : blocks_) x = b->forward(x, B, T, 0, nullptr, nullptr);
  Tensor xf = final_norm(x, nullptr);
  x = Tensor();
  Tensor logits = act(alloc_, {N, cfg_.vocab_size});
  ops::linear_forward(logits, xf, lm_head_weight(), nullptr);
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

Tensor LlamaModel::forward_cached(const Tensor& tokens, KVCache& cache) {
  const int64_t B = tokens.size(0), T = tokens.size(1), C = cfg_.hidden_size;
  LMTUNE_ASSERT(!cache.k.empty() && cache.k[0].size(0) == B, "KV cache batch does not match tokens ",
                shape_str(tokens.shape()));
  const int64_t pos0 = cache.length;
  Tensor x = embed(tokens);
  for (auto& b : blocks_) x = b->forward(x, B, T, pos0, &cache, nullptr);
  cache.length += T;
  Tensor last = act(alloc_, {B, C});
  for (int64_t b = 0; b < B; ++b) last.view(b * C, {C}).copy_(x.view((b * T + T - 1) * C, {C}));
  x = Tensor();
  Tensor xf = final_norm(last, nullptr);
  last = Tensor();
  Tensor logits = act(alloc_, {B, cfg_.vocab_size});
  ops::linear_forward(logits, xf, lm_head_weight(), nullptr);
  return logits;
}

Tensor make_token_tensor(Allocator& alloc, const std::vector<int32_t>& ids, int64_t B, int64_t T) {
  LMTUNE_ASSERT(static_cast<int64_t>(ids.size()) == B * T, ids.size(), " ids for a (", B, ", ", T, ") batch");
  Tensor t = act(alloc, {B, T}, DType::i32);
  t.copy_from_host(ids.data(), DType::i32);
  return t;
}

}  // namespace lmtune
