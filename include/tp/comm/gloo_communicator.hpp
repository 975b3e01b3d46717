#pragma once
/// Collectives over Gloo (the library behind PyTorch's CPU process groups) and its TCP transport.
///
/// Ranks meet through a rendezvous that only has to all-gather a few hundred bytes per rank (the
/// TCP addresses of its pairs), so there are three ways in, all ending in the same full mesh:
///   - a gloo store the caller gives (gloo::rendezvous::HashStore in one process, FileStore on a
///     shared directory, RedisStore, ...): `GlooCommunicator(store, rank, size)`;
///   - a directory and the rank and world size from the environment: `GlooCommunicator::from_env()`
///     (TP_RANK / TP_WORLD_SIZE / TP_GLOO_STORE, or Open MPI's OMPI_COMM_WORLD_RANK / _SIZE, or
///     PMI_RANK / PMI_SIZE: tp/comm/detail/process_env.hpp);
///   - any tp communicator that already connects the same ranks, such as an MpiCommunicator under
///     mpirun: `GlooCommunicator(mpi)`. This is how "rendezvous through MPI" works without this
///     header including mpi.h, and how `split` builds its sub-groups (over the parent).
///
/// This file holds the collectives; the rendezvous and the mesh it builds are in
/// tp/comm/detail/gloo_rendezvous.hpp. Every collective and the rendezvous itself give up after
/// `timeout` and throw CommError; after a timeout or a lost connection the communicator refuses
/// further collectives, since gloo leaves the pairs in an unknown state. A peer that dies makes
/// gloo's writes fail with EPIPE: SIGPIPE is blocked on the threads that write (gloo's I/O thread
/// and the caller's, during a collective), so that is a CommError, never a killed process.
///
/// The asynchronous collectives (all_reduce_async, all_gather_async, reduce_scatter_async, ...)
/// take Communicator's default and complete before returning: gloo's algorithms run on the
/// calling thread, and a thread per call to run them in the background is not worth its cost on
/// the CPU jobs this backend serves.

#ifndef TP_HAS_GLOO
#error "tp/comm/gloo_communicator.hpp needs the tp::gloo CMake component: target_link_libraries(... tp::gloo)"
#endif

#include <gloo/allgather.h>
#include <gloo/allgatherv.h>
#include <gloo/allreduce.h>
#include <gloo/alltoallv.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/common/error.h>
#include <gloo/common/logging.h>
#include <gloo/config.h>
#include <gloo/context.h>
#include <gloo/math.h>
#include <gloo/rendezvous/file_store.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/device.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "tp/comm/communicator.hpp"
#include "tp/comm/detail/gloo_rendezvous.hpp"
#include "tp/comm/detail/process_env.hpp"
#include "tp/detail/host_reduce.hpp"

namespace tp {

struct GlooOptions {
  /// How long a rank waits for its peers, at the rendezvous and at every collective, before
  /// throwing CommError.
  std::chrono::milliseconds timeout = std::chrono::minutes(5);
  /// Address this rank listens on. Empty: $TP_GLOO_HOSTNAME, else 127.0.0.1 (loopback: all ranks on
  /// one machine). On a cluster give the host's name or address, or `iface`.
  std::string hostname;
  /// Network interface to listen on instead of a hostname ("eth0"). Empty: $TP_GLOO_IFACE.
  std::string iface;
  /// Keys in the store begin with this, so one store can serve several jobs or communicators;
  /// each communicator made from the same store needs its own prefix.
  std::string prefix = "tp";
};

namespace detail {

template <class T>
::gloo::AllreduceOptions::Func gloo_reduce_fn(ReduceOp op) {
  using Fn = void (*)(void*, const void*, const void*, std::size_t);
  switch (op) {
    case ReduceOp::sum: return static_cast<Fn>(&::gloo::sum<T>);
    case ReduceOp::prod: return static_cast<Fn>(&::gloo::product<T>);
    case ReduceOp::min: return static_cast<Fn>(&::gloo::min<T>);
    case ReduceOp::max: return static_cast<Fn>(&::gloo::max<T>);
  }
  return nullptr;
}

}  // namespace detail

class GlooCommunicator final : public Communicator {
 public:
  using Options = GlooOptions;
  using Exchange = detail::GlooExchange;

  /// Rendezvous through a gloo store shared by all ranks: each rank publishes its addresses under
  /// "<prefix>/<rank>" and waits (at most `timeout`) for everyone else's.
  GlooCommunicator(::gloo::rendezvous::Store& store, int rank, int size, Options options = {})
      : GlooCommunicator(rank, size, detail::make_gloo_device(options.hostname, options.iface), options,
                         detail::store_exchange(store, rank, size, options.prefix, options.timeout)) {}

