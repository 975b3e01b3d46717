#pragma once
/// The CUDA side of tp/ops/adamw.hpp: constants in double on the host, the update in float for
/// float and 16-bit T (in double for double), formulas from tp/detail/math.hpp.

#include <cstdint>

#include "tp/detail/math.hpp"
#include "tp/device/cuda/cuda.hpp"
#include "tp/device/cuda/launch.cuh"

namespace tp::kernels {

template <class T>
__global__ void adamw_step(T* p, std::int64_t ldp, const T* g, std::int64_t ldg, T* m, std::int64_t ldm, T* v,
                           std::int64_t ldv, Shape2 s, math::AdamWConstants<accum_t<T>> k) {
  using A = accum_t<T>;
  TP_GRID_STRIDE(i, s.rows * s.cols) {
    const std::int64_t r = i / s.cols, c = i % s.cols;
    A mi = load(m[r * ldm + c]), vi = load(v[r * ldv + c]);
    math::adamw_moments(k, load(g[r * ldg + c]), mi, vi);
    m[r * ldm + c] = store<T>(mi);
    v[r * ldv + c] = store<T>(vi);
    // The moments as stored (rounded to T), as the CPU reads them back.
    p[r * ldp + c] = store<T>(math::adamw_param(k, load(p[r * ldp + c]), load(m[r * ldm + c]), load(v[r * ldv + c])));
  }
}

}  // namespace tp::kernels

namespace tp::impl {

template <class T>
void adamw_step(const Cuda& dev, MatrixView<T> param, ConstView<T> grad, MatrixView<T> exp_avg,
                MatrixView<T> exp_avg_sq, double lr, double beta1, double beta2, double eps, double weight_decay,
                std::int64_t step) {
  const auto k = math::adamw_constants<kernels::accum_t<T>>(lr, beta1, beta2, eps, weight_decay, step);
  kernels::launch(dev, "adamw_step", param.rows, param.cols, kernels::grid_for(param.size()), kernels::kThreads,
                  &kernels::adamw_step<T>, param.data, param.ld, grad.data, grad.ld, exp_avg.data, exp_avg.ld,
                  exp_avg_sq.data, exp_avg_sq.ld, kernels::Shape2{param.rows, param.cols}, k);
}

}  // namespace tp::impl
