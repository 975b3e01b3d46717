/// tp::sample over vocabulary-parallel logits against the unsharded rules (common/sampling_reference.hpp)
/// at every world size, vocabularies split unevenly and with empty slices included; greedy's ties;
/// top-k 1 is greedy; top-p's edges; bad options; and the sampled frequencies against the
/// distribution over many draws.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "common/devices.hpp"
#include "common/harness.hpp"
#include "common/sampling_reference.hpp"
#include "tp/comm/local_communicator.hpp"
#include "tp/inference/sampling.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

using test::on_ranks;
using test::upload;
using ::testing::HasSubstr;

template <class T>
class Sampling : public ::testing::Test {};
TYPED_TEST_SUITE(Sampling, test::AllFloats);

/// A row of the full logits as doubles.
std::vector<double> row_of(const ref::Matrix& m, std::int64_t r) {
  return std::vector<double>(m.data.begin() + r * m.cols, m.data.begin() + (r + 1) * m.cols);
}

/// Every rank's tokens for its slice of `logits` (rows = batch), with this rank's range.
template <class T, class Dev>
std::vector<std::int64_t> sample_slice(const Context<Dev>& ctx, const ref::Matrix& logits, Range v,
                                       const SamplingOptions& o, std::uint64_t step) {
  const auto shard = upload<T>(ctx.device, logits.cols_range(v.begin, v.size()));
  return sample<T>(ctx, shard.view(), v, logits.cols, o, step);
}

TYPED_TEST(Sampling, MatchesTheUnshardedRules) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  const std::vector<SamplingOptions> options{
      {.temperature = 0},                                      // greedy
      {.temperature = 1.0, .top_k = 1, .seed = 3},             // top-k 1: greedy
      {.temperature = 0.7, .seed = 1},                         // the full vocabulary
      {.temperature = 1.5, .top_k = 3, .seed = 2},             // top-k, candidates from every rank
      {.temperature = 1.0, .top_p = 0.8, .seed = 4},           // nucleus
      {.temperature = 0.9, .top_k = 5, .top_p = 0.9, .seed = 5},
      {.temperature = 2.0, .top_k = 1000, .seed = 6},          // top-k above the vocabulary: no limit
  };
  // 3 ids at world 4 leave rank 3 an empty slice; 13 and 50 split unevenly over 3 and 4 ranks.
  for (const std::int64_t vocab : {3, 7, 13, 50}) {
    const std::int64_t rows = 4;
    auto logits = test::random_matrix<T>(rows, vocab, ref::test_seed(vocab));
    for (auto& v : logits.data) v = test::to_double(static_cast<T>(2.0 * v));
    // Ties: row 1 has its maximum at two ids (the lower id wins greedy), row 2 is constant.
    std::int64_t argmax = 0;
    for (std::int64_t j = 1; j < vocab; ++j)
      if (logits(1, j) > logits(1, argmax)) argmax = j;
    logits(1, vocab - 1) = logits(1, argmax);
    for (std::int64_t j = 0; j < vocab; ++j) logits(2, j) = 0.5;
    for (const auto& o : options)
      for (const std::uint64_t step : {0u, 1u, 17u}) {
        const std::string trace = fmt::format("vocab {} temperature {} top_k {} top_p {} seed {} step {}", vocab,
                                              o.temperature, o.top_k, o.top_p, o.seed, step);
        SCOPED_TRACE(trace);
        std::vector<std::int64_t> want;
        for (std::int64_t r = 0; r < rows; ++r)
          want.push_back(ref::sample_row(row_of(logits, r), o.temperature, o.top_k, o.top_p,
                                         sampling_uniform(o.seed, step, r)));
        if (is_greedy(o)) EXPECT_EQ(want[1], std::min(argmax, vocab - 1));
        if (is_greedy(o)) EXPECT_EQ(want[2], 0);
        on_ranks([&](std::shared_ptr<Communicator> comm) {
          SCOPED_TRACE(trace);
          const Context<Dev> ctx(comm);
          const Range v = partition(vocab, comm->size(), comm->rank());
          EXPECT_EQ(sample_slice<T>(ctx, logits, v, o, step), want);
          // A replicated head (every rank holds the whole vocabulary) exchanges nothing and agrees.
          EXPECT_EQ(sample_slice<T>(ctx, logits, Range{0, vocab}, o, step), want);
        });
      }
  }
}

TYPED_TEST(Sampling, TopPEdges) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  // Probabilities 8 : 4 : 2 : 1 : 1 at temperature 1 (logits ln of them; exact in every type is not
  // needed: the cut points below are far from the cumulative sums 0.5, 0.75, 0.875, 0.9375, 1).
  ref::Matrix logits(1, 5);
  const double weights[5] = {8, 4, 2, 1, 1};
  for (std::int64_t j = 0; j < 5; ++j) logits(0, j) = test::to_double(static_cast<T>(std::log(weights[j])));
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    const Context<Dev> ctx(comm);
    const Range v = partition(5, comm->size(), comm->rank());
    std::map<std::int64_t, int> seen_tiny, seen_two, seen_all;
    for (std::uint64_t step = 0; step < 64; ++step) {
      // A tiny top_p keeps the most probable token only: always token 0.
      ++seen_tiny[sample_slice<T>(ctx, logits, v, {.temperature = 1, .top_p = 1e-9, .seed = 9}, step)[0]];
      // 0.6 passes 0.5 at the second token: tokens 0 and 1 only.
      ++seen_two[sample_slice<T>(ctx, logits, v, {.temperature = 1, .top_p = 0.6, .seed = 9}, step)[0]];
      // 1 keeps all five; at temperature 100 they are nearly uniform, so 64 draws reach each one.
      ++seen_all[sample_slice<T>(ctx, logits, v, {.temperature = 100, .top_p = 1, .seed = 9}, step)[0]];
    }
    EXPECT_EQ(seen_tiny, (std::map<std::int64_t, int>{{0, 64}}));
    EXPECT_EQ(seen_two.size(), 2u);
    EXPECT_TRUE(seen_two.contains(0) && seen_two.contains(1));
    EXPECT_EQ(seen_all.size(), 5u);
  });
}

