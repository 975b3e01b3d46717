/// Every layer's backward against central differences of its own forward, in double, at every
/// world size the harness runs (common/finite_difference.hpp): the input gradient and every
/// parameter gradient, with the options that change the backward (gathered output, full input,
/// sequence parallelism, stacked weights, the tied embedding and LM head, activations, label smoothing both ways, ignored tokens,
/// causal and grouped-query attention with replicated kv heads, their bias in the packed and the
/// separate all-reduce; RoPE, packed sequences and a key mask). Independent of the hand-written
/// references in tests/common.

#include "common/finite_difference.hpp"

#include <gtest/gtest.h>

#include <functional>

#include "common/blocks_reference.hpp"
#include "common/harness.hpp"
#include "common/reference.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

using test::Block;
using test::on_ranks;
using Forward = std::function<ConstView<double>(ConstView<double>)>;
using Backward = std::function<ref::Matrix(ConstView<double>)>;  ///< the input gradient, or an empty matrix

Block whole(std::int64_t rows, std::int64_t cols) { return {{0, rows}, {0, cols}}; }

/// The columns `blocks` of `m` side by side, rows `rows` (a rank's output block; stacked weights
/// give one block per stacked matrix).
ref::Matrix take(const ref::Matrix& m, Range rows, const std::vector<Range>& blocks) {
  std::int64_t width = 0;
  for (const auto& b : blocks) width += b.size();
  ref::Matrix out(rows.size(), width);
  std::int64_t at = 0;
  for (const auto& b : blocks) {
    for (std::int64_t r = 0; r < rows.size(); ++r)
      for (std::int64_t c = 0; c < b.size(); ++c) out(r, at + c) = m(rows.begin + r, b.begin + c);
    at += b.size();
  }
  return out;
}

/// Runs forward and backward once for the analytic gradients, then the central differences.
/// `x` is the full input (0x0 for none) of which this rank holds `x_block`; `dy_local` is this
/// rank's block of the output gradient; `split` whether the ranks' outputs are parts of one.
void check_layer(const std::shared_ptr<Communicator>& comm, const std::vector<Parameter<double>>& ps,
                 const std::function<void()>& zero_grad, const Forward& forward, const Backward& backward,
                 const ref::Matrix& x, Block x_block, const ref::Matrix& dy_local, bool split) {
  auto x_local =
      ref::to_tensor<double>(x.block(x_block.rows.begin, x_block.cols.begin, x_block.rows.size(), x_block.cols.size()));
  const auto dy_t = ref::to_tensor<double>(dy_local);
  zero_grad();
  forward(x_local.view());
  const ref::Matrix dx = backward(dy_t.view());

  const test::LayerProbe probe{comm, [&] { return forward(x_local.view()); }, dy_t.view(), split};
  if (x.rows > 0) {
    const auto numeric = probe.input_gradient(x_local.view(), x_block, x.rows, x.cols);
    TP_EXPECT_FD_CLOSE(dx, numeric, x_block);
  }
  test::expect_fd_grads(ps, probe.parameter_gradients(ps));
}

/// Nonzero values for parameters initialised to constants (norm weights 1, biases 0), so that every
/// term of the backward matters: the same full tensor on every rank, keyed by name.
void randomize(const std::vector<Parameter<double>>& ps, std::uint64_t seed) {
  for (const auto& p : ps) init_uniform(Cpu(), p, seed, 0.8);
}

TEST(FiniteDifferences, ColumnParallelLinear) {
  const std::int64_t tokens = 3, in = 4, out = 8;
  const auto x = ref::random_matrix<double>(tokens, in, ref::test_seed(1));
  const auto dy = ref::random_matrix<double>(tokens, out, ref::test_seed(2));
  for (const int variant : {0, 1, 2, 3}) {
    SCOPED_TRACE(fmt::format("variant {} (plain, gather_output, sequence_parallel, stacked)", variant));
    on_ranks([&](std::shared_ptr<Communicator> comm) {
      Context<> ctx(comm);
      const bool sp = variant == 2;
      ColumnParallelLinear<double> layer(
          ctx, in, out,
          {.gather_output = variant == 1, .name = "col", .sequence_parallel = sp, .stacked = variant == 3 ? 2 : 1});
      randomize(layer.parameters(), 3);
      const Range mine = partition(tokens, comm->size(), comm->rank()), c = layer.output_range();
      std::vector<Range> cols{c};
      if (variant == 3) cols.push_back({out / 2 + c.begin, out / 2 + c.end});
      if (variant == 1) cols = {{0, out}};
      check_layer(
          comm, layer.parameters(), [&] { layer.zero_grad(); },
          [&](ConstView<double> xv) { return ConstView<double>(layer.forward(xv, sp ? tokens : -1).view()); },
          [&](ConstView<double> g) { return test::as_matrix<double>(layer.backward(g)); }, x,
          sp ? Block{mine, {0, in}} : whole(tokens, in), take(dy, {0, tokens}, cols), variant != 1);
    });
  }
}

