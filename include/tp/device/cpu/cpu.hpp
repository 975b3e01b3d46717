#pragma once
/// The host device: memory from the C++ heap and GEMM through CBLAS (OpenBLAS) or oneDNN, the
/// members of the `Device` concept. The ops (tp::ops::gelu(cpu, ...)) run as loops in
/// tp/device/cpu/<family>.hpp.
///
/// Which library runs float GEMMs is chosen once per process by a rule derived from measurements
/// (tp_bench_blas, BENCHMARKS.md), not by timing at start-up: a start-up micro-benchmark costs
/// every process time, is noisy on shared machines, and could pick differently from run to run,
/// so that the same program would round differently. Single-thread sgemm, GFLOP/s:
///   Zen 5 (AVX-512), 2048^3: OpenBLAS 0.3.21 114 (it does not know the CPU and runs Haswell
///                    kernels), oneDNN 2.6 202, OpenBLAS with OPENBLAS_CORETYPE=SkylakeX 206;
///   Xeon Sapphire Rapids (AVX-512; OpenBLAS detects SkylakeX): oneDNN faster on every shape
///                    measured, 175 against 165 at the MLP's 512x2048x1024, 157-180 against 124-156
///                    on attention's 128- and 512-row tiles, 84 against 37 at 8x4096x1024;
///   another Xeon (AVX-512; OpenBLAS detects only Prescott, SSE3): oneDNN about twice as fast;
///   EPYC (AVX2):     OpenBLAS 92, oneDNN 89.
/// oneDNN picks its kernels from the CPU's ISA at run time, so on an AVX-512 CPU it wins or ties
/// whatever OpenBLAS detected, and on an AVX2 one it ties or loses: the rule is that test. Doubles,
/// one or two rows (GEMV, bound by memory bandwidth, not the ISA) and GEMMs under 32^3
/// multiply-adds (where oneDNN's call costs more than the wider kernels save: 107 against 152
/// GFLOP/s at 32^3 on the Sapphire Rapids) always go to OpenBLAS. oneDNN is optional (TP_HAS_DNNL,
/// set by the tp::blas component when Debian's libdnnl-dev is found); without it everything runs
/// on OpenBLAS.

#ifndef TP_HAS_BLAS
#error "tp/device/cpu/cpu.hpp needs the tp::blas CMake component: target_link_libraries(... tp::blas)"
#endif

#include <cblas.h>
#ifdef TP_HAS_DNNL
#include <dnnl.h>
#include <omp.h>
#endif

#include <algorithm>
#include <atomic>
#include <compare>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <new>
#include <string>
#include <string_view>
#include <vector>

#include "tp/comm/communicator.hpp"
#include "tp/core/ops.hpp"
#include "tp/core/tensor.hpp"
#include "tp/detail/shape_checks.hpp"
#include "tp/device/cpu/simd.hpp"
#include "tp/device/device.hpp"

namespace tp {

namespace detail {

/// x *= factor on host memory; a zero factor writes zeros even over NaN and infinity, as BLAS does
/// with beta = 0.
template <class T>
void scale_host(MatrixView<T> x, T factor) {
  for (std::int64_t r = 0; r < x.rows; ++r)
    for (std::int64_t c = 0; c < x.cols; ++c) x(r, c) = factor == T(0) ? T(0) : static_cast<T>(x(r, c) * factor);
}

/// True on a CPU with AVX-512 (F, BW, VL, DQ: what oneDNN's AVX-512 sgemm kernels need).
inline bool cpu_has_avx512() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return avx512;
#else
  return false;
#endif
}

/// True on a CPU with bfloat16 dot-product instructions (AVX512_BF16, or AMX's bf16 tiles). Only
/// AMX makes bf16 arithmetic faster than float: on a Xeon with AVX512_BF16 alone, vdpbf16ps measured
/// half the FLOPs of float FMAs (BENCHMARKS.md, "bf16 against fp32 on the CPU").
inline bool cpu_has_bf16_dot() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool bf16 = __builtin_cpu_supports("avx512bf16") || __builtin_cpu_supports("amx-bf16");
  return bf16;
#else
  return false;
#endif
}

