#pragma once
/// Float GELU for the CPU loops without libm calls, so that they vectorize (std::erf and std::exp
/// are scalar calls, about a quarter of a 512-token MLP step). The CPU's float specialisation of
/// math::gelu_value / gelu_slope; double goes through tp/detail/math.hpp.

#include <algorithm>
#include <bit>
#include <cstdint>

#include "tp/core/ops.hpp"

namespace tp::detail {

/// sign(x) * min(|x|, limit), computed on the bit patterns: an integer min vectorizes, while a float
/// comparison (which may trap) keeps GCC from vectorizing the loop around it. A NaN comes out as
/// +-limit, but every caller multiplies the result by x again, so NaNs still propagate.
inline float clamp_abs(float x, float limit) {
  const auto bits = std::bit_cast<std::int32_t>(x);
  const std::int32_t mag = std::min(bits & 0x7fffffff, std::bit_cast<std::int32_t>(limit));
  return std::bit_cast<float>(mag | (bits & static_cast<std::int32_t>(0x80000000u)));
}

/// erf for float without a libm call, so that the GELU loops vectorize (std::erf is a scalar call,
/// about a quarter of a 512-token MLP step): a rational approximation on [-4, 4], beyond which erf
/// is +-1 in float. Absolute error below 5e-7 (measured against std::erf on a 1e-4 grid).
inline float erf_fast(float a) {
  const float x = clamp_abs(a, 4.f), x2 = x * x;
  float p = -2.72614225801306e-10f;
  p = p * x2 + 2.77068142495902e-08f;
  p = p * x2 - 2.10102402082508e-06f;
  p = p * x2 - 5.69250639462346e-05f;
  p = p * x2 - 7.34990630326855e-04f;
  p = p * x2 - 2.95459980854025e-03f;
  p = p * x2 - 1.60960333262415e-02f;
  float q = -1.45660718464996e-05f;
  q = q * x2 - 2.13374055278905e-04f;
  q = q * x2 - 1.68282697438203e-03f;
  q = q * x2 - 7.37332916720468e-03f;
  q = q * x2 - 1.42647390514189e-02f;
  return x * p / q;
}

/// exp for float without a libm call (Cephes' expf: 2^n times a polynomial in the remainder), a
/// few ulp; arguments are clamped to [-87, 87], where float's exp neither overflows nor goes
/// subnormal.
inline float exp_fast(float a) {
  const float x = clamp_abs(a, 87.f);
  const float n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;  // round to nearest, branch-free
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * (r * r) + r + 1.f;
  return e * std::bit_cast<float>((static_cast<std::int32_t>(n) + 127) << 23);
}

/// The float GELUs. The tanh form goes through x sigmoid(2u), free of the cancellation in
/// 1 + tanh(u) for negative x; the exact form keeps 1 + erf, whose absolute error (below 3e-7 |x|)
/// stays far under float rounding of the larger outputs around it.
inline float gelu_value_fast(float x, Gelu kind) {
  if (kind == Gelu::exact) return 0.5f * x * (1.f + erf_fast(x * 0.70710678118654752f));
  const float u = 0.79788456080286536f * (x + 0.044715f * x * x * x);
  return x / (1.f + exp_fast(-2.f * u));
}

inline float gelu_slope_fast(float x, Gelu kind) {
  if (kind == Gelu::exact)
    return 0.5f * (1.f + erf_fast(x * 0.70710678118654752f)) + x * 0.39894228040143268f * exp_fast(-0.5f * x * x);
  const float k = 0.79788456080286536f, u = k * (x + 0.044715f * x * x * x), s = 1.f / (1.f + exp_fast(-2.f * u));
  return s + 2.f * x * s * (1.f - s) * k * (1.f + 3.f * 0.044715f * x * x);
}

}  // namespace tp::detail
