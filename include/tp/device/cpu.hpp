#pragma once
/// The host device policy: memory from the C++ heap, GEMM through CBLAS, and the element-wise
/// operations the layers need as plain loops. Every device policy offers the same members, so the
/// layers are written once for `Cpu` and `Cuda`.
///
/// BLAS: OpenBLAS, chosen by measurement (BENCHMARKS.md). Its runtime dispatch (0.3.21) does not
/// know AMD Zen 4/5 and falls back to AVX2 kernels on CPUs with AVX-512, which halves sgemm speed;
/// `Cpu` warns on stderr when that happens, and the project's scripts set OPENBLAS_CORETYPE.

#ifndef TP_HAS_BLAS
#error "tp/device/cpu.hpp needs the tp::blas CMake component: target_link_libraries(... tp::blas)"
#endif

#include <cblas.h>

#include <algorithm>
#include <bit>
#include <cmath>
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

namespace tp {

namespace detail {

template <class T>
T gelu_value(T x, Gelu kind) {
  if (kind == Gelu::exact) return T(0.5) * x * (T(1) + std::erf(x * T(0.70710678118654752)));
  const T k = T(0.79788456080286536), u = k * (x + T(0.044715) * x * x * x);
  return T(0.5) * x * (T(1) + std::tanh(u));
}

/// d gelu(x) / dx.
template <class T>
T gelu_slope(T x, Gelu kind) {
  if (kind == Gelu::exact)
    return T(0.5) * (T(1) + std::erf(x * T(0.70710678118654752))) + x * T(0.39894228040143268) * std::exp(T(-0.5) * x * x);
  const T k = T(0.79788456080286536), u = k * (x + T(0.044715) * x * x * x), th = std::tanh(u);
  return T(0.5) * (T(1) + th) + T(0.5) * x * (T(1) - th * th) * k * (T(1) + T(3 * 0.044715) * x * x);
}

/// sign(x) * min(|x|, limit), computed on the bit patterns: an integer min vectorizes, while a float
/// comparison (which may trap) keeps GCC from vectorizing the loop around it. A NaN comes out as
/// +-limit, but every caller multiplies the result by x again, so NaNs still propagate.
inline float clamp_abs(float x, float limit) {
  const auto bits = std::bit_cast<std::int32_t>(x);
  const std::int32_t mag = std::min(bits & 0x7fffffff, std::bit_cast<std::int32_t>(limit));
  return std::bit_cast<float>(mag | (bits & static_cast<std::int32_t>(0x80000000u)));
}

/// erf for float without a libm call, so that the GELU loops vectorize (std::erf is a scalar call,
/// about a quarter of a 512-token MLP step): a rational approximation on [-4, 4], beyond which erf
/// is +-1 in float. Absolute error below 5e-7 (measured against std::erf on a 1e-4 grid).
inline float erf_fast(float a) {
  const float x = clamp_abs(a, 4.f), x2 = x * x;
  float p = -2.72614225801306e-10f;
  p = p * x2 + 2.77068142495902e-08f;
  p = p * x2 - 2.10102402082508e-06f;
  p = p * x2 - 5.69250639462346e-05f;
  p = p * x2 - 7.34990630326855e-04f;
  p = p * x2 - 2.95459980854025e-03f;
  p = p * x2 - 1.60960333262415e-02f;
  float q = -1.45660718464996e-05f;
  q = q * x2 - 2.13374055278905e-04f;
  q = q * x2 - 1.68282697438203e-03f;
  q = q * x2 - 7.37332916720468e-03f;
  q = q * x2 - 1.42647390514189e-02f;
  return x * p / q;
}

/// exp for float without a libm call (Cephes' expf: 2^n times a polynomial in the remainder), a
/// few ulp; arguments are clamped to [-87, 87], where float's exp neither overflows nor goes
/// subnormal.
inline float exp_fast(float a) {
  const float x = clamp_abs(a, 87.f);
  const float n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;  // round to nearest, branch-free
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * (r * r) + r + 1.f;
  return e * std::bit_cast<float>((static_cast<std::int32_t>(n) + 127) << 23);
}

/// tanh(u) = 1 - 2 / (exp(2u) + 1), with u clamped to [-10, 10], where tanh rounds to +-1 in float.
inline float tanh_fast(float u) {
  const float c = clamp_abs(u, 10.f);
  return 1.f - 2.f / (exp_fast(2.f * c) + 1.f);
}

inline float gelu_value_fast(float x, Gelu kind) {
  if (kind == Gelu::exact) return 0.5f * x * (1.f + erf_fast(x * 0.70710678118654752f));
  return 0.5f * x * (1.f + tanh_fast(0.79788456080286536f * (x + 0.044715f * x * x * x)));
}

inline float gelu_slope_fast(float x, Gelu kind) {
  if (kind == Gelu::exact)
    return 0.5f * (1.f + erf_fast(x * 0.70710678118654752f)) + x * 0.39894228040143268f * exp_fast(-0.5f * x * x);
  const float k = 0.79788456080286536f, th = tanh_fast(k * (x + 0.044715f * x * x * x));
  return 0.5f * (1.f + th) + 0.5f * x * (1.f - th * th) * k * (1.f + 3.f * 0.044715f * x * x);
}

template <class T>
void check_same_shape(ConstView<T> a, MatrixView<T> b, const char* op) {
  TP_CHECK(a.rows == b.rows && a.cols == b.cols, "{}: shapes {}x{} and {}x{} differ", op, a.rows, a.cols, b.rows,
           b.cols);
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
  /// BLAS threads. One per rank is right when ranks are pinned to cores, as under mpirun here.
  /// OpenBLAS keeps this setting process-wide.
  int threads = 1;
};

class Cpu {
 public:
  static constexpr bool on_host = true;
  using Options = CpuOptions;

