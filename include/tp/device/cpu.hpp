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
#include "tp/detail/block_checks.hpp"

namespace tp {

namespace detail {

/// GELU in forms without cancellation, evaluated in double: 1 + erf(z) and 1 + tanh(u) lose
/// every digit for negative x (1 + tanh(-3) = 0.0037, so one float ulp of tanh is a 1e-5 error);
/// erfc(-z) and 2 sigmoid(2u) do not.
inline double gelu_value(double x, Gelu kind) {
  if (kind == Gelu::exact) return 0.5 * x * std::erfc(-x * 0.70710678118654752);
  const double u = 0.79788456080286536 * (x + 0.044715 * x * x * x);
  return x / (1.0 + std::exp(-2.0 * u));
}

/// d gelu(x) / dx, in the same stable forms: Phi(x) + x phi(x), or s + 2 x s (1 - s) u' with s = sigmoid(2u).
inline double gelu_slope(double x, Gelu kind) {
  if (kind == Gelu::exact)
    return 0.5 * std::erfc(-x * 0.70710678118654752) + x * 0.39894228040143268 * std::exp(-0.5 * x * x);
  const double k = 0.79788456080286536, u = k * (x + 0.044715 * x * x * x), s = 1.0 / (1.0 + std::exp(-2.0 * u));
  return s + 2.0 * x * s * (1.0 - s) * k * (1.0 + 3.0 * 0.044715 * x * x);
}

inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

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

/// The float GELUs. The tanh form goes through x sigmoid(2u), free of the cancellation in
/// 1 + tanh(u) for negative x; the exact form keeps 1 + erf, whose absolute error (below 3e-7 |x|)
/// stays far under float rounding of the larger outputs around it.
inline float gelu_value_fast(float x, Gelu kind) {
  if (kind == Gelu::exact) return 0.5f * x * (1.f + erf_fast(x * 0.70710678118654752f));
  const float u = 0.79788456080286536f * (x + 0.044715f * x * x * x);
  return x / (1.f + exp_fast(-2.f * u));
}

inline float gelu_slope_fast(float x, Gelu kind) {
  if (kind == Gelu::exact)
    return 0.5f * (1.f + erf_fast(x * 0.70710678118654752f)) + x * 0.39894228040143268f * exp_fast(-0.5f * x * x);
  const float k = 0.79788456080286536f, u = k * (x + 0.044715f * x * x * x), s = 1.f / (1.f + exp_fast(-2.f * u));
  return s + 2.f * x * s * (1.f - s) * k * (1.f + 3.f * 0.044715f * x * x);
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

  /// One AdamW update (PyTorch's torch.optim.AdamW, decoupled weight decay) of a parameter shard:
  /// p -= lr * wd * p; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
  /// p -= lr / (1 - b1^step) * m / (sqrt(v) / sqrt(1 - b2^step) + eps). Element-wise, so a shard
  /// updates exactly as the same elements of the full tensor would.
  template <class T>
  void adamw_step(MatrixView<T> param, In<T> grad, MatrixView<T> exp_avg, MatrixView<T> exp_avg_sq, double lr,
                  double beta1, double beta2, double eps, double weight_decay, std::int64_t step) const {
    detail::check_same_shape(grad, param, "adamw_step");
    detail::check_same_shape(ConstView<T>(exp_avg), param, "adamw_step");
    detail::check_same_shape(ConstView<T>(exp_avg_sq), param, "adamw_step");
    TP_CHECK(step >= 1, "adamw_step: step must count from 1, got {}", step);
    const T decay = static_cast<T>(1.0 - lr * weight_decay), b1 = static_cast<T>(beta1), b2 = static_cast<T>(beta2);
    const T one_b1 = static_cast<T>(1.0 - beta1), one_b2 = static_cast<T>(1.0 - beta2);
    const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(step)), bc2 = 1.0 - std::pow(beta2, static_cast<double>(step));
    const T step_size = static_cast<T>(lr / bc1), inv_sqrt_bc2 = static_cast<T>(1.0 / std::sqrt(bc2)), e = static_cast<T>(eps);
    for (std::int64_t r = 0; r < param.rows; ++r) {
      T* p = param.row(r);
      const T* g = grad.row(r);
      T* m = exp_avg.row(r);
      T* v = exp_avg_sq.row(r);
      for (std::int64_t c = 0; c < param.cols; ++c) {
        m[c] = b1 * m[c] + one_b1 * g[c];
        v[c] = b2 * v[c] + one_b2 * g[c] * g[c];
        p[c] = p[c] * decay - step_size * m[c] / (std::sqrt(v[c]) * inv_sqrt_bc2 + e);
      }
    }
  }

