#pragma once
/// The CUDA side of tp/ops/linear.hpp: bias kernels, and GEMMs with a cuBLASLt epilogue (double
/// has none in cuBLASLt: its gemm_bias is a GEMM then the bias kernel).

#include <cstdint>
#include <memory>
#include <type_traits>

#include "tp/device/cuda/column_reduce.cuh"
#include "tp/device/cuda/cuda.hpp"
#include "tp/device/cuda/launch.cuh"
#include "tp/device/packed_weight.hpp"

namespace tp::kernels {

/// y[r, :] += bias
template <class T>
__global__ void add_bias(T* y, std::int64_t ld, Shape2 s, const T* bias) {
  TP_GRID_STRIDE(i, s.rows * s.cols) {
    const std::int64_t r = i / s.cols, c = i % s.cols;
    y[r * ld + c] = store<T>(load(y[r * ld + c]) + load(bias[c]));
  }
}

/// Pass 1 of db[c] += sum_r dy[r, c] (see column_reduce.cuh): partial[block, c] = the sum of
/// this row block's dy[r, c], in row order; a warp reads consecutive columns of a row (coalesced).
template <class T>
__global__ void add_bias_grad_partial(const T* dy, std::int64_t ld, Shape2 s, RowBlocks blocks, accum_t<T>* partial) {
  std::int64_t c, r0, r1;
  if (!row_block_range(blocks, s.rows, s.cols, c, r0, r1)) return;
  accum_t<T> acc = 0;
  for (std::int64_t r = r0; r < r1; ++r) acc += load(dy[r * ld + c]);
  partial[(blockIdx.x / blocks.col_tiles) * s.cols + c] = acc;
}

}  // namespace tp::kernels

namespace tp::impl {

template <class T>
void add_bias(const Cuda& dev, MatrixView<T> y, ConstView<T> bias) {
  kernels::launch(dev, "add_bias", y.rows, y.cols, kernels::grid_for(y.size()), kernels::kThreads,
                  &kernels::add_bias<T>, y.data, y.ld, kernels::Shape2{y.rows, y.cols}, bias.data);
}

/// Row-blocked, two passes (column_reduce.cuh): the rows of dy are summed in parallel too.
template <class T>
void add_bias_grad(const Cuda& dev, ConstView<T> dy, MatrixView<T> db) {
  if (dy.rows == 0 || dy.cols == 0) return;
  using A = kernels::accum_t<T>;
  const auto blocks = kernels::row_blocks(dy.rows, dy.cols);
  const Cuda::Scratch<A> partial(dev, blocks.count * dy.cols);
  kernels::launch(dev, "add_bias_grad_partial", dy.rows, dy.cols, static_cast<unsigned>(blocks.col_tiles * blocks.count),
                  kernels::kThreads, &kernels::add_bias_grad_partial<T>, dy.data, dy.ld,
                  kernels::Shape2{dy.rows, dy.cols}, blocks, partial.data);
  kernels::launch(dev, "add_bias_grad_sum", blocks.count, dy.cols, kernels::grid_for(dy.cols), kernels::kThreads,
                  &kernels::add_column_partials<T, A>, partial.data, blocks.count, dy.cols, db.data);
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

/// The linear layer's forward and backward as GEMMs: cuBLASLt reaches the bandwidth at few tokens
/// on its own, so there is no streaming kernel here (tp::Cpu has one).
template <class T>
void linear_forward(const Cuda& dev, ConstView<T> x, ConstView<T> w, ConstView<T> bias, MatrixView<T> y) {
  if (bias.empty())
    dev.gemm<T>(Op::n, Op::t, T(1), x, w, T(0), y);
  else
    gemm_bias(dev, Op::n, Op::t, T(1), x, w, T(0), y, bias);
}

/// cuBLASLt reads the [out, in] weight as it is: packing holds no copy (PackedWeight's primary
/// template), and the packed forward is the plain one. Both exist so that tp::ops finds an
/// overload for Cuda (nvcc does not take a call to the deleted placeholder as "no overload").
template <class T>
PackedWeight<T, Cuda> pack_weight(const std::shared_ptr<Cuda>&, ConstView<T> w) {
  return PackedWeight<T, Cuda>(w);
}

template <class T>
void linear_forward_packed(const Cuda& dev, ConstView<T> x, ConstView<T> w, const PackedWeight<T, Cuda>&,
                           ConstView<T> bias, MatrixView<T> y) {
  linear_forward(dev, x, w, bias, y);
}

template <class T>
void linear_backward(const Cuda& dev, ConstView<T> dy, ConstView<T> x, ConstView<T> w, T beta_dx, MatrixView<T> dx,
                     T beta_dw, MatrixView<T> dw) {
  dev.gemm<T>(Op::n, Op::n, T(1), dy, w, beta_dx, dx);
  dev.gemm<T>(Op::t, Op::n, T(1), dy, x, beta_dw, dw);
}

}  // namespace tp::impl
