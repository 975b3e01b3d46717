#pragma once
/// The CPU loop of tp/ops/adamw.hpp: the update in T, the constants in double rounded to T.

#include <cstdint>

#include "tp/detail/math.hpp"
#include "tp/device/cpu/cpu.hpp"

namespace tp::impl {

template <class T>
void adamw_step(const Cpu&, MatrixView<T> param, ConstView<T> grad, MatrixView<T> exp_avg, MatrixView<T> exp_avg_sq,
                double lr, double beta1, double beta2, double eps, double weight_decay, std::int64_t step) {
  const auto k = math::adamw_constants<T>(lr, beta1, beta2, eps, weight_decay, step);
  for (std::int64_t r = 0; r < param.rows; ++r) {
    T* p = param.row(r);
    const T* g = grad.row(r);
    T* m = exp_avg.row(r);
    T* v = exp_avg_sq.row(r);
    for (std::int64_t c = 0; c < param.cols; ++c) {
      math::adamw_moments(k, g[c], m[c], v[c]);
      p[c] = math::adamw_param(k, p[c], m[c], v[c]);
    }
  }
}

}  // namespace tp::impl
