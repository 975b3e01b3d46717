#pragma once
/// The CUDA side of tp/ops/reduce.hpp: y += x, x *= factor, and the sum of squares in two
/// fixed-shape passes (block partials, then one block over them): the same bits on every run.

#include <algorithm>
#include <cstdint>

#include "tp/device/cuda/block_reduce.cuh"
#include "tp/device/cuda/cuda.hpp"
#include "tp/device/cuda/launch.cuh"

namespace tp::kernels {

template <class T>
__global__ void add(const T* x, std::int64_t ldx, T* y, std::int64_t ldy, Shape2 s) {
  TP_GRID_STRIDE(i, s.rows * s.cols) {
    const std::int64_t r = i / s.cols, c = i % s.cols;
    y[r * ldy + c] = store<T>(load(y[r * ldy + c]) + load(x[r * ldx + c]));
  }
}

/// A zero factor writes zeros even over NaN and infinity, as BLAS does with beta = 0.
template <class T>
__global__ void scale(T* x, std::int64_t ld, Shape2 s, accum_t<T> factor) {
  TP_GRID_STRIDE(i, s.rows * s.cols) {
    T& v = x[(i / s.cols) * ld + i % s.cols];
    v = factor == accum_t<T>(0) ? store<T>(accum_t<T>(0)) : store<T>(load(v) * factor);
  }
}

/// First pass: block b writes the double sum of squares of its grid-stride share to partial[b].
/// The grid size is fixed by the caller, so the split (and the result) is too.
template <class T>
__global__ void sum_squares_partial(const T* x, std::int64_t ld, Shape2 s, double* partial) {
  __shared__ double scratch[kRowThreads];
  double acc = 0;
  TP_GRID_STRIDE(i, s.rows * s.cols) {
    const double v = static_cast<double>(load(x[(i / s.cols) * ld + i % s.cols]));
    acc += v * v;
  }
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

/// Second pass: one block sums the partials in a fixed order into partial[0].
template <class A>
__global__ void sum_partials(A* partial, int count) {
  __shared__ A scratch[kRowThreads];
  A acc = 0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) partial[0] = acc;
}

}  // namespace tp::kernels

namespace tp::impl {

template <class T>
void add(const Cuda& dev, ConstView<T> x, MatrixView<T> y) {
  kernels::launch(dev, "add", x.rows, x.cols, kernels::grid_for(x.size()), kernels::kThreads, &kernels::add<T>, x.data,
                  x.ld, y.data, y.ld, kernels::Shape2{x.rows, x.cols});
}

template <class T>
void scale(const Cuda& dev, MatrixView<T> x, T factor) {
  kernels::launch(dev, "scale", x.rows, x.cols, kernels::grid_for(x.size()), kernels::kThreads, &kernels::scale<T>,
                  x.data, x.ld, kernels::Shape2{x.rows, x.cols},
                  static_cast<kernels::accum_t<T>>(detail::to_double(factor)));
}

template <class T>
double sum_squares(const Cuda& dev, ConstView<T> x) {
  const unsigned blocks = std::min(kernels::grid_for(x.size()), 1024u);
  const Cuda::Scratch<double> partial(dev, blocks);
  kernels::launch(dev, "sum_squares_partial", x.rows, x.cols, blocks, kernels::kRowThreads,
                  &kernels::sum_squares_partial<T>, x.data, x.ld, kernels::Shape2{x.rows, x.cols}, partial.data);
  kernels::launch(dev, "sum_partials", x.rows, x.cols, 1, kernels::kRowThreads, &kernels::sum_partials<double>,
                  partial.data, static_cast<int>(blocks));
  double host = 0;
  TP_CUDA_CHECK(cudaMemcpyAsync(&host, partial.data, sizeof host, cudaMemcpyDeviceToHost, dev.stream()),
                "reading the sum of squares of a {}x{} matrix on device {}", x.rows, x.cols, dev.device());
  dev.synchronize();
  return host;
}

}  // namespace tp::impl
