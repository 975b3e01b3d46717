#pragma once
/// The unsharded computation every parallel result is compared with: plain double-precision
/// loops, no BLAS, no communicator.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "tp/core/error.hpp"
#include "tp/core/rng.hpp"
#include "tp/core/tensor.hpp"
#include "tp/device/cpu.hpp"

namespace tp::ref {

struct Matrix {
  std::int64_t rows = 0, cols = 0;
  std::vector<double> data;

  Matrix() = default;
  Matrix(std::int64_t r, std::int64_t c) : rows(r), cols(c), data(static_cast<std::size_t>(r * c), 0.0) {}
  double& operator()(std::int64_t r, std::int64_t c) { return data[r * cols + c]; }
  double operator()(std::int64_t r, std::int64_t c) const { return data[r * cols + c]; }

  Matrix block(std::int64_t r0, std::int64_t c0, std::int64_t nr, std::int64_t nc) const {
    Matrix out(nr, nc);
    for (std::int64_t r = 0; r < nr; ++r)
      for (std::int64_t c = 0; c < nc; ++c) out(r, c) = (*this)(r0 + r, c0 + c);
    return out;
  }
  Matrix cols_range(std::int64_t c0, std::int64_t nc) const { return block(0, c0, rows, nc); }
  Matrix rows_range(std::int64_t r0, std::int64_t nr) const { return block(r0, 0, nr, cols); }
};

/// A seed that differs per test (and per call within it) and is the same on every rank, so that
/// all ranks build the same full matrices. TP_TEST_SEED shifts every seed, for fresh draws.
inline std::uint64_t test_seed(std::uint64_t salt = 0) {
  static const std::uint64_t base = [] {
    const char* env = std::getenv("TP_TEST_SEED");
    return env ? std::strtoull(env, nullptr, 10) : 20261122ull;
  }();
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const std::string name = info ? std::string(info->test_suite_name()) + "." + info->name() : "";
  return base ^ name_key(name) ^ (salt * 0x9E3779B97F4A7C15ull);
}

/// Standard-normal entries, rounded through T so that the reference sees exactly what the layer sees.
template <class T = double>
Matrix random_matrix(std::int64_t rows, std::int64_t cols, std::uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  Matrix m(rows, cols);
  for (auto& v : m.data) v = static_cast<double>(static_cast<T>(normal(gen)));
  return m;
}

/// op(a) * op(b), transposing where asked.
inline Matrix matmul(const Matrix& a, bool trans_a, const Matrix& b, bool trans_b) {
  const std::int64_t m = trans_a ? a.cols : a.rows, k = trans_a ? a.rows : a.cols;
  const std::int64_t n = trans_b ? b.rows : b.cols;
  Matrix c(m, n);
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      double acc = 0.0;
      for (std::int64_t p = 0; p < k; ++p) acc += (trans_a ? a(p, i) : a(i, p)) * (trans_b ? b(j, p) : b(p, j));
      c(i, j) = acc;
    }
  return c;
}

inline Matrix add(Matrix a, const Matrix& b) {
  for (std::size_t i = 0; i < a.data.size(); ++i) a.data[i] += b.data[i];
  return a;
}

inline Matrix scale(Matrix a, double f) {
  for (auto& v : a.data) v *= f;
  return a;
}

/// Adds a [1, cols] bias to every row.
inline Matrix add_bias(Matrix y, const Matrix& bias) {
  for (std::int64_t r = 0; r < y.rows; ++r)
    for (std::int64_t c = 0; c < y.cols; ++c) y(r, c) += bias(0, c);
  return y;
}

inline Matrix column_sums(const Matrix& g) {
  Matrix s(1, g.cols);
  for (std::int64_t r = 0; r < g.rows; ++r)
    for (std::int64_t c = 0; c < g.cols; ++c) s(0, c) += g(r, c);
  return s;
}

