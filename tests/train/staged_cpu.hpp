#pragma once
/// StagedCpu, the device path of tp's code run on the host (tp::Cpu declaring on_host = false),
/// and DeviceMemoryCommunicator, which lets a collective through only when its buffers are
/// StagedCpu memory, as NCCL takes device memory only: the harness's communicators (local, MPI,
/// Gloo) take host memory either way, so without it a collective over host buffers that skipped
/// the staging would pass unseen on StagedCpu.

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <span>
#include <string_view>

#include "tp/comm/communicator.hpp"
#include "tp/device/cpu.hpp"

namespace tp {

/// tp::Cpu with on_host false: the same memory and kernels, the device code paths. Its
/// allocations are listed (all instances together), so that DeviceMemoryCommunicator can tell
/// its memory from the host's.
class StagedCpu : public Cpu {
 public:
  static constexpr bool on_host = false;
  static const std::shared_ptr<StagedCpu>& shared() {
    static const auto device = std::make_shared<StagedCpu>();
    return device;
  }
  template <class T>
  T* allocate(std::int64_t n) const {
    T* p = Cpu::allocate<T>(n);
    const std::lock_guard lock(registry().mutex);
    registry().blocks[reinterpret_cast<std::uintptr_t>(p)] = static_cast<std::size_t>(n) * sizeof(T);
    return p;
  }
  template <class T>
  void deallocate(T* p, std::int64_t n) const noexcept {
    {
      const std::lock_guard lock(registry().mutex);
      registry().blocks.erase(reinterpret_cast<std::uintptr_t>(p));
    }
    Cpu::deallocate(p, n);
  }
  /// Whether the `bytes` at `p` lie in one live StagedCpu allocation.
  static bool holds(const void* p, std::size_t bytes) {
    const auto at = reinterpret_cast<std::uintptr_t>(p);
    const std::lock_guard lock(registry().mutex);
    auto it = registry().blocks.upper_bound(at);
    if (it == registry().blocks.begin()) return false;
    --it;
    return at + bytes <= it->first + it->second;
  }

 private:
  struct Registry {
    std::mutex mutex;
    std::map<std::uintptr_t, std::size_t> blocks;  // start -> bytes
  };
  static Registry& registry() {
    static Registry r;
    return r;
  }
};

/// A communicator over `inner` that refuses (InvalidArgument, naming the call) a buffer that is
/// not StagedCpu memory, as NCCL refuses host memory. Verification is `inner`'s (its signature
/// exchange is its own business, in host memory).
class DeviceMemoryCommunicator final : public Communicator {
 public:
  explicit DeviceMemoryCommunicator(std::shared_ptr<Communicator> inner) : inner_(std::move(inner)) {
    set_verify_collectives(false);
  }
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::string_view backend() const override { return inner_->backend(); }

 protected:
  void do_barrier() override { inner_->barrier(); }
  std::shared_ptr<Communicator> do_split(int color, int key) override {
    return std::make_shared<DeviceMemoryCommunicator>(inner_->split(color, key));
  }
  void do_all_reduce(const void* send, void* recv, std::size_t count, DType dtype, ReduceOp op, Stream s) override {
    check("all_reduce", send, count, dtype);
    check("all_reduce", recv, count, dtype);
    inner_->all_reduce(send, recv, count, dtype, op, s);
  }
  void do_all_gather_v(const void* send, void* recv, std::span<const std::size_t> counts, DType dtype,
                       Stream s) override {
    check("all_gather_v", send, counts[static_cast<std::size_t>(rank())], dtype);
    check("all_gather_v", recv, std::accumulate(counts.begin(), counts.end(), std::size_t{0}), dtype);
    inner_->all_gather_v(send, recv, counts, dtype, s);
  }
  void do_reduce_scatter_v(const void* send, void* recv, std::span<const std::size_t> counts, DType dtype, ReduceOp op,
                           Stream s) override {
    check("reduce_scatter_v", send, std::accumulate(counts.begin(), counts.end(), std::size_t{0}), dtype);
    check("reduce_scatter_v", recv, counts[static_cast<std::size_t>(rank())], dtype);
    inner_->reduce_scatter_v(send, recv, counts, dtype, op, s);
  }
  void do_broadcast(void* buffer, std::size_t count, DType dtype, int root, Stream s) override {
    check("broadcast", buffer, count, dtype);
    inner_->broadcast(buffer, count, dtype, root, s);
  }

 private:
  void check(const char* call, const void* p, std::size_t count, DType dtype) const {
    const std::size_t bytes = count * size_of(dtype);
    TP_CHECK(bytes == 0 || StagedCpu::holds(p, bytes),
             "{} on rank {} of {}: {} bytes at {} are not StagedCpu (device) memory: a collective over host buffers "
             "that was not staged",
             call, rank(), size(), bytes, p);
  }

  std::shared_ptr<Communicator> inner_;
};

}  // namespace tp
