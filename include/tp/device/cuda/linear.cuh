#pragma once
/// The CUDA side of tp/ops/linear.hpp: bias kernels, and GEMMs with a cuBLASLt epilogue (double
/// has none in cuBLASLt: its gemm_bias is a GEMM then the bias kernel).

#include <cstdint>
#include <type_traits>

#include "tp/device/cuda/cuda.hpp"
#include "tp/device/cuda/launch.cuh"

namespace tp::kernels {

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

}  // namespace tp::kernels

namespace tp::impl {

template <class T>
void add_bias(const Cuda& dev, MatrixView<T> y, ConstView<T> bias) {
  kernels::launch(dev, "add_bias", y.rows, y.cols, kernels::grid_for(y.size()), kernels::kThreads,
                  &kernels::add_bias<T>, y.data, y.ld, kernels::Shape2{y.rows, y.cols}, bias.data);
}

template <class T>
void add_bias_grad(const Cuda& dev, ConstView<T> dy, MatrixView<T> db) {
  kernels::launch(dev, "add_bias_grad", dy.rows, dy.cols, kernels::grid_for(dy.cols), kernels::kThreads,
                  &kernels::add_bias_grad<T>, dy.data, dy.ld, kernels::Shape2{dy.rows, dy.cols}, db.data);
}

template <class T>
void gemm_bias(const Cuda& dev, Op op_a, Op op_b, T alpha, ConstView<T> a, ConstView<T> b, T beta, MatrixView<T> c,
               ConstView<T> bias) {
  if constexpr (std::is_same_v<T, double>) {
    dev.gemm<T>(op_a, op_b, alpha, a, b, beta, c);
    if (!c.empty()) add_bias(dev, c, bias);
  } else {
    dev.gemm_ex<T>(op_a, op_b, detail::to_double(alpha), a, b, detail::to_double(beta), c,
                   EpilogueArgs<T>{.kind = Epilogue::bias, .bias = bias.data});
  }
}

template <class T>
requires(!std::is_same_v<T, double>) void gemm_epilogue(const Cuda& dev, Op op_a, Op op_b, T alpha, ConstView<T> a,
                                                        ConstView<T> b, T beta, MatrixView<T> c,
                                                        const EpilogueArgs<T>& epilogue) {
  dev.gemm_ex<T>(op_a, op_b, detail::to_double(alpha), a, b, detail::to_double(beta), c, epilogue);
}

}  // namespace tp::impl