/// True on a CPU with AMX's bf16 tiles. Without them (AVX512_BF16's vdpbf16ps alone) oneDNN's bf16
/// matmul measured 0.55x its sgemm on compute-bound shapes and 1.3x at 8 rows, where the weights'
/// bytes set the pace (BENCHMARKS.md, "bf16 against fp32 on the CPU").
inline bool cpu_has_amx_bf16() {
#if defined(__x86_64__) && defined(__GNUC__) && __GNUC__ >= 11
  static const bool amx = __builtin_cpu_supports("amx-bf16");
  return amx;
#else
  return false;
#endif
}

/// The most rows (tokens) for which CpuHalfGemm::automatic sends a bf16 GEMM to oneDNN on a CPU
/// with AVX512_BF16 but no AMX; larger GEMMs are widened to fp32 there, which measured faster.
inline constexpr std::int64_t bf16_dot_max_rows = 32;

}  // namespace detail

/// How Cpu runs GEMMs of the 16-bit types (bf16 x bf16 and f16 x f16: products summed in float,
/// the result rounded once to the 16-bit type).
enum class CpuHalfGemm {
  automatic,  ///< oneDNN's bf16 matmul for bf16 where the CPU has AMX, or AVX512_BF16 and at most
              ///< detail::bf16_dot_max_rows rows; else fp32
  onednn,     ///< oneDNN's bf16 matmul for bf16 (needs TP_HAS_DNNL); f16 still takes fp32
  fp32,       ///< the operands widened to float, the float GEMM, the result rounded back
};

/// The library that runs Cpu's float GEMMs (see the top of this file for the rule).
enum class CpuGemm {
  automatic,  ///< oneDNN on CPUs with AVX-512, else OpenBLAS
  openblas,   ///< CBLAS always
  onednn,     ///< oneDNN's dnnl_sgemm for float (needs TP_HAS_DNNL)
};

namespace detail {
inline constexpr bool has_dnnl =
#ifdef TP_HAS_DNNL
    true;
#else
    false;
#endif

/// What CpuGemm::automatic resolves to in this process. TP_CPU_ISA=avx2 or baseline (tp's loops
/// forced below AVX-512, tp/device/cpu/simd.hpp) takes the rule for a CPU without AVX-512 too.
inline CpuGemm automatic_cpu_gemm() {
  return has_dnnl && cpu_has_avx512() && simd::process_isa() == simd::Isa::avx512 ? CpuGemm::onednn
                                                                                   : CpuGemm::openblas;
}
/// What CpuHalfGemm::automatic resolves to: oneDNN where it has bf16 instructions to run on. On
/// other CPUs its bf16 matmul emulates them, slower than widening to float (the fallback).
/// TP_CPU_HALF_GEMM=fp32 (or onednn) overrides the rule for the whole process: tests set it to
/// run the layer suites on the fallback on a CPU that has bf16 instructions. Any other value is
/// refused.
inline CpuHalfGemm automatic_half_gemm() {
  static const CpuHalfGemm rule = [] {
    const char* forced = std::getenv("TP_CPU_HALF_GEMM");
    if (forced == nullptr || *forced == '\0')
      return has_dnnl && cpu_has_bf16_dot() ? CpuHalfGemm::onednn : CpuHalfGemm::fp32;
    const std::string_view value(forced);
    if (value == "fp32") return CpuHalfGemm::fp32;
    TP_CHECK(value == "onednn" && has_dnnl, "TP_CPU_HALF_GEMM={}: expected fp32, or onednn in a build with oneDNN",
             value);
    return CpuHalfGemm::onednn;
  }();
  return rule;
}
/// Whether CpuHalfGemm::automatic chose oneDNN by the row count (AVX512_BF16 without AMX, not
/// forced by TP_CPU_HALF_GEMM): oneDNN up to bf16_dot_max_rows rows, widened to fp32 above.
inline bool half_gemm_by_rows() {
  const char* forced = std::getenv("TP_CPU_HALF_GEMM");
  return automatic_half_gemm() == CpuHalfGemm::onednn && (forced == nullptr || *forced == '\0') &&
         !cpu_has_amx_bf16();
}
}  // namespace detail