inline double gelu(double x, bool tanh_approx) {
  if (!tanh_approx) return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
  return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}

/// d gelu / dx: Phi(x) + x phi(x) for the exact form; the chain rule through tanh for the other.
inline double gelu_slope(double x, bool tanh_approx) {
  if (!tanh_approx) return 0.5 * std::erfc(-x / std::sqrt(2.0)) + x * std::exp(-0.5 * x * x) / std::sqrt(2.0 * M_PI);
  const double k = std::sqrt(2.0 / M_PI), u = k * (x + 0.044715 * x * x * x), sech2 = 1.0 / (std::cosh(u) * std::cosh(u));
  return 0.5 * (1.0 + std::tanh(u)) + 0.5 * x * sech2 * k * (1.0 + 3.0 * 0.044715 * x * x);
}

template <class F>
Matrix map(Matrix m, F f) {
  for (auto& v : m.data) v = f(v);
  return m;
}

/// Linear layer y = x w^T + b and its gradients, w stored [out, in] as in torch.nn.Linear.
struct Linear {
  Matrix y, dx, dw, db;
};
inline Linear linear(const Matrix& x, const Matrix& w, const Matrix* b, const Matrix& dy) {
  Linear out;
  out.y = matmul(x, false, w, true);
  if (b) out.y = add_bias(out.y, *b);
  out.dx = matmul(dy, false, w, false);
  out.dw = matmul(dy, true, x, false);
  out.db = column_sums(dy);
  return out;
}

template <class T>
Tensor<T, Cpu> to_tensor(const Matrix& m) {
  Tensor<T, Cpu> t(m.rows, m.cols);
  for (std::int64_t r = 0; r < m.rows; ++r)
    for (std::int64_t c = 0; c < m.cols; ++c) t(r, c) = static_cast<T>(m(r, c));
  return t;
}

template <class T>
Matrix from_view(ConstView<T> v) {
  Matrix m(v.rows, v.cols);
  for (std::int64_t r = 0; r < v.rows; ++r)
    for (std::int64_t c = 0; c < v.cols; ++c) m(r, c) = static_cast<double>(v(r, c));
  return m;
}

