/// The blocks composed as a (residual-free) language model: embedding -> attention -> MLP -> LM
/// head -> cross-entropy, forward and backward, with and without sequence parallelism, against the
/// unsharded chain. Under sequence parallelism every hand-off between blocks is a token shard
/// partition(tokens), so this checks that the layers agree on it.

#include <gtest/gtest.h>

#include "common/blocks_reference.hpp"
#include "common/harness.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

using test::on_ranks;

/// Double only: float rounding compounds over five layers beyond the one-layer float tolerance
/// (even at world size 1); each block has its own float test.
TEST(TransformerBlock, ChainMatchesReferenceWithAndWithoutSequenceParallel) {
  using T = double;
  const std::int64_t vocab = 23, hidden = 12, heads = 12, kv_heads = 1, d = 2, ffn = 14, batch = 2, seq = 5;
  const std::int64_t tokens = batch * seq;
  const auto ids = ref::random_ids(tokens, vocab, ref::test_seed(1));
  auto targets = ref::random_ids(tokens, vocab, ref::test_seed(2));
  targets[4] = -100;
  const auto table = ref::random_matrix<T>(vocab, hidden, ref::test_seed(3));
  const auto w_qkv = ref::random_scaled<T>((heads + 2 * kv_heads) * d, hidden, ref::test_seed(4), 1 / std::sqrt(12.0));
  const auto b_qkv = ref::random_matrix<T>(1, (heads + 2 * kv_heads) * d, ref::test_seed(5));
  const auto w_o = ref::random_scaled<T>(hidden, heads * d, ref::test_seed(6), 1 / std::sqrt(24.0));
  const auto b_o = ref::random_matrix<T>(1, hidden, ref::test_seed(7));
  const auto w1 = ref::random_scaled<T>(2 * ffn, hidden, ref::test_seed(8), 1 / std::sqrt(12.0));
  const auto b1 = ref::random_matrix<T>(1, 2 * ffn, ref::test_seed(9));
  const auto w2 = ref::random_scaled<T>(hidden, ffn, ref::test_seed(10), 1 / std::sqrt(14.0));
  const auto b2 = ref::random_matrix<T>(1, hidden, ref::test_seed(11));
  const auto head = ref::random_matrix<T>(vocab, hidden, ref::test_seed(12));
  const auto dloss = ref::random_matrix<T>(tokens, 1, ref::test_seed(13));

  // Reference: forward passes first (their backward halves unused), then backward from the loss.
  const ref::Matrix none(tokens, hidden);
  const auto h0 = ref::embedding(ids, table);
  const auto h1 = ref::attention(h0, w_qkv, b_qkv, w_o, b_o, none, heads, kv_heads, d, seq, true, true).y;
  const auto h2 = ref::mlp(h1, w1, b1, w2, b2, none, ref::Act::swiglu, true).y;
  const auto ce = ref::cross_entropy(ref::matmul(h2, false, head, true), targets, -100, 0.05, dloss);
  const auto lm = ref::linear(h2, head, nullptr, ce.dlogits);
  const auto mlp = ref::mlp(h1, w1, b1, w2, b2, lm.dx, ref::Act::swiglu, true);
  const auto attn = ref::attention(h0, w_qkv, b_qkv, w_o, b_o, mlp.dx, heads, kv_heads, d, seq, true, true);
  const auto dtable = ref::embedding_grad(ids, attn.dx, vocab);

  const auto ids_t = test::to_ids(ids, batch, seq), targets_t = test::to_ids(targets, batch, seq);
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    Context<> ctx(comm);
    for (const bool sp : {false, true}) {
      SCOPED_TRACE(fmt::format("sequence_parallel {}", sp));
      VocabParallelEmbedding<T> emb(ctx, vocab, hidden, {.sequence_parallel = sp});
      ParallelAttention<T> attention(ctx, hidden, heads, kv_heads, {.head_dim = d, .sequence_parallel = sp});
      ParallelMLP<T> mlp_layer(ctx, hidden, ffn, {.activation = Activation::swiglu, .sequence_parallel = sp});
      ColumnParallelLinear<T> lm_head(ctx, hidden, vocab, {.bias = false, .name = "lm_head", .sequence_parallel = sp});
      VocabParallelCrossEntropy<T> loss_fn(ctx, vocab, {.label_smoothing = 0.05});
      emb.load_full(ref::to_tensor<T>(table));
      attention.load_full(ref::to_tensor<T>(w_qkv), ref::to_tensor<T>(b_qkv), ref::to_tensor<T>(w_o),
                          ref::to_tensor<T>(b_o));
      mlp_layer.load_full(ref::to_tensor<T>(w1), ref::to_tensor<T>(b1), ref::to_tensor<T>(w2), ref::to_tensor<T>(b2));
      lm_head.load_full(ref::to_tensor<T>(head));

      const std::int64_t n = sp ? tokens : -1;
      const auto& x0 = emb.forward(ids_t);
      const auto& x1 = attention.forward(x0, seq, n);
      const auto& x2 = mlp_layer.forward(x1, n);
      const auto& loss = loss_fn.forward(lm_head.forward(x2, n), targets_t);
      TP_EXPECT_CLOSE(T, loss, ce.loss);

      emb.backward(attention.backward(mlp_layer.backward(lm_head.backward(loss_fn.backward(ref::to_tensor<T>(dloss))))));
      test::expect_grads<T>(emb.parameters(), {{"embedding.weight", &dtable}});
      test::expect_grads<T>(attention.parameters(), {{"attention.qkv.weight", &attn.dw_qkv},
                                                     {"attention.qkv.bias", &attn.db_qkv},
                                                     {"attention.dense.weight", &attn.dw_o},
                                                     {"attention.dense.bias", &attn.db_o}});
      test::expect_grads<T>(mlp_layer.parameters(), {{"mlp.fc1.weight", &mlp.dw1},
                                                     {"mlp.fc1.bias", &mlp.db1},
                                                     {"mlp.fc2.weight", &mlp.dw2},
                                                     {"mlp.fc2.bias", &mlp.db2}});
      test::expect_grads<T>(lm_head.parameters(), {{"lm_head.weight", &lm.dw}});
    }
  });
}

}  // namespace
}  // namespace tp
