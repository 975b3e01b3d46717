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

  /// y = gelu(x)
  template <class T>
  void gelu(In<T> x, MatrixView<T> y, Gelu kind) const {
    detail::check_same_shape(x, y, "gelu");
    for (std::int64_t r = 0; r < x.rows; ++r)
      for (std::int64_t c = 0; c < x.cols; ++c) y(r, c) = detail::gelu_value(x(r, c), kind);
  }

  /// dx = dy * gelu'(x)
  template <class T>
  void gelu_backward(In<T> x, In<T> dy, MatrixView<T> dx, Gelu kind) const {
    detail::check_same_shape(x, dx, "gelu_backward");
    detail::check_same_shape(dy, dx, "gelu_backward");
    for (std::int64_t r = 0; r < x.rows; ++r)
      for (std::int64_t c = 0; c < x.cols; ++c) dx(r, c) = dy(r, c) * detail::gelu_slope(x(r, c), kind);
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

 private:
  Options options_;
};

}  // namespace tp
