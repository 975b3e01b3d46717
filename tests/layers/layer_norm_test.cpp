/// LayerNorm forward and backward against the double-precision reference (which differentiates
/// the forward term by term), on every rank of every world size: replicated, so every rank holds
/// the full result and the same gradients; on every device (common/devices.hpp).

#include "tp/layers/layer_norm.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/devices.hpp"
#include "common/harness.hpp"
#include "common/reference.hpp"
#include "common/reference_train.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

using test::download;
using test::on_ranks;
using test::upload;
using ::testing::HasSubstr;

template <class T>
class LayerNormTyped : public ::testing::Test {};
TYPED_TEST_SUITE(LayerNormTyped, test::BlockFloatsBf16);

TYPED_TEST(LayerNormTyped, ForwardAndBackwardMatchTheReference) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  for (auto [tokens, hidden] : {std::pair{5, 16}, {3, 7}, {1, 33}, {4, 3}, {3, 1000}}) {
    const std::string trace = fmt::format("tokens {} hidden {}", tokens, hidden);
    SCOPED_TRACE(trace);
    // Inputs with an offset and scale, so that the mean and variance matter. (Not hidden = 2: there
    // the input gradient is zero analytically, and only rounding noise would be compared.)
    const auto x = ref::map(test::random_matrix<T>(tokens, hidden, ref::test_seed(1)),
                            [](double v) { return test::to_double(static_cast<T>(3 * v + 1.5)); });
    const auto gamma = test::random_matrix<T>(1, hidden, ref::test_seed(2));
    const auto beta = test::random_matrix<T>(1, hidden, ref::test_seed(3));
    const auto dy = test::random_matrix<T>(tokens, hidden, ref::test_seed(4));
    const auto want = ref::layer_norm(x, gamma, beta, dy, 1e-5);
    on_ranks([&](std::shared_ptr<Communicator> comm) {
      SCOPED_TRACE(trace);  // traces are per thread
      auto dev = std::make_shared<Dev>();
      LayerNorm<T, Dev> ln(Context<Dev>(comm, dev), hidden, {.eps = 1e-5, .name = "ln_f"});
      const auto ps = ln.parameters();
      ASSERT_EQ(ps.size(), 2u);
      EXPECT_EQ(ps[0].name, "ln_f.weight");
      EXPECT_FALSE(ps[0].sharded());
      EXPECT_EQ(download(*dev, ln.weight())(0, 0), 1.0);  // torch's init: weight 1, bias 0
      EXPECT_EQ(download(*dev, ln.weight())(0, hidden - 1), 1.0);
      EXPECT_EQ(download(*dev, ln.bias())(0, 0), 0.0);
      EXPECT_EQ(download(*dev, ln.bias())(0, hidden - 1), 0.0);
      const auto gamma_d = upload<T>(dev, gamma), beta_d = upload<T>(dev, beta);
      dev->copy(gamma_d.view(), ln.weight());
      dev->copy(beta_d.view(), ln.bias());
      const auto x_d = upload<T>(dev, x), dy_d = upload<T>(dev, dy);
      TP_EXPECT_CLOSE(T, download(*dev, ln.forward(x_d.view())), want.y);
      TP_EXPECT_CLOSE(T, download(*dev, ln.backward(dy_d.view())), want.dx);
      TP_EXPECT_CLOSE(T, download(*dev, ln.weight_grad()), want.dgamma);
      TP_EXPECT_CLOSE(T, download(*dev, ln.bias_grad()), want.dbeta);
      ln.forward(x_d.view());
      ln.backward(dy_d.view());  // gradients accumulate
      TP_EXPECT_CLOSE(T, download(*dev, ln.weight_grad()), ref::scale(want.dgamma, 2));
      TP_EXPECT_CLOSE(T, download(*dev, ln.bias_grad()), ref::scale(want.dbeta, 2));
      ln.zero_grad();
      TP_EXPECT_CLOSE(T, download(*dev, ln.bias_grad()), ref::Matrix(1, hidden));
    });
  }
}

#ifndef TP_TEST_CUDA  // device-independent checks: once, in the host binaries

TEST(LayerNorm, RejectsWrongShapes) {
  run_local(1, [](std::shared_ptr<Communicator> comm) {
    LayerNorm<float> ln(Context<>(comm), 8, {.name = "ln_1"});
    Tensor<float, Cpu> x(3, 7), dy(2, 8);
    EXPECT_THAT([&] { ln.forward(x.view()); },
                ::testing::ThrowsMessage<InvalidArgument>(HasSubstr("ln_1: input is 3x7")));
    EXPECT_THROW(ln.backward(dy.view()), InvalidArgument);  // before forward
    Tensor<float, Cpu> ok(3, 8);
    Cpu().fill(ok.view(), 0.5f);
    ln.forward(ok.view());
    EXPECT_THAT([&] { ln.backward(dy.view()); },
                ::testing::ThrowsMessage<InvalidArgument>(HasSubstr("output gradient is 2x8, expected 3x8")));
    EXPECT_THROW(LayerNorm<float>(Context<>(comm), 0), InvalidArgument);
  });
}

#endif  // TP_TEST_CUDA

}  // namespace
}  // namespace tp
