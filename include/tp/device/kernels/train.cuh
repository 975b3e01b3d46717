#pragma once
/// The kernels of tp::Cuda's training members: the AdamW update, LayerNorm forward and backward
/// and the sum of squares behind gradient norms. They mirror the tp::Cpu members of the same
/// names; what the CPU sums in double is summed in double, in a fixed order (no atomics), so the
/// results are reproducible bit for bit.

#include <cstdint>

#include "tp/device/kernels/block_reduce.cuh"
#include "tp/device/kernels/convert.cuh"
#include "tp/device/kernels/elementwise.cuh"

namespace tp::kernels {

#define TP_GRID_STRIDE(i, n)                                                                                   \
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < (n);           \
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
#define TP_BLOCK_PER_ROW(r, rows) for (std::int64_t r = blockIdx.x; r < (rows); r += gridDim.x)
#define TP_THREAD_PER_COL(c, cols) for (std::int64_t c = threadIdx.x; c < (cols); c += blockDim.x)

/// The constants of one AdamW step, computed on the host in double (as tp::Cpu does) and rounded
/// to the accumulation type.
template <class A>
struct AdamWConstants {
  A decay, beta1, beta2, one_minus_beta1, one_minus_beta2, step_size, inv_sqrt_bc2, eps;
};

template <class T>
__global__ void adamw_step(T* p, std::int64_t ldp, const T* g, std::int64_t ldg, T* m, std::int64_t ldm, T* v,
                           std::int64_t ldv, Shape2 s, AdamWConstants<accum_t<T>> k) {
  using A = accum_t<T>;
  TP_GRID_STRIDE(i, s.rows * s.cols) {
    const std::int64_t r = i / s.cols, c = i % s.cols;
    const A grad = load(g[r * ldg + c]);
    const A mi = k.beta1 * load(m[r * ldm + c]) + k.one_minus_beta1 * grad;
    const A vi = k.beta2 * load(v[r * ldv + c]) + k.one_minus_beta2 * grad * grad;
    m[r * ldm + c] = store<T>(mi);
    v[r * ldv + c] = store<T>(vi);
    // The moments as stored (rounded to T), as the CPU reads them back.
    const A mr = load(m[r * ldm + c]), vr = load(v[r * ldv + c]);
    p[r * ldp + c] = store<T>(load(p[r * ldp + c]) * k.decay - k.step_size * mr / (sqrt(vr) * k.inv_sqrt_bc2 + k.eps));
  }
}

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
    const double rs = 1.0 / sqrt(block_sum(sq, scratch) / n + eps);
    if (threadIdx.x == 0) {
      mean[r * ldmean] = store_double<T>(mu);
      rstd[r * ldrstd] = store_double<T>(rs);
    }
    TP_THREAD_PER_COL(c, s.cols)
    y[r * ldy + c] = store_double<T>((static_cast<double>(load(xr[c])) - mu) * rs * static_cast<double>(load(gamma[c])) +
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
      dx[r * lddx + c] = store_double<T>(rs * (d - sum_d / n - xhat * sum_dx / n));
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

/// First pass of sum_squares: block b writes the double sum of squares of its grid-stride share
/// to partial[b]. The grid size is fixed by the caller, so the split (and the result) is too.
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

#undef TP_GRID_STRIDE
#undef TP_BLOCK_PER_ROW
#undef TP_THREAD_PER_COL

}  // namespace tp::kernels
