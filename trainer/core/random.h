// splitmix64: a small, well-mixed generator whose output is the same on every platform
// (std:: distributions are not specified bit for bit across standard libraries), for
// sampling and weight initialisation that must be reproducible.
#pragma once

#include <cstdint>

namespace lmtune {

inline uint64_t splitmix64_next(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Uniform in [0, 1) with 53 random bits.
inline double splitmix64_unit(uint64_t& state) {
  return static_cast<double>(splitmix64_next(state) >> 11) * (1.0 / 9007199254740992.0);
}

}  // namespace lmtune