#ifdef TP_HAS_DNNL
namespace detail {

/// oneDNN's status as an exception naming the call.
inline void dnnl_check(dnnl_status_t status, const char* what) {
  TP_CHECK(status == dnnl_success, "oneDNN {} failed with status {}", what, static_cast<int>(status));
}

/// The process's CPU engine and this thread's stream for oneDNN primitives.
inline dnnl_engine_t dnnl_cpu_engine() {
  static const std::unique_ptr<dnnl_engine, dnnl_status_t (*)(dnnl_engine_t)> engine(
      [] {
        dnnl_engine_t e = nullptr;
        dnnl_check(dnnl_engine_create(&e, dnnl_cpu, 0), "engine_create");
        return e;
      }(),
      dnnl_engine_destroy);
  return engine.get();
}
inline dnnl_stream_t dnnl_thread_stream() {
  thread_local const std::unique_ptr<dnnl_stream, dnnl_status_t (*)(dnnl_stream_t)> stream(
      [] {
        dnnl_stream_t s = nullptr;
        dnnl_check(dnnl_stream_create(&s, dnnl_cpu_engine(), dnnl_stream_default_flags), "stream_create");
        return s;
      }(),
      dnnl_stream_destroy);
  return stream.get();
}

/// One bf16 matmul primitive and its memory objects, for one shape (Cpu::dnnl_bf16_gemm).
struct DnnlMatmulKey {
  std::int64_t m, n, k, lda, ldb, ldc;
  bool ta, tb;
  float alpha, beta;
  auto operator<=>(const DnnlMatmulKey&) const = default;
};

class DnnlMatmul {
 public:
  DnnlMatmul(dnnl_engine_t engine, const DnnlMatmulKey& key) {
    dnnl_memory_desc_t a_md, b_md, c_md;
    const dnnl_dims_t a_dims = {key.m, key.k}, b_dims = {key.k, key.n}, c_dims = {key.m, key.n};
    const dnnl_dims_t a_strides = {key.ta ? 1 : key.lda, key.ta ? key.lda : 1},
                      b_strides = {key.tb ? 1 : key.ldb, key.tb ? key.ldb : 1}, c_strides = {key.ldc, 1};
    dnnl_check(dnnl_memory_desc_init_by_strides(&a_md, 2, a_dims, dnnl_bf16, a_strides), "memory_desc (a)");
    dnnl_check(dnnl_memory_desc_init_by_strides(&b_md, 2, b_dims, dnnl_bf16, b_strides), "memory_desc (b)");
    dnnl_check(dnnl_memory_desc_init_by_strides(&c_md, 2, c_dims, dnnl_bf16, c_strides), "memory_desc (c)");
    dnnl_matmul_desc_t desc;
    dnnl_check(dnnl_matmul_desc_init(&desc, &a_md, &b_md, nullptr, &c_md), "matmul_desc_init");
    dnnl_primitive_attr_t attr = nullptr;
    dnnl_post_ops_t post_ops = nullptr;
    dnnl_check(dnnl_primitive_attr_create(&attr), "primitive_attr_create");
    if (key.alpha != 1.0f) dnnl_check(dnnl_primitive_attr_set_output_scales(attr, 1, 0, &key.alpha), "output scales");
    if (key.beta != 0.0f) {
      dnnl_check(dnnl_post_ops_create(&post_ops), "post_ops_create");
      dnnl_check(dnnl_post_ops_append_sum(post_ops, key.beta), "post_ops_append_sum");
      dnnl_check(dnnl_primitive_attr_set_post_ops(attr, post_ops), "set_post_ops");
    }
    dnnl_primitive_desc_t pd = nullptr;
    const dnnl_status_t made = dnnl_primitive_desc_create(&pd, &desc, attr, engine, nullptr);
    if (post_ops) dnnl_post_ops_destroy(post_ops);
    dnnl_primitive_attr_destroy(attr);
    dnnl_check(made, "bf16 matmul primitive_desc_create");
    const dnnl_status_t created = dnnl_primitive_create(&primitive_, pd);
    dnnl_primitive_desc_destroy(pd);
    dnnl_check(created, "bf16 matmul primitive_create");
    dnnl_check(dnnl_memory_create(&a_, &a_md, engine, DNNL_MEMORY_NONE), "memory_create (a)");
    dnnl_check(dnnl_memory_create(&b_, &b_md, engine, DNNL_MEMORY_NONE), "memory_create (b)");
    dnnl_check(dnnl_memory_create(&c_, &c_md, engine, DNNL_MEMORY_NONE), "memory_create (c)");
  }
  DnnlMatmul(const DnnlMatmul&) = delete;
  DnnlMatmul& operator=(const DnnlMatmul&) = delete;
  ~DnnlMatmul() {
    for (dnnl_memory_t mem : {a_, b_, c_})
      if (mem) dnnl_memory_destroy(mem);
    if (primitive_) dnnl_primitive_destroy(primitive_);
  }

