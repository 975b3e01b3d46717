#pragma once
/// The CUDA side of tp/ops/activation.hpp: GELU and SwiGLU in the accumulation type (float for
/// 16-bit data), formulas from tp/detail/math.hpp.

#include <cstdint>

#include "tp/detail/math.hpp"
#include "tp/device/cuda/cuda.hpp"
#include "tp/device/cuda/launch.cuh"

namespace tp::kernels {

template <class T>
__global__ void gelu(const T* x, std::int64_t ldx, T* y, std::int64_t ldy, Shape2 s, Gelu kind) {
  TP_GRID_STRIDE(i, s.rows * s.cols) {
    const std::int64_t r = i / s.cols, c = i % s.cols;
    y[r * ldy + c] = store<T>(math::gelu_value(load(x[r * ldx + c]), kind));
  }
}

template <class T>
__global__ void gelu_backward(const T* x, std::int64_t ldx, const T* dy, std::int64_t lddy, T* dx, std::int64_t lddx,
                              Shape2 s, Gelu kind) {
  TP_GRID_STRIDE(i, s.rows * s.cols) {
    const std::int64_t r = i / s.cols, c = i % s.cols;
    dx[r * lddx + c] = store<T>(load(dy[r * lddy + c]) * math::gelu_slope(load(x[r * ldx + c]), kind));
  }
}

/// y[:, j] = silu(g[:, j]) * g[:, n + j]; s = {rows, n}.
template <class T>
__global__ void swiglu(const T* gu, std::int64_t ldg, T* y, std::int64_t ldy, Shape2 s) {
  TP_GRID_STRIDE(i, s.rows * s.cols) {
    const std::int64_t r = i / s.cols, c = i % s.cols;
    y[r * ldy + c] = store<T>(math::swiglu_value(load(gu[r * ldg + c]), load(gu[r * ldg + s.cols + c])));
  }
}

template <class T>
__global__ void swiglu_backward(const T* gu, std::int64_t ldg, const T* dy, std::int64_t lddy, T* dgu,
                                std::int64_t lddg, Shape2 s) {
  TP_GRID_STRIDE(i, s.rows * s.cols) {
    const std::int64_t r = i / s.cols, c = i % s.cols;
    accum_t<T> d_gate, d_up;
    math::swiglu_grad(load(gu[r * ldg + c]), load(gu[r * ldg + s.cols + c]), load(dy[r * lddy + c]), d_gate, d_up);
    dgu[r * lddg + c] = store<T>(d_gate);
    dgu[r * lddg + s.cols + c] = store<T>(d_up);
  }
}

}  // namespace tp::kernels

namespace tp::impl {

template <class T>
void gelu(const Cuda& dev, ConstView<T> x, MatrixView<T> y, Gelu kind) {
  kernels::launch(dev, "gelu", x.rows, x.cols, kernels::grid_for(x.size()), kernels::kThreads, &kernels::gelu<T>,
                  x.data, x.ld, y.data, y.ld, kernels::Shape2{x.rows, x.cols}, kind);
}

template <class T>
void gelu_backward(const Cuda& dev, ConstView<T> x, ConstView<T> dy, MatrixView<T> dx, Gelu kind) {
  kernels::launch(dev, "gelu_backward", x.rows, x.cols, kernels::grid_for(x.size()), kernels::kThreads,
                  &kernels::gelu_backward<T>, x.data, x.ld, dy.data, dy.ld, dx.data, dx.ld,
                  kernels::Shape2{x.rows, x.cols}, kind);
}

template <class T>
void swiglu(const Cuda& dev, ConstView<T> gate_up, MatrixView<T> y) {
  kernels::launch(dev, "swiglu", y.rows, y.cols, kernels::grid_for(y.size()), kernels::kThreads, &kernels::swiglu<T>,
                  gate_up.data, gate_up.ld, y.data, y.ld, kernels::Shape2{y.rows, y.cols});
}

template <class T>
void swiglu_backward(const Cuda& dev, ConstView<T> gate_up, ConstView<T> dy, MatrixView<T> d_gate_up) {
  kernels::launch(dev, "swiglu_backward", dy.rows, dy.cols, kernels::grid_for(dy.size()), kernels::kThreads,
                  &kernels::swiglu_backward<T>, gate_up.data, gate_up.ld, dy.data, dy.ld, d_gate_up.data, d_gate_up.ld,
                  kernels::Shape2{dy.rows, dy.cols});
}

}  // namespace tp::impl
