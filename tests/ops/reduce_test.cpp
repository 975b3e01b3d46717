/// The element-wise and reduction ops and the device's copies on strided views, on every device and
/// dtype (common/devices.hpp): copy, add, scale, fill, sum_squares, add_bias, add_bias_grad.

#include <gtest/gtest.h>

#include "common/devices.hpp"
#include "common/reference.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

using test::download;
using test::upload;

template <class T>
class ElementwiseOps : public ::testing::Test {};
TYPED_TEST_SUITE(ElementwiseOps, test::AllFloats);

TYPED_TEST(ElementwiseOps, StridedCopiesAddScaleFill) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  auto dev = std::make_shared<Dev>();
  const auto a = test::random_matrix<T>(7, 9, ref::test_seed(1)), b = test::random_matrix<T>(7, 9, ref::test_seed(2));
  auto a_d = upload<T>(dev, a), b_d = upload<T>(dev, b);
  // A 7x4 column block (ld 9) into the middle of another matrix.
  dev->copy(ConstView<T>(a_d.view().cols_range(2, 4)), b_d.view().cols_range(5, 4));
  ref::Matrix want = b;
  for (int r = 0; r < 7; ++r)
    for (int c = 0; c < 4; ++c) want(r, 5 + c) = a(r, 2 + c);
  TP_EXPECT_CLOSE(T, download(*dev, b_d), want);
  tp::ops::add(*dev, ConstView<T>(a_d.view()), b_d.view());
  TP_EXPECT_CLOSE(T, download(*dev, b_d), ref::add(want, a));
  tp::ops::scale(*dev, b_d.view().cols_range(0, 3), T(0));
  const auto scaled = download(*dev, b_d);
  for (int r = 0; r < 7; ++r) EXPECT_EQ(scaled(r, 0), 0.0);
  tp::ops::scale(*dev, b_d.view().cols_range(3, 6), T(2));
  TP_EXPECT_CLOSE(T, download(*dev, b_d).cols_range(3, 6), ref::scale(ref::add(want, a).cols_range(3, 6), 2));
  dev->fill(b_d.view(), T(2.5));
  EXPECT_EQ(download(*dev, b_d)(6, 8), 2.5);
}

TYPED_TEST(ElementwiseOps, SumSquaresInDouble) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  auto dev = std::make_shared<Dev>();
  const auto g = test::random_matrix<T>(300, 70, ref::test_seed(1));  // several blocks of partial sums
  const auto g_d = upload<T>(dev, g);
  const ref::Matrix block = g.cols_range(5, 60);
  double want = 0;
  for (double v : block.data) want += v * v;
  EXPECT_NEAR(tp::ops::sum_squares<T>(*dev, g_d.view().cols_range(5, 60)), want, 1e-12 * want);
  EXPECT_EQ(tp::ops::sum_squares<T>(*dev, g_d.view().cols_range(1, 0)), 0.0);
}

TYPED_TEST(ElementwiseOps, AddBiasAndItsGradient) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  auto dev = std::make_shared<Dev>();
  const std::int64_t rows = 6, cols = 11;
  const auto y = test::random_matrix<T>(rows, cols, ref::test_seed(1));
  const auto bias = test::random_matrix<T>(1, cols, ref::test_seed(2));
  const auto db0 = test::random_matrix<T>(1, cols, ref::test_seed(3));
  auto y_d = upload<T>(dev, y), db_d = upload<T>(dev, db0);
  const auto bias_d = upload<T>(dev, bias);
  tp::ops::add_bias(*dev, y_d.view(), bias_d.view());
  TP_EXPECT_CLOSE(T, download(*dev, y_d), ref::add_bias(y, bias));
  tp::ops::add_bias_grad(*dev, ConstView<T>(y_d.view()), db_d.view());  // accumulates: db0 + column sums
  TP_EXPECT_CLOSE(T, download(*dev, db_d), ref::add(db0, ref::column_sums(download(*dev, y_d))));
}

/// The bias gradient over more rows, of a strided view: on CUDA the rows are cut into blocks that
/// are summed in parallel and then added in block order (device/cuda/column_reduce.cuh); 48 rows
/// by 300 columns is three row blocks and two column tiles there. Still the column sums.
TYPED_TEST(ElementwiseOps, BiasGradientOverRowBlocks) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  auto dev = std::make_shared<Dev>();
  const std::int64_t rows = 48, cols = 300;
  const auto dy = test::random_matrix<T>(rows, cols + 5, ref::test_seed(1));
  const auto db0 = test::random_matrix<T>(1, cols, ref::test_seed(2));
  const auto dy_d = upload<T>(dev, dy);
  auto db_d = upload<T>(dev, db0);
  tp::ops::add_bias_grad(*dev, ConstView<T>(dy_d.view().cols_range(3, cols)), db_d.view());
  TP_EXPECT_CLOSE(T, download(*dev, db_d), ref::add(db0, ref::column_sums(dy.cols_range(3, cols))));
}

}  // namespace
}  // namespace tp
