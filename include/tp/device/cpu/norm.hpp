#pragma once
/// The CPU loops of tp/ops/norm.hpp (LayerNorm, RMSNorm). Statistics in double; LayerNorm in two
/// passes. The 16-bit types are read into double and rounded once on the way out.

#include <cstdint>
#include <type_traits>
#include <vector>

#include "tp/detail/math.hpp"
#include "tp/device/cpu/cpu.hpp"
#include "tp/device/cpu/simd.hpp"

namespace tp::impl {

template <class T>
void layer_norm(const Cpu&, ConstView<T> x, ConstView<T> gamma, ConstView<T> beta, MatrixView<T> y, MatrixView<T> mean,
                MatrixView<T> rstd, double eps) {
  for (std::int64_t r = 0; r < x.rows; ++r) {
    const T* xr = x.row(r);
    double sum = 0, sq = 0;
    for (std::int64_t c = 0; c < x.cols; ++c) sum += xr[c];
    const double mu = sum / static_cast<double>(x.cols);
    for (std::int64_t c = 0; c < x.cols; ++c) sq += (xr[c] - mu) * (xr[c] - mu);
    const double rs = math::layer_norm_rstd(sq, static_cast<double>(x.cols), eps);
    mean(r, 0) = static_cast<T>(mu);
    rstd(r, 0) = static_cast<T>(rs);
    T* yr = y.row(r);
    for (std::int64_t c = 0; c < x.cols; ++c) yr[c] = static_cast<T>((xr[c] - mu) * rs * gamma.data[c] + beta.data[c]);
  }
}

/// dgamma and dbeta are accumulated row by row in accum_t<T> (T, or float for the 16-bit types,
/// whose own sums would stop growing after a few hundred rows).
template <class T>
void layer_norm_backward(const Cpu&, ConstView<T> x, ConstView<T> gamma, ConstView<T> mean, ConstView<T> rstd,
                         ConstView<T> dy, MatrixView<T> dx, MatrixView<T> dgamma_out, MatrixView<T> dbeta_out) {
  const double n = static_cast<double>(x.cols);
  std::vector<accum_t<T>> dgamma(dgamma_out.data, dgamma_out.data + x.cols),
      dbeta(dbeta_out.data, dbeta_out.data + x.cols);
  for (std::int64_t r = 0; r < x.rows; ++r) {
    const T* xr = x.row(r);
    const T* g = dy.row(r);
    const double mu = mean(r, 0), rs = rstd(r, 0);
    double sum_d = 0, sum_dx = 0;
    for (std::int64_t c = 0; c < x.cols; ++c) {
      const double xhat = (xr[c] - mu) * rs, d = static_cast<double>(g[c]) * gamma.data[c];
      sum_d += d;
      sum_dx += d * xhat;
      dgamma[c] += static_cast<accum_t<T>>(g[c] * xhat);
      dbeta[c] += g[c];
    }
    T* out = dx.row(r);
    for (std::int64_t c = 0; c < x.cols; ++c) {
      const double xhat = (xr[c] - mu) * rs, d = static_cast<double>(g[c]) * gamma.data[c];
      out[c] = static_cast<T>(math::layer_norm_dx(rs, d, xhat, sum_d, sum_dx, n));
    }
  }
  for (std::int64_t c = 0; c < x.cols; ++c) {
    dgamma_out.data[c] = static_cast<T>(dgamma[c]);
    dbeta_out.data[c] = static_cast<T>(dbeta[c]);
  }
}

namespace norm_detail {

/// One float row of RMSNorm, cloned per instruction set (tp/device/cpu/simd.hpp): the sum of
/// squares in double in a vector of partial sums (a single running sum does not vectorize), the
/// output as the scalar loop computes it, element by element in double. Returns rstd.
template <detail::simd::Isa I>
[[gnu::always_inline]] inline double rms_norm_row(const float* x, const float* gamma, float* y, std::int64_t n,
                                                  double eps) {
  using Doubles = detail::simd::Vec<double, I>;
  using Floats = detail::simd::VecBytes<float, detail::simd::kVectorBytes<I> / 2>;
  constexpr std::int64_t L = detail::simd::kLanes<double, I>;
  Doubles part{};
  std::int64_t c = 0;
  for (; c + L <= n; c += L) {
    Floats xf;
    detail::simd::load(xf, x + c);
    const Doubles xd = __builtin_convertvector(xf, Doubles);
    part += xd * xd;
  }
  double sq = 0;
  for (std::int64_t l = 0; l < L; ++l) sq += part[l];
  for (; c < n; ++c) sq += static_cast<double>(x[c]) * x[c];
  const double rs = math::rms_norm_rstd(sq, static_cast<double>(n), eps);
  for (c = 0; c < n; ++c) y[c] = static_cast<float>(x[c] * rs * gamma[c]);
  return rs;
}

}  // namespace norm_detail

/// float through the cloned row loop above (a scalar double loop was 2% of a 128-token prefill);
/// the other types row by row in double.
template <class T>
void rms_norm(const Cpu&, ConstView<T> x, ConstView<T> gamma, MatrixView<T> y, MatrixView<T> rstd, double eps) {
  if constexpr (std::is_same_v<T, float>) {
    const detail::simd::Isa isa = detail::simd::active_isa();
    TP_CPU_DISPATCH(isa, I, for (std::int64_t r = 0; r < x.rows; ++r) {
      rstd(r, 0) = static_cast<float>(norm_detail::rms_norm_row<I>(x.row(r), gamma.data, y.row(r), x.cols, eps));
    });
  } else {
    for (std::int64_t r = 0; r < x.rows; ++r) {
      const T* xr = x.row(r);
      double sq = 0;
      for (std::int64_t c = 0; c < x.cols; ++c) sq += static_cast<double>(xr[c]) * xr[c];
      const double rs = math::rms_norm_rstd(sq, static_cast<double>(x.cols), eps);
      rstd(r, 0) = static_cast<T>(rs);
      T* yr = y.row(r);
      for (std::int64_t c = 0; c < x.cols; ++c) yr[c] = static_cast<T>(xr[c] * rs * gamma.data[c]);
    }
  }
}

/// xhat from the saved (rounded) rstd, as the CUDA kernels; dgamma accumulated row by row in
/// accum_t<T>, as LayerNorm's.
template <class T>
void rms_norm_backward(const Cpu&, ConstView<T> x, ConstView<T> gamma, ConstView<T> rstd, ConstView<T> dy,
                       MatrixView<T> dx, MatrixView<T> dgamma_out) {
  const double n = static_cast<double>(x.cols);
  std::vector<accum_t<T>> dgamma(dgamma_out.data, dgamma_out.data + x.cols);
  for (std::int64_t r = 0; r < x.rows; ++r) {
    const T* xr = x.row(r);
    const T* g = dy.row(r);
    const double rs = rstd(r, 0);
    double sum_dx = 0;
    for (std::int64_t c = 0; c < x.cols; ++c) {
      const double xhat = xr[c] * rs, d = static_cast<double>(g[c]) * gamma.data[c];
      sum_dx += d * xhat;
      dgamma[c] += static_cast<accum_t<T>>(g[c] * xhat);
    }
    T* out = dx.row(r);
    for (std::int64_t c = 0; c < x.cols; ++c) {
      const double xhat = xr[c] * rs, d = static_cast<double>(g[c]) * gamma.data[c];
      out[c] = static_cast<T>(math::rms_norm_dx(rs, d, xhat, sum_dx, n));
    }
  }
  for (std::int64_t c = 0; c < x.cols; ++c) dgamma_out.data[c] = static_cast<T>(dgamma[c]);
}

}  // namespace tp::impl
