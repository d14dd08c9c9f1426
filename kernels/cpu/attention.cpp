// Causal GQA attention on the CPU — design note.
//
// Forward (online softmax, FlashAttention-style). Work is split into tasks of
// (batch b, query head h, block of kQB query rows), scheduled dynamically, heaviest
// (latest) blocks first. A task walks the keys [0, q_pos0 + t_last] in blocks of kKB: it
// transposes the key block once into a stack tile kt (D, kKB) — shared by the kQB rows —
// and, per query row, computes the kKB scaled scores with a register-blocked dot kernel,
// masks keys past the row's position, and folds them into the running (max m, sum l,
// unnormalised output) of that row: out *= exp(m_old - m_new); out += sum_j p_j v_j. The
// unnormalised output accumulates directly in the task's own rows of `out` (through a
// register tile; v's block is copied once into a tile padded to D rounded up to 16); at the
// end out /= l and lse = m + log l. Memory per thread: the kt and v tiles (2 * D_max * kKB
// floats, on the stack) and two kQB-float arrays; no T x S score matrix, no workspace.
//
// Backward (q_pos0 = 0, S = T). First Drow[b,h,t] = rowsum(dout * out) into a workspace
// tensor (B, Hq, T) (= rowsum(P * dP), the softmax-backward correction). Then tasks of
// (b, kv head): a task owns the dk, dv rows of its kv head and the dq rows of every query
// head of its GQA group, so nothing is shared between threads and no reduction is needed
// for any group size. It zeroes them and walks key blocks (kKB keys: k and v transposed, k
// padded, in stack tiles); for every query head of the group and every block of kQB query
// rows at or after the key block (padded q and dout tiles) it recomputes, row by row,
// p_j = exp(s_ij - lse_i), dp_j = dout_i . v_j, ds_j = p_j (dp_j - Drow_i), accumulates
// dq_i += scale sum_j ds_j k_j in registers, and keeps p and ds transposed in two
// (kKB, kQB) tiles; then per key dv_j += sum_i p_ij dout_i and dk_j += scale sum_i ds_ij q_i.
// Memory: Drow (B*Hq*T floats, workspace) plus the stack tiles; probabilities are
// recomputed, never stored beyond one (kKB, kQB) tile.
//
// Stack tiles are sized by a template bound on D (64, 128 or kMaxHeadDim), at most
// ~3 * kMaxHeadDim * kKB + 2 * kQB * kMaxHeadDim floats (~260 KB at D = 256, ~65 KB at D <= 64).
// Row sums use register-resident accumulators over D padded to 16 (GCC vector extensions,
// lowered to AVX-512 / AVX2 / SSE as the target allows).
#include "kernels/cpu/attention.h"

#include <limits>

#include "kernels/cpu/common.h"

