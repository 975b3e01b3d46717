/// VocabParallelCrossEntropy against the unsharded loss: odd vocabularies over every world size,
/// label smoothing, ignore_index, logits around 1e4, and the embedding -> LM head -> loss chain, on
/// every device (common/devices.hpp).

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
class CrossEntropy : public ::testing::Test {};
TYPED_TEST_SUITE(CrossEntropy, test::BlockFloatsBf16);

TYPED_TEST(CrossEntropy, MatchesReference) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  struct Case {
    std::int64_t tokens, vocab;
    double offset;  // added to every logit: 1e4 checks the max-shifted arithmetic
  };
  for (const Case s : {Case{6, 7, 0.0}, Case{5, 13, 0.0}, Case{4, 50257, 0.0}, Case{6, 11, 1e4}, Case{5, 4, -1e4}})
    for (const double smoothing : {0.0, 0.1})
      for (const bool ignore : {false, true}) {
        const std::string trace = fmt::format("tokens {} vocab {} offset {} smoothing {} ignore {}", s.tokens, s.vocab,
                                              s.offset, smoothing, ignore);
        SCOPED_TRACE(trace);
        const std::int64_t ignore_index = -100;
        auto targets = ref::random_ids(s.tokens, s.vocab, ref::test_seed(1));
        targets[0] = s.vocab - 1;
        targets[1] = 0;
        if (ignore) targets[2] = ignore_index;
        auto logits = test::random_matrix<T>(s.tokens, s.vocab, ref::test_seed(2));
        for (auto& v : logits.data) v = test::to_double(static_cast<T>(3.0 * v + s.offset));
        const auto dloss = test::random_matrix<T>(s.tokens, 1, ref::test_seed(3));
        const auto want = ref::cross_entropy(logits, targets, ignore_index, smoothing, dloss);
        on_ranks([&](std::shared_ptr<Communicator> comm) {
          SCOPED_TRACE(trace);  // traces are per thread
          auto dev = std::make_shared<Dev>();
          VocabParallelCrossEntropy<T, Dev> ce(Context<Dev>(comm, dev), s.vocab,
                                               {.ignore_index = ignore_index, .label_smoothing = smoothing});
          const Range v = ce.vocab_range();
          EXPECT_EQ(v, partition(s.vocab, comm->size(), comm->rank()));
          const auto logits_d = upload<T>(dev, logits.cols_range(v.begin, v.size()));
          const auto targets_d = test::upload_ids(dev, targets, 1, s.tokens);
          const auto loss = download(*dev, ce.forward(logits_d.view(), targets_d.view()));
          TP_EXPECT_CLOSE(T, loss, want.loss);
          if (ignore) EXPECT_EQ(loss(2, 0), 0.0);
          const auto dloss_d = upload<T>(dev, dloss);
          TP_EXPECT_CLOSE(T, download(*dev, ce.backward(dloss_d.view())), want.dlogits.cols_range(v.begin, v.size()));
        });
      }
}

/// Tokens -> embedding -> tied LM head (a column-parallel [vocab, hidden] layer) -> loss, the
/// logits never gathered; gradients back to the table.
TYPED_TEST(CrossEntropy, EmbeddingLmHeadChain) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  const std::int64_t vocab = 13, hidden = 6, tokens = 7;
  const auto ids = ref::random_ids(tokens, vocab, ref::test_seed(1));
  auto targets = ref::random_ids(tokens, vocab, ref::test_seed(2));
  targets[3] = -100;
  const auto table = test::random_matrix<T>(vocab, hidden, ref::test_seed(3));
  const auto head = test::random_matrix<T>(vocab, hidden, ref::test_seed(4));
  const auto dloss = test::random_matrix<T>(tokens, 1, ref::test_seed(5));
  const auto h = ref::embedding(ids, table);
  const auto logits = ref::matmul(h, false, head, true);
  const auto ce_want = ref::cross_entropy(logits, targets, -100, 0.0, dloss);
  const auto lm = ref::linear(h, head, nullptr, ce_want.dlogits);
  const auto dtable = ref::embedding_grad(ids, lm.dx, vocab);
  const test::HostMatrix<T> table_h(table), head_h(head);
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    auto dev = std::make_shared<Dev>();
    Context<Dev> ctx(comm, dev);
    VocabParallelEmbedding<T, Dev> emb(ctx, vocab, hidden);
    ColumnParallelLinear<T, Dev> lm_head(ctx, hidden, vocab, {.bias = false, .name = "lm_head"});
    VocabParallelCrossEntropy<T, Dev> ce(ctx, vocab);
    emb.load_full(table_h.view());
    lm_head.load_full(head_h.view());
    ASSERT_EQ(lm_head.output_range(), ce.vocab_range());  // the same vocabulary split everywhere
    const auto ids_d = test::upload_ids(dev, ids, 1, tokens), targets_d = test::upload_ids(dev, targets, 1, tokens);
    const auto& loss = ce.forward(lm_head.forward(emb.forward(ids_d.view())), targets_d.view());
    TP_EXPECT_CLOSE(T, download(*dev, loss), ce_want.loss);
    const auto dloss_d = upload<T>(dev, dloss);
    emb.backward(lm_head.backward(ce.backward(dloss_d.view())));
    test::expect_grads<T>(*dev, lm_head.parameters(), {{"lm_head.weight", &lm.dw}});
    test::expect_grads<T>(*dev, emb.parameters(), {{"embedding.weight", &dtable}});
  });
}

#ifndef TP_TEST_CUDA  // device-independent checks: once, in the host binaries

TEST(CrossEntropyErrors, TargetsOutOfRangeAndBadOptions) {
  on_ranks([](std::shared_ptr<Communicator> comm) {
    Context<> ctx(comm);
    VocabParallelCrossEntropy<float> ce(ctx, 9, {.name = "loss"});
    const Range v = ce.vocab_range();
    Tensor<float, Cpu> logits(4, v.size());
    ctx.device->fill(logits.view(), 0.5f);
    for (const std::int64_t bad : {std::int64_t{9}, std::int64_t{-1}}) {
      try {
        ce.forward(logits, test::to_ids({1, -100, bad, 2}, 1, 4));
        ADD_FAILURE() << "target " << bad << " accepted";
      } catch (const InvalidArgument& e) {
        EXPECT_THAT(e.what(), HasSubstr(fmt::format("loss: target {} at position 2 is outside the vocabulary [0, 9) "
                                                    "and is not ignore_index -100",
                                                    bad)));
      }
    }
    EXPECT_NO_THROW(ce.forward(logits, test::to_ids({1, -100, 8, 0}, 1, 4)));
    Tensor<float, Cpu> wide(4, v.size() + 1);
    EXPECT_THROW(ce.forward(wide, test::to_ids({1, 2, 3, 4}, 1, 4)), InvalidArgument);
    EXPECT_THROW(VocabParallelCrossEntropy<float>(ctx, 9, {.ignore_index = 3}), InvalidArgument);
    EXPECT_THROW(VocabParallelCrossEntropy<float>(ctx, 9, {.label_smoothing = 1.5}), InvalidArgument);
  });
}

#endif  // TP_TEST_CUDA

}  // namespace
}  // namespace tp
