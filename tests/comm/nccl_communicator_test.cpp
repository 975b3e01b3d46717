/// What only the NCCL backend has: creation paths, the timeout that turns a missing peer into a
/// CommError (ncclCommGetAsyncError polling, then ncclCommAbort), errors that need no device.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <thread>

#include "common/cuda_support.hpp"
#include "tp/comm/local_communicator.hpp"
#include "tp/comm/nccl_communicator.hpp"

namespace tp {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;

TEST(NcclCommunicator, RankOutsideTheWorldIsInvalid) {
  ncclUniqueId id{};
  try {
    NcclCommunicator::create(id, 3, 2);
    ADD_FAILURE() << "created rank 3 of 2";
  } catch (const InvalidArgument& e) {
    EXPECT_THAT(e.what(), HasSubstr("rank 3 is outside world size 2"));
  }
}

TEST(NcclCommunicator, NoDeviceIsACudaErrorNamingTheCause) {
  const std::string why = test::no_cuda_device_reason();
  if (why.empty()) GTEST_SKIP() << "a CUDA device is present; this test covers machines without one";
  try {
    NcclCommunicator::create_single();
    ADD_FAILURE() << "NcclCommunicator created without a device";
  } catch (const CudaError& e) {
    EXPECT_THAT(e.what(), HasSubstr("no CUDA device"));
  }
}

/// Bootstrapping over a host communicator (here a LocalCommunicator of one rank; MPI or Gloo
/// alike) and a barrier, a split and an asynchronous all-reduce that waits on the host.
TEST(NcclCommunicator, BootstrapSplitBarrierAndAsyncWait) {
  TP_REQUIRE_CUDA();
  run_local(1, [](std::shared_ptr<Communicator> bootstrap) {
    auto nccl = NcclCommunicator::create(*bootstrap, {.timeout = 30s});
    EXPECT_EQ(nccl->size(), 1);
    EXPECT_EQ(nccl->backend(), "nccl");
    nccl->barrier();
    auto sub = nccl->split(0, 0);
    ASSERT_NE(sub, nullptr);
    EXPECT_EQ(sub->size(), 1);
    EXPECT_EQ(nccl->split(-1, 0), nullptr);
    float* data = nullptr;
    TP_CUDA_CHECK(cudaMallocManaged(&data, 4 * sizeof(float)), "test buffer");
    for (int i = 0; i < 4; ++i) data[i] = 1.5f * i;
    auto work = nccl->all_reduce_async_nccl(data, data, 4, DType::f32, ReduceOp::sum, nullptr);
    work->wait_host();
    for (int i = 0; i < 4; ++i) EXPECT_EQ(data[i], 1.5f * i);
    cudaFree(data);
  });
}

/// synchronize(stream) waits for everything on the stream, here a host function that sleeps: its
/// own deadline (stream_timeout) passing throws, and the communicator stays usable, since a busy
/// stream says nothing about the peers.
TEST(NcclCommunicator, StreamDeadlineLeavesTheCommunicatorUsable) {
  TP_REQUIRE_CUDA();
  auto nccl = NcclCommunicator::create_single({.timeout = 30s, .stream_timeout = 200ms});
  cudaStream_t stream = nullptr;
  TP_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "test stream");
  TP_CUDA_CHECK(cudaLaunchHostFunc(stream, [](void*) { std::this_thread::sleep_for(1500ms); }, nullptr), "host function");
  const auto start = std::chrono::steady_clock::now();
  try {
    nccl->synchronize(stream);
    ADD_FAILURE() << "synchronize returned while the stream was busy for 1.5 s (stream_timeout 200 ms)";
  } catch (const CommError& e) {
    EXPECT_THAT(e.what(), HasSubstr("not aborted"));
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, 1400ms);
  EXPECT_FALSE(nccl->aborted());
  nccl->synchronize(stream, 30s);
  float* data = nullptr;
  TP_CUDA_CHECK(cudaMallocManaged(&data, 2 * sizeof(float)), "test buffer");
  data[0] = 2.f, data[1] = 3.f;
  nccl->all_reduce(data, data, 2, DType::f32, ReduceOp::sum, stream);
  nccl->synchronize(stream);
  nccl->barrier();
  EXPECT_EQ(data[0], 2.f);
  EXPECT_EQ(data[1], 3.f);
  cudaFree(data);
  cudaStreamDestroy(stream);
}

/// Rank 1 of 2 never joins: initialization must not hang, it must time out with a CommError.
TEST(NcclCommunicator, MissingPeerTimesOut) {
  TP_REQUIRE_CUDA();
  const auto id = NcclCommunicator::make_unique_id();
  const auto start = std::chrono::steady_clock::now();
  try {
    NcclCommunicator::create(id, 0, 2, {.timeout = 2s});
    ADD_FAILURE() << "a 2-rank communicator initialized with one rank";
  } catch (const CommError& e) {
    EXPECT_THAT(e.what(), HasSubstr("rank 0 of 2"));
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, 30s);
}

}  // namespace
}  // namespace tp
