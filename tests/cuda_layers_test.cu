/// ColumnParallelLinear, RowParallelLinear and their pair with GELU on tp::Cuda, for float, __half
/// and __nv_bfloat16, against the double-precision reference in tests/common, on every rank of
/// every world size the harness runs (LocalCommunicator on one GPU: 1 to 4; NCCL: 1). Plus what
/// the device alone must get right: cuBLASLt epilogues, strided copies, errors. Without a GPU
/// every test here reports skipped, with the reason; the no-device error mapping runs instead.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/cuda_support.hpp"
#include "common/harness.hpp"
#include "common/reference.hpp"
#include "tp/comm/local_communicator.hpp"
#include "tp/device/cuda.hpp"
#include "tp/layers/column_parallel_linear.hpp"
#include "tp/layers/row_parallel_linear.hpp"

namespace tp {
namespace {

using ::testing::HasSubstr;
using test::download;
using test::on_ranks;
using test::upload;

struct Shape {
  std::int64_t tokens, in, out;
};
/// The CPU suite's shapes (uneven splits: 10 over 3 ranks is 4, 3, 3; 7 over 4 is 2, 2, 2, 1),
/// plus one large enough for tensor-core tiles with odd leading dimensions.
constexpr Shape kShapes[] = {{5, 12, 10}, {3, 7, 16}, {9, 16, 7}, {1, 4, 4}, {67, 96, 130}};

template <class T>
class CudaParallelLinear : public ::testing::Test {};
using CudaFloats = ::testing::Types<float, __half, __nv_bfloat16>;
TYPED_TEST_SUITE(CudaParallelLinear, CudaFloats);

TYPED_TEST(CudaParallelLinear, ColumnMatchesReference) {
  using T = TypeParam;
  TP_REQUIRE_CUDA();
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
          on_ranks([&](std::shared_ptr<Communicator> comm) {
            if (s.out < comm->size()) return;
            auto dev = std::make_shared<Cuda>();
            ColumnParallelLinear<T, Cuda> layer(Context<Cuda>(comm, dev), s.in, s.out,
                                                {.bias = bias, .gather_output = gather, .skip_bias_add = skip_bias});
            const Range mine = layer.output_range();
            const auto w_h = test::to_host_elements<T>(w), b_h = test::to_host_elements<T>(b);
            layer.load_full(ConstView<T>(w_h.data(), s.out, s.in),
                            bias ? ConstView<T>(b_h.data(), 1, s.out) : ConstView<T>{});
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

TYPED_TEST(CudaParallelLinear, RowMatchesReference) {
  using T = TypeParam;
  TP_REQUIRE_CUDA();
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
          on_ranks([&](std::shared_ptr<Communicator> comm) {
            if (s.in < comm->size()) return;
            auto dev = std::make_shared<Cuda>();
            RowParallelLinear<T, Cuda> layer(Context<Cuda>(comm, dev), s.in, s.out,
                                             {.bias = bias, .input_is_parallel = parallel_input, .skip_bias_add = skip_bias});
            const Range mine = layer.input_range();
            const auto w_h = test::to_host_elements<T>(w), b_h = test::to_host_elements<T>(b);
            layer.load_full(ConstView<T>(w_h.data(), s.out, s.in),
                            bias ? ConstView<T>(b_h.data(), 1, s.out) : ConstView<T>{});
            const auto x_d = upload<T>(dev, parallel_input ? x.cols_range(mine.begin, mine.size()) : x);
            TP_EXPECT_CLOSE(T, download(*dev, layer.forward(x_d.view())), want.y);

            const auto dy_d = upload<T>(dev, dy);
            const auto& dx = layer.backward(dy_d.view());
            TP_EXPECT_CLOSE(T, download(*dev, dx), parallel_input ? want.dx.cols_range(mine.begin, mine.size()) : want.dx);
            TP_EXPECT_CLOSE(T, download(*dev, layer.weight_grad()), want.dw.cols_range(mine.begin, mine.size()));
            if (bias) TP_EXPECT_CLOSE(T, download(*dev, layer.bias_grad()), want.db);
          });
        }
}

/// Column h -> 4h + 2, GELU, row 4h + 2 -> h: the MLP block, uneven over 3 and 4 ranks.
TYPED_TEST(CudaParallelLinear, ColumnGeluRowPairMatchesReference) {
  using T = TypeParam;
  TP_REQUIRE_CUDA();
  const std::int64_t tokens = 6, hidden = 8, ffn = 4 * hidden + 2;
  const auto x = test::random_matrix<T>(tokens, hidden, ref::test_seed(1));
  const auto w1 = test::random_matrix<T>(ffn, hidden, ref::test_seed(2));
  const auto b1 = test::random_matrix<T>(1, ffn, ref::test_seed(3));
  const auto w2 = test::random_matrix<T>(hidden, ffn, ref::test_seed(4));
  const auto b2 = test::random_matrix<T>(1, hidden, ref::test_seed(5));
  const auto dy = test::random_matrix<T>(tokens, hidden, ref::test_seed(6));
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
      auto dev = std::make_shared<Cuda>();
      Context<Cuda> ctx(comm, dev);
      ColumnParallelLinear<T, Cuda> fc1(ctx, hidden, ffn, {.name = "fc1"});
      RowParallelLinear<T, Cuda> fc2(ctx, ffn, hidden, {.name = "fc2"});
      const auto w1_h = test::to_host_elements<T>(w1), b1_h = test::to_host_elements<T>(b1);
      const auto w2_h = test::to_host_elements<T>(w2), b2_h = test::to_host_elements<T>(b2);
      fc1.load_full(ConstView<T>(w1_h.data(), ffn, hidden), ConstView<T>(b1_h.data(), 1, ffn));
      fc2.load_full(ConstView<T>(w2_h.data(), hidden, ffn), ConstView<T>(b2_h.data(), 1, hidden));
      const auto x_d = upload<T>(dev, x), dy_d = upload<T>(dev, dy);
      const auto& h_r = fc1.forward(x_d.view());
      Tensor<T, Cuda> a_r(dev, h_r.rows(), h_r.cols()), da_r(dev, h_r.rows(), h_r.cols());
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

/// The fused cuBLASLt epilogues against the reference, on one device: GELU(+bias) with the
/// pre-activation saved, its gradient through DGELU(+bias gradient), and the weight-gradient GEMM's
/// bias gradient (BGRADB). cuBLASLt's GELU is the tanh form.
TYPED_TEST(CudaParallelLinear, EpiloguesMatchReference) {
  using T = TypeParam;
  TP_REQUIRE_CUDA();
  const std::int64_t tokens = 32, in = 48, out = 64;  // aux ld must be a multiple of 8
  const auto x = test::random_matrix<T>(tokens, in, ref::test_seed(1));
  const auto w = test::random_matrix<T>(out, in, ref::test_seed(2));
  const auto b = test::random_matrix<T>(1, out, ref::test_seed(3));
  const auto g = test::random_matrix<T>(tokens, out, ref::test_seed(4));
  auto dev = std::make_shared<Cuda>();
  const auto x_d = upload<T>(dev, x), w_d = upload<T>(dev, w), b_d = upload<T>(dev, b), g_d = upload<T>(dev, g);
  Tensor<T, Cuda> y(dev, tokens, out), pre(dev, tokens, out), dpre(dev, tokens, out), db(dev, 1, out);

  const auto h = ref::add_bias(ref::matmul(x, false, w, true), b);
  tp::ops::gemm_bias<T>(*dev, Op::n, Op::t, T(1), x_d.view(), w_d.view(), T(0), y.view(), b_d.view());
  TP_EXPECT_CLOSE(T, download(*dev, y), h);

  tp::ops::gemm_epilogue<T>(*dev, Op::n, Op::t, T(1), x_d.view(), w_d.view(), T(0), y.view(),
                            {.kind = Epilogue::gelu_aux_bias, .bias = b_d.data(), .aux = pre.view()});
  TP_EXPECT_CLOSE(T, download(*dev, pre), h);
  TP_EXPECT_CLOSE(T, download(*dev, y), ref::map(h, [](double v) { return ref::gelu(v, true); }));

  // d pre = (g . I) * gelu'(pre): a GEMM with the identity keeps the test about the epilogue.
  const std::int64_t n = out;
  ref::Matrix eye(n, n);
  for (std::int64_t i = 0; i < n; ++i) eye(i, i) = 1.0;
  const auto eye_d = upload<T>(dev, eye);
  tp::ops::gemm_epilogue<T>(*dev, Op::n, Op::n, T(1), g_d.view(), eye_d.view(), T(0), dpre.view(),
                            {.kind = Epilogue::dgelu_bgrad, .bias_grad = db.data(), .aux = pre.view()});
  const auto pre_h = download(*dev, pre);
  ref::Matrix want_dpre = g;
  for (std::size_t i = 0; i < want_dpre.data.size(); ++i) want_dpre.data[i] *= ref::gelu_slope(pre_h.data[i], true);
  TP_EXPECT_CLOSE(T, download(*dev, dpre), want_dpre);
  TP_EXPECT_CLOSE(T, download(*dev, db), ref::column_sums(download(*dev, dpre)));

  // dW = g^T x with the bias gradient (column sums of g) from the same GEMM.
  Tensor<T, Cuda> dw(dev, out, in);
  tp::ops::gemm_epilogue<T>(*dev, Op::t, Op::n, T(1), g_d.view(), x_d.view(), T(0), dw.view(),
                            {.kind = Epilogue::bgrad_a, .bias_grad = db.data()});
  TP_EXPECT_CLOSE(T, download(*dev, dw), ref::matmul(g, true, x, false));
  TP_EXPECT_CLOSE(T, download(*dev, db), ref::column_sums(g));
}

TEST(CudaDevice, StridedCopiesAndElementwiseOps) {
  TP_REQUIRE_CUDA();
  auto dev = std::make_shared<Cuda>();
  const auto a = test::random_matrix<float>(7, 9, ref::test_seed(1)), b = test::random_matrix<float>(7, 9, ref::test_seed(2));
  auto a_d = upload<float>(dev, a), b_d = upload<float>(dev, b);
  // A 7x4 column block (ld 9) into the middle of another matrix.
  dev->copy<float>(a_d.view().cols_range(2, 4), b_d.view().cols_range(5, 4));
  ref::Matrix want = b;
  for (int r = 0; r < 7; ++r)
    for (int c = 0; c < 4; ++c) want(r, 5 + c) = a(r, 2 + c);
  TP_EXPECT_CLOSE(float, download(*dev, b_d), want);
  tp::ops::add<float>(*dev, a_d.view(), b_d.view());
  TP_EXPECT_CLOSE(float, download(*dev, b_d), ref::add(want, a));
  tp::ops::scale<float>(*dev, b_d.view().cols_range(0, 3), 0.0f);
  const auto scaled = download(*dev, b_d);
  for (int r = 0; r < 7; ++r) EXPECT_EQ(scaled(r, 0), 0.0);
  dev->fill<float>(b_d.view(), 2.5f);
  EXPECT_EQ(download(*dev, b_d)(6, 8), 2.5);
}

/// FP32 by default (errors of float rounding); TF32 only when asked, and then visibly so: its
/// 10-bit mantissa puts the error near 1e-4, far above FP32's and far below bf16's.
TEST(CudaDevice, Tf32IsOptIn) {
  TP_REQUIRE_CUDA();
  // Large enough that cuBLASLt picks tensor cores; k small enough that FP32 accumulation stays below 1e-6.
  const std::int64_t m = 512, n = 384, k = 256;
  const auto a = test::random_matrix<float>(m, k, ref::test_seed(1)), b = test::random_matrix<float>(n, k, ref::test_seed(2));
  const auto want = ref::matmul(a, false, b, true);
  for (bool tf32 : {false, true}) {
    auto dev = std::make_shared<Cuda>(CudaOptions{.tf32 = tf32});
    const auto a_d = upload<float>(dev, a), b_d = upload<float>(dev, b);
    Tensor<float, Cuda> c(dev, m, n);
    dev->gemm<float>(Op::n, Op::t, 1.f, a_d.view(), b_d.view(), 0.f, c.view());
    const double err = ref::rel_error(download(*dev, c), want);
    if (tf32) {
      EXPECT_LE(err, 5e-3) << "tf32";
      EXPECT_GT(err, 1e-5) << "tf32 was asked for but the GEMM ran in full FP32";
    } else {
      EXPECT_LE(err, ref::tolerance<float>) << "fp32";
    }
  }
}

TEST(CudaDevice, BadShapesNameTheSizes) {
  TP_REQUIRE_CUDA();
  Cuda dev;
  Tensor<float, Cuda> a(std::shared_ptr<Cuda>(&dev, [](Cuda*) {}), 3, 4), c(a.device_ptr(), 3, 5);
  try {
    dev.gemm<float>(Op::n, Op::n, 1.f, a.view(), a.view(), 0.f, c.view());
    ADD_FAILURE() << "gemm accepted mismatched shapes";
  } catch (const InvalidArgument& e) {
    EXPECT_THAT(e.what(), HasSubstr("op(a) is 3x4, op(b) is 3x4, c is 3x5"));
  }
  EXPECT_THROW(tp::ops::add<float>(dev, a.view(), c.view()), InvalidArgument);
}

/// Without a GPU this is the test that runs: the driver's failure becomes a CudaError that says
/// there is no device and why, not a crash.
TEST(CudaDevice, NoDeviceIsACudaErrorNamingTheCause) {
  const std::string why = test::no_cuda_device_reason();
  if (why.empty()) GTEST_SKIP() << "a CUDA device is present; this test covers machines without one";
  try {
    Cuda dev;
    ADD_FAILURE() << "tp::Cuda constructed without a device";
  } catch (const CudaError& e) {
    EXPECT_THAT(e.what(), HasSubstr("no CUDA device"));
    EXPECT_THAT(e.what(), HasSubstr("cudaGetDeviceCount"));
  }
  EXPECT_EQ(Cuda::device_count(), 0);
}

static_assert(dtype_of<__half> == DType::f16 && dtype_of<__nv_bfloat16> == DType::bf16);

}  // namespace
}  // namespace tp
