/// The device GEMM's alpha and beta on every device and dtype (common/devices.hpp): C starts as a
/// matrix unrelated to AB, so a GEMM that ignored alpha, beta or C would give another result; the
/// GEMV path (one row) and the GEMM path, every transpose, and k = 0 (C = beta C = 0).

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>

#include "common/devices.hpp"
#include "common/reference.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

using test::download;
using test::upload;

template <class T>
class DeviceGemm : public ::testing::Test {};
TYPED_TEST_SUITE(DeviceGemm, test::AllFloats16);

TYPED_TEST(DeviceGemm, AlphaAndBetaScaleTheProductAndTheOldC) {
  using T = TypeParam;
  using Dev = test::TestDevice;
  TP_REQUIRE_DEVICE();
  auto dev = std::make_shared<Dev>();
  const std::int64_t k = 6, n = 4;
  for (const std::int64_t m : {1, 5})
    for (const Op op_a : {Op::n, Op::t})
      for (const Op op_b : {Op::n, Op::t})
        for (const auto [alpha, beta] : {std::pair{2.0, -0.5}, {0.5, 1.0}, {1.0, 0.0}}) {
          const bool ta = op_a == Op::t, tb = op_b == Op::t;
          SCOPED_TRACE(
              fmt::format("m {} op_a {} op_b {} alpha {} beta {}", m, ta ? "t" : "n", tb ? "t" : "n", alpha, beta));
          const auto a = test::random_matrix<T>(ta ? k : m, ta ? m : k, ref::test_seed(1));
          const auto b = test::random_matrix<T>(tb ? n : k, tb ? k : n, ref::test_seed(2));
          const auto c0 = test::random_matrix<T>(m, n, ref::test_seed(3));
          const auto a_d = upload<T>(dev, a), b_d = upload<T>(dev, b);
          auto c_d = upload<T>(dev, c0);
          dev->gemm(op_a, op_b, static_cast<T>(alpha), ConstView<T>(a_d.view()), ConstView<T>(b_d.view()),
                    static_cast<T>(beta), c_d.view());
          ref::Matrix want = ref::matmul(a, ta, b, tb);
          for (std::size_t i = 0; i < want.data.size(); ++i) want.data[i] = alpha * want.data[i] + beta * c0.data[i];
          TP_EXPECT_CLOSE(T, download(*dev, c_d), want);
        }
  // k = 0: the product is empty, C = beta C (beta 0: tp::Cuda offers k = 0 for beta 0 and 1 only).
  const auto c0 = test::random_matrix<T>(3, 4, ref::test_seed(4));
  auto c_d = upload<T>(dev, c0);
  Tensor<T, Dev> a0(dev, 3, 0), b0(dev, 0, 4);
  dev->gemm(Op::n, Op::n, T(1), ConstView<T>(a0.view()), ConstView<T>(b0.view()), T(0), c_d.view());
  TP_EXPECT_CLOSE(T, download(*dev, c_d), ref::Matrix(3, 4));
}

#ifndef TP_TEST_CUDA  // the CPU's two ways of running 16-bit GEMMs: once, in the host binaries

