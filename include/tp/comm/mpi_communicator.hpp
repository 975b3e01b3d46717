#pragma once
/// Collectives over MPI (Open MPI's shared-memory and TCP transports on CPU clusters). The
/// communicator works on a duplicate of the one it is given, so tp's traffic never matches the
/// caller's own messages, and switches it to MPI_ERRORS_RETURN so that failures become CommError.
///
/// MPI has no timeouts of its own: by default a peer that dies is reported by the launcher (mpirun
/// aborts the job), and a peer that stops (hangs, is suspended, is stuck in other work) blocks its
/// peers forever. With `MpiOptions::timeout` set, every collective runs as its non-blocking form
/// (MPI_Iallreduce, ...) polled until it completes or the deadline passes, and then throws
/// CommError. MPI cannot cancel a collective, so after a timeout the request is abandoned (MPI may
/// still write its receive buffer if the peer comes back), the communicator refuses further
/// collectives, and the job should end: MpiEnvironment does not wait in MPI_Finalize while an
/// exception is in flight.

#ifndef TP_HAS_MPI
#error "tp/comm/mpi_communicator.hpp needs the tp::mpi CMake component: target_link_libraries(... tp::mpi)"
#endif

#include <mpi.h>

#include <chrono>
#include <climits>
#include <cstring>
#include <exception>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "tp/comm/communicator.hpp"
#include "tp/detail/host_reduce.hpp"

namespace tp {

namespace detail {

inline void mpi_check(int code, const char* call, int rank) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  TP_THROW(CommError, "{} failed on rank {}: {}", call, rank, std::string_view(text, length));
}

inline MPI_Datatype mpi_type(DType t) {
  switch (t) {
    case DType::f32: return MPI_FLOAT;
    case DType::f64: return MPI_DOUBLE;
    case DType::i32: return MPI_INT32_T;
    case DType::i64: return MPI_INT64_T;
    case DType::u8: return MPI_UINT8_T;
    case DType::f16:
    case DType::bf16: return MPI_UINT16_T;  // moved as raw 16-bit words; reduced as float (do_all_reduce)
  }
  return MPI_DATATYPE_NULL;
}

inline MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return MPI_SUM;
    case ReduceOp::prod: return MPI_PROD;
    case ReduceOp::min: return MPI_MIN;
    case ReduceOp::max: return MPI_MAX;
  }
  return MPI_OP_NULL;
}

/// Completes `request`: MPI_Wait without a timeout (zero); else polls it, and past the deadline
/// abandons it (MPI cannot cancel a collective) and throws CommError.
inline void mpi_wait(MPI_Request& request, const char* op, int rank, int size, std::chrono::milliseconds timeout) {
  if (request == MPI_REQUEST_NULL) return;
  if (timeout.count() == 0) return mpi_check(MPI_Wait(&request, MPI_STATUS_IGNORE), op, rank);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (int polls = 0;; ++polls) {
    int done = 0;
    mpi_check(MPI_Test(&request, &done, MPI_STATUS_IGNORE), op, rank);
    if (done) return;
    if (std::chrono::steady_clock::now() > deadline) {
      request = MPI_REQUEST_NULL;
      TP_THROW(CommError,
               "MpiCommunicator {}: rank {} of {} waited {} ms for its peers (one stopped, died or called something "
               "else); the communicator can no longer be used and the job should end",
               op, rank, size, timeout.count());
    }
    // Spin first (the common case completes in microseconds), then back off to spare the core.
    if (polls > 1000) std::this_thread::sleep_for(std::chrono::microseconds(polls > 10000 ? 500 : 20));
  }
}