  void run(const void* a, const void* b, void* c) const {
    dnnl_check(dnnl_memory_set_data_handle(a_, const_cast<void*>(a)), "set_data_handle (a)");
    dnnl_check(dnnl_memory_set_data_handle(b_, const_cast<void*>(b)), "set_data_handle (b)");
    dnnl_check(dnnl_memory_set_data_handle(c_, c), "set_data_handle (c)");
    const dnnl_exec_arg_t args[] = {{DNNL_ARG_SRC, a_}, {DNNL_ARG_WEIGHTS, b_}, {DNNL_ARG_DST, c_}};
    dnnl_check(dnnl_primitive_execute(primitive_, dnnl_thread_stream(), 3, args), "bf16 matmul execute");
    dnnl_check(dnnl_stream_wait(dnnl_thread_stream()), "stream_wait");
  }

 private:
  dnnl_primitive_t primitive_ = nullptr;
  dnnl_memory_t a_ = nullptr, b_ = nullptr, c_ = nullptr;
};

/// The primitives one thread has made (ranks run as threads in tests; a primitive's memory objects
/// are not shared between threads), with the CPU engine and stream they run on.
class DnnlMatmulCache {
 public:
  static DnnlMatmulCache& for_this_thread() {
    thread_local DnnlMatmulCache cache;
    return cache;
  }
  DnnlMatmul& get(const DnnlMatmulKey& key) {
    auto it = primitives_.find(key);
    if (it == primitives_.end() && primitives_.size() >= kMaxPrimitives) primitives_.clear();  // shapes that vary
    if (it == primitives_.end())
      it = primitives_.emplace(key, std::make_unique<DnnlMatmul>(dnnl_cpu_engine(), key)).first;
    return *it->second;
  }

 private:
  static constexpr std::size_t kMaxPrimitives = 256;
  std::map<DnnlMatmulKey, std::unique_ptr<DnnlMatmul>> primitives_;
};

}  // namespace detail
#endif

/// Bytes held by one Cpu instance's allocations (Tensor buffers), now and at the peak since the
/// last reset: per rank where each rank has its own Cpu (one process per rank, or a Mesh given
/// `std::make_shared<Cpu>()` per thread). Two relaxed atomic operations per allocation, which
/// tp's layers make once and then reuse, so it is always on. A copied Cpu counts from zero.
class CpuMemoryCounter {
 public:
  CpuMemoryCounter() = default;
  CpuMemoryCounter(const CpuMemoryCounter&) {}
  CpuMemoryCounter& operator=(const CpuMemoryCounter&) { return *this; }

  void add(std::int64_t bytes) {
    const std::int64_t now = current_.fetch_add(bytes, std::memory_order_relaxed) + bytes;
    std::int64_t peak = peak_.load(std::memory_order_relaxed);
    while (now > peak && !peak_.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
    }
  }
  void sub(std::int64_t bytes) { current_.fetch_sub(bytes, std::memory_order_relaxed); }
  std::int64_t current() const { return current_.load(std::memory_order_relaxed); }
  std::int64_t peak() const { return peak_.load(std::memory_order_relaxed); }
  void reset_peak() { peak_.store(current(), std::memory_order_relaxed); }

 private:
  std::atomic<std::int64_t> current_{0}, peak_{0};
};