namespace lmtune::cpu {
namespace {

constexpr int64_t kQB = 32;  // query rows per forward task
constexpr int64_t kKB = 64;  // keys per block (4 vectors of 16 floats)

// s[j] = sum_d x[d] * tile[d, j] for j in [0, kKB)
inline void block_dots(float* __restrict s,           // (kKB), 64-byte aligned
                       const float* __restrict x,     // (D)
                       const float* __restrict tile,  // (D, kKB), 64-byte aligned
                       int64_t D) {
  VecF a0 = {}, a1 = {}, a2 = {}, a3 = {};
  VecF b0 = {}, b1 = {}, b2 = {}, b3 = {};
  const VecF* t = reinterpret_cast<const VecF*>(tile);
  int64_t d = 0;
  for (; d + 1 < D; d += 2) {
    const float x0 = x[d], x1 = x[d + 1];
    a0 += x0 * t[0]; a1 += x0 * t[1]; a2 += x0 * t[2]; a3 += x0 * t[3];
    b0 += x1 * t[4]; b1 += x1 * t[5]; b2 += x1 * t[6]; b3 += x1 * t[7];
    t += 8;
  }
  if (d < D) {
    const float x0 = x[d];
    a0 += x0 * t[0]; a1 += x0 * t[1]; a2 += x0 * t[2]; a3 += x0 * t[3];
  }
  VecF* o = reinterpret_cast<VecF*>(s);
  o[0] = a0 + b0; o[1] = a1 + b1; o[2] = a2 + b2; o[3] = a3 + b3;
}

// tile[d, j] = rows[j * ld + d] for j < n; columns n..kKB-1 are zero.
inline void transpose_block(float* __restrict tile,        // (D, kKB)
                            const float* __restrict rows,  // n rows of stride ld
                            int64_t ld, int64_t n, int64_t D) {
  if (n < kKB)
    for (int64_t d = 0; d < D; ++d) std::memset(tile + d * kKB + n, 0, static_cast<size_t>(kKB - n) * sizeof(float));
  for (int64_t j = 0; j < n; ++j) {
    const float* r = rows + j * ld;
    for (int64_t d = 0; d < D; ++d) tile[d * kKB + j] = r[d];
  }
}

// tile[j, d] = rows[j * ld + d] for j < n, d < D; columns D..Dp-1 are zero (Dp = D rounded up to 16).
inline void pad_block(float* __restrict tile,        // (kKB, Dp)
                      const float* __restrict rows,  // n rows of stride ld
                      int64_t ld, int64_t n, int64_t D, int64_t Dp) {
  for (int64_t j = 0; j < n; ++j) {
    std::memcpy(tile + j * Dp, rows + j * ld, static_cast<size_t>(D) * sizeof(float));
    std::memset(tile + j * Dp + D, 0, static_cast<size_t>(Dp - D) * sizeof(float));
  }
}

// acc[c0 : c0 + 16 NV] += sum_{j < n} w[j] tile[j, c0 : c0 + 16 NV], in registers (two
// accumulator sets, even and odd j, to hide the FMA latency).
template <int NV>
inline void weighted_sum_cols(float* __restrict acc, const float* __restrict w, const float* __restrict tile, int64_t n,
                              int64_t Dp, int64_t c0) {
  VecF r[NV], r2[NV];
  VecF* a = reinterpret_cast<VecF*>(acc + c0);
  for (int i = 0; i < NV; ++i) {
    r[i] = a[i];
    r2[i] = VecF{};
  }
  int64_t j = 0;
  for (; j + 1 < n; j += 2) {
    const VecF* t = reinterpret_cast<const VecF*>(tile + j * Dp + c0);
    const VecF* t2 = reinterpret_cast<const VecF*>(tile + (j + 1) * Dp + c0);
    const float wj = w[j], wj2 = w[j + 1];
    for (int i = 0; i < NV; ++i) {
      r[i] += wj * t[i];
      r2[i] += wj2 * t2[i];
    }
  }
  if (j < n) {
    const VecF* t = reinterpret_cast<const VecF*>(tile + j * Dp + c0);
    const float wj = w[j];
    for (int i = 0; i < NV; ++i) r[i] += wj * t[i];
  }
  for (int i = 0; i < NV; ++i) a[i] = r[i] + r2[i];
}

// y (D) = scale * y + sum_{j < n} w[j] tile[j, :D], accumulated in a padded register tile.
inline void scale_add_weighted_rows(float* __restrict y,           // (D)
                                    float scale,                   //
                                    const float* __restrict w,     // (n)
                                    const float* __restrict tile,  // (kKB, Dp), 64-byte aligned
                                    int64_t n, int64_t D, int64_t Dp) {
  alignas(64) float acc[kMaxHeadDim];
  for (int64_t d = 0; d < D; ++d) acc[d] = scale * y[d];
  for (int64_t d = D; d < Dp; ++d) acc[d] = 0.0f;
  int64_t c0 = 0;
  for (; c0 + 64 <= Dp; c0 += 64) weighted_sum_cols<4>(acc, w, tile, n, Dp, c0);
  switch ((Dp - c0) / 16) {
    case 3: weighted_sum_cols<3>(acc, w, tile, n, Dp, c0); break;
    case 2: weighted_sum_cols<2>(acc, w, tile, n, Dp, c0); break;
    case 1: weighted_sum_cols<1>(acc, w, tile, n, Dp, c0); break;
    default: break;
  }
  std::memcpy(y, acc, static_cast<size_t>(D) * sizeof(float));
}

inline float dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}


template <int64_t MaxD>
void attention_forward_impl(float* out, float* lse, const float* q, const float* k, const float* v, int64_t B,
                            int64_t T, int64_t S, int64_t Hq, int64_t Hkv, int64_t D, int64_t q_pos0) {
  const int64_t group = Hq / Hkv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const int64_t nqb = (T + kQB - 1) / kQB;
  const int64_t ld_q = Hq * D, ld_kv = Hkv * D;
  const int64_t tasks = B * Hq * nqb;
  const int64_t Dp = (D + 15) / 16 * 16;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();

#pragma omp parallel
  {
    alignas(64) float kt[MaxD * kKB];  // k block transposed (D, kKB)
    alignas(64) float vp[kKB * MaxD];  // v block padded (kKB, Dp)
    alignas(64) float s[kKB];
    float m[kQB], l[kQB];
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t qb = nqb - 1 - task % nqb;  // heaviest blocks first
      const int64_t h = (task / nqb) % Hq;
      const int64_t b = task / (nqb * Hq);
      const int64_t kvh = h / group;
      const int64_t t0 = qb * kQB, t1 = std::min(T, t0 + kQB), nq = t1 - t0;
      const float* qb_ptr = q + (b * T + t0) * ld_q + h * D;
      float* ob_ptr = out + (b * T + t0) * ld_q + h * D;
      const float* kb_ptr = k + b * S * ld_kv + kvh * D;
      const float* vb_ptr = v + b * S * ld_kv + kvh * D;
      for (int64_t i = 0; i < nq; ++i) {
        m[i] = kNegInf;
        l[i] = 0.0f;
        std::memset(ob_ptr + i * ld_q, 0, static_cast<size_t>(D) * sizeof(float));
      }
      const int64_t kv_end = q_pos0 + t1;
      for (int64_t j0 = 0; j0 < kv_end; j0 += kKB) {
        const int64_t kb = std::min(kKB, kv_end - j0);
        transpose_block(kt, kb_ptr + j0 * ld_kv, ld_kv, kb, D);
        pad_block(vp, vb_ptr + j0 * ld_kv, ld_kv, kb, D, Dp);
        for (int64_t i = 0; i < nq; ++i) {
          const int64_t pos = q_pos0 + t0 + i;
          if (j0 > pos) continue;
          const int64_t jn = std::min(kb, pos - j0 + 1);
          block_dots(s, qb_ptr + i * ld_q, kt, D);
          // Mask keys past the row's position; block max; p = exp(s - m_new) (0 where masked).
          VecF* sv = reinterpret_cast<VecF*>(s);
          const VecI lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
          VecF vmax = VecF{} + kNegInf;
          for (int c = 0; c < kKB / 16; ++c) {
            const VecF x = (lane + 16 * c) < static_cast<int32_t>(jn) ? sv[c] * scale : VecF{} + kNegInf;
            sv[c] = x;
            vmax = x > vmax ? x : vmax;
          }
          float bmax = kNegInf;
          for (int e = 0; e < 16; ++e) bmax = std::max(bmax, vmax[e]);
          const float m_new = std::max(m[i], bmax);
          const float corr = exp_approx(m[i] - m_new);
          VecF vsum = {};
          for (int c = 0; c < kKB / 16; ++c) {
            sv[c] = exp_approx(sv[c] - m_new);
            vsum += sv[c];
          }
          float sum = 0.0f;
          for (int e = 0; e < 16; ++e) sum += vsum[e];
          l[i] = l[i] * corr + sum;
          m[i] = m_new;
          scale_add_weighted_rows(ob_ptr + i * ld_q, corr, s, vp, jn, D, Dp);
        }
      }
      for (int64_t i = 0; i < nq; ++i) {
        float* o = ob_ptr + i * ld_q;
        const float inv = 1.0f / l[i];
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) o[d] *= inv;
        if (lse != nullptr) lse[(b * Hq + h) * T + t0 + i] = m[i] + std::log(l[i]);
      }
    }
  }
}

