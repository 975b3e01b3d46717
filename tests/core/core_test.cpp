#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>

#include "common/reference.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

using ::testing::HasSubstr;

TEST(Partition, UnevenSplitsGiveTheFirstRanksOneMore) {
  EXPECT_EQ(partition_sizes(10, 3), (std::vector<std::int64_t>{4, 3, 3}));
  EXPECT_EQ(partition_sizes(7, 4), (std::vector<std::int64_t>{2, 2, 2, 1}));
  EXPECT_EQ(partition_sizes(2, 4), (std::vector<std::int64_t>{1, 1, 0, 0}));
  for (std::int64_t n : {0, 1, 5, 10, 50257})
    for (int world = 1; world <= 5; ++world) {
      std::int64_t next = 0;
      for (int r = 0; r < world; ++r) {
        const Range range = partition(n, world, r);
        EXPECT_EQ(range.begin, next) << n << " over " << world;
        EXPECT_LE(range.size() - partition(n, world, world - 1).size(), 1);
        next = range.end;
      }
      EXPECT_EQ(next, n);
    }
}

TEST(Partition, RejectsBadArgumentsWithTheirValues) {
  try {
    partition(10, 3, 3);
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_THAT(e.what(), HasSubstr("cannot partition 10 over world size 3 at rank 3"));
    EXPECT_THAT(e.what(), HasSubstr("partition.hpp:"));  // TP_CHECK names the throw site
  }
  EXPECT_THROW(partition_nonempty(2, 3, 0, "heads"), InvalidArgument);
}

TEST(Tensor, ViewsBlocksAndMoves) {
  Tensor<float, Cpu> t(3, 4);
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 4; ++c) t(r, c) = static_cast<float>(10 * r + c);
  const auto b = t.view().block(1, 1, 2, 2);
  EXPECT_EQ(b.ld, 4);
  EXPECT_FALSE(b.contiguous());
  EXPECT_EQ(b(1, 0), 21.f);
  EXPECT_THROW(t.view().block(2, 0, 2, 1), InvalidArgument);
  float* data = t.data();
  Tensor<float, Cpu> moved = std::move(t);
  EXPECT_EQ(moved.data(), data);
  EXPECT_EQ(t.data(), nullptr);
  moved.resize(2, 2);  // shrinking keeps the allocation
  EXPECT_EQ(moved.data(), data);
  EXPECT_THROW(moved.resize(-1, 2), InvalidArgument);
}

TEST(CpuDevice, GemmAgreesWithReferenceForEveryTransposeAndStride) {
  const auto a = ref::random_matrix<double>(6, 5, ref::test_seed(1));
  const auto b = ref::random_matrix<double>(5, 7, ref::test_seed(2));
  const auto want = ref::matmul(a, false, b, false);
  const Cpu cpu;
  // a and b embedded in larger matrices, so the leading dimensions differ from the widths
  Tensor<double, Cpu> big_a(8, 9), big_b(9, 9), at(5, 6), bt(7, 5), c(6, 7);
  for (int r = 0; r < 6; ++r)
    for (int k = 0; k < 5; ++k) big_a(r + 1, k + 2) = at(k, r) = a(r, k);
  for (int k = 0; k < 5; ++k)
    for (int n = 0; n < 7; ++n) big_b(k, n + 1) = bt(n, k) = b(k, n);
  const ConstView<double> av = big_a.view().block(1, 2, 6, 5), bv = big_b.view().block(0, 1, 5, 7);
  cpu.gemm(Op::n, Op::n, 1.0, av, bv, 0.0, c.view());
  TP_EXPECT_CLOSE(double, c, want);
  // alpha and beta against a C unrelated to AB, so that a GEMM ignoring either gives another result
  // (with C = AB, 2AB - C = AB passes whatever alpha and beta do).
  const auto c0 = ref::random_matrix<double>(6, 7, ref::test_seed(3));
  ref::Matrix want_ab = want;
  for (std::size_t i = 0; i < want_ab.data.size(); ++i) want_ab.data[i] = 2 * want.data[i] - 0.5 * c0.data[i];
  auto c1 = ref::to_tensor<double>(c0);
  cpu.gemm(Op::t, Op::t, 2.0, ConstView<double>(at), ConstView<double>(bt), -0.5, c1.view());
  TP_EXPECT_CLOSE(double, c1, want_ab);
  try {
    cpu.gemm(Op::n, Op::t, 1.0, av, bv, 0.0, c.view());
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_THAT(e.what(), HasSubstr("op(a) is 6x5, op(b) is 7x5, c is 6x7"));
  }
}

TEST(CpuDevice, GemmWithOneOrTwoRowsTakesTheGemvPathForEveryTranspose) {
  // m <= 2 runs one GEMV per row; m = 3 is the GEMM path, for comparison. A is embedded in a wider
  // matrix so its leading dimension differs from its width.
  const Cpu cpu;
  for (std::int64_t m : {1, 2, 3})
    for (Op op_a : {Op::n, Op::t})
      for (Op op_b : {Op::n, Op::t}) {
        const std::int64_t k = 9, n = 5;
        const bool ta = op_a == Op::t, tb = op_b == Op::t;
        const auto a = ref::random_matrix<double>(ta ? k : m, ta ? m : k, ref::test_seed(1));
        const auto b = ref::random_matrix<double>(tb ? n : k, tb ? k : n, ref::test_seed(2));
        const auto c0 = ref::random_matrix<double>(m, n, ref::test_seed(3));
        Tensor<double, Cpu> big_a(a.rows, a.cols + 3);
        for (std::int64_t r = 0; r < a.rows; ++r)
          for (std::int64_t col = 0; col < a.cols; ++col) big_a(r, col + 2) = a(r, col);
        const auto bt = ref::to_tensor<double>(b);
        auto c = ref::to_tensor<double>(c0);
        cpu.gemm(op_a, op_b, 2.0, ConstView<double>(big_a.view().block(0, 2, a.rows, a.cols)), bt.view(), -1.0, c.view());
        ref::Matrix want = ref::matmul(a, ta, b, tb);
        for (std::size_t i = 0; i < want.data.size(); ++i) want.data[i] = 2 * want.data[i] - c0.data[i];
        SCOPED_TRACE(fmt::format("m {} op_a {} op_b {}", m, ta ? "t" : "n", tb ? "t" : "n"));
        TP_EXPECT_CLOSE(double, c, want);
        auto cf = ref::to_tensor<float>(c0);
        const auto af = ref::to_tensor<float>(a), bf = ref::to_tensor<float>(b);
        cpu.gemm(op_a, op_b, 2.f, af.view(), bf.view(), -1.f, cf.view());
        TP_EXPECT_CLOSE(float, cf, want);
      }
}

TEST(Philox, CounterBasedAndKeyed) {
  const Philox a(42, name_key("fc1.weight")), b(42, name_key("fc2.weight")), c(43, name_key("fc1.weight"));
  EXPECT_EQ(a(123), a(123));
  EXPECT_NE(a(123), b(123));
  EXPECT_NE(a(123), c(123));
  std::set<float> seen;
  double mean = 0;
  for (std::uint64_t i = 0; i < 10000; ++i) {
    const float u = a.uniform(i);
    ASSERT_GE(u, 0.f);
    ASSERT_LT(u, 1.f);
    seen.insert(u);
    mean += u / 10000;
  }
  EXPECT_GT(seen.size(), 9900u);
  EXPECT_NEAR(mean, 0.5, 0.02);
}

}  // namespace
}  // namespace tp
