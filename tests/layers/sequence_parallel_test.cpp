/// Sequence parallelism in ColumnParallelLinear and RowParallelLinear: the input split along tokens
/// is all-gathered before the column GEMM, the row output reduce-scattered along tokens, with the
/// conjugate backward; token counts the world size does not divide (and fewer tokens than ranks);
/// on every device (common/devices.hpp).

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/blocks_reference.hpp"
#include "common/devices.hpp"
#include "common/harness.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

using test::download;
using test::error_of;
using test::on_ranks;
using test::upload;
using ::testing::HasSubstr;

template <class T>
class SequenceParallel : public ::testing::Test {};
TYPED_TEST_SUITE(SequenceParallel, test::BlockFloats);

/// Column (SP) -> row (SP) against the reference, and against the same pair without SP.
TYPED_TEST(SequenceParallel, ColumnRowPairMatchesReferenceAndNonSequenceParallel) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  const std::int64_t hidden = 6, ffn = 10;
  for (const std::int64_t tokens : {7, 5, 3, 1}) {
    const std::string trace = fmt::format("tokens {}", tokens);
    SCOPED_TRACE(trace);
    const auto x = test::random_matrix<T>(tokens, hidden, ref::test_seed(1));
    const auto w1 = test::random_matrix<T>(ffn, hidden, ref::test_seed(2));
    const auto b1 = test::random_matrix<T>(1, ffn, ref::test_seed(3));
    const auto w2 = test::random_matrix<T>(hidden, ffn, ref::test_seed(4));
    const auto b2 = test::random_matrix<T>(1, hidden, ref::test_seed(5));
    const auto dy = test::random_matrix<T>(tokens, hidden, ref::test_seed(6));
    // Linear pair (no activation): y = (x w1^T + b1) w2^T + b2.
    const auto h = ref::add_bias(ref::matmul(x, false, w1, true), b1);
    const auto second = ref::linear(h, w2, &b2, dy);
    const auto first = ref::linear(x, w1, &b1, second.dx);
    const test::HostMatrix<T> w1_h(w1), b1_h(b1), w2_h(w2), b2_h(b2);
    on_ranks([&](std::shared_ptr<Communicator> comm) {
      SCOPED_TRACE(trace);  // traces are per thread
      auto dev = std::make_shared<Dev>();
      Context<Dev> ctx(comm, dev);
      const Range mine = partition(tokens, comm->size(), comm->rank());
      for (const bool sp : {false, true}) {
        SCOPED_TRACE(fmt::format("sequence_parallel {}", sp));
        ColumnParallelLinear<T, Dev> fc1(ctx, hidden, ffn, {.name = "fc1", .sequence_parallel = sp});
        RowParallelLinear<T, Dev> fc2(ctx, ffn, hidden, {.name = "fc2", .sequence_parallel = sp});
        fc1.load_full(w1_h.view(), b1_h.view());
        fc2.load_full(w2_h.view(), b2_h.view());
        const auto x_d = upload<T>(dev, sp ? x.rows_range(mine.begin, mine.size()) : x);
        const auto& h_r = fc1.forward(x_d.view(), sp ? tokens : -1);
        const Range c = fc1.output_range();
        TP_EXPECT_CLOSE(T, download(*dev, h_r), h.cols_range(c.begin, c.size()));  // full tokens on every rank
        const auto& y = fc2.forward(h_r.view());
        TP_EXPECT_CLOSE(T, download(*dev, y), sp ? second.y.rows_range(mine.begin, mine.size()) : second.y);
        const auto dy_d = upload<T>(dev, sp ? dy.rows_range(mine.begin, mine.size()) : dy);
        const auto& dh = fc2.backward(dy_d.view());
        TP_EXPECT_CLOSE(T, download(*dev, dh), second.dx.cols_range(c.begin, c.size()));
        const auto& dx = fc1.backward(dh.view());
        TP_EXPECT_CLOSE(T, download(*dev, dx), sp ? first.dx.rows_range(mine.begin, mine.size()) : first.dx);
        TP_EXPECT_CLOSE(T, download(*dev, fc1.weight_grad()), first.dw.rows_range(c.begin, c.size()));
        TP_EXPECT_CLOSE(T, download(*dev, fc1.bias_grad()), first.db.cols_range(c.begin, c.size()));
        TP_EXPECT_CLOSE(T, download(*dev, fc2.weight_grad()), second.dw.cols_range(c.begin, c.size()));
        TP_EXPECT_CLOSE(T, download(*dev, fc2.bias_grad()), second.db);  // the full bias gradient on every rank
      }
    });
  }
}

#ifndef TP_TEST_CUDA  // device-independent checks: once, in the host binaries

TEST(SequenceParallelErrors, NameTheTokensAndRanks) {
  on_ranks([](std::shared_ptr<Communicator> comm) {
    Context<> ctx(comm);
    const int world = comm->size(), rank = comm->rank();
    ColumnParallelLinear<float> col(ctx, 4, 8, {.name = "fc1", .sequence_parallel = true});
    Tensor<float, Cpu> x(2, 4);
    ctx.device->fill(x.view(), 0.5f);
    EXPECT_THAT(error_of([&] { col.forward(x); }),
                HasSubstr("fc1: under sequence_parallel, forward needs the full token count"));
    const Range mine = partition(9, world, rank);
    if (mine.size() != 2)
      EXPECT_THAT(error_of([&] { col.forward(x, 9); }),
                  HasSubstr(fmt::format("fc1: under sequence_parallel rank {} of {} must hold rows [{}, {}) of the 9 "
                                        "tokens, got 2 rows",
                                        rank, world, mine.begin, mine.end)));
    EXPECT_THAT(
        error_of([&] { ColumnParallelLinear<float>(ctx, 4, 8, {.gather_output = true, .sequence_parallel = true}); }),
        HasSubstr("gather_output cannot be combined with sequence_parallel"));
    EXPECT_THAT(
        error_of([&] { RowParallelLinear<float>(ctx, 8, 4, {.input_is_parallel = false, .sequence_parallel = true}); }),
        HasSubstr("sequence_parallel needs input_is_parallel"));
    ColumnParallelLinear<float> plain(ctx, 4, 8, {.name = "plain"});
    EXPECT_THAT(error_of([&] { plain.forward(x, 5); }),
                HasSubstr("plain: input has 2 tokens, but tokens = 5 was passed"));
  });
}

#endif  // TP_TEST_CUDA

}  // namespace
}  // namespace tp
