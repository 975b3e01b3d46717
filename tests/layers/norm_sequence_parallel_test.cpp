/// LayerNorm under sequence parallelism: each rank normalizes its rows partition(tokens) (none for
/// 2 tokens on 4 ranks), and backward all-reduces the weight and bias gradients, so every rank
/// holds the full gradient of the unsharded layer. On every device; then a residual chain
/// (norm -> column -> row -> residual add -> norm) at TP 1 to 4 against the unsharded chain.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/blocks_reference.hpp"
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

template <class T>
class NormSequenceParallel : public ::testing::Test {};
TYPED_TEST_SUITE(NormSequenceParallel, test::BlockFloats);

/// Offset and scale, so that the mean and variance matter.
template <class T>
ref::Matrix norm_input(std::int64_t tokens, std::int64_t hidden, std::uint64_t salt) {
  return ref::map(test::random_matrix<T>(tokens, hidden, ref::test_seed(salt)),
                  [](double v) { return test::to_double(static_cast<T>(3 * v + 1.5)); });
}

TYPED_TEST(NormSequenceParallel, GradientsAreTheFullSumsOnEveryRank) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  const std::int64_t hidden = 9;
  for (const std::int64_t tokens : {7, 4, 2, 1}) {
    const std::string trace = fmt::format("tokens {}", tokens);
    SCOPED_TRACE(trace);
    const auto x = norm_input<T>(tokens, hidden, 1);
    const auto gamma = test::random_matrix<T>(1, hidden, ref::test_seed(2));
    const auto beta = test::random_matrix<T>(1, hidden, ref::test_seed(3));
    const auto dy = test::random_matrix<T>(tokens, hidden, ref::test_seed(4));
    const auto want = ref::layer_norm(x, gamma, beta, dy, 1e-5);
    on_ranks([&](std::shared_ptr<Communicator> comm) {
      SCOPED_TRACE(trace);
      auto dev = std::make_shared<Dev>();
      const Range mine = partition(tokens, comm->size(), comm->rank());
      LayerNorm<T, Dev> ln(Context<Dev>(comm, dev), hidden, {.name = "ln", .sequence_parallel = true});
      const auto gamma_d = upload<T>(dev, gamma), beta_d = upload<T>(dev, beta);
      dev->copy(gamma_d.view(), ln.weight());
      dev->copy(beta_d.view(), ln.bias());
      const auto x_d = upload<T>(dev, x.rows_range(mine.begin, mine.size()));
      const auto dy_d = upload<T>(dev, dy.rows_range(mine.begin, mine.size()));
      TP_EXPECT_CLOSE(T, download(*dev, ln.forward(x_d.view())), want.y.rows_range(mine.begin, mine.size()));
      TP_EXPECT_CLOSE(T, download(*dev, ln.backward(dy_d.view())), want.dx.rows_range(mine.begin, mine.size()));
      TP_EXPECT_CLOSE(T, download(*dev, ln.weight_grad()), want.dgamma);
      TP_EXPECT_CLOSE(T, download(*dev, ln.bias_grad()), want.dbeta);
      ln.forward(x_d.view());
      ln.backward(dy_d.view());  // accumulates: the earlier sum is not reduced again
      TP_EXPECT_CLOSE(T, download(*dev, ln.weight_grad()), ref::scale(want.dgamma, 2));
      TP_EXPECT_CLOSE(T, download(*dev, ln.bias_grad()), ref::scale(want.dbeta, 2));
    });
  }
}

#ifndef TP_TEST_CUDA  // the chain in double, in the host binaries

