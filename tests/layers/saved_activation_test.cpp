/// What a layer keeps between forward and backward, and what stays valid when: a layer fed its own
/// output (row(row(x)), ln(ln(x))) computes from the saved copy; one saved activation per layer,
/// so forward-forward-backward throws instead of differentiating the second input twice; a forward
/// under tp::NoGrad leaves nothing to differentiate; the returned buffer is the layer's and grows
/// (moves) only when a forward needs more room than it has.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/blocks_reference.hpp"
#include "common/devices.hpp"
#include "common/harness.hpp"
#include "common/reference.hpp"
#include "common/reference_train.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

using test::download;
using test::error_of;
using test::on_ranks;
using test::upload;
using ::testing::HasSubstr;

template <class T>
class SavedActivationTyped : public ::testing::Test {};
TYPED_TEST_SUITE(SavedActivationTyped, test::BlockFloats);

/// A square RowParallelLinear taking the full input, applied to its own output buffer: the GEMM
/// must read the saved copy, not the buffer it writes.
TYPED_TEST(SavedActivationTyped, RowLayerAppliedToItsOwnOutput) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  const std::int64_t tokens = 5, hidden = 8;
  const auto x = test::random_matrix<T>(tokens, hidden, ref::test_seed(1));
  const auto w = ref::map(test::random_matrix<T>(hidden, hidden, ref::test_seed(2)),
                          [](double v) { return test::to_double(static_cast<T>(v / 4)); });
  const auto b = test::random_matrix<T>(1, hidden, ref::test_seed(3));
  const auto once = test::rounded<T>(ref::add_bias(ref::matmul(x, false, w, true), b));
  const auto twice = ref::add_bias(ref::matmul(once, false, w, true), b);
  const test::HostMatrix<T> w_h(w), b_h(b);
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    auto dev = std::make_shared<Dev>();
    RowParallelLinear<T, Dev> row(Context<Dev>(comm, dev), hidden, hidden, {.input_is_parallel = false, .name = "sq"});
    row.load_full(w_h.view(), b_h.view());
    const auto x_d = upload<T>(dev, x);
    const auto& y = row.forward(row.forward(x_d.view()).view());
    TP_EXPECT_CLOSE(T, download(*dev, y), twice);
  });
}

TYPED_TEST(SavedActivationTyped, LayerNormAppliedToItsOwnOutput) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  const std::int64_t tokens = 4, hidden = 12;
  const auto x = ref::map(test::random_matrix<T>(tokens, hidden, ref::test_seed(4)),
                          [](double v) { return test::to_double(static_cast<T>(2 * v + 1)); });
  const auto gamma = test::random_matrix<T>(1, hidden, ref::test_seed(5));
  const auto beta = test::random_matrix<T>(1, hidden, ref::test_seed(6));
  const ref::Matrix zero(tokens, hidden);
  const auto once = test::rounded<T>(ref::layer_norm(x, gamma, beta, zero, 1e-5).y);
  const auto twice = ref::layer_norm(once, gamma, beta, zero, 1e-5).y;
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    auto dev = std::make_shared<Dev>();
    LayerNorm<T, Dev> ln(Context<Dev>(comm, dev), hidden);
    const auto gamma_d = upload<T>(dev, gamma), beta_d = upload<T>(dev, beta);
    dev->copy(gamma_d.view(), ln.weight());
    dev->copy(beta_d.view(), ln.bias());
    const auto x_d = upload<T>(dev, x);
    TP_EXPECT_CLOSE(T, download(*dev, ln.forward(ln.forward(x_d.view()).view())), twice);
  });
}

#ifndef TP_TEST_CUDA  // device-independent: once, in the host binaries

/// For one layer: forward, forward, backward throws naming the layer and the count; backward twice
/// throws; a forward under NoGrad leaves nothing to differentiate; forward-backward pairs work.
template <class Forward, class Backward>
void expect_one_saved_activation(const std::string& name, Forward forward, Backward backward) {
  SCOPED_TRACE(name);
  EXPECT_THAT(error_of(backward), HasSubstr(name + ": backward called before forward: nothing to differentiate"));
  forward();
  forward();
  EXPECT_THAT(error_of(backward), HasSubstr(name + ": backward after 2 forwards"));
  forward();
  EXPECT_EQ(error_of(backward), "(no InvalidArgument thrown)");
  EXPECT_THAT(error_of(backward), HasSubstr(name + ": backward called before forward: nothing to differentiate"));
  forward();
  {
    NoGrad no_grad;
    forward();  // evaluation: replaces the saved input
  }
  EXPECT_THAT(error_of(backward), HasSubstr("a forward under tp::NoGrad replaced the saved input"));
  {
    NoGrad no_grad;
    forward();
    forward();  // any number of forwards without a backward
  }
  forward();
  EXPECT_EQ(error_of(backward), "(no InvalidArgument thrown)");
}

