#pragma once
/// Collectives over host buffers on the communicator of a device that moves device buffers only
/// (Device::on_host false: NCCL, LocalCommunicator over CUDA memory). The code that reduces,
/// gathers or broadcasts small host-side data over a device's communicator (tp/train's host
/// state, tp/io's and tp/models' collective saves and loads: header hashes, block lists,
/// checksums, rank 0's verdicts) gets its communicator from HostComm, which is the given one on a
/// host device and a HostStagedCommunicator in front of it otherwise.
///
/// The cost on a device: each collective copies its host buffers into a fresh device buffer, runs
/// on the device's stream and copies the result back (one device copy each way, blocking).

#include <cstdint>
#include <memory>
#include <numeric>
#include <optional>
#include <span>
#include <string_view>
#include <type_traits>

#include "tp/comm/communicator.hpp"
#include "tp/core/tensor.hpp"

namespace tp::detail {

/// A Communicator over host buffers in front of `inner`, the communicator of `device`, a device
/// that moves device buffers only (Device::on_host false): each collective copies its host
/// buffers into device memory, runs on `inner` on the device's stream and copies the result back
/// (to_host waits for the stream), and blocks. Verification is `inner`'s: it checks every call it
/// is passed. split() is refused: split the device communicator and put another of these in front
/// of the part. `inner` and `device` must outlive it.
template <class Device>
class HostStagedCommunicator final : public Communicator {
 public:
  HostStagedCommunicator(Communicator& inner, const Device& device) : inner_(&inner), dev_(&device) {
    set_verify_collectives(false);
  }
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::string_view backend() const override { return inner_->backend(); }
  Communicator& inner() const { return *inner_; }

 protected:
  void do_barrier() override { inner_->barrier(); }
  std::shared_ptr<Communicator> do_split(int, int) override {
    TP_THROW(InvalidArgument, "HostStagedCommunicator over {} (rank {} of {}): split the device communicator instead",
             inner_->backend(), rank(), size());
  }
  void do_all_reduce(const void* send, void* recv, std::size_t count, DType dtype, ReduceOp op, Stream) override {
    Staged buf(*dev_, send, count * size_of(dtype));
    inner_->all_reduce(buf.data(), buf.data(), count, dtype, op, dev_->stream());
    buf.to(recv);
  }
  void do_all_gather_v(const void* send, void* recv, std::span<const std::size_t> counts, DType dtype,
                       Stream) override {
    const std::size_t all = std::accumulate(counts.begin(), counts.end(), std::size_t{0});
    Staged in(*dev_, send, counts[static_cast<std::size_t>(rank())] * size_of(dtype));
    Staged out(*dev_, nullptr, all * size_of(dtype));
    inner_->all_gather_v(in.data(), out.data(), counts, dtype, dev_->stream());
    out.to(recv);
  }
  void do_reduce_scatter_v(const void* send, void* recv, std::span<const std::size_t> counts, DType dtype, ReduceOp op,
                           Stream) override {
    const std::size_t all = std::accumulate(counts.begin(), counts.end(), std::size_t{0});
    Staged in(*dev_, send, all * size_of(dtype));
    Staged out(*dev_, nullptr, counts[static_cast<std::size_t>(rank())] * size_of(dtype));
    inner_->reduce_scatter_v(in.data(), out.data(), counts, dtype, op, dev_->stream());
    out.to(recv);
  }
  void do_broadcast(void* buffer, std::size_t count, DType dtype, int root, Stream) override {
    Staged buf(*dev_, buffer, count * size_of(dtype));
    inner_->broadcast(buf.data(), count, dtype, root, dev_->stream());
    buf.to(buffer);
  }

 private:
  /// `bytes` of device memory, holding those at `host` (unless null).
  class Staged {
   public:
    Staged(const Device& dev, const void* host, std::size_t bytes)
        : dev_(&dev), bytes_(static_cast<std::int64_t>(bytes)),
          data_(bytes > 0 ? dev.template allocate<std::uint8_t>(bytes_) : nullptr) {
      if (host != nullptr && bytes > 0)
        dev.from_host(ConstView<std::uint8_t>(static_cast<const std::uint8_t*>(host), 1, bytes_),
                      MatrixView<std::uint8_t>(data_, 1, bytes_));
    }
    Staged(const Staged&) = delete;
    Staged& operator=(const Staged&) = delete;
    ~Staged() {
      if (data_ != nullptr) dev_->deallocate(data_, bytes_);
    }
    std::uint8_t* data() { return data_; }
    /// Copies the device bytes to `host`, once the stream has reached them.
    void to(void* host) {
      if (bytes_ > 0)
        dev_->to_host(ConstView<std::uint8_t>(data_, 1, bytes_),
                      MatrixView<std::uint8_t>(static_cast<std::uint8_t*>(host), 1, bytes_));
    }

   private:
    const Device* dev_;
    std::int64_t bytes_;
    std::uint8_t* data_;
  };

  Communicator* inner_;
  const Device* dev_;
};

/// Whether a collective over host buffers on `Device`'s communicator must be staged:
/// Device::on_host is false. A type without on_host (a stand-in that only copies to the host)
/// holds host memory.
template <class Device>
inline constexpr bool stages_host_buffers = [] {
  if constexpr (requires { Device::on_host; }) return !Device::on_host;
  else return false;
}();

/// A communicator for host buffers over `comm`, the communicator of `device`: `comm` itself on a
/// host device (no copies, no extra calls), else a HostStagedCommunicator in front of it, unless
/// `comm` is one for this device already (a caller that staged passes its own down; staging twice
/// would hand device pointers to the outer one's copies as host memory). Lives on the stack of a
/// collective function, as long as `comm` and `device`.
template <class Device>
class HostComm {
 public:
  HostComm(Communicator& comm, [[maybe_unused]] const Device& device) : comm_(&comm) {
    if constexpr (stages_host_buffers<Device>)
      if (dynamic_cast<HostStagedCommunicator<Device>*>(&comm) == nullptr) comm_ = &staged_.emplace(comm, device);
  }
  HostComm(const HostComm&) = delete;
  HostComm& operator=(const HostComm&) = delete;
  Communicator& operator*() const { return *comm_; }
  Communicator* operator->() const { return comm_; }

 private:
  struct Unstaged {};
  Communicator* comm_;
  [[no_unique_address]] std::conditional_t<stages_host_buffers<Device>, std::optional<HostStagedCommunicator<Device>>,
                                           Unstaged> staged_;
};

}  // namespace tp::detail
