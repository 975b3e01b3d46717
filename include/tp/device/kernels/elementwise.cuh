#pragma once
/// The element-wise kernels of tp::Cuda. Every kernel walks a row-major view (rows, cols, ld)
/// with a grid-stride loop over rows * cols, so strided views (column blocks) need no copy.

#include <cstdint>

#include "tp/core/ops.hpp"
#include "tp/device/kernels/convert.cuh"

namespace tp::kernels {

struct Shape2 {
  std::int64_t rows, cols;
};

#define TP_GRID_STRIDE(i, n) \
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < (n); i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)

template <class T>
__global__ void fill(T* x, Shape2 s, std::int64_t ld, T value) {
  TP_GRID_STRIDE(i, s.rows * s.cols) x[(i / s.cols) * ld + i % s.cols] = value;
}

/// y += x
template <class T>
__global__ void add(const T* x, std::int64_t ldx, T* y, std::int64_t ldy, Shape2 s) {
  TP_GRID_STRIDE(i, s.rows * s.cols) {
    const std::int64_t r = i / s.cols, c = i % s.cols;
    y[r * ldy + c] = store<T>(load(y[r * ldy + c]) + load(x[r * ldx + c]));
  }
}

/// x *= factor; a zero factor writes zeros even over NaN and infinity, as BLAS does with beta = 0.
template <class T>
__global__ void scale(T* x, std::int64_t ld, Shape2 s, accum_t<T> factor) {
  TP_GRID_STRIDE(i, s.rows * s.cols) {
    T& v = x[(i / s.cols) * ld + i % s.cols];
    v = factor == accum_t<T>(0) ? store<T>(accum_t<T>(0)) : store<T>(load(v) * factor);
  }
}

/// y[r, :] += bias
template <class T>
__global__ void add_bias(T* y, std::int64_t ld, Shape2 s, const T* bias) {
  TP_GRID_STRIDE(i, s.rows * s.cols) {
    const std::int64_t r = i / s.cols, c = i % s.cols;
    y[r * ld + c] = store<T>(load(y[r * ld + c]) + load(bias[c]));
  }
}

/// db[c] += sum_r dy[r, c]: one thread per column, so a warp reads consecutive columns of a row
/// (coalesced) and every sum is in row order (deterministic).
template <class T>
__global__ void add_bias_grad(const T* dy, std::int64_t ld, Shape2 s, T* db) {
  TP_GRID_STRIDE(c, s.cols) {
    accum_t<T> acc = 0;
    for (std::int64_t r = 0; r < s.rows; ++r) acc += load(dy[r * ld + c]);
    db[c] = store<T>(load(db[c]) + acc);
  }
}

/// GELU in the cancellation-free forms tp::Cpu uses: 1 + erf(z) and 1 + tanh(u) lose every digit
/// for negative x (1 + tanh(-3) = 0.0037), erfc(-z) and 2 sigmoid(2u) do not.
template <class A>
__device__ __forceinline__ A gelu_value(A x, Gelu kind) {
  if (kind == Gelu::exact) return A(0.5) * x * erfc(-x * A(0.70710678118654752));
  const A u = A(0.79788456080286536) * (x + A(0.044715) * x * x * x);
  return x / (A(1) + exp(A(-2) * u));
}

/// Phi(x) + x phi(x), or s + 2 x s (1 - s) u' with s = sigmoid(2u): the same stable forms.
template <class A>
__device__ __forceinline__ A gelu_slope(A x, Gelu kind) {
  if (kind == Gelu::exact)
    return A(0.5) * erfc(-x * A(0.70710678118654752)) + x * A(0.39894228040143268) * exp(A(-0.5) * x * x);
  const A k = A(0.79788456080286536), u = k * (x + A(0.044715) * x * x * x), s = A(1) / (A(1) + exp(A(-2) * u));
  return s + A(2) * x * s * (A(1) - s) * k * (A(1) + A(3 * 0.044715) * x * x);
}

template <class T>
__global__ void gelu(const T* x, std::int64_t ldx, T* y, std::int64_t ldy, Shape2 s, Gelu kind) {
  TP_GRID_STRIDE(i, s.rows * s.cols) {
    const std::int64_t r = i / s.cols, c = i % s.cols;
    y[r * ldy + c] = store<T>(gelu_value(load(x[r * ldx + c]), kind));
  }
}

template <class T>
__global__ void gelu_backward(const T* x, std::int64_t ldx, const T* dy, std::int64_t lddy, T* dx, std::int64_t lddx,
                              Shape2 s, Gelu kind) {
  TP_GRID_STRIDE(i, s.rows * s.cols) {
    const std::int64_t r = i / s.cols, c = i % s.cols;
    dx[r * lddx + c] = store<T>(load(dy[r * lddy + c]) * gelu_slope(load(x[r * ldx + c]), kind));
  }
}

#undef TP_GRID_STRIDE

}  // namespace tp::kernels
