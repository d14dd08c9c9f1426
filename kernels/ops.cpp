// Dispatch layer of kernels/ops.h: shape and dtype checks, then the device switch.
//   * cpu  -> the raw-pointer kernels of kernels/cpu/.
//   * meta -> no compute, but every workspace tensor the cpu path takes is taken and given
//             back in the same order and size, so a meta run replays the allocation
//             sequence of a real one exactly. Workspace sizes therefore depend only on
//             shapes and dtypes (never on data or on the thread count).
#include "kernels/ops.h"

#include <algorithm>
#include <initializer_list>

#include "kernels/cpu/adamw.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/common.h"
#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/reduce.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "kernels/op_checks.h"

namespace lmtune::ops {
using namespace internal;
namespace {

// Weights stored as bf16/f16 are converted to f32 in row chunks of at most this many elements.
constexpr int64_t kConvertChunkElems = int64_t{1} << 22;

int64_t convert_chunk_rows(int64_t rows, int64_t cols) {
  return std::max<int64_t>(1, std::min(rows, kConvertChunkElems / std::max<int64_t>(cols, 1)));
}

}  // namespace

void set_num_threads(int n) { cpu::set_num_threads(n); }
int num_threads() { return cpu::num_threads(); }

// ---- linear ----------------------------------------------------------------------------

// out = / += scale * inp @ weight^T (+ bias). The ops.h form is mode = assign, scale = 1.
void linear_forward(Tensor& out, const Tensor& inp, const Tensor& weight, const Tensor* bias, GradWrite mode,
                    float scale) {
  constexpr const char* op = "linear_forward";
  check_float_storage(weight, op, "weight");
  check_dtype(inp, DType::f32, op, "inp");
  check_dtype(out, DType::f32, op, "out");
  LMTUNE_ASSERT(weight.dim() == 2, op, ": weight must be (OC, IC), got ", shape_str(weight.shape()));
  const int64_t OC = weight.size(0), IC = weight.size(1);
  const int64_t N = rows_of(inp);
  check_matrix(inp, N, IC, op, "inp");
  check_matrix(out, N, OC, op, "out");
  if (bias != nullptr) {
    check_dtype(*bias, DType::f32, op, "bias");
    LMTUNE_ASSERT(bias->numel() == OC, op, ": bias ", shape_str(bias->shape()), " does not match OC = ", OC);
  }
  check_devices(op, out, {&inp, &weight, bias});
  const bool meta = out.is_meta();
  const float* b = (bias != nullptr && !meta) ? bias->data<float>() : nullptr;
  const cpu::OutMode out_mode = mode == GradWrite::accumulate ? cpu::OutMode::accumulate : cpu::OutMode::assign;
  if (weight.dtype() == DType::f32) {
    if (!meta)
      cpu::linear_forward(out.data<float>(), OC, inp.data<float>(), weight.data<float>(), b, N, IC, OC, out_mode,
                          scale);
    return;
  }
  const int64_t cr = convert_chunk_rows(OC, IC);
  Tensor ws = workspace(out, {cr, IC});
  if (meta) return;
  const size_t esize = dtype_size(weight.dtype());
  for (int64_t o0 = 0; o0 < OC; o0 += cr) {
    const int64_t rows = std::min(cr, OC - o0);
    cpu::convert_to_f32(ws.data<float>(), static_cast<const char*>(weight.raw()) + o0 * IC * esize, weight.dtype(),
                        rows * IC);
    cpu::linear_forward(out.data<float>() + o0, OC, inp.data<float>(), ws.data<float>(),
                        b != nullptr ? b + o0 : nullptr, N, IC, rows, out_mode, scale);
  }
}

void linear_forward(Tensor& out, const Tensor& inp, const Tensor& weight, const Tensor* bias) {
  linear_forward(out, inp, weight, bias, GradWrite::assign, 1.0f);
}

void linear_backward(Tensor* dinp, Tensor* dweight, Tensor* dbias, const Tensor& dout, const Tensor& inp,
                     const Tensor& weight, GradWrite dinp_mode) {
  constexpr const char* op = "linear_backward";
  check_float_storage(weight, op, "weight");
  check_dtype(inp, DType::f32, op, "inp");
  check_dtype(dout, DType::f32, op, "dout");
  LMTUNE_ASSERT(weight.dim() == 2, op, ": weight must be (OC, IC), got ", shape_str(weight.shape()));
  const int64_t OC = weight.size(0), IC = weight.size(1);
  const int64_t N = rows_of(inp);
  check_matrix(inp, N, IC, op, "inp");
  check_matrix(dout, N, OC, op, "dout");
  if (dinp != nullptr) {
    check_dtype(*dinp, DType::f32, op, "dinp");
    check_matrix(*dinp, N, IC, op, "dinp");
  }
  if (dweight != nullptr) {
    check_dtype(*dweight, DType::f32, op, "dweight");
    LMTUNE_ASSERT(dweight->numel() == OC * IC && last_dim(*dweight) == IC, op, ": dweight ",
                  shape_str(dweight->shape()), " does not match weight ", shape_str(weight.shape()));
  }
  if (dbias != nullptr) {
    check_dtype(*dbias, DType::f32, op, "dbias");
    LMTUNE_ASSERT(dbias->numel() == OC, op, ": dbias ", shape_str(dbias->shape()), " does not match OC = ", OC);
  }
  check_devices(op, dout, {&inp, &weight, dinp, dweight, dbias});
  const bool meta = dout.is_meta();
  const float beta_first = dinp_mode == GradWrite::accumulate ? 1.0f : 0.0f;
  if (dinp != nullptr) {
    if (weight.dtype() == DType::f32) {
      if (!meta)
        cpu::linear_backward_input(dinp->data<float>(), dout.data<float>(), OC, weight.data<float>(), N, IC, OC,
                                   beta_first);
    } else {
      const int64_t cr = convert_chunk_rows(OC, IC);
      Tensor ws = workspace(*dinp, {cr, IC});
      if (!meta) {
        const size_t esize = dtype_size(weight.dtype());
        if (OC == 0 && beta_first == 0.0f) dinp->zero_();
        for (int64_t o0 = 0; o0 < OC; o0 += cr) {
          const int64_t rows = std::min(cr, OC - o0);
          cpu::convert_to_f32(ws.data<float>(), static_cast<const char*>(weight.raw()) + o0 * IC * esize,
                              weight.dtype(), rows * IC);
          cpu::linear_backward_input(dinp->data<float>(), dout.data<float>() + o0, OC, ws.data<float>(), N, IC, rows,
                                     o0 == 0 ? beta_first : 1.0f);
        }
      }
    }
  }
  if (meta) return;
  if (dweight != nullptr)
    cpu::linear_backward_weight(dweight->data<float>(), dout.data<float>(), inp.data<float>(), N, IC, OC);
  if (dbias != nullptr) cpu::linear_backward_bias(dbias->data<float>(), dout.data<float>(), N, OC);
}

// ---- embedding -------------------------------------------------------------------------

namespace {
void check_tokens(const Tensor& tokens, int64_t V, const char* op) {
  const int32_t* t = tokens.data<int32_t>();
  for (int64_t i = 0, n = tokens.numel(); i < n; ++i)
    LMTUNE_CHECK(t[i] >= 0 && t[i] < V, op, ": token id ", t[i], " at position ", i, " is outside the vocabulary [0, ",
                 V, ")");
}
}  // namespace

void embedding_forward(Tensor& out, const Tensor& tokens, const Tensor& table) {
  constexpr const char* op = "embedding_forward";
  check_dtype(tokens, DType::i32, op, "tokens");
  check_dtype(out, DType::f32, op, "out");
  check_float_storage(table, op, "table");
  LMTUNE_ASSERT(table.dim() == 2, op, ": table must be (V, C), got ", shape_str(table.shape()));
  const int64_t V = table.size(0), C = table.size(1), N = tokens.numel();
  check_matrix(out, N, C, op, "out");
  check_devices(op, out, {&tokens, &table});
  if (out.is_meta()) return;
  check_tokens(tokens, V, op);
  cpu::embedding_forward(out.data<float>(), tokens.data<int32_t>(), table.raw(), table.dtype(), N, C);
}

void embedding_backward(Tensor& dtable, const Tensor& dout, const Tensor& tokens) {
  constexpr const char* op = "embedding_backward";
  check_dtype(tokens, DType::i32, op, "tokens");
  check_dtype(dout, DType::f32, op, "dout");
  check_dtype(dtable, DType::f32, op, "dtable");
  LMTUNE_ASSERT(dtable.dim() == 2, op, ": dtable must be (V, C), got ", shape_str(dtable.shape()));
  const int64_t V = dtable.size(0), C = dtable.size(1), N = tokens.numel();
  check_matrix(dout, N, C, op, "dout");
  check_devices(op, dtable, {&dout, &tokens});
  if (dtable.is_meta()) return;
  check_tokens(tokens, V, op);
  cpu::embedding_backward(dtable.data<float>(), dout.data<float>(), tokens.data<int32_t>(), N, C);
}

// ---- RMSNorm ---------------------------------------------------------------------------

void rmsnorm_forward(Tensor& out, Tensor& rstd, const Tensor& inp, const Tensor& weight, float eps) {
  constexpr const char* op = "rmsnorm_forward";
  for (const auto& [t, name] : {std::pair<const Tensor*, const char*>{&out, "out"}, {&rstd, "rstd"}, {&inp, "inp"},
                                {&weight, "weight"}})
    check_dtype(*t, DType::f32, op, name);
  const int64_t C = last_dim(inp), N = rows_of(inp);
  LMTUNE_ASSERT(weight.numel() == C, op, ": weight ", shape_str(weight.shape()), " does not match inp ",
                shape_str(inp.shape()));
  check_same_shape(out, inp, op, "out", "inp");
  LMTUNE_ASSERT(rstd.numel() == N, op, ": rstd ", shape_str(rstd.shape()), " must have ", N, " elements");
  check_devices(op, out, {&rstd, &inp, &weight});
  if (out.is_meta()) return;
  cpu::rmsnorm_forward(out.data<float>(), rstd.data<float>(), inp.data<float>(), weight.data<float>(), N, C, eps);
}

// dweight may be nullptr (a frozen norm weight).
void rmsnorm_backward(Tensor& dinp, Tensor* dweight, const Tensor& dout, const Tensor& inp, const Tensor& weight,
                      const Tensor& rstd, GradWrite dinp_mode) {
  constexpr const char* op = "rmsnorm_backward";
  for (const auto& [t, name] : {std::pair<const Tensor*, const char*>{&dinp, "dinp"}, {&dout, "dout"}, {&inp, "inp"},
                                {&weight, "weight"}, {&rstd, "rstd"}})
    check_dtype(*t, DType::f32, op, name);
  const int64_t C = last_dim(inp), N = rows_of(inp);
  LMTUNE_ASSERT(weight.numel() == C, op, ": weight ", shape_str(weight.shape()), " does not match inp ",
                shape_str(inp.shape()));
  if (dweight != nullptr) {
    check_dtype(*dweight, DType::f32, op, "dweight");
    LMTUNE_ASSERT(dweight->numel() == C, op, ": dweight ", shape_str(dweight->shape()), " does not match inp ",
                  shape_str(inp.shape()));
  }
  check_same_shape(dinp, inp, op, "dinp", "inp");
  check_same_shape(dout, inp, op, "dout", "inp");
  LMTUNE_ASSERT(rstd.numel() == N, op, ": rstd ", shape_str(rstd.shape()), " must have ", N, " elements");
  check_devices(op, dinp, {dweight, &dout, &inp, &weight, &rstd});
  if (dinp.is_meta()) return;
  cpu::rmsnorm_backward(dinp.data<float>(), dweight != nullptr ? dweight->data<float>() : nullptr, dout.data<float>(),
                        inp.data<float>(), weight.data<float>(), rstd.data<float>(), N, C,
                        dinp_mode == GradWrite::accumulate ? 1.0f : 0.0f);
}

void rmsnorm_backward(Tensor& dinp, Tensor& dweight, const Tensor& dout, const Tensor& inp, const Tensor& weight,
                      const Tensor& rstd, GradWrite dinp_mode) {
  rmsnorm_backward(dinp, &dweight, dout, inp, weight, rstd, dinp_mode);
}

// ---- RoPE ------------------------------------------------------------------------------

namespace {
void rope_dispatch(const char* op, Tensor& out, const Tensor& inp, int64_t pos0, const Tensor& inv_freq,
                   cpu::RopeDirection dir) {
  check_dtype(out, DType::f32, op, "out");
  check_dtype(inp, DType::f32, op, "inp");
  check_dtype(inv_freq, DType::f32, op, "inv_freq");
  LMTUNE_ASSERT(inp.dim() == 4, op, ": expected (B, T, H, D), got ", shape_str(inp.shape()));
  check_same_shape(out, inp, op, "out", "inp");
  const int64_t B = inp.size(0), T = inp.size(1), H = inp.size(2), D = inp.size(3);
  LMTUNE_ASSERT(D % 2 == 0 && D <= cpu::kMaxHeadDim, op, ": head dim ", D, " must be even and <= ",
                cpu::kMaxHeadDim);
  LMTUNE_ASSERT(inv_freq.numel() == D / 2, op, ": inv_freq ", shape_str(inv_freq.shape()), " must have D/2 = ", D / 2,
                " elements");
  LMTUNE_ASSERT(pos0 >= 0, op, ": pos0 ", pos0, " must be >= 0");
  check_devices(op, out, {&inp, &inv_freq});
  if (out.is_meta()) return;
  cpu::rope_apply(out.data<float>(), inp.data<float>(), inv_freq.data<float>(), B, T, H, D, pos0, dir);
}
}  // namespace

void rope_forward(Tensor& out, const Tensor& inp, int64_t pos0, const Tensor& inv_freq) {
  rope_dispatch("rope_forward", out, inp, pos0, inv_freq, cpu::RopeDirection::forward);
}

void rope_backward(Tensor& dinp, const Tensor& dout, int64_t pos0, const Tensor& inv_freq) {
  rope_dispatch("rope_backward", dinp, dout, pos0, inv_freq, cpu::RopeDirection::inverse);
}

// ---- attention -------------------------------------------------------------------------

void attention_forward(Tensor& out, Tensor* lse, const Tensor& q, const Tensor& k, const Tensor& v, int64_t q_pos0) {
  constexpr const char* op = "attention_forward";
  check_dtype(out, DType::f32, op, "out");
  check_dtype(q, DType::f32, op, "q");
  check_dtype(k, DType::f32, op, "k");
  check_dtype(v, DType::f32, op, "v");
  LMTUNE_ASSERT(q.dim() == 4 && k.dim() == 4, op, ": q ", shape_str(q.shape()), " must be (B, T, Hq, D) and k ",
                shape_str(k.shape()), " (B, S, Hkv, D)");
  check_same_shape(k, v, op, "k", "v");
  check_same_shape(out, q, op, "out", "q");
  const int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), D = q.size(3);
  const int64_t S = k.size(1), Hkv = k.size(2);
  LMTUNE_ASSERT(k.size(0) == B && k.size(3) == D, op, ": q ", shape_str(q.shape()), " and k ", shape_str(k.shape()),
                " disagree on B or D");
  LMTUNE_ASSERT(Hkv > 0 && Hq % Hkv == 0, op, ": Hq = ", Hq, " is not a multiple of Hkv = ", Hkv);
  LMTUNE_ASSERT(q_pos0 >= 0 && q_pos0 + T <= S, op, ": q_pos0 ", q_pos0, " + T ", T, " exceeds the ", S,
                " key rows");
  LMTUNE_ASSERT(D > 0 && D <= cpu::kMaxHeadDim, op, ": head dim ", D, " must be in [1, ", cpu::kMaxHeadDim, "]");
  if (lse != nullptr) {
    check_dtype(*lse, DType::f32, op, "lse");
    LMTUNE_ASSERT(lse->numel() == B * Hq * T, op, ": lse ", shape_str(lse->shape()), " must be (", B, ", ", Hq,
                  ", ", T, ")");
  }
  check_devices(op, out, {lse, &q, &k, &v});
  if (out.is_meta()) return;
  cpu::attention_forward(out.data<float>(), lse != nullptr ? lse->data<float>() : nullptr, q.data<float>(),
                         k.data<float>(), v.data<float>(), B, T, S, Hq, Hkv, D, q_pos0);
}

