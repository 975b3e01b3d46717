#pragma once
/// One test body, many backends: each test binary links one harness (local_harness.cpp,
/// mpi_harness.cpp, ...) that decides where `on_ranks` runs the body.

#include <cstddef>
#include <functional>
#include <memory>
#include <new>
#include <string_view>
#include <vector>

#include "tp/comm/communicator.hpp"

namespace tp::test {

using RankBody = std::function<void(std::shared_ptr<Communicator>)>;

/// Runs `body` once per rank: in-process harnesses at world sizes 1 to 4 (one thread per rank),
/// the mpirun harness once on every process of the MPI world. Exceptions escaping the body fail
/// the test with the world size and rank.
void on_ranks(const RankBody& body);

/// The backend the harness runs: "local", "mpi", ...
std::string_view harness_backend();

/// Where test buffers live: the host by default; device harnesses (CUDA-local, NCCL) switch to
/// memory the GPU can read (managed), so one test body serves every backend.
struct BufferMemory {
  void* (*allocate)(std::size_t bytes) = [](std::size_t bytes) { return ::operator new(bytes); };
  void (*deallocate)(void* p) = [](void* p) { ::operator delete(p); };
};
inline BufferMemory& buffer_memory() {
  static BufferMemory memory;
  return memory;
}

template <class T>
struct BufferAllocator {
  using value_type = T;
  BufferAllocator() = default;
  template <class U>
  BufferAllocator(const BufferAllocator<U>&) {}
  T* allocate(std::size_t n) { return static_cast<T*>(buffer_memory().allocate(n * sizeof(T))); }
  void deallocate(T* p, std::size_t) { buffer_memory().deallocate(p); }
  template <class U>
  bool operator==(const BufferAllocator<U>&) const { return true; }
};

/// A vector in the harness's buffer memory; collectives take its data().
template <class T>
using Buffer = std::vector<T, BufferAllocator<T>>;

}  // namespace tp::test
