/// tp::ops::linear_forward and linear_backward against the double reference (two separate
/// products), on every device and dtype: every token count from 1 to 17, so both sides of tp::Cpu's
/// switch between its streaming kernels (few tokens) and the GEMMs; odd sizes (weight rows not a
/// multiple of the kernels' row block, columns not a multiple of a vector, below and above one);
/// beta that keeps, scales or ignores (NaN) what the outputs held; and strided views whose
/// neighbours must stay untouched.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <limits>

#include "common/devices.hpp"
#include "common/reference.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

using test::download;
using test::upload;

template <class T>
class LinearOps : public ::testing::Test {};
TYPED_TEST_SUITE(LinearOps, test::AllFloats16);

/// m rows of `src` placed at (r0, c0) of a larger matrix filled with `fill` (a strided view's home).
ref::Matrix embedded(const ref::Matrix& src, std::int64_t rows, std::int64_t cols, std::int64_t r0, std::int64_t c0,
                     double fill) {
  ref::Matrix big(rows, cols);
  for (auto& v : big.data) v = fill;
  for (std::int64_t r = 0; r < src.rows; ++r)
    for (std::int64_t c = 0; c < src.cols; ++c) big(r0 + r, c0 + c) = src(r, c);
  return big;
}

/// The block of `big` at (r0, c0) of the given shape.
ref::Matrix block_of(const ref::Matrix& big, std::int64_t r0, std::int64_t c0, std::int64_t rows, std::int64_t cols) {
  ref::Matrix m(rows, cols);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) m(r, c) = big(r0 + r, c0 + c);
  return m;
}

TYPED_TEST(LinearOps, ForwardIsXTimesWTransposedPlusBias) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  test::for_each_cpu_isa([&] {
    auto dev = std::make_shared<Dev>();
    for (const auto [n, k] : {std::pair<std::int64_t, std::int64_t>{37, 53}, {6, 5}, {9, 131}})
      for (std::int64_t m = 1; m <= 17; ++m)
        for (const bool with_bias : {false, true}) {
          SCOPED_TRACE(fmt::format("m {} n {} k {} bias {}", m, n, k, with_bias));
          const auto x = test::random_matrix<T>(m, k, ref::test_seed(1));
          const auto w = test::random_matrix<T>(n, k, ref::test_seed(2));
          const auto b = test::random_matrix<T>(1, n, ref::test_seed(3));
          const auto x_d = upload<T>(dev, x), w_d = upload<T>(dev, w), b_d = upload<T>(dev, b);
          auto y_d = upload<T>(dev, test::random_matrix<T>(m, n, ref::test_seed(4)));  // overwritten
          tp::ops::linear_forward<T>(*dev, x_d.view(), w_d.view(), with_bias ? ConstView<T>(b_d.view()) : ConstView<T>{},
                                     y_d.view());
          ref::Matrix want = ref::matmul(x, false, w, true);
          if (with_bias)
            for (std::int64_t r = 0; r < m; ++r)
              for (std::int64_t c = 0; c < n; ++c) want(r, c) += b(0, c);
          TP_EXPECT_CLOSE(T, download(*dev, y_d), want);
        }
  });
}

TYPED_TEST(LinearOps, BackwardIsTheTwoProductsWithBeta) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  test::for_each_cpu_isa([&] {
    auto dev = std::make_shared<Dev>();
    const double nan = std::numeric_limits<double>::quiet_NaN();
    for (const auto [n, k] : {std::pair<std::int64_t, std::int64_t>{37, 53}, {6, 5}, {9, 131}})
      for (std::int64_t m = 1; m <= 17; ++m)
        for (const auto [beta_dx, beta_dw] : {std::pair{0.0, 1.0}, {0.5, -2.0}, {0.0, 0.0}, {1.0, 0.5}}) {
          SCOPED_TRACE(fmt::format("m {} n {} k {} beta_dx {} beta_dw {}", m, n, k, beta_dx, beta_dw));
          const auto dy = test::random_matrix<T>(m, n, ref::test_seed(1));
          const auto x = test::random_matrix<T>(m, k, ref::test_seed(2));
          const auto w = test::random_matrix<T>(n, k, ref::test_seed(3));
          auto dx0 = test::random_matrix<T>(m, k, ref::test_seed(4));
          auto dw0 = test::random_matrix<T>(n, k, ref::test_seed(5));
          // A beta of 0 must ignore the old output, NaN included (as BLAS does).
          if (beta_dx == 0) dx0.data[0] = nan;
          if (beta_dw == 0) dw0.data[dw0.data.size() - 1] = nan;
          const auto dy_d = upload<T>(dev, dy), x_d = upload<T>(dev, x), w_d = upload<T>(dev, w);
          auto dx_d = upload<T>(dev, dx0), dw_d = upload<T>(dev, dw0);
          tp::ops::linear_backward<T>(*dev, dy_d.view(), x_d.view(), w_d.view(), static_cast<T>(beta_dx), dx_d.view(),
                                      static_cast<T>(beta_dw), dw_d.view());
          ref::Matrix want_dx = ref::matmul(dy, false, w, false), want_dw = ref::matmul(dy, true, x, false);
          for (std::size_t i = 0; i < want_dx.data.size(); ++i)
            if (beta_dx != 0) want_dx.data[i] += beta_dx * dx0.data[i];
          for (std::size_t i = 0; i < want_dw.data.size(); ++i)
            if (beta_dw != 0) want_dw.data[i] += beta_dw * dw0.data[i];
          TP_EXPECT_CLOSE(T, download(*dev, dx_d), want_dx);
          TP_EXPECT_CLOSE(T, download(*dev, dw_d), want_dw);
        }
  });
}

