#pragma once
/// The kernel behind tp::Cuda::fill.

#include <cstdint>

#include "tp/device/cuda/launch.cuh"

namespace tp::kernels {

template <class T>
__global__ void fill(T* x, Shape2 s, std::int64_t ld, T value) {
  TP_GRID_STRIDE(i, s.rows * s.cols) x[(i / s.cols) * ld + i % s.cols] = value;
}

}  // namespace tp::kernels
