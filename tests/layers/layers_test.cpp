/// ColumnParallelLinear and RowParallelLinear, forward and backward, against the unsharded
/// reference in tests/common, for every device and dtype (common/devices.hpp: tp::Cpu float and
/// double; tp::Cuda float, half and bfloat16 from the same source through nvcc), on every rank of
/// every world size the harness runs (including feature counts the world size does not divide).

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/devices.hpp"
#include "common/harness.hpp"
#include "common/reference.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

using test::download;
using test::error_of;
using test::on_ranks;
using test::upload;
using ::testing::HasSubstr;

struct Shape {
  std::int64_t tokens, in, out;
};
/// Square, wide, narrow and prime sizes: 10 features over 3 ranks split 4, 3, 3; 7 over 4 as 2, 2, 2, 1;
/// and one large enough for tensor-core tiles with odd leading dimensions.
constexpr Shape kShapes[] = {{5, 12, 10}, {3, 7, 16}, {9, 16, 7}, {1, 4, 4}, {67, 96, 130}};

template <class T>
class ParallelLinear : public ::testing::Test {};
TYPED_TEST_SUITE(ParallelLinear, test::BlockFloatsBf16);

TYPED_TEST(ParallelLinear, ColumnMatchesReference) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  for (const Shape s : kShapes)
    for (bool bias : {true, false})
      for (bool gather : {false, true})
        for (bool skip_bias : {false, true}) {
          SCOPED_TRACE(fmt::format("tokens {} in {} out {} bias {} gather {} skip_bias_add {}", s.tokens, s.in, s.out,
                                   bias, gather, skip_bias));
          const auto x = test::random_matrix<T>(s.tokens, s.in, ref::test_seed(1));
          const auto w = test::random_matrix<T>(s.out, s.in, ref::test_seed(2));
          const auto b = test::random_matrix<T>(1, s.out, ref::test_seed(3));
          const auto dy = test::random_matrix<T>(s.tokens, s.out, ref::test_seed(4));
          const auto want = ref::linear(x, w, bias && !skip_bias ? &b : nullptr, dy);
          const test::HostMatrix<T> w_h(w), b_h(b);
          on_ranks([&](std::shared_ptr<Communicator> comm) {
            if (s.out < comm->size()) return;  // covered by the error tests
            auto dev = std::make_shared<Dev>();
            ColumnParallelLinear<T, Dev> layer(Context<Dev>(comm, dev), s.in, s.out,
                                               {.bias = bias, .gather_output = gather, .skip_bias_add = skip_bias});
            const Range mine = layer.output_range();
            EXPECT_EQ(mine, partition(s.out, comm->size(), comm->rank()));
            layer.load_full(w_h.view(), bias ? b_h.view() : ConstView<T>{});
            const auto x_d = upload<T>(dev, x);

            const auto& y = layer.forward(x_d.view());
            TP_EXPECT_CLOSE(T, download(*dev, y), gather ? want.y : want.y.cols_range(mine.begin, mine.size()));

            const auto dy_d = upload<T>(dev, gather ? dy : dy.cols_range(mine.begin, mine.size()));
            const auto& dx = layer.backward(dy_d.view());
            TP_EXPECT_CLOSE(T, download(*dev, dx), want.dx);
            TP_EXPECT_CLOSE(T, download(*dev, layer.weight_grad()), want.dw.rows_range(mine.begin, mine.size()));
            if (bias)
              TP_EXPECT_CLOSE(T, download(*dev, layer.bias_grad()), want.db.cols_range(mine.begin, mine.size()));
          });
        }
}

