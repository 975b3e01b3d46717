/// ParallelMLP (column, activation, row) with GELU exact and tanh and SwiGLU, forward and backward
/// against the unsharded reference, with and without sequence parallelism, at every world size, on
/// every device (common/devices.hpp), in float and double and (on the CPU) bf16, normwise within
/// ref::reduction_tolerance.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/blocks_reference.hpp"
#include "common/devices.hpp"
#include "common/harness.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

using test::download;
using test::on_ranks;
using test::upload;
using ::testing::HasSubstr;

template <class T>
class ParallelMlp : public ::testing::Test {};
TYPED_TEST_SUITE(ParallelMlp, test::BlockFloatsBf16);

constexpr std::pair<Activation, ref::Act> kActs[] = {{Activation::gelu_exact, ref::Act::gelu_exact},
                                                     {Activation::gelu_tanh, ref::Act::gelu_tanh},
                                                     {Activation::swiglu, ref::Act::swiglu}};

TYPED_TEST(ParallelMlp, MatchesReference) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  const std::int64_t tokens = 5, hidden = 8, ffn = 10;  // 10 over 3 and 4 ranks is uneven, 5 tokens too
  for (const auto [act, ref_act] : kActs)
    for (const bool bias : {true, false}) {
      const std::string trace = fmt::format("activation {} bias {}", static_cast<int>(act), bias);
      SCOPED_TRACE(trace);
      const std::int64_t fc1_rows = act == Activation::swiglu ? 2 * ffn : ffn;
      const auto x = test::random_matrix<T>(tokens, hidden, ref::test_seed(1));
      const auto w1 = test::random_matrix<T>(fc1_rows, hidden, ref::test_seed(2));
      const auto b1 = test::random_matrix<T>(1, fc1_rows, ref::test_seed(3));
      const auto w2 = test::random_matrix<T>(hidden, ffn, ref::test_seed(4));
      const auto b2 = test::random_matrix<T>(1, hidden, ref::test_seed(5));
      const auto dy = test::random_matrix<T>(tokens, hidden, ref::test_seed(6));
      const auto want = ref::mlp(x, w1, b1, w2, b2, dy, ref_act, bias);
      const test::HostMatrix<T> w1_h(w1), b1_h(b1), w2_h(w2), b2_h(b2);
      on_ranks([&](std::shared_ptr<Communicator> comm) {
        SCOPED_TRACE(trace);  // traces are per thread
        auto dev = std::make_shared<Dev>();
        const Range mine = partition(tokens, comm->size(), comm->rank());
        for (const bool sp : {false, true}) {
          SCOPED_TRACE(fmt::format("sequence_parallel {}", sp));
          ParallelMLP<T, Dev> mlp(Context<Dev>(comm, dev), hidden, ffn,
                                  {.activation = act, .bias = bias, .sequence_parallel = sp});
          mlp.load_full(w1_h.view(), b1_h.view(), w2_h.view(), b2_h.view());
          const auto x_d = upload<T>(dev, sp ? x.rows_range(mine.begin, mine.size()) : x);
          // Normwise within the reduction each result comes from (ref::reduction_tolerance: float
          // and double at tolerance<T> as ever; bf16 from its unit roundoff and k): y sums over
          // ffn, dx over fc1's rows, the gradients over the tokens.
          TP_EXPECT_CLOSE_REDUCED(T, download(*dev, mlp.forward(x_d.view(), sp ? tokens : -1)),
                                  sp ? want.y.rows_range(mine.begin, mine.size()) : want.y, ffn);
          const auto dy_d = upload<T>(dev, sp ? dy.rows_range(mine.begin, mine.size()) : dy);
          TP_EXPECT_CLOSE_REDUCED(T, download(*dev, mlp.backward(dy_d.view())),
                                  sp ? want.dx.rows_range(mine.begin, mine.size()) : want.dx, fc1_rows);
          test::expect_grads<T>(*dev, mlp.parameters(),
                                {{"mlp.fc1.weight", &want.dw1},
                                 {"mlp.fc1.bias", &want.db1},
                                 {"mlp.fc2.weight", &want.dw2},
                                 {"mlp.fc2.bias", &want.db2}},
                                tokens);
        }
      });
    }
}

#ifndef TP_TEST_CUDA  // device-independent checks: once, in the host binaries

/// The merged [gate; up] weight: rank r holds rows partition(ffn) of gate and the same rows of up,
/// stored [gate_r; up_r], and says so in its parameter records.
TEST(ParallelMlpLayout, SwigluHoldsMatchingGateAndUpRows) {
  const std::int64_t hidden = 4, ffn = 7;
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    ParallelMLP<double> mlp(Context<>(comm), hidden, ffn, {.activation = Activation::swiglu});
    const Range r = partition(ffn, comm->size(), comm->rank());
    EXPECT_EQ(mlp.ffn_range(), r);
    const auto ps = mlp.parameters();
    ASSERT_EQ(ps.size(), 6u);  // fc1 weight gate, up; fc1 bias gate, up; fc2 weight, bias
    EXPECT_EQ(ps[0].name, "mlp.fc1.weight");
    EXPECT_EQ(ps[0].rows, r);
    EXPECT_EQ(ps[1].rows, (Range{ffn + r.begin, ffn + r.end}));
    EXPECT_EQ(ps[0].full_rows, 2 * ffn);
    EXPECT_EQ(ps[1].value.data, ps[0].value.data + r.size() * hidden);  // [gate_r; up_r]
    EXPECT_EQ(ps[3].cols, (Range{ffn + r.begin, ffn + r.end}));
    // Initialised from the full tensor's indices: rank r's up rows are the full weight's rows ffn + r.
    const auto full = ref::random_matrix<double>(2 * ffn, hidden, 7);
    mlp.fc1().load_full(ref::to_tensor<double>(full), ref::to_tensor<double>(ref::Matrix(1, 2 * ffn)));
    TP_EXPECT_CLOSE(double, mlp.fc1().weight(), ref::Matrix([&] {
                      ref::Matrix m(2 * r.size(), hidden);
                      for (std::int64_t i = 0; i < r.size(); ++i)
                        for (std::int64_t c = 0; c < hidden; ++c) {
                          m(i, c) = full(r.begin + i, c);
                          m(r.size() + i, c) = full(ffn + r.begin + i, c);
                        }
                      return m;
                    }()));
  });
}

TEST(ParallelMlpErrors, FfnSmallerThanWorld) {
  on_ranks([](std::shared_ptr<Communicator> comm) {
    if (comm->size() < 3) return;
    try {
      ParallelMLP<float>(Context<>(comm), 4, 2, {.activation = Activation::swiglu});
      ADD_FAILURE() << "no error";
    } catch (const InvalidArgument& e) {
      EXPECT_THAT(e.what(), HasSubstr(fmt::format("out_features = 2 cannot be split over {} ranks", comm->size())));
    }
  });
}

#endif  // TP_TEST_CUDA

}  // namespace
}  // namespace tp
