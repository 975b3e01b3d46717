#pragma once
/// What the CUDA test harnesses and tests share: the skip rule (no device: skipped, with the
/// reason), test buffers that host and device both reach, and a communicator wrapper that waits for each collective so that
/// host-side test bodies can read the result. Host <-> device matrices: common/devices.hpp.

#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/harness.hpp"
#include "common/reference.hpp"
#include "tp/comm/communicator.hpp"
#include "tp/device/cuda.hpp"

namespace tp::ref {
/// 16-bit types: a few units of their rounding (2^-11 and 2^-8) after several rounded steps.
template <>
inline constexpr double tolerance<__half> = 2e-3;
template <>
inline constexpr double tolerance<__nv_bfloat16> = 1e-2;
}  // namespace tp::ref

namespace tp::test {

/// Empty when a CUDA device is present, otherwise why not ("cudaGetDeviceCount failed: ...").
inline std::string no_cuda_device_reason() {
  std::string why;
  return Cuda::device_count(&why) > 0 ? std::string() : why;
}

/// Skips the current test, naming the reason, when there is no device.
#define TP_REQUIRE_CUDA()                                                             \
  do {                                                                                \
    const std::string tp_why_ = ::tp::test::no_cuda_device_reason();                 \
    if (!tp_why_.empty()) GTEST_SKIP() << "no CUDA device: " << tp_why_;             \
  } while (0)

/// Where test buffers live on a GPU: memory that the host test body writes and reads and that
/// kernels and NCCL reach through the same pointer.
enum class TestBuffers {
  managed,  ///< cudaMallocManaged: pages move to whoever touches them
  pinned,   ///< cudaMallocHost: page-locked host memory, read by the device over the bus
};

/// Managed memory only where `concurrentManagedAccess` is 1: without it (virtualised GPUs, some
/// drivers), the host touching any managed page while a kernel runs, as rank threads do while
/// their peers' kernels run, is a segmentation fault. Pinned memory has no such rule.
inline TestBuffers test_buffers_for(int concurrent_managed_access) {
  return concurrent_managed_access == 1 ? TestBuffers::managed : TestBuffers::pinned;
}

inline const char* describe(TestBuffers kind) {
  return kind == TestBuffers::managed ? "managed memory" : "pinned host memory";
}

/// Makes Buffer<T> allocate `kind` (see common/harness.hpp).
inline void use_test_buffers(TestBuffers kind) {
  if (kind == TestBuffers::managed) {
    buffer_memory().allocate = [](std::size_t bytes) -> void* {
      void* p = nullptr;
      TP_CUDA_CHECK(cudaMallocManaged(&p, bytes == 0 ? 1 : bytes), "allocating a {} byte managed test buffer",
                    bytes);
      return p;
    };
    buffer_memory().deallocate = [](void* p) { detail::discard_cuda_status(cudaFree(p)); };
  } else {
    buffer_memory().allocate = [](std::size_t bytes) -> void* {
      void* p = nullptr;
      TP_CUDA_CHECK(cudaMallocHost(&p, bytes == 0 ? 1 : bytes), "allocating a {} byte pinned test buffer", bytes);
      return p;
    };
    buffer_memory().deallocate = [](void* p) { detail::discard_cuda_status(cudaFreeHost(p)); };
  }
}

/// The device harnesses' buffers: test_buffers_for the current device, said once on stdout (the
/// GPU suite's tests.log keeps it), e.g. "test buffers: managed memory (concurrentManagedAccess 1)".
inline TestBuffers use_device_test_buffers() {
  static const TestBuffers kind = [] {
    int device = 0, concurrent = 0;
    TP_CUDA_CHECK(cudaGetDevice(&device), "reading the current device");
    TP_CUDA_CHECK(cudaDeviceGetAttribute(&concurrent, cudaDevAttrConcurrentManagedAccess, device),
                  "reading concurrentManagedAccess of device {}", device);
    const TestBuffers k = test_buffers_for(concurrent);
    std::printf("test buffers: %s (concurrentManagedAccess %d on device %d)\n", describe(k), concurrent, device);
    std::fflush(stdout);
    return k;
  }();
  use_test_buffers(kind);
  return kind;
}

/// Forwards every collective and then waits for its stream (`sync`), so the caller may read the
/// result on the host at once, as the conformance bodies do.
class SyncedCommunicator final : public Communicator {
 public:
  using Sync = std::function<void(Stream)>;
  SyncedCommunicator(std::shared_ptr<Communicator> inner, Sync sync) : inner_(std::move(inner)), sync_(std::move(sync)) {
    set_verify_collectives(false);  // every call goes through inner_'s public entry points, which verify
  }

  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::string_view backend() const override { return inner_->backend(); }
  Communicator& inner() { return *inner_; }

