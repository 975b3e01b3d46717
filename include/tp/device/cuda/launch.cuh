#pragma once
/// What every CUDA op shares, written once: the launch (make the device current, launch on its
/// stream, check the launch), grid sizes and grid-stride loops, and element loads and stores
/// through an accumulation type: float for float, __half and __nv_bfloat16, tp::f16 and tp::bf16 (so 16-bit data is
/// computed in float and rounded once), double for double, the type itself for integers.

#ifndef __CUDACC__
#error "tp/device/cuda/*.cuh hold CUDA kernels: include them from a .cu file compiled by nvcc"
#endif

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <type_traits>

#include "tp/core/float16.hpp"
#include "tp/device/cuda/error.hpp"

/// for (i = this thread's first item; i < n; i += all threads of the grid)
#define TP_GRID_STRIDE(i, n)                                                                       \
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
/// One block per row (blocks stride over the rows), and the block's threads over the columns.
#define TP_BLOCK_PER_ROW(r, rows) for (std::int64_t r = blockIdx.x; r < (rows); r += gridDim.x)
#define TP_THREAD_PER_COL(c, cols) for (std::int64_t c = threadIdx.x; c < (cols); c += blockDim.x)

namespace tp::kernels {

/// Threads per block of the element-wise kernels.
inline constexpr int kThreads = 256;

struct Shape2 {
  std::int64_t rows, cols;
};

template <class T>
struct Accum {
  using type = T;
};
template <>
struct Accum<__half> {
  using type = float;
};
template <>
struct Accum<__nv_bfloat16> {
  using type = float;
};
/// The host's 16-bit types (tp/core/float16.hpp), the same bits as CUDA's, computed alike.
template <>
struct Accum<tp::bf16> {
  using type = float;
};
template <>
struct Accum<tp::f16> {
  using type = float;
};
template <class T>
using accum_t = typename Accum<T>::type;

template <class T>
__device__ __forceinline__ accum_t<T> load(const T& x) {
  if constexpr (std::is_same_v<T, __half>)
    return __half2float(x);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return __bfloat162float(x);
  else if constexpr (is_float16_v<T>)
    return static_cast<float>(x);
  else
    return x;
}

template <class T>
__device__ __forceinline__ T store(accum_t<T> x) {
  if constexpr (std::is_same_v<T, __half>)
    return __float2half_rn(x);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return __float2bfloat16_rn(x);
  else if constexpr (is_float16_v<T>)
    return T(x);  // round to nearest even, as the intrinsics
  else
    return static_cast<T>(x);
}

/// A double rounded to T (through float for the 16-bit types: the second rounding is harmless there).
template <class T>
__device__ __forceinline__ T store_double(double x) {
  if constexpr (std::is_same_v<T, double>)
    return x;
  else
    return store<T>(static_cast<accum_t<T>>(x));
}

/// Grid size for `n` work items at 256 threads a block, capped; the kernels stride over the rest.
inline unsigned grid_for(long long n, int threads = 256) {
  const long long blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 65535 * 8 ? 65535 * 8 : blocks));
}

/// Rows handled by one launch of a one-block-per-row kernel (blocks stride over the rest).
inline unsigned row_grid(long long rows) {
  return static_cast<unsigned>(rows < 1 ? 1 : (rows > 65535 * 8 ? 65535 * 8 : rows));
}

/// Empties the calling thread's last-error slot before a launch, whose check reads that slot: an
/// earlier call's failure left there (its status already returned to, or discarded by, its own
/// caller) would otherwise be reported as this kernel's. A sticky error (a corrupted context) is
/// not lost: the launch itself fails with it again.
inline void clear_last_error() noexcept { (void)cudaGetLastError(); }

/// kernel<<<grid, block, 0, dev.stream()>>>(args...) on `dev`'s GPU, then the launch check, whose
/// message names the kernel, the rows x cols it ran on and the device.
template <class Dev, class... Params, class... Args>
void launch(const Dev& dev, const char* name, std::int64_t rows, std::int64_t cols, unsigned grid, unsigned block,
            void (*kernel)(Params...), Args&&... args) {
  dev.activate();
  clear_last_error();
  kernel<<<grid, block, 0, dev.stream()>>>(static_cast<Params>(args)...);
  TP_CUDA_CHECK(cudaGetLastError(), "launching the {} kernel on a {}x{} matrix on device {}", name, rows, cols,
                dev.device());
}

}  // namespace tp::kernels
