/// AdamW against the double-precision reference loop: element-wise on a single tensor, on
/// sharded blocks at every world size, and training a column -> row parallel pair for several
/// steps, where every rank's parameters track the unsharded reference training step by step. The
/// sharded update and the gradient norm run on every device (common/devices.hpp).

#include "tp/optim/adamw.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/devices.hpp"
#include "common/harness.hpp"
#include "common/reference.hpp"
#include "common/reference_train.hpp"
#include "tp/optim/clip_grad_norm.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

using test::download;
using test::on_ranks;
using test::upload;
using ::testing::HasSubstr;

constexpr AdamWOptions kOptions{.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1};

template <class T>
class AdamWTyped : public ::testing::Test {};
TYPED_TEST_SUITE(AdamWTyped, test::BlockFloats);

/// A row-sharded matrix, a column-sharded matrix and a replicated vector, several steps: every
/// shard and its moments track the reference loop on the full tensors. bf16 takes a larger
/// learning rate so that an update is many bf16 units of the parameter (else a missing update
/// would hide inside the tolerance).
TYPED_TEST(AdamWTyped, ShardedUpdatesMatchTheReferenceLoopAtEveryWorldSize) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  constexpr bool sixteen_bit = sizeof(T) == 2;
  const AdamWOptions options{.lr = sixteen_bit ? 1e-1 : kOptions.lr,
                             .beta1 = kOptions.beta1,
                             .beta2 = kOptions.beta2,
                             .eps = kOptions.eps,
                             .weight_decay = kOptions.weight_decay};
  constexpr std::int64_t rows = 9, cols = 7;
  for (bool decay_vectors : {false, true}) {
    SCOPED_TRACE(fmt::format("decay_vectors {}", decay_vectors));
    // A matrix split by rows, a matrix split by columns, and a replicated vector.
    const auto w0 = test::random_matrix<T>(rows, cols, ref::test_seed(1));
    const auto v0 = test::random_matrix<T>(1, cols, ref::test_seed(2));
    constexpr int steps = 4;
    std::vector<ref::Matrix> gw, gv;
    for (int s = 0; s < steps; ++s) {
      gw.push_back(test::random_matrix<T>(rows, cols, ref::test_seed(10 + s)));
      gv.push_back(test::random_matrix<T>(1, cols, ref::test_seed(20 + s)));
    }
    std::vector<ref::Matrix> want_w, want_v, want_mw, want_vw;
    {
      ref::Matrix w = w0, v = v0;
      ref::AdamWState sw, sv;
      for (int s = 0; s < steps; ++s) {
        ref::adamw_step(w, gw[s], sw, options.lr, options.beta1, options.beta2, options.eps, options.weight_decay);
        ref::adamw_step(v, gv[s], sv, options.lr, options.beta1, options.beta2, options.eps,
                        decay_vectors ? options.weight_decay : 0.0);
        want_w.push_back(w);
        want_v.push_back(v);
        want_mw.push_back(sw.m);
        want_vw.push_back(sw.v);
      }
    }
    on_ranks([&](std::shared_ptr<Communicator> comm) {
      auto dev = std::make_shared<Dev>();
      const int world = comm->size(), rank = comm->rank();
      const Range rr = partition(rows, world, rank), cr = partition(cols, world, rank);
      struct Owned {
        Tensor<T, Dev> value, grad;
        Parameter<T> p;
      };
      auto make = [&](std::string name, const ref::Matrix& full, Range r, Range c) {
        Owned o{upload<T>(dev, full.block(r.begin, c.begin, r.size(), c.size())),
                Tensor<T, Dev>(dev, r.size(), c.size()),
                {}};
        dev->fill(o.grad.view(), T(0));
        // The vector is flagged like a bias: no decay unless decay_vectors.
        o.p = {std::move(name), o.value.view(), o.grad.view(), full.rows, full.cols, r, c, 0, full.rows > 1};
        return o;
      };
      Owned by_rows = make("a", w0, rr, {0, cols}), by_cols = make("b", w0, {0, rows}, cr),
            vec = make("c", v0, {0, 1}, {0, cols});
      AdamW<T, Dev> opt(Context<Dev>(comm, dev), {by_rows.p, by_cols.p, vec.p},
                        {.lr = options.lr,
                         .beta1 = options.beta1,
                         .beta2 = options.beta2,
                         .eps = options.eps,
                         .weight_decay = options.weight_decay,
                         .decay_vectors = decay_vectors});
      for (int s = 0; s < steps; ++s) {
        for (Owned* o : {&by_rows, &by_cols, &vec}) {
          const ref::Matrix& g = o == &vec ? gv[s] : gw[s];
          const auto g_d =
              upload<T>(dev, g.block(o->p.rows.begin, o->p.cols.begin, o->p.rows.size(), o->p.cols.size()));
          dev->copy(g_d.view(), o->grad.view());
        }
        opt.step();
        EXPECT_EQ(opt.step_count(), s + 1);
        TP_EXPECT_CLOSE(T, download(*dev, by_rows.value), want_w[s].rows_range(rr.begin, rr.size()));
        TP_EXPECT_CLOSE(T, download(*dev, by_cols.value), want_w[s].cols_range(cr.begin, cr.size()));
        TP_EXPECT_CLOSE(T, download(*dev, vec.value), want_v[s]);
        const auto state = opt.state();  // exp_avg, exp_avg_sq of each parameter in turn
        TP_EXPECT_CLOSE(T, download<T>(*dev, ConstView<T>(state[0].value)), want_mw[s].rows_range(rr.begin, rr.size()));
        TP_EXPECT_CLOSE(T, download<T>(*dev, ConstView<T>(state[3].value)), want_vw[s].cols_range(cr.begin, cr.size()));
      }
      opt.zero_grad();
      EXPECT_EQ(download(*dev, by_rows.grad).data,
                std::vector<double>(static_cast<std::size_t>(rr.size() * cols), 0.0));
    });
  }
}

