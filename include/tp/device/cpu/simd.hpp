#pragma once
/// Vectorized CPU loops without intrinsics.
///
/// TP_CPU_CLONES compiles a hot function for AVX-512, AVX2+FMA and the x86-64 baseline and picks
/// one at load time (GCC's target_clones). The library is built for the baseline (SSE2, no FMA), on
/// which a vectorized loop gets 4 float lanes instead of 16. Only the marked function is cloned: a
/// lambda inside it is a function of its own, compiled for the baseline, so cloned loops call
/// inline functions instead. Define TP_NO_TARGET_CLONES to build everything for the baseline.
///
/// Vec<T> is 64 bytes of T (a cache line) as one GCC vector: one AVX-512 register, two AVX2 ones or
/// four SSE ones, whichever the clone being compiled has; the compiler picks the instructions.

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__CUDACC__) && \
    !defined(TP_NO_TARGET_CLONES)
#define TP_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TP_CPU_CLONES
#endif

namespace tp::detail::simd {

template <class T>
using Vec [[gnu::vector_size(64)]] = T;
template <class T>
inline constexpr std::int64_t kLanes = 64 / static_cast<std::int64_t>(sizeof(T));

/// Unaligned loads and stores through memcpy. (V is deduced, not named as Vec<T>: nvcc's front end
/// cannot match a Vec<T>& parameter. By reference: a 64-byte vector passed by value has no fixed
/// ABI across the clones.)
template <class V, class T>
[[gnu::always_inline]] inline void load(V& v, const T* p) {
  static_assert(sizeof(V) == 64);
  std::memcpy(&v, p, sizeof(v));
}
template <class T, class V>
[[gnu::always_inline]] inline void store(T* p, const V& v) {
  static_assert(sizeof(V) == 64);
  std::memcpy(p, &v, sizeof(v));
}

/// The maximum of x[0, n) and init, and the sum of x[0, n), in one vector of partials each: a
/// reduction into one scalar does not vectorize (float addition is not associative; a float max
/// must keep NaN's semantics), one into independent lanes does.
template <class T>
[[gnu::always_inline]] inline T max_of(const T* x, std::int64_t n, T init) {
  std::int64_t c = 0;
  T m = init;
  constexpr std::int64_t L = kLanes<T>;
  Vec<T> part = Vec<T>{} + init, xv;
  for (; c + L <= n; c += L) {
    load(xv, x + c);
    part = part < xv ? xv : part;
  }
  for (std::int64_t l = 0; l < L; ++l) m = std::max(m, part[l]);
  for (; c < n; ++c) m = std::max(m, x[c]);
  return m;
}

template <class T>
[[gnu::always_inline]] inline T sum_of(const T* x, std::int64_t n) {
  std::int64_t c = 0;
  T sum = T(0);
  constexpr std::int64_t L = kLanes<T>;
  Vec<T> part{}, xv;
  for (; c + L <= n; c += L) {
    load(xv, x + c);
    part += xv;
  }
  for (std::int64_t l = 0; l < L; ++l) sum += part[l];
  for (; c < n; ++c) sum += x[c];
  return sum;
}

}  // namespace tp::detail::simd
