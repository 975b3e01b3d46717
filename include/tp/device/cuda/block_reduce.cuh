#pragma once
/// Sums and maxima across one thread block through shared memory, in a fixed tree order: the same
/// inputs and block size give the same bits on every run (reproducible training), which atomics
/// would not.

#include "tp/device/cuda/launch.cuh"

namespace tp::kernels {

/// Threads per block of the row kernels (one block per row); a power of two for the tree.
inline constexpr int kRowThreads = 256;

/// Every thread passes its partial value; every thread gets the block's total. `scratch` holds
/// kRowThreads values; the call ends with a barrier, so the scratch may be reused at once.
template <class A>
__device__ A block_sum(A value, A* scratch) {
  scratch[threadIdx.x] = value;
  __syncthreads();
  for (int half = kRowThreads / 2; half > 0; half /= 2) {
    if (static_cast<int>(threadIdx.x) < half) scratch[threadIdx.x] += scratch[threadIdx.x + half];
    __syncthreads();
  }
  const A total = scratch[0];
  __syncthreads();
  return total;
}

template <class A>
__device__ A block_max(A value, A* scratch) {
  scratch[threadIdx.x] = value;
  __syncthreads();
  for (int half = kRowThreads / 2; half > 0; half /= 2) {
    if (static_cast<int>(threadIdx.x) < half) {
      const A other = scratch[threadIdx.x + half];
      if (scratch[threadIdx.x] < other) scratch[threadIdx.x] = other;
    }
    __syncthreads();
  }
  const A total = scratch[0];
  __syncthreads();
  return total;
}

}  // namespace tp::kernels
