/// What only the NCCL backend has: creation paths, the timeout that turns a missing peer into a
/// CommError (ncclCommGetAsyncError polling, then ncclCommAbort) at creation and in the call
/// signature exchange, errors that need no device.
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
    test::use_device_test_buffers();
    test::Buffer<float> data(4);
    for (int i = 0; i < 4; ++i) data[i] = 1.5f * i;
    auto work = nccl->all_reduce_async_nccl(data.data(), data.data(), 4, DType::f32, ReduceOp::sum, nullptr);
    work->wait_host();
    for (int i = 0; i < 4; ++i) EXPECT_EQ(data[i], 1.5f * i);
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
  test::use_device_test_buffers();
  {
    test::Buffer<float> data{2.f, 3.f};
    nccl->all_reduce(data.data(), data.data(), 2, DType::f32, ReduceOp::sum, stream);
    nccl->synchronize(stream);
    nccl->barrier();
    EXPECT_EQ(data[0], 2.f);
    EXPECT_EQ(data[1], 3.f);
  }
  cudaStreamDestroy(stream);
}

/// The call signatures go to and from the device through pinned memory, so that queueing their
/// copies never blocks the host: here the stream is held by a host function for 1.5 s (a peer
/// that never joins the all-gather holds it forever), and both copies must return at once; the
/// only wait is the communicator's poll, with its deadline. A device-to-pageable copy would block
/// here until the stream moved.
TEST(NcclSignatureBuffers, QueueingTheCopiesNeverWaitsForTheStream) {
  TP_REQUIRE_CUDA();
  constexpr std::size_t words = detail::SignatureBuffers::words;
  detail::SignatureBuffers buffers(/*rank=*/1, /*world=*/3);
  cudaStream_t stream = nullptr;
  TP_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "test stream");
  TP_CUDA_CHECK(cudaMemsetAsync(buffers.device(), 0, 3 * words * sizeof(std::int64_t), stream), "clearing the slots");
  TP_CUDA_CHECK(cudaLaunchHostFunc(stream, [](void*) { std::this_thread::sleep_for(1500ms); }, nullptr), "host function");
  std::int64_t mine[words];
  for (std::size_t i = 0; i < words; ++i) mine[i] = 100 + static_cast<std::int64_t>(i);
  const auto start = std::chrono::steady_clock::now();
  std::int64_t* slot = buffers.post(mine, stream);
  buffers.fetch(stream);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 500ms) << "a copy waited for the held stream";
  EXPECT_EQ(slot, buffers.device() + words);
  TP_CUDA_CHECK(cudaStreamSynchronize(stream), "waiting for the test stream");
  for (std::size_t i = 0; i < 3 * words; ++i)
    EXPECT_EQ(buffers.host()[i], i / words == 1 ? 100 + static_cast<std::int64_t>(i % words) : 0) << "word " << i;
  cudaStreamDestroy(stream);
}

/// A peer that joined the communicator but never calls the collective: the signature exchange
/// before it must end in a CommError within the timeout, not hang. Needs two GPUs (NCCL refuses
/// two ranks on one device).
TEST(NcclCommunicator, StuckPeerInTheSignatureExchangeTimesOut) {
  TP_REQUIRE_CUDA();
  if (Cuda::device_count() < 2) GTEST_SKIP() << "needs two GPUs (NCCL refuses two ranks on one device)";
  const auto id = NcclCommunicator::make_unique_id();
  std::shared_ptr<NcclCommunicator> peer;
  std::thread joins([&] { peer = NcclCommunicator::create(id, 1, 2, {.timeout = 2s, .device = 1}); });
  auto nccl = NcclCommunicator::create(id, 0, 2, {.timeout = 2s, .device = 0});
  joins.join();
  test::use_device_test_buffers();
  test::Buffer<float> data{1.f};
  const auto start = std::chrono::steady_clock::now();
  try {
    nccl->all_reduce(data.data(), data.data(), 1, DType::f32, ReduceOp::sum, nullptr);
    ADD_FAILURE() << "an all_reduce went through without its peer";
  } catch (const CommError& e) {
    EXPECT_THAT(e.what(), HasSubstr("call signature exchange"));
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, 20s);
  EXPECT_TRUE(nccl->aborted());
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