  Cpu() : Cpu(Options{}) {}
  explicit Cpu(Options options) : options_(options) {
    TP_CHECK(options.threads > 0, "Cpu: threads must be positive, got {}", options.threads);
#ifdef OPENBLAS_VERSION
    openblas_set_num_threads(options.threads);
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
    return static_cast<T*>(::operator new(static_cast<std::size_t>(n) * sizeof(T), std::align_val_t{64}));
  }
  template <class T>
  void deallocate(T* p, std::int64_t) const {
    ::operator delete(p, std::align_val_t{64});
  }

  /// dst = src, within this device's memory; `to_host` and `from_host` cross to the host (a copy here).
  template <class T>
  void copy(In<T> src, MatrixView<T> dst) const {
    detail::check_same_shape(src, dst, "copy");
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

  /// y += x
  template <class T>
  void add(In<T> x, MatrixView<T> y) const {
    detail::check_same_shape(x, y, "add");
    for (std::int64_t r = 0; r < x.rows; ++r) {
      const T* xr = x.row(r);
      T* yr = y.row(r);
      for (std::int64_t c = 0; c < x.cols; ++c) yr[c] += xr[c];
    }
  }

  /// c = alpha * op(a) * op(b) + beta * c
  template <class T>
  void gemm(Op op_a, Op op_b, std::type_identity_t<T> alpha, In<T> a, In<T> b, std::type_identity_t<T> beta,
            MatrixView<T> c) const {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "Cpu::gemm supports float and double");
    const std::int64_t m = op_a == Op::n ? a.rows : a.cols, k = op_a == Op::n ? a.cols : a.rows;
    const std::int64_t kb = op_b == Op::n ? b.rows : b.cols, n = op_b == Op::n ? b.cols : b.rows;
    TP_CHECK(k == kb && c.rows == m && c.cols == n, "gemm: op(a) is {}x{}, op(b) is {}x{}, c is {}x{}", m, k, kb, n,
             c.rows, c.cols);
    if (m == 0 || n == 0) return;
    if (k == 0) {  // BLAS leaves c alone when k is 0 but we promised beta * c
      scale(c, beta);
      return;
    }
    const auto ta = op_a == Op::n ? CblasNoTrans : CblasTrans, tb = op_b == Op::n ? CblasNoTrans : CblasTrans;
    const auto lda = static_cast<int>(std::max<std::int64_t>(a.ld, 1)), ldb = static_cast<int>(std::max<std::int64_t>(b.ld, 1));
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

  /// y[r, :] += bias[0, :] for every row r.
  template <class T>
  void add_bias(MatrixView<T> y, In<T> bias) const {
    TP_CHECK(bias.rows == 1 && bias.cols == y.cols, "add_bias: bias is {}x{}, output has {} columns", bias.rows,
             bias.cols, y.cols);
    for (std::int64_t r = 0; r < y.rows; ++r) {
      T* yr = y.row(r);
      for (std::int64_t c = 0; c < y.cols; ++c) yr[c] += bias.data[c];
    }
  }

  /// db[0, :] += sum over rows of dy.
  template <class T>
  void add_bias_grad(In<T> dy, MatrixView<T> db) const {
    TP_CHECK(db.rows == 1 && db.cols == dy.cols, "add_bias_grad: bias gradient is {}x{}, gradient has {} columns",
             db.rows, db.cols, dy.cols);
    for (std::int64_t r = 0; r < dy.rows; ++r) {
      const T* g = dy.row(r);
      for (std::int64_t c = 0; c < dy.cols; ++c) db.data[c] += g[c];
    }
  }

  /// y = gelu(x). float uses branch-free erf/exp approximations that vectorize; double uses libm.
  template <class T>
  void gelu(In<T> x, MatrixView<T> y, Gelu kind) const {
    detail::check_same_shape(x, y, "gelu");
    for (std::int64_t r = 0; r < x.rows; ++r) {
      const T* xr = x.row(r);
      T* yr = y.row(r);
      if constexpr (std::is_same_v<T, float>) {
        if (kind == Gelu::exact)
          for (std::int64_t c = 0; c < x.cols; ++c) yr[c] = detail::gelu_value_fast(xr[c], Gelu::exact);
        else
          for (std::int64_t c = 0; c < x.cols; ++c) yr[c] = detail::gelu_value_fast(xr[c], Gelu::tanh);
      } else {
        for (std::int64_t c = 0; c < x.cols; ++c) yr[c] = detail::gelu_value(xr[c], kind);
      }
    }
  }

  /// dx = dy * gelu'(x)
  template <class T>
  void gelu_backward(In<T> x, In<T> dy, MatrixView<T> dx, Gelu kind) const {
    detail::check_same_shape(x, dx, "gelu_backward");
    detail::check_same_shape(dy, dx, "gelu_backward");
    for (std::int64_t r = 0; r < x.rows; ++r) {
      const T *xr = x.row(r), *gr = dy.row(r);
      T* out = dx.row(r);
      if constexpr (std::is_same_v<T, float>) {
        if (kind == Gelu::exact)
          for (std::int64_t c = 0; c < x.cols; ++c) out[c] = gr[c] * detail::gelu_slope_fast(xr[c], Gelu::exact);
        else
          for (std::int64_t c = 0; c < x.cols; ++c) out[c] = gr[c] * detail::gelu_slope_fast(xr[c], Gelu::tanh);
      } else {
        for (std::int64_t c = 0; c < x.cols; ++c) out[c] = gr[c] * detail::gelu_slope(xr[c], kind);
      }
    }
  }

  template <class T>
  void scale(MatrixView<T> x, std::type_identity_t<T> factor) const {
    for (std::int64_t r = 0; r < x.rows; ++r)
      for (std::int64_t c = 0; c < x.cols; ++c) x(r, c) = factor == T(0) ? T(0) : x(r, c) * factor;
  }

 private:
  Options options_;
};

}  // namespace tp
