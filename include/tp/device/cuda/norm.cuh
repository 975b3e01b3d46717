#pragma once
/// The CUDA side of tp/ops/norm.hpp: what the CPU sums in double is summed in double here too, in
/// a fixed order (no atomics), so the results are reproducible bit for bit.

#include <cmath>
#include <cstdint>

#include "tp/detail/math.hpp"
#include "tp/detail/shape_checks.hpp"
#include "tp/device/cuda/block_reduce.cuh"
#include "tp/device/cuda/cuda.hpp"
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

/// dgamma[c] += sum_r dy xhat, dbeta[c] += sum_r dy: one thread per column, rows in order, in
/// double, added to the stored gradient once (the CPU adds row by row in T: at most one rounding
/// per row more).
template <class T>
__global__ void layer_norm_backward_params(const T* x, std::int64_t ldx, Shape2 s, const T* mean, std::int64_t ldmean,
                                           const T* rstd, std::int64_t ldrstd, const T* dy, std::int64_t lddy,
                                           T* dgamma, T* dbeta) {
  TP_GRID_STRIDE(c, s.cols) {
    double dg = 0, db = 0;
    for (std::int64_t r = 0; r < s.rows; ++r) {
      const double xhat = (static_cast<double>(load(x[r * ldx + c])) - static_cast<double>(load(mean[r * ldmean]))) *
                          static_cast<double>(load(rstd[r * ldrstd]));
      const double g = static_cast<double>(load(dy[r * lddy + c]));
      dg += g * xhat;
      db += g;
    }
    dgamma[c] = store_double<T>(static_cast<double>(load(dgamma[c])) + dg);
    dbeta[c] = store_double<T>(static_cast<double>(load(dbeta[c])) + db);
  }
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

/// dgamma and dbeta: one thread per column over the rows in order (deterministic).
template <class T>
void layer_norm_backward(const Cuda& dev, ConstView<T> x, ConstView<T> gamma, ConstView<T> mean, ConstView<T> rstd,
                         ConstView<T> dy, MatrixView<T> dx, MatrixView<T> dgamma, MatrixView<T> dbeta) {
  kernels::launch(dev, "layer_norm_backward_dx", x.rows, x.cols, kernels::row_grid(x.rows), kernels::kRowThreads,
                  &kernels::layer_norm_backward_dx<T>, x.data, x.ld, kernels::Shape2{x.rows, x.cols}, gamma.data,
                  mean.data, mean.ld, rstd.data, rstd.ld, dy.data, dy.ld, dx.data, dx.ld);
  kernels::launch(dev, "layer_norm_backward_params", x.rows, x.cols, kernels::grid_for(x.cols), kernels::kThreads,
                  &kernels::layer_norm_backward_params<T>, x.data, x.ld, kernels::Shape2{x.rows, x.cols}, mean.data,
                  mean.ld, rstd.data, rstd.ld, dy.data, dy.ld, dgamma.data, dbeta.data);
}

}  // namespace tp::impl
