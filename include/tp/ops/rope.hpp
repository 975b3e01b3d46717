#pragma once
/// Rotary position embeddings (RoPE) in Hugging Face's rotate-half convention, in place on
/// [tokens, heads * head_dim] (q or k after the projection): in every head, for i < head_dim / 2,
/// the pair (x[i], x[i + head_dim / 2]) turns by angle = positions[t] * theta^(-2i / head_dim):
///
///   (a, b) -> (a cos - b sin, b cos + a sin)
///
/// `inverse` turns by -angle. The rotation is orthogonal, so its backward is the inverse rotation
/// of the gradient: rope(dx, positions, head_dim, theta, true). Angles, sines and cosines are in
/// double (tp::math::rope_angle), the rotation in the device's accumulation type.
///
///   tp::ops::rope(dev, q, positions /*[1, tokens], device memory*/, 64, 10000.0, false);

#include <cstdint>

#include "tp/detail/math.hpp"
#include "tp/device/device.hpp"
#include "tp/ops/dispatch.hpp"

TP_OPS_DECLARE(rope)

#ifdef TP_HAS_BLAS
#include "tp/device/cpu/rope.hpp"
#endif
#if defined(TP_HAS_CUDA) && defined(__CUDACC__)
#include "tp/device/cuda/rope.cuh"
#endif

namespace tp::ops {

template <class T, Device D>
void rope(const D& dev, MatrixView<T> x, ConstView<std::int64_t> positions, std::int64_t head_dim, double theta,
          bool inverse) {
  TP_CHECK(head_dim > 0 && head_dim % 2 == 0 && x.cols % head_dim == 0,
           "rope: x is {}x{}, not whole heads of an even head_dim {}", x.rows, x.cols, head_dim);
  TP_CHECK(theta > 0, "rope: theta must be positive, got {}", theta);
  TP_CHECK(positions.rows == 1 && positions.cols == x.rows,
           "rope: positions are {}x{}, expected 1x{} (one per token of x)", positions.rows, positions.cols, x.rows);
  if (x.empty()) return;
  TP_OPS_DISPATCH(rope, dev, x, positions, head_dim, theta, inverse);
}

}  // namespace tp::ops
