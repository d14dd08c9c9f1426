// The LLaMA model — design note.
//
// Embedding, blocks of (RMSNorm, GQA attention with RoPE, RMSNorm, SwiGLU MLP) with
// residuals, final RMSNorm, lm_head (tied or not). The families of config.h differ only
// inside attention: biases on the projections (llama/qwen3: attention_bias on q, k, v, o;
// qwen2: q, k, v), Qwen3's per-head RMSNorm of q and k between the projection and RoPE, a
// head_dim D that need not be C / Hq, and RoPE's frequency table (with any scaling folded
// in: rope.h), which the model computes once from the config and holds as a tensor
// (category weights) that every block reads. Forward and backward are written by hand,
// one op at a time (kernels/ops.h); each block saves exactly the activations its backward
// needs, in BlockActivations — or, under activation recompute, less of them, rebuilt in its
// backward (the policy and why the rebuilt tensors are the same: recompute.h).
//
// Units and stages. The model is a sequence of units — the embedding (unit 0), the blocks
// (units 1..L), the head (final norm + lm_head + loss, unit L+1) — whose parameters the
// pure layout table (param_layout.h) places in flat group buffers. Each unit is a stage
// that can be driven from outside: embed_forward/embed_backward, block(l).forward/backward,
// head_loss_forward_backward. forward_backward() is a short composition of them that calls
// UnitHooks around every unit: that is where a parameter store gathers and releases
// (ZeRO-3), where data parallelism starts a gradient reduction as soon as a unit's
// gradients are final, and a pipeline executor drives the same pieces from a schedule.
//
// Storage. The model never carves buffers by hand: bind_params(unit, buffers) and
// bind_grads(unit, buffers) give a unit views of storage someone owns, made from the
// layout. With ParamStorage::dense the model allocates every unit's parameters itself and
// binds them once (inference, single-process training); with ParamStorage::external it
// allocates none of them (only the RoPE table) and a parameter store binds units as it sees
// fit. Gradients come from
// allocate_grads(): one flat f32 buffer per bucket of consecutive units (in backward
// order), so a data-parallel reduction is one in-place collective per bucket.
//
// Randomness. Anything random in a forward (LoRA dropout) derives from the
// MicroBatchContext passed to it — the micro-batch's seed and the global row index of this
// rank's first row — and is saved with the activations, so any layout and any schedule
// draws exactly what one process draws.
//
// Everything comes from the model's Allocator, so the same code on the meta device
// predicts the memory of a real run exactly.
#pragma once

#include <array>
#include <filesystem>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "trainer/core/tensor.h"
#include "trainer/model/config.h"
#include "trainer/model/linear.h"
#include "trainer/model/param_layout.h"

