// Tensor-level ops: forward and backward side by side, each dispatching on the device.
//   * cpu  -> kernels/cpu (fp32 compute, OpenMP)
//   * meta -> nothing (but any workspace an op needs is still allocated and freed, so a
//             meta run performs exactly the allocation sequence of a real one)
// Gradient contract: parameter gradients accumulate (+=). Activation gradients are written
// (=) unless a GradWrite::accumulate argument says otherwise.
// Shapes are checked (LMTUNE_ASSERT) on every call; all activations are f32; weights are
// f32 (bf16/f16 weights are accepted by linear_* and embedding_forward and converted on
// the fly — the frozen-base case of LoRA).
// Scratch memory comes from the allocator of the op's output tensor, category workspace.
#pragma once

#include <cstdint>

#include "trainer/core/tensor.h"

namespace lmtune::ops {

enum class GradWrite { assign, accumulate };

// Set the number of OpenMP threads the CPU kernels use (<= 0: leave the default).
void set_num_threads(int n);
int num_threads();

// ---- linear ----------------------------------------------------------------------------
// out (N, OC) = inp (N, IC) @ weight (OC, IC)^T + bias (OC, optional)
void linear_forward(Tensor& out, const Tensor& inp, const Tensor& weight, const Tensor* bias);
// out (N, OC) = / += scale * inp @ weight^T (+ bias)   (the LoRA update: out += s * h B^T)
void linear_forward(Tensor& out, const Tensor& inp, const Tensor& weight, const Tensor* bias, GradWrite mode,
                    float scale = 1.0f);
// dinp (N, IC) = / += dout (N, OC) @ weight (OC, IC)      (skipped when dinp == nullptr)
// dweight (OC, IC) += dout^T @ inp                         (skipped when dweight == nullptr)
// dbias (OC) += sum_n dout                                 (skipped when dbias == nullptr)
void linear_backward(Tensor* dinp, Tensor* dweight, Tensor* dbias, const Tensor& dout, const Tensor& inp,
                     const Tensor& weight, GradWrite dinp_mode = GradWrite::assign);

// ---- embedding -------------------------------------------------------------------------
// out (N, C) = table (V, C)[tokens (N) i32]; a token outside [0, V) is an error.
void embedding_forward(Tensor& out, const Tensor& tokens, const Tensor& table);
// dtable (V, C) += scatter of dout (N, C) by tokens
void embedding_backward(Tensor& dtable, const Tensor& dout, const Tensor& tokens);

// ---- RMSNorm ---------------------------------------------------------------------------
// out (N, C) = inp * rstd * weight (C);  rstd (N) = 1 / sqrt(mean(inp^2) + eps)  (saved)
void rmsnorm_forward(Tensor& out, Tensor& rstd, const Tensor& inp, const Tensor& weight, float eps);
// dinp (N, C) = / += ; dweight (C) +=  (nullptr: a frozen norm weight, no gradient)
void rmsnorm_backward(Tensor& dinp, Tensor& dweight, const Tensor& dout, const Tensor& inp, const Tensor& weight,
                      const Tensor& rstd, GradWrite dinp_mode = GradWrite::assign);
void rmsnorm_backward(Tensor& dinp, Tensor* dweight, const Tensor& dout, const Tensor& inp, const Tensor& weight,
                      const Tensor& rstd, GradWrite dinp_mode = GradWrite::assign);

// ---- RoPE (rotate-half, HF layout) -----------------------------------------------------
// x (B, T, H, D), position of row t is pos0 + t; pairs (i, i + D/2) rotated by angle
// pos * inv_freq[i] (formed in double). inv_freq (D/2) f32 is the model's frequency table
// (theta^(-2i/D), with any RoPE scaling folded in: trainer/model/rope.h). In place allowed
// (out and inp the same tensor).
void rope_forward(Tensor& out, const Tensor& inp, int64_t pos0, const Tensor& inv_freq);
// dinp = R^T dout (the inverse rotation). In place allowed.
void rope_backward(Tensor& dinp, const Tensor& dout, int64_t pos0, const Tensor& inv_freq);

// ---- causal attention with grouped-query heads -----------------------------------------
// q (B, T, Hq, D); k, v (B, S, Hkv, D) with Hq % Hkv == 0; query row t sits at absolute
// position q_pos0 + t and attends keys [0, q_pos0 + t] (so kv_len = q_pos0 + T <= S keys are
// read). Scale 1/sqrt(D). out (B, T, Hq, D); lse (B, Hq, T) = log-sum-exp of the scaled
// scores per query (saved for backward; may be nullptr in inference).
// Never materialises a T x S probability matrix (online softmax, one row at a time).
void attention_forward(Tensor& out, Tensor* lse, const Tensor& q, const Tensor& k, const Tensor& v, int64_t q_pos0);
// Backward for q_pos0 = 0, S = T (training). Recomputes probabilities from q, k and lse.
// dq (B, T, Hq, D), dk, dv (B, T, Hkv, D): written (=).
void attention_backward(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& dout, const Tensor& q, const Tensor& k,
                        const Tensor& v, const Tensor& out, const Tensor& lse);

// ---- SwiGLU ----------------------------------------------------------------------------
// out (N, H) = silu(gate) * up
void swiglu_forward(Tensor& out, const Tensor& gate, const Tensor& up);
// dgate, dup (N, H) written
void swiglu_backward(Tensor& dgate, Tensor& dup, const Tensor& dout, const Tensor& gate, const Tensor& up);

// ---- elementwise -----------------------------------------------------------------------
void add_forward(Tensor& out, const Tensor& a, const Tensor& b);  // out = a + b (out may alias a)
void add_inplace(Tensor& out, const Tensor& a);                   // out += a
void scale_inplace(Tensor& t, float scale);                       // t *= scale

// ---- dropout ---------------------------------------------------------------------------
// out = inp * keep / (1 - p); keep is drawn per element from a counter-based hash of
// (seed, index0 + flat index), so backward regenerates the mask instead of storing it.
// index0 is where these elements start in the logical tensor (a data-parallel rank's first
// row times the row width): every layout then draws the same mask for the same element.
void dropout_forward(Tensor& out, const Tensor& inp, float p, uint64_t seed, int64_t index0 = 0);
// dinp = / += dout * keep / (1 - p) with the mask of dropout_forward(p, seed, index0).
void dropout_backward(Tensor& dinp, const Tensor& dout, float p, uint64_t seed, int64_t index0, GradWrite mode);

// ---- lm_head + softmax cross-entropy, chunked over rows ---------------------------------
// x (N, C), weight (V, C), targets (N) i32 where a target < 0 is ignored.
// Computes logits chunk by chunk (chunk_rows rows at a time, workspace (chunk_rows, V)),
// so the full (N, V) logits never exist. Returns the SUM of -log p(target) over
// non-ignored rows; *count gets their number. Per-row losses go to row_loss (N) if given.
// If dx/dweight are given, also the backward of loss_scale * sum: dx (N, C) written,
// dweight (V, C) +=.
double lm_head_cross_entropy(const Tensor& x, const Tensor& weight, const Tensor& targets, int64_t* count,
                             Tensor* row_loss, Tensor* dx, Tensor* dweight, float loss_scale,
                             int64_t chunk_rows = 256);

// ---- AdamW (decoupled weight decay, bias correction) ------------------------------------
// param, grad, m, v: same numel, f32. step is 1-based.
struct AdamWParams {
  float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.0f;
};
void adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWParams& p, int64_t step);

