/// ParallelLMHead tied to a VocabParallelEmbedding: ids -> embedding -> head (the same table) ->
/// VocabParallelCrossEntropy at world sizes 1 to 4 (vocab 7 and 257: uneven over 3 and 4 ranks),
/// with and without sequence parallelism, against the unsharded computation with one table whose
/// gradient is the sum of both uses; on every device. Then the inputs it refuses.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "common/blocks_reference.hpp"
#include "common/devices.hpp"
#include "common/harness.hpp"
#include "tp/layers/parallel_lm_head.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

using test::download;
using test::on_ranks;
using test::upload;
using ::testing::HasSubstr;

template <class T>
class TiedLmHead : public ::testing::Test {};
TYPED_TEST_SUITE(TiedLmHead, test::BlockFloats);

TYPED_TEST(TiedLmHead, EmbeddingHeadAndLossMatchOneUnshardedTable) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  const std::int64_t hidden = 8, batch = 2, seq = 3, tokens = batch * seq;
  for (const std::int64_t vocab : {7, 257}) {
    // The unsharded computation: h = E[ids], logits = h E^T, per-token loss; then
    // dE = dlogits^T h (the head's use) + the scatter of dh = dlogits E (the embedding's use).
    auto ids = ref::random_ids(tokens, vocab, ref::test_seed(1));
    ids[0] = vocab - 1;
    ids[tokens - 1] = ids[1];  // a repeated id
    auto targets = ref::random_ids(tokens, vocab, ref::test_seed(2));
    targets[2] = -100;  // an ignored token
    const auto table = ref::random_scaled<T>(vocab, hidden, ref::test_seed(3), 0.5);
    const auto dloss = test::random_matrix<T>(tokens, 1, ref::test_seed(4));
    const auto h = ref::embedding(ids, table);
    const auto logits = ref::matmul(h, false, table, true);
    const auto ce = ref::cross_entropy(logits, targets, -100, 0.0, dloss);
    const auto dh = ref::matmul(ce.dlogits, false, table, false);
    const auto dtable = ref::add(ref::matmul(ce.dlogits, true, h, false), ref::embedding_grad(ids, dh, vocab));
    const test::HostMatrix<T> table_h(table);
    for (const bool sp : {false, true}) {
      const std::string trace = fmt::format("vocab {} sequence_parallel {}", vocab, sp);
      SCOPED_TRACE(trace);
      on_ranks([&](std::shared_ptr<Communicator> comm) {
        SCOPED_TRACE(trace);
        auto dev = std::make_shared<Dev>();
        const Context<Dev> ctx(comm, dev);
        const Range rows = sp ? partition(tokens, comm->size(), comm->rank()) : Range{0, tokens};
        VocabParallelEmbedding<T, Dev> wte(ctx, vocab, hidden, {.sequence_parallel = sp, .name = "wte"});
        ParallelLMHead<T, Dev> head(wte, {.sequence_parallel = sp});
        VocabParallelCrossEntropy<T, Dev> loss(ctx, vocab);
        wte.load_full(table_h.view());
        EXPECT_TRUE(head.parameters().empty());
        const Range v = head.vocab_range();
        EXPECT_EQ(v, loss.vocab_range());
        const auto ids_d = test::upload_ids(dev, ids, batch, seq);
        const auto targets_d = test::upload_ids(dev, targets, batch, seq);

        const auto& x = wte.forward(ids_d.view());
        const auto& shard = head.forward(x.view(), tokens);
        TP_EXPECT_CLOSE(T, download(*dev, shard), logits.cols_range(v.begin, v.size()));
        TP_EXPECT_CLOSE(T, download(*dev, loss.forward(shard.view(), targets_d.view())), ce.loss);
        const auto dloss_d = upload<T>(dev, dloss);
        const auto& d_x = head.backward(loss.backward(dloss_d.view()).view());
        TP_EXPECT_CLOSE(T, download(*dev, d_x), dh.rows_range(rows.begin, rows.size()));
        wte.backward(d_x.view());
        test::expect_grads<T>(*dev, wte.parameters(), {{"wte.weight", &dtable}});
      });
    }
  }
}

#ifndef TP_TEST_CUDA  // device-independent checks: once, in the host binaries

TEST(TiedLmHeadErrors, ShapesAndReplicatedTablesAreRefused) {
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
    VocabParallelEmbedding<float> wte(ctx, 11, 4, {.name = "wte"});
    ParallelLMHead<float> head(wte, {.name = "head"});
    EXPECT_THAT(error_of([&] { head.forward(Tensor<float, Cpu>(3, 5).view()); }),
                HasSubstr("head: input is 3x5, expected [tokens > 0, 4]"));
    EXPECT_THAT(error_of([&] { head.backward(Tensor<float, Cpu>(3, 4).view()); }),
                HasSubstr("head: backward called before forward"));
    head.forward(Tensor<float, Cpu>(3, 4).view());
    const Range v = wte.vocab_range();
    EXPECT_THAT(error_of([&] { head.backward(Tensor<float, Cpu>(3, v.size() + 1).view()); }),
                HasSubstr(fmt::format("head: logits gradient is 3x{}, expected 3x{} (vocab rows [{}, {}) on rank {} of {})",
                                      v.size() + 1, v.size(), v.begin, v.end, comm->rank(), comm->size())));
    ParallelLMHead<float> sp(wte, {.name = "head_sp", .sequence_parallel = true});
    EXPECT_THAT(error_of([&] { sp.forward(Tensor<float, Cpu>(3, 4).view()); }),
                HasSubstr("head_sp: under sequence_parallel, forward needs the full token count"));
    if (comm->size() > 2) {
      VocabParallelEmbedding<float> types(ctx, 2, 4, {.name = "token_type"});
      EXPECT_THAT(error_of([&] { ParallelLMHead<float>{types}; }),
                  HasSubstr(fmt::format("lm_head: the tied table 'token_type' has 2 rows over {} ranks and is replicated",
                                        comm->size())));
    }
  });
}

#endif  // TP_TEST_CUDA

}  // namespace
}  // namespace tp