TYPED_TEST(ParallelLinear, RowMatchesReference) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  for (const Shape s : kShapes)
    for (bool bias : {true, false})
      for (bool parallel_input : {true, false})
        for (bool skip_bias : {false, true}) {
          SCOPED_TRACE(fmt::format("tokens {} in {} out {} bias {} input_is_parallel {} skip_bias_add {}", s.tokens,
                                   s.in, s.out, bias, parallel_input, skip_bias));
          const auto x = test::random_matrix<T>(s.tokens, s.in, ref::test_seed(1));
          const auto w = test::random_matrix<T>(s.out, s.in, ref::test_seed(2));
          const auto b = test::random_matrix<T>(1, s.out, ref::test_seed(3));
          const auto dy = test::random_matrix<T>(s.tokens, s.out, ref::test_seed(4));
          const auto want = ref::linear(x, w, bias && !skip_bias ? &b : nullptr, dy);
          const test::HostMatrix<T> w_h(w), b_h(b);
          on_ranks([&](std::shared_ptr<Communicator> comm) {
            if (s.in < comm->size()) return;
            auto dev = std::make_shared<Dev>();
            RowParallelLinear<T, Dev> layer(
                Context<Dev>(comm, dev), s.in, s.out,
                {.bias = bias, .input_is_parallel = parallel_input, .skip_bias_add = skip_bias});
            const Range mine = layer.input_range();
            EXPECT_EQ(mine, partition(s.in, comm->size(), comm->rank()));
            layer.load_full(w_h.view(), bias ? b_h.view() : ConstView<T>{});

            const auto x_d = upload<T>(dev, parallel_input ? x.cols_range(mine.begin, mine.size()) : x);
            TP_EXPECT_CLOSE(T, download(*dev, layer.forward(x_d.view())), want.y);

            const auto dy_d = upload<T>(dev, dy);
            const auto& dx = layer.backward(dy_d.view());
            TP_EXPECT_CLOSE(T, download(*dev, dx),
                            parallel_input ? want.dx.cols_range(mine.begin, mine.size()) : want.dx);
            TP_EXPECT_CLOSE(T, download(*dev, layer.weight_grad()), want.dw.cols_range(mine.begin, mine.size()));
            if (bias) TP_EXPECT_CLOSE(T, download(*dev, layer.bias_grad()), want.db);
          });
        }
}

TYPED_TEST(ParallelLinear, GradientsAccumulateUntilZeroed) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  const Shape s{4, 10, 6};
  const auto x = test::random_matrix<T>(s.tokens, s.in, ref::test_seed(1));
  const auto w = test::random_matrix<T>(s.out, s.in, ref::test_seed(2));
  const auto dy1 = test::random_matrix<T>(s.tokens, s.out, ref::test_seed(3));
  const auto dy2 = test::random_matrix<T>(s.tokens, s.out, ref::test_seed(4));
  const auto step1 = ref::linear(x, w, nullptr, dy1), step2 = ref::linear(x, w, nullptr, dy2);
  const test::HostMatrix<T> w_h(w), zeros(ref::Matrix(1, s.out));
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    auto dev = std::make_shared<Dev>();
    RowParallelLinear<T, Dev> row(Context<Dev>(comm, dev), s.in, s.out, {.input_is_parallel = false});
    ColumnParallelLinear<T, Dev> col(Context<Dev>(comm, dev), s.in, s.out, {.gather_output = true});
    row.load_full(w_h.view(), zeros.view());
    col.load_full(w_h.view(), zeros.view());
    const auto x_d = upload<T>(dev, x);
    for (const auto* dy : {&dy1, &dy2}) {
      const auto dy_d = upload<T>(dev, *dy);
      row.forward(x_d.view());
      row.backward(dy_d.view());
      col.forward(x_d.view());
      col.backward(dy_d.view());
    }
    const Range r = row.input_range(), c = col.output_range();
    const auto dw = ref::add(step1.dw, step2.dw), db = ref::add(step1.db, step2.db);
    TP_EXPECT_CLOSE(T, download(*dev, row.weight_grad()), dw.cols_range(r.begin, r.size()));
    TP_EXPECT_CLOSE(T, download(*dev, row.bias_grad()), db);
    TP_EXPECT_CLOSE(T, download(*dev, col.weight_grad()), dw.rows_range(c.begin, c.size()));
    TP_EXPECT_CLOSE(T, download(*dev, col.bias_grad()), db.cols_range(c.begin, c.size()));
    row.zero_grad();
    col.zero_grad();
    TP_EXPECT_CLOSE(T, download(*dev, row.weight_grad()), ref::Matrix(s.out, r.size()));
    TP_EXPECT_CLOSE(T, download(*dev, col.bias_grad()), ref::Matrix(1, c.size()));
  });
}