/// Every operand a block of a larger matrix (leading dimension above its width, not a multiple of
/// a vector); what lies around the outputs' blocks stays as it was.
TYPED_TEST(LinearOps, StridedViewsAndTheirNeighbours) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  test::for_each_cpu_isa([&] {
    auto dev = std::make_shared<Dev>();
    const std::int64_t n = 21, k = 35;
    for (const std::int64_t m : {1, 3, 8, 12, 16, 17}) {
      SCOPED_TRACE(fmt::format("m {}", m));
      const auto dy = test::random_matrix<T>(m, n, ref::test_seed(1));
      const auto x = test::random_matrix<T>(m, k, ref::test_seed(2));
      const auto w = test::random_matrix<T>(n, k, ref::test_seed(3));
      const auto dw0 = test::random_matrix<T>(n, k, ref::test_seed(4));
      const auto dy_big = embedded(dy, m + 2, n + 5, 1, 3, 7.0), x_big = embedded(x, m + 1, k + 7, 1, 2, 7.0);
      const auto w_big = embedded(w, n + 3, k + 3, 2, 1, 7.0);
      const auto dx_big0 = embedded(ref::Matrix(m, k), m + 2, k + 9, 1, 4, 5.0);
      const auto dw_big0 = embedded(dw0, n + 1, k + 11, 1, 6, 5.0);
      const auto y_big0 = embedded(ref::Matrix(m, n), m + 3, n + 13, 2, 5, 5.0);
      const auto dy_d = upload<T>(dev, dy_big), x_d = upload<T>(dev, x_big), w_d = upload<T>(dev, w_big);
      auto dx_d = upload<T>(dev, dx_big0), dw_d = upload<T>(dev, dw_big0), y_d = upload<T>(dev, y_big0);
      const ConstView<T> dy_v = dy_d.view().block(1, 3, m, n), x_v = x_d.view().block(1, 2, m, k),
                         w_v = w_d.view().block(2, 1, n, k);
      tp::ops::linear_forward<T>(*dev, x_v, w_v, ConstView<T>{}, y_d.view().block(2, 5, m, n));
      tp::ops::linear_backward<T>(*dev, dy_v, x_v, w_v, T(0), dx_d.view().block(1, 4, m, k), T(1),
                                  dw_d.view().block(1, 6, n, k));
      ref::Matrix want_dw = ref::matmul(dy, true, x, false);
      for (std::size_t i = 0; i < want_dw.data.size(); ++i) want_dw.data[i] += dw0.data[i];
      const auto y_big = download(*dev, y_d), dx_big = download(*dev, dx_d), dw_big = download(*dev, dw_d);
      TP_EXPECT_CLOSE(T, block_of(y_big, 2, 5, m, n), ref::matmul(x, false, w, true));
      TP_EXPECT_CLOSE(T, block_of(dx_big, 1, 4, m, k), ref::matmul(dy, false, w, false));
      TP_EXPECT_CLOSE(T, block_of(dw_big, 1, 6, n, k), want_dw);
      // The neighbours: put the expected blocks into the old matrices and compare everything.
      EXPECT_EQ(y_big.data, embedded(block_of(y_big, 2, 5, m, n), m + 3, n + 13, 2, 5, 5.0).data);
      EXPECT_EQ(dx_big.data, embedded(block_of(dx_big, 1, 4, m, k), m + 2, k + 9, 1, 4, 5.0).data);
      EXPECT_EQ(dw_big.data, embedded(block_of(dw_big, 1, 6, n, k), n + 1, k + 11, 1, 6, 5.0).data);
    }
  });
}