/// sum_squares in double on the device, and the gradient norm and clipping over sharded and
/// replicated gradients through it (the norm's all-reduce runs on a device buffer).
TYPED_TEST(AdamWTyped, GradNormAndClipMatchReference) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  constexpr std::int64_t rows = 300, cols = 70;  // 21000 elements: several blocks of partial sums
  const auto g = test::random_matrix<T>(rows, cols, ref::test_seed(1));
  const auto b = test::random_matrix<T>(1, cols, ref::test_seed(2));
  double sq = 0;
  for (double v : g.data) sq += v * v;
  double sq_b = 0;
  for (double v : b.data) sq_b += v * v;
  const double norm = std::sqrt(sq + sq_b), max_norm = norm / 4;
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    auto dev = std::make_shared<Dev>();
    const Range rr = partition(rows, comm->size(), comm->rank());
    auto g_d = upload<T>(dev, g.rows_range(rr.begin, rr.size()));
    auto b_d = upload<T>(dev, b);
    const ref::Matrix mine = g.rows_range(rr.begin, rr.size());
    double want_local = 0;
    for (double v : mine.data) want_local += v * v;
    EXPECT_NEAR(tp::ops::sum_squares<T>(*dev, g_d.view()), want_local, 1e-12 * want_local);
    EXPECT_NEAR(tp::ops::sum_squares<T>(*dev, g_d.view().cols_range(1, 0)), 0.0, 0.0);
    const Context<Dev> ctx(comm, dev);
    const std::vector<Parameter<T>> ps{{"w", g_d.view(), g_d.view(), rows, cols, rr, {0, cols}},
                                       {"b", b_d.view(), b_d.view(), 1, cols, {0, 1}, {0, cols}}};
    EXPECT_NEAR((grad_norm<T, Dev>(ctx, ps)), norm, 1e-12 * norm);
    EXPECT_NEAR((clip_grad_norm<T, Dev>(ctx, ps, max_norm)), norm, 1e-12 * norm);
    const double factor = max_norm / (norm + 1e-6);
    TP_EXPECT_CLOSE(T, download(*dev, g_d), ref::scale(mine, factor));
    TP_EXPECT_CLOSE(T, download(*dev, b_d), ref::scale(b, factor));
  });
}