namespace lmtune {

class SafeTensorsReader;

struct LossResult {
  double sum = 0.0;   // sum of -log p(target) over predicted tokens
  int64_t count = 0;  // number of predicted (non-ignored) tokens
  double mean() const { return count ? sum / static_cast<double>(count) : 0.0; }
};

// What random draws of one micro-batch depend on. The same seed on every rank; row_offset
// is the global index (in tokens: sequence index * T) of this rank's first row within the
// micro-batch one process would see.
struct MicroBatchContext {
  uint64_t seed = 0;
  int64_t row_offset = 0;
};

// What one block's backward needs, saved by its forward. N = B*T rows. Under recompute the
// forward saves only x_in and ctx (full) or leaves q .. att_lse undefined (selective), and
// the backward rebuilds the rest (recompute.h).
struct BlockActivations {
  Tensor x_in;              // (N, C) block input (the previous block's output)
  Tensor ln1, ln1_rstd;     // (N, C), (N)
  Tensor q, k, v;           // (B, T, Hq, D), (B, T, Hkv, D) x2; q and k after RoPE
  Tensor q_pre, k_pre;      // Qwen3 only: (B, T, Hq, D), (B, T, Hkv, D) projections before q_norm / k_norm
  Tensor q_rstd, k_rstd;    // Qwen3 only: (B*T*Hq), (B*T*Hkv) their norms' 1/rms
  Tensor att, att_lse;      // (B, T, Hq, D), (B, Hq, T)
  Tensor res1;              // (N, C) x_in + o_proj(att)
  Tensor ln2, ln2_rstd;     // (N, C), (N)
  Tensor gate, up, act;     // (N, H) x3; act = silu(gate) * up
  MicroBatchContext ctx;    // the draws of the forward, replayed by the backward
};

// Per-layer key/value cache for incremental decoding: k, v (B, S, Hkv, D).
struct KVCache {
  std::vector<Tensor> k, v;
  int64_t capacity = 0;  // S
  int64_t length = 0;    // positions filled
};

// Called around every unit by forward_backward / forward_loss. The head's forward and
// backward are one fused call (the loss is computed chunk by chunk with its gradient), so
// for the head unit the sequence is before_forward, before_backward, after_backward.
class UnitHooks {
 public:
  virtual ~UnitHooks() = default;
  virtual void before_forward(int unit) {}
  virtual void after_forward(int unit) {}
  virtual void before_backward(int unit) {}
  // This micro-batch's gradients of the unit have all been added.
  virtual void after_backward(int unit) {}
};

class LlamaBlock {
 public:
  // `layout` is this block's unit of the model layout; projections come from `factory`;
  // rope_inv_freq (D/2) is the model's RoPE frequency table; `recompute` is what a
  // training forward keeps and the backward rebuilds (recompute.h).
  LlamaBlock(const LlamaConfig& cfg, Allocator& alloc, const UnitLayout& layout, const LinearFactory& factory,
             int index, Tensor rope_inv_freq, Recompute recompute);
  // Views of the unit's rows (params) and of their gradients (grads; empty or undefined
  // where frozen).
  void bind(std::span<const Tensor> params, std::span<const Tensor> grads);
  // Forward for B sequences of T new tokens at positions [pos0, pos0 + T). With a cache,
  // this block's k/v rows are written into it and attention reads all pos0 + T rows;
  // without, k/v are fresh tensors (pos0 must be 0). x (N, C) -> returned (N, C). With
  // `save` it is a training forward (LoRA dropout draws from ctx) and saves what the
  // recompute policy keeps; without, it computes the plain function and keeps nothing.
  Tensor forward(const Tensor& x, int64_t B, int64_t T, int64_t pos0, KVCache* cache, BlockActivations* save,
                 const MicroBatchContext& ctx = {});
  // Given dx (N, C) = d loss / d output, overwrites it with d loss / d input; parameter
  // grads accumulate. `acts` are released as they are consumed; what the forward did not
  // keep is rebuilt here first (recompute.h), so call it while the parameters are bound.
  void backward(Tensor& dx, BlockActivations& acts, int64_t B, int64_t T);

  void merge_adapters();

  // In the order of lora_target_names() (q, k, v, o, gate, up, down).
  enum Proj { kQ, kK, kV, kO, kGate, kUp, kDown, kNumProj };

 private:
  // What a forward keeps in BlockActivations (the rest is released as soon as it is used)
  // and whether it computes the block's output.
  enum class Keep { input, all_but_attention, all };
  enum class Output { compute, skip };
  struct Pass {
    Phase phase;  // which dropout draws happen
    Keep keep;
    Output output;
  };
  static constexpr Pass kEvalPass{Phase::eval, Keep::input, Output::compute};

