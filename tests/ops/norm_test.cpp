/// The LayerNorm and RMSNorm op pairs on every device and dtype (common/devices.hpp): the forward
/// with its saved statistics (mean, 1 / sqrt(var + eps); 1 / sqrt(mean(x^2) + eps)) and the
/// backward that accumulates the parameter gradients, against the double-precision reference.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <tuple>

#include "common/devices.hpp"
#include "common/reference.hpp"
#include "common/reference_train.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

using test::download;
using test::upload;

template <class T>
class NormOps : public ::testing::Test {};
TYPED_TEST_SUITE(NormOps, test::BlockFloats);

TYPED_TEST(NormOps, LayerNormStatisticsAndAccumulatedGradients) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  const std::int64_t rows = 6, hidden = 37;
  const double eps = 1e-5;
  const auto x = ref::map(test::random_matrix<T>(rows, hidden, ref::test_seed(1)),
                          [](double v) { return test::to_double(static_cast<T>(3 * v + 1.5)); });
  const auto gamma = test::random_matrix<T>(1, hidden, ref::test_seed(2));
  const auto beta = test::random_matrix<T>(1, hidden, ref::test_seed(3));
  const auto dy = test::random_matrix<T>(rows, hidden, ref::test_seed(4));
  const auto dgamma0 = test::random_matrix<T>(1, hidden, ref::test_seed(5));
  const auto dbeta0 = test::random_matrix<T>(1, hidden, ref::test_seed(6));
  const auto want = ref::layer_norm(x, gamma, beta, dy, eps);
  ref::Matrix want_mean(rows, 1), want_rstd(rows, 1);
  for (std::int64_t r = 0; r < rows; ++r) {
    double sum = 0, sq = 0;
    for (std::int64_t c = 0; c < hidden; ++c) sum += x(r, c);
    want_mean(r, 0) = sum / hidden;
    for (std::int64_t c = 0; c < hidden; ++c) sq += (x(r, c) - want_mean(r, 0)) * (x(r, c) - want_mean(r, 0));
    want_rstd(r, 0) = 1 / std::sqrt(sq / hidden + eps);
  }

  auto dev = std::make_shared<Dev>();
  const auto x_d = upload<T>(dev, x), gamma_d = upload<T>(dev, gamma), beta_d = upload<T>(dev, beta);
  const auto dy_d = upload<T>(dev, dy);
  Tensor<T, Dev> y(dev, rows, hidden), mean(dev, rows, 1), rstd(dev, rows, 1), dx(dev, rows, hidden);
  auto dgamma = upload<T>(dev, dgamma0), dbeta = upload<T>(dev, dbeta0);
  tp::ops::layer_norm(*dev, x_d.view(), gamma_d.view(), beta_d.view(), y.view(), mean.view(), rstd.view(), eps);
  TP_EXPECT_CLOSE(T, download(*dev, y), want.y);
  TP_EXPECT_CLOSE(T, download(*dev, mean), want_mean);
  TP_EXPECT_CLOSE(T, download(*dev, rstd), want_rstd);
  tp::ops::layer_norm_backward(*dev, x_d.view(), gamma_d.view(), mean.view(), rstd.view(), dy_d.view(), dx.view(),
                               dgamma.view(), dbeta.view());
  TP_EXPECT_CLOSE(T, download(*dev, dx), want.dx);
  TP_EXPECT_CLOSE(T, download(*dev, dgamma), ref::add(dgamma0, want.dgamma));  // accumulated
  TP_EXPECT_CLOSE(T, download(*dev, dbeta), ref::add(dbeta0, want.dbeta));
}

/// The parameter gradients over more rows: on CUDA dgamma and dbeta are summed in row blocks in
/// parallel, then added in block order (device/cuda/column_reduce.cuh); 48 rows by 300 columns is
/// three row blocks and two column tiles there.
TYPED_TEST(NormOps, LayerNormParameterGradientsOverRowBlocks) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  const std::int64_t rows = 48, hidden = 300;
  const double eps = 1e-5;
  const auto x = test::random_matrix<T>(rows, hidden, ref::test_seed(1));
  const auto gamma = test::random_matrix<T>(1, hidden, ref::test_seed(2));
  const auto beta = test::random_matrix<T>(1, hidden, ref::test_seed(3));
  const auto dy = test::random_matrix<T>(rows, hidden, ref::test_seed(4));
  const auto dgamma0 = test::random_matrix<T>(1, hidden, ref::test_seed(5));
  const auto dbeta0 = test::random_matrix<T>(1, hidden, ref::test_seed(6));
  const auto want = ref::layer_norm(x, gamma, beta, dy, eps);

  auto dev = std::make_shared<Dev>();
  const auto x_d = upload<T>(dev, x), gamma_d = upload<T>(dev, gamma), beta_d = upload<T>(dev, beta);
  const auto dy_d = upload<T>(dev, dy);
  Tensor<T, Dev> y(dev, rows, hidden), mean(dev, rows, 1), rstd(dev, rows, 1), dx(dev, rows, hidden);
  auto dgamma = upload<T>(dev, dgamma0), dbeta = upload<T>(dev, dbeta0);
  tp::ops::layer_norm(*dev, x_d.view(), gamma_d.view(), beta_d.view(), y.view(), mean.view(), rstd.view(), eps);
  tp::ops::layer_norm_backward(*dev, x_d.view(), gamma_d.view(), mean.view(), rstd.view(), dy_d.view(), dx.view(),
                               dgamma.view(), dbeta.view());
  TP_EXPECT_CLOSE(T, download(*dev, dx), want.dx);
  TP_EXPECT_CLOSE(T, download(*dev, dgamma), ref::add(dgamma0, want.dgamma));
  TP_EXPECT_CLOSE(T, download(*dev, dbeta), ref::add(dbeta0, want.dbeta));
}