TEST(LinearOpErrors, BadShapesAndOverlapsAreRefused) {
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  auto dev = std::make_shared<Dev>();
  Tensor<float, Dev> x(dev, 4, 6), w(dev, 5, 6), y(dev, 4, 5), dy(dev, 4, 5), dw(dev, 5, 6), big(dev, 8, 8);
  using ::testing::HasSubstr;
  try {
    tp::ops::linear_forward<float>(*dev, x.view(), w.view().rows_range(0, 4), ConstView<float>{}, y.view());
    ADD_FAILURE() << "linear_forward accepted a 4x6 weight for a 4x5 output";
  } catch (const InvalidArgument& e) {
    EXPECT_THAT(e.what(), HasSubstr("x is 4x6, w is 4x6, y is 4x5"));
  }
  EXPECT_THROW(tp::ops::linear_forward<float>(*dev, x.view(), w.view(), y.view().rows_range(0, 1), y.view()),
               InvalidArgument);  // bias is the output's own first row
  try {
    tp::ops::linear_backward<float>(*dev, dy.view(), x.view(), w.view(), 0.f, x.view(), 1.f, dw.view());
    ADD_FAILURE() << "linear_backward accepted dx = x";
  } catch (const InvalidArgument& e) {
    EXPECT_THAT(e.what(), HasSubstr("overlaps an input"));
  }
  EXPECT_THROW(tp::ops::linear_backward<float>(*dev, dy.view(), x.view(), w.view(), 0.f, big.view().block(0, 0, 4, 6),
                                               1.f, big.view().block(3, 2, 5, 6)),
               InvalidArgument);  // dx and dw share row 3
  EXPECT_THROW(tp::ops::linear_backward<float>(*dev, dy.view(), x.view(), w.view(), 0.f, x.view().rows_range(0, 3), 1.f,
                                               dw.view()),
               InvalidArgument);
}

#ifndef TP_TEST_CUDA
/// The streaming kernels themselves at every token count they take (1 to kStreamingMaxTokens, also
/// those the linear ops send to GEMMs on this instruction set), on every instruction set this CPU
/// runs: weight rows that fill the register blocks and leave a remainder, columns with and without
/// a vector remainder, and dw/dx starts that are written over (NaN), scaled or added to.
TYPED_TEST(LinearOps, StreamingKernelsAtEveryTokenCount) {
  using T = TypeParam;
  if constexpr (is_float16_v<T>) {
    GTEST_SKIP() << "the streaming kernels are float and double only (16-bit types run as GEMMs)";
  } else {
    const auto dev = std::make_shared<Cpu>();
    test::for_each_cpu_isa([&] {
      for (const auto [n, k] : {std::pair<std::int64_t, std::int64_t>{37, 53}, {64, 131}, {9, 16}})
        for (std::int64_t m = 1; m <= detail::kStreamingMaxTokens; ++m)
          for (const double beta : {0.0, 0.5}) {
            SCOPED_TRACE(fmt::format("m {} n {} k {} beta {}", m, n, k, beta));
            const auto x = test::random_matrix<T>(m, k, ref::test_seed(1));
            const auto w = test::random_matrix<T>(n, k, ref::test_seed(2));
            const auto dy = test::random_matrix<T>(m, n, ref::test_seed(3));
            const auto y0 = test::random_matrix<T>(m, n, ref::test_seed(4));
            const auto dx0 = test::random_matrix<T>(m, k, ref::test_seed(5));
            const auto dw0 = test::random_matrix<T>(n, k, ref::test_seed(6));
            const double nan = std::numeric_limits<double>::quiet_NaN();
            const auto start = [&](const ref::Matrix& m0) { return beta == 0 ? ref::map(m0, [&](double) { return nan; }) : m0; };
            const auto x_d = upload<T>(dev, x), w_d = upload<T>(dev, w), dy_d = upload<T>(dev, dy);
            auto y_d = upload<T>(dev, start(y0)), dx_d = upload<T>(dev, start(dx0)), dw_d = upload<T>(dev, start(dw0));
            detail::streaming_linear_forward<T>(x_d.view(), w_d.view(), T(beta), y_d.view(), 1);
            detail::streaming_linear_backward<T>(dy_d.view(), x_d.view(), w_d.view(), T(beta), dx_d.view(), T(beta),
                                                 dw_d.view(), 1);
            const auto plus = [&](ref::Matrix a, const ref::Matrix& m0) { return beta == 0 ? a : ref::add(a, ref::scale(m0, beta)); };
            TP_EXPECT_CLOSE(T, download(*dev, y_d), plus(ref::matmul(x, false, w, true), y0));
            TP_EXPECT_CLOSE(T, download(*dev, dx_d), plus(ref::matmul(dy, false, w, false), dx0));
            TP_EXPECT_CLOSE(T, download(*dev, dw_d), plus(ref::matmul(dy, true, x, false), dw0));
          }
    });
  }
}

