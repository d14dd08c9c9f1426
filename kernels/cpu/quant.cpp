// Quantization block codecs (see the design note in quant.h). Compiled with
// -ffp-contract=off (kernels/CMakeLists.txt): every product and sum is rounded on its own,
// as in the reference code these formats come from, never fused into an FMA.
#include "kernels/cpu/quant.h"

#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

#include "trainer/core/dtype.h"

namespace lmtune::cpu {

namespace {

// bitsandbytes clamps a block's absmax to this before dividing (float32, a subnormal).
constexpr float kMinAbsmax = 1e-38f;

void store_f16(uint8_t* p, float v) {
  const uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}

float load_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}

void quantize_block_q8_0(const float* x, uint8_t* out) {
  float amax = 0.0f;
  for (int64_t i = 0; i < kGgmlBlockValues; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  store_f16(out, d);
  for (int64_t i = 0; i < kGgmlBlockValues; ++i)
    out[2 + i] = static_cast<uint8_t>(static_cast<int8_t>(std::round(x[i] * id)));  // roundf: half away from zero
}

void dequantize_block_q8_0(const uint8_t* in, float* out) {
  const float d = load_f16(in);
  for (int64_t i = 0; i < kGgmlBlockValues; ++i) out[i] = d * static_cast<float>(static_cast<int8_t>(in[2 + i]));
}

void quantize_block_q4_0(const float* x, uint8_t* out) {
  float amax = 0.0f, max = 0.0f;
  for (int64_t i = 0; i < kGgmlBlockValues; ++i) {
    if (amax < std::fabs(x[i])) {
      amax = std::fabs(x[i]);
      max = x[i];
    }
  }
  const float d = max / -8.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  store_f16(out, d);
  constexpr int64_t half = kGgmlBlockValues / 2;
  for (int64_t j = 0; j < half; ++j) {
    const auto lo = static_cast<uint8_t>(std::min<int>(15, static_cast<int8_t>(x[j] * id + 8.5f)));
    const auto hi = static_cast<uint8_t>(std::min<int>(15, static_cast<int8_t>(x[half + j] * id + 8.5f)));
    out[2 + j] = static_cast<uint8_t>(lo | (hi << 4));
  }
}

void dequantize_block_q4_0(const uint8_t* in, float* out) {
  const float d = load_f16(in);
  constexpr int64_t half = kGgmlBlockValues / 2;
  for (int64_t j = 0; j < half; ++j) {
    out[j] = static_cast<float>((in[2 + j] & 0x0F) - 8) * d;
    out[half + j] = static_cast<float>((in[2 + j] >> 4) - 8) * d;
  }
}

template <void (*Quantize)(const float*, uint8_t*), void (*Dequantize)(const uint8_t*, float*), size_t Bytes>
void fake_quant(float* out, const float* x, int64_t n) {
  const int64_t blocks = n / kGgmlBlockValues;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    uint8_t q[Bytes];
    Quantize(x + b * kGgmlBlockValues, q);
    Dequantize(q, out + b * kGgmlBlockValues);
  }
}

// Midpoints between neighbouring codes of a sorted map, in float32.
template <size_t N>
std::array<float, N - 1> midpoints(const float* code) {
  std::array<float, N - 1> m{};
  for (size_t i = 0; i + 1 < N; ++i) m[i] = (code[i] + code[i + 1]) / 2.0f;
  return m;
}

// The number of midpoints strictly below s: torch.bucketize(s, midpoints, right=False).
template <size_t M>
uint8_t bucket(const std::array<float, M>& mid, float s) {
  return static_cast<uint8_t>(std::lower_bound(mid.begin(), mid.end(), s) - mid.begin());
}

float block_absmax(const float* x, int64_t len) {
  float amax = 0.0f;
  for (int64_t i = 0; i < len; ++i) amax = std::max(amax, std::fabs(x[i]));
  return amax;
}

// scaled = clamp(x * (1 / a), -1, 1) for a full block, clamp(x / a, -1, 1) for the partial
// last one (bitsandbytes' default backend computes them so).
// An all-zero block scales to 0 (the subnormal clamp would give 0 * 1e38; said directly, so
// that a flush-to-zero mode cannot turn it into 0 * inf).
struct Scaler {
  float a, inv;
  bool full, zero;
  Scaler(float absmax, bool full_block)
      : a(std::max(absmax, kMinAbsmax)), inv(1.0f / a), full(full_block), zero(absmax == 0.0f) {}
  float operator()(float v) const { return zero ? 0.0f : std::clamp(full ? v * inv : v / a, -1.0f, 1.0f); }
};

}  // namespace

