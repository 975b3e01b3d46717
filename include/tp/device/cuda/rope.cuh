#pragma once
/// The CUDA side of tp/ops/rope.hpp: one thread per (token, head, pair); the angle's sine and
/// cosine in double (a float angle loses ~1e-7 pos radians), the rotation in the accumulation type.

#include <cstdint>

#include "tp/detail/math.hpp"
#include "tp/device/cuda/cuda.hpp"
#include "tp/device/cuda/launch.cuh"

namespace tp::kernels {

template <class T>
__global__ void rope(T* x, std::int64_t ld, std::int64_t tokens, std::int64_t heads, const std::int64_t* positions,
                     std::int64_t head_dim, double theta, bool inverse) {
  using A = accum_t<T>;
  const std::int64_t half = head_dim / 2;
  TP_GRID_STRIDE(n, tokens * heads * half) {
    const std::int64_t i = n % half, h = n / half % heads, t = n / (half * heads);
    double s, c;
    math::sincos_d(math::rope_angle(positions[t], i, head_dim, theta), s, c);
    T* head = x + t * ld + h * head_dim;
    A a = load(head[i]), b = load(head[i + half]);
    math::rope_rotate(a, b, static_cast<A>(inverse ? -s : s), static_cast<A>(c));
    head[i] = store<T>(a);
    head[i + half] = store<T>(b);
  }
}

}  // namespace tp::kernels

namespace tp::impl {

template <class T>
void rope(const Cuda& dev, MatrixView<T> x, ConstView<std::int64_t> positions, std::int64_t head_dim, double theta,
          bool inverse) {
  const std::int64_t heads = x.cols / head_dim, n = x.rows * heads * (head_dim / 2);
  kernels::launch(dev, "rope", x.rows, x.cols, kernels::grid_for(n), kernels::kThreads, &kernels::rope<T>, x.data, x.ld,
                  x.rows, heads, positions.data, head_dim, theta, inverse);
}

}  // namespace tp::impl
