#pragma once
/// What every layer holds: the communicator of its tensor-parallel group and the device it runs on.

#include <memory>
#include <utility>

#include "tp/comm/communicator.hpp"

namespace tp {

class Cpu;  // the default device; defined in tp/device/cpu/cpu.hpp

template <class Device = Cpu>
struct Context {
  std::shared_ptr<Communicator> comm;
  std::shared_ptr<Device> device;

  /// A null device means a default-constructed one (the current GPU, or the host).
  explicit Context(std::shared_ptr<Communicator> c, std::shared_ptr<Device> d = nullptr)
      : comm(std::move(c)), device(d ? std::move(d) : std::make_shared<Device>()) {
    TP_CHECK(comm != nullptr, "Context needs a communicator");
  }

  int rank() const { return comm->rank(); }
  int world() const { return comm->size(); }
  Stream stream() const { return device->stream(); }
};

}  // namespace tp
