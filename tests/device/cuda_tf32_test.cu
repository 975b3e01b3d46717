/// TF32 as an opt-in of tp::Cuda, in a binary of its own (tp_cuda_tf32_tests): the float GEMM
/// through cuBLASLt's TF32 compute type is a path no other test takes, and a CUDA error there must
/// not fail the tests that would share its process. Without a GPU it reports skipped.

#include <gtest/gtest.h>

#include "common/devices.hpp"
#include "common/harness.hpp"
#include "common/reference.hpp"
#include "tp/device/cuda.hpp"

namespace tp {
namespace {

using test::download;
using test::upload;

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

}  // namespace
}  // namespace tp