  Linear& proj(Proj p) { return *proj_[p]; }
  LinearContext proj_context(const MicroBatchContext& ctx, int p, Phase phase) const;
  // The forward's ops, one by one; `save` (may be null) gets what pass.keep says.
  Tensor run_forward(const Tensor& x, int64_t B, int64_t T, int64_t pos0, KVCache* cache,
                     const MicroBatchContext& ctx, const Pass& pass, BlockActivations* save);
  // From a.ln1 and a.ctx: a.q, a.k, a.v (after RoPE), a.att and — with Keep::all — what
  // only the backward reads (a.att_lse; Qwen3's q_pre, k_pre, q_rstd, k_rstd).
  void attention_inner(BlockActivations& a, int64_t B, int64_t T, int64_t pos0, KVCache* cache, Phase phase,
                       Keep keep);

  const LlamaConfig cfg_;
  Allocator& alloc_;
  const UnitLayout& layout_;
  int index_;
  Recompute recompute_;
  int ln1_row_, ln2_row_;
  int qn_row_ = -1, kn_row_ = -1;  // Qwen3's q_norm / k_norm (-1: none)
  Tensor ln1_w_, ln2_w_, dln1_w_, dln2_w_;
  Tensor qn_w_, kn_w_, dqn_w_, dkn_w_;
  Tensor rope_inv_freq_;
  std::array<std::unique_ptr<Linear>, kNumProj> proj_;
  bool trains_ = false;
};

// Where a model's parameters live: allocated and bound by the model (dense), or bound
// from outside by a parameter store (external).
enum class ParamStorage { dense, external };

// One gradient bucket: a flat f32 buffer holding the gradients of consecutive units.
struct GradBucket {
  Tensor flat;
  std::vector<int> units;  // in backward order (highest unit first)
};

class LlamaModel {
 public:
  static constexpr int64_t kDefaultBucketBytes = int64_t{25} << 20;

  LlamaModel(const LlamaConfig& cfg, Allocator& alloc, ModelOptions opts = {},
             ParamStorage storage = ParamStorage::dense);
  // Reads dir/config.json and the safetensors weights (single or sharded) into a new model.
  // On the meta device the weights are only checked (names, shapes), not read.
  static std::unique_ptr<LlamaModel> load(const std::filesystem::path& dir, Allocator& alloc, ModelOptions opts = {});
  void load_weights(const SafeTensorsReader& reader);
  // The same in pieces, for a parameter store that binds one unit at a time: a unit's rows
  // (bound), returning the names of the reader's tensors it used; then, once every unit is
  // loaded, the strict check that the reader holds nothing this model would not use.
  std::vector<std::string> load_unit_weights(const SafeTensorsReader& reader, int unit);
  void check_unused_weights(const SafeTensorsReader& reader, const std::set<std::string>& used) const;

  const LlamaConfig& config() const { return cfg_; }
  Allocator& allocator() const { return alloc_; }
  const ModelOptions& options() const { return opts_; }
  const ModelLayout& layout() const { return layout_; }

  // ---- storage ----
  void bind_params(int unit, const UnitBuffers& buffers);
  void bind_grads(int unit, const UnitBuffers& buffers);
  // Gradient buckets of at most bucket_bytes (a unit larger than that is a bucket of its
  // own), zero-filled, category `grads`, bound to the units that train.
  void allocate_grads(int64_t bucket_bytes = kDefaultBucketBytes);
  const std::vector<GradBucket>& grad_buckets() const { return buckets_; }
  // The views bound to a unit's rows now (in its layout's row order; undefined: unbound).
  const std::vector<Tensor>& unit_params(int unit) const { return params_[unit]; }
  const std::vector<Tensor>& unit_grads(int unit) const { return grads_[unit]; }
  void zero_grads();
  // Parameters with their HF names, in layout order (unit by unit); LoRA adapters as
  // <module>.lora_A.weight / <module>.lora_B.weight. Views of what is bound now.
  std::vector<ParamRef> parameters();
  // The ones that train (those with a gradient once allocate_grads has run).
  std::vector<ParamRef> trainable_parameters();
  // LoRA A of every block from options().seed (B is left as it is: zero when fresh); of one
  // unit (a no-op for units without adapters).
  void init_adapters();
  void init_adapters(int unit);
  // Folds every LoRA adapter into its base weight (W += scaling * B A, in double) and zeroes
  // B, so the model computes the same function with the adapters now inert. The base must
  // be f32. No-op on meta.
  void merge_adapters();

