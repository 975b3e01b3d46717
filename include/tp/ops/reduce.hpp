#pragma once
/// Whole-matrix arithmetic: y += x, x *= factor, and the sum of squares behind gradient norms.

#include <cstdint>

#include "tp/detail/shape_checks.hpp"
#include "tp/device/device.hpp"
#include "tp/ops/dispatch.hpp"

TP_OPS_DECLARE(add)
TP_OPS_DECLARE(scale)
TP_OPS_DECLARE(sum_squares)

#ifdef TP_HAS_BLAS
#include "tp/device/cpu/reduce.hpp"
#endif
#if defined(TP_HAS_CUDA) && defined(__CUDACC__)
#include "tp/device/cuda/reduce.cuh"
#endif

namespace tp::ops {

/// y += x
template <class T, Device D>
void add(const D& dev, In<T> x, MatrixView<T> y) {
  tp::detail::check_same_shape<T>(x, y, "add");
  if (x.empty()) return;
  TP_OPS_DISPATCH(add, dev, x, y);
}

/// x *= factor; a zero factor writes zeros even over NaN and infinity, as BLAS does with beta = 0.
template <class T, Device D>
void scale(const D& dev, MatrixView<T> x, std::type_identity_t<T> factor) {
  if (x.empty()) return;
  TP_OPS_DISPATCH(scale, dev, x, factor);
}

/// Sum of squares of the elements, in double: for gradient norms (clipping, logging). Returns to
/// the host, so a device implementation waits for its stream; the same bits on every run.
template <class T, Device D>
double sum_squares(const D& dev, In<T> x) {
  if (x.empty()) return 0.0;
  TP_OPS_DISPATCH(sum_squares, dev, x);
}

}  // namespace tp::ops
