#include "kernels/cpu/elementwise.h"

#include "kernels/cpu/common.h"

namespace lmtune::cpu {
namespace {
// Threads take pieces of kPiece elements; each piece runs as a plain vectorised loop.
constexpr int64_t kPiece = 4096;
inline int64_t num_pieces(int64_t n) { return (n + kPiece - 1) / kPiece; }
}  // namespace

void swiglu_forward(float* out, const float* gate, const float* up, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t piece = 0; piece < num_pieces(n); ++piece) {
    const int64_t e = std::min(n, (piece + 1) * kPiece);
#pragma omp simd
    for (int64_t i = piece * kPiece; i < e; ++i) {
      const float g = gate[i];
      const float sig = 1.0f / (1.0f + exp_approx(-g));
      out[i] = g * sig * up[i];
    }
  }
}

void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t piece = 0; piece < num_pieces(n); ++piece) {
    const int64_t e = std::min(n, (piece + 1) * kPiece);
#pragma omp simd
    for (int64_t i = piece * kPiece; i < e; ++i) {
      const float g = gate[i], u = up[i], dy = dout[i];
      const float sig = 1.0f / (1.0f + exp_approx(-g));
      const float silu = g * sig;
      dgate[i] = dy * u * sig * (1.0f + g * (1.0f - sig));
      dup[i] = dy * silu;
    }
  }
}

void add_forward(float* out, const float* a, const float* b, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t piece = 0; piece < num_pieces(n); ++piece) {
    const int64_t e = std::min(n, (piece + 1) * kPiece);
#pragma omp simd
    for (int64_t i = piece * kPiece; i < e; ++i) out[i] = a[i] + b[i];
  }
}

void add_inplace(float* out, const float* a, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t piece = 0; piece < num_pieces(n); ++piece) {
    const int64_t e = std::min(n, (piece + 1) * kPiece);
#pragma omp simd
    for (int64_t i = piece * kPiece; i < e; ++i) out[i] += a[i];
  }
}

void scale_inplace(float* x, float scale, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t piece = 0; piece < num_pieces(n); ++piece) {
    const int64_t e = std::min(n, (piece + 1) * kPiece);
#pragma omp simd
    for (int64_t i = piece * kPiece; i < e; ++i) x[i] *= scale;
  }
}

namespace {
// splitmix64 of (seed, index): a counter-based generator, so any element's draw is independent
// of thread count and order.
inline uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
}  // namespace

void dropout_apply(float* out, const float* inp, int64_t n, float p, uint64_t seed, uint64_t index0, OutMode mode) {
  const float keep_scale = 1.0f / (1.0f - p);
  const uint64_t seed_mix = mix64(seed);
#pragma omp parallel for schedule(static)
  for (int64_t piece = 0; piece < num_pieces(n); ++piece) {
    const int64_t e = std::min(n, (piece + 1) * kPiece);
    for (int64_t i = piece * kPiece; i < e; ++i) {
      const float u = static_cast<float>(mix64(seed_mix ^ (index0 + static_cast<uint64_t>(i))) >> 40) * (1.0f / 16777216.0f);
      const float v = u >= p ? inp[i] * keep_scale : 0.0f;
      if (mode == OutMode::accumulate)
        out[i] += v;
      else
        out[i] = v;
    }
  }
}

}  // namespace lmtune::cpu
