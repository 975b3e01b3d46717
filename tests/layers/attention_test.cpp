/// ParallelAttention against the unsharded reference: multi-head, grouped-query (2 kv heads) and
/// multi-query (1 kv head), kv heads replicated when the world exceeds them, causal and not, a
/// batch of sequences, sequence parallelism on and off, on every device (common/devices.hpp), in
/// float and double and (on the CPU) bf16, normwise within ref::reduction_tolerance; heads that
/// cannot be split are errors.

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
class Attention : public ::testing::Test {};
TYPED_TEST_SUITE(Attention, test::BlockFloatsBf16);

TYPED_TEST(Attention, MatchesReference) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  struct Case {
    std::int64_t heads, kv_heads;
  };
  const std::int64_t hidden = 10, d = 4, batch = 2, seq = 5, tokens = batch * seq;  // 10 tokens: uneven over 3, 4
  // 8/2 at world 4 and 8/1, 12/1 at worlds 2 to 4 replicate kv heads; 12/12 runs at world 3.
  for (const Case s : {Case{8, 8}, Case{8, 2}, Case{8, 1}, Case{12, 12}, Case{12, 1}})
    for (const bool causal : {true, false})
      for (const bool bias : {true, false}) {
        const std::string trace =
            fmt::format("heads {} kv_heads {} causal {} bias {}", s.heads, s.kv_heads, causal, bias);
        SCOPED_TRACE(trace);
        const std::int64_t qkv_rows = (s.heads + 2 * s.kv_heads) * d;
        const auto x = test::random_matrix<T>(tokens, hidden, ref::test_seed(1));
        const auto w_qkv = test::rounded<T>(
            ref::random_scaled<double>(qkv_rows, hidden, ref::test_seed(2), 1 / std::sqrt(double(hidden))));
        const auto b_qkv = test::random_matrix<T>(1, qkv_rows, ref::test_seed(3));
        const auto w_o = test::rounded<T>(
            ref::random_scaled<double>(hidden, s.heads * d, ref::test_seed(4), 1 / std::sqrt(double(s.heads * d))));
        const auto b_o = test::random_matrix<T>(1, hidden, ref::test_seed(5));
        const auto dy = test::random_matrix<T>(tokens, hidden, ref::test_seed(6));
        const auto want = ref::attention(x, w_qkv, b_qkv, w_o, b_o, dy, s.heads, s.kv_heads, d, seq, causal, bias);
        const test::HostMatrix<T> w_qkv_h(w_qkv), b_qkv_h(b_qkv), w_o_h(w_o), b_o_h(b_o);
        on_ranks([&](std::shared_ptr<Communicator> comm) {
          SCOPED_TRACE(trace);  // traces are per thread
          const int world = comm->size(), rank = comm->rank();
          if (!test::heads_split(s.heads, s.kv_heads, world)) return;  // covered by HeadsThatCannotBeSplit
          auto dev = std::make_shared<Dev>();
          const Range mine = partition(tokens, world, rank);
          for (const bool sp : {false, true}) {
            SCOPED_TRACE(fmt::format("sequence_parallel {}", sp));
            ParallelAttention<T, Dev> attn(Context<Dev>(comm, dev), hidden, s.heads, s.kv_heads,
                                           {.causal = causal, .bias = bias, .head_dim = d, .sequence_parallel = sp});
            const std::int64_t replicas = world > s.kv_heads ? world / s.kv_heads : 1;
            EXPECT_EQ(attn.kv_replicas(), replicas);
            EXPECT_EQ(attn.q_heads().size(), s.heads / world);
            // Rank r's query heads read exactly the kv heads it holds.
            const std::int64_t group = s.heads / s.kv_heads;
            EXPECT_EQ(attn.kv_heads().begin, attn.q_heads().begin / group);
            EXPECT_EQ(attn.kv_heads().end, (attn.q_heads().end - 1) / group + 1);
            attn.load_full(w_qkv_h.view(), bias ? b_qkv_h.view() : ConstView<T>{}, w_o_h.view(),
                           bias ? b_o_h.view() : ConstView<T>{});
            const auto x_d = upload<T>(dev, sp ? x.rows_range(mine.begin, mine.size()) : x);
            // Normwise within the reduction each result comes from (ref::reduction_tolerance: float
            // and double at tolerance<T> as ever; bf16 from its unit roundoff and k): y sums over
            // the heads' outputs, dx over q, k and v's rows, the gradients over the tokens.
            TP_EXPECT_CLOSE_REDUCED(T, download(*dev, attn.forward(x_d.view(), seq, sp ? tokens : -1)),
                                    sp ? want.y.rows_range(mine.begin, mine.size()) : want.y, s.heads * d);
            const auto dy_d = upload<T>(dev, sp ? dy.rows_range(mine.begin, mine.size()) : dy);
            TP_EXPECT_CLOSE_REDUCED(T, download(*dev, attn.backward(dy_d.view())),
                                    sp ? want.dx.rows_range(mine.begin, mine.size()) : want.dx, qkv_rows);
            test::expect_grads<T>(*dev, attn.parameters(),
                                  {{"attention.qkv.weight", &want.dw_qkv},
                                   {"attention.qkv.bias", &want.db_qkv},
                                   {"attention.dense.weight", &want.dw_o},
                                   {"attention.dense.bias", &want.db_o}},
                                  tokens);
          }
        });
      }
}

