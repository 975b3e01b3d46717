/// Every library tp::Cpu runs float GEMMs on (OpenBLAS, and oneDNN where tp was built with it)
/// computes the product, on shapes past the size from which oneDNN takes over (32^3 multiply-adds):
/// every transpose, alpha and beta against an unrelated C, operands that are views into wider
/// matrices. Which library CpuGemm::automatic picks depends on the CPU, so each is tested by name.

#include <gtest/gtest.h>

#include <cmath>

#include "common/reference.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

/// x as a view into a float matrix 3 columns wider (leading dimension > columns).
Tensor<float, Cpu> wide_copy(const ref::Matrix& x) {
  Tensor<float, Cpu> t(x.rows, x.cols + 3);
  for (std::int64_t r = 0; r < x.rows; ++r)
    for (std::int64_t c = 0; c < x.cols + 3; ++c) t.data()[r * (x.cols + 3) + c] = c < x.cols ? float(x(r, c)) : 1e30f;
  return t;
}

ref::Matrix abs_of(ref::Matrix x) {
  for (auto& v : x.data) v = std::abs(v);
  return x;
}

TEST(CpuGemmLibrary, EveryLibraryComputesTheProduct) {
  std::vector<CpuGemm> libraries{CpuGemm::openblas};
  if (detail::has_dnnl) libraries.push_back(CpuGemm::onednn);
  const std::int64_t m = 37, n = 45, k = 70;  // 116550 multiply-adds
  const double alpha = 0.5, beta = -2.0;
  for (const CpuGemm library : libraries)
    for (const Op op_a : {Op::n, Op::t})
      for (const Op op_b : {Op::n, Op::t}) {
        const bool ta = op_a == Op::t, tb = op_b == Op::t;
        SCOPED_TRACE(fmt::format("library {} op_a {} op_b {}", library == CpuGemm::onednn ? "oneDNN" : "OpenBLAS",
                                 ta ? "t" : "n", tb ? "t" : "n"));
        const Cpu cpu({.gemm = library});
        ASSERT_EQ(cpu.gemm_library(), library);
        const auto a = ref::random_matrix<float>(ta ? k : m, ta ? m : k, ref::test_seed(1));
        const auto b = ref::random_matrix<float>(tb ? n : k, tb ? k : n, ref::test_seed(2));
        const auto c0 = ref::random_matrix<float>(m, n, ref::test_seed(3));
        const auto a_t = wide_copy(a), b_t = wide_copy(b);
        auto c_t = wide_copy(c0);
        const auto c_view = c_t.view().block(0, 0, m, n);
        cpu.gemm<float>(op_a, op_b, float(alpha), a_t.view().block(0, 0, a.rows, a.cols),
                        b_t.view().block(0, 0, b.rows, b.cols), float(beta), c_view);
        const auto product = ref::matmul(a, ta, b, tb);
        // The classical bound on a float GEMM's rounding, per element: a wrong transpose, alpha,
        // beta or leading dimension misses it by orders of magnitude.
        const auto abs_product = ref::matmul(abs_of(a), ta, abs_of(b), tb);
        for (std::int64_t i = 0; i < m; ++i)
          for (std::int64_t j = 0; j < n; ++j) {
            const double want = alpha * product(i, j) + beta * c0(i, j);
            const double bound = 2.0 * (k + 2) * 6e-8 * (alpha * abs_product(i, j) + std::abs(beta * c0(i, j)));
            ASSERT_LE(std::abs(double(c_view(i, j)) - want), bound) << "at (" << i << ", " << j << ")";
          }
        EXPECT_EQ(c_t.data()[n], 1e30f);  // the padding past each row is not written
      }
}

TEST(CpuGemmLibrary, AutomaticIsOneDnnExactlyOnAvx512WithOneDnn) {
  const Cpu cpu;
  EXPECT_EQ(cpu.gemm_library(), detail::has_dnnl && detail::cpu_has_avx512() ? CpuGemm::onednn : CpuGemm::openblas);
}

}  // namespace
}  // namespace tp