 protected:
  void do_barrier() override { inner_->barrier(); }
  std::shared_ptr<Communicator> do_split(int color, int key) override {
    auto sub = inner_->split(color, key);
    return sub ? std::make_shared<SyncedCommunicator>(std::move(sub), sync_) : nullptr;
  }
  void do_all_reduce(const void* send, void* recv, std::size_t count, DType dtype, ReduceOp op, Stream stream) override {
    inner_->all_reduce(send, recv, count, dtype, op, stream);
    sync_(stream);
  }
  std::unique_ptr<Work> do_all_reduce_async(const void* send, void* recv, std::size_t count, DType dtype, ReduceOp op,
                                            Stream stream) override {
    auto work = inner_->all_reduce_async(send, recv, count, dtype, op, stream);
    work->wait();
    sync_(stream);
    return std::make_unique<CompletedWork>();
  }
  void do_all_gather_v(const void* send, void* recv, std::span<const std::size_t> counts, DType dtype,
                       Stream stream) override {
    inner_->all_gather_v(send, recv, counts, dtype, stream);
    sync_(stream);
  }
  void do_reduce_scatter_v(const void* send, void* recv, std::span<const std::size_t> counts, DType dtype, ReduceOp op,
                           Stream stream) override {
    inner_->reduce_scatter_v(send, recv, counts, dtype, op, stream);
    sync_(stream);
  }
  std::unique_ptr<Work> do_all_gather_v_async(const void* send, void* recv, std::span<const std::size_t> counts,
                                              DType dtype, Stream stream) override {
    inner_->all_gather_v_async(send, recv, counts, dtype, stream)->wait();
    sync_(stream);
    return std::make_unique<CompletedWork>();
  }
  std::unique_ptr<Work> do_reduce_scatter_v_async(const void* send, void* recv, std::span<const std::size_t> counts,
                                                  DType dtype, ReduceOp op, Stream stream) override {
    inner_->reduce_scatter_v_async(send, recv, counts, dtype, op, stream)->wait();
    sync_(stream);
    return std::make_unique<CompletedWork>();
  }
  void do_broadcast(void* buffer, std::size_t count, DType dtype, int root, Stream stream) override {
    inner_->broadcast(buffer, count, dtype, root, stream);
    sync_(stream);
  }

 private:
  std::shared_ptr<Communicator> inner_;
  Sync sync_;
};

/// Runs one rank's body under run_local and, when the test has failed an ASSERT_* by then,
/// throws: a failed ASSERT_* returns from the body instead of throwing, and the peers would wait
/// out the rendezvous timeout at their next collective, where a throw makes run_local wake them
/// with a CommError at once.
inline void run_rank_stopping_peers(const RankBody& body, std::shared_ptr<Communicator> comm) {
  const int rank = comm->rank();
  body(std::move(comm));
  if (::testing::Test::HasFatalFailure())
    TP_THROW(CommError, "rank {} left its body after a failed assertion (above); its peers are stopped", rank);
}

inline void sync_stream(Stream stream) {
  TP_CUDA_CHECK(cudaStreamSynchronize(stream), "waiting for a collective in a test");
}

}  // namespace tp::test