struct CpuOptions {
  /// BLAS threads; 0 leaves the process's setting alone (OPENBLAS_NUM_THREADS, or what an earlier
  /// call set). OpenBLAS keeps one setting for the whole process, so only a caller that asks
  /// changes it: a default Cpu, such as the one host tensors share, never does. One thread per rank
  /// is right when ranks are pinned to cores, as under mpirun (the scripts export
  /// OPENBLAS_NUM_THREADS=1). tp's own kernels (the streaming linear ones) run on this many
  /// threads, on one when it is 0.
  int threads = 0;
  /// Which library runs float GEMMs; `automatic` is the measured rule, the others are for
  /// benchmarks and tests that compare the two.
  CpuGemm gemm = CpuGemm::automatic;
  /// How bf16 and f16 GEMMs run; `automatic` is oneDNN's bf16 matmul where the CPU has AMX, and
  /// on AVX512_BF16 alone up to detail::bf16_dot_max_rows rows (measured: faster there, slower
  /// above); `fp32` is the fallback that other CPUs take, which tests and benchmarks force to
  /// compare the two.
  CpuHalfGemm half_gemm = CpuHalfGemm::automatic;
  /// Linear layers' forward and backward at few tokens on tp's streaming kernels
  /// (tp/device/cpu/streaming_linear.hpp); false runs them as GEMMs, for benchmarks that compare.
  bool streaming_linear = true;
};

class Cpu {
 public:
  static constexpr bool on_host = true;
  using Options = CpuOptions;

  Cpu() : Cpu(Options{}) {}
  explicit Cpu(Options options) : options_(options) {
    TP_CHECK(options.threads >= 0, "Cpu: threads must be positive (or 0: leave the BLAS setting alone), got {}",
             options.threads);
    TP_CHECK(options.gemm != CpuGemm::onednn || detail::has_dnnl,
             "Cpu: CpuGemm::onednn asked for, but tp was built without oneDNN (install libdnnl-dev and reconfigure)");
#ifdef OPENBLAS_VERSION
    if (options.threads > 0) openblas_set_num_threads(options.threads);
#endif
    TP_CHECK(
        options.half_gemm != CpuHalfGemm::onednn || detail::has_dnnl,
        "Cpu: CpuHalfGemm::onednn asked for, but tp was built without oneDNN (install libdnnl-dev and reconfigure)");
    if (options_.gemm == CpuGemm::automatic) options_.gemm = detail::automatic_cpu_gemm();
    if (options_.half_gemm == CpuHalfGemm::automatic) {
      options_.half_gemm = detail::automatic_half_gemm();
      half_gemm_by_rows_ = detail::half_gemm_by_rows();
    }
  }

  /// The process-wide instance host tensors use when given no device.
  static const std::shared_ptr<Cpu>& shared() {
    static const std::shared_ptr<Cpu> instance = std::make_shared<Cpu>();
    return instance;
  }

  /// The library running float GEMMs in this process by default (CpuGemm::automatic) and why, for
  /// banners and benchmark labels: "OpenBLAS 0.3.21 (SkylakeX kernels, 1 thread(s))" or
  /// "oneDNN 2.6.3 sgemm for this AVX-512 CPU (OpenBLAS 0.3.21, SkylakeX kernels, for the rest), 1 thread(s)".
  static std::string blas_name() {
    return blas_name(detail::automatic_cpu_gemm()) + "; bf16: " + half_gemm_name(CpuHalfGemm::automatic);
  }
  static std::string blas_name(CpuGemm gemm) {
    const int threads = blas_threads();
#ifdef OPENBLAS_VERSION
    const std::string openblas = fmt::format("OpenBLAS {}", std::string_view(OPENBLAS_VERSION).substr(10, 6));
    const std::string core = openblas_get_corename();
#else
    const std::string openblas = "CBLAS", core = "?";
#endif
#ifdef TP_HAS_DNNL
    if (gemm == CpuGemm::automatic) gemm = detail::automatic_cpu_gemm();
    if (gemm == CpuGemm::onednn) {
      const dnnl_version_t* v = dnnl_version();
      return fmt::format("oneDNN {}.{}.{} sgemm {} ({}, {} kernels, for the rest), {} thread(s)", v->major, v->minor,
                         v->patch, detail::cpu_has_avx512() ? "for this AVX-512 CPU" : "(forced)", openblas, core,
                         threads);
    }
#else
    (void)gemm;
#endif
    return fmt::format("{} ({} kernels, {} thread(s))", openblas, core, threads);
  }

