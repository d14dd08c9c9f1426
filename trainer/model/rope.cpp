#include "trainer/model/rope.h"

#include <cmath>
#include <numbers>

namespace lmtune {

namespace {

std::vector<double> base_inv_freq(const LlamaConfig& cfg) {
  const int64_t D = cfg.head_dim();
  std::vector<double> f(static_cast<size_t>(D / 2));
  for (int64_t i = 0; i < D / 2; ++i)
    f[i] = std::pow(cfg.rope_theta, -static_cast<double>(2 * i) / static_cast<double>(D));
  return f;
}

}  // namespace

std::vector<double> rope_freq_divisors(const LlamaConfig& cfg) {
  const std::vector<double> base = base_inv_freq(cfg);
  const RopeScaling& s = cfg.rope_scaling;
  std::vector<double> div(base.size(), 1.0);
  for (size_t i = 0; i < base.size(); ++i) {
    switch (s.type) {
      case RopeScalingType::none: break;
      case RopeScalingType::linear: div[i] = s.factor; break;
      case RopeScalingType::llama3: {
        const double old_len = static_cast<double>(s.original_max_position_embeddings);
        const double wavelen = 2.0 * std::numbers::pi / base[i];
        if (wavelen < old_len / s.high_freq_factor) {
          div[i] = 1.0;
        } else if (wavelen > old_len / s.low_freq_factor) {
          div[i] = s.factor;
        } else {
          const double smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
          div[i] = 1.0 / ((1.0 - smooth) / s.factor + smooth);
        }
        break;
      }
    }
  }
  return div;
}

std::vector<double> rope_inv_freq(const LlamaConfig& cfg) {
  std::vector<double> f = base_inv_freq(cfg);
  const std::vector<double> div = rope_freq_divisors(cfg);
  for (size_t i = 0; i < f.size(); ++i) f[i] /= div[i];
  return f;
}

}  // namespace lmtune
