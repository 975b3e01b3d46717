#pragma once
/// LayerNorm and RMSNorm, forward and backward, over the rows of a [rows, hidden] matrix.

#include <cmath>
#include <cstdint>

#include "tp/detail/shape_checks.hpp"
#include "tp/device/device.hpp"
#include "tp/ops/dispatch.hpp"

TP_OPS_DECLARE(layer_norm)
TP_OPS_DECLARE(layer_norm_backward)
TP_OPS_DECLARE(rms_norm)
TP_OPS_DECLARE(rms_norm_backward)

#ifdef TP_HAS_BLAS
#include "tp/device/cpu/norm.hpp"
#endif
#if defined(TP_HAS_CUDA) && defined(__CUDACC__)
#include "tp/device/cuda/norm.cuh"
#endif

namespace tp::ops {

/// y = (x - mean) * rstd * gamma + beta per row, rstd = 1 / sqrt(var + eps) (biased variance, as
/// torch.nn.LayerNorm). Saves mean and rstd ([rows, 1], in T) for the backward; statistics in double.
template <class T, Device D>
void layer_norm(const D& dev, In<T> x, In<T> gamma, In<T> beta, MatrixView<T> y, MatrixView<T> mean, MatrixView<T> rstd,
                double eps) {
  tp::detail::check_same_shape<T>(x, y, "layer_norm");
  TP_CHECK(gamma.rows == 1 && gamma.cols == x.cols && beta.rows == 1 && beta.cols == x.cols,
           "layer_norm: gamma is {}x{} and beta {}x{}, input has {} columns", gamma.rows, gamma.cols, beta.rows,
           beta.cols, x.cols);
  TP_CHECK(mean.rows == x.rows && mean.cols == 1 && rstd.rows == x.rows && rstd.cols == 1,
           "layer_norm: mean is {}x{} and rstd {}x{}, expected {}x1", mean.rows, mean.cols, rstd.rows, rstd.cols,
           x.rows);
  TP_CHECK(x.cols > 0, "layer_norm: input has no columns");
  TP_CHECK(std::isfinite(eps) && eps > 0, "layer_norm: eps must be finite and positive, got {}", eps);
  if (x.rows == 0) return;
  TP_OPS_DISPATCH(layer_norm, dev, x, gamma, beta, y, mean, rstd, eps);
}

/// The backward from the saved mean and rstd: dx = rstd * (dxhat - mean(dxhat) - xhat *
/// mean(dxhat * xhat)) with dxhat = dy * gamma; accumulates dgamma += sum_rows(dy * xhat) and
/// dbeta += sum_rows(dy).
template <class T, Device D>
void layer_norm_backward(const D& dev, In<T> x, In<T> gamma, In<T> mean, In<T> rstd, In<T> dy, MatrixView<T> dx,
                         MatrixView<T> dgamma, MatrixView<T> dbeta) {
  tp::detail::check_same_shape<T>(x, dx, "layer_norm_backward");
  tp::detail::check_same_shape<T>(dy, dx, "layer_norm_backward");
  TP_CHECK(gamma.rows == 1 && gamma.cols == x.cols && dgamma.rows == 1 && dgamma.cols == x.cols && dbeta.rows == 1 &&
               dbeta.cols == x.cols,
           "layer_norm_backward: gamma {}x{}, dgamma {}x{}, dbeta {}x{}, input has {} columns", gamma.rows, gamma.cols,
           dgamma.rows, dgamma.cols, dbeta.rows, dbeta.cols, x.cols);
  TP_CHECK(mean.rows == x.rows && mean.cols == 1 && rstd.rows == x.rows && rstd.cols == 1,
           "layer_norm_backward: mean is {}x{} and rstd {}x{}, expected {}x1", mean.rows, mean.cols, rstd.rows,
           rstd.cols, x.rows);
  if (x.empty()) return;
  TP_OPS_DISPATCH(layer_norm_backward, dev, x, gamma, mean, rstd, dy, dx, dgamma, dbeta);
}

/// y = x * rstd * gamma per row, rstd = 1 / sqrt(mean(x^2) + eps) (Llama's LlamaRMSNorm: no mean
/// subtracted, no bias). Saves rstd ([rows, 1], in T) for the backward; statistics in double.
template <class T, Device D>
void rms_norm(const D& dev, In<T> x, In<T> gamma, MatrixView<T> y, MatrixView<T> rstd, double eps) {
  tp::detail::check_same_shape<T>(x, y, "rms_norm");
  TP_CHECK(gamma.rows == 1 && gamma.cols == x.cols, "rms_norm: gamma is {}x{}, input has {} columns", gamma.rows,
           gamma.cols, x.cols);
  TP_CHECK(rstd.rows == x.rows && rstd.cols == 1, "rms_norm: rstd is {}x{}, expected {}x1", rstd.rows, rstd.cols,
           x.rows);
  TP_CHECK(x.cols > 0, "rms_norm: input has no columns");
  TP_CHECK(std::isfinite(eps) && eps > 0, "rms_norm: eps must be finite and positive, got {}", eps);
  if (x.rows == 0) return;
  TP_OPS_DISPATCH(rms_norm, dev, x, gamma, y, rstd, eps);
}

/// The backward from the saved rstd: dx = rstd * (d - xhat * mean(d * xhat)) with d = dy * gamma
/// and xhat = x * rstd; accumulates dgamma += sum_rows(dy * xhat).
template <class T, Device D>
void rms_norm_backward(const D& dev, In<T> x, In<T> gamma, In<T> rstd, In<T> dy, MatrixView<T> dx,
                       MatrixView<T> dgamma) {
  tp::detail::check_same_shape<T>(x, dx, "rms_norm_backward");
  tp::detail::check_same_shape<T>(dy, dx, "rms_norm_backward");
  TP_CHECK(gamma.rows == 1 && gamma.cols == x.cols && dgamma.rows == 1 && dgamma.cols == x.cols,
           "rms_norm_backward: gamma {}x{}, dgamma {}x{}, input has {} columns", gamma.rows, gamma.cols, dgamma.rows,
           dgamma.cols, x.cols);
  TP_CHECK(rstd.rows == x.rows && rstd.cols == 1, "rms_norm_backward: rstd is {}x{}, expected {}x1", rstd.rows,
           rstd.cols, x.rows);
  if (x.empty()) return;
  TP_OPS_DISPATCH(rms_norm_backward, dev, x, gamma, rstd, dy, dx, dgamma);
}

}  // namespace tp::ops
