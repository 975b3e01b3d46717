/// ParallelAttention on sequences longer than the CPU's flash-attention tiles (128 queries by 256 or 128
/// keys): 300 tokens per sequence, so every head runs whole tiles, a partial last tile and, causal,
/// tiles skipped above the diagonal; against the unsharded reference, on every device.

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

template <class T>
class AttentionLong : public ::testing::Test {};
TYPED_TEST_SUITE(AttentionLong, test::BlockFloats);

TYPED_TEST(AttentionLong, MatchesReferenceAcrossTiles) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  const std::int64_t hidden = 16, heads = 4, kv_heads = 2, d = 8, batch = 2, seq = 300, tokens = batch * seq;
  const std::int64_t qkv_rows = (heads + 2 * kv_heads) * d;
  const auto x = test::random_matrix<T>(tokens, hidden, ref::test_seed(11));
  const auto w_qkv = test::rounded<T>(
      ref::random_scaled<double>(qkv_rows, hidden, ref::test_seed(12), 1 / std::sqrt(double(hidden))));
  const auto b_qkv = test::random_matrix<T>(1, qkv_rows, ref::test_seed(13));
  const auto w_o = test::rounded<T>(
      ref::random_scaled<double>(hidden, heads * d, ref::test_seed(14), 1 / std::sqrt(double(heads * d))));
  const auto b_o = test::random_matrix<T>(1, hidden, ref::test_seed(15));
  const auto dy = test::random_matrix<T>(tokens, hidden, ref::test_seed(16));
  const test::HostMatrix<T> w_qkv_h(w_qkv), b_qkv_h(b_qkv), w_o_h(w_o), b_o_h(b_o);
  for (const bool causal : {true, false}) {
    SCOPED_TRACE(fmt::format("causal {}", causal));
    const auto want = ref::attention(x, w_qkv, b_qkv, w_o, b_o, dy, heads, kv_heads, d, seq, causal, true);
    on_ranks([&](std::shared_ptr<Communicator> comm) {
      SCOPED_TRACE(fmt::format("causal {}", causal));  // traces are per thread
      if (heads % comm->size() != 0 || (kv_heads % comm->size() != 0 && comm->size() % kv_heads != 0)) return;
      auto dev = std::make_shared<Dev>();
      ParallelAttention<T, Dev> attn(Context<Dev>(comm, dev), hidden, heads, kv_heads,
                                     {.causal = causal, .bias = true, .head_dim = d});
      attn.load_full(w_qkv_h.view(), b_qkv_h.view(), w_o_h.view(), b_o_h.view());
      TP_EXPECT_CLOSE(T, download(*dev, attn.forward(upload<T>(dev, x).view(), seq)), want.y);
      TP_EXPECT_CLOSE(T, download(*dev, attn.backward(upload<T>(dev, dy).view())), want.dx);
      test::expect_grads<T>(*dev, attn.parameters(),
                            {{"attention.qkv.weight", &want.dw_qkv},
                             {"attention.qkv.bias", &want.db_qkv},
                             {"attention.dense.weight", &want.dw_o},
                             {"attention.dense.bias", &want.db_o}});
    });
  }
}

}  // namespace
}  // namespace tp
