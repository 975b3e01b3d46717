/// Label smoothing in VocabParallelCrossEntropy against the definition, loss = -sum_j q_j log p_j
/// and d loss / d logits = p - q, for both conventions: torch's target distribution
/// q = (1 - s) one_hot + s / vocab, and Megatron's q_target = 1 - s, q_other = s / (vocab - 1).
/// An odd vocabulary split unevenly over every world size.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

#include "common/blocks_reference.hpp"
#include "common/harness.hpp"
#include "common/reference.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

using test::on_ranks;

struct Smoothed {
  ref::Matrix loss, dlogits;
};

/// The definition, written out: softmax p, target distribution q, loss and gradient.
Smoothed by_definition(const ref::Matrix& logits, const std::vector<std::int64_t>& targets, double s, bool megatron) {
  const std::int64_t tokens = logits.rows, vocab = logits.cols;
  Smoothed out{ref::Matrix(tokens, 1), ref::Matrix(tokens, vocab)};
  for (std::int64_t t = 0; t < tokens; ++t) {
    double sum = 0;
    for (std::int64_t j = 0; j < vocab; ++j) sum += std::exp(logits(t, j));
    for (std::int64_t j = 0; j < vocab; ++j) {
      const double p = std::exp(logits(t, j)) / sum;
      const bool target = j == targets[t];
      const double q = megatron ? (target ? 1 - s : s / double(vocab - 1)) : (target ? 1 - s : 0.0) + s / double(vocab);
      out.loss(t, 0) -= q * std::log(p);
      out.dlogits(t, j) = p - q;
    }
  }
  return out;
}

TEST(LabelSmoothing, BothConventionsMatchTheDefinition) {
  const std::int64_t tokens = 5, vocab = 11;
  const auto logits = ref::random_matrix<double>(tokens, vocab, ref::test_seed(1));
  const auto targets = ref::random_ids(tokens, vocab, ref::test_seed(2));
  for (const double s : {0.0, 0.1, 0.3})
    for (const bool megatron : {false, true}) {
      SCOPED_TRACE(fmt::format("smoothing {} megatron {}", s, megatron));
      const auto want = by_definition(logits, targets, s, megatron);
      if (s > 0) {  // the two conventions differ, so the test tells them apart
        const auto other = by_definition(logits, targets, s, !megatron);
        ASSERT_GT(ref::rel_error(other.loss, want.loss), 1e-3);
      }
      on_ranks([&](std::shared_ptr<Communicator> comm) {
        Context<> ctx(comm);
        VocabParallelCrossEntropy<double> ce(
            ctx, vocab, {.label_smoothing = s, .megatron_label_smoothing = megatron, .name = "ce"});
        const Range v = ce.vocab_range();
        const auto shard = ref::to_tensor<double>(logits.cols_range(v.begin, v.size()));
        const auto ids = test::to_ids(targets, 1, tokens);
        EXPECT_LE(ref::rel_error(test::as_matrix<double>(ce.forward(shard.view(), ids.view())), want.loss), 1e-12);
        Tensor<double, Cpu> ones(tokens, 1);
        ctx.device->fill(ones.view(), 1.0);
        EXPECT_LE(ref::rel_error(test::as_matrix<double>(ce.backward(ones.view())),
                                 want.dlogits.cols_range(v.begin, v.size())),
                  1e-12);
      });
    }
}

TEST(LabelSmoothing, MegatronConventionNeedsTwoClasses) {
  run_local(1, [](std::shared_ptr<Communicator> comm) {
    EXPECT_THAT(
        [&] {
          VocabParallelCrossEntropy<double>(Context<>(comm), 1,
                                            {.label_smoothing = 0.1, .megatron_label_smoothing = true});
        },
        ::testing::ThrowsMessage<InvalidArgument>(::testing::HasSubstr("a vocabulary of 1 has none")));
  });
}

}  // namespace
}  // namespace tp
