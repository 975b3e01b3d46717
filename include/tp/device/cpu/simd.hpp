#pragma once
/// Vectorized CPU loops without intrinsics, each compiled for AVX-512, AVX2+FMA and the x86-64
/// baseline, and the one to run chosen at run time.
///
/// A hot loop is a function template with a `simd::Isa I` parameter, marked [[gnu::always_inline]],
/// and its caller runs it through TP_CPU_DISPATCH, which inlines it into three functions compiled
/// for arch=x86-64-v4, arch=x86-64-v3 and the library's own flags (the baseline: SSE2, no FMA, 4
/// float lanes) and calls the one for simd::active_isa(). Helpers that such a loop calls are inlined
/// into it; a lambda inside it would be a function of its own, compiled for the baseline, so hot
/// loops call inline functions instead. The parameter lets a loop size its blocking to the
/// registers of each instruction set (16 vector registers on AVX2 and SSE, 32 on AVX-512).
///
/// active_isa() is the best instruction set this CPU runs. For tests and benchmarks, the variable
/// TP_CPU_ISA=avx512|avx2|baseline forces one for the whole process (refused, by name, when the
/// CPU cannot run it), and ScopedIsa forces one on the calling thread, so that an AVX-512 machine
/// tests and measures the AVX2 and baseline code too. Dispatch needs GCC on x86-64 (not nvcc's
/// device pass); elsewhere, or with TP_NO_TARGET_CLONES defined, everything runs the baseline.
///
/// Vec<T, I> is one vector register of T for I (64 bytes on AVX-512, 32 on AVX2, 16 otherwise), as
/// a GCC vector type; the compiler picks the instructions.

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "tp/core/error.hpp"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__CUDACC__) && \
    !defined(TP_NO_TARGET_CLONES)
#define TP_CPU_ISA_DISPATCH 1
#else
#define TP_CPU_ISA_DISPATCH 0
#endif

namespace tp::detail::simd {

/// The instruction sets hot loops are compiled for, from the least to the most capable.
enum class Isa : int { baseline, avx2, avx512 };
inline constexpr std::array<Isa, 3> kIsas{Isa::baseline, Isa::avx2, Isa::avx512};

/// The name TP_CPU_ISA takes: "baseline", "avx2", "avx512".
constexpr std::string_view isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512:
      return "avx512";
    case Isa::avx2:
      return "avx2";
    default:
      return "baseline";
  }
}

/// Whether this build and this CPU can run the loops compiled for `isa` (x86-64-v4: AVX-512 F, BW,
/// CD, DQ, VL; x86-64-v3: AVX2, FMA, BMI1/2, F16C, LZCNT, MOVBE).
inline bool cpu_can_run(Isa isa) {
  if (isa == Isa::baseline) return true;
#if TP_CPU_ISA_DISPATCH
  static const bool v3 = __builtin_cpu_supports("x86-64-v3"), v4 = __builtin_cpu_supports("x86-64-v4");
  return isa == Isa::avx512 ? v4 : v3;
#else
  return false;
#endif
}

/// The most capable instruction set this CPU runs.
inline Isa best_isa() { return cpu_can_run(Isa::avx512) ? Isa::avx512 : cpu_can_run(Isa::avx2) ? Isa::avx2 : Isa::baseline; }

/// Every instruction set this CPU runs, the best last.
inline std::vector<Isa> runnable_isas() {
  std::vector<Isa> out;
  for (const Isa isa : kIsas)
    if (cpu_can_run(isa)) out.push_back(isa);
  return out;
}

/// `name` as an Isa that this CPU runs; `what` names where the name came from in the message.
inline Isa parse_isa(std::string_view name, std::string_view what = "TP_CPU_ISA") {
  for (const Isa isa : kIsas) {
    if (name != isa_name(isa)) continue;
    if (!cpu_can_run(isa))
      throw InvalidArgument(fmt::format("{}={}: this CPU (or this build{}) cannot run the {} kernels; the best it runs is {}",
                                        what, name, TP_CPU_ISA_DISPATCH ? "" : ", made without per-ISA dispatch",
                                        name, isa_name(best_isa())));
    return isa;
  }
  throw InvalidArgument(fmt::format("{}='{}': not an instruction set; use avx512, avx2 or baseline", what, name));
}

/// The process's instruction set: TP_CPU_ISA when set (read once), else the best one.
inline Isa process_isa() {
  static const Isa isa = [] {
    const char* env = std::getenv("TP_CPU_ISA");
    return env && *env ? parse_isa(env) : best_isa();
  }();
  return isa;
}

namespace isa_detail {
inline thread_local int forced = -1;  // ScopedIsa's choice on this thread, or -1
}

/// The instruction set TP_CPU_DISPATCH runs on this thread.
inline Isa active_isa() { return isa_detail::forced >= 0 ? static_cast<Isa>(isa_detail::forced) : process_isa(); }

