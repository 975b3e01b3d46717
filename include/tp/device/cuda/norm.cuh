#pragma once
/// The CUDA side of tp/ops/norm.hpp (LayerNorm, RMSNorm): what the CPU sums in double is summed in double here too, in
/// a fixed order (no atomics), so the results are reproducible bit for bit.

#include <cmath>
#include <cstdint>

#include "tp/detail/math.hpp"
#include "tp/detail/shape_checks.hpp"
#include "tp/device/cuda/block_reduce.cuh"
#include "tp/device/cuda/cuda.hpp"
#include "tp/device/cuda/column_reduce.cuh"
#include "tp/device/cuda/launch.cuh"

namespace tp::kernels {

/// One block per row: mean and biased variance in double (two passes, as on the CPU), mean and
/// rstd saved in T, y = (x - mean) rstd gamma + beta evaluated in double.
template <class T>
__global__ void layer_norm(const T* x, std::int64_t ldx, Shape2 s, const T* gamma, const T* beta, T* y,
                           std::int64_t ldy, T* mean, std::int64_t ldmean, T* rstd, std::int64_t ldrstd, double eps) {
  __shared__ double scratch[kRowThreads];
  const double n = static_cast<double>(s.cols);
  TP_BLOCK_PER_ROW(r, s.rows) {
    const T* xr = x + r * ldx;
    double sum = 0;
    TP_THREAD_PER_COL(c, s.cols) sum += static_cast<double>(load(xr[c]));
    const double mu = block_sum(sum, scratch) / n;
    double sq = 0;
    TP_THREAD_PER_COL(c, s.cols) {
      const double d = static_cast<double>(load(xr[c])) - mu;
      sq += d * d;
    }
    const double rs = math::layer_norm_rstd(block_sum(sq, scratch), n, eps);
    if (threadIdx.x == 0) {
      mean[r * ldmean] = store_double<T>(mu);
      rstd[r * ldrstd] = store_double<T>(rs);
    }
    TP_THREAD_PER_COL(c, s.cols)
    y[r * ldy + c] =
        store_double<T>((static_cast<double>(load(xr[c])) - mu) * rs * static_cast<double>(load(gamma[c])) +
                        static_cast<double>(load(beta[c])));
  }
}

/// dx = rstd (d - mean(d) - xhat mean(d xhat)), d = dy gamma, xhat from the saved (rounded) mean
/// and rstd as on the CPU; one block per row, sums in double.
template <class T>
__global__ void layer_norm_backward_dx(const T* x, std::int64_t ldx, Shape2 s, const T* gamma, const T* mean,
                                       std::int64_t ldmean, const T* rstd, std::int64_t ldrstd, const T* dy,
                                       std::int64_t lddy, T* dx, std::int64_t lddx) {
  __shared__ double scratch[kRowThreads];
  const double n = static_cast<double>(s.cols);
  TP_BLOCK_PER_ROW(r, s.rows) {
    const double mu = static_cast<double>(load(mean[r * ldmean])), rs = static_cast<double>(load(rstd[r * ldrstd]));
    double sum_d = 0, sum_dx = 0;
    TP_THREAD_PER_COL(c, s.cols) {
      const double xhat = (static_cast<double>(load(x[r * ldx + c])) - mu) * rs;
      const double d = static_cast<double>(load(dy[r * lddy + c])) * static_cast<double>(load(gamma[c]));
      sum_d += d;
      sum_dx += d * xhat;
    }
    sum_d = block_sum(sum_d, scratch);
    sum_dx = block_sum(sum_dx, scratch);
    TP_THREAD_PER_COL(c, s.cols) {
      const double xhat = (static_cast<double>(load(x[r * ldx + c])) - mu) * rs;
      const double d = static_cast<double>(load(dy[r * lddy + c])) * static_cast<double>(load(gamma[c]));
      dx[r * lddx + c] = store_double<T>(math::layer_norm_dx(rs, d, xhat, sum_d, sum_dx, n));
    }
  }
}

/// Pass 1 of dgamma[c] += sum_r dy xhat and dbeta[c] += sum_r dy (see column_reduce.cuh): this
/// row block's sums, in row order and in double, into partial_g / partial_b[block, c]. Pass 2 adds
/// them to the stored gradients, which are rounded once (the CPU adds row by row in T: at most one
/// rounding per row more).
template <class T>
__global__ void layer_norm_backward_params_partial(const T* x, std::int64_t ldx, Shape2 s, const T* mean,
                                                   std::int64_t ldmean, const T* rstd, std::int64_t ldrstd,
                                                   const T* dy, std::int64_t lddy, RowBlocks blocks, double* partial_g,
                                                   double* partial_b) {
  std::int64_t c, r0, r1;
  if (!row_block_range(blocks, s.rows, s.cols, c, r0, r1)) return;
  double dg = 0, db = 0;
  for (std::int64_t r = r0; r < r1; ++r) {
    const double xhat = (static_cast<double>(load(x[r * ldx + c])) - static_cast<double>(load(mean[r * ldmean]))) *
                        static_cast<double>(load(rstd[r * ldrstd]));
    const double g = static_cast<double>(load(dy[r * lddy + c]));
    dg += g * xhat;
    db += g;
  }
  const std::int64_t at = (blockIdx.x / blocks.col_tiles) * s.cols + c;
  partial_g[at] = dg;
  partial_b[at] = db;
}

/// RMSNorm, one block per row: the sum of squares in double, rstd saved in T, y = x rstd gamma
/// evaluated in double.
template <class T>
__global__ void rms_norm(const T* x, std::int64_t ldx, Shape2 s, const T* gamma, T* y, std::int64_t ldy, T* rstd,
                         std::int64_t ldrstd, double eps) {
  __shared__ double scratch[kRowThreads];
  const double n = static_cast<double>(s.cols);
  TP_BLOCK_PER_ROW(r, s.rows) {
    const T* xr = x + r * ldx;
    double sq = 0;
    TP_THREAD_PER_COL(c, s.cols) {
      const double v = static_cast<double>(load(xr[c]));
      sq += v * v;
    }
    const double rs = math::rms_norm_rstd(block_sum(sq, scratch), n, eps);
    if (threadIdx.x == 0) rstd[r * ldrstd] = store_double<T>(rs);
    TP_THREAD_PER_COL(c, s.cols)
    y[r * ldy + c] = store_double<T>(static_cast<double>(load(xr[c])) * rs * static_cast<double>(load(gamma[c])));
  }
}

/// RMSNorm's dx = rstd (d - xhat mean(d xhat)), d = dy gamma, xhat from the saved (rounded) rstd as
/// on the CPU; one block per row, sums in double.
template <class T>
__global__ void rms_norm_backward_dx(const T* x, std::int64_t ldx, Shape2 s, const T* gamma, const T* rstd,
                                     std::int64_t ldrstd, const T* dy, std::int64_t lddy, T* dx, std::int64_t lddx) {
  __shared__ double scratch[kRowThreads];
  const double n = static_cast<double>(s.cols);
  TP_BLOCK_PER_ROW(r, s.rows) {
    const double rs = static_cast<double>(load(rstd[r * ldrstd]));
    double sum_dx = 0;
    TP_THREAD_PER_COL(c, s.cols) {
      const double xhat = static_cast<double>(load(x[r * ldx + c])) * rs;
      sum_dx += static_cast<double>(load(dy[r * lddy + c])) * static_cast<double>(load(gamma[c])) * xhat;
    }
    sum_dx = block_sum(sum_dx, scratch);
    TP_THREAD_PER_COL(c, s.cols) {
      const double xhat = static_cast<double>(load(x[r * ldx + c])) * rs;
      const double d = static_cast<double>(load(dy[r * lddy + c])) * static_cast<double>(load(gamma[c]));
      dx[r * lddx + c] = store_double<T>(math::rms_norm_dx(rs, d, xhat, sum_dx, n));
    }
  }
}

/// Pass 1 of RMSNorm's dgamma[c] += sum_r dy xhat, as layer_norm_backward_params_partial.
template <class T>
__global__ void rms_norm_backward_gamma_partial(const T* x, std::int64_t ldx, Shape2 s, const T* rstd,
                                                std::int64_t ldrstd, const T* dy, std::int64_t lddy, RowBlocks blocks,
                                                double* partial) {
  std::int64_t c, r0, r1;
  if (!row_block_range(blocks, s.rows, s.cols, c, r0, r1)) return;
  double dg = 0;
  for (std::int64_t r = r0; r < r1; ++r)
    dg += static_cast<double>(load(dy[r * lddy + c])) * static_cast<double>(load(x[r * ldx + c])) *
          static_cast<double>(load(rstd[r * ldrstd]));
  partial[(blockIdx.x / blocks.col_tiles) * s.cols + c] = dg;
}

}  // namespace tp::kernels