  /// How bf16 GEMMs run: "oneDNN 2.6.3 bf16 matmul (avx512_bf16), fp32 accumulation" or "widened
  /// to fp32 (no AVX512_BF16 or AMX)"; f16 GEMMs are always widened to fp32.
  static std::string half_gemm_name(CpuHalfGemm half) {
    if (half == CpuHalfGemm::automatic) {
      if (detail::half_gemm_by_rows())
        return fmt::format("{} up to {} rows, widened to fp32 GEMMs above (AVX512_BF16 without AMX)",
                           half_gemm_name(CpuHalfGemm::onednn), detail::bf16_dot_max_rows);
      half = detail::automatic_half_gemm();
    }
#ifdef TP_HAS_DNNL
    if (half == CpuHalfGemm::onednn) {
      const dnnl_version_t* v = dnnl_version();
      return fmt::format("oneDNN {}.{}.{} bf16 matmul, fp32 accumulation ({})", v->major, v->minor, v->patch,
                         detail::cpu_has_bf16_dot() ? "this CPU has AVX512_BF16 or AMX" : "forced, emulated");
    }
#endif
    return fmt::format("widened to fp32 GEMMs ({})", detail::has_dnnl && detail::cpu_has_bf16_dot()
                                                         ? "forced"
                                                         : (detail::has_dnnl ? "no AVX512_BF16 or AMX" : "no oneDNN"));
  }

  /// The process's BLAS thread count (1 where the BLAS cannot say).
  static int blas_threads() {
#ifdef OPENBLAS_VERSION
    return openblas_get_num_threads();
#else
    return 1;
#endif
  }

  /// Threads for tp's own CPU kernels (the streaming linear ones): CpuOptions::threads when set,
  /// else one. Not the BLAS's process-wide default (every core), which would start that many
  /// threads per rank on each call of a kernel that takes a millisecond; ranks are the parallelism.
  int threads() const { return options_.threads > 0 ? options_.threads : 1; }

  /// Threads of oneDNN's calls (through OpenMP, set per calling thread): CpuOptions::threads, or,
  /// when that is 0, the process's BLAS setting, so that both libraries agree.
  int gemm_threads() const { return options_.threads > 0 ? options_.threads : blas_threads(); }

  /// Whether the linear ops may take the streaming kernels (CpuOptions::streaming_linear).
  bool streaming_linear() const { return options_.streaming_linear; }

  /// The library this instance's float GEMMs run on (never `automatic`).
  CpuGemm gemm_library() const { return options_.gemm; }
  /// How this instance's bf16 GEMMs run (never `automatic`).
  CpuHalfGemm half_gemm() const { return options_.half_gemm; }

  Stream stream() const { return nullptr; }
  void synchronize() const {}

  template <class T>
  T* allocate(std::int64_t n) const {
    T* p = static_cast<T*>(::operator new (static_cast<std::size_t>(n) * sizeof(T), std::align_val_t{64}));
    memory_.add(n * static_cast<std::int64_t>(sizeof(T)));
    return p;
  }
  /// `n` is the count given to allocate (Tensor passes its capacity).
  template <class T>
  void deallocate(T* p, std::int64_t n) const noexcept {
    ::operator delete (p, std::align_val_t{64});
    memory_.sub(n * static_cast<std::int64_t>(sizeof(T)));
  }

  /// Bytes of this instance's allocations now, and at most since construction or the last
  /// reset_peak_memory_stats (PyTorch's names for the CUDA caching allocator's counters).
  std::int64_t memory_allocated() const { return memory_.current(); }
  std::int64_t max_memory_allocated() const { return memory_.peak(); }
  void reset_peak_memory_stats() const { memory_.reset_peak(); }

  /// dst = src, within this device's memory; `to_host` and `from_host` cross to the host (a copy here).
  template <class T>
  void copy(In<T> src, MatrixView<T> dst) const {
    detail::check_same_shape<T>(src, dst, "copy");
    if (src.empty()) return;  // memcpy from a null pointer is undefined even for 0 bytes
    if (src.contiguous() && dst.contiguous()) {
      if (src.data != dst.data) std::memcpy(dst.data, src.data, static_cast<std::size_t>(src.size()) * sizeof(T));
      return;
    }
    for (std::int64_t r = 0; r < src.rows; ++r) std::copy_n(src.row(r), src.cols, dst.row(r));
  }
  template <class T>
  void to_host(In<T> src, MatrixView<T> host) const {
    copy(src, host);
  }
  template <class T>
  void from_host(In<T> host, MatrixView<T> dst) const {
    copy(host, dst);
  }

