/// GELU (exact and tanh) and SwiGLU, forward and backward, against the double-precision formulas,
/// on every device and dtype (common/devices.hpp), on strided views (a column block of a wider
/// matrix) so that the kernels honour the leading dimension.

#include <gtest/gtest.h>

#include "common/blocks_reference.hpp"
#include "common/devices.hpp"
#include "common/reference.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

using test::download;
using test::upload;

template <class T>
class Activation : public ::testing::Test {};
TYPED_TEST_SUITE(Activation, test::AllFloats);

TYPED_TEST(Activation, GeluMatchesReferenceAndDerivative) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  test::for_each_cpu_isa([&] {
    const std::int64_t rows = 4, cols = 33, ld = 40;
    const auto x = test::random_matrix<T>(rows, cols, ref::test_seed(1));
    const auto dy = test::random_matrix<T>(rows, cols, ref::test_seed(2));
    auto dev = std::make_shared<Dev>();
    const auto x_d = upload<T>(dev, x), dy_d = upload<T>(dev, dy);
    Tensor<T, Dev> y(dev, rows, ld), dx(dev, rows, ld);
    const auto y_v = y.view().cols_range(3, cols), dx_v = dx.view().cols_range(3, cols);
    for (bool tanh : {false, true}) {
      SCOPED_TRACE(tanh ? "gelu tanh" : "gelu exact");
      const Gelu kind = tanh ? Gelu::tanh : Gelu::exact;
      tp::ops::gelu(*dev, x_d.view(), y_v, kind);
      tp::ops::gelu_backward(*dev, x_d.view(), dy_d.view(), dx_v, kind);
      TP_EXPECT_CLOSE(T, download(*dev, y_v), ref::map(x, [&](double v) { return ref::gelu(v, tanh); }));
      ref::Matrix want_dx = dy;
      for (std::size_t i = 0; i < want_dx.data.size(); ++i) want_dx.data[i] *= ref::gelu_slope(x.data[i], tanh);
      TP_EXPECT_CLOSE(T, download(*dev, dx_v), want_dx);
    }
  });
}

/// gate_up = [gate | up]: y = silu(gate) * up; d gate = dy * up * silu'(gate), d up = dy * silu(gate).
TYPED_TEST(Activation, SwigluMatchesReferenceAndDerivative) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  const std::int64_t rows = 5, n = 37;
  const auto gate_up = test::random_matrix<T>(rows, 2 * n, ref::test_seed(1));
  const auto dy = test::random_matrix<T>(rows, n, ref::test_seed(2));
  ref::Matrix want_y(rows, n), want_d(rows, 2 * n);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < n; ++c) {
      const double g = gate_up(r, c), u = gate_up(r, n + c), s = 1.0 / (1.0 + std::exp(-g));
      want_y(r, c) = ref::silu(g) * u;
      want_d(r, c) = dy(r, c) * u * (s + g * s * (1.0 - s));
      want_d(r, n + c) = dy(r, c) * ref::silu(g);
    }
  auto dev = std::make_shared<Dev>();
  const auto gate_up_d = upload<T>(dev, gate_up), dy_d = upload<T>(dev, dy);
  Tensor<T, Dev> y(dev, rows, n), d(dev, rows, 2 * n);
  tp::ops::swiglu(*dev, gate_up_d.view(), y.view());
  tp::ops::swiglu_backward(*dev, gate_up_d.view(), dy_d.view(), d.view());
  TP_EXPECT_CLOSE(T, download(*dev, y), want_y);
  TP_EXPECT_CLOSE(T, download(*dev, d), want_d);
}

#ifndef TP_TEST_CUDA  // the host's vectorized float GELU, element by element

TEST(CpuDevice, FloatGeluMatchesReferenceAndDerivative) {
  test::for_each_cpu_isa([&] {
    // float takes the vectorized erf/exp/tanh approximations; inputs span the range where GELU bends
    // and its tails, in rows wider than a vector so the vector loops and their remainders both run.
    auto x = ref::random_matrix<float>(7, 301, ref::test_seed(1));
    for (auto& v : x.data) v = static_cast<double>(static_cast<float>(4 * v));
    const auto dy = ref::random_matrix<float>(7, 301, ref::test_seed(2));
    const auto xt = ref::to_tensor<float>(x), dyt = ref::to_tensor<float>(dy);
    Tensor<float, Cpu> y(7, 301), dx(7, 301);
    for (bool tanh : {false, true}) {
      const Gelu kind = tanh ? Gelu::tanh : Gelu::exact;
      tp::ops::gelu(Cpu(), xt.view(), y.view(), kind);
      tp::ops::gelu_backward(Cpu(), xt.view(), dyt.view(), dx.view(), kind);
      TP_EXPECT_CLOSE(float, y, ref::map(x, [&](double v) { return ref::gelu(v, tanh); }));
      ref::Matrix want_dx = dy;
      for (std::size_t i = 0; i < want_dx.data.size(); ++i) want_dx.data[i] *= ref::gelu_slope(x.data[i], tanh);
      TP_EXPECT_CLOSE(float, dx, want_dx);
      // element by element too: no input may be far off, however small its share of the norm
      for (std::int64_t r = 0; r < 7; ++r)
        for (std::int64_t c = 0; c < 301; ++c) {
          const double v = x(r, c);
          ASSERT_NEAR(y(r, c), ref::gelu(v, tanh), 1e-6 * std::max(1.0, std::abs(v))) << "x = " << v;
          ASSERT_NEAR(dx(r, c), dy(r, c) * ref::gelu_slope(v, tanh), 2e-6 * std::max(1.0, std::abs(dy(r, c))))
              << "x = " << v;
        }
    }
  });
}

/// The host's vectorized float SwiGLU (exp without libm) in every clone, element by element,
/// over gates far into both tails and wide rows (vector loop and remainder), on a strided view.
TEST(CpuDevice, FloatSwigluMatchesReferenceElementwise) {
  test::for_each_cpu_isa([&] {
    const std::int64_t rows = 6, n = 301;
    auto gate_up = ref::random_matrix<float>(rows, 2 * n, ref::test_seed(3));
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t c = 0; c < n; ++c)  // gates in [-100, 100): past exp's clamp at 87 too
        gate_up(r, c) = static_cast<double>(static_cast<float>(200 * gate_up(r, c)));
    const auto in = ref::to_tensor<float>(gate_up);
    Tensor<float, Cpu> wide(rows, n + 5);
    const MatrixView<float> y = wide.view().cols_range(2, n);
    tp::ops::swiglu(Cpu(), in.view(), y);
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t c = 0; c < n; ++c) {
        const double g = gate_up(r, c), u = gate_up(r, n + c), want = ref::silu(g) * u;
        // A few ulp; below gate -87 the result is under 1e-34 either way (exp's argument is clamped).
        ASSERT_NEAR(y(r, c), want, 4e-7 * std::abs(want) + 1e-34) << "gate " << g << ", up " << u;
      }
  });
}

#endif  // TP_TEST_CUDA

}  // namespace
}  // namespace tp