/// Column h -> 4h + 2, GELU, row 4h + 2 -> h: one all-reduce forward (row) and one backward
/// (column); 34 features over 3 and 4 ranks is uneven.
TYPED_TEST(ParallelLinear, ColumnGeluRowPairMatchesReference) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  const std::int64_t tokens = 6, hidden = 8, ffn = 4 * hidden + 2;
  const auto x = test::random_matrix<T>(tokens, hidden, ref::test_seed(1));
  const auto w1 = test::random_matrix<T>(ffn, hidden, ref::test_seed(2));
  const auto b1 = test::random_matrix<T>(1, ffn, ref::test_seed(3));
  const auto w2 = test::random_matrix<T>(hidden, ffn, ref::test_seed(4));
  const auto b2 = test::random_matrix<T>(1, hidden, ref::test_seed(5));
  const auto dy = test::random_matrix<T>(tokens, hidden, ref::test_seed(6));
  const test::HostMatrix<T> w1_h(w1), b1_h(b1), w2_h(w2), b2_h(b2);
  for (Gelu kind : {Gelu::exact, Gelu::tanh}) {
    SCOPED_TRACE(kind == Gelu::tanh ? "gelu tanh" : "gelu exact");
    const bool tanh = kind == Gelu::tanh;
    const auto h = ref::add_bias(ref::matmul(x, false, w1, true), b1);
    const auto a = ref::map(h, [&](double v) { return ref::gelu(v, tanh); });
    const auto second = ref::linear(a, w2, &b2, dy);
    ref::Matrix dh = second.dx;
    for (std::size_t i = 0; i < dh.data.size(); ++i) dh.data[i] *= ref::gelu_slope(h.data[i], tanh);
    const auto first = ref::linear(x, w1, &b1, dh);
    on_ranks([&](std::shared_ptr<Communicator> comm) {
      auto dev = std::make_shared<Dev>();
      Context<Dev> ctx(comm, dev);
      ColumnParallelLinear<T, Dev> fc1(ctx, hidden, ffn, {.name = "fc1"});
      RowParallelLinear<T, Dev> fc2(ctx, ffn, hidden, {.name = "fc2"});
      fc1.load_full(w1_h.view(), b1_h.view());
      fc2.load_full(w2_h.view(), b2_h.view());
      const auto x_d = upload<T>(dev, x), dy_d = upload<T>(dev, dy);
      const auto& h_r = fc1.forward(x_d.view());
      Tensor<T, Dev> a_r(dev, h_r.rows(), h_r.cols()), da_r(dev, h_r.rows(), h_r.cols());
      tp::ops::gelu(*dev, h_r.view(), a_r.view(), kind);
      TP_EXPECT_CLOSE(T, download(*dev, fc2.forward(a_r.view())), second.y);
      const auto& dga = fc2.backward(dy_d.view());
      tp::ops::gelu_backward(*dev, h_r.view(), dga.view(), da_r.view(), kind);
      TP_EXPECT_CLOSE(T, download(*dev, fc1.backward(da_r.view())), first.dx);
      const Range c = fc1.output_range();
      TP_EXPECT_CLOSE(T, download(*dev, fc1.weight_grad()), first.dw.rows_range(c.begin, c.size()));
      TP_EXPECT_CLOSE(T, download(*dev, fc1.bias_grad()), first.db.cols_range(c.begin, c.size()));
      TP_EXPECT_CLOSE(T, download(*dev, fc2.weight_grad()), second.dw.cols_range(c.begin, c.size()));
      TP_EXPECT_CLOSE(T, download(*dev, fc2.bias_grad()), second.db);
    });
  }
}

#ifndef TP_TEST_CUDA  // device-independent checks: once, in the host binaries

/// The seed notebook's example: X = [[0,1,2,3],[4,5,6,7]], A = [[10,14],[11,15],[12,16],[13,17]],
/// Y = X A = [[74,98],[258,346]] through either split, exactly.
TEST(SeedExample, ColumnAndRowGiveTheSeedProduct) {
  on_ranks([](std::shared_ptr<Communicator> comm) {
    if (comm->size() > 2) return;          // two output features, four inputs
    Tensor<double, Cpu> x(2, 4), w(2, 4);  // w = A^T, stored [out, in]
    for (int r = 0; r < 2; ++r)
      for (int c = 0; c < 4; ++c) {
        x(r, c) = 4 * r + c;
        w(r, c) = 10 + c + 4 * r;
      }
    const double want[2][2] = {{74, 98}, {258, 346}};
    ColumnParallelLinear<double> col(Context<>(comm), 4, 2, {.bias = false, .gather_output = true});
    RowParallelLinear<double> row(Context<>(comm), 4, 2, {.bias = false, .input_is_parallel = false});
    col.load_full(w);
    row.load_full(w);
    const auto& yc = col.forward(x);
    const auto& yr = row.forward(x);
    for (int r = 0; r < 2; ++r)
      for (int c = 0; c < 2; ++c) {
        EXPECT_EQ(yc(r, c), want[r][c]);
        EXPECT_EQ(yr(r, c), want[r][c]);
      }
  });
}