/// Replicated kv heads whose two kv widths exceed hidden (head_dim 3: 6 > 4 at world 4), so the kv
/// bias gradient cannot ride in the weight's all-reduce and takes its own.
TYPED_TEST(Attention, ReplicatedKvBiasWiderThanHidden) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  const std::int64_t hidden = 4, heads = 4, kv_heads = 2, d = 3, seq = 3, tokens = 2 * seq;
  const std::int64_t qkv_rows = (heads + 2 * kv_heads) * d;
  const auto x = test::random_matrix<T>(tokens, hidden, ref::test_seed(1));
  const auto w_qkv =
      test::rounded<T>(ref::random_scaled<double>(qkv_rows, hidden, ref::test_seed(2), 1 / std::sqrt(double(hidden))));
  const auto b_qkv = test::random_matrix<T>(1, qkv_rows, ref::test_seed(3));
  const auto w_o = test::rounded<T>(
      ref::random_scaled<double>(hidden, heads * d, ref::test_seed(4), 1 / std::sqrt(double(heads * d))));
  const auto b_o = test::random_matrix<T>(1, hidden, ref::test_seed(5));
  const auto dy = test::random_matrix<T>(tokens, hidden, ref::test_seed(6));
  const auto want = ref::attention(x, w_qkv, b_qkv, w_o, b_o, dy, heads, kv_heads, d, seq, true, true);
  const test::HostMatrix<T> w_qkv_h(w_qkv), b_qkv_h(b_qkv), w_o_h(w_o), b_o_h(b_o);
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    if (!test::heads_split(heads, kv_heads, comm->size())) return;
    auto dev = std::make_shared<Dev>();
    ParallelAttention<T, Dev> attn(Context<Dev>(comm, dev), hidden, heads, kv_heads, {.head_dim = d});
    EXPECT_EQ(attn.kv_replicas(), comm->size() > kv_heads ? comm->size() / kv_heads : 1);
    attn.load_full(w_qkv_h.view(), b_qkv_h.view(), w_o_h.view(), b_o_h.view());
    const auto x_d = upload<T>(dev, x), dy_d = upload<T>(dev, dy);
    TP_EXPECT_CLOSE_REDUCED(T, download(*dev, attn.forward(x_d.view(), seq)), want.y, heads * d);
    TP_EXPECT_CLOSE_REDUCED(T, download(*dev, attn.backward(dy_d.view())), want.dx, qkv_rows);
    test::expect_grads<T>(*dev, attn.parameters(),
                          {{"attention.qkv.weight", &want.dw_qkv},
                           {"attention.qkv.bias", &want.db_qkv},
                           {"attention.dense.weight", &want.dw_o},
                           {"attention.dense.bias", &want.db_o}},
                          tokens);
  });
}

