/// ParallelAttention over tp::AttentionBatch against the unsharded reference, at every world size:
/// packed sequences of different lengths (one empty), a key padding mask (including queries that
/// see no key), rotary embeddings at given positions, no output bias; a packed batch equals each
/// sequence run alone; and the KV cache: a prefill then token-by-token decoding gives what one
/// causal forward over the whole sequences gives (grouped-query, kv heads replicated when the
/// world exceeds them), with its errors.

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
class AttentionVarlen : public ::testing::Test {};
TYPED_TEST_SUITE(AttentionVarlen, test::BlockFloats);

/// Full weights of an attention layer, rounded through T.
template <class T>
struct Weights {
  ref::Matrix w_qkv, b_qkv, w_o, b_o;
  Weights(std::int64_t hidden, std::int64_t heads, std::int64_t kv_heads, std::int64_t d)
      : w_qkv(test::rounded<T>(ref::random_scaled<double>((heads + 2 * kv_heads) * d, hidden, ref::test_seed(2),
                                                          1 / std::sqrt(double(hidden))))),
        b_qkv(test::random_matrix<T>(1, (heads + 2 * kv_heads) * d, ref::test_seed(3))),
        w_o(test::rounded<T>(
            ref::random_scaled<double>(hidden, heads * d, ref::test_seed(4), 1 / std::sqrt(double(heads * d))))),
        b_o(test::random_matrix<T>(1, hidden, ref::test_seed(5))) {}
};

template <class T, class Dev>
void load(ParallelAttention<T, Dev>& attn, const test::HostMatrix<T>& w_qkv, const test::HostMatrix<T>& b_qkv,
          const test::HostMatrix<T>& w_o, const test::HostMatrix<T>& b_o) {
  attn.load_full(w_qkv.view(), b_qkv.view(), w_o.view(), b_o.view());
}

TYPED_TEST(AttentionVarlen, MatchesReference) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  struct Case {
    std::int64_t heads, kv_heads;
    bool causal, mask, rope, dense_bias;
  };
  const std::int64_t hidden = 10, d = 4;
  const std::vector<std::int64_t> lengths{5, 1, 3, 0, 2};  // 11 tokens: uneven over 2, 3, 4
  const std::int64_t tokens = 11;
  // Masked: sequence 0's first key (its causal query 0 sees nothing), sequence 1's only key
  // (its query sees nothing either way), one key in the middle of sequence 2.
  const std::vector<std::uint8_t> mask{0, 1, 1, 1, 1, 0, 1, 0, 1, 1, 1};
  const std::vector<std::int64_t> positions{7, 3, 0, 41, 5, 2, 300, 12, 13, 1, 4000};
  for (const Case c : {Case{8, 2, true, false, false, true}, Case{8, 2, false, true, false, true},
                       Case{8, 2, true, true, true, false}, Case{12, 1, true, true, true, true},
                       Case{12, 12, false, false, true, true}}) {
    const std::string trace = fmt::format("heads {} kv_heads {} causal {} mask {} rope {} dense_bias {}", c.heads,
                                          c.kv_heads, c.causal, c.mask, c.rope, c.dense_bias);
    SCOPED_TRACE(trace);
    const Weights<T> w(hidden, c.heads, c.kv_heads, d);
    const auto x = test::random_matrix<T>(tokens, hidden, ref::test_seed(1));
    const auto dy = test::random_matrix<T>(tokens, hidden, ref::test_seed(6));
    ref::AttentionInputs in{lengths, c.mask ? mask : std::vector<std::uint8_t>{},
                            c.rope ? positions : std::vector<std::int64_t>{}, c.rope ? 10000.0 : 0.0, c.dense_bias};
    const auto want = ref::attention(x, w.w_qkv, w.b_qkv, w.w_o, w.b_o, dy, c.heads, c.kv_heads, d, c.causal, true, in);
    const test::HostMatrix<T> w_qkv_h(w.w_qkv), b_qkv_h(w.b_qkv), w_o_h(w.w_o), b_o_h(w.b_o);
    on_ranks([&](std::shared_ptr<Communicator> comm) {
      SCOPED_TRACE(trace);
      const int world = comm->size(), rank = comm->rank();
      if (!test::heads_split(c.heads, c.kv_heads, world)) return;
      auto dev = std::make_shared<Dev>();
      const auto pos_d = test::upload_ids(dev, positions, 1, tokens);
      const Range mine = partition(tokens, world, rank);
      for (const bool sp : {false, true}) {
        SCOPED_TRACE(fmt::format("sequence_parallel {}", sp));
        ParallelAttention<T, Dev> attn(Context<Dev>(comm, dev), hidden, c.heads, c.kv_heads,
                                       {.causal = c.causal, .bias = true, .dense_bias = c.dense_bias,
                                        .rope_theta = c.rope ? 10000.0 : 0.0, .head_dim = d, .sequence_parallel = sp});
        load(attn, w_qkv_h, b_qkv_h, w_o_h, b_o_h);
        AttentionBatch batch{lengths, c.rope ? ConstView<std::int64_t>(pos_d.view()) : ConstView<std::int64_t>{},
                             c.mask ? mask : std::vector<std::uint8_t>{}};
        const auto x_d = upload<T>(dev, sp ? x.rows_range(mine.begin, mine.size()) : x);
        TP_EXPECT_CLOSE(T, download(*dev, attn.forward(x_d.view(), batch)),
                        sp ? want.y.rows_range(mine.begin, mine.size()) : want.y);
        const auto dy_d = upload<T>(dev, sp ? dy.rows_range(mine.begin, mine.size()) : dy);
        TP_EXPECT_CLOSE(T, download(*dev, attn.backward(dy_d.view())),
                        sp ? want.dx.rows_range(mine.begin, mine.size()) : want.dx);
        std::map<std::string, const ref::Matrix*> grads{{"attention.qkv.weight", &want.dw_qkv},
                                                        {"attention.qkv.bias", &want.db_qkv},
                                                        {"attention.dense.weight", &want.dw_o}};
        if (c.dense_bias) grads["attention.dense.bias"] = &want.db_o;
        EXPECT_EQ(attn.parameters().size(), c.dense_bias ? 8u : 7u);
        test::expect_grads<T>(*dev, attn.parameters(), grads);
      }
    });
  }
}

