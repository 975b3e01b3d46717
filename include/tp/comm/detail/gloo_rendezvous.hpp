#pragma once
/// How Gloo ranks find each other, apart from the collectives (tp/comm/gloo_communicator.hpp):
/// every rank opens a TCP device, publishes the addresses of its ends of the pairs, learns
/// everyone else's through an exchange, and connects a full mesh. The exchange is the only
/// collective a mesh needs (a few hundred bytes per rank), so it can run over a gloo store
/// (`store_exchange`: HashStore, FileStore, RedisStore, ...) or over any tp communicator that
/// already connects the ranks (`communicator_exchange`: MPI under mpirun, or the parent of a split).

#ifndef TP_HAS_GLOO
#error "tp/comm/detail/gloo_rendezvous.hpp needs the tp::gloo CMake component: target_link_libraries(... tp::gloo)"
#endif

#include <gloo/context.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/context.h>
#include <gloo/transport/device.h>
#include <gloo/transport/tcp/device.h>

#include <pthread.h>
#include <signal.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tp/comm/communicator.hpp"
#include "tp/comm/detail/process_env.hpp"
#include "tp/core/error.hpp"

namespace tp::detail {

/// Blocks SIGPIPE on the calling thread for its lifetime, and discards one raised meanwhile.
/// gloo writes to its sockets with writev, which cannot pass MSG_NOSIGNAL: when a peer has died,
/// the write raises SIGPIPE, whose default action kills the process before gloo can report EPIPE.
/// Blocking it per thread leaves the process's own disposition (and the caller's pipes) alone;
/// threads started meanwhile (gloo's I/O loop, created with the device) inherit the block.
class SigpipeBlock {
 public:
  SigpipeBlock() { pthread_sigmask(SIG_BLOCK, &pipe_set(), &old_); }
  SigpipeBlock(const SigpipeBlock&) = delete;
  SigpipeBlock& operator=(const SigpipeBlock&) = delete;
  ~SigpipeBlock() {
    if (sigismember(&old_, SIGPIPE)) return;  // the caller had it blocked: leave what is pending to it
    sigset_t pending;
    sigemptyset(&pending);
    if (sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE)) {
      const timespec now{};
      sigtimedwait(&pipe_set(), nullptr, &now);
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }

 private:
  static const sigset_t& pipe_set() {
    static const sigset_t set = [] {
      sigset_t s;
      sigemptyset(&s);
      sigaddset(&s, SIGPIPE);
      return s;
    }();
    return set;
  }
  sigset_t old_{};
};

/// Every rank's bytes, in rank order, given this rank's: the one collective a mesh needs.
using GlooExchange = std::function<std::vector<std::vector<char>>(const std::vector<char>&)>;

/// A gloo context whose pairs are connected from addresses exchanged by any means (gloo's own
/// rendezvous::Context insists on a Store).
class GlooMeshContext final : public ::gloo::Context {
 public:
  GlooMeshContext(int rank, int size, std::chrono::milliseconds timeout) : ::gloo::Context(rank, size) {
    setTimeout(timeout);
  }

