/// ColumnParallelLinear and RowParallelLinear, forward and backward, against the unsharded
/// reference in tests/common, for every device and dtype (common/devices.hpp: tp::Cpu float and
/// double; tp::Cuda float, half and bfloat16 from the same source through nvcc), on every rank of
/// every world size the harness runs (including feature counts the world size does not divide).
/// Packed for inference (pack_for_inference), their forward equals the unpacked one, and whatever
/// could change a packed weight throws.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <utility>

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

/// The devices a packed weight is checked on: tp::Cpu once per float GEMM library of this build
/// (oneDNN packs into its matmul's layout, OpenBLAS into w^T), the GPU once (nothing packed).
std::vector<std::shared_ptr<test::TestDevice>> packing_devices() {
#ifdef TP_TEST_CUDA
  return {std::make_shared<Cuda>()};
#else
  std::vector<std::shared_ptr<Cpu>> devices{std::make_shared<Cpu>(CpuOptions{.gemm = CpuGemm::openblas})};
  if (detail::has_dnnl) devices.push_back(std::make_shared<Cpu>(CpuOptions{.gemm = CpuGemm::onednn}));
  return devices;
#endif
}

/// Token counts on both sides of the streaming kernels' limit (16: decode, below, stays on the
/// plain weight), features split unevenly at world 3 (10 as 4, 3, 3; 7 as 3, 2, 2; 130 as 44, 43, 43).
constexpr Shape kPackedShapes[] = {{40, 12, 10}, {17, 7, 16}, {16, 33, 20}, {5, 12, 10}, {67, 96, 130}, {130, 64, 48}};

/// pack_for_inference: the column and row layers' forwards (with and without bias) equal their
/// unpacked forwards within the dtype's tolerance (not bitwise: the packed GEMM is another kernel),
/// and the unsharded reference, on every tp::Cpu GEMM library and instruction set; float weights
/// are really packed there (packed_bytes), the other types and the GPU keep the plain path.
TYPED_TEST(ParallelLinear, PackedForwardMatchesUnpacked) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  const auto devices_per_rank = packing_devices().size();
  for (std::size_t kind = 0; kind < devices_per_rank; ++kind)
    for (const Shape s : kPackedShapes)
      for (bool bias : {true, false}) {
        SCOPED_TRACE(fmt::format("device {} tokens {} in {} out {} bias {}", kind, s.tokens, s.in, s.out, bias));
        const auto x = test::random_matrix<T>(s.tokens, s.in, ref::test_seed(1));
        const auto w = test::random_matrix<T>(s.out, s.in, ref::test_seed(2));
        const auto b = test::random_matrix<T>(1, s.out, ref::test_seed(3));
        const auto want = ref::linear(x, w, bias ? &b : nullptr, ref::Matrix(s.tokens, s.out));
        const test::HostMatrix<T> w_h(w), b_h(b);
        on_ranks([&](std::shared_ptr<Communicator> comm) {
          const std::shared_ptr<Dev> dev = packing_devices()[kind];
          const Context<Dev> ctx(comm, dev);
          ColumnParallelLinear<T, Dev> col(ctx, s.in, s.out, {.bias = bias, .name = "col"});
          RowParallelLinear<T, Dev> row(ctx, s.in, s.out, {.bias = bias, .input_is_parallel = false, .name = "row"});
          col.load_full(w_h.view(), bias ? b_h.view() : ConstView<T>{});
          row.load_full(w_h.view(), bias ? b_h.view() : ConstView<T>{});
          const Range mine = col.output_range();
          const auto x_d = upload<T>(dev, x);
          test::for_each_cpu_isa([&] {
            const ref::Matrix col_plain = download(*dev, col.forward(x_d.view())),
                              row_plain = download(*dev, row.forward(x_d.view()));
            col.pack_for_inference();
            row.pack_for_inference();
            EXPECT_TRUE(col.packed_for_inference() && row.packed_for_inference());
#ifndef TP_TEST_CUDA
            if constexpr (std::is_same_v<T, float>) {
              EXPECT_GT(col.packed_bytes(), 0);
              EXPECT_GT(row.packed_bytes(), 0);
            } else {
              EXPECT_EQ(col.packed_bytes() + row.packed_bytes(), 0);
            }
#endif
            const auto& col_packed = col.forward(x_d.view());
            TP_EXPECT_CLOSE(T, download(*dev, col_packed), col_plain);
            TP_EXPECT_CLOSE(T, download(*dev, col_packed), want.y.cols_range(mine.begin, mine.size()));
            const auto& row_packed = row.forward(x_d.view());
            TP_EXPECT_CLOSE(T, download(*dev, row_packed), row_plain);
            TP_EXPECT_CLOSE(T, download(*dev, row_packed), want.y);
            col.unpack();
            row.unpack();
            EXPECT_FALSE(col.packed_for_inference() || row.packed_for_inference());
            EXPECT_EQ(col.packed_bytes() + row.packed_bytes(), 0);
          });
        });
      }
}