/// The packed batch's output rows are those of each sequence run alone (default positions).
TYPED_TEST(AttentionVarlen, PackedEqualsEachSequenceAlone) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  const std::int64_t hidden = 8, heads = 4, kv_heads = 2, d = 4, tokens = 9;
  const std::vector<std::int64_t> lengths{4, 2, 3};
  const Weights<T> w(hidden, heads, kv_heads, d);
  const auto x = test::random_matrix<T>(tokens, hidden, ref::test_seed(1));
  const test::HostMatrix<T> w_qkv_h(w.w_qkv), b_qkv_h(w.b_qkv), w_o_h(w.w_o), b_o_h(w.b_o);
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    if (!test::heads_split(heads, kv_heads, comm->size())) return;
    auto dev = std::make_shared<Dev>();
    ParallelAttention<T, Dev> attn(Context<Dev>(comm, dev), hidden, heads, kv_heads,
                                   {.rope_theta = 10000, .head_dim = d});
    load(attn, w_qkv_h, b_qkv_h, w_o_h, b_o_h);
    const NoGrad no_grad;
    const ref::Matrix packed = download(*dev, attn.forward(upload<T>(dev, x).view(), AttentionBatch{lengths}));
    std::int64_t row = 0;
    for (const std::int64_t n : lengths) {
      const ref::Matrix alone =
          download(*dev, attn.forward(upload<T>(dev, x.rows_range(row, n)).view(), AttentionBatch{{n}}));
      TP_EXPECT_CLOSE(T, alone, packed.rows_range(row, n));
      row += n;
    }
  });
}