  void connect(const std::shared_ptr<::gloo::transport::Device>& device, const GlooExchange& exchange) {
    auto transport = device->createContext(rank, size);
    transport->setTimeout(getTimeout());
    // My blob: the address of my end of every pair, in peer order, skipping myself.
    std::vector<char> mine;
    for (int peer = 0; peer < size; ++peer) {
      if (peer == rank) continue;
      const auto bytes = transport->createPair(peer)->address().bytes();
      mine.insert(mine.end(), bytes.begin(), bytes.end());
    }
    const auto all = exchange(mine);
    for (int peer = 0; peer < size; ++peer) {
      if (peer == rank) continue;
      const auto& blob = all[peer];
      TP_CHECK(size > 1 && blob.size() % (size - 1) == 0 && !blob.empty(),
               "Gloo rendezvous: rank {} sent {} address bytes, not a multiple of {} pairs", peer, blob.size(),
               size - 1);
      const std::size_t width = blob.size() / (size - 1), slot = rank < peer ? rank : rank - 1;
      transport->getPair(peer)->connect(std::vector<char>(blob.begin() + slot * width, blob.begin() + (slot + 1) * width));
    }
    device_ = device;
    transportContext_ = std::move(transport);
  }
};

/// A TCP device on `iface`, else `hostname` (empty: $TP_GLOO_IFACE, else $TP_GLOO_HOSTNAME, else
/// 127.0.0.1, which serves all ranks on one machine).
inline std::shared_ptr<::gloo::transport::Device> make_gloo_device(const std::string& hostname, const std::string& iface) {
  ::gloo::transport::tcp::attr attr;
  attr.iface = iface.empty() ? env_or("TP_GLOO_IFACE", "") : iface;
  if (attr.iface.empty())
    attr.hostname = hostname.empty() ? env_or("TP_GLOO_HOSTNAME", "127.0.0.1") : hostname;
  try {
    const SigpipeBlock inherited_by_the_io_thread;
    return ::gloo::transport::tcp::CreateDevice(attr);
  } catch (const std::exception& e) {
    TP_THROW(CommError, "GlooCommunicator: cannot open a TCP device on {} '{}': {}",
             attr.iface.empty() ? "host" : "interface", attr.iface.empty() ? attr.hostname : attr.iface, e.what());
  }
}

/// Publishes my bytes under "<prefix>/<rank>", then waits for every other rank's key; on a
/// timeout, names the ranks whose keys never appeared.
inline GlooExchange store_exchange(::gloo::rendezvous::Store& store, int rank, int size, std::string prefix,
                                  std::chrono::milliseconds timeout) {
  return [&store, rank, size, prefix = std::move(prefix), timeout](const std::vector<char>& mine) {
    const auto key = [&](int r) { return fmt::format("{}/{}", prefix, r); };
    store.set(key(rank), mine);
    std::vector<std::string> keys;
    for (int r = 0; r < size; ++r) keys.push_back(key(r));
    try {
      store.wait(keys, timeout);
    } catch (const std::exception& e) {
      std::vector<int> missing;
      for (int r = 0; r < size; ++r) try {
          store.wait({key(r)}, std::chrono::milliseconds(1));
        } catch (const std::exception&) {
          missing.push_back(r);
        }
      TP_THROW(CommError,
               "GlooCommunicator rendezvous: rank {} waited {} ms in the store for keys '{}/*'; ranks {} of {} "
               "never arrived ({})",
               rank, timeout.count(), prefix, missing, size, e.what());
    }
    std::vector<std::vector<char>> all(size);
    for (int r = 0; r < size; ++r) all[r] = r == rank ? mine : store.get(key(r));
    return all;
  };
}

/// An all-gather of byte strings of any lengths over a tp communicator.
inline GlooExchange communicator_exchange(Communicator& comm) {
  return [&comm](const std::vector<char>& mine) {
    const int n = comm.size();
    std::vector<std::int64_t> lengths(n);
    const std::int64_t my_length = static_cast<std::int64_t>(mine.size());
    comm.all_gather(&my_length, lengths.data(), 1, DType::i64);
    std::vector<std::size_t> counts(lengths.begin(), lengths.end());
    const auto displs = displacements(counts);
    std::vector<char> flat(displs.back() + counts.back());
    comm.all_gather_v(mine.data(), flat.data(), counts, DType::u8);
    std::vector<std::vector<char>> all(n);
    for (int r = 0; r < n; ++r)
      all[r].assign(flat.begin() + static_cast<std::ptrdiff_t>(displs[r]),
                    flat.begin() + static_cast<std::ptrdiff_t>(displs[r] + counts[r]));
    return all;
  };
}

}  // namespace tp::detail
