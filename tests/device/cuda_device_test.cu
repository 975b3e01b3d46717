/// What only tp::Cuda has, or only it can get wrong, beside the shared layer and op bodies (which
/// run for tp::Cuda from their .cpp through generated .cu files; copies, element-wise ops and the
/// op shape checks are in tests/ops): the GEMM's shape message, the layers' id checks through the
/// device's first_outside, and the mapping of a missing device to a CudaError; the fallbacks for
/// GPUs without memory pools or concurrent managed access, a launch after a discarded error, and
/// the CUDA harness stopping a failed rank's peers. The fused cuBLASLt epilogues and TF32 have
/// binaries of their own (cuda_epilogue_test.cu, cuda_tf32_test.cu). Without a GPU every test here
/// that needs one reports skipped, with the reason; the no-device error mapping, the buffer rule
/// and the harness test run instead.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>

#include "common/devices.hpp"
#include "common/harness.hpp"
#include "common/reference.hpp"
#include "tp/comm/local_communicator.hpp"
#include "tp/device/cuda.hpp"
#include "tp/layers/vocab_parallel_cross_entropy.hpp"
#include "tp/ops/activation.hpp"
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

/// A GPU without stream-ordered memory pools (cudaDevAttrMemoryPoolsSupported 0, as on some
/// virtualised ones) gets plain device allocations; Options::memory_pool = false stands in for one.
TEST(CudaDevice, WithoutAMemoryPoolAllocationsArePlainDeviceMemory) {
  TP_REQUIRE_CUDA();
  auto dev = std::make_shared<Cuda>(CudaOptions{.memory_pool = false});
  EXPECT_FALSE(dev->uses_memory_pool());
  EXPECT_EQ(Cuda().uses_memory_pool(), detail::memory_pools_supported(dev->device()));
  const ref::Matrix a = test::random_matrix<float>(5, 7, 1), b = test::random_matrix<float>(7, 3, 2);
  const auto ta = upload<float>(dev, a), tb = upload<float>(dev, b);
  Tensor<float, Cuda> c(dev, 5, 3);
  dev->gemm<float>(Op::n, Op::n, 1.f, ta.view(), tb.view(), 0.f, c.view());
  TP_EXPECT_CLOSE(float, download<float>(*dev, c), ref::matmul(a, false, b, false));
  cudaPointerAttributes where{};
  TP_CUDA_CHECK(cudaPointerGetAttributes(&where, c.data()), "reading where the GEMM output lives");
  EXPECT_EQ(where.type, cudaMemoryTypeDevice);
}

/// The host's 16-bit types run on tp::Cuda as CUDA's own (the same API on both devices): the same
/// cuBLASLt GEMM and kernels give tp::bf16 and tp::f16 the bits they give __nv_bfloat16 and __half.
template <class Host, class Native>
void expect_same_bits_as(const std::shared_ptr<Cuda>& dev) {
  const ref::Matrix a = test::random_matrix<float>(6, 9, 1), b = test::random_matrix<float>(9, 5, 2);
  const auto run = [&]<class T>(T) {
    const auto ta = upload<T>(dev, a), tb = upload<T>(dev, b);
    Tensor<T, Cuda> c(dev, 6, 5), y(dev, 6, 5);
    dev->gemm<T>(Op::n, Op::n, T(1), ConstView<T>(ta.view()), ConstView<T>(tb.view()), T(0), c.view());
    ops::gelu<T>(*dev, ConstView<T>(c.view()), y.view(), Gelu::tanh);
    return std::pair{download<T>(*dev, c).data, download<T>(*dev, y).data};
  };
  const auto host = run(Host(0)), native = run(static_cast<Native>(0.0f));
  EXPECT_EQ(host.first, native.first);
  EXPECT_EQ(host.second, native.second);
}

TEST(CudaDevice, HostSixteenBitTypesRunAsCudasOwn) {
  TP_REQUIRE_CUDA();
  auto dev = std::make_shared<Cuda>();
  expect_same_bits_as<bf16, __nv_bfloat16>(dev);
  expect_same_bits_as<f16, __half>(dev);
}

/// A failure whose status its caller dropped (a free in a destructor) stays in the thread's
/// last-error slot; the next launch must not report it as its own.
TEST(CudaDevice, ALaunchDoesNotReportAnEarlierDiscardedError) {
  TP_REQUIRE_CUDA();
  auto dev = std::make_shared<Cuda>();
  Tensor<float, Cuda> x(dev, 2, 3);
  ASSERT_NE(cudaFree(reinterpret_cast<void*>(0x10)), cudaSuccess);  // left in the last-error slot, unchecked
  EXPECT_NO_THROW(dev->fill(x.view(), 1.5f));
  EXPECT_EQ(test::download<float>(*dev, x).data, std::vector<double>(6, 1.5));
}

/// Managed test buffers only where the host may touch them while kernels run.
TEST(CudaTestBuffers, ManagedOnlyWithConcurrentManagedAccess) {
  EXPECT_EQ(test::test_buffers_for(1), test::TestBuffers::managed);
  EXPECT_EQ(test::test_buffers_for(0), test::TestBuffers::pinned);
}

/// Both kinds of test buffer serve the collectives, so the pinned fallback is checked on a GPU
/// that would use managed memory (and the reverse, where it can be).
TEST(CudaTestBuffers, EitherKindServesTheCollectives) {
  TP_REQUIRE_CUDA();
  const test::TestBuffers chosen = test::use_device_test_buffers();
  for (const auto kind : {test::TestBuffers::pinned, test::TestBuffers::managed}) {
    if (kind == test::TestBuffers::managed && chosen != kind) continue;  // the host may not touch it here
    SCOPED_TRACE(test::describe(kind));
    test::use_test_buffers(kind);
    on_ranks([](std::shared_ptr<Communicator> comm) {
      const int world = comm->size(), rank = comm->rank();
      test::Buffer<float> x(5);
      for (int i = 0; i < 5; ++i) x[i] = static_cast<float>(rank + 1) * i;
      comm->all_reduce(x.data(), x.data(), 5, DType::f32);
      for (int i = 0; i < 5; ++i) EXPECT_EQ(x[i], world * (world + 1) / 2.f * i) << "element " << i;
    });
  }
  test::use_device_test_buffers();
}

/// Rank 1 fails an assertion and returns; rank 0 goes on to a barrier. In a child process (the
/// failure is real there), which exits 0 when rank 0 was woken at once and 1 when it waited out
/// the 30 s rendezvous timeout, as it did before the harness stopped the peers.
TEST(CudaHarnessDeathTest, AFailedAssertionStopsThePeersAtOnce) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // re-executes the binary: no fork of a CUDA process
  EXPECT_EXIT(
      {
        const auto start = std::chrono::steady_clock::now();
        try {
          run_local(
              2,
              [](std::shared_ptr<Communicator> comm) {
                test::run_rank_stopping_peers(
                    [](std::shared_ptr<Communicator> c) {
                      if (c->rank() == 1) FAIL() << "rank 1's deliberate failure";
                      c->barrier();
                    },
                    std::move(comm));
              },
              {.timeout = std::chrono::seconds(30)});
        } catch (const CommError&) {
        }
        std::exit(std::chrono::steady_clock::now() - start < std::chrono::seconds(10) ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "");
}

static_assert(dtype_of<__half> == DType::f16 && dtype_of<__nv_bfloat16> == DType::bf16);

}  // namespace
}  // namespace tp