/// The rule that keeps a packed weight from going stale: while packed, parameters(), load_full,
/// the writable weight() and backward throw, naming the layer; the read-only weight() does not.
/// Unpacked, new weights load, and packing again forwards with them.
TYPED_TEST(ParallelLinear, PackedRefusesWritesUntilUnpacked) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  const Shape s{24, 12, 10};
  const auto x = test::random_matrix<T>(s.tokens, s.in, ref::test_seed(1));
  const auto w1 = test::random_matrix<T>(s.out, s.in, ref::test_seed(2));
  const auto w2 = test::random_matrix<T>(s.out, s.in, ref::test_seed(3));
  const auto b = test::random_matrix<T>(1, s.out, ref::test_seed(4));
  const auto want = ref::linear(x, w2, &b, ref::Matrix(s.tokens, s.out));
  const test::HostMatrix<T> w1_h(w1), w2_h(w2), b_h(b);
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    auto dev = std::make_shared<Dev>();
    const Context<Dev> ctx(comm, dev);
    ColumnParallelLinear<T, Dev> col(ctx, s.in, s.out, {.name = "fc1"});
    RowParallelLinear<T, Dev> row(ctx, s.in, s.out, {.input_is_parallel = false, .name = "fc2"});
    col.load_full(w1_h.view(), b_h.view());
    row.load_full(w1_h.view(), b_h.view());
    const auto x_d = upload<T>(dev, x);
    const auto dy_d = upload<T>(dev, ref::Matrix(s.tokens, s.out));
    col.pack_for_inference();
    row.pack_for_inference();
    col.forward(x_d.view());
    row.forward(x_d.view());
    const auto refused = [](std::string layer, std::string what) {
      return AllOf(HasSubstr(layer + ": " + what + " while the layer is packed for inference"),
                   HasSubstr("call unpack() first"));
    };
    EXPECT_THAT(error_of([&] { col.parameters(); }), refused("fc1", "parameters()"));
    EXPECT_THAT(error_of([&] { row.parameters(); }), refused("fc2", "parameters()"));
    EXPECT_THAT(error_of([&] { col.load_full(w2_h.view(), b_h.view()); }), refused("fc1", "load_full"));
    EXPECT_THAT(error_of([&] { row.load_full(w2_h.view(), b_h.view()); }), refused("fc2", "load_full"));
    EXPECT_THAT(error_of([&] { col.weight(); }), refused("fc1", "weight() (writable)"));
    EXPECT_THAT(error_of([&] { row.weight(); }), refused("fc2", "weight() (writable)"));
    EXPECT_THAT(error_of([&] { col.backward(dy_d.view().cols_range(0, col.output_range().size())); }),
                refused("fc1", "backward"));
    EXPECT_THAT(error_of([&] { row.backward(dy_d.view()); }), refused("fc2", "backward"));
    EXPECT_EQ(std::as_const(col).weight().data, col.packed_weight().source());
    EXPECT_EQ(std::as_const(row).weight().data, row.packed_weight().source());

    col.unpack();
    row.unpack();
    col.load_full(w2_h.view(), b_h.view());
    row.load_full(w2_h.view(), b_h.view());
    col.pack_for_inference();
    row.pack_for_inference();
    const Range mine = col.output_range();
    TP_EXPECT_CLOSE(T, download(*dev, col.forward(x_d.view())), want.y.cols_range(mine.begin, mine.size()));
    TP_EXPECT_CLOSE(T, download(*dev, row.forward(x_d.view())), want.y);
  });
}

#ifndef TP_TEST_CUDA  // device-independent checks: once, in the host binaries

/// A packed weight forwards only beside the weight it was packed from.
TEST(LayerErrors, PackedWeightOfAnotherTensor) {
  const auto dev = std::make_shared<Cpu>();
  Tensor<float, Cpu> x(dev, 20, 4), w(dev, 3, 4), other(dev, 3, 4), y(dev, 20, 3);
  dev->fill(x.view(), 1.0f);
  dev->fill(w.view(), 1.0f);
  dev->fill(other.view(), 2.0f);
  const auto packed = tp::ops::pack_weight<float>(dev, w.view());
  EXPECT_THAT(error_of([&] { tp::ops::linear_forward<float>(*dev, x.view(), other.view(), packed, {}, y.view()); }),
              HasSubstr("the packed weight is 3x4 packed from another tensor than w (3x4)"));
  EXPECT_THAT(error_of([&] { (void)tp::ops::pack_weight<float>(dev, ConstView<float>()); }),
              HasSubstr("pack_weight: w is 0x0"));
  tp::ops::linear_forward<float>(*dev, x.view(), w.view(), packed, {}, y.view());
  EXPECT_EQ(y(19, 2), 4.0f);
}


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
