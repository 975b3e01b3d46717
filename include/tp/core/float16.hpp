#pragma once
/// The 16-bit floating types as host element types: tp::bf16 (bfloat16: float's 8-bit exponent,
/// 7 stored mantissa bits) and tp::f16 (IEEE binary16: 5-bit exponent, 10 mantissa bits). Each is
/// two bytes with the same bits as CUDA's __nv_bfloat16 and __half, so one buffer can be read as
/// either. Arithmetic happens in float: a value converts to float implicitly and exactly, and a
/// float or double converts back rounded to nearest, ties to even, keeping NaN a NaN and infinity
/// an infinity (values past the largest finite one round to infinity, as IEEE rounding does).
/// `x += y` computes in float and rounds once. There are no binary operators of their own: `a + b`
/// is float's, so a sum of many terms is only as good as the type it is kept in (keep it in float:
/// tp::accum_t<T>).
///
/// The conversions are the bit formulas below, written once (TP_HOST_DEVICE, constexpr), so the
/// CPU loops, the tests and CUDA kernels that take tp::bf16 round alike.

#include <fmt/format.h>

#include <bit>
#include <concepts>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "tp/core/host_device.hpp"

/// The conversions are constexpr on the host; nvcc compiles them for the device with CUDA's bit
/// intrinsics, which are not constexpr.
#ifdef __CUDACC__
#define TP_FLOAT16_CONSTEXPR
#else
#define TP_FLOAT16_CONSTEXPR constexpr
#endif

namespace tp {

namespace detail {

/// A float's bits and back: std::bit_cast on the host, CUDA's intrinsics in device code.
TP_HOST_DEVICE TP_FLOAT16_CONSTEXPR std::uint32_t bits_of(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  return std::bit_cast<std::uint32_t>(f);
#endif
}
TP_HOST_DEVICE TP_FLOAT16_CONSTEXPR float float_of(std::uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  return std::bit_cast<float>(u);
#endif
}

/// float -> bfloat16 bits, round to nearest even; a NaN stays a NaN (quiet bit set, so a payload
/// in the dropped low bits cannot turn it into infinity).
TP_HOST_DEVICE TP_FLOAT16_CONSTEXPR std::uint16_t bf16_bits_from_float(float f) {
  const std::uint32_t u = bits_of(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x0040u);
  return static_cast<std::uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

TP_HOST_DEVICE TP_FLOAT16_CONSTEXPR float float_from_bf16_bits(std::uint16_t b) {
  return float_of(static_cast<std::uint32_t>(b) << 16);
}

/// float -> binary16 bits, round to nearest even, with binary16's subnormals; past 65520 (half way
/// between the largest finite value, 65504, and the next power of two) the result is infinity.
TP_HOST_DEVICE TP_FLOAT16_CONSTEXPR std::uint16_t f16_bits_from_float(float f) {
  const std::uint32_t x = bits_of(f);
  const std::uint32_t sign = (x >> 16) & 0x8000u, a = x & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x3ffu));  // NaN
  if (a >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);                        // to infinity
  if (a < 0x38800000u) {  // below 2^-14: a subnormal of binary16, in units of 2^-24
    if (a <= 0x33000000u) return static_cast<std::uint16_t>(sign);  // at most 2^-25: rounds to zero (a tie at 2^-25)
    const std::uint32_t m = (a & 0x7fffffu) | 0x800000u, shift = 126u - (a >> 23);  // 14..24
    std::uint32_t r = m >> shift;
    const std::uint32_t rest = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rest > half || (rest == half && (r & 1u))) ++r;  // r = 0x400 is the smallest normal, correctly encoded
    return static_cast<std::uint16_t>(sign | r);
  }
  const std::uint32_t r = a - 0x38000000u;  // exponent rebiased from 127 to 15
  return static_cast<std::uint16_t>(sign | ((r + 0xfffu + ((r >> 13) & 1u)) >> 13));
}

TP_HOST_DEVICE TP_FLOAT16_CONSTEXPR float float_from_f16_bits(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1fu) return float_of(sign | 0x7f800000u | (m << 13));  // infinity, NaN
  if (e == 0) {                                                     // zero, subnormal: m 2^-24
    const float v = static_cast<float>(m) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  return float_of(sign | ((e + 112u) << 23) | (m << 13));
}

