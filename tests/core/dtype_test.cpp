#include "trainer/core/dtype.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

namespace lmtune {
namespace {

// Independent references: round to the nearest representable value by exhaustive search
// over the neighbouring encodings, ties to the even encoding.
float decode_f16_ref(uint16_t h) {
  const int e = (h >> 10) & 0x1f, m = h & 0x3ff;
  const double s = (h & 0x8000) ? -1.0 : 1.0;
  if (e == 0) return static_cast<float>(s * std::ldexp(m, -24));
  if (e == 31) return m ? std::numeric_limits<float>::quiet_NaN() : static_cast<float>(s * INFINITY);
  return static_cast<float>(s * std::ldexp(1024 + m, e - 25));
}

TEST(DType, F16DecodesEveryEncoding) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float want = decode_f16_ref(static_cast<uint16_t>(h));
    const float got = f16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(want)) EXPECT_TRUE(std::isnan(got)) << h;
    else EXPECT_EQ(f32_bits(got), f32_bits(want)) << h;
  }
}

TEST(DType, F16RoundsToNearestEven) {
  std::mt19937 rng(1);
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 200000; ++i) {
    float f = f32_from_bits(bits(rng));
    if (std::isnan(f)) continue;
    if (i % 2) f = std::ldexp(std::fmod(f, 4.0f), static_cast<int>(rng() % 40) - 30);  // hit the f16 range densely
    if (std::isnan(f) || std::isinf(f)) continue;
    const uint16_t h = f32_to_f16(f);
    // the result must be at least as close as both neighbours, ties to even
    const double x = f, got = decode_f16_ref(h);
    const double ax = std::fabs(x);
    if (ax >= 65520.0) { EXPECT_TRUE(std::isinf(got)) << x; continue; }
    for (int d : {-1, 1}) {
      const uint16_t nb = static_cast<uint16_t>(h + d);
      if ((nb & 0x7fff) >= 0x7c00 || ((h & 0x7fff) == 0 && d == -1)) continue;
      const double other = decode_f16_ref(nb);
      const double eg = std::fabs(got - x), eo = std::fabs(other - x);
      EXPECT_TRUE(eg < eo || (eg == eo && (h & 1) == 0)) << "x=" << x << " h=" << h << " nb=" << nb;
    }
  }
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);                       // tie -> even (0)
  EXPECT_EQ(f32_to_f16(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
}

TEST(DType, Bf16RoundsToNearestEven) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(f32_to_bf16(f32_from_bits(0x3f808000u)), 0x3f80);  // tie, even stays
  EXPECT_EQ(f32_to_bf16(f32_from_bits(0x3f818000u)), 0x3f82);  // tie, odd rounds up
  EXPECT_EQ(f32_to_bf16(f32_from_bits(0x3f808001u)), 0x3f81);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  std::mt19937 rng(2);
  for (int i = 0; i < 100000; ++i) {
    const float f = std::ldexp(static_cast<float>(rng()) / 4294967296.0f - 0.5f, static_cast<int>(rng() % 60) - 30);
    const float r = bf16_to_f32(f32_to_bf16(f));
    EXPECT_LE(std::fabs(r - f), std::fabs(f) * (1.0f / 256.0f)) << f;
  }
}

TEST(DType, NamesRoundTrip) {
  for (DType t : {DType::f32, DType::bf16, DType::f16, DType::i32, DType::i64, DType::u8})
    EXPECT_EQ(dtype_from_name(dtype_name(t)), t);
  EXPECT_THROW(dtype_from_name("f8"), std::exception);
}

}  // namespace
}  // namespace lmtune