TEST(FiniteDifferences, RowParallelLinear) {
  const std::int64_t tokens = 3, in = 8, out = 4;
  const auto x = ref::random_matrix<double>(tokens, in, ref::test_seed(4));
  const auto dy = ref::random_matrix<double>(tokens, out, ref::test_seed(5));
  for (const int variant : {0, 1, 2}) {
    SCOPED_TRACE(fmt::format("variant {} (parallel input, full input, sequence_parallel)", variant));
    on_ranks([&](std::shared_ptr<Communicator> comm) {
      Context<> ctx(comm);
      const bool sp = variant == 2;
      RowParallelLinear<double> layer(ctx, in, out,
                                      {.input_is_parallel = variant != 1, .name = "row", .sequence_parallel = sp});
      randomize(layer.parameters(), 6);
      const Range mine = partition(tokens, comm->size(), comm->rank()), r = layer.input_range();
      check_layer(
          comm, layer.parameters(), [&] { layer.zero_grad(); },
          [&](ConstView<double> xv) { return ConstView<double>(layer.forward(xv).view()); },
          [&](ConstView<double> g) { return test::as_matrix<double>(layer.backward(g)); }, x,
          variant == 1 ? whole(tokens, in) : Block{{0, tokens}, r}, take(dy, sp ? mine : Range{0, tokens}, {{0, out}}),
          sp);
    });
  }
}

/// A norm layer (LayerNorm, RMSNorm) with and without sequence parallelism, input shifted off zero.
template <template <class, class> class Norm>
void check_norm(const char* name, std::uint64_t seed) {
  const std::int64_t tokens = 3, hidden = 5;
  const auto x =
      ref::map(ref::random_matrix<double>(tokens, hidden, ref::test_seed(seed)), [](double v) { return 2 * v + 1; });
  const auto dy = ref::random_matrix<double>(tokens, hidden, ref::test_seed(seed + 1));
  for (const bool sp : {false, true}) {
    SCOPED_TRACE(fmt::format("sequence_parallel {}", sp));
    on_ranks([&](std::shared_ptr<Communicator> comm) {
      Context<> ctx(comm);
      Norm<double, Cpu> layer(ctx, hidden, {.name = name, .sequence_parallel = sp});
      randomize(layer.parameters(), seed + 2);
      const Range rows = sp ? partition(tokens, comm->size(), comm->rank()) : Range{0, tokens};
      check_layer(
          comm, layer.parameters(), [&] { layer.zero_grad(); },
          [&](ConstView<double> xv) { return ConstView<double>(layer.forward(xv).view()); },
          [&](ConstView<double> g) { return test::as_matrix<double>(layer.backward(g)); }, x, Block{rows, {0, hidden}},
          take(dy, rows, {{0, hidden}}), sp);
    });
  }
}

TEST(FiniteDifferences, LayerNorm) { check_norm<LayerNorm>("ln", 7); }

TEST(FiniteDifferences, RMSNorm) { check_norm<RMSNorm>("rms", 30); }

TEST(FiniteDifferences, VocabParallelEmbedding) {
  const std::int64_t vocab = 7, hidden = 4;
  const std::vector<std::int64_t> ids{3, 0, 6, 3, 5};  // a repeated id accumulates twice
  const auto tokens = static_cast<std::int64_t>(ids.size());
  const auto dy = ref::random_matrix<double>(tokens, hidden, ref::test_seed(10));
  for (const bool sp : {false, true}) {
    SCOPED_TRACE(fmt::format("sequence_parallel {}", sp));
    on_ranks([&](std::shared_ptr<Communicator> comm) {
      Context<> ctx(comm);
      VocabParallelEmbedding<double> layer(ctx, vocab, hidden, {.sequence_parallel = sp, .name = "wte"});
      const auto ids_t = test::to_ids(ids, 1, tokens);
      const Range rows = sp ? partition(tokens, comm->size(), comm->rank()) : Range{0, tokens};
      check_layer(
          comm, layer.parameters(), [&] { layer.zero_grad(); },
          [&](ConstView<double>) { return ConstView<double>(layer.forward(ids_t.view()).view()); },
          [&](ConstView<double> g) {
            layer.backward(g);
            return ref::Matrix();
          },
          ref::Matrix(), Block{}, take(dy, rows, {{0, hidden}}), sp);
    });
  }
}

