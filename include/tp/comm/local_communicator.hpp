#pragma once
/// N ranks as threads in one process, sharing memory: the backend for tests and for one process
/// driving several devices. Each collective is a rendezvous: every rank posts its buffers, then
/// computes its own share of the result straight from its peers' buffers (the data phase), then
/// waits until all are done. The wait for peers to arrive has a timeout, and a rank that throws
/// inside `run_local` wakes its peers with a CommError instead of leaving them blocked. The wait
/// at the end of the data phase has none, and is kept even when a rank throws: once every rank has
/// arrived, peers read and write this rank's buffers, and leaving before they are done would let
/// them write into freed memory; they are doing local copies, not waiting for anyone.
///
/// Where the buffers live is a pluggable `LocalMemory`: host memory by default; device memory
/// with `tp::CudaLocalMemory` (tp/device/cuda_local_memory.cuh), so that N ranks as threads can
/// share one GPU, which NCCL refuses.
///
/// The asynchronous collectives (all_reduce_async, all_gather_async, reduce_scatter_async, ...)
/// take Communicator's default: they complete before returning. A rendezvous needs every rank's
/// thread inside it, so there is nothing to run in the background without a thread per call.

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <span>
#include <thread>
#include <utility>
#include <vector>

#include "tp/comm/communicator.hpp"
#include "tp/core/partition.hpp"
#include "tp/detail/host_reduce.hpp"

namespace tp {

/// How a LocalCommunicator's ranks move and reduce the bytes of their peers' buffers. Each call
/// runs on the calling rank's thread with the stream the collective was given.
class LocalMemory {
 public:
  virtual ~LocalMemory() = default;
  /// Before a rank posts its buffers: whatever is pending on `stream` must be done, because peers
  /// read and write those buffers from their own threads (and streams) next.
  virtual void acquire(Stream stream) = 0;
  virtual void copy(void* dst, const void* src, std::size_t bytes, Stream stream) = 0;
  /// dst[i] = op over q < n of srcs[q][offset + i] for i < count, in rank order; dst may alias
  /// srcs[q] + offset.
  virtual void reduce(DType dtype, ReduceOp op, const void* const* srcs, int n, std::size_t offset, std::size_t count,
                      void* dst, Stream stream) = 0;
  /// Before a rank says it is done: its copies and reductions must have landed.
  virtual void release(Stream stream) = 0;
};

/// Host memory: memcpy and the host reduction; 16-bit floats cannot be reduced.
class HostMemory final : public LocalMemory {
 public:
  void acquire(Stream) override {}
  void copy(void* dst, const void* src, std::size_t bytes, Stream) override {
    if (bytes != 0) std::memcpy(dst, src, bytes);  // memcpy from null is undefined even for 0 bytes
  }
  void reduce(DType dtype, ReduceOp op, const void* const* srcs, int n, std::size_t offset, std::size_t count,
              void* dst, Stream) override {
    detail::reduce_host(dtype, op, srcs, n, offset, count, dst, "LocalCommunicator");
  }
  void release(Stream) override {}
};

namespace detail {

/// The state the ranks of one LocalCommunicator share.
class LocalGroup {
 public:
  struct Post {
    std::string_view op;
    const void* send = nullptr;
    void* recv = nullptr;
    std::size_t count = 0;
    const std::size_t* counts = nullptr;  ///< per-rank counts of the _v forms
    DType dtype = DType::u8;
    ReduceOp reduce = ReduceOp::sum;
    int root = 0;
    int color = 0, key = 0;
  };

  LocalGroup(int size, std::chrono::milliseconds timeout, std::shared_ptr<LocalMemory> memory)
      : size_(size), timeout_(timeout), memory_(std::move(memory)), posts_(size), arrived_(size, false), splits_(size) {
    TP_CHECK(timeout.count() > 0, "LocalCommunicator: the timeout must be positive, got {} ms", timeout.count());
  }

  int size() const { return size_; }
  LocalMemory& memory() const { return *memory_; }
  const std::shared_ptr<LocalMemory>& memory_ptr() const { return memory_; }
  std::chrono::milliseconds timeout() const { return timeout_; }
  Post& post(int rank) { return posts_[rank]; }
  const Post& post(int rank) const { return posts_[rank]; }
  std::shared_ptr<LocalGroup>& split_slot(int rank) { return splits_[rank]; }