TYPED_TEST(Sampling, BadInputThrowsNamingTheValue) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  const auto logits = test::random_matrix<T>(2, 9, ref::test_seed(1));
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    const Context<Dev> ctx(comm);
    const Range v = partition(9, comm->size(), comm->rank());
    auto bad = [&](SamplingOptions o, const std::string& text) {
      EXPECT_THAT([&] { sample_slice<T>(ctx, logits, v, o, 0); },
                  ::testing::ThrowsMessage<InvalidArgument>(HasSubstr(text)));
    };
    bad({.temperature = -0.5}, "temperature must be finite and >= 0 (0: greedy), got -0.5");
    bad({.temperature = std::nan("")}, "got nan");
    bad({.temperature = 1, .top_k = -2}, "top_k must be >= 0 (0: no limit), got -2");
    bad({.temperature = 1, .top_p = 0}, "top_p must be in (0, 1] (1: no limit), got 0");
    bad({.temperature = 1, .top_p = 1.5}, "got 1.5");
    // The logits' columns must match the range given.
    const auto shard = upload<T>(ctx.device, logits.cols_range(v.begin, v.size()));
    EXPECT_THAT([&] { sample<T>(ctx, shard.view(), Range{v.begin, v.begin}, 9, {}, 0); },
                ::testing::ThrowsMessage<InvalidArgument>(HasSubstr(fmt::format("logits of {} columns", v.size()))));
    // A NaN logit wins every rank's candidates (the lowest id of several) and is refused on every
    // rank, naming the row and the token, however the token is chosen.
    ref::Matrix with_nan = logits;
    with_nan.data[1 * 9 + 7] = std::nan("");
    with_nan.data[1 * 9 + 4] = std::nan("");
    for (const SamplingOptions& o : {SamplingOptions{}, SamplingOptions{.temperature = 1, .top_k = 1},
                                     SamplingOptions{.temperature = 1, .top_k = 3}, SamplingOptions{.temperature = 1}})
      EXPECT_THAT([&] { sample_slice<T>(ctx, with_nan, v, o, 0); },
                  ::testing::ThrowsMessage<InvalidArgument>(HasSubstr("row 1 has a NaN logit (token 4)")));
    if (comm->size() > 1) {
      // Ranges that leave a gap are refused on every rank alike, naming them.
      const Range gap = comm->rank() == 0 ? Range{0, v.end - 1} : v;
      const auto s = upload<T>(ctx.device, logits.cols_range(gap.begin, gap.size()));
      EXPECT_THAT([&] { sample<T>(ctx, s.view(), gap, 9, {}, 0); },
                  ::testing::ThrowsMessage<InvalidArgument>(HasSubstr("neither tile [0, 9)")));
    }
  });
}

#ifndef TP_TEST_CUDA
TEST(SamplingStatistics, FrequenciesFollowTheDistribution) {
  if (test::harness_backend() != "local") GTEST_SKIP() << "one in-process world suffices; runs in tp_tests";
  const std::vector<double> logits{1.0, 2.5, 0.3, 2.5, -1.0, 1.7, 0.0};
  struct Case {
    double temperature;
    std::int64_t top_k;
    double top_p;
  };
  const int draws = 10000;
  for (const Case c : {Case{1.0, 0, 1.0}, Case{0.6, 0, 1.0}, Case{1.3, 3, 1.0}, Case{1.0, 0, 0.7}, Case{2.0, 4, 0.8}}) {
    SCOPED_TRACE(fmt::format("temperature {} top_k {} top_p {}", c.temperature, c.top_k, c.top_p));
    const auto want = ref::sampling_distribution(logits, c.temperature, c.top_k, c.top_p);
    // Two ranks split the 7 ids 4 + 3; the draws use different seeds at step 0, so the
    // frequencies test the seeding as well as the steps.
    std::vector<int> counts(logits.size(), 0);
    run_local(2, [&](std::shared_ptr<Communicator> comm) {
      const Context<Cpu> ctx(comm);
      const Range v = partition(7, 2, comm->rank());
      const std::vector<double> shard(logits.begin() + v.begin, logits.begin() + v.end);
      for (int d = 0; d < draws; ++d) {
        const SamplingOptions o{.temperature = c.temperature, .top_k = c.top_k, .top_p = c.top_p,
                                .seed = static_cast<std::uint64_t>(d)};
        const auto token = sample<double>(ctx, ConstView<double>(shard.data(), 1, v.size()), v, 7, o, 0)[0];
        if (comm->rank() == 0) ++counts[static_cast<std::size_t>(token)];
      }
    });
    for (std::size_t i = 0; i < logits.size(); ++i) {
      // Binomial: 5 standard deviations (a false alarm about once in 3 million per id), and ids
      // outside the kept set never drawn.
      const double expected = want[i] * draws, sd = std::sqrt(draws * want[i] * (1 - want[i]));
      if (want[i] == 0)
        EXPECT_EQ(counts[i], 0) << "id " << i;
      else
        EXPECT_NEAR(counts[i], expected, 5 * sd + 1) << "id " << i << " of probability " << want[i];
    }
  }
}
#endif

}  // namespace
}  // namespace tp