TEST(SavedActivation, ForwardForwardBackwardThrowsInEveryLayer) {
  on_ranks([](std::shared_ptr<Communicator> comm) {
    Context<> ctx(comm);
    using T = float;
    const std::int64_t tokens = 4, hidden = 12;
    Tensor<T, Cpu> x(tokens, hidden), dy(tokens, hidden);
    ctx.device->fill(x.view(), 0.5f);
    x(1, 2) = 2.0f;
    ctx.device->fill(dy.view(), 0.25f);

    ColumnParallelLinear<T> col(ctx, hidden, hidden, {.gather_output = true, .name = "col"});
    expect_one_saved_activation(
        "col", [&] { col.forward(x.view()); }, [&] { col.backward(dy.view()); });
    RowParallelLinear<T> row(ctx, hidden, hidden, {.input_is_parallel = false, .name = "row"});
    expect_one_saved_activation(
        "row", [&] { row.forward(x.view()); }, [&] { row.backward(dy.view()); });
    LayerNorm<T> ln(ctx, hidden, {.name = "ln"});
    expect_one_saved_activation(
        "ln", [&] { ln.forward(x.view()); }, [&] { ln.backward(dy.view()); });
    ParallelMLP<T> mlp(ctx, hidden, 12, {.name = "mlp"});
    expect_one_saved_activation(
        "mlp", [&] { mlp.forward(x.view()); }, [&] { mlp.backward(dy.view()); });
    ParallelAttention<T> attn(ctx, hidden, 12, 12, {.name = "attn"});
    expect_one_saved_activation(
        "attn", [&] { attn.forward(x.view(), 2); }, [&] { attn.backward(dy.view()); });
    const std::vector<std::int64_t> ids{1, 0, 5, 3};
    const auto ids_t = test::to_ids(ids, 1, tokens);
    VocabParallelEmbedding<T> emb(ctx, 7, hidden, {.name = "emb"});
    expect_one_saved_activation(
        "emb", [&] { emb.forward(ids_t.view()); }, [&] { emb.backward(dy.view()); });
    VocabParallelCrossEntropy<T> ce(ctx, 7, {.name = "ce"});
    const Range v = ce.vocab_range();
    Tensor<T, Cpu> logits(tokens, v.size()), dloss(tokens, 1);
    ctx.device->fill(logits.view(), 0.1f);
    ctx.device->fill(dloss.view(), 1.0f);
    expect_one_saved_activation(
        "ce", [&] { ce.forward(logits.view(), ids_t.view()); }, [&] { ce.backward(dloss.view()); });
  });
}

/// What is valid when: the reference forward returns names the layer's buffer, so it always shows
/// the last forward; a view taken from it sees the next forward's values, and points at freed
/// memory once a forward with more tokens than the buffer's capacity has grown it.
TEST(SavedActivation, ReturnedBuffersAreValidUntilTheNextForward) {
  run_local(1, [](std::shared_ptr<Communicator> comm) {
    Context<> ctx(comm);
    const std::int64_t hidden = 4;
    ColumnParallelLinear<double> col(ctx, hidden, 3, {.name = "col"});
    auto input = [&](std::int64_t tokens, double value) {
      Tensor<double, Cpu> x(tokens, hidden);
      ctx.device->fill(x.view(), value);
      return x;
    };
    const auto x4 = input(4, 1.0), x2 = input(2, 2.0), x8 = input(8, 3.0);
    const Tensor<double, Cpu>& out = col.forward(x4.view());
    const ConstView<double> first = out.view();
    EXPECT_EQ(out.capacity(), 4 * 3);
    const double before = first(0, 0);

    col.forward(x2.view());  // fewer tokens: the same memory, new values, two rows
    EXPECT_EQ(out.data(), first.data);
    EXPECT_EQ(out.rows(), 2);
    EXPECT_NE(first(0, 0), before);  // the old view shows the new forward's values
    EXPECT_EQ(out.capacity(), 4 * 3);

    col.forward(x8.view());  // more tokens than the capacity: the buffer is reallocated, `first` dangles
    EXPECT_EQ(out.rows(), 8);
    EXPECT_EQ(out.capacity(), 8 * 3);
  });
}

#endif  // TP_TEST_CUDA

}  // namespace
}  // namespace tp