template <int64_t MaxD>
void attention_backward_impl(float* dq, float* dk, float* dv, const float* drow, const float* dout, const float* q,
                             const float* k, const float* v, const float* lse, int64_t B, int64_t T, int64_t Hq,
                             int64_t Hkv, int64_t D) {
  const int64_t group = Hq / Hkv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const int64_t ld_q = Hq * D, ld_kv = Hkv * D;
  const int64_t Dp = (D + 15) / 16 * 16;

#pragma omp parallel
  {
    alignas(64) float kt[MaxD * kKB];    // k block transposed (D, kKB)
    alignas(64) float vt[MaxD * kKB];    // v block transposed (D, kKB)
    alignas(64) float kp[kKB * MaxD];    // k block padded (kKB, Dp)
    alignas(64) float qp[kQB * MaxD];    // q rows of the query block, padded (kQB, Dp)
    alignas(64) float dop[kQB * MaxD];   // dout rows of the query block, padded (kQB, Dp)
    alignas(64) float pt[kKB * kQB];     // probabilities, transposed (kKB, kQB)
    alignas(64) float dst[kKB * kQB];    // scale * dscores, transposed (kKB, kQB)
    alignas(64) float s[kKB];
    alignas(64) float dp[kKB];
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < B * Hkv; ++task) {
      const int64_t b = task / Hkv, kvh = task % Hkv;
      const float* kb_ptr = k + b * T * ld_kv + kvh * D;
      const float* vb_ptr = v + b * T * ld_kv + kvh * D;
      float* dkb = dk + b * T * ld_kv + kvh * D;
      float* dvb = dv + b * T * ld_kv + kvh * D;
      for (int64_t t = 0; t < T; ++t) {
        std::memset(dkb + t * ld_kv, 0, static_cast<size_t>(D) * sizeof(float));
        std::memset(dvb + t * ld_kv, 0, static_cast<size_t>(D) * sizeof(float));
        for (int64_t g = 0; g < group; ++g)
          std::memset(dq + (b * T + t) * ld_q + (kvh * group + g) * D, 0, static_cast<size_t>(D) * sizeof(float));
      }
      for (int64_t j0 = 0; j0 < T; j0 += kKB) {
        const int64_t kb = std::min(kKB, T - j0);
        transpose_block(kt, kb_ptr + j0 * ld_kv, ld_kv, kb, D);
        transpose_block(vt, vb_ptr + j0 * ld_kv, ld_kv, kb, D);
        pad_block(kp, kb_ptr + j0 * ld_kv, ld_kv, kb, D, Dp);
        for (int64_t g = 0; g < group; ++g) {
          const int64_t h = kvh * group + g;
          const float* lse_h = lse + (b * Hq + h) * T;
          const float* drow_h = drow + (b * Hq + h) * T;
          // Query rows i >= j0 (the causal mask hides the block from earlier rows).
          for (int64_t i0 = j0; i0 < T; i0 += kQB) {
            const int64_t nq = std::min(kQB, T - i0);
            const int64_t row0 = (b * T + i0) * ld_q + h * D;
            pad_block(qp, q + row0, ld_q, nq, D, Dp);
            pad_block(dop, dout + row0, ld_q, nq, D, Dp);
            for (int64_t ii = 0; ii < nq; ++ii) {
              const int64_t i = i0 + ii;
              const int64_t jn = std::min(kb, i - j0 + 1);
              block_dots(s, qp + ii * Dp, kt, D);
              block_dots(dp, dop + ii * Dp, vt, D);
              const float lse_i = lse_h[i], d_i = drow_h[i];
              {
                VecF* sv = reinterpret_cast<VecF*>(s);
                VecF* dpv = reinterpret_cast<VecF*>(dp);
                const VecI lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
                for (int c = 0; c < kKB / 16; ++c) {
                  const VecF e = exp_approx(sv[c] * scale - lse_i);
                  const VecF p = (lane + 16 * c) < static_cast<int32_t>(jn) ? e : VecF{};
                  sv[c] = p;
                  dpv[c] = p * (dpv[c] - d_i) * scale;
                }
              }
              for (int64_t j = 0; j < kKB; ++j) {
                pt[j * kQB + ii] = s[j];
                dst[j * kQB + ii] = dp[j];
              }
              // dq_i += scale * sum_j ds_ij k_j
              scale_add_weighted_rows(dq + row0 + ii * ld_q, 1.0f, dp, kp, jn, D, Dp);
            }
            // dv_j += sum_i p_ij dout_i;  dk_j += scale * sum_i ds_ij q_i
            for (int64_t j = 0; j < kb; ++j) {
              scale_add_weighted_rows(dvb + (j0 + j) * ld_kv, 1.0f, pt + j * kQB, dop, nq, D, Dp);
              scale_add_weighted_rows(dkb + (j0 + j) * ld_kv, 1.0f, dst + j * kQB, qp, nq, D, Dp);
            }
          }
        }
      }
    }
  }
}

}  // namespace

