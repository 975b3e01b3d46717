#pragma once
/// The host device: memory from the C++ heap and GEMM through CBLAS, the members of the `Device`
/// concept. The ops (tp::ops::gelu(cpu, ...)) run as loops in tp/device/cpu/<family>.hpp.
///
/// BLAS: OpenBLAS, chosen by measurement (BENCHMARKS.md). Its runtime dispatch (0.3.21) does not
/// know AMD Zen 4/5 and falls back to AVX2 kernels on CPUs with AVX-512, which halves sgemm speed;
/// `Cpu` warns on stderr when that happens, and the project's scripts set OPENBLAS_CORETYPE.

#ifndef TP_HAS_BLAS
#error "tp/device/cpu/cpu.hpp needs the tp::blas CMake component: target_link_libraries(... tp::blas)"
#endif

#include <cblas.h>

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

/// Warns once per process if OpenBLAS runs AVX2 kernels on a CPU with AVX-512.
inline void check_blas_kernels() {
#if defined(OPENBLAS_VERSION) && defined(__x86_64__)
  static const bool warned = [] {
    const std::string_view core = openblas_get_corename();
    const bool avx2_kernels = core == "Haswell" || core == "Zen" || core == "Sandybridge";
    if (avx2_kernels && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
      std::fprintf(stderr,
                   "tp: warning: OpenBLAS picked its %s (AVX2) kernels on a CPU with AVX-512, about half the sgemm "
                   "speed; set OPENBLAS_CORETYPE=SkylakeX before starting the program\n",
                   std::string(core).c_str());
    return true;
  }();
  (void)warned;
#endif
}

}  // namespace detail

struct CpuOptions {
  /// BLAS threads; 0 leaves the process's setting alone (OPENBLAS_NUM_THREADS, or what an earlier
  /// call set). OpenBLAS keeps one setting for the whole process, so only a caller that asks
  /// changes it: a default Cpu, such as the one host tensors share, never does. One thread per rank
  /// is right when ranks are pinned to cores, as under mpirun (the scripts export
  /// OPENBLAS_NUM_THREADS=1).
  int threads = 0;
};

class Cpu {
 public:
  static constexpr bool on_host = true;
  using Options = CpuOptions;

  Cpu() : Cpu(Options{}) {}
  explicit Cpu(Options options) : options_(options) {
    TP_CHECK(options.threads >= 0, "Cpu: threads must be positive (or 0: leave the BLAS setting alone), got {}",
             options.threads);
#ifdef OPENBLAS_VERSION
    if (options.threads > 0) openblas_set_num_threads(options.threads);
#endif
    detail::check_blas_kernels();
  }

  /// The process-wide instance host tensors use when given no device.
  static const std::shared_ptr<Cpu>& shared() {
    static const std::shared_ptr<Cpu> instance = std::make_shared<Cpu>();
    return instance;
  }

  /// "OpenBLAS 0.3.21 (Zen kernels, 1 thread)", for benchmark labels.
  static std::string blas_name() {
#ifdef OPENBLAS_VERSION
    return fmt::format("OpenBLAS {} ({} kernels, {} thread(s))", std::string_view(OPENBLAS_VERSION).substr(10, 6),
                       openblas_get_corename(), openblas_get_num_threads());
#else
    return "CBLAS";
#endif
  }

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
    if constexpr (std::is_same_v<T, float>)
      cblas_sgemm(CblasRowMajor, ta, tb, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha, a.data,
                  lda, b.data, ldb, beta, c.data, static_cast<int>(c.ld));
    else
      cblas_dgemm(CblasRowMajor, ta, tb, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha, a.data,
                  lda, b.data, ldb, beta, c.data, static_cast<int>(c.ld));
  }

 private:
  Options options_;
};
static_assert(Device<Cpu>);

}  // namespace tp
