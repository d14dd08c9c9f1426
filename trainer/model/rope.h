// RoPE frequencies of a config — design note.
//
// The rotary kernels (kernels/ops.h rope_forward/backward) take a per-pair frequency table
// inv_freq (D/2): pair (i, i + D/2) of position p is rotated by p * inv_freq[i]. Every kind
// of RoPE scaling we support is a change of that table, computed here once per model:
//   default  inv_freq[i] = theta^(-2i/D)
//   linear   inv_freq[i] = theta^(-2i/D) / factor            (= positions divided by factor)
//   llama3   Llama 3.1's bands, by the wavelength w = 2 pi / theta^(-2i/D) of each pair:
//              w < original_max / high_freq_factor   unchanged
//              w > original_max / low_freq_factor    divided by factor
//              otherwise                             divided by 1 / ((1 - s) / factor + s),
//                                                    s = (original_max / w - low) / (high - low)
//            (HF's _compute_llama3_parameters; llama.cpp reads the same divisors from the
//            GGUF tensor rope_freqs.weight).
// rope_freq_divisors() returns those divisors, rope_inv_freq() the table. Both in double;
// the model keeps the table as f32 (HF and Meta hold inv_freq in f32 too) and the kernels
// form each angle p * inv_freq[i] in double.
#pragma once

#include <vector>

#include "trainer/model/config.h"

namespace lmtune {

// Per pair i < D/2: what theta^(-2i/D) is divided by (all 1 without scaling).
std::vector<double> rope_freq_divisors(const LlamaConfig& cfg);
// Per pair i < D/2: theta^(-2i/D) / divisor[i].
std::vector<double> rope_inv_freq(const LlamaConfig& cfg);

}  // namespace lmtune
