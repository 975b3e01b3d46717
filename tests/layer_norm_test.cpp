/// LayerNorm forward and backward against the double-precision reference (which differentiates
/// the forward term by term), on every rank of every world size: replicated, so every rank holds
/// the full result and the same gradients.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/harness.hpp"
#include "common/reference.hpp"
#include "common/reference_train.hpp"
#include "tp/layers/layer_norm.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

using ::testing::HasSubstr;
using test::on_ranks;

template <class T>
class LayerNormTyped : public ::testing::Test {};
using Floats = ::testing::Types<float, double>;
TYPED_TEST_SUITE(LayerNormTyped, Floats);

TYPED_TEST(LayerNormTyped, ForwardAndBackwardMatchTheReference) {
  using T = TypeParam;
  for (auto [tokens, hidden] : {std::pair{5, 16}, {3, 7}, {1, 33}, {4, 3}}) {
    SCOPED_TRACE(fmt::format("tokens {} hidden {}", tokens, hidden));
    // Inputs with an offset and scale, so that the mean and variance matter. (Not hidden = 2: there
    // the input gradient is zero analytically, and only rounding noise would be compared.)
    const auto x = ref::map(ref::random_matrix<T>(tokens, hidden, ref::test_seed(1)), [](double v) { return double(T(3 * v + 1.5)); });
    const auto gamma = ref::random_matrix<T>(1, hidden, ref::test_seed(2));
    const auto beta = ref::random_matrix<T>(1, hidden, ref::test_seed(3));
    const auto dy = ref::random_matrix<T>(tokens, hidden, ref::test_seed(4));
    const auto want = ref::layer_norm(x, gamma, beta, dy, 1e-5);
    on_ranks([&](std::shared_ptr<Communicator> comm) {
      LayerNorm<T> ln(Context<>(comm), hidden, {.eps = 1e-5, .name = "ln_f"});
      const auto ps = ln.parameters();
      ASSERT_EQ(ps.size(), 2u);
      EXPECT_EQ(ps[0].name, "ln_f.weight");
      EXPECT_FALSE(ps[0].sharded());
      EXPECT_EQ(ln.weight()(0, 0), T(1));  // torch's init: weight 1, bias 0
      EXPECT_EQ(ln.bias()(0, hidden - 1), T(0));
      Cpu().copy(ConstView<T>(ref::to_tensor<T>(gamma)), ln.weight());
      Cpu().copy(ConstView<T>(ref::to_tensor<T>(beta)), ln.bias());
      const auto xt = ref::to_tensor<T>(x), dyt = ref::to_tensor<T>(dy);
      TP_EXPECT_CLOSE(T, ln.forward(xt.view()), want.y);
      TP_EXPECT_CLOSE(T, ln.backward(dyt.view()), want.dx);
      TP_EXPECT_CLOSE(T, ln.weight_grad(), want.dgamma);
      TP_EXPECT_CLOSE(T, ln.bias_grad(), want.dbeta);
      ln.forward(xt.view());
      ln.backward(dyt.view());  // gradients accumulate
      TP_EXPECT_CLOSE(T, ln.weight_grad(), ref::scale(want.dgamma, 2));
      ln.zero_grad();
      TP_EXPECT_CLOSE(T, ln.bias_grad(), ref::Matrix(1, hidden));
    });
  }
}

TEST(LayerNorm, RejectsWrongShapes) {
  run_local(1, [](std::shared_ptr<Communicator> comm) {
    LayerNorm<float> ln(Context<>(comm), 8, {.name = "ln_1"});
    Tensor<float, Cpu> x(3, 7), dy(2, 8);
    EXPECT_THAT([&] { ln.forward(x.view()); }, ::testing::ThrowsMessage<InvalidArgument>(HasSubstr("ln_1: input is 3x7")));
    EXPECT_THROW(ln.backward(dy.view()), InvalidArgument);  // before forward
    Tensor<float, Cpu> ok(3, 8);
    Cpu().fill(ok.view(), 0.5f);
    ln.forward(ok.view());
    EXPECT_THAT([&] { ln.backward(dy.view()); },
                ::testing::ThrowsMessage<InvalidArgument>(HasSubstr("output gradient is 2x8, expected 3x8")));
    EXPECT_THROW(LayerNorm<float>(Context<>(comm), 0), InvalidArgument);
  });
}

}  // namespace
}  // namespace tp
