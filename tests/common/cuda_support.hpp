#pragma once
/// What the CUDA test harnesses and tests share: the skip rule (no device: skipped, with the
/// reason), managed test buffers, a communicator wrapper that waits for each collective so that
/// host-side test bodies can read the result, and host <-> device conversions for the reference.

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

/// `m` rounded through T, as a layer holding T sees it.
template <class T>
ref::Matrix rounded(ref::Matrix m) {
  for (auto& v : m.data) v = detail::to_double(static_cast<T>(v));
  return m;
}

/// Standard-normal entries rounded through T (ref::random_matrix for the 16-bit types).
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

/// A device tensor holding `m` (rounded to T).
template <class T>
Tensor<T, Cuda> upload(const std::shared_ptr<Cuda>& dev, const ref::Matrix& m) {
  Tensor<T, Cuda> t(dev, m.rows, m.cols);
  const auto host = to_host_elements<T>(m);
  dev->from_host(ConstView<T>(host.data(), m.rows, m.cols), t.view());
  return t;
}

/// A device view read back as a double matrix.
template <class T>
ref::Matrix download(const Cuda& dev, ConstView<T> v) {
  std::vector<T> host(static_cast<std::size_t>(v.size()));
  dev.to_host(v, MatrixView<T>(host.data(), v.rows, v.cols));
  ref::Matrix m(v.rows, v.cols);
  for (std::size_t i = 0; i < host.size(); ++i) m.data[i] = detail::to_double(host[i]);
  return m;
}
template <class T>
ref::Matrix download(const Cuda& dev, const Tensor<T, Cuda>& t) {
  return download<T>(dev, t.view());
}
template <class T>
ref::Matrix download(const Cuda& dev, MatrixView<T> v) {
  return download<T>(dev, ConstView<T>(v));
}

}  // namespace tp::test
