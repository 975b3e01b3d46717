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
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <string_view>

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
    for (std::int64_t c = 0; c < x.cols; ++c) x(r, c) = factor == T(0) ? T(0) : x(r, c) * factor;
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

}  // namespace detail

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
}  // namespace detail

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
    if (options_.gemm == CpuGemm::automatic) options_.gemm = detail::automatic_cpu_gemm();
  }

  /// The process-wide instance host tensors use when given no device.
  static const std::shared_ptr<Cpu>& shared() {
    static const std::shared_ptr<Cpu> instance = std::make_shared<Cpu>();
    return instance;
  }

  /// The library running float GEMMs in this process by default (CpuGemm::automatic) and why, for
  /// banners and benchmark labels: "OpenBLAS 0.3.21 (SkylakeX kernels, 1 thread(s))" or
  /// "oneDNN 2.6.3 sgemm for this AVX-512 CPU (OpenBLAS 0.3.21, SkylakeX kernels, for the rest), 1 thread(s)".
  static std::string blas_name() { return blas_name(detail::automatic_cpu_gemm()); }
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

  /// Whether the linear ops may take the streaming kernels (CpuOptions::streaming_linear).
  bool streaming_linear() const { return options_.streaming_linear; }

  /// The library this instance's float GEMMs run on (never `automatic`).
  CpuGemm gemm_library() const { return options_.gemm; }

  Stream stream() const { return nullptr; }
  void synchronize() const {}

  template <class T>
  T* allocate(std::int64_t n) const {
    return static_cast<T*>(::operator new (static_cast<std::size_t>(n) * sizeof(T), std::align_val_t{64}));
  }
  template <class T>
  void deallocate(T* p, std::int64_t) const {
    ::operator delete (p, std::align_val_t{64});
  }

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
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "Cpu::gemm supports float and double");
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

 private:
  /// Multiply-adds from which float GEMMs go to oneDNN when it is chosen (see the top of the file).
  static constexpr std::int64_t kMinDnnlGemm = 32 * 32 * 32;
#ifdef TP_HAS_DNNL
  /// oneDNN threads through OpenMP, whose thread count is per calling thread (ranks run as threads
  /// in tests); each call sets the caller's to options_.threads, as openblas_set_num_threads does,
  /// or, when the caller left threads at 0, to the process's BLAS setting, so both libraries agree.
  void dnnl_gemm(Op op_a, Op op_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha, ConstView<float> a,
                 ConstView<float> b, float beta, MatrixView<float> c) const {
    const int threads = options_.threads > 0 ? options_.threads : blas_threads();
    if (omp_get_max_threads() != threads) omp_set_num_threads(threads);
    const dnnl_status_t status =
        dnnl_sgemm(op_a == Op::n ? 'N' : 'T', op_b == Op::n ? 'N' : 'T', m, n, k, alpha, a.data,
                   std::max<std::int64_t>(a.ld, 1), b.data, std::max<std::int64_t>(b.ld, 1), beta, c.data, c.ld);
    TP_CHECK(status == dnnl_success, "gemm: dnnl_sgemm {}x{}x{} failed with status {}", m, n, k,
             static_cast<int>(status));
  }
#endif

  Options options_;
};
static_assert(Device<Cpu>);

}  // namespace tp