void attention_backward(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& dout, const Tensor& q, const Tensor& k,
                        const Tensor& v, const Tensor& out, const Tensor& lse) {
  constexpr const char* op = "attention_backward";
  for (const auto& [t, name] : {std::pair<const Tensor*, const char*>{&dq, "dq"}, {&dk, "dk"}, {&dv, "dv"},
                                {&dout, "dout"}, {&q, "q"}, {&k, "k"}, {&v, "v"}, {&out, "out"}, {&lse, "lse"}})
    check_dtype(*t, DType::f32, op, name);
  LMTUNE_ASSERT(q.dim() == 4 && k.dim() == 4, op, ": q ", shape_str(q.shape()), " must be (B, T, Hq, D) and k ",
                shape_str(k.shape()), " (B, T, Hkv, D)");
  const int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), D = q.size(3), Hkv = k.size(2);
  LMTUNE_ASSERT(k.size(0) == B && k.size(1) == T && k.size(3) == D, op, ": k ", shape_str(k.shape()),
                " must be (B, T, Hkv, D) for q ", shape_str(q.shape()), " (training: S = T, q_pos0 = 0)");
  LMTUNE_ASSERT(Hkv > 0 && Hq % Hkv == 0, op, ": Hq = ", Hq, " is not a multiple of Hkv = ", Hkv);
  LMTUNE_ASSERT(D > 0 && D <= cpu::kMaxHeadDim, op, ": head dim ", D, " must be in [1, ", cpu::kMaxHeadDim, "]");
  check_same_shape(v, k, op, "v", "k");
  check_same_shape(dk, k, op, "dk", "k");
  check_same_shape(dv, k, op, "dv", "k");
  check_same_shape(dq, q, op, "dq", "q");
  check_same_shape(dout, q, op, "dout", "q");
  check_same_shape(out, q, op, "out", "q");
  LMTUNE_ASSERT(lse.numel() == B * Hq * T, op, ": lse ", shape_str(lse.shape()), " must be (", B, ", ", Hq, ", ", T,
                ")");
  check_devices(op, dq, {&dk, &dv, &dout, &q, &k, &v, &out, &lse});
  Tensor drow = workspace(dq, {B, Hq, T});
  if (dq.is_meta()) return;
  cpu::attention_backward(dq.data<float>(), dk.data<float>(), dv.data<float>(), drow.data<float>(),
                          dout.data<float>(), q.data<float>(), k.data<float>(), v.data<float>(), out.data<float>(),
                          lse.data<float>(), B, T, Hq, Hkv, D);
}

