#pragma once
/// The AdamW update of a parameter shard.

#include <cmath>
#include <cstdint>

#include "tp/detail/shape_checks.hpp"
#include "tp/device/device.hpp"
#include "tp/ops/dispatch.hpp"

TP_OPS_DECLARE(adamw_step)

#ifdef TP_HAS_BLAS
#include "tp/device/cpu/adamw.hpp"
#endif
#if defined(TP_HAS_CUDA) && defined(__CUDACC__)
#include "tp/device/cuda/adamw.cuh"
#endif

namespace tp::ops {

/// One AdamW update (PyTorch's torch.optim.AdamW, decoupled weight decay): p -= lr * wd * p;
/// m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; p -= lr / (1 - b1^step) * m / (sqrt(v) /
/// sqrt(1 - b2^step) + eps). Element-wise, so a shard updates exactly as the same elements of the
/// full tensor would. The constants are computed in double; the update runs in T on the CPU and
/// in float for 16-bit T on the GPU.
template <class T, Device D>
void adamw_step(const D& dev, MatrixView<T> param, In<T> grad, MatrixView<T> exp_avg, MatrixView<T> exp_avg_sq,
                double lr, double beta1, double beta2, double eps, double weight_decay, std::int64_t step) {
  tp::detail::check_same_shape<T>(grad, param, "adamw_step");
  tp::detail::check_same_shape<T>(exp_avg, param, "adamw_step");
  tp::detail::check_same_shape<T>(exp_avg_sq, param, "adamw_step");
  TP_CHECK(step >= 1, "adamw_step: step must count from 1, got {}", step);
  TP_CHECK(std::isfinite(lr) && lr >= 0 && std::isfinite(eps) && eps > 0 && std::isfinite(weight_decay) &&
               weight_decay >= 0 && beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1,
           "adamw_step: lr {}, eps {}, weight_decay {} must be finite and non-negative (eps positive), betas ({}, {}) "
           "in [0, 1)",
           lr, eps, weight_decay, beta1, beta2);
  if (param.empty()) return;
  TP_OPS_DISPATCH(adamw_step, dev, param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay, step);
}

}  // namespace tp::ops