  /// Blocks until every rank has arrived at this phase; throws CommError on timeout or abort.
  void arrive_and_wait(int rank, std::string_view op) {
    std::unique_lock lock(mutex_);
    throw_if_aborted(rank, op);
    const std::uint64_t gen = generation_;
    arrived_[rank] = true;
    if (++count_ == size_) {
      count_ = 0;
      std::fill(arrived_.begin(), arrived_.end(), false);
      ++generation_;
      cv_.notify_all();
      return;
    }
    if (!cv_.wait_for(lock, timeout_, [&] { return generation_ != gen || aborted_; })) {
      std::vector<int> missing;
      for (int r = 0; r < size_; ++r)
        if (!arrived_[r]) missing.push_back(r);
      abort_locked(fmt::format("rank {} timed out in {}", rank, op));
      TP_THROW(CommError, "LocalCommunicator {}: rank {} waited {} ms; ranks {} of {} never arrived", op, rank,
               timeout_.count(), missing, size_);
    }
    // Everyone arrived: go on even if an abort came after, since the peers go on too.
    if (generation_ == gen) throw_if_aborted(rank, op);
  }

  /// The end of a data phase, which every rank that passed `arrive_and_wait` into one must call
  /// (through DataPhase), `failure` empty when it did its part. Returns once every rank has
  /// called it, with the failures of all: no timeout and no abort, because until then peers may
  /// still write into this rank's buffers.
  std::string leave_data_phase(const std::string& failure) {
    std::unique_lock lock(mutex_);
    if (!failure.empty()) phase_failures_ += (phase_failures_.empty() ? "" : "; ") + failure;
    const std::uint64_t gen = phase_generation_;
    if (++left_ == size_) {
      left_ = 0;
      ++phase_generation_;
      last_failures_ = std::exchange(phase_failures_, {});
      cv_.notify_all();
      return last_failures_;
    }
    // The next phase cannot end before this rank has left it too, so last_failures_ is this one's.
    cv_.wait(lock, [&] { return phase_generation_ != gen; });
    return last_failures_;
  }

  /// Wakes every waiting rank (and those of groups split from this one) with a CommError.
  void abort(const std::string& reason) {
    std::lock_guard lock(mutex_);
    abort_locked(reason);
  }

  void adopt_child(const std::shared_ptr<LocalGroup>& child) {
    std::lock_guard lock(mutex_);
    children_.push_back(child);
  }

 private:
  void abort_locked(const std::string& reason) {
    if (aborted_) return;
    aborted_ = true;
    reason_ = reason;
    cv_.notify_all();
    for (auto& weak : children_)
      if (auto child = weak.lock()) child->abort(reason);
  }
  void throw_if_aborted(int rank, std::string_view op) const {
    if (aborted_) TP_THROW(CommError, "LocalCommunicator {}: rank {} gave up because {}", op, rank, reason_);
  }

  const int size_;
  const std::chrono::milliseconds timeout_;
  const std::shared_ptr<LocalMemory> memory_;
  std::vector<Post> posts_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::uint64_t generation_ = 0;
  int count_ = 0;
  std::vector<bool> arrived_;
  int left_ = 0;
  std::uint64_t phase_generation_ = 0;
  std::string phase_failures_, last_failures_;
  bool aborted_ = false;
  std::string reason_;
  std::vector<std::shared_ptr<LocalGroup>> splits_;
  std::vector<std::weak_ptr<LocalGroup>> children_;
};

/// A rank's part in a data phase: `complete()` at the end of the normal path; if the rank throws
/// first, the destructor still waits for its peers (see LocalGroup::leave_data_phase).
class DataPhase {
 public:
  DataPhase(LocalGroup& group, int rank, std::string_view op) : group_(group), rank_(rank), op_(op) {}
  DataPhase(const DataPhase&) = delete;
  DataPhase& operator=(const DataPhase&) = delete;
  ~DataPhase() {
    if (done_) return;
    try {
      group_.leave_data_phase(fmt::format("rank {} failed in {}", rank_, op_));
    } catch (...) {  // only an allocation can throw here; the wait itself has happened
    }
  }
  /// Waits for the peers; throws CommError if one of them failed in this phase, since this
  /// rank's result then lacks that peer's part.
  void complete() {
    done_ = true;
    const std::string failures = group_.leave_data_phase({});
    if (!failures.empty())
      TP_THROW(CommError, "LocalCommunicator {}: rank {} has an incomplete result: {}", op_, rank_, failures);
  }

 private:
  LocalGroup& group_;
  int rank_;
  std::string_view op_;
  bool done_ = false;
};

}  // namespace detail

struct LocalOptions {
  /// How long a rank waits for its peers at any collective before throwing CommError; positive.
  std::chrono::milliseconds timeout = std::chrono::minutes(5);
  /// Where the ranks' buffers live; null means host memory.
  std::shared_ptr<LocalMemory> memory = nullptr;
};

class LocalCommunicator final : public Communicator {
 public:
  using Options = LocalOptions;

