// Shared helpers of the CPU kernels: a vectorisable exp, sizes of stack scratch, and the
// OpenMP helpers every kernel file uses. Raw-pointer kernels live in lmtune::cpu and never
// allocate anything large: scratch that grows with the problem comes in as a pointer to a
// workspace tensor that kernels/ops.cpp took from the tracked allocator.
#pragma once

#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace lmtune::cpu {

// Whether a kernel overwrites its output or adds to it.
enum class OutMode { assign, accumulate };

// The largest attention head dimension the kernels keep on the stack.
inline constexpr int64_t kMaxHeadDim = 256;

// exp(x) in float, branch-free so that GCC/Clang vectorise loops that call it (std::exp does
// not vectorise without -ffast-math). Cephes' expf: range reduction x = n ln2 + r with a
// two-constant ln2, a degree-6 polynomial on |r| <= ln2/2; about 1 ulp over the range.
// Returns exactly 0 below -87.3 (including -inf), which masking relies on.
inline float exp_approx(float x) {
  constexpr float kLo = -87.33654475f;
  constexpr float kHi = 88.37f;
  const float xc = std::min(std::max(x, kLo), kHi);
  // n = round(xc / ln2) by the 1.5 * 2^23 trick (std::floor does not vectorise under the
  // default -ftrapping-math).
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = std::fma(n, -0.693359375f, xc);
  r = std::fma(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = std::fma(p, r, 1.3981999507e-3f);
  p = std::fma(p, r, 8.3334519073e-3f);
  p = std::fma(p, r, 4.1665795894e-2f);
  p = std::fma(p, r, 1.6666665459e-1f);
  p = std::fma(p, r, 5.0000001201e-1f);
  p = std::fma(p, r * r, r + 1.0f);
  const float scale = std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
  return x < kLo ? 0.0f : p * scale;
}

// 16 floats / 16 int32 as GCC/Clang vector-extension types: lowered to AVX-512, AVX2 or
// SSE as the target allows. Used where the auto-vectoriser cannot be trusted.
typedef float VecF __attribute__((vector_size(64), aligned(64)));
typedef int32_t VecI __attribute__((vector_size(64), aligned(64)));

// exp_approx on 16 lanes (the same algorithm; round-to-nearest by the 1.5 * 2^23 trick).
inline VecF exp_approx(VecF x) {
  const VecF lo = VecF{} + -87.33654475f, hi = VecF{} + 88.37f;
  const VecF xc = x < lo ? lo : (x > hi ? hi : x);
  const VecF magic = VecF{} + 12582912.0f;  // 1.5 * 2^23
  const VecF n = (xc * 1.44269504088896341f + magic) - magic;
  VecF r = n * -0.693359375f + xc;
  r = n * 2.12194440e-4f + r;
  VecF p = VecF{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + (r + 1.0f);
  const VecI bits = (__builtin_convertvector(n, VecI) + 127) << 23;
  const VecF y = p * (VecF)bits;  // same-size vector cast: a bit cast
  return x < lo ? VecF{} : y;
}

// [begin, end) of the part `part` of `n` items split into `parts` nearly equal pieces.
inline void split_range(int64_t n, int part, int parts, int64_t& begin, int64_t& end) {
  const int64_t base = n / parts, extra = n % parts;
  begin = part * base + std::min<int64_t>(part, extra);
  end = begin + base + (part < extra ? 1 : 0);
}

}  // namespace lmtune::cpu