/// x -> r = x + fc2(fc1(ln1(x))) -> ln2(r), every layer sequence parallel, against the same chain
/// unsharded in double; 2 and 1 tokens leave ranks with no rows at world sizes 3 and 4.
TEST(NormSequenceParallelChain, ResidualChainMatchesTheUnshardedChain) {
  using T = double;
  const std::int64_t hidden = 6, ffn = 10;
  const double eps = 1e-5;
  for (const std::int64_t tokens : {7, 5, 2, 1}) {
    const std::string trace = fmt::format("tokens {}", tokens);
    SCOPED_TRACE(trace);
    const auto x = norm_input<T>(tokens, hidden, 11);
    const auto g1 = ref::map(ref::random_matrix<T>(1, hidden, ref::test_seed(12)), [](double v) { return 1 + v / 2; });
    const auto be1 = ref::random_matrix<T>(1, hidden, ref::test_seed(13));
    const auto g2 = ref::map(ref::random_matrix<T>(1, hidden, ref::test_seed(14)), [](double v) { return 1 + v / 2; });
    const auto be2 = ref::random_matrix<T>(1, hidden, ref::test_seed(15));
    const auto w1 = ref::random_matrix<T>(ffn, hidden, ref::test_seed(16));
    const auto b1 = ref::random_matrix<T>(1, ffn, ref::test_seed(17));
    const auto w2 = ref::random_matrix<T>(hidden, ffn, ref::test_seed(18));
    const auto b2 = ref::random_matrix<T>(1, hidden, ref::test_seed(19));
    const auto dout = ref::random_matrix<T>(tokens, hidden, ref::test_seed(20));
    // The unsharded chain: forwards first (a zero output gradient), then the backward.
    const ref::Matrix zero(tokens, hidden);
    const auto a = ref::layer_norm(x, g1, be1, zero, eps).y;
    const auto h = ref::add_bias(ref::matmul(a, false, w1, true), b1);
    const auto r = ref::add(x, ref::add_bias(ref::matmul(h, false, w2, true), b2));
    const auto ln2 = ref::layer_norm(r, g2, be2, dout, eps);
    const auto fc2 = ref::linear(h, w2, &b2, ln2.dx);
    const auto fc1 = ref::linear(a, w1, &b1, fc2.dx);
    const auto ln1 = ref::layer_norm(x, g1, be1, fc1.dx, eps);
    const auto dx = ref::add(ln2.dx, ln1.dx);
    on_ranks([&](std::shared_ptr<Communicator> comm) {
      SCOPED_TRACE(trace);
      Context<> ctx(comm);
      const Range mine = partition(tokens, comm->size(), comm->rank());
      auto rows = [&](const ref::Matrix& m) { return m.rows_range(mine.begin, mine.size()); };
      LayerNorm<T> norm1(ctx, hidden, {.name = "ln_1", .sequence_parallel = true});
      LayerNorm<T> norm2(ctx, hidden, {.name = "ln_2", .sequence_parallel = true});
      ColumnParallelLinear<T> col(ctx, hidden, ffn, {.name = "fc1", .sequence_parallel = true});
      RowParallelLinear<T> row(ctx, ffn, hidden, {.name = "fc2", .sequence_parallel = true});
      const auto g1_t = ref::to_tensor<T>(g1), be1_t = ref::to_tensor<T>(be1);
      const auto g2_t = ref::to_tensor<T>(g2), be2_t = ref::to_tensor<T>(be2);
      ctx.device->copy(g1_t.view(), norm1.weight());
      ctx.device->copy(be1_t.view(), norm1.bias());
      ctx.device->copy(g2_t.view(), norm2.weight());
      ctx.device->copy(be2_t.view(), norm2.bias());
      const auto w1_t = ref::to_tensor<T>(w1), b1_t = ref::to_tensor<T>(b1);
      const auto w2_t = ref::to_tensor<T>(w2), b2_t = ref::to_tensor<T>(b2);
      col.load_full(w1_t.view(), b1_t.view());
      row.load_full(w2_t.view(), b2_t.view());

      const auto x_r = ref::to_tensor<T>(rows(x));
      Tensor<T, Cpu> residual(mine.size(), hidden);
      ctx.device->copy(x_r.view(), residual.view());
      const auto& h_r = col.forward(norm1.forward(x_r.view()).view(), tokens);
      ops::add(*ctx.device, ConstView<T>(row.forward(h_r.view()).view()), residual.view());
      const auto& out = norm2.forward(residual.view());
      EXPECT_LE(ref::rel_error(test::as_matrix<double>(out), rows(ln2.y)), 1e-12);

      const auto dout_r = ref::to_tensor<T>(rows(dout));
      Tensor<T, Cpu> d_residual(mine.size(), hidden);
      ctx.device->copy(norm2.backward(dout_r.view()).view(), d_residual.view());
      const auto& d_a = col.backward(row.backward(d_residual.view()).view());
      Tensor<T, Cpu> d_x(mine.size(), hidden);
      ctx.device->copy(norm1.backward(d_a.view()).view(), d_x.view());
      ops::add(*ctx.device, ConstView<T>(d_residual.view()), d_x.view());
      EXPECT_LE(ref::rel_error(test::as_matrix<double>(d_x), rows(dx)), 1e-12);

      // Every replicated parameter holds the full gradient on every rank; the sharded ones their part.
      std::vector<Parameter<T>> ps;
      for (auto* layer : {&norm1, &norm2})
        for (const auto& p : layer->parameters()) ps.push_back(p);
      for (const auto& p : col.parameters()) ps.push_back(p);
      for (const auto& p : row.parameters()) ps.push_back(p);
      test::expect_grads<T>(ps, {{"ln_1.weight", &ln1.dgamma},
                                 {"ln_1.bias", &ln1.dbeta},
                                 {"ln_2.weight", &ln2.dgamma},
                                 {"ln_2.bias", &ln2.dbeta},
                                 {"fc1.weight", &fc1.dw},
                                 {"fc1.bias", &fc1.db},
                                 {"fc2.weight", &fc2.dw},
                                 {"fc2.bias", &fc2.db}});
    });
  }
}

TEST(NormSequenceParallelChain, ZeroRowShardsAreAcceptedOnlyUnderSequenceParallel) {
  run_local(4, [](std::shared_ptr<Communicator> comm) {
    Context<> ctx(comm);
    Tensor<float, Cpu> none(0, 8);
    LayerNorm<float> plain(ctx, 8, {.name = "ln_plain"});
    EXPECT_THAT([&] { plain.forward(none.view()); },
                ::testing::ThrowsMessage<InvalidArgument>(::testing::HasSubstr("ln_plain: input is 0x8")));
    LayerNorm<float> sp(ctx, 8, {.name = "ln_sp", .sequence_parallel = true});
    EXPECT_EQ(sp.forward(none.view()).rows(), 0);
    EXPECT_EQ(sp.backward(none.view()).rows(), 0);  // joins the gradient all-reduce with zeros
  });
}

#endif  // TP_TEST_CUDA

}  // namespace
}  // namespace tp