  /// LayerNorm over each row: y = (x - mean) * rstd * gamma + beta, rstd = 1 / sqrt(var + eps)
  /// (biased variance, as torch.nn.LayerNorm). Saves mean and rstd ([rows, 1]) for the backward.
  template <class T>
  void layer_norm(In<T> x, In<T> gamma, In<T> beta, MatrixView<T> y, MatrixView<T> mean, MatrixView<T> rstd,
                  double eps) const {
    detail::check_same_shape(x, y, "layer_norm");
    TP_CHECK(gamma.rows == 1 && gamma.cols == x.cols && beta.rows == 1 && beta.cols == x.cols,
             "layer_norm: gamma is {}x{} and beta {}x{}, input has {} columns", gamma.rows, gamma.cols, beta.rows,
             beta.cols, x.cols);
    TP_CHECK(mean.rows == x.rows && mean.cols == 1 && rstd.rows == x.rows && rstd.cols == 1,
             "layer_norm: mean is {}x{} and rstd {}x{}, expected {}x1", mean.rows, mean.cols, rstd.rows, rstd.cols,
             x.rows);
    TP_CHECK(x.cols > 0, "layer_norm: input has no columns");
    for (std::int64_t r = 0; r < x.rows; ++r) {
      const T* xr = x.row(r);
      double sum = 0, sq = 0;
      for (std::int64_t c = 0; c < x.cols; ++c) sum += xr[c];
      const double mu = sum / static_cast<double>(x.cols);
      for (std::int64_t c = 0; c < x.cols; ++c) sq += (xr[c] - mu) * (xr[c] - mu);
      const double rs = 1.0 / std::sqrt(sq / static_cast<double>(x.cols) + eps);
      mean(r, 0) = static_cast<T>(mu);
      rstd(r, 0) = static_cast<T>(rs);
      T* yr = y.row(r);
      for (std::int64_t c = 0; c < x.cols; ++c)
        yr[c] = static_cast<T>((xr[c] - mu) * rs * gamma.data[c] + beta.data[c]);
    }
  }

  /// The LayerNorm backward from the saved mean and rstd: dx = rstd * (dxhat - mean(dxhat) -
  /// xhat * mean(dxhat * xhat)) with dxhat = dy * gamma; accumulates dgamma += sum_rows(dy * xhat)
  /// and dbeta += sum_rows(dy).
  template <class T>
  void layer_norm_backward(In<T> x, In<T> gamma, In<T> mean, In<T> rstd, In<T> dy, MatrixView<T> dx,
                           MatrixView<T> dgamma, MatrixView<T> dbeta) const {
    detail::check_same_shape(x, dx, "layer_norm_backward");
    detail::check_same_shape(dy, dx, "layer_norm_backward");
    TP_CHECK(gamma.rows == 1 && gamma.cols == x.cols && dgamma.rows == 1 && dgamma.cols == x.cols &&
                 dbeta.rows == 1 && dbeta.cols == x.cols,
             "layer_norm_backward: gamma {}x{}, dgamma {}x{}, dbeta {}x{}, input has {} columns", gamma.rows,
             gamma.cols, dgamma.rows, dgamma.cols, dbeta.rows, dbeta.cols, x.cols);
    TP_CHECK(mean.rows == x.rows && mean.cols == 1 && rstd.rows == x.rows && rstd.cols == 1,
             "layer_norm_backward: mean is {}x{} and rstd {}x{}, expected {}x1", mean.rows, mean.cols, rstd.rows,
             rstd.cols, x.rows);
    const double n = static_cast<double>(x.cols);
    for (std::int64_t r = 0; r < x.rows; ++r) {
      const T* xr = x.row(r);
      const T* g = dy.row(r);
      const double mu = mean(r, 0), rs = rstd(r, 0);
      double sum_d = 0, sum_dx = 0;
      for (std::int64_t c = 0; c < x.cols; ++c) {
        const double xhat = (xr[c] - mu) * rs, d = static_cast<double>(g[c]) * gamma.data[c];
        sum_d += d;
        sum_dx += d * xhat;
        dgamma.data[c] += static_cast<T>(g[c] * xhat);
        dbeta.data[c] += g[c];
      }
      T* out = dx.row(r);
      for (std::int64_t c = 0; c < x.cols; ++c) {
        const double xhat = (xr[c] - mu) * rs, d = static_cast<double>(g[c]) * gamma.data[c];
        out[c] = static_cast<T>(rs * (d - sum_d / n - xhat * sum_dx / n));
      }
    }
  }

