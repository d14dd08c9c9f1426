// The LLaMA model: embedding, blocks of (RMSNorm, GQA attention with RoPE, RMSNorm,
// SwiGLU MLP) with residuals, final RMSNorm, lm_head (tied or not). Forward and backward
// are written by hand, one op at a time (kernels/ops.h); each block saves exactly the
// activations its backward needs, in BlockActivations.
//
// Memory layout: every block's parameters live in two flat buffers — `matrices` (the seven
// projections, weight dtype) and `vectors` (norm weights and q/k/v biases, f32) — and its
// gradients in two more of the same layout, so ZeRO-3 can shard a block and the optimizer
// can walk it. The embedding, final norm and untied lm_head are the "outer" parameters
// with buffers of their own. Everything comes from the model's Allocator, so the same
// code on the meta device predicts the memory of a real run exactly.
#pragma once

#include <filesystem>
#include <array>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "trainer/core/tensor.h"
#include "trainer/model/config.h"
#include "trainer/model/linear.h"
#include "trainer/peft/lora.h"

namespace lmtune {

class SafeTensorsReader;

// Frozen parameters are category `weights`; trainable ones `trainable` (and get grads).
enum class ParamRole { frozen, trainable };

struct ModelOptions {
  ParamRole role = ParamRole::frozen;  // of the base model's parameters
  // Storage dtype of the blocks' projection matrices (bf16/f16 only while frozen).
  DType weight_dtype = DType::f32;
  // LoRA adapters (trainable, f32) on the listed projections of every block.
  std::optional<LoraOptions> lora;
  uint64_t seed = 0;  // initialisation of the LoRA A matrices
};

struct LossResult {
  double sum = 0.0;   // sum of -log p(target) over predicted tokens
  int64_t count = 0;  // number of predicted (non-ignored) tokens
  double mean() const { return count ? sum / static_cast<double>(count) : 0.0; }
};

// What one block's backward needs, saved by its forward. N = B*T rows.
struct BlockActivations {
  Tensor x_in;              // (N, C) block input (the previous block's output)
  Tensor ln1, ln1_rstd;     // (N, C), (N)
  Tensor q, k, v;           // (B, T, Hq, D), (B, T, Hkv, D) x2; q and k after RoPE
  Tensor att, att_lse;      // (B, T, Hq, D), (B, Hq, T)
  Tensor res1;              // (N, C) x_in + o_proj(att)
  Tensor ln2, ln2_rstd;     // (N, C), (N)
  Tensor gate, up, act;     // (N, H) x3; act = silu(gate) * up
};

// Per-layer key/value cache for incremental decoding: k, v (B, S, Hkv, D).
struct KVCache {
  std::vector<Tensor> k, v;
  int64_t capacity = 0;  // S
  int64_t length = 0;    // positions filled
};

class LlamaBlock {
 public:
  LlamaBlock(const LlamaConfig& cfg, Allocator& alloc, const ModelOptions& opts, int index);
  // Forward for B sequences of T new tokens at positions [pos0, pos0 + T). With a cache,
  // this block's k/v rows are written into it and attention reads all pos0 + T rows;
  // without, k/v are fresh tensors (pos0 must be 0). x (N, C) -> returned (N, C).
  Tensor forward(const Tensor& x, int64_t B, int64_t T, int64_t pos0, KVCache* cache, BlockActivations* save);
  // Given dx (N, C) = d loss / d output, overwrites it with d loss / d input; parameter
  // grads accumulate. `acts` are released as they are consumed.
  void backward(Tensor& dx, BlockActivations& acts, int64_t B, int64_t T);

  // Gradients for what trains: the base parameters when their role is trainable, the
  // adapters when there are any.
  void allocate_grads();
  void collect_parameters(std::vector<ParamRef>& out);
  void set_dropout_seed(uint64_t seed);
  void merge_adapters();
  Tensor& matrices() { return matrices_; }
  Tensor& vectors() { return vectors_; }
  Tensor& adapters() { return adapters_; }

  // In the order of lora_target_names() (q, k, v, o, gate, up, down).
  enum Proj { kQ, kK, kV, kO, kGate, kUp, kDown, kNumProj };