/// A double rounded to float by rounding to odd (truncate, then set the last bit if anything was
/// cut), so that rounding that float to 16 bits (to nearest even) gives the double's correctly
/// rounded 16-bit value: float keeps more than two bits beyond binary16's and bfloat16's, which
/// is what round-to-odd needs. A plain double -> float -> 16 bits rounds twice and is wrong on
/// values just past a 16-bit tie.
TP_HOST_DEVICE TP_FLOAT16_CONSTEXPR float float_round_to_odd(double d) {
  float f = static_cast<float>(d);
  if (!(f - f == 0.0f) || static_cast<double>(f) == d) return f;  // exact, infinite or NaN
  std::uint32_t u = bits_of(f);
  const double rounded = f < 0.0f ? -static_cast<double>(f) : static_cast<double>(f), exact = d < 0 ? -d : d;
  if (rounded > exact) --u;  // rounded away from zero: step back towards it (never from a zero)
  return float_of(u | 1u);
}

}  // namespace detail

/// bfloat16: float's range with 8 significant bits (unit roundoff 2^-8 = 3.9e-3).
struct bf16 {
  std::uint16_t bits;

  bf16() = default;
  TP_HOST_DEVICE TP_FLOAT16_CONSTEXPR bf16(float f) : bits(detail::bf16_bits_from_float(f)) {}
  TP_HOST_DEVICE TP_FLOAT16_CONSTEXPR bf16(double d) : bf16(detail::float_round_to_odd(d)) {}
  template <class I>
  requires std::integral<I> TP_HOST_DEVICE TP_FLOAT16_CONSTEXPR explicit bf16(I i) : bf16(static_cast<double>(i)) {}

  TP_HOST_DEVICE TP_FLOAT16_CONSTEXPR operator float() const { return detail::float_from_bf16_bits(bits); }

  TP_HOST_DEVICE static constexpr bf16 from_bits(std::uint16_t b) {
    bf16 x{};
    x.bits = b;
    return x;
  }

  TP_HOST_DEVICE TP_FLOAT16_CONSTEXPR bf16& operator+=(float y) { return *this = bf16(float(*this) + y); }
  TP_HOST_DEVICE TP_FLOAT16_CONSTEXPR bf16& operator-=(float y) { return *this = bf16(float(*this) - y); }
  TP_HOST_DEVICE TP_FLOAT16_CONSTEXPR bf16& operator*=(float y) { return *this = bf16(float(*this) * y); }
  TP_HOST_DEVICE TP_FLOAT16_CONSTEXPR bf16& operator/=(float y) { return *this = bf16(float(*this) / y); }
  TP_HOST_DEVICE constexpr bf16 operator-() const { return from_bits(static_cast<std::uint16_t>(bits ^ 0x8000u)); }
};

/// IEEE binary16: 11 significant bits (unit roundoff 2^-11 = 4.9e-4), finite values up to 65504.
struct f16 {
  std::uint16_t bits;

  f16() = default;
  TP_HOST_DEVICE TP_FLOAT16_CONSTEXPR f16(float f) : bits(detail::f16_bits_from_float(f)) {}
  TP_HOST_DEVICE TP_FLOAT16_CONSTEXPR f16(double d) : f16(detail::float_round_to_odd(d)) {}
  template <class I>
  requires std::integral<I> TP_HOST_DEVICE TP_FLOAT16_CONSTEXPR explicit f16(I i) : f16(static_cast<double>(i)) {}

  TP_HOST_DEVICE TP_FLOAT16_CONSTEXPR operator float() const { return detail::float_from_f16_bits(bits); }

  TP_HOST_DEVICE static constexpr f16 from_bits(std::uint16_t b) {
    f16 x{};
    x.bits = b;
    return x;
  }

