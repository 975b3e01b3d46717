/// tp::ops::rope against a double reference written from the formula (tests/common/
/// blocks_reference.hpp), on every device: several heads, large positions and bases, a strided
/// view (q's columns of a fused qkv row); the inverse undoes the rotation; bad shapes are errors.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/blocks_reference.hpp"
#include "common/devices.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

using test::download;
using test::upload;
using ::testing::HasSubstr;

template <class T>
class Rope : public ::testing::Test {};
TYPED_TEST_SUITE(Rope, test::BlockFloats);

TYPED_TEST(Rope, MatchesFormula) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  auto dev = std::make_shared<Dev>();
  const std::int64_t tokens = 6, heads = 3, d = 8, width = heads * d + 5;  // 5 more columns beside x
  const std::vector<std::int64_t> positions{0, 1, 17, 255, 4095, 100000};
  const auto pos_d = test::upload_ids(dev, positions, 1, tokens);
  const auto full = test::random_matrix<T>(tokens, width, ref::test_seed(1));
  for (const double theta : {10000.0, 500000.0, 2.5}) {
    SCOPED_TRACE(fmt::format("theta {}", theta));
    auto x_d = upload<T>(dev, full);
    const MatrixView<T> x = x_d.view().cols_range(2, heads * d);
    tp::ops::rope<T>(*dev, x, ConstView<std::int64_t>(pos_d.view()), d, theta, false);
    const ref::Matrix want = ref::rope(full.cols_range(2, heads * d), positions, d, theta);
    TP_EXPECT_CLOSE(T, download(*dev, x), want);
    // The columns beside x are untouched.
    TP_EXPECT_CLOSE(T, download(*dev, x_d.view().cols_range(0, 2)), full.cols_range(0, 2));
    TP_EXPECT_CLOSE(T, download(*dev, x_d.view().cols_range(2 + heads * d, 3)), full.cols_range(2 + heads * d, 3));
    // Turned back: the input again (the backward of an orthogonal map is its inverse).
    tp::ops::rope<T>(*dev, x, ConstView<std::int64_t>(pos_d.view()), d, theta, true);
    TP_EXPECT_CLOSE(T, download(*dev, x), full.cols_range(2, heads * d));
    // The inverse against the formula too.
    auto y_d = upload<T>(dev, full.cols_range(2, heads * d));
    tp::ops::rope<T>(*dev, y_d.view(), ConstView<std::int64_t>(pos_d.view()), d, theta, true);
    TP_EXPECT_CLOSE(T, download(*dev, y_d), ref::rope(full.cols_range(2, heads * d), positions, d, theta, true));
  }
}

#ifndef TP_TEST_CUDA

/// tp::Cpu's rotation loop in every clone, and its table of sines and cosines (positions below
/// 8192, filled per thread as positions grow) beside the angles it computes past the table and for
/// negative positions, in float and double.
TEST(CpuRope, TabledAndComputedAnglesMatchFormulaInEveryClone) {
  test::for_each_cpu_isa([&] {
    const std::int64_t heads = 2, d = 64;
    for (const auto& positions : {std::vector<std::int64_t>{0, 1, 2, 3}, std::vector<std::int64_t>{8190, 8191, 8192, 8193},
                                  std::vector<std::int64_t>{-5, 40000, 7, 5000}}) {
      const auto tokens = static_cast<std::int64_t>(positions.size());
      const ConstView<std::int64_t> pos(positions.data(), 1, tokens);
      const auto x = ref::random_matrix<double>(tokens, heads * d, ref::test_seed(4));
      const ref::Matrix want = ref::rope(x, positions, d, 10000.0);
      auto xf = ref::to_tensor<float>(x);
      auto xd = ref::to_tensor<double>(x);
      tp::ops::rope<float>(Cpu(), xf.view(), pos, d, 10000.0, false);
      tp::ops::rope<double>(Cpu(), xd.view(), pos, d, 10000.0, false);
      TP_EXPECT_CLOSE(float, xf, want);
      TP_EXPECT_CLOSE(double, xd, want);
    }
  });
}

TEST(RopeErrors, BadShapesNameTheSizes) {
  const Cpu cpu;
  Tensor<float, Cpu> x(4, 6);
  std::vector<std::int64_t> pos(4, 0);
  const ConstView<std::int64_t> p(pos.data(), 1, 4);
  EXPECT_THAT([&] { tp::ops::rope<float>(cpu, x.view(), p, 4, 1e4, false); },
              ::testing::ThrowsMessage<InvalidArgument>(HasSubstr("rope: x is 4x6, not whole heads of an even head_dim 4")));
  EXPECT_THAT([&] { tp::ops::rope<float>(cpu, x.view(), p, 3, 1e4, false); },
              ::testing::ThrowsMessage<InvalidArgument>(HasSubstr("not whole heads of an even head_dim 3")));
  EXPECT_THAT([&] { tp::ops::rope<float>(cpu, x.view(), p.cols_range(0, 3), 2, 1e4, false); },
              ::testing::ThrowsMessage<InvalidArgument>(HasSubstr("rope: positions are 1x3, expected 1x4")));
  EXPECT_THAT([&] { tp::ops::rope<float>(cpu, x.view(), p, 2, 0, false); },
              ::testing::ThrowsMessage<InvalidArgument>(HasSubstr("rope: theta must be positive, got 0")));
}

#endif

}  // namespace
}  // namespace tp
