/// The device GEMM's alpha and beta on every device and dtype (common/devices.hpp): C starts as a
/// matrix unrelated to AB, so a GEMM that ignored alpha, beta or C would give another result; the
/// GEMV path (one row) and the GEMM path, every transpose, and k = 0 (C = beta C = 0).

#include <gtest/gtest.h>

#include "common/devices.hpp"
#include "common/reference.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

using test::download;
using test::upload;

template <class T>
class DeviceGemm : public ::testing::Test {};
TYPED_TEST_SUITE(DeviceGemm, test::AllFloats);

TYPED_TEST(DeviceGemm, AlphaAndBetaScaleTheProductAndTheOldC) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  auto dev = std::make_shared<Dev>();
  const std::int64_t k = 6, n = 4;
  for (const std::int64_t m : {1, 5})
    for (const Op op_a : {Op::n, Op::t})
      for (const Op op_b : {Op::n, Op::t})
        for (const auto [alpha, beta] : {std::pair{2.0, -0.5}, {0.5, 1.0}, {1.0, 0.0}}) {
          const bool ta = op_a == Op::t, tb = op_b == Op::t;
          SCOPED_TRACE(
              fmt::format("m {} op_a {} op_b {} alpha {} beta {}", m, ta ? "t" : "n", tb ? "t" : "n", alpha, beta));
          const auto a = test::random_matrix<T>(ta ? k : m, ta ? m : k, ref::test_seed(1));
          const auto b = test::random_matrix<T>(tb ? n : k, tb ? k : n, ref::test_seed(2));
          const auto c0 = test::random_matrix<T>(m, n, ref::test_seed(3));
          const auto a_d = upload<T>(dev, a), b_d = upload<T>(dev, b);
          auto c_d = upload<T>(dev, c0);
          dev->gemm(op_a, op_b, static_cast<T>(alpha), ConstView<T>(a_d.view()), ConstView<T>(b_d.view()),
                    static_cast<T>(beta), c_d.view());
          ref::Matrix want = ref::matmul(a, ta, b, tb);
          for (std::size_t i = 0; i < want.data.size(); ++i) want.data[i] = alpha * want.data[i] + beta * c0.data[i];
          TP_EXPECT_CLOSE(T, download(*dev, c_d), want);
        }
  // k = 0: the product is empty, C = beta C (beta 0: tp::Cuda offers k = 0 for beta 0 and 1 only).
  const auto c0 = test::random_matrix<T>(3, 4, ref::test_seed(4));
  auto c_d = upload<T>(dev, c0);
  Tensor<T, Dev> a0(dev, 3, 0), b0(dev, 0, 4);
  dev->gemm(Op::n, Op::n, T(1), ConstView<T>(a0.view()), ConstView<T>(b0.view()), T(0), c_d.view());
  TP_EXPECT_CLOSE(T, download(*dev, c_d), ref::Matrix(3, 4));
}

}  // namespace
}  // namespace tp