/// The tied table: ids -> embedding -> LM head reading the same table -> cross-entropy, L = sum(loss
/// * dloss). The table's one gradient must hold both uses (the head's dlogits^T x and the
/// embedding's scatter of the head's input gradient). Vocab 7 is uneven over 3 and 4 ranks.
TEST(FiniteDifferences, TiedEmbeddingAndLmHead) {
  const std::int64_t vocab = 7, hidden = 3;
  const std::vector<std::int64_t> ids{3, 0, 6, 3, 5};
  const std::vector<std::int64_t> targets{2, -100, 6, 0, 3};
  const auto tokens = static_cast<std::int64_t>(ids.size());
  const auto dloss = ref::random_matrix<double>(tokens, 1, ref::test_seed(33));
  for (const bool sp : {false, true}) {
    SCOPED_TRACE(fmt::format("sequence_parallel {}", sp));
    on_ranks([&](std::shared_ptr<Communicator> comm) {
      Context<> ctx(comm);
      VocabParallelEmbedding<double> wte(ctx, vocab, hidden, {.sequence_parallel = sp, .name = "wte", .init_std = 0.7});
      ParallelLMHead<double> head(wte, {.sequence_parallel = sp});
      VocabParallelCrossEntropy<double> loss(ctx, vocab);
      const auto ids_t = test::to_ids(ids, 1, tokens);
      const auto targets_t = test::to_ids(targets, 1, tokens);
      check_layer(
          comm, wte.parameters(), [&] { wte.zero_grad(); },
          [&](ConstView<double>) {
            const auto& x = wte.forward(ids_t.view());
            const auto& logits = head.forward(x.view(), tokens);
            return ConstView<double>(loss.forward(logits.view(), targets_t.view()).view());
          },
          [&](ConstView<double> g) {
            wte.backward(head.backward(loss.backward(g).view()).view());
            return ref::Matrix();
          },
          ref::Matrix(), Block{}, dloss, false);
    });
  }
}

TEST(FiniteDifferences, VocabParallelCrossEntropy) {
  const std::int64_t tokens = 4, vocab = 7;
  const auto logits = ref::random_matrix<double>(tokens, vocab, ref::test_seed(11));
  const auto dloss = ref::random_matrix<double>(tokens, 1, ref::test_seed(12));
  const std::vector<std::int64_t> targets{2, -100, 6, 0};  // one ignored token
  for (const auto& [s, megatron] : {std::pair{0.0, false}, {0.2, false}, {0.2, true}}) {
    SCOPED_TRACE(fmt::format("label_smoothing {} megatron {}", s, megatron));
    on_ranks([&](std::shared_ptr<Communicator> comm) {
      Context<> ctx(comm);
      VocabParallelCrossEntropy<double> layer(ctx, vocab, {.label_smoothing = s, .megatron_label_smoothing = megatron});
      const auto ids = test::to_ids(targets, tokens, 1);
      check_layer(
          comm, {}, [] {},
          [&](ConstView<double> xv) { return ConstView<double>(layer.forward(xv, ids.view()).view()); },
          [&](ConstView<double> g) { return test::as_matrix<double>(layer.backward(g)); }, logits,
          Block{{0, tokens}, layer.vocab_range()}, dloss, false);
    });
  }
}

TEST(FiniteDifferences, ParallelMLP) {
  const std::int64_t tokens = 3, hidden = 4, ffn = 6;
  const auto x = ref::random_matrix<double>(tokens, hidden, ref::test_seed(13));
  const auto dy = ref::random_matrix<double>(tokens, hidden, ref::test_seed(14));
  for (const Activation act : {Activation::gelu_exact, Activation::gelu_tanh, Activation::swiglu})
    for (const bool sp : {false, true}) {
      SCOPED_TRACE(fmt::format("activation {} sequence_parallel {}", static_cast<int>(act), sp));
      on_ranks([&](std::shared_ptr<Communicator> comm) {
        Context<> ctx(comm);
        ParallelMLP<double> layer(ctx, hidden, ffn, {.activation = act, .sequence_parallel = sp, .name = "mlp"});
        randomize(layer.parameters(), 15);
        const Range rows = sp ? partition(tokens, comm->size(), comm->rank()) : Range{0, tokens};
        check_layer(
            comm, layer.parameters(), [&] { layer.zero_grad(); },
            [&](ConstView<double> xv) { return ConstView<double>(layer.forward(xv, sp ? tokens : -1).view()); },
            [&](ConstView<double> g) { return test::as_matrix<double>(layer.backward(g)); }, x,
            Block{rows, {0, hidden}}, take(dy, rows, {{0, hidden}}), sp);
      });
    }
}

