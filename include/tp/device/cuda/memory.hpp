#pragma once
/// Device memory for tp::Cuda and its cuBLASLt workspace: stream-ordered (cudaMallocAsync and
/// cudaFreeAsync on the device's default pool) where the device supports memory pools, plain
/// cudaMalloc and cudaFree where it does not (some virtualised GPUs report
/// cudaDevAttrMemoryPoolsSupported = 0, and every cudaMallocAsync there fails). cudaFree waits
/// for the device, so a buffer is never freed under work still queued on a stream; it only costs
/// the overlap that the pool keeps.

#ifndef TP_HAS_CUDA
#error "tp/device/cuda/memory.hpp needs the tp::cuda CMake component: target_link_libraries(... tp::cuda)"
#endif

#include <cuda_runtime_api.h>

#include <cstddef>

#include "tp/device/cuda/error.hpp"

namespace tp::detail {

/// Whether `device` has stream-ordered memory pools; false too when the attribute cannot be read.
inline bool memory_pools_supported(int device) noexcept {
  int supported = 0;
  const cudaError_t status = cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, device);
  discard_cuda_status(status);
  return status == cudaSuccess && supported != 0;
}

/// `bytes` of device memory, ordered on `stream` when `pooled`; the status as the runtime gives it.
inline cudaError_t device_malloc(void** p, std::size_t bytes, cudaStream_t stream, bool pooled) noexcept {
  return pooled ? cudaMallocAsync(p, bytes, stream) : cudaMalloc(p, bytes);
}

/// Frees what device_malloc returned, after the work queued on `stream` when `pooled`. A failure
/// cannot be reported (this runs in destructors) and is discarded.
inline void device_free(void* p, cudaStream_t stream, bool pooled) noexcept {
  if (p != nullptr) discard_cuda_status(pooled ? cudaFreeAsync(p, stream) : cudaFree(p));
}

}  // namespace tp::detail