// ---- ggml --------------------------------------------------------------------------------

void quantize_q8_0(const float* x, int64_t n, uint8_t* out) {
  for (int64_t b = 0; b < n / kGgmlBlockValues; ++b)
    quantize_block_q8_0(x + b * kGgmlBlockValues, out + b * kQ8_0BlockBytes);
}

void dequantize_q8_0(const uint8_t* in, int64_t n, float* out) {
  for (int64_t b = 0; b < n / kGgmlBlockValues; ++b)
    dequantize_block_q8_0(in + b * kQ8_0BlockBytes, out + b * kGgmlBlockValues);
}

void quantize_q4_0(const float* x, int64_t n, uint8_t* out) {
  for (int64_t b = 0; b < n / kGgmlBlockValues; ++b)
    quantize_block_q4_0(x + b * kGgmlBlockValues, out + b * kQ4_0BlockBytes);
}

void dequantize_q4_0(const uint8_t* in, int64_t n, float* out) {
  for (int64_t b = 0; b < n / kGgmlBlockValues; ++b)
    dequantize_block_q4_0(in + b * kQ4_0BlockBytes, out + b * kGgmlBlockValues);
}

void fake_quant_q8_0(float* out, const float* x, int64_t n) {
  fake_quant<quantize_block_q8_0, dequantize_block_q8_0, kQ8_0BlockBytes>(out, x, n);
}

void fake_quant_q4_0(float* out, const float* x, int64_t n) {
  fake_quant<quantize_block_q4_0, dequantize_block_q4_0, kQ4_0BlockBytes>(out, x, n);
}

// ---- bitsandbytes --------------------------------------------------------------------------

const float* nf4_code() {
  static const float kCode[16] = {-1.0f,
                                  -0.6961928009986877f,
                                  -0.5250730514526367f,
                                  -0.39491748809814453f,
                                  -0.28444138169288635f,
                                  -0.18477343022823334f,
                                  -0.09105003625154495f,
                                  0.0f,
                                  0.07958029955625534f,
                                  0.16093020141124725f,
                                  0.24611230194568634f,
                                  0.33791524171829224f,
                                  0.44070982933044434f,
                                  0.5626170039176941f,
                                  0.7229568362236023f,
                                  1.0f};
  return kCode;
}

// For exponent step i = 0..6, fraction_items = 2^i + 1 boundaries linspace(0.1, 1) and the
// means of neighbours, times 10^(i - 6), with both signs; then 0 and 1. Mean j of step i is
// 10^(i-6) * (0.1 + 0.9 (2j + 1) / (2 (f - 1))) = (2 (f - 1) + 9 (2j + 1)) / (20 (f - 1) 10^(6-i)).
void dynamic_map_signed(float* out) {
  int k = 0;
  for (int i = 0; i < 7; ++i) {
    const int64_t f = (int64_t{1} << i) + 1;
    int64_t scale = 1;
    for (int e = 0; e < 6 - i; ++e) scale *= 10;
    for (int64_t j = 0; j + 1 < f; ++j) {
      const double num = static_cast<double>(2 * (f - 1) + 9 * (2 * j + 1));
      const double den = static_cast<double>(20 * (f - 1) * scale);
      const auto v = static_cast<float>(num / den);
      out[k++] = v;
      out[k++] = -v;
    }
  }
  out[k++] = 0.0f;
  out[k++] = 1.0f;
  std::sort(out, out + kDynamicMapSize);
}