struct AttentionCase {
  std::int64_t hidden, heads, kv_heads, head_dim;
  bool causal, bias, sp;
};

TEST(FiniteDifferences, ParallelAttention) {
  const std::int64_t seq = 2, tokens = 4;  // two sequences
  // Grouped-query with kv heads replicated at world 4 (bias packed into the weight's all-reduce:
  // 2 kv widths <= hidden); the same with head_dim 3, where 2 kv widths (6) exceed hidden (4) and
  // the bias takes its own all-reduce; full attention without bias; sequence parallel.
  for (const AttentionCase a : {AttentionCase{8, 4, 2, 0, true, true, false},
                                {4, 4, 2, 3, true, true, false},
                                {8, 4, 4, 0, false, false, false},
                                {8, 4, 2, 0, true, true, true}}) {
    SCOPED_TRACE(fmt::format("hidden {} heads {} kv_heads {} head_dim {} causal {} bias {} sp {}", a.hidden, a.heads,
                             a.kv_heads, a.head_dim, a.causal, a.bias, a.sp));
    const auto x = ref::random_matrix<double>(tokens, a.hidden, ref::test_seed(16));
    const auto dy = ref::random_matrix<double>(tokens, a.hidden, ref::test_seed(17));
    on_ranks([&](std::shared_ptr<Communicator> comm) {
      if (a.heads % comm->size() != 0) return;  // query heads split evenly: not at world size 3
      Context<> ctx(comm);
      ParallelAttention<double> layer(
          ctx, a.hidden, a.heads, a.kv_heads,
          {.causal = a.causal, .bias = a.bias, .head_dim = a.head_dim, .sequence_parallel = a.sp, .name = "attn"});
      randomize(layer.parameters(), 18);
      const Range rows = a.sp ? partition(tokens, comm->size(), comm->rank()) : Range{0, tokens};
      check_layer(
          comm, layer.parameters(), [&] { layer.zero_grad(); },
          [&](ConstView<double> xv) { return ConstView<double>(layer.forward(xv, seq, a.sp ? tokens : -1).view()); },
          [&](ConstView<double> g) { return test::as_matrix<double>(layer.backward(g)); }, x,
          Block{rows, {0, a.hidden}}, take(dy, rows, {{0, a.hidden}}), a.sp);
    });
  }
}

/// RoPE (given positions), packed sequences of different lengths and a key mask that leaves one
/// query with no key; grouped-query with replicated kv heads; with and without sequence parallelism.
TEST(FiniteDifferences, ParallelAttentionRopeVarlenMask) {
  const std::int64_t hidden = 8, heads = 4, kv_heads = 2, tokens = 6;
  const std::vector<std::int64_t> lengths{3, 1, 2}, positions{4, 0, 9, 2, 1, 30};
  const std::vector<std::uint8_t> mask{0, 1, 1, 1, 1, 0};
  const auto x = ref::random_matrix<double>(tokens, hidden, ref::test_seed(19));
  const auto dy = ref::random_matrix<double>(tokens, hidden, ref::test_seed(20));
  for (const bool sp : {false, true}) {
    SCOPED_TRACE(fmt::format("sp {}", sp));
    on_ranks([&](std::shared_ptr<Communicator> comm) {
      if (heads % comm->size() != 0) return;
      Context<> ctx(comm);
      ParallelAttention<double> layer(ctx, hidden, heads, kv_heads,
                                      {.dense_bias = false, .rope_theta = 100, .sequence_parallel = sp, .name = "attn"});
      randomize(layer.parameters(), 21);
      const AttentionBatch batch{lengths, ConstView<std::int64_t>(positions.data(), 1, tokens), mask};
      const Range rows = sp ? partition(tokens, comm->size(), comm->rank()) : Range{0, tokens};
      check_layer(
          comm, layer.parameters(), [&] { layer.zero_grad(); },
          [&](ConstView<double> xv) { return ConstView<double>(layer.forward(xv, batch).view()); },
          [&](ConstView<double> g) { return test::as_matrix<double>(layer.backward(g)); }, x,
          Block{rows, {0, hidden}}, take(dy, rows, {{0, hidden}}), sp);
    });
  }
}

}  // namespace
}  // namespace tp
