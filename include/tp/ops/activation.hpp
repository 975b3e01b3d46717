#pragma once
/// Activations: GELU (exact or tanh) and SwiGLU, forward and backward.
///
///   tp::ops::gelu(dev, x, y, tp::Gelu::exact);   // y = gelu(x)

#include "tp/detail/shape_checks.hpp"
#include "tp/device/device.hpp"
#include "tp/ops/dispatch.hpp"

TP_OPS_DECLARE(gelu)
TP_OPS_DECLARE(gelu_backward)
TP_OPS_DECLARE(swiglu)
TP_OPS_DECLARE(swiglu_backward)

#ifdef TP_HAS_BLAS
#include "tp/device/cpu/activation.hpp"
#endif
#if defined(TP_HAS_CUDA) && defined(__CUDACC__)
#include "tp/device/cuda/activation.cuh"
#endif

namespace tp::ops {

namespace detail {
template <class T>
void check_swiglu(ConstView<T> gate_up, std::int64_t rows, std::int64_t cols, const char* op) {
  TP_CHECK(gate_up.rows == rows && gate_up.cols == 2 * cols, "{}: gate_up is {}x{}, expected {}x{} for {}x{}", op,
           gate_up.rows, gate_up.cols, rows, 2 * cols, rows, cols);
}
}  // namespace detail

/// y = gelu(x)
template <class T, Device D>
void gelu(const D& dev, In<T> x, MatrixView<T> y, Gelu kind) {
  tp::detail::check_same_shape<T>(x, y, "gelu");
  TP_CHECK(valid(kind), "gelu: kind {} is not a tp::Gelu", static_cast<unsigned>(kind));
  if (x.empty()) return;
  TP_OPS_DISPATCH(gelu, dev, x, y, kind);
}

/// dx = dy * gelu'(x)
template <class T, Device D>
void gelu_backward(const D& dev, In<T> x, In<T> dy, MatrixView<T> dx, Gelu kind) {
  tp::detail::check_same_shape<T>(x, dx, "gelu_backward");
  tp::detail::check_same_shape<T>(dy, dx, "gelu_backward");
  TP_CHECK(valid(kind), "gelu_backward: kind {} is not a tp::Gelu", static_cast<unsigned>(kind));
  if (x.empty()) return;
  TP_OPS_DISPATCH(gelu_backward, dev, x, dy, dx, kind);
}

/// Gate and up side by side in one [rows, 2n] matrix, as the merged column layer leaves them:
/// y[:, j] = silu(gate_up[:, j]) * gate_up[:, n + j], with y [rows, n].
template <class T, Device D>
void swiglu(const D& dev, In<T> gate_up, MatrixView<T> y) {
  detail::check_swiglu<T>(gate_up, y.rows, y.cols, "swiglu");
  if (y.empty()) return;
  TP_OPS_DISPATCH(swiglu, dev, gate_up, y);
}

/// d gate_up from dy [rows, n]: d gate = dy * up * silu'(gate), d up = dy * silu(gate).
template <class T, Device D>
void swiglu_backward(const D& dev, In<T> gate_up, In<T> dy, MatrixView<T> d_gate_up) {
  detail::check_swiglu<T>(gate_up, dy.rows, dy.cols, "swiglu_backward");
  tp::detail::check_same_shape<T>(gate_up, d_gate_up, "swiglu_backward");
  if (dy.empty()) return;
  TP_OPS_DISPATCH(swiglu_backward, dev, gate_up, dy, d_gate_up);
}

}  // namespace tp::ops