// ---- SwiGLU ----------------------------------------------------------------------------

void swiglu_forward(Tensor& out, const Tensor& gate, const Tensor& up) {
  constexpr const char* op = "swiglu_forward";
  check_dtype(out, DType::f32, op, "out");
  check_dtype(gate, DType::f32, op, "gate");
  check_dtype(up, DType::f32, op, "up");
  check_same_shape(gate, up, op, "gate", "up");
  check_same_shape(out, gate, op, "out", "gate");
  check_devices(op, out, {&gate, &up});
  if (out.is_meta()) return;
  cpu::swiglu_forward(out.data<float>(), gate.data<float>(), up.data<float>(), out.numel());
}

void swiglu_backward(Tensor& dgate, Tensor& dup, const Tensor& dout, const Tensor& gate, const Tensor& up) {
  constexpr const char* op = "swiglu_backward";
  for (const auto& [t, name] : {std::pair<const Tensor*, const char*>{&dgate, "dgate"}, {&dup, "dup"},
                                {&dout, "dout"}, {&gate, "gate"}, {&up, "up"}})
    check_dtype(*t, DType::f32, op, name);
  check_same_shape(gate, up, op, "gate", "up");
  check_same_shape(dout, gate, op, "dout", "gate");
  check_same_shape(dgate, gate, op, "dgate", "gate");
  check_same_shape(dup, gate, op, "dup", "gate");
  check_devices(op, dgate, {&dup, &dout, &gate, &up});
  if (dgate.is_meta()) return;
  cpu::swiglu_backward(dgate.data<float>(), dup.data<float>(), dout.data<float>(), gate.data<float>(),
                       up.data<float>(), gate.numel());
}

