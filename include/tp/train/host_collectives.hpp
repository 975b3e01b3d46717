#pragma once
/// Collectives over buffers in host memory on the communicator of any device: what the training
/// code (tp/train/) uses for its host-side state (main gradients, master weights, token counts,
/// norms). On a host device (tp::Cpu) they call the communicator directly. Device communicators
/// (NCCL, LocalCommunicator over device memory) reduce device buffers only, so on tp::Cuda the data
/// goes through a device buffer on the device's stream: copied in, reduced, copied back (both
/// copies wait for the stream, so the host buffer holds the result on return). Blocking, no
/// overlap: tp/train/grad_buffer.hpp says what that costs the CUDA training path.

#include <memory>
#include <span>

#include "tp/comm/communicator.hpp"
#include "tp/core/tensor.hpp"

namespace tp::detail {

/// `data` reduced over `comm` in place.
template <class Device, class T>
void host_all_reduce(Communicator& comm, const std::shared_ptr<Device>& dev, std::span<T> data,
                     ReduceOp op = ReduceOp::sum) {
  if (comm.size() == 1 || data.empty()) return;
  if constexpr (Device::on_host) {
    comm.all_reduce(data, op);
  } else {
    const auto n = static_cast<std::int64_t>(data.size());
    Tensor<T, Device> staged(dev, 1, n);
    dev->from_host(ConstView<T>(data.data(), 1, n), staged.view());
    comm.all_reduce(staged.data(), staged.data(), data.size(), dtype_of<T>, op, dev->stream());
    dev->to_host(ConstView<T>(staged.view()), MatrixView<T>(data.data(), 1, n));
  }
}

/// Every rank's `send` in rank order into `recv` (size() x send.size() elements).
template <class Device, class T>
void host_all_gather(Communicator& comm, const std::shared_ptr<Device>& dev, std::span<const T> send,
                     std::span<T> recv) {
  TP_CHECK(recv.size() == send.size() * static_cast<std::size_t>(comm.size()),
           "all_gather: receive buffer of {} elements, expected {} x {} ranks", recv.size(), send.size(), comm.size());
  if constexpr (Device::on_host) {
    comm.all_gather(send, recv);
  } else {
    if (send.empty()) return;
    const auto n = static_cast<std::int64_t>(send.size()), all = static_cast<std::int64_t>(recv.size());
    Tensor<T, Device> in(dev, 1, n), out(dev, 1, all);
    dev->from_host(ConstView<T>(send.data(), 1, n), in.view());
    comm.all_gather(in.data(), out.data(), send.size(), dtype_of<T>, dev->stream());
    dev->to_host(ConstView<T>(out.view()), MatrixView<T>(recv.data(), 1, all));
  }
}

/// Rank r receives block r of `send` (size() blocks of recv.size()) summed over the ranks.
template <class Device, class T>
void host_reduce_scatter(Communicator& comm, const std::shared_ptr<Device>& dev, std::span<const T> send,
                         std::span<T> recv) {
  TP_CHECK(send.size() == recv.size() * static_cast<std::size_t>(comm.size()),
           "reduce_scatter: send buffer of {} elements, expected {} x {} ranks", send.size(), recv.size(),
           comm.size());
  if constexpr (Device::on_host) {
    comm.reduce_scatter(send, recv);
  } else {
    if (recv.empty()) return;
    const auto n = static_cast<std::int64_t>(recv.size()), all = static_cast<std::int64_t>(send.size());
    Tensor<T, Device> in(dev, 1, all), out(dev, 1, n);
    dev->from_host(ConstView<T>(send.data(), 1, all), in.view());
    comm.reduce_scatter(in.data(), out.data(), recv.size(), dtype_of<T>, ReduceOp::sum, dev->stream());
    dev->to_host(ConstView<T>(out.view()), MatrixView<T>(recv.data(), 1, n));
  }
}

}  // namespace tp::detail
