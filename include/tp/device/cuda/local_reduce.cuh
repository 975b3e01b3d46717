#pragma once
/// dst[i] = op over q of srcs[q][offset + i]: the reduction LocalCommunicator runs on device
/// memory. Sources are read in rank order and accumulated in float for 16-bit types, so results
/// are deterministic; dst may alias srcs[q] + offset (each element is read before it is written).

#include <cstddef>
#include <cstdint>

#include "tp/core/dtype.hpp"
#include "tp/device/cuda/launch.cuh"

namespace tp::kernels {

/// Up to this many ranks share one kernel launch (the pointers travel as a kernel argument).
inline constexpr int kMaxReduceSources = 64;

struct Sources {
  const void* ptr[kMaxReduceSources];
};

template <class T>
__global__ void reduce_sources(Sources srcs, int n, std::size_t offset, std::size_t count, T* dst, ReduceOp op) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    accum_t<T> acc = load(static_cast<const T*>(srcs.ptr[0])[offset + i]);
    for (int q = 1; q < n; ++q) {
      const accum_t<T> v = load(static_cast<const T*>(srcs.ptr[q])[offset + i]);
      switch (op) {
        case ReduceOp::sum:
          acc = acc + v;
          break;
        case ReduceOp::prod:
          acc = acc * v;
          break;
        case ReduceOp::min:
          acc = v < acc ? v : acc;
          break;
        case ReduceOp::max:
          acc = acc < v ? v : acc;
          break;
      }
    }
    dst[i] = store<T>(acc);
  }
}

}  // namespace tp::kernels