 private:
  Linear& proj(Proj p) { return *proj_[p]; }

  const LlamaConfig cfg_;
  Allocator& alloc_;
  ModelOptions opts_;
  int index_;
  Tensor matrices_, vectors_, grad_matrices_, grad_vectors_;  // base parameters and their grads
  Tensor adapters_, grad_adapters_;                           // LoRA A and B of every target
  Tensor ln1_w_, ln2_w_, dln1_w_, dln2_w_;
  std::array<std::unique_ptr<Linear>, kNumProj> proj_;  // what forward calls (dense or LoRA)
  std::array<DenseLinear*, kNumProj> dense_{};          // the base layers, owned through proj_
  std::array<LoraLinear*, kNumProj> lora_{};            // null where no adapter
};

class LlamaModel {
 public:
  LlamaModel(const LlamaConfig& cfg, Allocator& alloc, ModelOptions opts = {});
  // Reads dir/config.json and the safetensors weights (single or sharded) into a new model.
  // On the meta device the weights are only checked (names, shapes), not read.
  static std::unique_ptr<LlamaModel> load(const std::filesystem::path& dir, Allocator& alloc, ModelOptions opts = {});
  void load_weights(const SafeTensorsReader& reader);

  const LlamaConfig& config() const { return cfg_; }
  Allocator& allocator() const { return alloc_; }
  const ModelOptions& options() const { return opts_; }
  // Parameters with their HF names (lm_head.weight only when untied); LoRA adapters as
  // <module>.lora_A.weight / <module>.lora_B.weight.
  std::vector<ParamRef> parameters();
  // The ones that train (those with a gradient once allocate_grads has run).
  std::vector<ParamRef> trainable_parameters();
  void allocate_grads();  // zero-filled, category `grads`
  void zero_grads();
  // Seeds the LoRA dropout masks of the next forward/backward (call once per micro-batch).
  void set_dropout_seed(uint64_t seed);
  // Folds every LoRA adapter into its base weight (W += scaling * B A, in double) and zeroes
  // B, so the model computes the same function with the adapters now inert. The base must
  // be f32. No-op on meta.
  void merge_adapters();

  // Training: forward, loss (fused with lm_head, chunked) and backward in one pass.
  // tokens, targets (B, T) i32 on the model's device; a target < 0 is ignored. Gradients
  // of loss_scale * (sum of token losses) accumulate into the grads.
  LossResult forward_backward(const Tensor& tokens, const Tensor& targets, float loss_scale);
  // Evaluation: the loss only; no activations are kept beyond the block being computed.
  LossResult forward_loss(const Tensor& tokens, const Tensor& targets);
  // Logits for every position: (B*T, V), category activations.
  Tensor forward_logits(const Tensor& tokens);

  // Incremental decoding.
  KVCache make_kv_cache(int64_t batch, int64_t capacity);
  // Feeds tokens (B, T) at positions [cache.length, +T); returns the logits of the last
  // position of each sequence, (B, V).
  Tensor forward_cached(const Tensor& tokens, KVCache& cache);

 private:
  Tensor embed(const Tensor& tokens);  // (N, C)
  const Tensor& lm_head_weight() const;
  Tensor final_norm(const Tensor& x, Tensor* rstd);

  LlamaConfig cfg_;
  Allocator& alloc_;
  ModelOptions opts_;
  Tensor embed_w_, norm_w_, head_w_;     // head_w_ undefined when tied
  Tensor dembed_w_, dnorm_w_, dhead_w_;  // grads
  std::vector<std::unique_ptr<LlamaBlock>> blocks_;
  bool grads_allocated_ = false;
};

// True for LoRA adapter parameter names (<module>.lora_A.weight / .lora_B.weight).
bool is_adapter_name(std::string_view name);

// A (B, T) i32 tensor on `alloc`'s device holding `ids` (row-major); ids.size() == B*T.
Tensor make_token_tensor(Allocator& alloc, const std::vector<int32_t>& ids, int64_t B, int64_t T);

}  // namespace lmtune