#ifndef TP_TEST_CUDA  // the host-only training and option checks: once, in the host binaries

/// fc1 (column parallel, 7 -> 10) then fc2 (row parallel, 10 -> 5), loss 0.5 ||y - target||^2.
TEST(AdamW, TrainingAParallelPairTracksTheUnshardedReferenceStepByStep) {
  constexpr std::int64_t tokens = 6, in = 7, hidden = 10, out = 5;
  constexpr int steps = 5;
  ref::Matrix w1 = ref::scale(ref::random_matrix<float>(hidden, in, ref::test_seed(1)), 0.5);
  ref::Matrix b1 = ref::random_matrix<float>(1, hidden, ref::test_seed(2));
  ref::Matrix w2 = ref::scale(ref::random_matrix<float>(out, hidden, ref::test_seed(3)), 0.5);
  ref::Matrix b2 = ref::random_matrix<float>(1, out, ref::test_seed(4));
  // round the scaled weights through float, as the layers will hold them
  for (auto* m : {&w1, &w2}) *m = ref::map(*m, [](double v) { return double(float(v)); });
  std::vector<ref::Matrix> xs, targets;
  for (int s = 0; s < steps; ++s) {
    xs.push_back(ref::random_matrix<float>(tokens, in, ref::test_seed(100 + s)));
    targets.push_back(ref::random_matrix<float>(tokens, out, ref::test_seed(200 + s)));
  }
  const ref::Matrix w1_0 = w1, b1_0 = b1, w2_0 = w2, b2_0 = b2;
  std::vector<std::array<ref::Matrix, 4>> want;  // parameters after each step
  std::vector<double> want_norm;
  {
    ref::AdamWState s[4];
    for (int step = 0; step < steps; ++step) {
      const auto h = ref::add_bias(ref::matmul(xs[step], false, w1, true), b1);
      const auto y = ref::add_bias(ref::matmul(h, false, w2, true), b2);
      const auto dy = ref::add(y, ref::scale(targets[step], -1.0));
      const auto l2 = ref::linear(h, w2, &b2, dy);
      const auto l1 = ref::linear(xs[step], w1, &b1, l2.dx);
      double sq = 0;
      for (const auto* g : {&l1.dw, &l1.db, &l2.dw, &l2.db})
        for (double v : g->data) sq += v * v;
      want_norm.push_back(std::sqrt(sq));
      const auto& o = kOptions;
      ref::adamw_step(w1, l1.dw, s[0], o.lr, o.beta1, o.beta2, o.eps, o.weight_decay);
      ref::adamw_step(b1, l1.db, s[1], o.lr, o.beta1, o.beta2, o.eps, 0.0);  // vectors are not decayed
      ref::adamw_step(w2, l2.dw, s[2], o.lr, o.beta1, o.beta2, o.eps, o.weight_decay);
      ref::adamw_step(b2, l2.db, s[3], o.lr, o.beta1, o.beta2, o.eps, 0.0);
      want.push_back({w1, b1, w2, b2});
    }
  }
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    Context<> ctx(comm);
    ColumnParallelLinear<float> fc1(ctx, in, hidden, {.name = "fc1"});
    RowParallelLinear<float> fc2(ctx, hidden, out, {.name = "fc2"});
    fc1.load_full(ref::to_tensor<float>(w1_0), ref::to_tensor<float>(b1_0));
    fc2.load_full(ref::to_tensor<float>(w2_0), ref::to_tensor<float>(b2_0));
    auto params = fc1.parameters();
    for (auto& p : fc2.parameters()) params.push_back(p);
    AdamW<float> opt(ctx, params, kOptions);
    const Range mine = fc1.output_range();
    for (int step = 0; step < steps; ++step) {
      const auto x = ref::to_tensor<float>(xs[step]), t = ref::to_tensor<float>(targets[step]);
      const auto& h = fc1.forward(x.view());
      const auto& y = fc2.forward(h.view());
      Tensor<float, Cpu> dy(tokens, out);
      Cpu().copy(y.view(), dy.view());
      for (std::int64_t r = 0; r < tokens; ++r)
        for (std::int64_t c = 0; c < out; ++c) dy(r, c) -= t(r, c);
      fc1.backward(fc2.backward(dy.view()).view());
      EXPECT_NEAR(grad_norm<float>(ctx, params), want_norm[step], 1e-6 * want_norm[step]);
      opt.step();
      opt.zero_grad();
      SCOPED_TRACE(fmt::format("step {}", step + 1));
      TP_EXPECT_CLOSE(float, fc1.weight(), want[step][0].rows_range(mine.begin, mine.size()));
      TP_EXPECT_CLOSE(float, fc1.bias(), want[step][1].cols_range(mine.begin, mine.size()));
      TP_EXPECT_CLOSE(float, fc2.weight(), want[step][2].cols_range(fc2.input_range().begin, fc2.input_range().size()));
      TP_EXPECT_CLOSE(float, fc2.bias(), want[step][3]);
    }
  });
}

