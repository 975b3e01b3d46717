/// tp::ops::attention_forward / backward over tp::AttentionSequences on every device: queries
/// shorter than their keys (a KV cache: keys on other rows, causal aligned to the end) give the
/// last rows of the full causal attention; a sequence whose keys are all masked gives zeros and
/// zero gradients, not NaN.

#include <gtest/gtest.h>

#include <cmath>

#include "common/blocks_reference.hpp"
#include "common/devices.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

using test::download;
using test::upload;

template <class T>
class AttentionOp : public ::testing::Test {};
TYPED_TEST_SUITE(AttentionOp, test::BlockFloats);

TYPED_TEST(AttentionOp, QueriesAlignedToTheEndOfTheKeys) {
  using T = TypeParam;
  using S = tp::ops::AttentionStat<T>;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  test::for_each_cpu_isa([&] {
    auto dev = std::make_shared<Dev>();
    const std::int64_t n = 7, hq = 4, hk = 2, d = 4, at = 3;  // the keys sit at rows [3, 10) of a 12-row cache
    const auto q = test::random_matrix<T>(n, hq * d, ref::test_seed(1));
    const auto k = test::random_matrix<T>(n, hk * d, ref::test_seed(2));
    const auto v = test::random_matrix<T>(n, hk * d, ref::test_seed(3));
    ref::Matrix k_cache(12, hk * d), v_cache(12, hk * d);
    for (std::int64_t r = 0; r < n; ++r)
      for (std::int64_t c = 0; c < hk * d; ++c) {
        k_cache(at + r, c) = k(r, c);
        v_cache(at + r, c) = v(r, c);
      }
    std::vector<std::uint8_t> mask(12, 1);
    mask[at + 2] = 0;
    // The full causal attention, all n queries against the n keys on the same rows.
    const auto q_d = upload<T>(dev, q), k_d = upload<T>(dev, k), v_d = upload<T>(dev, v);
    Tensor<S, Dev> lse(dev, hq, n);
    Tensor<T, Dev> full(dev, n, hq * d);
    AttentionSequences all = AttentionSequences::packed({n});
    all.key_mask.assign(mask.begin() + at, mask.begin() + at + n);
    tp::ops::attention_forward<T>(*dev, q_d.view(), k_d.view(), v_d.view(), all, d, true, lse.view(), full.view());
    const ref::Matrix want = download(*dev, full);
    const auto kc_d = upload<T>(dev, k_cache), vc_d = upload<T>(dev, v_cache);
    for (const std::int64_t tail : {1, 3, 7}) {
      SCOPED_TRACE(fmt::format("{} queries", tail));
      const auto qt_d = upload<T>(dev, q.rows_range(n - tail, tail));
      Tensor<S, Dev> lse_t(dev, hq, tail);
      Tensor<T, Dev> out(dev, tail, hq * d);
      AttentionSequences seqs{{0}, {tail}, {at}, {n}, mask};
      tp::ops::attention_forward<T>(*dev, qt_d.view(), kc_d.view(), vc_d.view(), seqs, d, true, lse_t.view(),
                                    out.view());
      TP_EXPECT_CLOSE(T, download(*dev, out), want.rows_range(n - tail, tail));
    }
  });
}

TYPED_TEST(AttentionOp, FullyMaskedSequenceGivesZeros) {
  using T = TypeParam;
  using S = tp::ops::AttentionStat<T>;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  test::for_each_cpu_isa([&] {
    auto dev = std::make_shared<Dev>();
    const std::int64_t hq = 2, hk = 1, d = 4, tokens = 5;  // sequences of 2 and 3; the first all masked
    const auto q = test::random_matrix<T>(tokens, hq * d, ref::test_seed(4));
    const auto k = test::random_matrix<T>(tokens, hk * d, ref::test_seed(5));
    const auto v = test::random_matrix<T>(tokens, hk * d, ref::test_seed(6));
    const auto dout = test::random_matrix<T>(tokens, hq * d, ref::test_seed(7));
    AttentionSequences seqs = AttentionSequences::packed({2, 3});
    seqs.key_mask = {0, 0, 1, 1, 1};
    for (const bool causal : {true, false}) {
      SCOPED_TRACE(fmt::format("causal {}", causal));
      const auto q_d = upload<T>(dev, q), k_d = upload<T>(dev, k), v_d = upload<T>(dev, v), do_d = upload<T>(dev, dout);
      Tensor<S, Dev> lse(dev, hq, tokens);
      Tensor<T, Dev> out(dev, tokens, hq * d), dq(dev, tokens, hq * d), dk(dev, tokens, hk * d), dv(dev, tokens, hk * d);
      tp::ops::attention_forward<T>(*dev, q_d.view(), k_d.view(), v_d.view(), seqs, d, causal, lse.view(), out.view());
      tp::ops::attention_backward<T>(*dev, q_d.view(), k_d.view(), v_d.view(), out.view(), lse.view(), do_d.view(), seqs,
                                     d, causal, dq.view(), dk.view(), dv.view());
      const ref::Matrix o = download(*dev, out), gq = download(*dev, dq), gk = download(*dev, dk),
                        gv = download(*dev, dv);
      for (const ref::Matrix* m : {&o, &gq, &gk, &gv})
        for (const double x : m->data) ASSERT_TRUE(std::isfinite(x));
      const ref::Matrix zeros_q(2, hq * d), zeros_k(2, hk * d);
      EXPECT_EQ(o.rows_range(0, 2).data, zeros_q.data);
      EXPECT_EQ(gq.rows_range(0, 2).data, zeros_q.data);
      EXPECT_EQ(gk.rows_range(0, 2).data, zeros_k.data);
      EXPECT_EQ(gv.rows_range(0, 2).data, zeros_k.data);
      // The other sequence is untouched by the masked one: as if it ran alone.
      Tensor<S, Dev> lse2(dev, hq, 3);
      Tensor<T, Dev> alone(dev, 3, hq * d);
      const auto q2 = upload<T>(dev, q.rows_range(2, 3)), k2 = upload<T>(dev, k.rows_range(2, 3)),
                 v2 = upload<T>(dev, v.rows_range(2, 3));
      tp::ops::attention_forward<T>(*dev, q2.view(), k2.view(), v2.view(), 3, d, causal, lse2.view(), alone.view());
      TP_EXPECT_CLOSE(T, o.rows_range(2, 3), download(*dev, alone));
    }
  });
}

}  // namespace
}  // namespace tp