  // ---- stages ----
  int num_blocks() const { return static_cast<int>(blocks_.size()); }
  LlamaBlock& block(int layer) { return *blocks_[layer]; }
  // (N, C) rows of the embedding table for tokens (B, T).
  Tensor embed_forward(const Tensor& tokens);
  // Adds the embedding's gradient for dx (N, C) (nothing when the embedding is frozen).
  void embed_backward(const Tensor& dx, const Tensor& tokens);
  // Final norm, lm_head and the cross-entropy of x (N, C) against targets (N) — fused with
  // their backward: dx (N, C) gets d (loss_scale * loss sum) / d x, and the head's
  // gradients accumulate. The full (N, V) logits never exist.
  LossResult head_loss_forward_backward(const Tensor& x, const Tensor& targets, float loss_scale, Tensor& dx);
  // The same loss without gradients.
  LossResult head_loss(const Tensor& x, const Tensor& targets);

  // Training: forward, loss and backward of one micro-batch, composed of the stages.
  // tokens, targets (B, T) i32 on the model's device; a target < 0 is ignored. Gradients
  // of loss_scale * (sum of token losses) accumulate into the grads.
  LossResult forward_backward(const Tensor& tokens, const Tensor& targets, float loss_scale,
                              const MicroBatchContext& ctx = {}, UnitHooks* hooks = nullptr);
  // Evaluation: the loss only; no activations are kept beyond the block being computed.
  LossResult forward_loss(const Tensor& tokens, const Tensor& targets, UnitHooks* hooks = nullptr);
  // Logits for every position: (B*T, V), category activations.
  Tensor forward_logits(const Tensor& tokens);
  // RoPE's frequency table (D/2) f32 (rope.h), category weights.
  const Tensor& rope_inv_freq() const { return rope_inv_freq_; }

  // Incremental decoding.
  KVCache make_kv_cache(int64_t batch, int64_t capacity);
  // Feeds tokens (B, T) at positions [cache.length, +T); returns the logits of the last
  // position of each sequence, (B, V).
  Tensor forward_cached(const Tensor& tokens, KVCache& cache, UnitHooks* hooks = nullptr);

 private:
  const Tensor& lm_head_weight() const;
  Tensor& lm_head_grad();
  // The lm_head's input and weight as the forward multiplies them: the final-norm output and
  // the weight themselves, or under QAT their Q8_0 values (workspace; the gradients pass
  // straight through to xf and to the weight).
  struct HeadOperands {
    Tensor x, w;
  };
  HeadOperands head_operands(const Tensor& xf) const;
  Tensor final_norm(const Tensor& x, Tensor* rstd);

  LlamaConfig cfg_;
  Allocator& alloc_;
  ModelOptions opts_;
  ModelLayout layout_;
  Tensor rope_inv_freq_;
  LinearFactory factory_;
  std::vector<std::unique_ptr<LlamaBlock>> blocks_;
  std::vector<std::vector<Tensor>> params_, grads_;  // per unit, per row (bound views)
  ParamStorage storage_;
  std::vector<GradBucket> buckets_;
  int embed_row_, norm_row_, head_row_;  // rows in units 0 and L+1 (head_row_ -1 when tied)
};

// True for LoRA adapter parameter names (<module>.lora_A.weight / .lora_B.weight).
bool is_adapter_name(std::string_view name);

// A (B, T) i32 tensor on `alloc`'s device holding `ids` (row-major); ids.size() == B*T.
Tensor make_token_tensor(Allocator& alloc, const std::vector<int32_t>& ids, int64_t B, int64_t T);

}  // namespace lmtune