  /// One communicator per rank, all in one group; hand communicator r to thread r.
  static std::vector<std::shared_ptr<Communicator>> create(int world, Options options = {}) {
    TP_CHECK(world > 0, "LocalCommunicator needs a positive world size, got {}", world);
    TP_CHECK(options.timeout.count() > 0, "LocalCommunicator: the timeout must be positive, got {} ms",
             options.timeout.count());
    auto memory = options.memory ? std::move(options.memory) : std::make_shared<HostMemory>();
    auto group = std::make_shared<detail::LocalGroup>(world, options.timeout, std::move(memory));
    std::vector<std::shared_ptr<Communicator>> comms;
    for (int r = 0; r < world; ++r) comms.push_back(std::make_shared<LocalCommunicator>(group, r));
    return comms;
  }

  LocalCommunicator(std::shared_ptr<detail::LocalGroup> group, int rank) : group_(std::move(group)), rank_(rank) {}

  int rank() const override { return rank_; }
  int size() const override { return group_->size(); }
  std::string_view backend() const override { return "local"; }

  /// Wakes every rank of this group with a CommError (used when one rank fails).
  void abort(const std::string& reason) { group_->abort(reason); }

 protected:
  void do_barrier() override { rendezvous({.op = "barrier"})->complete(); }

  std::shared_ptr<Communicator> do_split(int color, int key) override {
    auto phase = rendezvous({.op = "split", .color = color, .key = key});
    // Members of my color, ordered by (key, rank); the first one creates the new group.
    std::vector<int> members;
    for (int r = 0; r < size(); ++r)
      if (group_->post(r).color == color) members.push_back(r);
    std::stable_sort(members.begin(), members.end(),
                     [&](int a, int b) { return group_->post(a).key < group_->post(b).key; });
    const int leader = members.front();
    if (rank_ == leader && color >= 0) {
      auto child = std::make_shared<detail::LocalGroup>(static_cast<int>(members.size()), group_->timeout(),
                                                        group_->memory_ptr());
      group_->adopt_child(child);
      group_->split_slot(leader) = child;
    }
    group_->arrive_and_wait(rank_, "split");
    std::shared_ptr<Communicator> result;
    if (color >= 0) {
      const int new_rank = static_cast<int>(std::find(members.begin(), members.end(), rank_) - members.begin());
      result = std::make_shared<LocalCommunicator>(group_->split_slot(leader), new_rank);
    }
    group_->arrive_and_wait(rank_, "split");  // the slots may be reused once everyone has read them
    group_->split_slot(rank_).reset();
    phase->complete();
    return result;  // null for a negative color, like MPI_UNDEFINED
  }

  void do_all_reduce(const void* send, void* recv, std::size_t count, DType dtype, ReduceOp op,
                     Stream stream) override {
    auto phase =
        rendezvous({.op = "all_reduce", .send = send, .recv = recv, .count = count, .dtype = dtype, .reduce = op}, stream);
    // Rank r reduces chunk r of every input into its own output, then copies it to every other
    // output: chunk r is read and written by rank r alone, so in-place buffers are safe.
    const Range chunk = partition(static_cast<std::int64_t>(count), size(), rank_);
    const std::size_t elem = size_of(dtype), begin = static_cast<std::size_t>(chunk.begin);
    const std::size_t bytes = static_cast<std::size_t>(chunk.size()) * elem;
    std::vector<const void*> srcs(size());
    for (int q = 0; q < size(); ++q) srcs[q] = group_->post(q).send;
    LocalMemory& memory = group_->memory();
    auto* mine = static_cast<std::byte*>(recv) + begin * elem;
    memory.reduce(dtype, op, srcs.data(), size(), begin, static_cast<std::size_t>(chunk.size()), mine, stream);
    if (bytes > 0)
      for (int q = 0; q < size(); ++q)
        if (q != rank_) memory.copy(static_cast<std::byte*>(group_->post(q).recv) + begin * elem, mine, bytes, stream);
    memory.release(stream);
    phase->complete();
  }

  void do_all_gather_v(const void* send, void* recv, std::span<const std::size_t> counts, DType dtype,
                       Stream stream) override {
    auto phase = rendezvous({.op = "all_gather", .send = send, .recv = recv, .count = counts[rank_], .counts = counts.data(),
                .dtype = dtype},
               stream);
    const auto displs = displacements(counts);
    const std::size_t elem = size_of(dtype);
    LocalMemory& memory = group_->memory();
    for (int q = 0; q < size(); ++q) {
      auto* dst = static_cast<std::byte*>(recv) + displs[q] * elem;
      if (dst != group_->post(q).send && counts[q] > 0) memory.copy(dst, group_->post(q).send, counts[q] * elem, stream);
    }
    memory.release(stream);
    phase->complete();
  }