TEST(AdamW, ClipGradNormScalesEveryRankByTheGlobalNorm) {
  const auto g = ref::random_matrix<float>(6, 5, ref::test_seed(1));
  const auto v = ref::random_matrix<float>(1, 5, ref::test_seed(2));
  double sq = 0;
  for (double e : g.data) sq += e * e;
  for (double e : v.data) sq += e * e;
  const double norm = std::sqrt(sq);
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    const Range rr = partition(6, comm->size(), comm->rank());
    auto gw = ref::to_tensor<float>(g.rows_range(rr.begin, rr.size())), gv = ref::to_tensor<float>(v);
    Tensor<float, Cpu> w(rr.size(), 5), b(1, 5);
    std::vector<Parameter<float>> ps{{"w", w.view(), gw.view(), 6, 5, rr, {0, 5}},
                                     {"b", b.view(), gv.view(), 1, 5, {0, 1}, {0, 5}}};
    Context<> ctx(comm);
    EXPECT_NEAR(clip_grad_norm<float>(ctx, ps, 10 * norm), norm, 1e-6 * norm);  // no clipping
    TP_EXPECT_CLOSE(float, gv, v);
    EXPECT_NEAR(clip_grad_norm<float>(ctx, ps, 0.5 * norm), norm, 1e-6 * norm);
    TP_EXPECT_CLOSE(float, gw, ref::scale(g.rows_range(rr.begin, rr.size()), 0.5));
    TP_EXPECT_CLOSE(float, gv, ref::scale(v, 0.5));
    EXPECT_NEAR(grad_norm<float>(ctx, ps), 0.5 * norm, 1e-6 * norm);
  });
}

TEST(AdamW, RejectsBadOptionsAndMismatchedGradients) {
  run_local(1, [](std::shared_ptr<Communicator> comm) {
    Tensor<float, Cpu> w(2, 3), g(3, 2);
    EXPECT_THROW(AdamW<float>(Context<>(comm), {}, {.beta1 = 1.0}), InvalidArgument);
    EXPECT_THAT(
        [&] {
          AdamW<float>(Context<>(comm), {{"w", w.view(), g.view(), 2, 3, {0, 2}, {0, 3}}});
        },
        ::testing::ThrowsMessage<InvalidArgument>(HasSubstr("'w' is 2x3 but its gradient 3x2")));
  });
}

#endif  // TP_TEST_CUDA

}  // namespace
}  // namespace tp