Nf4Sizes nf4_sizes(int64_t n) {
  Nf4Sizes s;
  s.blocks = (n + kNf4BlockValues - 1) / kNf4BlockValues;
  s.nested_blocks = (s.blocks + kNestedBlockValues - 1) / kNestedBlockValues;
  s.code_bytes = (n + 1) / 2;
  return s;
}

void quantize_blockwise_8bit(const float* x, int64_t n, int64_t blocksize, const float* code, uint8_t* q,
                             float* absmax) {
  const auto mid = midpoints<kDynamicMapSize>(code);
  const int64_t blocks = (n + blocksize - 1) / blocksize;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t begin = b * blocksize, len = std::min(blocksize, n - begin);
    const float amax = block_absmax(x + begin, len);
    const Scaler scale(amax, len == blocksize);
    absmax[b] = len == blocksize ? amax : scale.a;  // the partial block stores its clamped absmax
    for (int64_t i = begin; i < begin + len; ++i) q[i] = bucket(mid, scale(x[i]));
  }
}

void dequantize_blockwise_8bit(const uint8_t* q, const float* absmax, const float* code, int64_t n,
                               int64_t blocksize, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = code[q[i]] * absmax[i / blocksize];
}

void nf4_quantize(const float* x, int64_t n, const float* nested_code, uint8_t* codes, uint8_t* qabsmax,
                  float* nested_absmax, float* offset, float* scratch) {
  const Nf4Sizes s = nf4_sizes(n);
  const auto mid = midpoints<16>(nf4_code());
  const uint8_t zero_code = bucket(mid, 0.0f);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < s.blocks; ++b) {
    const int64_t begin = b * kNf4BlockValues, len = std::min(kNf4BlockValues, n - begin);
    const float amax = block_absmax(x + begin, len);
    const Scaler scale(amax, len == kNf4BlockValues);
    scratch[b] = len == kNf4BlockValues ? amax : scale.a;
    for (int64_t i = 0; i < len; i += 2) {
      const uint8_t hi = bucket(mid, scale(x[begin + i]));
      const uint8_t lo = i + 1 < len ? bucket(mid, scale(x[begin + i + 1])) : zero_code;
      codes[(begin + i) / 2] = static_cast<uint8_t>((hi << 4) | lo);
    }
  }
  double sum = 0.0;
  for (int64_t b = 0; b < s.blocks; ++b) sum += scratch[b];
  const auto mean = static_cast<float>(sum / static_cast<double>(std::max<int64_t>(s.blocks, 1)));
  *offset = mean;
  for (int64_t b = 0; b < s.blocks; ++b) scratch[b] -= mean;
  quantize_blockwise_8bit(scratch, s.blocks, kNestedBlockValues, nested_code, qabsmax, nested_absmax);
}

void nf4_dequantize(const uint8_t* codes, const uint8_t* qabsmax, const float* nested_absmax, float offset,
                    const float* nested_code, int64_t n, float* out, float* scratch) {
  const Nf4Sizes s = nf4_sizes(n);
  dequantize_blockwise_8bit(qabsmax, nested_absmax, nested_code, s.blocks, kNestedBlockValues, scratch);
  for (int64_t b = 0; b < s.blocks; ++b) scratch[b] += offset;
  const float* c = nf4_code();
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < s.blocks; ++b) {
    const int64_t begin = b * kNf4BlockValues, end = std::min(n, begin + kNf4BlockValues);
    const float a = scratch[b];
    for (int64_t i = begin; i < end; ++i) {
      const uint8_t byte = codes[i / 2];
      out[i] = c[(i % 2 == 0) ? byte >> 4 : byte & 0x0F] * a;
    }
  }
}

}  // namespace lmtune::cpu
