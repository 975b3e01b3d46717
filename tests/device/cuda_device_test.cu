/// What only tp::Cuda has, or only it can get wrong, beside the shared layer and op bodies (which
/// run for tp::Cuda from their .cpp through generated .cu files; copies, element-wise ops and the
/// op shape checks are in tests/ops): the GEMM's shape message, the layers' id checks through the
/// device's first_outside, and the mapping of a missing device to a CudaError. The fused cuBLASLt
/// epilogues and TF32 have binaries of their own (cuda_epilogue_test.cu, cuda_tf32_test.cu). Without a GPU every test here reports skipped, with the reason;
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