  TP_HOST_DEVICE TP_FLOAT16_CONSTEXPR f16& operator+=(float y) { return *this = f16(float(*this) + y); }
  TP_HOST_DEVICE TP_FLOAT16_CONSTEXPR f16& operator-=(float y) { return *this = f16(float(*this) - y); }
  TP_HOST_DEVICE TP_FLOAT16_CONSTEXPR f16& operator*=(float y) { return *this = f16(float(*this) * y); }
  TP_HOST_DEVICE TP_FLOAT16_CONSTEXPR f16& operator/=(float y) { return *this = f16(float(*this) / y); }
  TP_HOST_DEVICE constexpr f16 operator-() const { return from_bits(static_cast<std::uint16_t>(bits ^ 0x8000u)); }
};

static_assert(sizeof(bf16) == 2 && sizeof(f16) == 2 && std::is_trivially_copyable_v<bf16> &&
              std::is_trivially_copyable_v<f16> && std::is_standard_layout_v<bf16>);

/// Whether T is one of the 16-bit floating types above.
template <class T>
inline constexpr bool is_float16_v =
    std::is_same_v<std::remove_cv_t<T>, bf16> || std::is_same_v<std::remove_cv_t<T>, f16>;

/// The type arithmetic on T runs in: float for the 16-bit types, T itself otherwise.
template <class T>
using accum_t = std::conditional_t<is_float16_v<T>, float, T>;

}  // namespace tp

/// numeric_limits as for __nv_bfloat16 and __half, so that generic code (-infinity as a running
/// maximum's start, epsilon for tolerances) reads them as it reads float's.
template <>
class std::numeric_limits<tp::bf16> {
 public:
  static constexpr bool is_specialized = true, is_signed = true, is_integer = false, is_exact = false,
                        has_infinity = true, has_quiet_NaN = true, is_iec559 = false;
  static constexpr int digits = 8, radix = 2, min_exponent = -125, max_exponent = 128;
  static constexpr std::float_round_style round_style = std::round_to_nearest;
  static constexpr tp::bf16 min() noexcept { return tp::bf16::from_bits(0x0080); }
  static constexpr tp::bf16 lowest() noexcept { return tp::bf16::from_bits(0xff7f); }
  static constexpr tp::bf16 max() noexcept { return tp::bf16::from_bits(0x7f7f); }
  static constexpr tp::bf16 epsilon() noexcept { return tp::bf16::from_bits(0x3c00); }  // 2^-7
  static constexpr tp::bf16 infinity() noexcept { return tp::bf16::from_bits(0x7f80); }
  static constexpr tp::bf16 quiet_NaN() noexcept { return tp::bf16::from_bits(0x7fc0); }
  static constexpr tp::bf16 denorm_min() noexcept { return tp::bf16::from_bits(0x0001); }
};

template <>
class std::numeric_limits<tp::f16> {
 public:
  static constexpr bool is_specialized = true, is_signed = true, is_integer = false, is_exact = false,
                        has_infinity = true, has_quiet_NaN = true, is_iec559 = true;
  static constexpr int digits = 11, radix = 2, min_exponent = -13, max_exponent = 16;
  static constexpr std::float_round_style round_style = std::round_to_nearest;
  static constexpr tp::f16 min() noexcept { return tp::f16::from_bits(0x0400); }
  static constexpr tp::f16 lowest() noexcept { return tp::f16::from_bits(0xfbff); }
  static constexpr tp::f16 max() noexcept { return tp::f16::from_bits(0x7bff); }
  static constexpr tp::f16 epsilon() noexcept { return tp::f16::from_bits(0x1400); }  // 2^-10
  static constexpr tp::f16 infinity() noexcept { return tp::f16::from_bits(0x7c00); }
  static constexpr tp::f16 quiet_NaN() noexcept { return tp::f16::from_bits(0x7e00); }
  static constexpr tp::f16 denorm_min() noexcept { return tp::f16::from_bits(0x0001); }
};

/// Printed as the float they hold, in error messages and test output.
template <>
struct fmt::formatter<tp::bf16> : fmt::formatter<float> {
  auto format(tp::bf16 x, format_context& ctx) const { return fmt::formatter<float>::format(float(x), ctx); }
};
template <>
struct fmt::formatter<tp::f16> : fmt::formatter<float> {
  auto format(tp::f16 x, format_context& ctx) const { return fmt::formatter<float>::format(float(x), ctx); }
};