  /// Sum of squares of the elements, in double: for gradient norms (clipping, logging).
  template <class T>
  double sum_squares(In<T> x) const {
    double s = 0;
    for (std::int64_t r = 0; r < x.rows; ++r)
      for (std::int64_t c = 0; c < x.cols; ++c) s += static_cast<double>(x(r, c)) * static_cast<double>(x(r, c));
    return s;
  }

  template <class T>
  void scale(MatrixView<T> x, std::type_identity_t<T> factor) const {
    for (std::int64_t r = 0; r < x.rows; ++r)
      for (std::int64_t c = 0; c < x.cols; ++c) x(r, c) = factor == T(0) ? T(0) : x(r, c) * factor;
  }

  // ---- SwiGLU: gate and up side by side in one [rows, 2n] matrix, as the merged column layer leaves them.

  /// y[:, j] = silu(gate_up[:, j]) * gate_up[:, n + j], with y [rows, n].
  template <class T>
  void swiglu(In<T> gate_up, MatrixView<T> y) const {
    detail::check_swiglu(gate_up, y.rows, y.cols, "swiglu");
    const std::int64_t n = y.cols;
    for (std::int64_t r = 0; r < y.rows; ++r) {
      const T* g = gate_up.row(r);
      T* yr = y.row(r);
      for (std::int64_t c = 0; c < n; ++c)
        yr[c] = static_cast<T>(static_cast<double>(g[c]) * detail::sigmoid(g[c]) * static_cast<double>(g[n + c]));
    }
  }

  /// d gate_up from dy [rows, n]: d gate = dy * up * silu'(gate), d up = dy * silu(gate).
  template <class T>
  void swiglu_backward(In<T> gate_up, In<T> dy, MatrixView<T> d_gate_up) const {
    detail::check_swiglu(gate_up, dy.rows, dy.cols, "swiglu_backward");
    detail::check_same_shape(gate_up, d_gate_up, "swiglu_backward");
    const std::int64_t n = dy.cols;
    for (std::int64_t r = 0; r < dy.rows; ++r) {
      const T* g = gate_up.row(r);
      const T* d = dy.row(r);
      T* o = d_gate_up.row(r);
      for (std::int64_t c = 0; c < n; ++c) {
        const double x = g[c], up = g[n + c], dc = d[c], s = detail::sigmoid(x);
        o[c] = static_cast<T>(dc * up * (s + x * s * (1.0 - s)));
        o[n + c] = static_cast<T>(dc * x * s);
      }
    }
  }

  // ---- Embedding: `ids` is any contiguous matrix of token ids, read in row-major order.

  /// The position (row-major index) of the first id outside [begin, end) and not equal to `allowed`
  /// (cross-entropy's ignore_index), or -1 if there is none. Returns to the host, so a device
  /// implementation synchronizes.
  std::int64_t first_outside(In<std::int64_t> ids, std::int64_t begin, std::int64_t end, std::int64_t allowed) const {
    detail::check_ids(ids, ids.size(), "first_outside");
    for (std::int64_t i = 0; i < ids.size(); ++i)
      if ((ids.data[i] < begin || ids.data[i] >= end) && ids.data[i] != allowed) return i;
    return -1;
  }