TEST(LayerErrors, BadShapesNameTheSizes) {
  on_ranks([](std::shared_ptr<Communicator> comm) {
    const int world = comm->size();
    Context<> ctx(comm);
    ColumnParallelLinear<float> col(ctx, 8, 12);
    RowParallelLinear<float> row(ctx, 12, 8);
    Tensor<float, Cpu> wrong_width(3, 9);
    ctx.device->fill(wrong_width.view(), 1.5f);
    EXPECT_THAT(error_of([&] { col.forward(wrong_width); }), HasSubstr("input is 3x9, expected [tokens > 0, 8]"));
    EXPECT_THAT(error_of([&] { row.forward(wrong_width); }), HasSubstr("input is 3x9"));
    EXPECT_THAT(error_of([&] { col.backward(wrong_width); }), HasSubstr("backward called before forward"));

    Tensor<float, Cpu> x(3, 8);
    ctx.device->fill(x.view(), 0.5f);
    col.forward(x);
    Tensor<float, Cpu> bad_grad(3, 13);
    ctx.device->fill(bad_grad.view(), 1.0f);
    EXPECT_THAT(error_of([&] { col.backward(bad_grad); }),
                HasSubstr(fmt::format("output gradient is 3x13, expected 3x{}", col.output_range().size())));

    EXPECT_THAT(error_of([&] { ColumnParallelLinear<float>(ctx, 0, 4); }),
                HasSubstr("in_features must be positive, got 0"));
    EXPECT_THAT(error_of([&] { RowParallelLinear<float>(ctx, 4, 0); }),
                HasSubstr("out_features must be positive, got 0"));
    EXPECT_THAT(error_of([&] { ColumnParallelLinear<float>(ctx, 4, 0); }),
                HasSubstr("out_features = 0 cannot be split"));
    Tensor<float, Cpu> no_tokens(0, 8);
    EXPECT_THAT(error_of([&] { col.forward(no_tokens); }), HasSubstr("input is 0x8"));
    if (world > 2)
      EXPECT_THAT(error_of([&] { ColumnParallelLinear<float>(ctx, 4, 2); }),
                  HasSubstr(fmt::format("out_features = 2 cannot be split over {} ranks", world)));
  });
}

TEST(LayerErrors, WeightShardFromAnotherWorldSize) {
  on_ranks([](std::shared_ptr<Communicator> comm) {
    const int world = comm->size(), rank = comm->rank(), other = world == 1 ? 2 : world - 1;
    ColumnParallelLinear<float> col(Context<>(comm), 4, 10, {.name = "fc1"});
    // The shard rank `rank % other` held when the checkpoint was written at world size `other`.
    const Range saved = partition(10, other, rank % other), mine = col.output_range();
    Tensor<float, Cpu> shard(saved.size(), 4);
    Cpu().fill(shard.view(), 0.25f);
    const auto p = col.parameters().front();
    if (saved.size() == mine.size()) {
      EXPECT_NO_THROW(load_shard(Cpu(), p, ConstView<float>(shard)));
    } else {
      EXPECT_THAT(error_of([&] { load_shard(Cpu(), p, ConstView<float>(shard)); }),
                  HasSubstr(fmt::format("fc1.weight: shard is {}x4, but this rank holds rows [{}, {})", saved.size(),
                                        mine.begin, mine.end)));
    }
    Tensor<float, Cpu> full(9, 4);
    EXPECT_THAT(error_of([&] { col.load_full(full, full); }), HasSubstr("full tensor is 9x4, the layer expects 10x4"));
  });
}

#endif  // TP_TEST_CUDA

}  // namespace
}  // namespace tp