  template <class T>
  void fill(MatrixView<T> x, std::type_identity_t<T> value) const {
    for (std::int64_t r = 0; r < x.rows; ++r) std::fill_n(x.row(r), x.cols, value);
  }

  /// c = alpha * op(a) * op(b) + beta * c
  template <class T>
  void gemm(Op op_a, Op op_b, std::type_identity_t<T> alpha, In<T> a, In<T> b, std::type_identity_t<T> beta,
            MatrixView<T> c) const {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double> || is_float16_v<T>,
                  "Cpu::gemm supports float, double, tp::bf16 and tp::f16");
    TP_CHECK(valid(op_a) && valid(op_b), "gemm: op_a {} and op_b {} must be tp::Op::n or tp::Op::t",
             static_cast<unsigned>(op_a), static_cast<unsigned>(op_b));
    const std::int64_t m = op_a == Op::n ? a.rows : a.cols, k = op_a == Op::n ? a.cols : a.rows;
    const std::int64_t kb = op_b == Op::n ? b.rows : b.cols, n = op_b == Op::n ? b.cols : b.rows;
    TP_CHECK(k == kb && c.rows == m && c.cols == n, "gemm: op(a) is {}x{}, op(b) is {}x{}, c is {}x{}", m, k, kb, n,
             c.rows, c.cols);
    if (m == 0 || n == 0) return;
    if (k == 0) {  // BLAS leaves c alone when k is 0 but we promised beta * c
      detail::scale_host<T>(c, beta);
      return;
    }
    if constexpr (is_float16_v<T>) {
#ifdef TP_HAS_DNNL
      if constexpr (std::is_same_v<T, bf16>)
        if (options_.half_gemm == CpuHalfGemm::onednn && (!half_gemm_by_rows_ || m <= detail::bf16_dot_max_rows))
          return dnnl_bf16_gemm(op_a, op_b, m, n, k, alpha, a, b, beta, c);
#endif
      return widened_gemm<T>(op_a, op_b, alpha, a, b, beta, c);
    } else {
      const auto ta = op_a == Op::n ? CblasNoTrans : CblasTrans, tb = op_b == Op::n ? CblasNoTrans : CblasTrans;
      const auto lda = static_cast<int>(std::max<std::int64_t>(a.ld, 1)),
                 ldb = static_cast<int>(std::max<std::int64_t>(b.ld, 1));
      if (m <= 2) {
        // One or two tokens (decoding): OpenBLAS 0.3.21's sgemm packs all of B, a weight matrix here,
        // before using it once; a GEMV per row streams it instead, 3-4x faster at m = 1 and about 2x
        // at m = 2 for a 4096x1024 weight (single thread), and slower from m = 4 on.
        const int incx = op_a == Op::n ? 1 : lda;
        // c_i = alpha * op(b)^T a_i + beta * c_i, with op(b)^T = b when b is stored [n, k] (op t).
        const auto tv = op_b == Op::t ? CblasNoTrans : CblasTrans;
        const int rows = static_cast<int>(b.rows), cols = static_cast<int>(b.cols);
        for (std::int64_t i = 0; i < m; ++i) {
          const T* ai = op_a == Op::n ? a.row(i) : a.data + i;
          if constexpr (std::is_same_v<T, float>)
            cblas_sgemv(CblasRowMajor, tv, rows, cols, alpha, b.data, ldb, ai, incx, beta, c.row(i), 1);
          else
            cblas_dgemv(CblasRowMajor, tv, rows, cols, alpha, b.data, ldb, ai, incx, beta, c.row(i), 1);
        }
        return;
      }
#ifdef TP_HAS_DNNL
      if constexpr (std::is_same_v<T, float>)
        if (options_.gemm == CpuGemm::onednn && m * n * k >= kMinDnnlGemm)
          return dnnl_gemm(op_a, op_b, m, n, k, alpha, a, b, beta, c);
#endif
      if constexpr (std::is_same_v<T, float>)
        cblas_sgemm(CblasRowMajor, ta, tb, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha, a.data,
                    lda, b.data, ldb, beta, c.data, static_cast<int>(c.ld));
      else
        cblas_dgemm(CblasRowMajor, ta, tb, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha, a.data,
                    lda, b.data, ldb, beta, c.data, static_cast<int>(c.ld));
    }
  }

 private:
  /// Multiply-adds from which float GEMMs go to oneDNN when it is chosen (see the top of the file).
  static constexpr std::int64_t kMinDnnlGemm = 32 * 32 * 32;