/// ||got - want|| / ||want||, Frobenius norms; infinity when the shapes differ.
inline double rel_error(const Matrix& got, const Matrix& want) {
  if (got.rows != want.rows || got.cols != want.cols) return INFINITY;
  double num = 0, den = 0;
  for (std::size_t i = 0; i < got.data.size(); ++i) {
    num += (got.data[i] - want.data[i]) * (got.data[i] - want.data[i]);
    den += want.data[i] * want.data[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

/// Relative tolerance by element type: a few units of float32 rounding, of float64 rounding.
template <class T>
inline constexpr double tolerance = std::is_same_v<T, double> ? 1e-12 : 1e-6;
/// The host's 16-bit types, as CUDA's (common/cuda_support.hpp): the inputs are the same rounded
/// values on both sides, so the error is the roundings of the results and of the intermediates a
/// layer stores in T (GEMM outputs, activations, partial sums reduced over ranks), each at most the
/// unit roundoff u (bf16 2^-8 = 3.9e-3, f16 2^-11 = 4.9e-4) relative; two or three such roundings
/// in a chain, normwise and partly cancelling, stay under 2.5 u: 1e-2 for bf16, 2e-3 for f16.
template <>
inline constexpr double tolerance<bf16> = 1e-2;
template <>
inline constexpr double tolerance<f16> = 2e-3;

/// The normwise tolerance (rel_error: ||got - want|| / ||want|| over the whole tensor) of a tensor
/// that a reduction of length k produced: a GEMM's inner dimension, or the tokens a weight or bias
/// gradient sums over. For the host's 16-bit types, with unit roundoff u (bf16 2^-8, f16 2^-11):
/// C = A B with both operands stored in T, so each carries a relative error up to u per element
/// (the roundings of the chain before them are of that order, normwise), and C is rounded once
/// more when stored. Componentwise |dC| <= 2u |A||B| + u |C| (the fp32 accumulation adds k 2^-24,
/// nothing beside these), hence ||dC|| <= 2u ||A|| ||B|| + u ||C||; for data of random signs
/// ||A|| ||B|| ~ sqrt(k) ||C|| (a sum of k terms cancels down to sqrt(k) of their size), so
///   ||dC|| / ||C|| <= u (2 sqrt(k) + 1),
/// and never below tolerance<T>. A short cancelling sum is where the flat 1e-2 fell short: an MLP's
/// SwiGLU bias gradient over 5 tokens measures 1.5e-2 against 2.1e-2 from k = 5, attention's dx
/// 1.3e-2 against 4.2e-2 to 9.8e-2 (k = 24 to 144); a shard dropped from a bf16 sum on purpose
/// shows as 0.13 to 0.77. Float and double keep tolerance<T> whatever k; so do CUDA's 16-bit
/// types, as before this bound (the GPU suite runs them at it).
template <class T>
double reduction_tolerance(std::int64_t k) {
  if constexpr (std::is_same_v<T, bf16> || std::is_same_v<T, f16>) {
    const double u = std::is_same_v<T, bf16> ? 0x1p-8 : 0x1p-11;
    return std::max(tolerance<T>, u * (2 * std::sqrt(static_cast<double>(k)) + 1));
  } else {
    (void)k;
    return tolerance<T>;
  }
}

}  // namespace tp::ref

/// Expects `got` (a view or ref::Matrix) to match the reference `want` within the dtype's tolerance.
#define TP_EXPECT_CLOSE(T, got, want)                                                                   \
  do {                                                                                                  \
    const ::tp::ref::Matrix got_m_ = ::tp::test::as_matrix<T>(got);                                     \
    const ::tp::ref::Matrix& want_m_ = (want);                                                          \
    EXPECT_EQ(got_m_.rows, want_m_.rows) << #got;                                                       \
    EXPECT_EQ(got_m_.cols, want_m_.cols) << #got;                                                       \
    EXPECT_LE(::tp::ref::rel_error(got_m_, want_m_), ::tp::ref::tolerance<T>) << #got << " vs " << #want; \
  } while (0)

/// The same, normwise within ref::reduction_tolerance<T>(k): `got` came out of a reduction of length k.
#define TP_EXPECT_CLOSE_REDUCED(T, got, want, k)                                                           \
  do {                                                                                                     \
    const ::tp::ref::Matrix got_m_ = ::tp::test::as_matrix<T>(got);                                        \
    const ::tp::ref::Matrix& want_m_ = (want);                                                             \
    EXPECT_EQ(got_m_.rows, want_m_.rows) << #got;                                                          \
    EXPECT_EQ(got_m_.cols, want_m_.cols) << #got;                                                          \
    EXPECT_LE(::tp::ref::rel_error(got_m_, want_m_), ::tp::ref::reduction_tolerance<T>(k))                 \
        << #got << " vs " << #want << " (reduction length " << (k) << ")";                                 \
  } while (0)

namespace tp::test {
template <class T>
ref::Matrix as_matrix(ConstView<T> v) {
  return ref::from_view<T>(v);
}
template <class T>
ref::Matrix as_matrix(const Tensor<T, Cpu>& t) {
  return ref::from_view<T>(t.view());
}
template <class T>
ref::Matrix as_matrix(MatrixView<T> v) {
  return ref::from_view<T>(ConstView<T>(v));
}
template <class T>
ref::Matrix as_matrix(const ref::Matrix& m) {
  return m;
}

/// The message of the tp::InvalidArgument that f() throws, or "(no InvalidArgument thrown)".
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const InvalidArgument& e) {
    return e.what();
  }
  return "(no InvalidArgument thrown)";
}
}  // namespace tp::test
