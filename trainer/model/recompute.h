// Activation recompute — design note.
//
// `parallel.recompute` trades compute for activation memory. The policy is one value of
// ModelOptions (param_layout.h); each LlamaBlock reads it in its training forward (what to
// keep in BlockActivations, llama.h) and in its backward (what to rebuild, and when). No
// one else decides: forward_backward and any other driver of block(l).forward/backward
// (a pipeline executor) get the same behaviour without knowing the policy.
//
//   policy     kept by the training forward             rebuilt inside block(l).backward
//   none       everything BlockActivations names        nothing
//   selective  all but the attention internals: no      the attention internals from the kept
//              q, k, v (Qwen3: q_pre, k_pre, q_rstd,    ln1 — the q/k/v projections, Qwen3's
//              k_rstd), attention output, log-sum-exp   q/k norms, RoPE, attention with its
//                                                       log-sum-exp — after the MLP branch's
//                                                       backward, just before the attention
//                                                       branch's, so they never coexist with
//                                                       the MLP's gradient temporaries
//   full       the block input x_in only (and the       everything, by running the block's
//              MicroBatchContext)                       forward again on x_in — all but the
//                                                       last projection (down), whose output
//                                                       is the next block's input, already held
//                                                       — first thing in the backward
//
// When: the rebuild happens inside block(l).backward, so a driver calls it after
// UnitHooks::before_backward(l) — while ZeRO-3 has the block's parameters gathered — and
// the hooks are never called again for it. The rebuilt tensors are released as the
// backward consumes them, as saved ones are.
//
// Why the rebuilt tensors equal the first forward's, bit for bit: the rebuild runs the
// same code (LlamaBlock::run_forward / attention_inner are what the forward runs) on the
// same input tensors (x_in or ln1, still held), with the same parameters (the optimizer
// has not run within a micro-batch's forward_backward, and the block is bound to the same
// values), the same shapes and thread count (every kernel's reduction order depends only
// on those), and the same randomness: LoRA dropout masks are a hash of the
// MicroBatchContext saved with the activations and of each element's global index, never
// of state that advanced since. So none, selective and full give the same loss and
// gradients bit for bit; only the allocation sequence differs — through the same
// Allocator, so the meta device predicts each policy's memory exactly.
#pragma once

namespace lmtune {

// parallel.recompute (YAML: none | full | selective).
enum class Recompute { none, full, selective };

}  // namespace lmtune