namespace tp::impl {

template <class T>
void layer_norm(const Cuda& dev, ConstView<T> x, ConstView<T> gamma, ConstView<T> beta, MatrixView<T> y,
                MatrixView<T> mean, MatrixView<T> rstd, double eps) {
  kernels::launch(dev, "layer_norm", x.rows, x.cols, kernels::row_grid(x.rows), kernels::kRowThreads,
                  &kernels::layer_norm<T>, x.data, x.ld, kernels::Shape2{x.rows, x.cols}, gamma.data, beta.data, y.data,
                  y.ld, mean.data, mean.ld, rstd.data, rstd.ld, eps);
}

/// dgamma and dbeta: row-blocked, two passes (column_reduce.cuh; deterministic).
template <class T>
void layer_norm_backward(const Cuda& dev, ConstView<T> x, ConstView<T> gamma, ConstView<T> mean, ConstView<T> rstd,
                         ConstView<T> dy, MatrixView<T> dx, MatrixView<T> dgamma, MatrixView<T> dbeta) {
  kernels::launch(dev, "layer_norm_backward_dx", x.rows, x.cols, kernels::row_grid(x.rows), kernels::kRowThreads,
                  &kernels::layer_norm_backward_dx<T>, x.data, x.ld, kernels::Shape2{x.rows, x.cols}, gamma.data,
                  mean.data, mean.ld, rstd.data, rstd.ld, dy.data, dy.ld, dx.data, dx.ld);
  if (x.rows == 0 || x.cols == 0) return;
  const auto blocks = kernels::row_blocks(x.rows, x.cols);
  const Cuda::Scratch<double> partial(dev, 2 * blocks.count * x.cols);
  double* const partial_g = partial.data;
  double* const partial_b = partial.data + blocks.count * x.cols;
  kernels::launch(dev, "layer_norm_backward_params_partial", x.rows, x.cols,
                  static_cast<unsigned>(blocks.col_tiles * blocks.count), kernels::kThreads,
                  &kernels::layer_norm_backward_params_partial<T>, x.data, x.ld, kernels::Shape2{x.rows, x.cols},
                  mean.data, mean.ld, rstd.data, rstd.ld, dy.data, dy.ld, blocks, partial_g, partial_b);
  kernels::launch(dev, "layer_norm_backward_dgamma", blocks.count, x.cols, kernels::grid_for(x.cols), kernels::kThreads,
                  &kernels::add_column_partials<T, double>, partial_g, blocks.count, x.cols, dgamma.data);
  kernels::launch(dev, "layer_norm_backward_dbeta", blocks.count, x.cols, kernels::grid_for(x.cols), kernels::kThreads,
                  &kernels::add_column_partials<T, double>, partial_b, blocks.count, x.cols, dbeta.data);
}

template <class T>
void rms_norm(const Cuda& dev, ConstView<T> x, ConstView<T> gamma, MatrixView<T> y, MatrixView<T> rstd, double eps) {
  kernels::launch(dev, "rms_norm", x.rows, x.cols, kernels::row_grid(x.rows), kernels::kRowThreads,
                  &kernels::rms_norm<T>, x.data, x.ld, kernels::Shape2{x.rows, x.cols}, gamma.data, y.data, y.ld,
                  rstd.data, rstd.ld, eps);
}

/// dgamma: row-blocked, two passes (column_reduce.cuh; deterministic).
template <class T>
void rms_norm_backward(const Cuda& dev, ConstView<T> x, ConstView<T> gamma, ConstView<T> rstd, ConstView<T> dy,
                       MatrixView<T> dx, MatrixView<T> dgamma) {
  kernels::launch(dev, "rms_norm_backward_dx", x.rows, x.cols, kernels::row_grid(x.rows), kernels::kRowThreads,
                  &kernels::rms_norm_backward_dx<T>, x.data, x.ld, kernels::Shape2{x.rows, x.cols}, gamma.data,
                  rstd.data, rstd.ld, dy.data, dy.ld, dx.data, dx.ld);
  if (x.rows == 0 || x.cols == 0) return;
  const auto blocks = kernels::row_blocks(x.rows, x.cols);
  const Cuda::Scratch<double> partial(dev, blocks.count * x.cols);
  kernels::launch(dev, "rms_norm_backward_gamma_partial", x.rows, x.cols,
                  static_cast<unsigned>(blocks.col_tiles * blocks.count), kernels::kThreads,
                  &kernels::rms_norm_backward_gamma_partial<T>, x.data, x.ld, kernels::Shape2{x.rows, x.cols},
                  rstd.data, rstd.ld, dy.data, dy.ld, blocks, partial.data);
  kernels::launch(dev, "rms_norm_backward_dgamma", blocks.count, x.cols, kernels::grid_for(x.cols), kernels::kThreads,
                  &kernels::add_column_partials<T, double>, partial.data, blocks.count, x.cols, dgamma.data);
}

}  // namespace tp::impl