  /// out[i, :] = table[ids[i] - first, :] when row ids[i] - first of the table exists, else zeros:
  /// a rank's masked lookup into its shard [first, first + table.rows) of the vocabulary.
  template <class T>
  void embedding_forward(In<std::int64_t> ids, In<T> table, std::int64_t first, MatrixView<T> out) const {
    detail::check_ids(ids, out.rows, "embedding_forward");
    TP_CHECK(table.cols == out.cols, "embedding_forward: table has {} columns, output {}", table.cols, out.cols);
    for (std::int64_t i = 0; i < out.rows; ++i) {
      const std::int64_t row = ids.data[i] - first;
      if (row >= 0 && row < table.rows)
        std::copy_n(table.row(row), out.cols, out.row(i));
      else
        std::fill_n(out.row(i), out.cols, T(0));
    }
  }

  /// d_table[ids[i] - first, :] += dy[i, :] for every id inside this shard of the vocabulary.
  template <class T>
  void embedding_backward(In<std::int64_t> ids, In<T> dy, std::int64_t first, MatrixView<T> d_table) const {
    detail::check_ids(ids, dy.rows, "embedding_backward");
    TP_CHECK(d_table.cols == dy.cols, "embedding_backward: table gradient has {} columns, gradient {}", d_table.cols,
             dy.cols);
    for (std::int64_t i = 0; i < dy.rows; ++i) {
      const std::int64_t row = ids.data[i] - first;
      if (row < 0 || row >= d_table.rows) continue;
      const T* g = dy.row(i);
      T* d = d_table.row(row);
      for (std::int64_t c = 0; c < dy.cols; ++c) d[c] += g[c];
    }
  }

  // ---- Cross-entropy over a vocabulary shard: logits [tokens, vocab_r] hold columns [first, first +
  // vocab_r) of the full logits; per-token statistics are [tokens, 1] (max, exact in T) or
  // [tokens, 3] (stats, in double whatever T: log(sum_exp) of a confident token is log(1 + tiny),
  // and a sum rounded to float would carry a relative error of 1e-5 into that loss).

  /// row_max[t, 0] = max over this shard's columns of logits[t, :].
  template <class T>
  void row_max(In<T> logits, MatrixView<T> out) const {
    TP_CHECK(out.rows == logits.rows && out.cols == 1 && logits.cols > 0, "row_max: logits are {}x{}, output {}x{}",
             logits.rows, logits.cols, out.rows, out.cols);
    for (std::int64_t t = 0; t < logits.rows; ++t) out(t, 0) = *std::max_element(logits.row(t), logits.row(t) + logits.cols);
  }

  /// This shard's partial sums, given the global row max m: stats[t] = {sum_j exp(x_tj - m_t),
  /// x_t,target (0 unless the target is in this shard), sum_j (x_tj - m_t)}. Summed over ranks they
  /// give every statistic the loss needs; the last one is taken relative to m so that it stays
  /// exact for logits of 1e4.
  template <class T>
  void cross_entropy_stats(In<T> logits, In<std::int64_t> targets, std::int64_t first, In<T> max,
                           MatrixView<double> stats) const {
    detail::check_ce<T>(logits, targets, max, stats, "cross_entropy_stats");
    for (std::int64_t t = 0; t < logits.rows; ++t) {
      const T* x = logits.row(t);
      const T m = max(t, 0);
      // Sums over a vocabulary shard of 50k terms: accumulate wider than T.
      double sum_exp = 0, sum_shifted = 0;
      for (std::int64_t j = 0; j < logits.cols; ++j) {
        sum_exp += static_cast<double>(std::exp(x[j] - m));
        sum_shifted += static_cast<double>(x[j] - m);
      }
      const std::int64_t j = targets.data[t] - first;
      stats(t, 0) = sum_exp;
      stats(t, 1) = j >= 0 && j < logits.cols ? static_cast<double>(x[j] - m) : 0.0;
      stats(t, 2) = sum_shifted;
    }
  }

