#pragma once
/// Element loads and stores through an accumulation type: float for float, __half and
/// __nv_bfloat16 (so 16-bit data is computed in float and rounded once), double for double,
/// the type itself for integers.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

namespace tp::kernels {

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
template <class T>
using accum_t = typename Accum<T>::type;

template <class T>
__device__ __forceinline__ accum_t<T> load(const T& x) {
  if constexpr (std::is_same_v<T, __half>) return __half2float(x);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __bfloat162float(x);
  else return x;
}

template <class T>
__device__ __forceinline__ T store(accum_t<T> x) {
  if constexpr (std::is_same_v<T, __half>) return __float2half_rn(x);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16_rn(x);
  else return static_cast<T>(x);
}

/// A double rounded to T (through float for the 16-bit types: the second rounding is harmless there).
template <class T>
__device__ __forceinline__ T store_double(double x) {
  if constexpr (std::is_same_v<T, double>) return x;
  else return store<T>(static_cast<accum_t<T>>(x));
}

/// Grid size for `n` work items at 256 threads a block, capped; the kernels stride over the rest.
inline unsigned grid_for(long long n, int threads = 256) {
  const long long blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 65535 * 8 ? 65535 * 8 : blocks));
}

}  // namespace tp::kernels