/// TP_CPU_ISA's names: an unknown one is refused by name; every one this CPU runs is taken.
TEST(LinearOpsCpu, InstructionSetNames) {
  using detail::simd::Isa;
  EXPECT_THAT(test::error_of([] { detail::simd::parse_isa("avx3"); }),
              ::testing::HasSubstr("TP_CPU_ISA='avx3': not an instruction set; use avx512, avx2 or baseline"));
  for (const Isa isa : detail::simd::kIsas) {
    if (detail::simd::cpu_can_run(isa))
      EXPECT_EQ(detail::simd::parse_isa(detail::simd::isa_name(isa)), isa);
    else
      EXPECT_THAT(test::error_of([&] { detail::simd::parse_isa(detail::simd::isa_name(isa)); }),
                  ::testing::HasSubstr("cannot run the"));
  }
  EXPECT_EQ(detail::simd::runnable_isas().back(), detail::simd::best_isa());
  {
    const detail::simd::ScopedIsa forced(Isa::baseline);
    EXPECT_EQ(detail::simd::active_isa(), Isa::baseline);
  }
  EXPECT_EQ(detail::simd::active_isa(), detail::simd::process_isa());
}

/// Several threads split the weight's rows and sum their parts of dx in a fixed order: the same
/// result as one thread, within rounding, at every token count the streaming kernels take.
TEST(LinearOpsCpu, ThreadsSplitTheRows) {
  test::for_each_cpu_isa([&] {
    const int before = Cpu::blas_threads();
    const auto one = std::make_shared<Cpu>(CpuOptions{.threads = 1});
    const auto three = std::make_shared<Cpu>(CpuOptions{.threads = 3});
    const std::int64_t n = 250, k = 70;
    for (const std::int64_t m : {1, 5, 12, 16}) {
      SCOPED_TRACE(fmt::format("m {}", m));
      const auto dy = test::random_matrix<double>(m, n, ref::test_seed(1));
      const auto x = test::random_matrix<double>(m, k, ref::test_seed(2));
      const auto w = test::random_matrix<double>(n, k, ref::test_seed(3));
      const auto dw0 = test::random_matrix<double>(n, k, ref::test_seed(4));
      const auto dy_d = upload<double>(three, dy), x_d = upload<double>(three, x), w_d = upload<double>(three, w);
      auto dx_d = upload<double>(three, ref::Matrix(m, k)), dw_d = upload<double>(three, dw0),
           y_d = upload<double>(three, ref::Matrix(m, n));
      tp::ops::linear_forward<double>(*three, x_d.view(), w_d.view(), ConstView<double>{}, y_d.view());
      tp::ops::linear_backward<double>(*three, dy_d.view(), x_d.view(), w_d.view(), 0.0, dx_d.view(), 1.0, dw_d.view());
      ref::Matrix want_dw = ref::matmul(dy, true, x, false);
      for (std::size_t i = 0; i < want_dw.data.size(); ++i) want_dw.data[i] += dw0.data[i];
      TP_EXPECT_CLOSE(double, download(*three, y_d), ref::matmul(x, false, w, true));
      TP_EXPECT_CLOSE(double, download(*three, dx_d), ref::matmul(dy, false, w, false));
      TP_EXPECT_CLOSE(double, download(*three, dw_d), want_dw);
    }
    Cpu restore(CpuOptions{.threads = before});  // OpenBLAS's thread count is process-wide
    EXPECT_EQ(Cpu::blas_threads(), before);
    EXPECT_EQ(one->threads(), 1);
    EXPECT_EQ(three->threads(), 3);
  });
}
#endif

}  // namespace
}  // namespace tp
