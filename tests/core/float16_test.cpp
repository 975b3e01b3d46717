/// tp::bf16 and tp::f16 (tp/core/float16.hpp): decoding checked against the formats' definitions,
/// every one of the 65536 bit patterns of each surviving a round trip through float and double, and
/// encoding from float and from double checked against a reference that knows nothing of the bit
/// formulas: the nearest of the sorted finite values (ties to the even pattern), on every midpoint
/// between neighbours, just either side of each, and on random floats. Plus NaN, infinity, signed
/// zero, subnormals, overflow, and the type's plumbing (DTypeOf, numeric_limits, fmt).

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "tp/core/dtype.hpp"

namespace tp {
namespace {

/// The value of a bit pattern from the format's definition (sign, biased exponent, fraction).
template <class T>
double decode_reference(std::uint16_t b) {
  constexpr int mantissa = std::is_same_v<T, bf16> ? 7 : 10, exponent = 15 - mantissa, bias = (1 << (exponent - 1)) - 1;
  const int e = (b >> mantissa) & ((1 << exponent) - 1), m = b & ((1 << mantissa) - 1);
  const double sign = (b & 0x8000) ? -1.0 : 1.0;
  if (e == (1 << exponent) - 1) return m == 0 ? sign * INFINITY : NAN;
  if (e == 0) return sign * std::ldexp(m, 1 - bias - mantissa);
  return sign * std::ldexp((1 << mantissa) + m, e - bias - mantissa);
}

/// Rounding to T without the bit formulas: the nearest of the finite non-negative values (sorted
/// by bit pattern), ties to the even pattern, and infinity from half an ulp past the largest.
template <class T>
class NearestReference {
 public:
  NearestReference() {
    for (std::uint32_t b = 0; b < 0x8000; ++b) {
      const double v = decode_reference<T>(static_cast<std::uint16_t>(b));
      if (!std::isfinite(v)) break;  // the finite values come first, in increasing order
      values_.push_back(v);
    }
  }
  const std::vector<double>& values() const { return values_; }

  /// The bit pattern x rounds to (x not NaN).
  std::uint16_t bits(double x) const {
    const std::uint16_t sign = std::signbit(x) ? 0x8000 : 0;
    const double a = std::fabs(x), top = values_.back(), next = 2 * top - values_[values_.size() - 2];
    const auto inf = static_cast<std::uint16_t>(values_.size());  // the pattern right after the largest finite
    if (a >= (top + next) / 2) return sign | inf;                 // the tie goes to the even pattern: infinity
    const auto hi = static_cast<std::uint16_t>(std::lower_bound(values_.begin(), values_.end(), a) - values_.begin());
    if (hi == values_.size()) return sign | (inf - 1);  // past the largest finite, nearer to it than to infinity
    if (values_[hi] == a || hi == 0) return sign | hi;
    const std::uint16_t lo = hi - 1;
    const double below = a - values_[lo], above = values_[hi] - a;
    if (below != above) return sign | (below < above ? lo : hi);
    return sign | ((lo & 1) ? hi : lo);
  }

