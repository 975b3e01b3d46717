#pragma once
/// Collectives over buffers in host memory on the communicator of any device: what the training
/// code (tp/train/) uses for its host-side state (main gradients, master weights, token counts,
/// norms). On a host device (tp::Cpu) they call the communicator directly. Device communicators
/// (NCCL, LocalCommunicator over device memory) reduce device buffers only, so on tp::Cuda the data
/// goes through a device buffer on the device's stream, by HostStagedCommunicator: copied in,
/// reduced, copied back (both copies wait for the stream, so the host buffer holds the result on
/// return; tp/comm/detail/host_staged_communicator.hpp). Blocking, no overlap:
/// tp/train/grad_buffer.hpp says what that costs the CUDA training path.

#include <memory>
#include <span>

#include "tp/comm/communicator.hpp"
#include "tp/comm/detail/host_staged_communicator.hpp"

namespace tp::detail {

/// `data` reduced over `comm` in place.
template <class Device, class T>
void host_all_reduce(Communicator& comm, const std::shared_ptr<Device>& dev, std::span<T> data,
                     ReduceOp op = ReduceOp::sum) {
  if (comm.size() == 1 || data.empty()) return;
  if constexpr (Device::on_host) comm.all_reduce(data, op);
  else HostStagedCommunicator<Device>(comm, *dev).all_reduce(data, op);
}

/// Every rank's `send` in rank order into `recv` (size() x send.size() elements).
template <class Device, class T>
void host_all_gather(Communicator& comm, const std::shared_ptr<Device>& dev, std::span<const T> send,
                     std::span<T> recv) {
  TP_CHECK(recv.size() == send.size() * static_cast<std::size_t>(comm.size()),
           "all_gather: receive buffer of {} elements, expected {} x {} ranks", recv.size(), send.size(), comm.size());
  if constexpr (Device::on_host) comm.all_gather(send, recv);
  else if (!send.empty()) HostStagedCommunicator<Device>(comm, *dev).all_gather(send, recv);
}

/// Rank r receives block r of `send` (size() blocks of recv.size()) summed over the ranks.
template <class Device, class T>
void host_reduce_scatter(Communicator& comm, const std::shared_ptr<Device>& dev, std::span<const T> send,
                         std::span<T> recv) {
  TP_CHECK(send.size() == recv.size() * static_cast<std::size_t>(comm.size()),
           "reduce_scatter: send buffer of {} elements, expected {} x {} ranks", send.size(), recv.size(),
           comm.size());
  if constexpr (Device::on_host) comm.reduce_scatter(send, recv);
  else if (!recv.empty()) HostStagedCommunicator<Device>(comm, *dev).reduce_scatter(send, recv);
}

}  // namespace tp::detail