// ---- elementwise -----------------------------------------------------------------------

void add_forward(Tensor& out, const Tensor& a, const Tensor& b) {
  constexpr const char* op = "add_forward";
  check_dtype(out, DType::f32, op, "out");
  check_dtype(a, DType::f32, op, "a");
  check_dtype(b, DType::f32, op, "b");
  LMTUNE_ASSERT(a.numel() == b.numel() && out.numel() == a.numel(), op, ": out ", shape_str(out.shape()), ", a ",
                shape_str(a.shape()), " and b ", shape_str(b.shape()), " must have the same number of elements");
  check_devices(op, out, {&a, &b});
  if (out.is_meta()) return;
  cpu::add_forward(out.data<float>(), a.data<float>(), b.data<float>(), out.numel());
}

void add_inplace(Tensor& out, const Tensor& a) {
  constexpr const char* op = "add_inplace";
  check_dtype(out, DType::f32, op, "out");
  check_dtype(a, DType::f32, op, "a");
  LMTUNE_ASSERT(out.numel() == a.numel(), op, ": out ", shape_str(out.shape()), " and a ", shape_str(a.shape()),
                " must have the same number of elements");
  check_devices(op, out, {&a});
  if (out.is_meta()) return;
  cpu::add_inplace(out.data<float>(), a.data<float>(), out.numel());
}

