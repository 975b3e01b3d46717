/// NaN and Inf in, NaN out, as in PyTorch (issue 27): every op with a max or a softmax must not
/// turn a non-finite input into a finite (let alone zero) output. Attention with a NaN or +inf
/// query gives NaN for that query (its softmax row is NaN), and a NaN key visible to every query
/// gives NaN everywhere, at every world size of the harness; cross-entropy over a row of logits
/// holding NaN or +inf is NaN for that row only; LayerNorm of a row holding NaN or Inf is NaN on
/// that row only, RMSNorm likewise for NaN (for Inf, torch's x * rsqrt(mean(x^2)) is NaN at the
/// Inf and 0 elsewhere). (Sampling refuses NaN logits with an error: sampling_test.cpp.)

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "common/blocks_reference.hpp"
#include "common/harness.hpp"
#include "common/reference.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

using test::on_ranks;

constexpr float kNan = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

/// Whether every element of row r of a host matrix is NaN (`nan`), or every one finite (!`nan`).
bool row_is(const Tensor<float, Cpu>& m, std::int64_t r, bool nan) {
  for (std::int64_t c = 0; c < m.cols(); ++c)
    if (std::isnan(m.view()(r, c)) != nan || (!nan && !std::isfinite(m.view()(r, c)))) return false;
  return true;
}

TEST(NonFinite, AttentionQueryWithNanOrInfGivesNanForThatQuery) {
  // One sequence of 6 tokens, 2 heads of 4 (no grouping), causal and not.
  const std::int64_t tokens = 6, heads = 2, d = 4;
  for (const float bad : {kNan, kInf, -kInf})
    for (const bool causal : {true, false}) {
      SCOPED_TRACE(fmt::format("q = {} causal {}", bad, causal));
      auto q = ref::to_tensor<float>(ref::random_matrix<float>(tokens, heads * d, ref::test_seed(1)));
      auto k = ref::to_tensor<float>(ref::random_matrix<float>(tokens, heads * d, ref::test_seed(2)));
      // Keys of both signs in the column the bad value multiplies: +inf and -inf scores (PyTorch:
      // NaN); a row of -inf scores alone would be a query that sees nothing.
      k.view()(0, 1) = 0.5f;
      k.view()(1, 1) = -0.5f;
      const auto v = ref::to_tensor<float>(ref::random_matrix<float>(tokens, heads * d, ref::test_seed(3)));
      q.view()(3, 1) = bad;  // query 3, head 0
      Tensor<float, Cpu> out(tokens, heads * d);
      Tensor<ops::AttentionStat<float>, Cpu> lse(heads, tokens);
      ops::attention_forward<float>(Cpu(), q.view(), k.view(), v.view(), tokens, d, causal, lse.view(), out.view());
      for (std::int64_t t = 0; t < tokens; ++t)
        for (std::int64_t c = 0; c < heads * d; ++c) {
          const bool want_nan = t == 3 && c < d;
          EXPECT_EQ(std::isnan(out.view()(t, c)), want_nan) << "token " << t << " column " << c;
        }
    }
}

TEST(NonFinite, AttentionLayerWithANanTokenIsNanWhereverItIsSeen) {
  // Token 0's input NaN: its key and value reach every query of the causal sequence, so every
  // output is NaN, at every world size (each rank holds its heads; the output projection sums).
  const std::int64_t tokens = 5, hidden = 24, heads = 12;  // 12 heads split over 1 to 4 ranks
  for (const float bad : {kNan, kInf}) {
    SCOPED_TRACE(fmt::format("x = {}", bad));
    on_ranks([&](std::shared_ptr<Communicator> comm) {
      ParallelAttention<float> attn(Context<>(comm), hidden, heads, heads, {.seed = 7});
      auto x = ref::to_tensor<float>(ref::random_matrix<float>(tokens, hidden, ref::test_seed(4)));
      for (std::int64_t c = 0; c < hidden; ++c) x.view()(0, c) = bad;
      const auto& y = attn.forward(x.view(), tokens);
      for (std::int64_t t = 0; t < tokens; ++t) EXPECT_TRUE(row_is(y, t, true)) << "token " << t;
      // The bad token last: its own output is NaN. (Earlier queries do not attend to it, but its
      // NaN value still meets their exact-zero probabilities in the tile's P V product, 0 x NaN,
      // as in PyTorch's math and flash kernels; so they are not asserted either way.)
      auto last = ref::to_tensor<float>(ref::random_matrix<float>(tokens, hidden, ref::test_seed(4)));
      for (std::int64_t c = 0; c < hidden; ++c) last.view()(tokens - 1, c) = bad;
      EXPECT_TRUE(row_is(attn.forward(last.view(), tokens), tokens - 1, true));
    });
  }
}

TEST(NonFinite, CrossEntropyOfANonFiniteRowIsNan) {
  const std::int64_t tokens = 4, vocab = 11;
  for (const float bad : {kNan, kInf}) {
    SCOPED_TRACE(fmt::format("logit = {}", bad));
    auto logits = ref::random_matrix<float>(tokens, vocab, ref::test_seed(5));
    logits(2, 7) = bad;  // a non-target logit of token 2
    const auto targets = std::vector<std::int64_t>{1, 3, 5, 9};
    on_ranks([&](std::shared_ptr<Communicator> comm) {
      Context<> ctx(comm);
      VocabParallelCrossEntropy<float> ce(ctx, vocab);
      const Range r = ce.vocab_range();
      const auto shard = ref::to_tensor<float>(logits.cols_range(r.begin, r.size()));
      const auto ids = test::to_ids(targets, 1, tokens);
      const auto& loss = ce.forward(shard.view(), ids.view());
      for (std::int64_t t = 0; t < tokens; ++t)
        EXPECT_EQ(std::isnan(loss.view()(t, 0)), t == 2) << "token " << t << " loss " << loss.view()(t, 0);
    });
  }
}

TEST(NonFinite, NormsOfANonFiniteRowAreNan) {
  const std::int64_t rows = 3, hidden = 6;
  for (const float bad : {kNan, kInf, -kInf}) {
    SCOPED_TRACE(fmt::format("x = {}", bad));
    on_ranks([&](std::shared_ptr<Communicator> comm) {
      auto x = ref::to_tensor<float>(ref::random_matrix<float>(rows, hidden, ref::test_seed(6)));
      x.view()(1, 2) = bad;
      LayerNorm<float> ln(Context<>(comm), hidden);
      RMSNorm<float> rms(Context<>(comm), hidden);
      const auto& y = ln.forward(x.view());
      EXPECT_TRUE(row_is(y, 0, false));
      EXPECT_TRUE(row_is(y, 1, true));  // the mean is non-finite: every element
      EXPECT_TRUE(row_is(y, 2, false));
      const auto& z = rms.forward(x.view());
      EXPECT_TRUE(row_is(z, 0, false));
      EXPECT_TRUE(row_is(z, 2, false));
      // NaN: the whole row; +-inf: that element NaN (inf / inf) and the others x / inf = 0, as torch.
      for (std::int64_t c = 0; c < hidden; ++c)
        EXPECT_EQ(std::isnan(z.view()(1, c)), std::isnan(bad) || c == 2) << "column " << c;
    });
  }
}

}  // namespace
}  // namespace tp
