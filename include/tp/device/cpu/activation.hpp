#pragma once
/// The CPU loops of tp/ops/activation.hpp (GELU, SwiGLU). Arguments are checked by the op.

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "tp/detail/math.hpp"
#include "tp/device/cpu/cpu.hpp"
#include "tp/device/cpu/fast_math.hpp"
#include "tp/device/cpu/simd.hpp"

namespace tp::impl {

namespace activation_detail {

/// The float GELU loops over one row, compiled per instruction set (tp/device/cpu/simd.hpp; the
/// compiler vectorizes them); the kind is hoisted out of the loop so that each loop body is
/// branch-free.
template <detail::simd::Isa, class T>
[[gnu::always_inline]] inline void gelu_row(const T* x, T* y, std::int64_t n, Gelu kind) {
  if (kind == Gelu::exact)
    for (std::int64_t c = 0; c < n; ++c) y[c] = detail::gelu_value_fast(x[c], Gelu::exact);
  else
    for (std::int64_t c = 0; c < n; ++c) y[c] = detail::gelu_value_fast(x[c], Gelu::tanh);
}

template <detail::simd::Isa, class T>
[[gnu::always_inline]] inline void gelu_backward_row(const T* x, const T* dy, T* dx, std::int64_t n, Gelu kind) {
  if (kind == Gelu::exact)
    for (std::int64_t c = 0; c < n; ++c) dx[c] = dy[c] * detail::gelu_slope_fast(x[c], Gelu::exact);
  else
    for (std::int64_t c = 0; c < n; ++c) dx[c] = dy[c] * detail::gelu_slope_fast(x[c], Gelu::tanh);
}

/// silu(gate) * up over one row in float, without a libm call, so that it vectorizes: gate / (1 +
/// exp(-gate)) * up with detail::exp_fast (a few ulp; exp's argument clamped to +-87, where the
/// result is gate times a factor below 1e-37 or within an ulp of 1). The libm-based double loop
/// took a tenth of a 128-token prefill of the 100 M Llama-style model (BENCHMARKS.md).
template <detail::simd::Isa>
[[gnu::always_inline]] inline void swiglu_row(const float* gate, const float* up, float* y, std::int64_t n) {
  for (std::int64_t c = 0; c < n; ++c) y[c] = gate[c] / (1.f + detail::exp_fast(-gate[c])) * up[c];
}

}  // namespace activation_detail

/// float uses branch-free erf/exp approximations that vectorize, and so do the 16-bit types, one
/// row at a time widened to float; double uses libm.
template <class T>
void gelu(const Cpu&, ConstView<T> x, MatrixView<T> y, Gelu kind) {
  [[maybe_unused]] const detail::simd::Isa isa = detail::simd::active_isa();
  std::vector<float> in, out;
  if constexpr (is_float16_v<T>) in.resize(static_cast<std::size_t>(x.cols)), out.resize(in.size());
  for (std::int64_t r = 0; r < x.rows; ++r) {
    if constexpr (std::is_same_v<T, float>) {
      TP_CPU_DISPATCH(isa, I, activation_detail::gelu_row<I, T>(x.row(r), y.row(r), x.cols, kind));
    } else if constexpr (is_float16_v<T>) {
      std::copy_n(x.row(r), x.cols, in.data());
      TP_CPU_DISPATCH(isa, I, activation_detail::gelu_row<I, float>(in.data(), out.data(), x.cols, kind));
      std::copy_n(out.data(), x.cols, y.row(r));
    } else {
      const T* xr = x.row(r);
      T* yr = y.row(r);
      for (std::int64_t c = 0; c < x.cols; ++c) yr[c] = static_cast<T>(math::gelu_value<double>(xr[c], kind));
    }
  }
}

template <class T>
void gelu_backward(const Cpu&, ConstView<T> x, ConstView<T> dy, MatrixView<T> dx, Gelu kind) {
  [[maybe_unused]] const detail::simd::Isa isa = detail::simd::active_isa();
  std::vector<float> in, grad, out;
  if constexpr (is_float16_v<T>)
    in.resize(static_cast<std::size_t>(x.cols)), grad.resize(in.size()), out.resize(in.size());
  for (std::int64_t r = 0; r < x.rows; ++r) {
    if constexpr (std::is_same_v<T, float>) {
      TP_CPU_DISPATCH(isa, I, activation_detail::gelu_backward_row<I, T>(x.row(r), dy.row(r), dx.row(r), x.cols, kind));
    } else if constexpr (is_float16_v<T>) {
      std::copy_n(x.row(r), x.cols, in.data());
      std::copy_n(dy.row(r), x.cols, grad.data());
      TP_CPU_DISPATCH(isa, I,
                      activation_detail::gelu_backward_row<I, float>(in.data(), grad.data(), out.data(), x.cols, kind));
      std::copy_n(out.data(), x.cols, dx.row(r));
    } else {
      const T *xr = x.row(r), *gr = dy.row(r);
      T* out = dx.row(r);
      for (std::int64_t c = 0; c < x.cols; ++c) out[c] = static_cast<T>(gr[c] * math::gelu_slope<double>(xr[c], kind));
    }
  }
}

/// SwiGLU: float through the vectorized row loop above; double and the 16-bit types in double,
/// rounded once.
template <class T>
void swiglu(const Cpu&, ConstView<T> gate_up, MatrixView<T> y) {
  const std::int64_t n = y.cols;
  [[maybe_unused]] const detail::simd::Isa isa = detail::simd::active_isa();
  for (std::int64_t r = 0; r < y.rows; ++r) {
    const T* g = gate_up.row(r);
    T* yr = y.row(r);
    if constexpr (std::is_same_v<T, float>) {
      TP_CPU_DISPATCH(isa, I, activation_detail::swiglu_row<I>(g, g + n, yr, n));
    } else {
      for (std::int64_t c = 0; c < n; ++c)
        yr[c] = static_cast<T>(math::swiglu_value<double>(static_cast<double>(g[c]), static_cast<double>(g[n + c])));
    }
  }
}

template <class T>
void swiglu_backward(const Cpu&, ConstView<T> gate_up, ConstView<T> dy, MatrixView<T> d_gate_up) {
  const std::int64_t n = dy.cols;
  for (std::int64_t r = 0; r < dy.rows; ++r) {
    const T* g = gate_up.row(r);
    const T* d = dy.row(r);
    T* o = d_gate_up.row(r);
    for (std::int64_t c = 0; c < n; ++c) {
      double d_gate = 0, d_up = 0;
      math::swiglu_grad<double>(g[c], g[n + c], d[c], d_gate, d_up);
      o[c] = static_cast<T>(d_gate);
      o[n + c] = static_cast<T>(d_up);
    }
  }
}

}  // namespace tp::impl