/// Prefill, then one token per step (a sequence that has finished passes 0 new tokens), against one
/// causal forward over the whole sequences; grouped-query with 1, 2 and 4 kv heads (replicated at
/// worlds above them), RoPE, a masked prompt token, with and without sequence parallelism.
TYPED_TEST(AttentionVarlen, CacheDecodeMatchesFullForward) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  const std::int64_t hidden = 8, heads = 4, d = 4;
  const std::vector<std::int64_t> lengths{7, 5}, prompts{3, 2};
  const std::int64_t tokens = 12;
  const std::vector<std::uint8_t> mask{1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1};  // sequence 1's second prompt token
  for (const auto& [kv_heads, masked] : {std::pair<std::int64_t, bool>{1, true}, {2, true}, {4, true}, {2, false}}) {
    const std::string trace = fmt::format("kv_heads {} masked {}", kv_heads, masked);
    SCOPED_TRACE(trace);
    const Weights<T> w(hidden, heads, kv_heads, d);
    const auto x = test::random_matrix<T>(tokens, hidden, ref::test_seed(1));
    const std::vector<std::uint8_t> key_mask = masked ? mask : std::vector<std::uint8_t>(tokens, 1);
    const auto want = ref::attention(x, w.w_qkv, w.b_qkv, w.w_o, w.b_o, x, heads, kv_heads, d, true, true,
                                     {lengths, key_mask, {}, 10000.0, true});
    const test::HostMatrix<T> w_qkv_h(w.w_qkv), b_qkv_h(w.b_qkv), w_o_h(w.w_o), b_o_h(w.b_o);
    on_ranks([&](std::shared_ptr<Communicator> comm) {
      SCOPED_TRACE(trace);
      if (!test::heads_split(heads, kv_heads, comm->size())) return;
      auto dev = std::make_shared<Dev>();
      for (const bool sp : {false, true}) {
        SCOPED_TRACE(fmt::format("sequence_parallel {}", sp));
        ParallelAttention<T, Dev> attn(Context<Dev>(comm, dev), hidden, heads, kv_heads,
                                       {.rope_theta = 10000, .head_dim = d, .sequence_parallel = sp});
        load(attn, w_qkv_h, b_qkv_h, w_o_h, b_o_h);
        auto cache = attn.make_cache(2, 8);
        const std::int64_t starts[2] = {0, lengths[0]};
        // Steps: the prompts, then one token of each unfinished sequence.
        std::vector<std::int64_t> done{0, 0};
        const NoGrad no_grad;
        for (int step = 0; done[0] < lengths[0] || done[1] < lengths[1]; ++step) {
          SCOPED_TRACE(fmt::format("step {}", step));
          AttentionBatch batch;
          std::vector<std::int64_t> rows;
          for (int b = 0; b < 2; ++b) {
            const std::int64_t n = step == 0 ? prompts[b] : std::min<std::int64_t>(1, lengths[b] - done[b]);
            batch.lengths.push_back(n);
            for (std::int64_t i = 0; i < n; ++i) {
              rows.push_back(starts[b] + done[b] + i);
              if (masked) batch.key_mask.push_back(mask[starts[b] + done[b] + i]);
            }
          }
          const auto count = static_cast<std::int64_t>(rows.size());
          ref::Matrix x_step(count, hidden), want_step(count, hidden);
          for (std::int64_t r = 0; r < count; ++r)
            for (std::int64_t c = 0; c < hidden; ++c) {
              x_step(r, c) = x(rows[r], c);
              want_step(r, c) = want.y(rows[r], c);
            }
          // Under sequence parallelism each rank passes, and gets back, its rows of the step.
          const Range mine = sp ? partition(count, comm->size(), comm->rank()) : Range{0, count};
          const auto& y = attn.forward(upload<T>(dev, x_step.rows_range(mine.begin, mine.size())).view(), batch, cache);
          TP_EXPECT_CLOSE(T, download(*dev, y), want_step.rows_range(mine.begin, mine.size()));
          for (int b = 0; b < 2; ++b) done[b] += batch.lengths[b];
          EXPECT_EQ(cache.length(0), done[0]);
          EXPECT_EQ(cache.length(1), done[1]);
        }
      }
    });
  }
}

#ifndef TP_TEST_CUDA  // device-independent checks: once, in the host binaries

TEST(AttentionVarlenErrors, BadBatchesAndCacheMisuse) {
  on_ranks([](std::shared_ptr<Communicator> comm) {
    Context<> ctx(comm);
    const int world = comm->size();
    ParallelAttention<float> attn(ctx, 8, 4 * world, world, {.rope_theta = 10000, .head_dim = 2, .name = "attn"});
    Tensor<float, Cpu> x(6, 8);
    ctx.device->fill(x.view(), 0.5f);
    auto error_of = [](auto&& f) -> std::string {
      try {
        f();
      } catch (const InvalidArgument& e) {
        return e.what();
      }
      return "(no InvalidArgument thrown)";
    };
    EXPECT_THAT(error_of([&] { attn.forward(x, AttentionBatch{{2, 3}}); }),
                HasSubstr("attn: input has 6 tokens, but the batch's 2 sequence lengths add up to 5"));
    EXPECT_THAT(error_of([&] { attn.forward(x, AttentionBatch{{6}, {}, {1, 1}}); }),
                HasSubstr("attn: key mask has 2 entries for 6 tokens"));
    auto cache = attn.make_cache(2, 4);
    EXPECT_THAT(error_of([&] { attn.forward(x, AttentionBatch{{6}}, cache); }),
                HasSubstr("attn: the cache holds 2 sequences, the batch has 1"));
    ParallelAttention<float> other(ctx, 8, 4 * world, world, {.head_dim = 2, .name = "other"});
    EXPECT_THAT(error_of([&] { other.forward(x, AttentionBatch{{3, 3}}, cache); }),
                HasSubstr("other: this KV cache was made by another attention layer"));
    attn.forward(x, AttentionBatch{{3, 3}}, cache);
    EXPECT_THAT(error_of([&] { attn.backward(x); }),
                HasSubstr("attn: backward after a forward with a KV cache"));
    EXPECT_THAT(error_of([&] { attn.forward(x.view().rows_range(0, 2), AttentionBatch{{0, 2}}, cache); }),
                HasSubstr("attn: sequence 1 holds 3 cached tokens; 2 more pass the cache's max_len 4"));
    EXPECT_EQ(cache.length(0), 3);
    EXPECT_EQ(cache.length(1), 3);
    cache.reset();
    EXPECT_EQ(cache.length(1), 0);
    // After a cached forward, an ordinary forward and backward pair up again.
    attn.forward(x, AttentionBatch{{6}});
    EXPECT_NO_THROW(attn.backward(x));
  });
}

#endif  // TP_TEST_CUDA

}  // namespace
}  // namespace tp
