#pragma once
/// One test body for every device. A typed test runs over a dtype list (AllFloats, BlockFloats, and
/// the lists with the host's 16-bit types, BlockFloatsBf16 and AllFloats16) on
/// TestDevice and moves its reference matrices with upload and download, so the same source checks
/// tp::Cpu and tp::Cuda. Compiled by the host compiler it instantiates tp::Cpu with float and
/// double; tests/CMakeLists.txt also compiles it through a generated .cu with TP_TEST_CUDA
/// defined, and then it instantiates tp::Cuda with the CUDA types instead (the CPU cases already
/// run in the host binaries; a GPU machine's time goes to the GPU cases).

#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "common/reference.hpp"
#include "tp/core/parameter.hpp"
#include "tp/core/tensor.hpp"
#include "tp/device/cpu.hpp"
#include "tp/device/cpu/simd.hpp"
#ifdef TP_TEST_CUDA
#include "common/cuda_support.hpp"
#include "tp/device/cuda.hpp"
#endif

namespace tp::test {

#ifdef TP_TEST_CUDA
/// The device every typed body of this translation unit runs on. One per translation unit, not a
/// second type parameter, so that the test names stay Suite.Test<dtype> on every device (ctest
/// adds the binary's prefix: cuda., nccl.).
using TestDevice = Cuda;
/// Every floating type a layer is built for.
using AllFloats = ::testing::Types<float, __half, __nv_bfloat16>;
/// The blocks and the optimizer: 32-bit and bf16, the training types (fp16 training needs loss
/// scaling, which these tests do not model).
using BlockFloats = ::testing::Types<float, __nv_bfloat16>;
/// The lists of the bodies that also run the host's 16-bit types on the CPU (below); on the GPU
/// the lists above already hold CUDA's.
using BlockFloatsBf16 = BlockFloats;
using AllFloats16 = AllFloats;
/// Skips the test, with the reason, when the device it needs is absent.
#define TP_REQUIRE_DEVICE() TP_REQUIRE_CUDA()
#else
using TestDevice = Cpu;
using AllFloats = ::testing::Types<float, double>;
using BlockFloats = AllFloats;
/// tp::bf16 (and tp::f16 for the GEMM and linear ops) on the CPU, in a subset of the bodies
/// (column/row linear, embedding, LayerNorm, RMSNorm, cross-entropy, MLP, attention), since each
/// type added to a body's list costs its compile time again. The MLP's and attention's bf16
/// results (bias sums over few tokens that cancel) come to 1.1e-2 to 1.5e-2 against the float
/// reference, past the flat 1e-2: they compare within ref::reduction_tolerance, which derives the
/// bound from bf16's unit roundoff and the reduction's length.
using BlockFloatsBf16 = ::testing::Types<float, double, bf16>;
using AllFloats16 = ::testing::Types<float, double, bf16, f16>;
#define TP_REQUIRE_DEVICE() \
  do {                      \
  } while (0)
#endif

/// Runs `body` once for each instruction set tp::Cpu's vectorized loops are compiled for and this
/// CPU runs (tp/device/cpu/simd.hpp), forced on the calling thread and named in failures, so that
/// an AVX-512 machine checks the AVX2 and baseline code too; once on CUDA.
template <class F>
void for_each_cpu_isa(F&& body) {
#ifdef TP_TEST_CUDA
  body();
#else
  for (const detail::simd::Isa isa : detail::simd::runnable_isas()) {
    SCOPED_TRACE(fmt::format("TP_CPU_ISA={}", detail::simd::isa_name(isa)));
    const detail::simd::ScopedIsa forced(isa);
    body();
  }
#endif
}

/// A host value of any test type as double (a plain static_cast is ambiguous for the 16-bit types).
template <class T>
double to_double(T v) {
#ifdef TP_TEST_CUDA
  return detail::to_double(v);
#else
  return static_cast<double>(v);
#endif
}

/// `m` rounded through T, as a layer holding T sees it.
template <class T>
ref::Matrix rounded(ref::Matrix m) {
  for (auto& v : m.data) v = to_double(static_cast<T>(v));
  return m;
}

/// Standard-normal entries rounded through T: the same values as ref::random_matrix<T>, for any T.
template <class T>
ref::Matrix random_matrix(std::int64_t rows, std::int64_t cols, std::uint64_t seed) {
  return rounded<T>(ref::random_matrix<double>(rows, cols, seed));
}

template <class T>
std::vector<T> to_host_elements(const ref::Matrix& m) {
  std::vector<T> host(m.data.size());
  for (std::size_t i = 0; i < host.size(); ++i) host[i] = static_cast<T>(m.data[i]);
  return host;
}

/// Host elements of `m` in T, kept alive for a load_full that reads them as a host ConstView.
template <class T>
struct HostMatrix {
  explicit HostMatrix(const ref::Matrix& m) : rows(m.rows), cols(m.cols), data(to_host_elements<T>(m)) {}
  ConstView<T> view() const { return ConstView<T>(data.data(), rows, cols); }
  std::int64_t rows, cols;
  std::vector<T> data;
};

/// A device tensor holding `m` (rounded to T).
template <class T, class Device>
Tensor<T, Device> upload(const std::shared_ptr<Device>& dev, const ref::Matrix& m) {
  Tensor<T, Device> t(dev, m.rows, m.cols);
  const auto host = to_host_elements<T>(m);
  dev->from_host(ConstView<T>(host.data(), m.rows, m.cols), t.view());
  return t;
}

/// Token ids (rows * cols == ids.size()) as a device tensor.
template <class Device>
Tensor<std::int64_t, Device> upload_ids(const std::shared_ptr<Device>& dev, const std::vector<std::int64_t>& ids,
                                        std::int64_t rows, std::int64_t cols) {
  Tensor<std::int64_t, Device> t(dev, rows, cols);
  dev->from_host(ConstView<std::int64_t>(ids.data(), rows, cols), t.view());
  return t;
}

/// A device view read back as a double matrix.
template <class T, class Device>
ref::Matrix download(const Device& dev, ConstView<T> v) {
  std::vector<T> host(static_cast<std::size_t>(v.size()));
  dev.to_host(v, MatrixView<T>(host.data(), v.rows, v.cols));
  ref::Matrix m(v.rows, v.cols);
  for (std::size_t i = 0; i < host.size(); ++i) m.data[i] = to_double(host[i]);
  return m;
}
template <class T, class Device>
ref::Matrix download(const Device& dev, const Tensor<T, Device>& t) {
  return download<T>(dev, t.view());
}
template <class T, class Device>
ref::Matrix download(const Device& dev, MatrixView<T> v) {
  return download<T>(dev, ConstView<T>(v));
}

/// Each parameter's gradient equals its part of the full gradient named after it. A parameter
/// reported as several records (stacked or fused weights) is compared as one normwise whole, as
/// any other shard is: a block can be zero in exact arithmetic (the key bias's gradient, since
/// softmax ignores a shift shared by all keys), where a relative error of the block alone means nothing.
/// `tokens` > 0: the gradients are sums over that many tokens, compared within
/// ref::reduction_tolerance<T>(tokens) (16-bit bodies of the MLP and attention); 0: tolerance<T>.
template <class T, class Device>
void expect_grads(const Device& dev, const std::vector<Parameter<T>>& ps,
                  const std::map<std::string, const ref::Matrix*>& full, std::int64_t tokens = 0) {
  std::map<std::string, std::pair<ref::Matrix, ref::Matrix>> got_want;  // concatenated, as one row
  for (const auto& p : ps) {
    const auto it = full.find(p.name);
    ASSERT_NE(it, full.end()) << "no reference gradient for " << p.name;
    ASSERT_EQ(it->second->rows, p.full_rows) << p.name;
    ASSERT_EQ(it->second->cols, p.full_cols) << p.name;
    const ref::Matrix got = download<T>(dev, ConstView<T>(p.grad));
    const ref::Matrix want = it->second->block(p.rows.begin, p.cols.begin, p.rows.size(), p.cols.size());
    ASSERT_EQ(got.rows, want.rows) << p.name;
    ASSERT_EQ(got.cols, want.cols) << p.name;
    auto& [g, w] = got_want[p.name];
    g.data.insert(g.data.end(), got.data.begin(), got.data.end());
    w.data.insert(w.data.end(), want.data.begin(), want.data.end());
    g.rows = w.rows = 1;
    g.cols = w.cols = static_cast<std::int64_t>(g.data.size());
  }
  for (const auto& [name, gw] : got_want) {
    SCOPED_TRACE(name);
    if (tokens > 0)
      TP_EXPECT_CLOSE_REDUCED(T, gw.first, gw.second, tokens);
    else
      TP_EXPECT_CLOSE(T, gw.first, gw.second);
  }
}

}  // namespace tp::test