#ifdef TP_HAS_DNNL
  /// oneDNN threads through OpenMP, whose thread count is per calling thread (ranks run as threads
  /// in tests); each call sets the caller's to options_.threads, as openblas_set_num_threads does,
  /// or, when the caller left threads at 0, to the process's BLAS setting, so both libraries agree.
  void dnnl_gemm(Op op_a, Op op_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, ConstView<float> a,
                 ConstView<float> b, float beta, MatrixView<float> c) const {
    const int threads = gemm_threads();
    if (omp_get_max_threads() != threads) omp_set_num_threads(threads);
    const dnnl_status_t status =
        dnnl_sgemm(op_a == Op::n ? 'N' : 'T', op_b == Op::n ? 'N' : 'T', m, n, k, alpha, a.data,
                   std::max<std::int64_t>(a.ld, 1), b.data, std::max<std::int64_t>(b.ld, 1), beta, c.data, c.ld);
    TP_CHECK(status == dnnl_success, "gemm: dnnl_sgemm {}x{}x{} failed with status {}", m, n, k,
             static_cast<int>(status));
  }
#endif

  /// The fallback for 16-bit GEMMs: a, b (and c when beta is not 0) widened to float (exact), the
  /// float GEMM, c rounded once. Costs (mk + kn + mn) conversions beside the mnk multiply-adds.
  template <class T>
  void widened_gemm(Op op_a, Op op_b, float alpha, ConstView<T> a, ConstView<T> b, float beta, MatrixView<T> c) const {
    const auto widen = [](ConstView<T> x, std::vector<float>& out) {
      out.resize(static_cast<std::size_t>(x.rows * x.cols));
      for (std::int64_t r = 0; r < x.rows; ++r) std::copy_n(x.row(r), x.cols, out.data() + r * x.cols);
      return ConstView<float>(out.data(), x.rows, x.cols);
    };
    std::vector<float> a32, b32, c32;
    const ConstView<float> a_w = widen(a, a32), b_w = widen(b, b32);
    if (beta != 0.0f)
      widen(c, c32);
    else
      c32.resize(static_cast<std::size_t>(c.rows * c.cols));
    gemm<float>(op_a, op_b, alpha, a_w, b_w, beta, MatrixView<float>(c32.data(), c.rows, c.cols));
    for (std::int64_t r = 0; r < c.rows; ++r)
      for (std::int64_t j = 0; j < c.cols; ++j) c(r, j) = c32[static_cast<std::size_t>(r * c.cols + j)];
  }

#ifdef TP_HAS_DNNL
  /// bf16 x bf16 -> fp32 accumulation -> bf16 through oneDNN's matmul primitive (2.x has no bf16
  /// GEMM function): alpha as its output scale, beta * c as a sum post-op (c read as bf16, added
  /// in float, rounded once). A primitive is made once per shape, strides, alpha and beta and
  /// thread (oneDNN compiles kernels for each), and kept for the thread's life.
  void dnnl_bf16_gemm(Op op_a, Op op_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, ConstView<bf16> a,
                      ConstView<bf16> b, float beta, MatrixView<bf16> c) const {
    const int threads = gemm_threads();
    if (omp_get_max_threads() != threads) omp_set_num_threads(threads);
    const std::int64_t lda = std::max<std::int64_t>(a.ld, 1), ldb = std::max<std::int64_t>(b.ld, 1);
    auto& cache = detail::DnnlMatmulCache::for_this_thread();
    detail::DnnlMatmul& mm = cache.get({m, n, k, lda, ldb, c.ld, op_a == Op::t, op_b == Op::t, alpha, beta});
    mm.run(a.data, b.data, c.data);
  }
#endif

  Options options_;
  bool half_gemm_by_rows_ = false;  // see detail::half_gemm_by_rows
  mutable CpuMemoryCounter memory_;
};
static_assert(Device<Cpu>);

}  // namespace tp
