/// Sequence parallelism in ColumnParallelLinear and RowParallelLinear: the input split along tokens
/// is all-gathered before the column GEMM, the row output reduce-scattered along tokens, with the
/// conjugate backward; token counts the world size does not divide (and fewer tokens than ranks).

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/blocks_reference.hpp"
#include "common/harness.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

using ::testing::HasSubstr;
using test::on_ranks;

template <class T>
class SequenceParallel : public ::testing::Test {};
using Floats = ::testing::Types<float, double>;
TYPED_TEST_SUITE(SequenceParallel, Floats);

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const InvalidArgument& e) {
    return e.what();
  }
  return "(no InvalidArgument thrown)";
}

/// Column (SP) -> row (SP) against the reference, and against the same pair without SP.
TYPED_TEST(SequenceParallel, ColumnRowPairMatchesReferenceAndNonSequenceParallel) {
  using T = TypeParam;
  const std::int64_t hidden = 6, ffn = 10;
  for (const std::int64_t tokens : {7, 5, 3, 1}) {
    const std::string trace = fmt::format("tokens {}", tokens);
    SCOPED_TRACE(trace);
    const auto x = ref::random_matrix<T>(tokens, hidden, ref::test_seed(1));
    const auto w1 = ref::random_matrix<T>(ffn, hidden, ref::test_seed(2));
    const auto b1 = ref::random_matrix<T>(1, ffn, ref::test_seed(3));
    const auto w2 = ref::random_matrix<T>(hidden, ffn, ref::test_seed(4));
    const auto b2 = ref::random_matrix<T>(1, hidden, ref::test_seed(5));
    const auto dy = ref::random_matrix<T>(tokens, hidden, ref::test_seed(6));
    // Linear pair (no activation): y = (x w1^T + b1) w2^T + b2.
    const auto h = ref::add_bias(ref::matmul(x, false, w1, true), b1);
    const auto second = ref::linear(h, w2, &b2, dy);
    const auto first = ref::linear(x, w1, &b1, second.dx);
    on_ranks([&](std::shared_ptr<Communicator> comm) {
      SCOPED_TRACE(trace);  // traces are per thread
      Context<> ctx(comm);
      const Range mine = partition(tokens, comm->size(), comm->rank());
      for (const bool sp : {false, true}) {
        SCOPED_TRACE(fmt::format("sequence_parallel {}", sp));
        ColumnParallelLinear<T> fc1(ctx, hidden, ffn, {.name = "fc1", .sequence_parallel = sp});
        RowParallelLinear<T> fc2(ctx, ffn, hidden, {.name = "fc2", .sequence_parallel = sp});
        fc1.load_full(ref::to_tensor<T>(w1), ref::to_tensor<T>(b1));
        fc2.load_full(ref::to_tensor<T>(w2), ref::to_tensor<T>(b2));
        const auto x_in = ref::to_tensor<T>(sp ? x.rows_range(mine.begin, mine.size()) : x);
        const auto& h_r = fc1.forward(x_in, sp ? tokens : -1);
        const Range c = fc1.output_range();
        TP_EXPECT_CLOSE(T, h_r, h.cols_range(c.begin, c.size()));  // full tokens on every rank
        const auto& y = fc2.forward(h_r);
        TP_EXPECT_CLOSE(T, y, sp ? second.y.rows_range(mine.begin, mine.size()) : second.y);
        const auto dy_in = ref::to_tensor<T>(sp ? dy.rows_range(mine.begin, mine.size()) : dy);
        const auto& dh = fc2.backward(dy_in);
        TP_EXPECT_CLOSE(T, dh, second.dx.cols_range(c.begin, c.size()));
        const auto& dx = fc1.backward(dh);
        TP_EXPECT_CLOSE(T, dx, sp ? first.dx.rows_range(mine.begin, mine.size()) : first.dx);
        TP_EXPECT_CLOSE(T, fc1.weight_grad(), first.dw.rows_range(c.begin, c.size()));
        TP_EXPECT_CLOSE(T, fc1.bias_grad(), first.db.cols_range(c.begin, c.size()));
        TP_EXPECT_CLOSE(T, fc2.weight_grad(), second.dw.cols_range(c.begin, c.size()));
        TP_EXPECT_CLOSE(T, fc2.bias_grad(), second.db);  // the full bias gradient on every rank
      }
    });
  }
}

TEST(SequenceParallelErrors, NameTheTokensAndRanks) {
  on_ranks([](std::shared_ptr<Communicator> comm) {
    Context<> ctx(comm);
    const int world = comm->size(), rank = comm->rank();
    ColumnParallelLinear<float> col(ctx, 4, 8, {.name = "fc1", .sequence_parallel = true});
    Tensor<float, Cpu> x(2, 4);
    ctx.device->fill(x.view(), 0.5f);
    EXPECT_THAT(error_of([&] { col.forward(x); }), HasSubstr("fc1: under sequence_parallel, forward needs the full token count"));
    const Range mine = partition(9, world, rank);
    if (mine.size() != 2)
      EXPECT_THAT(error_of([&] { col.forward(x, 9); }),
                  HasSubstr(fmt::format("fc1: under sequence_parallel rank {} of {} must hold rows [{}, {}) of the 9 "
                                        "tokens, got 2 rows", rank, world, mine.begin, mine.end)));
    EXPECT_THAT(error_of([&] { ColumnParallelLinear<float>(ctx, 4, 8, {.gather_output = true, .sequence_parallel = true}); }),
                HasSubstr("gather_output cannot be combined with sequence_parallel"));
    EXPECT_THAT(error_of([&] { RowParallelLinear<float>(ctx, 8, 4, {.input_is_parallel = false, .sequence_parallel = true}); }),
                HasSubstr("sequence_parallel needs input_is_parallel"));
    ColumnParallelLinear<float> plain(ctx, 4, 8, {.name = "plain"});
    EXPECT_THAT(error_of([&] { plain.forward(x, 5); }), HasSubstr("plain: input has 2 tokens, but tokens = 5 was passed"));
  });
}

}  // namespace
}  // namespace tp
