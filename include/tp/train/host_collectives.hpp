#pragma once
/// Collectives over buffers in host memory on the communicator of any device: what the training
/// code (tp/train/) uses for its host-side state (main gradients, master weights, token counts,
/// norms). On a host device (tp::Cpu) they call the communicator directly. Device communicators
/// (NCCL, LocalCommunicator over device memory) reduce device buffers only, so on tp::Cuda the data
/// goes through a device buffer on the device's stream, by HostStagedCommunicator: copied in,
/// reduced, copied back (both copies wait for the stream, so the host buffer holds the result on
/// return). Blocking, no overlap: tp/train/grad_buffer.hpp says what that costs the CUDA training
/// path. HostStagedCommunicator also serves code written against a Communicator& over host buffers
/// (tp/io's collective saves and loads, which the training checkpoints use).

#include <cstdint>
#include <memory>
#include <numeric>
#include <span>
#include <string_view>

#include "tp/comm/communicator.hpp"
#include "tp/core/tensor.hpp"

namespace tp::detail {

/// A Communicator over host buffers in front of `inner`, the communicator of a device that moves
/// device buffers only (Device::on_host false: NCCL, LocalCommunicator over device memory): each
/// collective copies its host buffers into device memory, runs on `inner` on the device's stream
/// and copies the result back (to_host waits for the stream), as the functions above do, and
/// blocks. Verification is `inner`'s: it checks every call it is passed. split() is refused:
/// split the device communicator and put another of these in front of the part.
template <class Device>
class HostStagedCommunicator final : public Communicator {
 public:
  HostStagedCommunicator(Communicator& inner, std::shared_ptr<Device> dev) : inner_(&inner), dev_(std::move(dev)) {
    set_verify_collectives(false);
  }
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::string_view backend() const override { return inner_->backend(); }

 protected:
  void do_barrier() override { inner_->barrier(); }
  std::shared_ptr<Communicator> do_split(int, int) override {
    TP_THROW(InvalidArgument, "HostStagedCommunicator over {} (rank {} of {}): split the device communicator instead",
             inner_->backend(), rank(), size());
  }
  void do_all_reduce(const void* send, void* recv, std::size_t count, DType dtype, ReduceOp op, Stream) override {
    Staged buf(dev_, send, count * size_of(dtype));
    inner_->all_reduce(buf.data(), buf.data(), count, dtype, op, dev_->stream());
    buf.to(recv);
  }
  void do_all_gather_v(const void* send, void* recv, std::span<const std::size_t> counts, DType dtype,
                       Stream) override {
    const std::size_t all = std::accumulate(counts.begin(), counts.end(), std::size_t{0});
    Staged in(dev_, send, counts[static_cast<std::size_t>(rank())] * size_of(dtype));
    Staged out(dev_, nullptr, all * size_of(dtype));
    inner_->all_gather_v(in.data(), out.data(), counts, dtype, dev_->stream());
    out.to(recv);
  }
  void do_reduce_scatter_v(const void* send, void* recv, std::span<const std::size_t> counts, DType dtype, ReduceOp op,
                           Stream) override {
    const std::size_t all = std::accumulate(counts.begin(), counts.end(), std::size_t{0});
    Staged in(dev_, send, all * size_of(dtype));
    Staged out(dev_, nullptr, counts[static_cast<std::size_t>(rank())] * size_of(dtype));
    inner_->reduce_scatter_v(in.data(), out.data(), counts, dtype, op, dev_->stream());
    out.to(recv);
  }
  void do_broadcast(void* buffer, std::size_t count, DType dtype, int root, Stream) override {
    Staged buf(dev_, buffer, count * size_of(dtype));
    inner_->broadcast(buf.data(), count, dtype, root, dev_->stream());
    buf.to(buffer);
  }

 private:
  /// `bytes` of device memory, holding those at `host` (unless null).
  class Staged {
   public:
    Staged(const std::shared_ptr<Device>& dev, const void* host, std::size_t bytes)
        : buffer_(dev, 1, static_cast<std::int64_t>(bytes)) {
      if (host != nullptr && bytes > 0)
        dev->from_host(ConstView<std::uint8_t>(static_cast<const std::uint8_t*>(host), 1, buffer_.cols()),
                       buffer_.view());
    }
    std::uint8_t* data() { return buffer_.data(); }
    /// Copies the device bytes to `host`, once the stream has reached them.
    void to(void* host) {
      if (buffer_.cols() > 0)
        buffer_.device().to_host(ConstView<std::uint8_t>(buffer_.view()),
                                 MatrixView<std::uint8_t>(static_cast<std::uint8_t*>(host), 1, buffer_.cols()));
    }

   private:
    Tensor<std::uint8_t, Device> buffer_;
  };

  Communicator* inner_;
  std::shared_ptr<Device> dev_;
};

/// `data` reduced over `comm` in place.
template <class Device, class T>
void host_all_reduce(Communicator& comm, const std::shared_ptr<Device>& dev, std::span<T> data,
                     ReduceOp op = ReduceOp::sum) {
  if (comm.size() == 1 || data.empty()) return;
  if constexpr (Device::on_host) comm.all_reduce(data, op);
  else HostStagedCommunicator<Device>(comm, dev).all_reduce(data, op);
}

/// Every rank's `send` in rank order into `recv` (size() x send.size() elements).
template <class Device, class T>
void host_all_gather(Communicator& comm, const std::shared_ptr<Device>& dev, std::span<const T> send,
                     std::span<T> recv) {
  TP_CHECK(recv.size() == send.size() * static_cast<std::size_t>(comm.size()),
           "all_gather: receive buffer of {} elements, expected {} x {} ranks", recv.size(), send.size(), comm.size());
  if constexpr (Device::on_host) comm.all_gather(send, recv);
  else if (!send.empty()) HostStagedCommunicator<Device>(comm, dev).all_gather(send, recv);
}

/// Rank r receives block r of `send` (size() blocks of recv.size()) summed over the ranks.
template <class Device, class T>
void host_reduce_scatter(Communicator& comm, const std::shared_ptr<Device>& dev, std::span<const T> send,
                         std::span<T> recv) {
  TP_CHECK(send.size() == recv.size() * static_cast<std::size_t>(comm.size()),
           "reduce_scatter: send buffer of {} elements, expected {} x {} ranks", send.size(), recv.size(),
           comm.size());
  if constexpr (Device::on_host) comm.reduce_scatter(send, recv);
  else if (!recv.empty()) HostStagedCommunicator<Device>(comm, dev).reduce_scatter(send, recv);
}

}  // namespace tp::detail