// ---- scale, dropout ---------------------------------------------------------------------

void scale_inplace(Tensor& t, float scale) {
  check_dtype(t, DType::f32, "scale_inplace", "t");
  check_devices("scale_inplace", t, {});
  if (t.is_meta()) return;
  cpu::scale_inplace(t.data<float>(), scale, t.numel());
}

// out = inp * keep / (1 - p), keep drawn per element from a counter-based hash of (seed,
// index0 + flat index), so the backward regenerates the same mask without storing it.
void dropout_forward(Tensor& out, const Tensor& inp, float p, uint64_t seed, int64_t index0) {
  constexpr const char* op = "dropout_forward";
  check_dtype(out, DType::f32, op, "out");
  check_dtype(inp, DType::f32, op, "inp");
  LMTUNE_ASSERT(out.numel() == inp.numel(), op, ": out ", shape_str(out.shape()), " and inp ", shape_str(inp.shape()),
                " differ");
  LMTUNE_CHECK(p >= 0.0f && p < 1.0f, op, ": dropout probability ", p, " must be in [0, 1)");
  check_devices(op, out, {&inp});
  if (out.is_meta()) return;
  LMTUNE_ASSERT(index0 >= 0, op, ": negative index0 ", index0);
  cpu::dropout_apply(out.data<float>(), inp.data<float>(), out.numel(), p, seed, static_cast<uint64_t>(index0),
                     cpu::OutMode::assign);
}

