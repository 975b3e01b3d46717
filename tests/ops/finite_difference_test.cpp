/// Every op with a backward against central differences of its forward, in double on tp::Cpu
/// (common/finite_difference.hpp): GELU (exact, tanh), SwiGLU, LayerNorm (input, weight, bias), RMSNorm (input, weight),
/// attention (q, k, v; causal or not; grouped-query; variable lengths, q shorter than k, masked
/// keys), RoPE, the embedding lookup, the cross-entropy
/// loss (smoothing, an ignored token) and the bias add. L = sum(f(x) * dy) for a fixed random dy.

#include "common/finite_difference.hpp"

#include <gtest/gtest.h>

#include "common/reference.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

using test::numeric_gradient;

ConstView<double> cview(const ref::Matrix& m) { return {m.data.data(), m.rows, m.cols}; }
MatrixView<double> mview(ref::Matrix& m) { return {m.data.data(), m.rows, m.cols}; }

double dot(const ref::Matrix& y, const ref::Matrix& dy) { return test::dot(cview(y), cview(dy)); }

#define TP_EXPECT_GRAD(analytic, numeric) EXPECT_LE(ref::rel_error(analytic, numeric), test::kFdTolerance) << #analytic

TEST(OpFiniteDifferences, Gelu) {
  const Cpu cpu;
  auto x = ref::map(ref::random_matrix<double>(3, 5, ref::test_seed(1)), [](double v) { return 2 * v; });
  const auto dy = ref::random_matrix<double>(3, 5, ref::test_seed(2));
  for (const Gelu kind : {Gelu::exact, Gelu::tanh}) {
    SCOPED_TRACE(kind == Gelu::exact ? "exact" : "tanh");
    ref::Matrix y(3, 5), dx(3, 5);
    ops::gelu_backward(cpu, cview(x), cview(dy), mview(dx), kind);
    TP_EXPECT_GRAD(dx, numeric_gradient(x, [&] {
                     ops::gelu(cpu, cview(x), mview(y), kind);
                     return dot(y, dy);
                   }));
  }
}

TEST(OpFiniteDifferences, SwiGlu) {
  const Cpu cpu;
  auto gate_up = ref::random_matrix<double>(3, 8, ref::test_seed(3));
  const auto dy = ref::random_matrix<double>(3, 4, ref::test_seed(4));
  ref::Matrix y(3, 4), d(3, 8);
  ops::swiglu_backward(cpu, cview(gate_up), cview(dy), mview(d));
  TP_EXPECT_GRAD(d, numeric_gradient(gate_up, [&] {
                   ops::swiglu(cpu, cview(gate_up), mview(y));
                   return dot(y, dy);
                 }));
}

TEST(OpFiniteDifferences, LayerNorm) {
  const Cpu cpu;
  const std::int64_t rows = 3, n = 6;
  auto x = ref::map(ref::random_matrix<double>(rows, n, ref::test_seed(5)), [](double v) { return 2 * v + 1; });
  auto gamma = ref::random_matrix<double>(1, n, ref::test_seed(6));
  auto beta = ref::random_matrix<double>(1, n, ref::test_seed(7));
  const auto dy = ref::random_matrix<double>(rows, n, ref::test_seed(8));
  ref::Matrix y(rows, n), mean(rows, 1), rstd(rows, 1), dx(rows, n), dgamma(1, n), dbeta(1, n);
  auto loss = [&] {
    ops::layer_norm(cpu, cview(x), cview(gamma), cview(beta), mview(y), mview(mean), mview(rstd), 1e-5);
    return dot(y, dy);
  };
  loss();
  ops::layer_norm_backward(cpu, cview(x), cview(gamma), cview(mean), cview(rstd), cview(dy), mview(dx), mview(dgamma),
                           mview(dbeta));
  TP_EXPECT_GRAD(dx, numeric_gradient(x, loss));
  TP_EXPECT_GRAD(dgamma, numeric_gradient(gamma, loss));
  TP_EXPECT_GRAD(dbeta, numeric_gradient(beta, loss));
}

