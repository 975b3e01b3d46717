/// What only tp::Cuda has, or only it can get wrong, beside the shared layer and op bodies (which
/// run for tp::Cuda from their .cpp through generated .cu files; copies, element-wise ops and the
/// op shape checks are in tests/ops): the fused cuBLASLt epilogues, TF32 as an opt-in, the GEMM's
/// shape message, the layers' id checks through the device's first_outside, and the mapping of a
/// missing device to a CudaError. Without a GPU every test here reports skipped, with the reason;
/// the no-device error mapping runs instead.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/devices.hpp"
#include "common/harness.hpp"
#include "common/reference.hpp"
#include "tp/device/cuda.hpp"
#include "tp/layers/vocab_parallel_cross_entropy.hpp"
#include "tp/layers/vocab_parallel_embedding.hpp"

namespace tp {
namespace {

using test::download;
using test::on_ranks;
using test::upload;
using test::upload_ids;
using ::testing::HasSubstr;

template <class T>
class CudaParallelLinear : public ::testing::Test {};
using CudaFloats = ::testing::Types<float, __half, __nv_bfloat16>;
TYPED_TEST_SUITE(CudaParallelLinear, CudaFloats);

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

/// FP32 by default (errors of float rounding); TF32 only when asked, and then visibly so: its
/// 10-bit mantissa puts the error near 1e-4, far above FP32's and far below bf16's.
TEST(CudaDevice, Tf32IsOptIn) {
  TP_REQUIRE_CUDA();
  // Large enough that cuBLASLt picks tensor cores; k small enough that FP32 accumulation stays below 1e-6.
  const std::int64_t m = 512, n = 384, k = 256;
  const auto a = test::random_matrix<float>(m, k, ref::test_seed(1)),
             b = test::random_matrix<float>(n, k, ref::test_seed(2));
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

/// first_outside on the device: the layer names the first bad id and its position.
TEST(CudaBlocksErrors, EmbeddingIdOutsideTheVocabulary) {
  TP_REQUIRE_CUDA();
  on_ranks([](std::shared_ptr<Communicator> comm) {
    auto dev = std::make_shared<Cuda>();
    VocabParallelEmbedding<float, Cuda> emb(Context<Cuda>(comm, dev), 9, 4);
    const auto ids = upload_ids(dev, {1, 2, 8, 9, 3, -4}, 2, 3);
    try {
      emb.forward(ids.view());
      ADD_FAILURE() << "id 9 accepted in a vocabulary of 9";
    } catch (const InvalidArgument& e) {
      EXPECT_THAT(e.what(), HasSubstr("token id 9 at position 3 (row 1, column 0 of the 2x3 ids) is outside the "
                                      "vocabulary [0, 9)"));
    }
    EXPECT_EQ(tp::ops::first_outside(*dev, ids.view(), -4, 9, 9), -1);
    EXPECT_EQ(tp::ops::first_outside(*dev, ids.view(), 0, 9, 9), 5);
  });
}

TEST(CudaBlocksErrors, CrossEntropyTargetOutsideTheVocabulary) {
  TP_REQUIRE_CUDA();
  on_ranks([](std::shared_ptr<Communicator> comm) {
    auto dev = std::make_shared<Cuda>();
    VocabParallelCrossEntropy<float, Cuda> ce(Context<Cuda>(comm, dev), 5);
    const Range v = ce.vocab_range();
    Tensor<float, Cuda> logits(dev, 3, v.size());
    dev->fill(logits.view(), 0.25f);
    const auto targets = upload_ids(dev, {4, -100, 5}, 1, 3);
    try {
      ce.forward(logits.view(), targets.view());
      ADD_FAILURE() << "target 5 accepted in a vocabulary of 5";
    } catch (const InvalidArgument& e) {
      EXPECT_THAT(e.what(), HasSubstr("target 5 at position 2 is outside the vocabulary [0, 5)"));
    }
  });
}

static_assert(dtype_of<__half> == DType::f16 && dtype_of<__nv_bfloat16> == DType::bf16);

}  // namespace
}  // namespace tp