// dinp = / += dout * keep / (1 - p) (the mask of dropout_forward with the same p, seed, index0).
void dropout_backward(Tensor& dinp, const Tensor& dout, float p, uint64_t seed, int64_t index0, GradWrite mode) {
  constexpr const char* op = "dropout_backward";
  check_dtype(dinp, DType::f32, op, "dinp");
  check_dtype(dout, DType::f32, op, "dout");
  LMTUNE_ASSERT(dinp.numel() == dout.numel(), op, ": dinp ", shape_str(dinp.shape()), " and dout ",
                shape_str(dout.shape()), " differ");
  LMTUNE_CHECK(p >= 0.0f && p < 1.0f, op, ": dropout probability ", p, " must be in [0, 1)");
  check_devices(op, dinp, {&dout});
  if (dinp.is_meta()) return;
  LMTUNE_ASSERT(index0 >= 0, op, ": negative index0 ", index0);
  cpu::dropout_apply(dinp.data<float>(), dout.data<float>(), dinp.numel(), p, seed, static_cast<uint64_t>(index0),
                     mode == GradWrite::accumulate ? cpu::OutMode::accumulate : cpu::OutMode::assign);
}

// ---- LoRA merge ------------------------------------------------------------------------

void lora_merge(Tensor& weight, const Tensor& a, const Tensor& b, float scale) {
  constexpr const char* op = "lora_merge";
  LMTUNE_CHECK(weight.dtype() == DType::f32, op, ": merging adapters needs f32 base weights, not ",
               dtype_name(weight.dtype()));
  check_dtype(a, DType::f32, op, "a");
  check_dtype(b, DType::f32, op, "b");
  LMTUNE_ASSERT(weight.dim() == 2 && a.dim() == 2 && b.dim() == 2, op, ": weight, a, b must be matrices");
  const int64_t OC = weight.size(0), IC = weight.size(1), r = a.size(0);
  check_matrix(a, r, IC, op, "a");
  check_matrix(b, OC, r, op, "b");
  check_devices(op, weight, {&a, &b});
  if (weight.is_meta()) return;
  cpu::lora_merge(weight.data<float>(), a.data<float>(), b.data<float>(), OC, IC, r, scale);
}

// ---- lm_head + cross-entropy -----------------------------------------------------------