TEST(OpFiniteDifferences, RmsNorm) {
  const Cpu cpu;
  const std::int64_t rows = 3, n = 6;
  auto x = ref::map(ref::random_matrix<double>(rows, n, ref::test_seed(20)), [](double v) { return 2 * v + 1; });
  auto gamma = ref::random_matrix<double>(1, n, ref::test_seed(21));
  const auto dy = ref::random_matrix<double>(rows, n, ref::test_seed(22));
  for (const double eps : {1e-6, 0.5}) {
    SCOPED_TRACE(fmt::format("eps {}", eps));
    ref::Matrix y(rows, n), rstd(rows, 1), dx(rows, n), dgamma(1, n);
    auto loss = [&] {
      ops::rms_norm(cpu, cview(x), cview(gamma), mview(y), mview(rstd), eps);
      return dot(y, dy);
    };
    loss();
    ops::rms_norm_backward(cpu, cview(x), cview(gamma), cview(rstd), cview(dy), mview(dx), mview(dgamma));
    TP_EXPECT_GRAD(dx, numeric_gradient(x, loss));
    TP_EXPECT_GRAD(dgamma, numeric_gradient(gamma, loss));
  }
}

TEST(OpFiniteDifferences, Attention) {
  const Cpu cpu;
  const std::int64_t seq = 3, batch = 2, tokens = seq * batch, d = 2;
  for (const auto& [hq, hk, causal] : {std::tuple{2, 2, true}, {4, 2, true}, {2, 1, false}}) {
    SCOPED_TRACE(fmt::format("hq {} hk {} causal {}", hq, hk, causal));
    auto q = ref::random_matrix<double>(tokens, hq * d, ref::test_seed(9));
    auto k = ref::random_matrix<double>(tokens, hk * d, ref::test_seed(10));
    auto v = ref::random_matrix<double>(tokens, hk * d, ref::test_seed(11));
    const auto dout = ref::random_matrix<double>(tokens, hq * d, ref::test_seed(12));
    ref::Matrix lse(hq, tokens), out(tokens, hq * d);
    ref::Matrix dq(tokens, hq * d), dk(tokens, hk * d), dv(tokens, hk * d);
    auto loss = [&] {
      ops::attention_forward(cpu, cview(q), cview(k), cview(v), seq, d, causal, mview(lse), mview(out));
      return dot(out, dout);
    };
    loss();
    ops::attention_backward(cpu, cview(q), cview(k), cview(v), cview(out), cview(lse), cview(dout), seq, d, causal,
                            mview(dq), mview(dk), mview(dv));
    TP_EXPECT_GRAD(dq, numeric_gradient(q, loss));
    TP_EXPECT_GRAD(dk, numeric_gradient(k, loss));
    TP_EXPECT_GRAD(dv, numeric_gradient(v, loss));
  }
}

/// Sequences of different lengths, q shorter than k in one (a KV cache's layout: causal aligned to
/// the end, keys on other rows than queries, rows in no sequence), masked keys, and queries that see
/// no key at all (zero output, zero gradient).
TEST(OpFiniteDifferences, AttentionVarlenMasked) {
  const Cpu cpu;
  const std::int64_t d = 2, q_rows = 7, k_rows = 9;
  AttentionSequences seqs;
  seqs.q_begin = {0, 3, 4};
  seqs.q_length = {3, 1, 3};
  seqs.k_begin = {0, 4, 6};
  seqs.k_length = {3, 2, 3};  // sequence 1: one query after one cached key; k row 3 unused
  seqs.key_mask = {0, 1, 1, 1, 1, 1, 0, 0, 1};  // sequence 0's first key, sequence 2's first two
  for (const auto& [hq, hk, causal] : {std::tuple{2, 2, true}, {4, 2, true}, {2, 1, false}}) {
    SCOPED_TRACE(fmt::format("hq {} hk {} causal {}", hq, hk, causal));
    auto q = ref::random_matrix<double>(q_rows, hq * d, ref::test_seed(31));
    auto k = ref::random_matrix<double>(k_rows, hk * d, ref::test_seed(32));
    auto v = ref::random_matrix<double>(k_rows, hk * d, ref::test_seed(33));
    const auto dout = ref::random_matrix<double>(q_rows, hq * d, ref::test_seed(34));
    ref::Matrix lse(hq, q_rows), out(q_rows, hq * d);
    ref::Matrix dq(q_rows, hq * d), dk(k_rows, hk * d), dv(k_rows, hk * d);
    auto loss = [&] {
      ops::attention_forward(cpu, cview(q), cview(k), cview(v), seqs, d, causal, mview(lse), mview(out));
      return dot(out, dout);
    };
    loss();
    for (const double o : out.data) ASSERT_TRUE(std::isfinite(o));
    if (causal)  // sequence 0's query 0 sees only key 0, which is masked; sequence 2's query 0 likewise
      for (std::int64_t c = 0; c < hq * d; ++c) {
        EXPECT_EQ(out(0, c), 0.0);
        EXPECT_EQ(out(4, c), 0.0);
      }
    ops::attention_backward(cpu, cview(q), cview(k), cview(v), cview(out), cview(lse), cview(dout), seqs, d, causal,
                            mview(dq), mview(dk), mview(dv));
    TP_EXPECT_GRAD(dq, numeric_gradient(q, loss));
    TP_EXPECT_GRAD(dk, numeric_gradient(k, loss));
    TP_EXPECT_GRAD(dv, numeric_gradient(v, loss));
    for (std::int64_t c = 0; c < hk * d; ++c) EXPECT_EQ(dv(0, c), 0.0) << "a masked key gets no gradient";
  }
}