/// Completes every request, as mpi_wait does one. Past the deadline the receives still pending are
/// cancelled, the sends abandoned, and CommError thrown.
inline void mpi_wait_all(std::span<MPI_Request> requests, const char* op, int rank, int size,
                         std::chrono::milliseconds timeout) {
  const int n = static_cast<int>(requests.size());
  if (timeout.count() == 0) return mpi_check(MPI_Waitall(n, requests.data(), MPI_STATUSES_IGNORE), op, rank);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (int polls = 0;; ++polls) {
    int done = 0;
    mpi_check(MPI_Testall(n, requests.data(), &done, MPI_STATUSES_IGNORE), op, rank);
    if (done) return;
    if (std::chrono::steady_clock::now() > deadline) {
      for (MPI_Request& r : requests) {
        if (r == MPI_REQUEST_NULL) continue;
        MPI_Cancel(&r);  // a receive is cancelled; a send that cannot be is left to complete
        MPI_Request_free(&r);
      }
      TP_THROW(CommError,
               "MpiCommunicator {}: rank {} of {} waited {} ms for its peers (one stopped, died or called something "
               "else); the communicator can no longer be used and the job should end",
               op, rank, size, timeout.count());
    }
    if (polls > 1000) std::this_thread::sleep_for(std::chrono::microseconds(polls > 10000 ? 500 : 20));
  }
}

inline int mpi_count(std::size_t n, const char* op) {
  TP_CHECK(n <= static_cast<std::size_t>(INT_MAX), "MPI {}: {} elements exceed MPI's int count limit", op, n);
  return static_cast<int>(n);
}

}  // namespace detail

/// Initializes MPI for its lifetime (MPI_THREAD_MULTIPLE where the library offers it) and finalizes
/// it on destruction. Create one in main() before any MpiCommunicator.
///
/// Destroyed while an exception is in flight (a CommError from a dead or stopped peer unwinding
/// out of main's work), it does not call MPI_Finalize, which waits for every rank and would hang
/// on the peer that failed: the process goes on to report the error and exit non-zero, and the
/// launcher (mpirun) then ends the job, as it does for any rank that exits without finalizing.
class MpiEnvironment {
 public:
  MpiEnvironment(int& argc, char**& argv) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (initialized) return;
    int provided = 0;
    detail::mpi_check(MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided), "MPI_Init_thread", -1);
    owner_ = true;
  }
  MpiEnvironment(const MpiEnvironment&) = delete;
  MpiEnvironment& operator=(const MpiEnvironment&) = delete;
  ~MpiEnvironment() {
    if (owner_ && !failed_ && std::uncaught_exceptions() == 0) MPI_Finalize();
  }
  /// Marks the job as failed: the destructor leaves MPI_Finalize out, as with an exception in
  /// flight (for a caller that caught the exception before this object goes away).
  void mark_failed() { failed_ = true; }

 private:
  bool owner_ = false, failed_ = false;
};

struct MpiOptions {
  /// How long a rank waits for its peers in any collective before throwing CommError; zero waits
  /// as MPI does, forever, with MPI's blocking calls. Positive: non-blocking calls polled with this
  /// deadline, which costs a few microseconds of polling latency per collective.
  std::chrono::milliseconds timeout{0};
};

class MpiCommunicator final : public Communicator {
 public:
  using Options = MpiOptions;