  /// Per-token loss from the summed statistics (target logit relative to the max):
  /// (1 - s) (lse - x_target) + s (lse - mean_j x_j) with lse - x = log(sum_exp) - (x - m); zero
  /// where the target is `ignore_index`.
  template <class T>
  void cross_entropy_loss(In<double> stats, In<std::int64_t> targets, std::int64_t vocab, std::int64_t ignore_index,
                          double smoothing, MatrixView<T> loss) const {
    TP_CHECK(stats.cols == 3 && loss.rows == stats.rows && loss.cols == 1 && targets.size() == stats.rows &&
                 targets.contiguous(),
             "cross_entropy_loss: stats {}x{}, {} targets, loss {}x{}", stats.rows, stats.cols, targets.size(),
             loss.rows, loss.cols);
    for (std::int64_t t = 0; t < stats.rows; ++t) {
      if (targets.data[t] == ignore_index) {
        loss(t, 0) = T(0);
        continue;
      }
      const double log_sum = std::log(stats(t, 0)), nll = log_sum - stats(t, 1);
      loss(t, 0) = static_cast<T>(smoothing == 0 ? nll
                                                 : (1 - smoothing) * nll +
                                                       smoothing * (log_sum - stats(t, 2) / static_cast<double>(vocab)));
    }
  }

  /// d logits[t, j] = grad_loss[t] (softmax_tj - (1 - s) [j == target] - s / vocab), zero rows where
  /// the target is `ignore_index`.
  template <class T>
  void cross_entropy_backward(In<T> logits, In<std::int64_t> targets, std::int64_t first, In<T> max, In<double> stats,
                              In<T> grad_loss, std::int64_t vocab, std::int64_t ignore_index, double smoothing,
                              MatrixView<T> grad_logits) const {
    detail::check_ce<T>(logits, targets, max, stats, "cross_entropy_backward");
    detail::check_same_shape(logits, grad_logits, "cross_entropy_backward");
    TP_CHECK(grad_loss.rows == logits.rows && grad_loss.cols == 1,
             "cross_entropy_backward: loss gradient is {}x{}, expected {}x1", grad_loss.rows, grad_loss.cols,
             logits.rows);
    const double uniform = smoothing / static_cast<double>(vocab), on_target = 1 - smoothing;
    for (std::int64_t t = 0; t < logits.rows; ++t) {
      T* d = grad_logits.row(t);
      if (targets.data[t] == ignore_index) {
        std::fill_n(d, logits.cols, T(0));
        continue;
      }
      const T* x = logits.row(t);
      const T m = max(t, 0);
      const double inv_sum = 1.0 / stats(t, 0), g = grad_loss(t, 0);
      const std::int64_t target = targets.data[t] - first;
      for (std::int64_t j = 0; j < logits.cols; ++j)
        d[j] = static_cast<T>(g * (static_cast<double>(std::exp(x[j] - m)) * inv_sum - uniform -
                                   (j == target ? on_target : 0.0)));
    }
  }

  // ---- Scaled dot-product attention on [tokens, heads * head_dim] matrices, tokens = batch * seq_len
  // (sequence b is rows [b * seq_len, (b + 1) * seq_len)). q has hq heads, k and v hk heads, hq a
  // multiple of hk: query head h reads kv head h / (hq / hk) (grouped-query attention).

