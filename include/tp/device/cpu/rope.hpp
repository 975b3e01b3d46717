#pragma once
/// The CPU side of tp/ops/rope.hpp: per token, the sines and cosines of its head_dim / 2 angles
/// once, then every head's pairs rotated in double.

#include <cstdint>
#include <vector>

#include "tp/detail/math.hpp"
#include "tp/device/cpu/cpu.hpp"

namespace tp::impl {

template <class T>
void rope(const Cpu&, MatrixView<T> x, ConstView<std::int64_t> positions, std::int64_t head_dim, double theta,
          bool inverse) {
  const std::int64_t half = head_dim / 2, heads = x.cols / head_dim;
  std::vector<double> sin(static_cast<std::size_t>(half)), cos(static_cast<std::size_t>(half));
  for (std::int64_t t = 0; t < x.rows; ++t) {
    const std::int64_t pos = positions(0, t);
    for (std::int64_t i = 0; i < half; ++i) {
      math::sincos_d(math::rope_angle(pos, i, head_dim, theta), sin[i], cos[i]);
      if (inverse) sin[i] = -sin[i];
    }
    T* row = x.row(t);
    for (std::int64_t h = 0; h < heads; ++h) {
      T* head = row + h * head_dim;
      for (std::int64_t i = 0; i < half; ++i) {
        double a = head[i], b = head[i + half];
        math::rope_rotate(a, b, sin[i], cos[i]);
        head[i] = static_cast<T>(a);
        head[i + half] = static_cast<T>(b);
      }
    }
  }
}

}  // namespace tp::impl