/// Both ways tp::Cpu runs bf16 GEMMs, forced through CpuOptions::half_gemm (oneDNN's bf16 matmul
/// where tp has oneDNN, and the fallback that widens to fp32), and f16's fallback, on shapes past
/// the small-GEMM cut-offs, every transpose, strided operands (blocks of wider matrices), with and
/// without beta: the products are summed in float and rounded once, so each element is within one
/// unit roundoff (2^-8 for bf16, 2^-11 for f16) of the exact result of the same rounded inputs, and
/// so is the normwise error checked here.
template <class T>
void check_half_gemm(CpuHalfGemm kind, double unit_roundoff) {
  Cpu cpu({.half_gemm = kind});
  if (kind != CpuHalfGemm::automatic) EXPECT_EQ(cpu.half_gemm(), kind);
  const std::int64_t n = 65, k = 129, pad = 3;
  for (const std::int64_t m : {3, 70})
    for (const Op op_a : {Op::n, Op::t})
      for (const Op op_b : {Op::n, Op::t})
        for (const double beta : {0.0, 1.0}) {
          const bool ta = op_a == Op::t, tb = op_b == Op::t;
          SCOPED_TRACE(fmt::format("m {} op_a {} op_b {} beta {}", m, ta ? "t" : "n", tb ? "t" : "n", beta));
          const auto a = test::random_matrix<T>(ta ? k : m, (ta ? m : k) + pad, ref::test_seed(11));
          const auto b = test::random_matrix<T>(tb ? n : k, (tb ? k : n) + pad, ref::test_seed(12));
          const auto c0 = test::random_matrix<T>(m, n, ref::test_seed(13));
          const auto a_t = ref::to_tensor<T>(a), b_t = ref::to_tensor<T>(b);
          auto c_t = ref::to_tensor<T>(c0);
          const ConstView<T> a_v = ConstView<T>(a_t.view()).block(0, 0, a.rows, a.cols - pad),
                             b_v = ConstView<T>(b_t.view()).block(0, 0, b.rows, b.cols - pad);
          cpu.gemm<T>(op_a, op_b, T(0.5), a_v, b_v, static_cast<T>(beta), c_t.view());
          ref::Matrix want =
              ref::matmul(a.block(0, 0, a.rows, a.cols - pad), ta, b.block(0, 0, b.rows, b.cols - pad), tb);
          for (std::size_t i = 0; i < want.data.size(); ++i) want.data[i] = 0.5 * want.data[i] + beta * c0.data[i];
          EXPECT_LE(ref::rel_error(ref::from_view<T>(c_t.view()), want), unit_roundoff);
        }
}

TEST(CpuHalfGemm, OneDnnAndTheFallbackRoundTheFloatProductOnce) {
  check_half_gemm<bf16>(CpuHalfGemm::fp32, 0x1p-8);
  check_half_gemm<f16>(CpuHalfGemm::fp32, 0x1p-11);
  check_half_gemm<bf16>(CpuHalfGemm::automatic, 0x1p-8);  // m 3 and 70: both sides of the rows rule
  if (!detail::has_dnnl) GTEST_SKIP() << "tp was built without oneDNN: only the fallback runs";
  check_half_gemm<bf16>(CpuHalfGemm::onednn, 0x1p-8);
  check_half_gemm<f16>(CpuHalfGemm::onednn, 0x1p-11);  // f16 takes the fallback whatever is asked
}

TEST(CpuHalfGemm, TheNamesSayWhichRuns) {
  EXPECT_THAT(Cpu::blas_name(), ::testing::HasSubstr("; bf16: "));
  EXPECT_THAT(Cpu::half_gemm_name(CpuHalfGemm::fp32), ::testing::HasSubstr("widened to fp32"));
  if (detail::has_dnnl)
    EXPECT_THAT(Cpu::half_gemm_name(CpuHalfGemm::onednn), ::testing::HasSubstr("bf16 matmul, fp32 accumulation"));
  // The rule: oneDNN where the CPU has bf16 instructions (unless TP_CPU_HALF_GEMM forces one).
  if (std::getenv("TP_CPU_HALF_GEMM") == nullptr)
    EXPECT_EQ(Cpu().half_gemm(),
              detail::has_dnnl && detail::cpu_has_bf16_dot() ? CpuHalfGemm::onednn : CpuHalfGemm::fp32);
  // With AVX512_BF16 alone, oneDNN only up to bf16_dot_max_rows rows, and the banner says so.
  if (detail::half_gemm_by_rows()) EXPECT_THAT(Cpu::blas_name(), ::testing::HasSubstr("up to 32 rows"));
}

#endif

}  // namespace
}  // namespace tp