  void do_reduce_scatter_v(const void* send, void* recv, std::span<const std::size_t> counts, DType dtype,
                           ReduceOp op, Stream stream) override {
    auto phase = rendezvous({.op = "reduce_scatter", .send = send, .recv = recv, .count = counts[rank_], .counts = counts.data(),
                .dtype = dtype, .reduce = op},
               stream);
    const auto displs = displacements(counts);
    std::vector<const void*> srcs(size());
    for (int q = 0; q < size(); ++q) srcs[q] = group_->post(q).send;
    LocalMemory& memory = group_->memory();
    memory.reduce(dtype, op, srcs.data(), size(), displs[rank_], counts[rank_], recv, stream);
    memory.release(stream);
    phase->complete();
  }

  void do_broadcast(void* buffer, std::size_t count, DType dtype, int root, Stream stream) override {
    auto phase = rendezvous({.op = "broadcast", .recv = buffer, .count = count, .dtype = dtype, .root = root}, stream);
    LocalMemory& memory = group_->memory();
    if (rank_ != root && count > 0) memory.copy(buffer, group_->post(root).recv, count * size_of(dtype), stream);
    memory.release(stream);
    phase->complete();
  }

  /// Host memory whatever LocalMemory the group uses: each rank reads its peers' signatures.
  void do_exchange_signatures(const std::int64_t* mine, std::int64_t* all) override {
    constexpr std::size_t words = detail::CallSignature::words;
    auto phase = rendezvous({.op = "verify", .send = mine, .count = words, .dtype = DType::i64}, nullptr, false);
    for (int q = 0; q < size(); ++q)
      std::memcpy(all + static_cast<std::size_t>(q) * words, group_->post(q).send, words * sizeof(std::int64_t));
    phase->complete();
  }

 private:
  /// Posts this rank's arguments, waits for all ranks, and checks that they agree (a check that
  /// stays when collective verification is off, since peers would otherwise read past buffers).
  /// From here on peers touch this rank's buffers: the returned phase must end before they go.
  [[nodiscard]] std::unique_ptr<detail::DataPhase> rendezvous(const detail::LocalGroup::Post& post,
                                                              Stream stream = nullptr, bool device = true) {
    if (device) group_->memory().acquire(stream);
    group_->post(rank_) = post;
    group_->arrive_and_wait(rank_, post.op);
    auto phase = std::make_unique<detail::DataPhase>(*group_, rank_, post.op);
    for (int q = 0; q < size(); ++q) {
      const auto& first = group_->post(0);
      const auto& other = group_->post(q);
      // The _v forms post per-rank counts, which must agree; the others post one count.
      const bool sizes_agree = first.counts != nullptr && other.counts != nullptr
                                   ? std::equal(first.counts, first.counts + size(), other.counts)
                                   : first.counts == other.counts && other.count == first.count;
      if (other.op != first.op || other.dtype != first.dtype || other.reduce != first.reduce ||
          other.root != first.root || !sizes_agree)
        TP_THROW(CommError, "LocalCommunicator: ranks disagree: rank 0 called {}, rank {} called {} (rank {} of {})",
                 describe(first), q, describe(other), rank_, size());
    }
    return phase;
  }

  /// "all_reduce(1000 x float32, sum)", "all_gather_v(counts [3, 4])", "broadcast(8 x int64, root 1)".
  std::string describe(const detail::LocalGroup::Post& p) const {
    if (p.op == "barrier" || p.op == "split") return fmt::format("{}()", p.op);
    const std::string size = p.counts != nullptr
                                 ? fmt::format("counts {}", std::span<const std::size_t>(p.counts, this->size()))
                                 : fmt::format("{}", p.count);
    if (p.op == "broadcast") return fmt::format("{}({} x {}, root {})", p.op, size, name(p.dtype), p.root);
    if (p.op == "all_reduce" || p.op == "reduce_scatter")
      return fmt::format("{}({} x {}, {})", p.op, size, name(p.dtype), name(p.reduce));
    return fmt::format("{}({} x {})", p.op, size, name(p.dtype));
  }

  std::shared_ptr<detail::LocalGroup> group_;
  int rank_;
};

/// Runs `fn(comm)` on `world` threads, one per rank, and returns when all have finished. If a rank
/// throws, its peers are woken with a CommError, and the first exception is rethrown here.
inline void run_local(int world, const std::function<void(std::shared_ptr<Communicator>)>& fn,
                      LocalCommunicator::Options options = {}) {
  auto comms = LocalCommunicator::create(world, options);
  std::mutex mutex;
  std::exception_ptr first;
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      try {
        fn(comms[r]);
      } catch (const std::exception& e) {
        {
          std::lock_guard lock(mutex);
          if (!first) first = std::current_exception();
        }
        static_cast<LocalCommunicator&>(*comms[r]).abort(fmt::format("rank {} failed: {}", r, e.what()));
      }
    });
  }
  for (auto& t : threads) t.join();
  if (first) std::rethrow_exception(first);
}

}  // namespace tp