// ---- LoRA merge ------------------------------------------------------------------------
// weight (OC, IC) f32 += scale * b (OC, r) @ a (r, IC), each element's sum taken in double.
void lora_merge(Tensor& weight, const Tensor& a, const Tensor& b, float scale);

// ---- quantization (the formats: kernels/cpu/quant.h) ------------------------------------
// A weight of `shape` (n = numel) stored as NF4 with double-quantized absmax, in
// bitsandbytes' layout:
//   codes          u8, >= (n + 1) / 2: two 4-bit codes per byte, the first in the high nibble
//   absmax         u8, ceil(n / 64): each block's scale, 8-bit codes of (absmax - offset)
//   nested_absmax  f32, ceil(blocks / 256): the scale of each 256 absmax codes
//   offset         f32, 1: the mean of the block absmax
//   nested_code    f32, 256: the 8-bit code map of the absmax (signed dynamic map)
struct Nf4Weight {
  Shape shape;
  Tensor codes, absmax, nested_absmax, offset, nested_code;
};
// q (all five written; nested_code := lmtune's signed dynamic map) = NF4 of w (n values,
// f32, finite). Workspace: ceil(n / 64) f32.
void nf4_quantize(Nf4Weight& q, const Tensor& w);
// w (n values, f32) = the values q stands for, with q's own nested_code. Workspace:
// ceil(n / 64) f32.
void nf4_dequantize(Tensor& w, const Nf4Weight& q);
// out = x with every run of 32 values along the last dimension replaced by what GGUF's
// Q4_0 / Q8_0 stores for it (dequantize(quantize(.))); the last dimension must be a
// multiple of 32; out may be x. Gradients pass straight through (the callers' STE).
void fake_quant_q4_0(Tensor& out, const Tensor& x);
void fake_quant_q8_0(Tensor& out, const Tensor& x);

// ---- utilities -------------------------------------------------------------------------
int64_t argmax_row(const Tensor& logits, int64_t row);  // logits (N, V) f32, CPU only
double sum_squares(const Tensor& t);                    // f32; 0 on meta

}  // namespace lmtune::ops
