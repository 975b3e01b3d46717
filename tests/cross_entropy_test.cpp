/// VocabParallelCrossEntropy against the unsharded loss: odd vocabularies over every world size,
/// label smoothing, ignore_index, logits around 1e4, and the embedding -> LM head -> loss chain.

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
class CrossEntropy : public ::testing::Test {};
using Floats = ::testing::Types<float, double>;
TYPED_TEST_SUITE(CrossEntropy, Floats);

TYPED_TEST(CrossEntropy, MatchesReference) {
  using T = TypeParam;
  struct Case {
    std::int64_t tokens, vocab;
    double offset;  // added to every logit: 1e4 checks the max-shifted arithmetic
  };
  for (const Case s : {Case{6, 7, 0.0}, Case{5, 13, 0.0}, Case{4, 50257, 0.0}, Case{6, 11, 1e4}, Case{5, 4, -1e4}})
    for (const double smoothing : {0.0, 0.1})
      for (const bool ignore : {false, true}) {
        const std::string trace = fmt::format("tokens {} vocab {} offset {} smoothing {} ignore {}", s.tokens, s.vocab, s.offset,
                                 smoothing, ignore);
        SCOPED_TRACE(trace);
        const std::int64_t ignore_index = -100;
        auto targets = ref::random_ids(s.tokens, s.vocab, ref::test_seed(1));
        targets[0] = s.vocab - 1;
        targets[1] = 0;
        if (ignore) targets[2] = ignore_index;
        auto logits = ref::random_matrix<T>(s.tokens, s.vocab, ref::test_seed(2));
        for (auto& v : logits.data) v = static_cast<double>(static_cast<T>(3.0 * v + s.offset));
        const auto dloss = ref::random_matrix<T>(s.tokens, 1, ref::test_seed(3));
        const auto want = ref::cross_entropy(logits, targets, ignore_index, smoothing, dloss);
        const auto targets_t = test::to_ids(targets, 1, s.tokens);
        const auto dloss_t = ref::to_tensor<T>(dloss);
        on_ranks([&](std::shared_ptr<Communicator> comm) {
          SCOPED_TRACE(trace);  // traces are per thread
          VocabParallelCrossEntropy<T> ce(Context<>(comm), s.vocab,
                                          {.ignore_index = ignore_index, .label_smoothing = smoothing});
          const Range v = ce.vocab_range();
          EXPECT_EQ(v, partition(s.vocab, comm->size(), comm->rank()));
          const auto& loss = ce.forward(ref::to_tensor<T>(logits.cols_range(v.begin, v.size())), targets_t);
          TP_EXPECT_CLOSE(T, loss, want.loss);
          if (ignore) EXPECT_EQ(loss(2, 0), T(0));
          const auto& grad = ce.backward(dloss_t);
          TP_EXPECT_CLOSE(T, grad, want.dlogits.cols_range(v.begin, v.size()));
        });
      }
}

/// Tokens -> embedding -> tied LM head (a column-parallel [vocab, hidden] layer) -> loss, the
/// logits never gathered; gradients back to the table.
TYPED_TEST(CrossEntropy, EmbeddingLmHeadChain) {
  using T = TypeParam;
  const std::int64_t vocab = 13, hidden = 6, tokens = 7;
  const auto ids = ref::random_ids(tokens, vocab, ref::test_seed(1));
  auto targets = ref::random_ids(tokens, vocab, ref::test_seed(2));
  targets[3] = -100;
  const auto table = ref::random_matrix<T>(vocab, hidden, ref::test_seed(3));
  const auto head = ref::random_matrix<T>(vocab, hidden, ref::test_seed(4));
  const auto dloss = ref::random_matrix<T>(tokens, 1, ref::test_seed(5));
  const auto h = ref::embedding(ids, table);
  const auto logits = ref::matmul(h, false, head, true);
  const auto ce_want = ref::cross_entropy(logits, targets, -100, 0.0, dloss);
  const auto lm = ref::linear(h, head, nullptr, ce_want.dlogits);
  const auto dtable = ref::embedding_grad(ids, lm.dx, vocab);
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    Context<> ctx(comm);
    VocabParallelEmbedding<T> emb(ctx, vocab, hidden);
    ColumnParallelLinear<T> lm_head(ctx, hidden, vocab, {.bias = false, .name = "lm_head"});
    VocabParallelCrossEntropy<T> ce(ctx, vocab);
    emb.load_full(ref::to_tensor<T>(table));
    lm_head.load_full(ref::to_tensor<T>(head));
    ASSERT_EQ(lm_head.output_range(), ce.vocab_range());  // the same vocabulary split everywhere
    const auto& loss = ce.forward(lm_head.forward(emb.forward(test::to_ids(ids, 1, tokens))), test::to_ids(targets, 1, tokens));
    TP_EXPECT_CLOSE(T, loss, ce_want.loss);
    emb.backward(lm_head.backward(ce.backward(ref::to_tensor<T>(dloss))));
    test::expect_grads<T>(lm_head.parameters(), {{"lm_head.weight", &lm.dw}});
    test::expect_grads<T>(emb.parameters(), {{"embedding.weight", &dtable}});
  });
}

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
                                                    "and is not ignore_index -100", bad)));
      }
    }
    EXPECT_NO_THROW(ce.forward(logits, test::to_ids({1, -100, 8, 0}, 1, 4)));
    Tensor<float, Cpu> wide(4, v.size() + 1);
    EXPECT_THROW(ce.forward(wide, test::to_ids({1, 2, 3, 4}, 1, 4)), InvalidArgument);
    EXPECT_THROW(VocabParallelCrossEntropy<float>(ctx, 9, {.ignore_index = 3}), InvalidArgument);
    EXPECT_THROW(VocabParallelCrossEntropy<float>(ctx, 9, {.label_smoothing = 1.5}), InvalidArgument);
  });
}

}  // namespace
}  // namespace tp