  explicit MpiCommunicator(MPI_Comm comm = MPI_COMM_WORLD, Options options = {})
      : MpiCommunicator(Adopt{}, duplicate(comm), options) {}

  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
  }
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string_view backend() const override { return "mpi"; }
  MPI_Comm native() const { return comm_; }
  std::chrono::milliseconds timeout() const { return options_.timeout; }

 protected:
  void do_barrier() override {
    collective("barrier", [&](MPI_Request* r) { return r ? MPI_Ibarrier(comm_, r) : MPI_Barrier(comm_); });
  }

  /// MPI_Comm_split has no non-blocking form, so the timeout does not cover it; with collective
  /// verification on, the signature exchange before it does.
  std::shared_ptr<Communicator> do_split(int color, int key) override {
    check_usable("split");
    MPI_Comm sub = MPI_COMM_NULL;
    detail::mpi_check(MPI_Comm_split(comm_, color < 0 ? MPI_UNDEFINED : color, key, &sub), "MPI_Comm_split", rank_);
    if (sub == MPI_COMM_NULL) return nullptr;
    return std::shared_ptr<Communicator>(new MpiCommunicator(Adopt{}, sub, options_));
  }

  void do_all_reduce(const void* send, void* recv, std::size_t count, DType dtype, ReduceOp op, Stream) override {
    if (detail::is_float16(dtype)) {  // MPI has no 16-bit floats: reduce them as float, round once
      auto wide = detail::widen_to_float(send, count, dtype);
      do_all_reduce(wide.data(), wide.data(), count, DType::f32, op, nullptr);
      return detail::narrow_from_float(wide.data(), count, dtype, recv);
    }
    const int n = detail::mpi_count(count, "all_reduce");
    const void* in = send == recv ? MPI_IN_PLACE : send;
    collective("all_reduce", [&](MPI_Request* r) {
      return r ? MPI_Iallreduce(in, recv, n, detail::mpi_type(dtype), detail::mpi_op(op), comm_, r)
               : MPI_Allreduce(in, recv, n, detail::mpi_type(dtype), detail::mpi_op(op), comm_);
    });
  }

  std::unique_ptr<Work> do_all_reduce_async(const void* send, void* recv, std::size_t count, DType dtype, ReduceOp op,
                                            Stream stream) override {
    if (detail::is_float16(dtype)) {  // widened to float and back around a blocking reduction
      do_all_reduce(send, recv, count, dtype, op, stream);
      return std::make_unique<CompletedWork>();
    }
    check_usable("all_reduce");
    auto work = std::make_unique<Request>("all_reduce (async)", rank_, size_, options_.timeout);
    detail::mpi_check(MPI_Iallreduce(send == recv ? MPI_IN_PLACE : send, recv,
                                     detail::mpi_count(count, "all_reduce"), detail::mpi_type(dtype),
                                     detail::mpi_op(op), comm_, &work->request),
                      "MPI_Iallreduce", rank_);
    return work;
  }

  /// MPI_Iallgatherv, as do_all_gather_v starts it; the Work keeps the count arrays, which MPI
  /// reads until the collective completes.
  std::unique_ptr<Work> do_all_gather_v_async(const void* send, void* recv, std::span<const std::size_t> counts,
                                              DType dtype, Stream) override {
    check_usable("all_gather");
    auto work = std::make_unique<Request>("all_gather (async)", rank_, size_, options_.timeout);
    std::tie(work->counts, work->displs) = int_counts(counts, "all_gather_v");
    const bool in_place = send == static_cast<const std::byte*>(recv) + work->displs[rank_] * size_of(dtype);
    const MPI_Datatype type = detail::mpi_type(dtype);
    detail::mpi_check(MPI_Iallgatherv(in_place ? MPI_IN_PLACE : send, work->counts[rank_], type, recv,
                                      work->counts.data(), work->displs.data(), type, comm_, &work->request),
                      "MPI_Iallgatherv", rank_);
    return work;
  }

  /// MPI_Ireduce_scatter, as do_reduce_scatter_v starts it. The 16-bit floats are widened to
  /// float and rounded back around a blocking reduction, as in do_all_reduce_async.
  std::unique_ptr<Work> do_reduce_scatter_v_async(const void* send, void* recv, std::span<const std::size_t> counts,
                                                  DType dtype, ReduceOp op, Stream stream) override {
    if (detail::is_float16(dtype)) {
      do_reduce_scatter_v(send, recv, counts, dtype, op, stream);
      return std::make_unique<CompletedWork>();
    }
    check_usable("reduce_scatter");
    auto work = std::make_unique<Request>("reduce_scatter (async)", rank_, size_, options_.timeout);
    std::tie(work->counts, work->displs) = int_counts(counts, "reduce_scatter_v");
    detail::mpi_check(MPI_Ireduce_scatter(send, recv, work->counts.data(), detail::mpi_type(dtype),
                                          detail::mpi_op(op), comm_, &work->request),
                      "MPI_Ireduce_scatter", rank_);
    return work;
  }

  void do_all_gather_v(const void* send, void* recv, std::span<const std::size_t> counts, DType dtype,
                       Stream) override {
    const auto [ints, displs] = int_counts(counts, "all_gather_v");
    const bool in_place = send == static_cast<const std::byte*>(recv) + displs[rank_] * size_of(dtype);
    const void* in = in_place ? MPI_IN_PLACE : send;
    const MPI_Datatype type = detail::mpi_type(dtype);
    collective("all_gather", [&](MPI_Request* r) {
      return r ? MPI_Iallgatherv(in, ints[rank_], type, recv, ints.data(), displs.data(), type, comm_, r)
               : MPI_Allgatherv(in, ints[rank_], type, recv, ints.data(), displs.data(), type, comm_);
    });
  }

  void do_reduce_scatter_v(const void* send, void* recv, std::span<const std::size_t> counts, DType dtype,
                           ReduceOp op, Stream) override {
    if (detail::is_float16(dtype)) {  // as all_reduce: in float, rounded once
      std::size_t total = 0;
      for (const std::size_t c : counts) total += c;
      const auto wide = detail::widen_to_float(send, total, dtype);
      std::vector<float> mine(counts[rank_]);
      do_reduce_scatter_v(wide.data(), mine.data(), counts, DType::f32, op, nullptr);
      return detail::narrow_from_float(mine.data(), mine.size(), dtype, recv);
    }
    const auto [ints, displs] = int_counts(counts, "reduce_scatter_v");
    const MPI_Datatype type = detail::mpi_type(dtype);
    collective("reduce_scatter", [&](MPI_Request* r) {
      return r ? MPI_Ireduce_scatter(send, recv, ints.data(), type, detail::mpi_op(op), comm_, r)
               : MPI_Reduce_scatter(send, recv, ints.data(), type, detail::mpi_op(op), comm_);
    });
  }

  void do_broadcast(void* buffer, std::size_t count, DType dtype, int root, Stream) override {
    const int n = detail::mpi_count(count, "broadcast");
    collective("broadcast", [&](MPI_Request* r) {
      return r ? MPI_Ibcast(buffer, n, detail::mpi_type(dtype), root, comm_, r)
               : MPI_Bcast(buffer, n, detail::mpi_type(dtype), root, comm_);
    });
  }

  /// Fused verification (Communicator::fused_all_reduce) at every world size: all_reduces of up
  /// to 2 KiB travel with their signature, and bare signatures travel the same way, as
  /// point-to-point messages on this communicator's own duplicate (a tag no collective uses). A
  /// signature and 2 KiB stay within Open MPI's shared-memory eager limit (4 KiB), so each message
  /// is one copy; above it the separate exchange before MPI's own all_reduce costs no more than
  /// the larger messages would (docs/design.md has the measurements).
  static constexpr std::size_t fused_bytes = std::size_t{2} << 10;
  std::size_t fused_capacity() const override { return fused_bytes; }

  /// One message to every peer and one from each (peers in turn from the next rank on, so that no
  /// rank is everyone's first); each receive has room for any peer's message. Every receive is
  /// posted before any send. Without a timeout the sends block (MPI_Send): a message this small is
  /// sent eagerly and the call returns at once, which measured faster than MPI_Isend and a wait on
  /// it (at two ranks 1.06 against 1.5 times MPI's own all_reduce of 1 KiB); it cannot deadlock,
  /// since a rank blocked in a send still completes its posted receives. With a timeout every
  /// request is polled against the deadline.
  void do_exchange_messages(const std::byte* mine, std::size_t bytes, std::byte* all) override {
    check_usable("call signature exchange");
    const std::size_t stride = fused_stride();
    const bool blocking = options_.timeout.count() == 0;
    const auto peers = static_cast<std::size_t>(size_ - 1);
    requests_.assign(blocking ? peers : 2 * peers, MPI_REQUEST_NULL);
    MPI_Request* next = requests_.data();
    for (int step = 1; step < size_; ++step) {
      const int from = (rank_ - step + size_) % size_;
      detail::mpi_check(MPI_Irecv(all + stride * static_cast<std::size_t>(from), detail::mpi_count(stride, "exchange"),
                                  MPI_BYTE, from, signature_tag, comm_, next++),
                        "MPI_Irecv (call signature exchange)", rank_);
    }
    const int length = detail::mpi_count(bytes, "exchange");
    for (int step = 1; step < size_; ++step) {
      const int to = (rank_ + step) % size_;
      detail::mpi_check(blocking ? MPI_Send(mine, length, MPI_BYTE, to, signature_tag, comm_)
                                 : MPI_Isend(mine, length, MPI_BYTE, to, signature_tag, comm_, next++),
                        "MPI_Send (call signature exchange)", rank_);
    }
    try {
      detail::mpi_wait_all(requests_, "call signature exchange", rank_, size_, options_.timeout);
    } catch (const CommError&) {
      broken_ =
          fmt::format("rank {} gave up on the call signature exchange after {} ms", rank_, options_.timeout.count());
      throw;
    }
  }

 private:
  /// A non-blocking collective in flight: waited for with the communicator's timeout, as the
  /// blocking ones are (a timeout throws CommError naming `op`, and the request is abandoned).
  struct Request final : Work {
    Request(const char* o, int r, int n, std::chrono::milliseconds t) : op(o), rank(r), size(n), timeout(t) {}
    /// Unwaited: complete it here, within the deadline when there is one (then abandon it).
    ~Request() override {
      try {
        if (request != MPI_REQUEST_NULL) wait();
      } catch (const std::exception&) {
      }
    }
    void wait() override { detail::mpi_wait(request, op, rank, size, timeout); }
    MPI_Request request = MPI_REQUEST_NULL;
    const char* op;
    int rank, size;
    std::chrono::milliseconds timeout;
    std::vector<int> counts, displs;  ///< the _v collectives' arrays, alive until completion
  };

  struct Adopt {};  ///< the communicator given is ours to free
  MpiCommunicator(Adopt, MPI_Comm owned, Options options) : comm_(owned), options_(options) {
    if (options_.timeout.count() < 0) {
      MPI_Comm_free(&comm_);
      TP_THROW(InvalidArgument, "MpiCommunicator: the timeout must be zero (none) or positive, got {} ms",
               options_.timeout.count());
    }
    detail::mpi_check(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler", -1);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }

  /// Runs one collective: `start(nullptr)` calls the blocking form; `start(&request)` the
  /// non-blocking one, then polled against the deadline.
  template <class F>
  void collective(const char* op, F&& start) {
    check_usable(op);
    if (options_.timeout.count() == 0) return detail::mpi_check(start(nullptr), op, rank_);
    MPI_Request request = MPI_REQUEST_NULL;
    detail::mpi_check(start(&request), op, rank_);
    try {
      detail::mpi_wait(request, op, rank_, size_, options_.timeout);
    } catch (const CommError&) {
      broken_ = fmt::format("rank {} gave up on {} after {} ms", rank_, op, options_.timeout.count());
      throw;
    }
  }

  void check_usable(const char* op) const {
    if (!broken_.empty())
      TP_THROW(CommError, "MpiCommunicator {}: rank {} of {} can no longer communicate: {}", op, rank_, size_, broken_);
  }

  static MPI_Comm duplicate(MPI_Comm comm) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) TP_THROW(CommError, "MpiCommunicator: MPI is not initialized; create a tp::MpiEnvironment first");
    MPI_Comm dup = MPI_COMM_NULL;
    detail::mpi_check(MPI_Comm_dup(comm, &dup), "MPI_Comm_dup", -1);
    return dup;
  }

  std::pair<std::vector<int>, std::vector<int>> int_counts(std::span<const std::size_t> counts, const char* op) const {
    std::vector<int> ints(counts.size()), displs(counts.size());
    std::size_t offset = 0;
    for (std::size_t r = 0; r < counts.size(); ++r) {
      ints[r] = detail::mpi_count(counts[r], op);
      displs[r] = detail::mpi_count(offset, op);
      offset += counts[r];
    }
    return {ints, displs};
  }

  /// The fused verification's messages; collectives never match point-to-point messages.
  static constexpr int signature_tag = 0x7470;
  std::vector<MPI_Request> requests_;

  MPI_Comm comm_ = MPI_COMM_NULL;
  Options options_;
  int rank_ = 0, size_ = 1;
  std::string broken_;
};

}  // namespace tp