double lm_head_cross_entropy(const Tensor& x, const Tensor& weight, const Tensor& targets, int64_t* count,
                             Tensor* row_loss, Tensor* dx, Tensor* dweight, float loss_scale, int64_t chunk_rows) {
  constexpr const char* op = "lm_head_cross_entropy";
  check_dtype(x, DType::f32, op, "x");
  check_dtype(weight, DType::f32, op, "weight");
  check_dtype(targets, DType::i32, op, "targets");
  LMTUNE_ASSERT(weight.dim() == 2, op, ": weight must be (V, C), got ", shape_str(weight.shape()));
  const int64_t V = weight.size(0), C = weight.size(1), N = targets.numel();
  check_matrix(x, N, C, op, "x");
  LMTUNE_ASSERT(chunk_rows > 0, op, ": chunk_rows must be positive, got ", chunk_rows);
  if (row_loss != nullptr) {
    check_dtype(*row_loss, DType::f32, op, "row_loss");
    LMTUNE_ASSERT(row_loss->numel() == N, op, ": row_loss ", shape_str(row_loss->shape()), " must have ", N,
                  " elements");
  }
  if (dx != nullptr) {
    check_dtype(*dx, DType::f32, op, "dx");
    check_same_shape(*dx, x, op, "dx", "x");
  }
  if (dweight != nullptr) {
    check_dtype(*dweight, DType::f32, op, "dweight");
    check_same_shape(*dweight, weight, op, "dweight", "weight");
  }
  check_devices(op, x, {&weight, &targets, row_loss, dx, dweight});
  if (count != nullptr) *count = 0;
  if (N == 0) return 0.0;
  Tensor logits = workspace(x, {std::min(chunk_rows, N), V});
  if (x.is_meta()) return 0.0;
  const int32_t* t = targets.data<int32_t>();
  for (int64_t i = 0; i < N; ++i)
    LMTUNE_CHECK(t[i] < V, op, ": target ", t[i], " at row ", i, " is outside the vocabulary [0, ", V,
                 ") (negative targets are ignored)");
  return cpu::lm_head_cross_entropy(logits.data<float>(), x.data<float>(), weight.data<float>(), t,
                                    row_loss != nullptr ? row_loss->data<float>() : nullptr,
                                    dx != nullptr ? dx->data<float>() : nullptr,
                                    dweight != nullptr ? dweight->data<float>() : nullptr, N, C, V, chunk_rows,
                                    loss_scale, count);
}

// ---- AdamW -----------------------------------------------------------------------------

void adamw_step(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWParams& p, int64_t step) {
  constexpr const char* op = "adamw_step";
  for (const auto& [t, name] : {std::pair<const Tensor*, const char*>{&param, "param"}, {&grad, "grad"}, {&m, "m"},
                                {&v, "v"}})
    check_dtype(*t, DType::f32, op, name);
  LMTUNE_ASSERT(grad.numel() == param.numel() && m.numel() == param.numel() && v.numel() == param.numel(), op,
                ": param ", shape_str(param.shape()), ", grad ", shape_str(grad.shape()), ", m ", shape_str(m.shape()),
                ", v ", shape_str(v.shape()), " must have the same number of elements");
  LMTUNE_ASSERT(step >= 1, op, ": step is 1-based, got ", step);
  check_devices(op, param, {&grad, &m, &v});
  if (param.is_meta()) return;
  cpu::adamw_step(param.data<float>(), grad.data<float>(), m.data<float>(), v.data<float>(), param.numel(), p.lr,
                  p.beta1, p.beta2, p.eps, p.weight_decay, step);
}

// ---- utilities -------------------------------------------------------------------------

int64_t argmax_row(const Tensor& logits, int64_t row) {
  check_dtype(logits, DType::f32, "argmax_row", "logits");
  LMTUNE_ASSERT(logits.dim() == 2, "argmax_row: logits must be (N, V), got ", shape_str(logits.shape()));
  LMTUNE_ASSERT(logits.device().is_cpu(), "argmax_row: logits must be on the cpu, not ", logits.device().str());
  LMTUNE_ASSERT(row >= 0 && row < logits.size(0), "argmax_row: row ", row, " out of range for ",
                shape_str(logits.shape()));
  const int64_t V = logits.size(1);
  LMTUNE_ASSERT(V > 0, "argmax_row: empty rows in ", shape_str(logits.shape()));
  return cpu::argmax(logits.data<float>() + row * V, V);
}

double sum_squares(const Tensor& t) {
  check_dtype(t, DType::f32, "sum_squares", "t");
  check_devices("sum_squares", t, {});
  if (t.is_meta()) return 0.0;
  return cpu::sum_squares(t.data<float>(), t.numel());
}

}  // namespace lmtune::ops
