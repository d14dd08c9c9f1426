// Quantization block codecs — design note.
//
// Two families, each bit-exact with the code that defines its format:
//
// ggml (llama.cpp) Q8_0 and Q4_0, blocks of 32 consecutive values (ggml-quants.c, the
// reference quantizers that llama.cpp's converters use to write model files):
//   Q8_0  34 bytes: f16 d = amax / 127, then 32 int8 q = roundf(x / d) (as x * (1/d), half
//         away from zero); value = d * q.
//   Q4_0  18 bytes: f16 d = m / -8 where m is the value of largest magnitude (the first one
//         on ties), then 16 bytes: value j in the low nibble of byte j, value j + 16 in the
//         high one, q = min(15, trunc(x * (1/d) + 8.5)); value = d * (q - 8).
//   The scale used to compute q is the float32 d; the stored one is d rounded to f16 (round
//   to nearest even), which is what dequantization and llama.cpp's dot products use.
//   fake_quant_* compute dequantize(quantize(x)) with these same functions, so a QAT forward
//   sees exactly the values a GGUF file of that type holds.
//
// bitsandbytes NF4 with double quantization (functional.py quantize_4bit with
// compress_statistics=True, as its pure-PyTorch "default" backend computes it):
//   * The weight is flattened; blocks of 64 values (the last one may be partial). Per block
//     absmax = max |x|; scaled = clamp(x * (1 / max(absmax, 1e-38)), -1, 1) (a partial last
//     block divides: x / max(absmax, 1e-38)); the code is the number of NF4 midpoints
//     (float32 (c[i] + c[i+1]) / 2, equal to the CUDA kernel's thresholds) strictly below
//     `scaled`, so a value on a midpoint takes the lower code. Two codes per byte, the first
//     value of a pair in the high nibble; an odd count is padded with the code of 0.
//   * Double quantization of the absmax vector a (float32): offset = mean(a) (summed in
//     double, rounded to float32 — torch's float32 mean may differ in the last bit), then
//     a - offset is quantized blockwise (blocks of 256) to 8 bits with the signed dynamic map
//     by the same rule (nearest code by float32 midpoints, ties to the lower code), one
//     float32 absmax per nested block.
//   * Dequantization: absmax' = code8[q] * nested_absmax + offset (float32, in that order),
//     value = nf4[c] * absmax'.
//   The signed dynamic map (create_dynamic_map(signed=True)) is built here in exact
//   arithmetic, each value an integer ratio computed in double and rounded once to float32;
//   torch builds it with float32 linspace, which can differ in the last bit of a few values.
//   The map is therefore data: a weight loaded from a bitsandbytes checkpoint keeps the map
//   stored with it (nested_quant_map), so its dequantized values are bitsandbytes' own.
//   Where the kernels differ (an all-zero block: the CUDA kernel divides by zero and stores
//   code 0, the default backend clamps and stores the code of 0), this follows the default
//   backend; on a value exactly on a midpoint CUDA's 8-bit binary search can take the upper
//   code.
#pragma once

#include <cstddef>
#include <cstdint>

namespace lmtune::cpu {

// ---- ggml Q8_0 / Q4_0 --------------------------------------------------------------------

inline constexpr int64_t kGgmlBlockValues = 32;  // QK8_0 == QK4_0
inline constexpr size_t kQ8_0BlockBytes = 2 + 32;
inline constexpr size_t kQ4_0BlockBytes = 2 + 16;

// n must be a multiple of 32; out holds n / 32 blocks.
void quantize_q8_0(const float* x, int64_t n, uint8_t* out);
void dequantize_q8_0(const uint8_t* in, int64_t n, float* out);
void quantize_q4_0(const float* x, int64_t n, uint8_t* out);
void dequantize_q4_0(const uint8_t* in, int64_t n, float* out);

// out (n) = dequantize(quantize(x (n))), block by block; out may be x. n % 32 == 0.
// OpenMP over blocks.
void fake_quant_q8_0(float* out, const float* x, int64_t n);
void fake_quant_q4_0(float* out, const float* x, int64_t n);

// ---- bitsandbytes NF4 + blockwise 8-bit --------------------------------------------------

inline constexpr int64_t kNf4BlockValues = 64;      // bnb_4bit blocksize
inline constexpr int64_t kNestedBlockValues = 256;  // the double quantization's blocksize
inline constexpr int kDynamicMapSize = 256;

// The 16 NF4 values (bitsandbytes' get_4bit_type("nf4")), in code order.
const float* nf4_code();
// create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): 256 sorted values.
void dynamic_map_signed(float* out);

struct Nf4Sizes {
  int64_t blocks = 0;         // ceil(n / 64): absmax entries
  int64_t nested_blocks = 0;  // ceil(blocks / 256): nested absmax entries
  int64_t code_bytes = 0;     // (n + 1) / 2: packed codes, as bitsandbytes stores them
};
Nf4Sizes nf4_sizes(int64_t n);

// NF4 with double quantization of x (n floats, finite). Writes codes (sizes.code_bytes),
// qabsmax (blocks), nested_absmax (nested_blocks) and *offset; nested_code is the 256-value
// map; scratch holds `blocks` floats. OpenMP over blocks.
void nf4_quantize(const float* x, int64_t n, const float* nested_code, uint8_t* codes, uint8_t* qabsmax,
                  float* nested_absmax, float* offset, float* scratch);
// The inverse: out (n) from the same pieces; scratch holds `blocks` floats.
void nf4_dequantize(const uint8_t* codes, const uint8_t* qabsmax, const float* nested_absmax, float offset,
                    const float* nested_code, int64_t n, float* out, float* scratch);

// bitsandbytes' quantize_blockwise / dequantize_blockwise with a sorted 256-value code map
// (the rule above), for blocks of `blocksize`: q (n), absmax (ceil(n / blocksize)).
void quantize_blockwise_8bit(const float* x, int64_t n, int64_t blocksize, const float* code, uint8_t* q,
                             float* absmax);
void dequantize_blockwise_8bit(const uint8_t* q, const float* absmax, const float* code, int64_t n,
                               int64_t blocksize, float* out);

}  // namespace lmtune::cpu