/// RoPE's backward is the inverse rotation of the gradient.
TEST(OpFiniteDifferences, Rope) {
  const Cpu cpu;
  const std::int64_t tokens = 4, d = 6;
  const std::vector<std::int64_t> positions{0, 3, 50, 7};
  const ConstView<std::int64_t> pos(positions.data(), 1, tokens);
  auto x = ref::random_matrix<double>(tokens, 2 * d, ref::test_seed(35));
  const auto dy = ref::random_matrix<double>(tokens, 2 * d, ref::test_seed(36));
  ref::Matrix dx = dy;
  ops::rope(cpu, mview(dx), pos, d, 10000.0, true);
  TP_EXPECT_GRAD(dx, numeric_gradient(x, [&] {
                   ref::Matrix y = x;
                   ops::rope(cpu, mview(y), pos, d, 10000.0, false);
                   return dot(y, dy);
                 }));
}

TEST(OpFiniteDifferences, EmbeddingShard) {
  const Cpu cpu;
  const std::int64_t first = 2, rows = 4, hidden = 3;  // the shard holds ids [2, 6)
  const std::vector<std::int64_t> ids{3, 0, 5, 3, 7};
  auto table = ref::random_matrix<double>(rows, hidden, ref::test_seed(13));
  const auto dy = ref::random_matrix<double>(5, hidden, ref::test_seed(14));
  const ConstView<std::int64_t> id_view(ids.data(), 1, 5);
  ref::Matrix out(5, hidden), dtable(rows, hidden);
  ops::embedding_backward(cpu, id_view, cview(dy), first, mview(dtable));
  TP_EXPECT_GRAD(dtable, numeric_gradient(table, [&] {
                   ops::embedding_forward(cpu, id_view, cview(table), first, mview(out));
                   return dot(out, dy);
                 }));
}

TEST(OpFiniteDifferences, CrossEntropy) {
  const Cpu cpu;
  const std::int64_t tokens = 4, vocab = 6;
  const std::vector<std::int64_t> targets{1, -100, 5, 0};
  const ConstView<std::int64_t> t_view(targets.data(), 1, tokens);
  auto logits = ref::random_matrix<double>(tokens, vocab, ref::test_seed(15));
  const auto dloss = ref::random_matrix<double>(tokens, 1, ref::test_seed(16));
  for (const double s : {0.0, 0.25}) {
    SCOPED_TRACE(fmt::format("smoothing {}", s));
    ref::Matrix max(tokens, 1), loss_m(tokens, 1), dlogits(tokens, vocab);
    std::vector<double> stats(static_cast<std::size_t>(tokens * 3));
    const MatrixView<double> stats_v(stats.data(), tokens, 3);
    auto loss = [&] {
      ops::row_max(cpu, cview(logits), mview(max));
      ops::cross_entropy_stats<double>(cpu, cview(logits), t_view, 0, cview(max), stats_v);
      ops::cross_entropy_loss(cpu, ConstView<double>(stats_v), t_view, vocab, -100, s, mview(loss_m));
      return dot(loss_m, dloss);
    };
    loss();
    ops::cross_entropy_backward(cpu, cview(logits), t_view, 0, cview(max), ConstView<double>(stats_v), cview(dloss),
                                vocab, -100, s, mview(dlogits));
    TP_EXPECT_GRAD(dlogits, numeric_gradient(logits, loss));
  }
}

TEST(OpFiniteDifferences, BiasAdd) {
  const Cpu cpu;
  auto bias = ref::random_matrix<double>(1, 4, ref::test_seed(17));
  const auto x = ref::random_matrix<double>(3, 4, ref::test_seed(18));
  const auto dy = ref::random_matrix<double>(3, 4, ref::test_seed(19));
  ref::Matrix db(1, 4);
  ops::add_bias_grad(cpu, cview(dy), mview(db));
  TP_EXPECT_GRAD(db, numeric_gradient(bias, [&] {
                   ref::Matrix y = x;
                   ops::add_bias(cpu, mview(y), cview(bias));
                   return dot(y, dy);
                 }));
}

}  // namespace
}  // namespace tp