/// RMSNorm: y, the saved rstd, dx and the accumulated dgamma against the reference; offset inputs,
/// so that a mean wrongly subtracted (LayerNorm's) would show. 48 x 300 is several row blocks and
/// column tiles for the CUDA dgamma reduction; a large eps (1) checks that eps is added where it belongs.
TYPED_TEST(NormOps, RmsNormStatisticsAndAccumulatedGradients) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  for (const auto& [rows, hidden, eps] : {std::tuple{6, 37, 1e-6}, std::tuple{48, 300, 1e-5}, std::tuple{3, 5, 1.0}}) {
    SCOPED_TRACE(fmt::format("rows {} hidden {} eps {}", rows, hidden, eps));
    const auto x = ref::map(test::random_matrix<T>(rows, hidden, ref::test_seed(1)),
                            [](double v) { return test::to_double(static_cast<T>(v + 0.75)); });
    const auto gamma = test::random_matrix<T>(1, hidden, ref::test_seed(2));
    const auto dy = test::random_matrix<T>(rows, hidden, ref::test_seed(4));
    const auto dgamma0 = test::random_matrix<T>(1, hidden, ref::test_seed(5));
    const auto want = ref::rms_norm(x, gamma, dy, eps);
    ref::Matrix want_rstd(rows, 1);
    for (std::int64_t r = 0; r < rows; ++r) {
      double sq = 0;
      for (std::int64_t c = 0; c < hidden; ++c) sq += x(r, c) * x(r, c);
      want_rstd(r, 0) = 1 / std::sqrt(sq / hidden + eps);
    }

    auto dev = std::make_shared<Dev>();
    const auto x_d = upload<T>(dev, x), gamma_d = upload<T>(dev, gamma), dy_d = upload<T>(dev, dy);
    Tensor<T, Dev> y(dev, rows, hidden), rstd(dev, rows, 1), dx(dev, rows, hidden);
    auto dgamma = upload<T>(dev, dgamma0);
    tp::ops::rms_norm(*dev, x_d.view(), gamma_d.view(), y.view(), rstd.view(), eps);
    TP_EXPECT_CLOSE(T, download(*dev, y), want.y);
    TP_EXPECT_CLOSE(T, download(*dev, rstd), want_rstd);
    tp::ops::rms_norm_backward(*dev, x_d.view(), gamma_d.view(), rstd.view(), dy_d.view(), dx.view(), dgamma.view());
    TP_EXPECT_CLOSE(T, download(*dev, dx), want.dx);
    TP_EXPECT_CLOSE(T, download(*dev, dgamma), ref::add(dgamma0, want.dgamma));  // accumulated
  }
}

/// RMSNorm's shape and eps checks, on every device (they run before the dispatch).
TYPED_TEST(NormOps, RmsNormRefusesBadShapesAndEps) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  auto dev = std::make_shared<Dev>();
  Tensor<T, Dev> x(dev, 3, 4), y(dev, 3, 4), g(dev, 1, 4), g5(dev, 1, 5), rstd(dev, 3, 1), rstd2(dev, 2, 1),
      y5(dev, 3, 5);
  auto message = [](auto&& f) {
    try {
      f();
    } catch (const InvalidArgument& e) {
      return std::string(e.what());
    }
    return std::string("(no InvalidArgument)");
  };
  using ::testing::HasSubstr;
  EXPECT_THAT(message([&] { tp::ops::rms_norm(*dev, x.view(), g5.view(), y.view(), rstd.view(), 1e-6); }),
              HasSubstr("rms_norm: gamma is 1x5, input has 4 columns"));
  EXPECT_THAT(message([&] { tp::ops::rms_norm(*dev, x.view(), g.view(), y5.view(), rstd.view(), 1e-6); }),
              HasSubstr("rms_norm: shapes 3x4 and 3x5 differ"));
  EXPECT_THAT(message([&] { tp::ops::rms_norm(*dev, x.view(), g.view(), y.view(), rstd2.view(), 1e-6); }),
              HasSubstr("rms_norm: rstd is 2x1, expected 3x1"));
  for (const double eps : {0.0, -1e-6, std::numeric_limits<double>::infinity(), std::nan("")})
    EXPECT_THAT(message([&] { tp::ops::rms_norm(*dev, x.view(), g.view(), y.view(), rstd.view(), eps); }),
                HasSubstr("rms_norm: eps must be finite and positive, got"));
  EXPECT_THAT(message([&] {
                tp::ops::rms_norm_backward(*dev, x.view(), g.view(), rstd.view(), y.view(), y.view(), g5.view());
              }),
              HasSubstr("rms_norm_backward: gamma 1x4, dgamma 1x5, input has 4 columns"));
  EXPECT_THAT(message([&] {
                tp::ops::rms_norm_backward(*dev, x.view(), g.view(), rstd2.view(), y.view(), y.view(), g.view());
              }),
              HasSubstr("rms_norm_backward: rstd is 2x1, expected 3x1"));
  EXPECT_THAT(message([&] {
                tp::ops::rms_norm_backward(*dev, x.view(), g.view(), rstd.view(), y5.view(), y.view(), g.view());
              }),
              HasSubstr("rms_norm_backward: shapes 3x5 and 3x4 differ"));
}

}  // namespace
}  // namespace tp