/// Runs the calling thread's kernels on `isa` while alive (tests and benchmarks: kernels that start
/// threads of their own read the choice on the calling thread and pass it on).
class ScopedIsa {
 public:
  explicit ScopedIsa(Isa isa) : previous_(isa_detail::forced) {
    parse_isa(isa_name(isa), "ScopedIsa");
    isa_detail::forced = static_cast<int>(isa);
  }
  ~ScopedIsa() { isa_detail::forced = previous_; }
  ScopedIsa(const ScopedIsa&) = delete;
  ScopedIsa& operator=(const ScopedIsa&) = delete;

 private:
  int previous_;
};

/// Bytes of one vector register for `I`.
template <Isa I>
inline constexpr int kVectorBytes = I == Isa::avx512 ? 64 : I == Isa::avx2 ? 32 : 16;

template <class T, int Bytes>
using VecBytes [[gnu::vector_size(Bytes)]] = T;
template <class T, Isa I>
using Vec = VecBytes<T, kVectorBytes<I>>;
template <class T, Isa I>
inline constexpr std::int64_t kLanes = kVectorBytes<I> / static_cast<std::int64_t>(sizeof(T));

/// Unaligned loads and stores through memcpy. (V is deduced, not named as Vec<T, I>: nvcc's front
/// end cannot match a Vec<T, I>& parameter. By reference: a vector wider than the baseline's
/// registers passed by value has no fixed ABI across instruction sets.) Through a local vector,
/// not straight into `v`: when `v` is an element of an array that GCC keeps in memory, a memcpy
/// into it became two 16-byte copies through the stack and a 32-byte reload that store forwarding
/// cannot serve, which made the AVX2 backward kernel 3x slower than the baseline's.
template <class V, class T>
[[gnu::always_inline]] inline void load(V& v, const T* p) {
  V t;
  std::memcpy(&t, p, sizeof(t));
  v = t;
}
template <class T, class V>
[[gnu::always_inline]] inline void store(T* p, const V& v) {
  const V t = v;
  std::memcpy(p, &t, sizeof(t));
}

/// The maximum of x[0, n) and init, and the sum of x[0, n), in one vector of partials each: a
/// reduction into one scalar does not vectorize (float addition is not associative; a float max
/// must keep NaN's semantics), one into independent lanes does.
template <Isa I, class T>
[[gnu::always_inline]] inline T max_of(const T* x, std::int64_t n, T init) {
  std::int64_t c = 0;
  T m = init;
  constexpr std::int64_t L = kLanes<T, I>;
  Vec<T, I> part = Vec<T, I>{} + init, xv;
  for (; c + L <= n; c += L) {
    load(xv, x + c);
    part = part < xv ? xv : part;
  }
  for (std::int64_t l = 0; l < L; ++l) m = std::max(m, part[l]);
  for (; c < n; ++c) m = std::max(m, x[c]);
  return m;
}

template <Isa I, class T>
[[gnu::always_inline]] inline T sum_of(const T* x, std::int64_t n) {
  std::int64_t c = 0;
  T sum = T(0);
  constexpr std::int64_t L = kLanes<T, I>;
  Vec<T, I> part{}, xv;
  for (; c + L <= n; c += L) {
    load(xv, x + c);
    part += xv;
  }
  for (std::int64_t l = 0; l < L; ++l) sum += part[l];
  for (; c < n; ++c) sum += x[c];
  return sum;
}

}  // namespace tp::detail::simd

/// Runs the statements after `I` with `I` a constexpr simd::Isa equal to `isa`, compiled for that
/// instruction set: TP_CPU_DISPATCH(simd::active_isa(), I, loop<I, T>(x, n)). Each case is a
/// lambda with a target attribute, into which the always_inline loop is inlined.
#if TP_CPU_ISA_DISPATCH
#define TP_CPU_DISPATCH(isa, I, ...)                                                                   \
  do {                                                                                                 \
    switch (isa) {                                                                                     \
      case ::tp::detail::simd::Isa::avx512:                                                            \
        [&]() __attribute__((target("arch=x86-64-v4"))) {                                              \
          [[maybe_unused]] constexpr ::tp::detail::simd::Isa I = ::tp::detail::simd::Isa::avx512;      \
          __VA_ARGS__;                                                                                 \
        }();                                                                                           \
        break;                                                                                         \
      case ::tp::detail::simd::Isa::avx2:                                                              \
        [&]() __attribute__((target("arch=x86-64-v3"))) {                                              \
          [[maybe_unused]] constexpr ::tp::detail::simd::Isa I = ::tp::detail::simd::Isa::avx2;        \
          __VA_ARGS__;                                                                                 \
        }();                                                                                           \
        break;                                                                                         \
      default:                                                                                         \
        [&]() {                                                                                        \
          [[maybe_unused]] constexpr ::tp::detail::simd::Isa I = ::tp::detail::simd::Isa::baseline;    \
          __VA_ARGS__;                                                                                 \
        }();                                                                                           \
    }                                                                                                  \
  } while (false)
#else
#define TP_CPU_DISPATCH(isa, I, ...)                                                                 \
  do {                                                                                               \
    (void)(isa);                                                                                     \
    [[maybe_unused]] constexpr ::tp::detail::simd::Isa I = ::tp::detail::simd::Isa::baseline;        \
    __VA_ARGS__;                                                                                     \
  } while (false)
#endif
