#pragma once
/// Converts CUDA runtime and cuBLASLt statuses into tp::CudaError, naming the call and what it was
/// doing (shapes, bytes), so that a failure on a GPU reads like any other tp error.

#ifndef TP_HAS_CUDA
#error "tp/device/cuda/error.hpp needs the tp::cuda CMake component: target_link_libraries(... tp::cuda)"
#endif

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <string>

#include "tp/core/error.hpp"

namespace tp::detail {

inline std::string cuda_status(cudaError_t status) {
  return fmt::format("{} ({})", cudaGetErrorName(status), cudaGetErrorString(status));
}

inline std::string cublas_status(cublasStatus_t status) {
  return fmt::format("{} ({})", cublasLtGetStatusName(status), cublasLtGetStatusString(status));
}

/// A status that no caller can be told about (a free in a destructor): dropped, and cleared from
/// the thread's last-error slot, which every failing runtime call sets, so that the next kernel
/// launch's check does not report it as its own failure.
inline void discard_cuda_status(cudaError_t status) noexcept {
  if (status != cudaSuccess) (void)cudaGetLastError();
}

}  // namespace tp::detail

/// TP_CUDA_CHECK(cudaMallocAsync(&p, n, s), "allocating {} bytes", n): throws tp::CudaError
/// "cudaMallocAsync(&p, n, s) failed: cudaErrorMemoryAllocation (out of memory) while allocating ...".
#define TP_CUDA_CHECK(call, ...)                                                                            \
  do {                                                                                                      \
    const cudaError_t tp_status_ = (call);                                                                  \
    if (tp_status_ != cudaSuccess) {                                                                        \
      (void)cudaGetLastError(); /* clear a sticky-free error so the next call does not report it again */ \
      TP_THROW(::tp::CudaError, "{} failed: {} while {}", #call, ::tp::detail::cuda_status(tp_status_),     \
               ::fmt::format(__VA_ARGS__));                                                                 \
    }                                                                                                       \
  } while (0)

#define TP_CUBLAS_CHECK(call, ...)                                                                      \
  do {                                                                                                  \
    const cublasStatus_t tp_status_ = (call);                                                           \
    if (tp_status_ != CUBLAS_STATUS_SUCCESS)                                                            \
      TP_THROW(::tp::CudaError, "{} failed: {} while {}", #call, ::tp::detail::cublas_status(tp_status_), \
               ::fmt::format(__VA_ARGS__));                                                             \
  } while (0)
