/// The RMSNorm layer against the unsharded double-precision reference at world sizes 1 to 4, on
/// every device: on full activations (every rank the same output and weight gradient) and under
/// sequence parallelism (rank r normalizes rows partition(tokens), 7 tokens over 3 or 4 ranks are
/// uneven, 2 and 1 leave ranks with none; the weight gradient is all-reduced to the full sum, and a
/// second backward accumulates without reducing the first again). Then its parameter record and
/// the inputs it refuses.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

#include "common/blocks_reference.hpp"
#include "common/devices.hpp"
#include "common/harness.hpp"
#include "common/reference.hpp"
#include "common/reference_train.hpp"
#include "tp/layers/rms_norm.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

using test::download;
using test::on_ranks;
using test::upload;
using ::testing::HasSubstr;

template <class T>
class RmsNormLayer : public ::testing::Test {};
TYPED_TEST_SUITE(RmsNormLayer, test::BlockFloatsBf16);

/// Offset inputs, so that a mean wrongly subtracted would show.
template <class T>
ref::Matrix rms_input(std::int64_t tokens, std::int64_t hidden, std::uint64_t salt) {
  return ref::map(test::random_matrix<T>(tokens, hidden, ref::test_seed(salt)),
                  [](double v) { return test::to_double(static_cast<T>(v + 0.75)); });
}

TYPED_TEST(RmsNormLayer, MatchesTheUnshardedNormOnEveryRank) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  const std::int64_t hidden = 11;
  const double eps = 1e-5;
  for (const bool sp : {false, true})
    for (const std::int64_t tokens : {7, 4, 2, 1}) {
      const std::string trace = fmt::format("sequence_parallel {} tokens {}", sp, tokens);
      SCOPED_TRACE(trace);
      const auto x = rms_input<T>(tokens, hidden, 1);
      const auto gamma = test::random_matrix<T>(1, hidden, ref::test_seed(2));
      const auto dy = test::random_matrix<T>(tokens, hidden, ref::test_seed(3));
      const auto want = ref::rms_norm(x, gamma, dy, eps);
      const test::HostMatrix<T> gamma_h(gamma);
      on_ranks([&](std::shared_ptr<Communicator> comm) {
        SCOPED_TRACE(trace);
        auto dev = std::make_shared<Dev>();
        const Range rows = sp ? partition(tokens, comm->size(), comm->rank()) : Range{0, tokens};
        RMSNorm<T, Dev> norm(Context<Dev>(comm, dev), hidden, {.eps = eps, .name = "rms", .sequence_parallel = sp});
        norm.load_full(gamma_h.view());
        const auto x_d = upload<T>(dev, x.rows_range(rows.begin, rows.size()));
        const auto dy_d = upload<T>(dev, dy.rows_range(rows.begin, rows.size()));
        TP_EXPECT_CLOSE(T, download(*dev, norm.forward(x_d.view())), want.y.rows_range(rows.begin, rows.size()));
        TP_EXPECT_CLOSE(T, download(*dev, norm.backward(dy_d.view())), want.dx.rows_range(rows.begin, rows.size()));
        test::expect_grads<T>(*dev, norm.parameters(), {{"rms.weight", &want.dgamma}});
        norm.forward(x_d.view());
        norm.backward(dy_d.view());  // accumulates: the earlier sum is not reduced again
        const ref::Matrix twice = ref::scale(want.dgamma, 2);
        test::expect_grads<T>(*dev, norm.parameters(), {{"rms.weight", &twice}});
        norm.zero_grad();
        TP_EXPECT_CLOSE(T, download(*dev, norm.weight_grad()), ref::Matrix(1, hidden));
      });
    }
}

#ifndef TP_TEST_CUDA  // device-independent checks: once, in the host binaries

TEST(RmsNormLayerRecord, OneReplicatedWeightStartingAtOneWithoutDecay) {
  on_ranks([](std::shared_ptr<Communicator> comm) {
    RMSNorm<double> norm(Context<>(comm), 6, {.name = "model.norm"});
    const auto ps = norm.parameters();
    ASSERT_EQ(ps.size(), 1u);
    EXPECT_EQ(ps[0].name, "model.norm.weight");
    EXPECT_EQ(ps[0].full_rows, 1);
    EXPECT_EQ(ps[0].full_cols, 6);
    EXPECT_FALSE(ps[0].sharded());
    EXPECT_FALSE(ps[0].weight_decay);
    EXPECT_EQ(test::as_matrix<double>(norm.weight()).data, std::vector<double>(6, 1.0));
    EXPECT_EQ(norm.options().eps, 1e-6);  // Llama's default
    EXPECT_EQ(norm.hidden(), 6);
  });
}

TEST(RmsNormLayerErrors, BadOptionsAndShapesNameTheLayerAndSizes) {
  on_ranks([](std::shared_ptr<Communicator> comm) {
    Context<> ctx(comm);
    auto error_of = [](auto&& f) {
      try {
        f();
      } catch (const InvalidArgument& e) {
        return std::string(e.what());
      }
      return std::string("(no InvalidArgument)");
    };
    for (const double eps : {0.0, -1e-6, std::numeric_limits<double>::infinity(), std::nan("")})
      EXPECT_THAT(error_of([&] { RMSNorm<float>(ctx, 4, {.eps = eps, .name = "rms"}); }),
                  HasSubstr("rms: eps must be positive and finite, got"));
    EXPECT_THAT(error_of([&] { RMSNorm<float>(ctx, 0, {.name = "rms"}); }),
                HasSubstr("rms: hidden size must be positive, got 0"));
    RMSNorm<float> norm(ctx, 4, {.name = "rms"});
    EXPECT_THAT(error_of([&] { norm.backward(Tensor<float, Cpu>(2, 4).view()); }),
                HasSubstr("rms: backward called before forward"));
    EXPECT_THAT(error_of([&] { norm.forward(Tensor<float, Cpu>(2, 5).view()); }),
                HasSubstr("rms: input is 2x5, expected [tokens > 0, 4]"));
    EXPECT_THAT(error_of([&] { norm.forward(Tensor<float, Cpu>(0, 4).view()); }),
                HasSubstr("rms: input is 0x4, expected [tokens > 0, 4]"));
    Tensor<float, Cpu> x(2, 4);
    norm.forward(x.view());
    EXPECT_THAT(error_of([&] { norm.backward(Tensor<float, Cpu>(3, 4).view()); }),
                HasSubstr("rms: output gradient is 3x4, expected 2x4"));
    Tensor<float, Cpu> wide(1, 5);
    EXPECT_THAT(error_of([&] { norm.load_full(wide.view()); }),
                HasSubstr("rms.weight: full tensor is 1x5, the layer expects 1x4"));
    // Sequence parallel: a rank may hold no rows, and still joins the gradient all-reduce.
    RMSNorm<float> sp(ctx, 4, {.name = "rms_sp", .sequence_parallel = true});
    Tensor<float, Cpu> none(0, 4);
    EXPECT_EQ(sp.forward(none.view()).rows(), 0);
    EXPECT_EQ(sp.backward(none.view()).rows(), 0);
  });
}

#endif  // TP_TEST_CUDA

}  // namespace
}  // namespace tp
