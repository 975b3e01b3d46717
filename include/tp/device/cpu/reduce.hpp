#pragma once
/// The CPU loops of tp/ops/reduce.hpp: y += x, x *= factor, the sum of squares.

#include <cstdint>

#include "tp/device/cpu/cpu.hpp"

namespace tp::impl {

template <class T>
void add(const Cpu&, ConstView<T> x, MatrixView<T> y) {
  for (std::int64_t r = 0; r < x.rows; ++r) {
    const T* xr = x.row(r);
    T* yr = y.row(r);
    for (std::int64_t c = 0; c < x.cols; ++c) yr[c] += xr[c];
  }
}

template <class T>
void scale(const Cpu&, MatrixView<T> x, T factor) {
  detail::scale_host(x, factor);
}

template <class T>
double sum_squares(const Cpu&, ConstView<T> x) {
  double s = 0;
  for (std::int64_t r = 0; r < x.rows; ++r)
    for (std::int64_t c = 0; c < x.cols; ++c) s += static_cast<double>(x(r, c)) * static_cast<double>(x(r, c));
  return s;
}

}  // namespace tp::impl