/// Two steps accumulate, also for replicated kv heads (whose step gradient is summed over replicas).
TYPED_TEST(Attention, GradientsAccumulateAcrossSteps) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  const std::int64_t hidden = 6, heads = 4, kv_heads = 1, d = 3, seq = 4;
  const auto x = test::random_matrix<T>(seq, hidden, ref::test_seed(1));
  const auto w_qkv = test::rounded<T>(
      ref::random_scaled<double>((heads + 2 * kv_heads) * d, hidden, ref::test_seed(2), 1 / std::sqrt(double(hidden))));
  const auto b_qkv = test::random_matrix<T>(1, (heads + 2 * kv_heads) * d, ref::test_seed(3));
  const auto w_o = test::random_matrix<T>(hidden, heads * d, ref::test_seed(4));
  const auto b_o = test::random_matrix<T>(1, hidden, ref::test_seed(5));
  const auto dy1 = test::random_matrix<T>(seq, hidden, ref::test_seed(6));
  const auto dy2 = test::random_matrix<T>(seq, hidden, ref::test_seed(7));
  const auto a = ref::attention(x, w_qkv, b_qkv, w_o, b_o, dy1, heads, kv_heads, d, seq, true, true);
  const auto b = ref::attention(x, w_qkv, b_qkv, w_o, b_o, dy2, heads, kv_heads, d, seq, true, true);
  const auto dw = ref::add(a.dw_qkv, b.dw_qkv), db = ref::add(a.db_qkv, b.db_qkv), dwo = ref::add(a.dw_o, b.dw_o),
             dbo = ref::add(a.db_o, b.db_o);
  const test::HostMatrix<T> w_qkv_h(w_qkv), b_qkv_h(b_qkv), w_o_h(w_o), b_o_h(b_o);
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    if (!test::heads_split(heads, kv_heads, comm->size())) return;
    auto dev = std::make_shared<Dev>();
    ParallelAttention<T, Dev> attn(Context<Dev>(comm, dev), hidden, heads, kv_heads, {.head_dim = d});
    attn.load_full(w_qkv_h.view(), b_qkv_h.view(), w_o_h.view(), b_o_h.view());
    const auto x_d = upload<T>(dev, x);
    for (const auto* dy : {&dy1, &dy2}) {
      attn.forward(x_d.view(), seq);
      attn.backward(upload<T>(dev, *dy).view());
    }
    test::expect_grads<T>(*dev, attn.parameters(),
                          {{"attention.qkv.weight", &dw},
                           {"attention.qkv.bias", &db},
                           {"attention.dense.weight", &dwo},
                           {"attention.dense.bias", &dbo}},
                          2 * seq);  // both steps' tokens
  });
}

#ifndef TP_TEST_CUDA  // device-independent checks: once, in the host binaries

TEST(AttentionErrors, HeadsThatCannotBeSplit) {
  on_ranks([](std::shared_ptr<Communicator> comm) {
    Context<> ctx(comm);
    const int world = comm->size();
    auto error_of = [&](std::int64_t hidden, std::int64_t heads, std::int64_t kv, std::int64_t d) -> std::string {
      try {
        ParallelAttention<float>(ctx, hidden, heads, kv, {.head_dim = d, .name = "attn"});
      } catch (const InvalidArgument& e) {
        return e.what();
      }
      return "(no InvalidArgument thrown)";
    };
    EXPECT_THAT(error_of(8, 8, 3, 2), HasSubstr("attn: heads = 8 is not a multiple of kv_heads = 3"));
    if (world > 1) {
      EXPECT_THAT(error_of(10, 5, 5, 2),
                  HasSubstr(fmt::format("attn: heads = 5 cannot be split over world size {}", world)));
    }
    if (world == 3) {
      EXPECT_THAT(error_of(8, 12, 2, 2), HasSubstr("attn: kv_heads = 2 cannot be split over world size 3"));
      EXPECT_THAT(error_of(8, 24, 8, 2), HasSubstr("attn: kv_heads = 8 cannot be split over world size 3"));
      EXPECT_THAT(error_of(8, 8, 8, 2), HasSubstr("attn: heads = 8 cannot be split over world size 3"));
    }
    if (world == 4)
      EXPECT_THAT(error_of(8, 12, 6, 2), HasSubstr("attn: kv_heads = 6 cannot be split over world size 4"));
    EXPECT_THAT(error_of(10, 12, 12, 0), HasSubstr("attn: hidden = 10 is not a multiple of heads = 12"));

    ParallelAttention<float> attn(ctx, 8, 4 * world, world, {.head_dim = 2, .name = "attn"});
    Tensor<float, Cpu> x(6, 8);
    ctx.device->fill(x.view(), 0.5f);
    try {
      attn.forward(x, 4);
      ADD_FAILURE() << "6 tokens accepted as sequences of 4";
    } catch (const InvalidArgument& e) {
      EXPECT_THAT(e.what(), HasSubstr("attn: 6 tokens are not a whole number of sequences of 4"));
    }
  });
}

#endif  // TP_TEST_CUDA

}  // namespace
}  // namespace tp