  /// Rendezvous over a tp communicator that already connects these ranks (an MpiCommunicator under
  /// mpirun, a LocalCommunicator in one process): ranks and size are taken from it.
  explicit GlooCommunicator(Communicator& bootstrap, Options options = {})
      : GlooCommunicator(bootstrap.rank(), bootstrap.size(), detail::make_gloo_device(options.hostname, options.iface),
                         options, detail::communicator_exchange(bootstrap)) {}

  /// Rendezvous through gloo's FileStore in `directory` (created if missing; it must be shared
  /// by all ranks and free of files from an earlier job with the same prefix).
  static std::shared_ptr<GlooCommunicator> from_directory(const std::string& directory, int rank, int size,
                                                          Options options = {}) {
    std::error_code ec;
    std::filesystem::create_directories(directory, ec);
    TP_CHECK(!ec, "GlooCommunicator: cannot create the store directory '{}': {}", directory, ec.message());
    ::gloo::rendezvous::FileStore store(directory);
    return std::make_shared<GlooCommunicator>(store, rank, size, std::move(options));
  }

  /// Rank, world size and store directory from the environment: TP_RANK, TP_WORLD_SIZE (else
  /// OMPI_COMM_WORLD_RANK / OMPI_COMM_WORLD_SIZE, else PMI_RANK / PMI_SIZE) and TP_GLOO_STORE. The
  /// key prefix is TP_GLOO_PREFIX, else one made from Open MPI's job id (PMIX_NAMESPACE) when there is
  /// one, so that files left by an earlier mpirun job are never read.
  static std::shared_ptr<GlooCommunicator> from_env(Options options = {}) {
    const auto [rank, size] = detail::world_from_env("GlooCommunicator::from_env");
    const std::string dir = detail::env_or("TP_GLOO_STORE", "");
    TP_CHECK(!dir.empty(), "GlooCommunicator::from_env: TP_GLOO_STORE must name a directory shared by all {} ranks",
             size);
    const std::string job = detail::env_or("PMIX_NAMESPACE", "");
    options.prefix = detail::env_or("TP_GLOO_PREFIX", job.empty() ? options.prefix : options.prefix + "-" + job);
    return from_directory(dir, rank, size, std::move(options));
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string_view backend() const override { return "gloo"; }
  std::chrono::milliseconds timeout() const { return options_.timeout; }
  /// The gloo context, for calling gloo's algorithms directly (null at world size 1).
  const std::shared_ptr<::gloo::Context>& native() const { return context_; }

 protected:
  void do_barrier() override {
    check_usable("barrier");
    if (size_ == 1) return;
    run("barrier", [&] {
      ::gloo::BarrierOptions opts(context_);
      opts.setTimeout(options_.timeout);
      ::gloo::barrier(opts);
    });
  }

  std::shared_ptr<Communicator> do_split(int color, int key) override {
    check_usable("split");
    // Everyone's (color, key), then the members of my color ordered by (key, rank).
    std::vector<std::int64_t> mine{color, key}, all(2 * static_cast<std::size_t>(size_));
    all_gather(mine.data(), all.data(), 2, DType::i64);
    std::vector<int> members;
    for (int r = 0; r < size_; ++r)
      if (all[2 * r] == color) members.push_back(r);
    std::stable_sort(members.begin(), members.end(), [&](int a, int b) { return all[2 * a + 1] < all[2 * b + 1]; });
    // Every rank takes part in one exchange over this communicator, each sending its own group's
    // addresses; a rank left out (negative color) sends nothing.
    const Exchange over_parent = [this, members](const std::vector<char>& bytes) {
      const auto everyone = detail::communicator_exchange(*this)(bytes);
      std::vector<std::vector<char>> group;
      for (int r : members) group.push_back(everyone[r]);
      return group;
    };
    if (color < 0 || members.size() == 1) {  // no mesh to build, but the exchange is collective
      over_parent({});
      if (color < 0) return nullptr;
      return std::shared_ptr<GlooCommunicator>(new GlooCommunicator(0, 1, device_, options_, over_parent));
    }
    const int new_rank = static_cast<int>(std::find(members.begin(), members.end(), rank_) - members.begin());
    return std::shared_ptr<GlooCommunicator>(
        new GlooCommunicator(new_rank, static_cast<int>(members.size()), device_, options_, over_parent));
  }

  void do_all_reduce(const void* send, void* recv, std::size_t count, DType dtype, ReduceOp op, Stream) override {
    if (detail::is_float16(dtype)) {  // gloo's ring reduces no 16-bit floats: reduce them as float, round once
      auto wide = detail::widen_to_float(send, count, dtype);
      do_all_reduce(wide.data(), wide.data(), count, DType::f32, op, nullptr);
      return detail::narrow_from_float(wide.data(), count, dtype, recv);
    }
    check_usable("all_reduce");
    if (count == 0) return;
    if (size_ == 1) {
      if (send != recv) std::memcpy(recv, send, count * size_of(dtype));
      return;
    }
    run("all_reduce", [&] {
      ::gloo::AllreduceOptions opts(context_);
      opts.setTimeout(options_.timeout);
      visit(dtype, [&]<class T>(T*) {
        if (send != recv) opts.setInput(const_cast<T*>(static_cast<const T*>(send)), count);
        opts.setOutput(static_cast<T*>(recv), count);
        opts.setReduceFunction(detail::gloo_reduce_fn<T>(op));
      });
      ::gloo::allreduce(opts);
    });
  }

  void do_all_gather_v(const void* send, void* recv, std::span<const std::size_t> counts, DType dtype,
                       Stream) override {
    check_usable("all_gather");
    const std::size_t elem = size_of(dtype);
    const auto displs = displacements(counts);
    auto* out = static_cast<std::uint8_t*>(recv);
    const bool in_place = send == out + displs[rank_] * elem;
    if (size_ == 1 || displs.back() + counts.back() == 0) {
      if (!in_place && counts[rank_] > 0) std::memcpy(out + displs[rank_] * elem, send, counts[rank_] * elem);
      return;
    }
    run("all_gather", [&] {
      ::gloo::AllgathervOptions opts(context_);
      opts.setTimeout(options_.timeout);
      std::vector<std::size_t> bytes(counts.begin(), counts.end());
      for (auto& b : bytes) b *= elem;
      if (!in_place) opts.setInput(const_cast<std::uint8_t*>(static_cast<const std::uint8_t*>(send)), bytes[rank_]);
      opts.setOutput(out, std::move(bytes));
      ::gloo::allgatherv(opts);
    });
  }

  /// An all-to-all that hands every rank its block from each peer, then a local reduction in
  /// rank order: each rank sends and receives (n-1)/n of the buffer, as a ring reduce-scatter
  /// does, in one step instead of n-1, and the result does not depend on timing.
  void do_reduce_scatter_v(const void* send, void* recv, std::span<const std::size_t> counts, DType dtype,
                           ReduceOp op, Stream) override {
    check_usable("reduce_scatter");
    const std::size_t elem = size_of(dtype), mine = counts[rank_];
    const auto displs = displacements(counts);
    if (size_ == 1) {
      if (mine > 0 && send != recv) std::memmove(recv, send, mine * elem);
      return;
    }
    if (displs.back() + counts.back() == 0) return;
    scratch_.resize(mine * elem * static_cast<std::size_t>(size_));
    run("reduce_scatter", [&] {
      ::gloo::AlltoallvOptions opts(context_);
      opts.setTimeout(options_.timeout);
      std::vector<std::int64_t> send_bytes(counts.begin(), counts.end()), recv_bytes(size_, static_cast<std::int64_t>(mine * elem));
      for (auto& b : send_bytes) b *= static_cast<std::int64_t>(elem);
      opts.setInput(const_cast<std::uint8_t*>(static_cast<const std::uint8_t*>(send)), std::move(send_bytes));
      opts.setOutput(scratch_.data(), std::move(recv_bytes));
      ::gloo::alltoallv(opts);
    });
    if (mine == 0) return;
    std::vector<const void*> blocks(size_);
    for (int q = 0; q < size_; ++q) blocks[q] = scratch_.data() + static_cast<std::size_t>(q) * mine * elem;
    detail::reduce_host(dtype, op, blocks.data(), size_, 0, mine, recv, "GlooCommunicator");
  }

  void do_broadcast(void* buffer, std::size_t count, DType dtype, int root, Stream) override {
    check_usable("broadcast");
    if (size_ == 1 || count == 0) return;
    run("broadcast", [&] {
      ::gloo::BroadcastOptions opts(context_);
      opts.setTimeout(options_.timeout);
      opts.setRoot(root);
      opts.setOutput(static_cast<std::uint8_t*>(buffer), count * size_of(dtype));
      ::gloo::broadcast(opts);
    });
  }

  /// Fused verification (Communicator::fused_all_reduce): the first 64 KiB of an all_reduce travel
  /// with its signature in one all-gather of fixed-size messages (signature and payload padded to
  /// the stride), and the input is reduced on the host once every signature matched; bare
  /// signatures (every other verified call) travel in the same all-gather. Every rank sends and
  /// receives the same bytes whatever it called, so ranks that disagree complete the exchange and
  /// all see the mismatch. A ring all-gather takes n-1 steps where gloo's ring all_reduce takes
  /// 2(n-1), and at these sizes a step costs gloo's TCP round trip more than the bytes, so the
  /// fused call is no slower than gloo's all_reduce alone and the padding costs little
  /// (docs/design.md).
  static constexpr std::size_t fused_bytes = std::size_t{64} << 10;
  std::size_t fused_capacity() const override { return fused_bytes; }
  /// Up to 256 KiB the rest of the input follows in a second all-gather once the signatures
  /// matched: two rounds of messages, as many as gloo's ring all_reduce needs at two ranks (its
  /// reduce-scatter and all-gather) and fewer than at more, each a TCP round trip that costs more
  /// than the bytes at this size; by 1 MiB the bytes (every rank receives every input, twice a
  /// ring's at four ranks) outweighed the round trip that the separate signature exchange costs
  /// (measured, docs/design.md).
  static constexpr std::size_t fused_limit_bytes = std::size_t{256} << 10;
  std::size_t fused_limit() const override { return fused_limit_bytes; }

  void do_exchange_messages(const std::byte* mine, std::size_t bytes, std::byte* all) override {
    check_usable("call signature exchange");
    const std::size_t stride = fused_stride();
    std::memcpy(all + stride * static_cast<std::size_t>(rank_), mine, bytes);  // in place: gloo sends this slot
    run("call signature exchange", [&] {
      ::gloo::AllgatherOptions opts(context_);
      opts.setTimeout(options_.timeout);
      opts.setOutput(reinterpret_cast<std::uint8_t*>(all), stride * static_cast<std::size_t>(size_));
      ::gloo::allgather(opts);
    });
  }

 private:
  GlooCommunicator(int rank, int size, std::shared_ptr<::gloo::transport::Device> device, Options options,
                   const Exchange& exchange)
      : rank_(rank), size_(size), options_(std::move(options)), device_(std::move(device)) {
    TP_CHECK(size > 0 && rank >= 0 && rank < size, "GlooCommunicator: rank {} is outside world size {}", rank, size);
    TP_CHECK(options_.timeout.count() > 0, "GlooCommunicator: the timeout must be positive, got {} ms",
             options_.timeout.count());
    if (size == 1) return;  // gloo needs no pairs, and its algorithms would look for one to myself
    auto context = std::make_shared<detail::GlooMeshContext>(rank, size, options_.timeout);
    run("rendezvous", [&] { context->connect(device_, exchange); });
    context_ = std::move(context);
    // A rank's pairs can be connected on its side while a peer still finishes its handshakes; a
    // rank that closed its pairs right away would break the peer's rendezvous.
    barrier();
  }

  template <class F>
  static void visit(DType dtype, F&& f) {
    switch (dtype) {
      case DType::f32: return f(static_cast<float*>(nullptr));
      case DType::f64: return f(static_cast<double*>(nullptr));
      case DType::i32: return f(static_cast<std::int32_t*>(nullptr));
      case DType::i64: return f(static_cast<std::int64_t*>(nullptr));
      case DType::u8: return f(static_cast<std::uint8_t*>(nullptr));
      case DType::f16:
      case DType::bf16: break;
    }
    TP_THROW(InvalidArgument, "GlooCommunicator: no reduction for {}", name(dtype));
  }

  void check_usable(const char* op) const {
    if (!broken_.empty())
      TP_THROW(CommError, "GlooCommunicator {}: rank {} of {} can no longer communicate: {}", op, rank_, size_,
               broken_);
  }

  /// Runs a gloo call, turning gloo's exceptions into CommError that names the operation, this
  /// rank and the peers it was waiting for.
  template <class F>
  void run(const char* op, F&& f) {
    const auto fail = [&](const char* kind, const char* what, bool fatal) {
      std::vector<int> peers;
      for (int r = 0; r < size_; ++r)
        if (r != rank_) peers.push_back(r);
      const std::string message =
          fmt::format("GlooCommunicator {}: rank {} of {} failed ({} after at most {} ms waiting for ranks {}): {}", op,
                      rank_, size_, kind, options_.timeout.count(), peers, what);
      if (fatal) broken_ = message;
      TP_THROW(CommError, "{}", message);
    };
    try {
      const detail::SigpipeBlock no_sigpipe;  // a peer that died makes our writes fail, not kill us
      f();
    } catch (const ::gloo::IoException& e) {
      fail("timeout or lost connection", e.what(), true);
    } catch (const ::gloo::EnforceNotMet& e) {
      fail("gloo refused the call", e.what(), false);
    } catch (const ::gloo::Exception& e) {
      fail("gloo error", e.what(), true);
    }
  }

  int rank_ = 0, size_ = 1;
  Options options_;
  std::shared_ptr<::gloo::transport::Device> device_;
  std::shared_ptr<::gloo::Context> context_;
  std::vector<std::uint8_t> scratch_;
  std::string broken_;
};

}  // namespace tp
