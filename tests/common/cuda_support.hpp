#pragma once
/// What the CUDA test harnesses and tests share: the skip rule (no device: skipped, with the
/// reason), managed test buffers, and a communicator wrapper that waits for each collective so that
/// host-side test bodies can read the result. Host <-> device matrices: common/devices.hpp.

#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

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

/// Test buffers in managed memory: readable by the host test body and by kernels and NCCL.
inline void use_managed_buffers() {
  buffer_memory().allocate = [](std::size_t bytes) -> void* {
    void* p = nullptr;
    TP_CUDA_CHECK(cudaMallocManaged(&p, bytes == 0 ? 1 : bytes), "allocating a {} byte managed test buffer", bytes);
    return p;
  };
  buffer_memory().deallocate = [](void* p) { cudaFree(p); };
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
  void do_broadcast(void* buffer, std::size_t count, DType dtype, int root, Stream stream) override {
    inner_->broadcast(buffer, count, dtype, root, stream);
    sync_(stream);
  }

 private:
  std::shared_ptr<Communicator> inner_;
  Sync sync_;
};

inline void sync_stream(Stream stream) {
  TP_CUDA_CHECK(cudaStreamSynchronize(stream), "waiting for a collective in a test");
}

}  // namespace tp::test