void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v, int64_t B, int64_t T,
                       int64_t S, int64_t Hq, int64_t Hkv, int64_t D, int64_t q_pos0) {
  // Stack tiles sized for the head dimension: 64 and 128 cover the common models.
  if (D <= 64)
    attention_forward_impl<64>(out, lse, q, k, v, B, T, S, Hq, Hkv, D, q_pos0);
  else if (D <= 128)
    attention_forward_impl<128>(out, lse, q, k, v, B, T, S, Hq, Hkv, D, q_pos0);
  else
    attention_forward_impl<kMaxHeadDim>(out, lse, q, k, v, B, T, S, Hq, Hkv, D, q_pos0);
}

void attention_backward(float* dq, float* dk, float* dv, float* drow, const float* dout, const float* q, const float* k,
                        const float* v, const float* out, const float* lse, int64_t B, int64_t T, int64_t Hq,
                        int64_t Hkv, int64_t D) {
  const int64_t ld_q = Hq * D;
  // Drow[b, h, t] = sum_d dout * out
#pragma omp parallel for schedule(static)
  for (int64_t bt = 0; bt < B * T; ++bt) {
    const int64_t b = bt / T, t = bt % T;
    for (int64_t h = 0; h < Hq; ++h)
      drow[(b * Hq + h) * T + t] = dot(dout + bt * ld_q + h * D, out + bt * ld_q + h * D, D);
  }
  if (D <= 64)
    attention_backward_impl<64>(dq, dk, dv, drow, dout, q, k, v, lse, B, T, Hq, Hkv, D);
  else if (D <= 128)
    attention_backward_impl<128>(dq, dk, dv, drow, dout, q, k, v, lse, B, T, Hq, Hkv, D);
  else
    attention_backward_impl<kMaxHeadDim>(dq, dk, dv, drow, dout, q, k, v, lse, B, T, Hq, Hkv, D);
}

}  // namespace lmtune::cpu