 private:
  std::vector<double> values_;
};

template <class T>
class Float16 : public ::testing::Test {};
using Float16Types = ::testing::Types<bf16, f16>;
TYPED_TEST_SUITE(Float16, Float16Types);

TYPED_TEST(Float16, EveryBitPatternDecodesAsDefinedAndRoundTrips) {
  using T = TypeParam;
  std::uint32_t nans = 0;
  for (std::uint32_t b = 0; b <= 0xffff; ++b) {
    const T x = T::from_bits(static_cast<std::uint16_t>(b));
    const double want = decode_reference<T>(static_cast<std::uint16_t>(b));
    const float f = x;
    if (std::isnan(want)) {
      ++nans;
      ASSERT_TRUE(std::isnan(f)) << std::hex << b;
      ASSERT_TRUE(std::isnan(static_cast<float>(T(f)))) << std::hex << b;  // a NaN stays a NaN
      ASSERT_TRUE(std::isnan(static_cast<float>(T(static_cast<double>(f))))) << std::hex << b;
      continue;
    }
    ASSERT_EQ(static_cast<double>(f), want) << std::hex << b;
    ASSERT_EQ(std::signbit(f), (b & 0x8000) != 0) << std::hex << b;  // -0 included
    ASSERT_EQ(T(f).bits, b) << std::hex << b;
    ASSERT_EQ(T(static_cast<double>(f)).bits, b) << std::hex << b;
  }
  EXPECT_EQ(nans, (std::is_same_v<T, bf16> ? 2u * 127 : 2u * 1023));
}

/// Every midpoint between neighbouring values (a tie: to the even pattern), the floats and doubles
/// just either side of it, and the same for the negatives: the rounding boundaries, all of them.
TYPED_TEST(Float16, RoundsToNearestEvenAtEveryBoundary) {
  using T = TypeParam;
  const NearestReference<T> ref;
  const auto& v = ref.values();
  std::vector<double> next_up = v;
  next_up.push_back(2 * v.back() - v[v.size() - 2]);  // where the next binade would start: the overflow boundary
  std::size_t checked = 0;
  for (std::size_t i = 0; i + 1 < next_up.size(); ++i) {
    const double mid = (next_up[i] + next_up[i + 1]) / 2;  // exact in float (more than 16 bits of significand)
    const float mid_f = static_cast<float>(mid);
    ASSERT_EQ(static_cast<double>(mid_f), mid);
    for (const float sign : {1.0f, -1.0f}) {
      const float fs[] = {sign * mid_f, sign * std::nextafter(mid_f, 0.0f), sign * std::nextafter(mid_f, INFINITY)};
      for (const float f : fs) {
        ASSERT_EQ(T(f).bits, ref.bits(f)) << std::hexfloat << f;
        ++checked;
      }
      // Doubles a hair either side of the tie: a double rounded to float first would land on the
      // tie and round to even; the correct result is the nearer neighbour.
      const double ds[] = {sign * mid, sign * std::nextafter(mid, 0.0), sign * std::nextafter(mid, INFINITY)};
      for (const double d : ds) {
        ASSERT_EQ(T(d).bits, ref.bits(d)) << std::hexfloat << d;
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 6u * v.size());
}

TYPED_TEST(Float16, RoundsRandomFloatsAndDoublesToTheNearest) {
  using T = TypeParam;
  const NearestReference<T> ref;
  std::mt19937_64 rng(42);
  for (int i = 0; i < 200000; ++i) {
    const auto bits = static_cast<std::uint32_t>(rng());
    const float f = std::bit_cast<float>(bits);
    if (std::isnan(f)) continue;
    ASSERT_EQ(T(f).bits, ref.bits(f)) << std::hexfloat << f;
    const double d = std::bit_cast<double>(rng());
    if (std::isnan(d)) continue;
    ASSERT_EQ(T(d).bits, ref.bits(d)) << std::hexfloat << d;
  }
}

TEST(Float16, SpecialValues) {
  // NaN payloads only in the bits that are dropped still give a NaN, not infinity.
  for (const std::uint32_t nan : {0x7f800001u, 0x7fc00000u, 0xff800001u, 0x7fffffffu}) {
    const float f = std::bit_cast<float>(nan);
    EXPECT_TRUE(std::isnan(static_cast<float>(bf16(f)))) << std::hex << nan;
    EXPECT_TRUE(std::isnan(static_cast<float>(f16(f)))) << std::hex << nan;
  }
  EXPECT_EQ(bf16(INFINITY).bits, 0x7f80);
  EXPECT_EQ(bf16(-INFINITY).bits, 0xff80);
  EXPECT_EQ(f16(INFINITY).bits, 0x7c00);
  EXPECT_EQ(f16(-INFINITY).bits, 0xfc00);
  EXPECT_EQ(bf16(std::numeric_limits<float>::max()).bits, 0x7f80);  // past bf16's largest: infinity
  EXPECT_EQ(f16(65504.0f).bits, 0x7bff);
  EXPECT_EQ(f16(65519.0f).bits, 0x7bff);
  EXPECT_EQ(f16(65520.0f).bits, 0x7c00);  // the tie goes to the even pattern, infinity
  EXPECT_EQ(f16(1e6).bits, 0x7c00);
  EXPECT_EQ(bf16(-0.0f).bits, 0x8000);
  EXPECT_EQ(f16(-0.0f).bits, 0x8000);
  // Subnormals: f16's smallest is 2^-24; half of it is a tie that rounds to zero, a bit more to it.
  EXPECT_EQ(f16(std::ldexp(1.0f, -24)).bits, 0x0001);
  EXPECT_EQ(f16(std::ldexp(1.0f, -25)).bits, 0x0000);
  EXPECT_EQ(f16(std::ldexp(1.5f, -25)).bits, 0x0001);
  EXPECT_EQ(f16(std::ldexp(3.0f, -25)).bits, 0x0002);  // 1.5 units: a tie, to the even 2
  EXPECT_EQ(f16(std::ldexp(1023.0f, -24)).bits, 0x03ff);
  EXPECT_EQ(f16(std::ldexp(2047.0f, -25)).bits, 0x0400);            // 1023.5 units round up into the normals
  EXPECT_EQ(bf16(std::bit_cast<float>(0x00000001u)).bits, 0x0000);  // float subnormals keep bf16's 7 bits
  EXPECT_EQ(bf16(std::bit_cast<float>(0x00018000u)).bits, 0x0002);  // a tie between 1 and 2: to the even 2
  EXPECT_EQ(bf16(std::bit_cast<float>(0x00010001u)).bits, 0x0001);
  // Ties in the normal range: 1 + 2^-8 lies half way between 1 and 1 + 2^-7.
  EXPECT_EQ(bf16(1.0f + std::ldexp(1.0f, -8)).bits, 0x3f80);
  EXPECT_EQ(bf16(1.0f + 3 * std::ldexp(1.0f, -8)).bits, 0x3f82);
  EXPECT_EQ(bf16(1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40)).bits, 0x3f81);  // double: just past the tie
  EXPECT_EQ(f16(1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40)).bits, 0x3c01);
}

TEST(Float16, ArithmeticRunsInFloatAndRoundsOnce) {
  bf16 x = 1.0f;
  x += std::ldexp(1.0f, -9);  // below half an ulp of 1: no change
  EXPECT_EQ(x.bits, 0x3f80);
  x += 0.5f;
  EXPECT_EQ(static_cast<float>(x), 1.5f);
  x *= 2.0f;
  EXPECT_EQ(static_cast<float>(x), 3.0f);
  EXPECT_EQ(static_cast<float>(-x), -3.0f);
  const bf16 a = 3.0f, b = 0.25f;
  EXPECT_EQ(a + b, 3.25f);  // float's operator, float's result
  EXPECT_TRUE(a > b);
  EXPECT_EQ(bf16(3), a);  // integers convert explicitly
  f16 h = 2048.0f;
  h += 1.0f;  // 2049 is a tie between 2048 and 2050: to the even 2048
  EXPECT_EQ(static_cast<float>(h), 2048.0f);
}

TEST(Float16, PlumbingForCommunicatorsCheckpointsAndMessages) {
  static_assert(dtype_of<bf16> == DType::bf16 && dtype_of<f16> == DType::f16 && dtype_of<const bf16> == DType::bf16);
  static_assert(size_of(dtype_of<bf16>) == sizeof(bf16) && size_of(dtype_of<f16>) == sizeof(f16));
  static_assert(std::is_same_v<accum_t<bf16>, float> && std::is_same_v<accum_t<double>, double>);
  EXPECT_EQ(static_cast<float>(std::numeric_limits<bf16>::max()), 0x1.fep127f);
  EXPECT_EQ(static_cast<float>(std::numeric_limits<f16>::max()), 65504.0f);
  EXPECT_EQ(static_cast<float>(std::numeric_limits<bf16>::epsilon()), 0x1p-7f);
  EXPECT_EQ(static_cast<float>(std::numeric_limits<f16>::epsilon()), 0x1p-10f);
  EXPECT_EQ(static_cast<float>(std::numeric_limits<f16>::min()), 0x1p-14f);
  EXPECT_EQ(static_cast<float>(std::numeric_limits<bf16>::min()), std::numeric_limits<float>::min());
  EXPECT_EQ(static_cast<float>(-std::numeric_limits<bf16>::infinity()), -INFINITY);
  EXPECT_TRUE(std::isnan(static_cast<float>(std::numeric_limits<f16>::quiet_NaN())));
  EXPECT_EQ(fmt::format("{} {:.2f}", bf16(1.5f), f16(0.25f)), "1.5 0.25");
}

}  // namespace
}  // namespace tp