  /// out = softmax(scale q k^T, causal mask) v per sequence and head; probs [batch * hq * seq_len,
  /// seq_len] keeps the softmax for backward, block (b, h) at rows (b * hq + h) * seq_len.
  template <class T>
  void attention_forward(In<T> q, In<T> k, In<T> v, std::int64_t seq_len, std::int64_t head_dim, bool causal,
                         MatrixView<T> probs, MatrixView<T> out) const {
    const auto g = detail::attention_geometry<T>(q, k, v, seq_len, head_dim, probs.rows, probs.cols, out.rows,
                                                 out.cols, "attention_forward");
    const T scale = T(1) / std::sqrt(static_cast<T>(head_dim));
    for (std::int64_t b = 0; b < g.batch; ++b)
      for (std::int64_t h = 0; h < g.hq; ++h) {
        const std::int64_t kv = h / g.group, r0 = b * seq_len;
        MatrixView<T> p = probs.rows_range((b * g.hq + h) * seq_len, seq_len);
        gemm(Op::n, Op::t, scale, q.block(r0, h * head_dim, seq_len, head_dim),
             k.block(r0, kv * head_dim, seq_len, head_dim), T(0), p);
        for (std::int64_t i = 0; i < seq_len; ++i) {
          T* row = p.row(i);
          const std::int64_t visible = causal ? i + 1 : seq_len;
          const T m = *std::max_element(row, row + visible);
          double sum = 0;
          for (std::int64_t j = 0; j < visible; ++j) sum += static_cast<double>(row[j] = std::exp(row[j] - m));
          const T inv = static_cast<T>(1.0 / sum);
          for (std::int64_t j = 0; j < visible; ++j) row[j] *= inv;
          std::fill(row + visible, row + seq_len, T(0));
        }
        gemm(Op::n, Op::n, T(1), ConstView<T>(p), v.block(r0, kv * head_dim, seq_len, head_dim), T(0),
             out.block(r0, h * head_dim, seq_len, head_dim));
      }
  }

  /// Gradients of attention_forward: dq, dk, dv (same shapes as q, k, v; dk and dv summed over the
  /// query heads of each group) from dout and the saved probs. `d_scores` is workspace of probs'
  /// shape, for the gradient of the scores (a device may compute every head's at once).
  template <class T>
  void attention_backward(In<T> q, In<T> k, In<T> v, In<T> probs, In<T> dout, std::int64_t seq_len,
                          std::int64_t head_dim, MatrixView<T> d_scores, MatrixView<T> dq, MatrixView<T> dk,
                          MatrixView<T> dv) const {
    const auto g = detail::attention_geometry<T>(q, k, v, seq_len, head_dim, probs.rows, probs.cols, dout.rows,
                                                 dout.cols, "attention_backward");
    detail::check_same_shape(q, dq, "attention_backward dq");
    detail::check_same_shape(k, dk, "attention_backward dk");
    detail::check_same_shape(v, dv, "attention_backward dv");
    detail::check_same_shape(probs, d_scores, "attention_backward d_scores");
    const T scale = T(1) / std::sqrt(static_cast<T>(head_dim));
    fill(dk, T(0));
    fill(dv, T(0));
    for (std::int64_t b = 0; b < g.batch; ++b)
      for (std::int64_t h = 0; h < g.hq; ++h) {
        const std::int64_t kv = h / g.group, r0 = b * seq_len;
        const ConstView<T> p = probs.rows_range((b * g.hq + h) * seq_len, seq_len);
        const ConstView<T> d_o = dout.block(r0, h * head_dim, seq_len, head_dim);
        const MatrixView<T> scratch = d_scores.rows_range((b * g.hq + h) * seq_len, seq_len);
        // dv += p^T do; dp = do v^T; ds = p (dp - rowsum(p dp)) scale; dq = ds k; dk += ds^T q.
        gemm(Op::t, Op::n, T(1), p, d_o, T(1), dv.block(r0, kv * head_dim, seq_len, head_dim));
        gemm(Op::n, Op::t, T(1), d_o, v.block(r0, kv * head_dim, seq_len, head_dim), T(0), scratch);
        for (std::int64_t i = 0; i < seq_len; ++i) {
          const T* pr = p.row(i);
          T* ds = scratch.row(i);
          double wide = 0;
          for (std::int64_t j = 0; j < seq_len; ++j) wide += static_cast<double>(pr[j]) * static_cast<double>(ds[j]);
          const T dot = static_cast<T>(wide);
          for (std::int64_t j = 0; j < seq_len; ++j) ds[j] = pr[j] * (ds[j] - dot) * scale;
        }
        gemm(Op::n, Op::n, T(1), ConstView<T>(scratch), k.block(r0, kv * head_dim, seq_len, head_dim), T(0),
             dq.block(r0, h * head_dim, seq_len, head_dim));
        gemm(Op::t, Op::n, T(1), ConstView<T>(scratch), q.block(r0, h * head_dim, seq_len, head_dim), T(1),
             dk.block(r0, kv * head_dim, seq_len, head_dim));
      }
  }

 private:
  Options options_;
};

}  // namespace tp
