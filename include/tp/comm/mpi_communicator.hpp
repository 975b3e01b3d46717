#pragma once
/// Collectives over MPI (Open MPI's shared-memory and TCP transports on CPU clusters). The
/// communicator works on a duplicate of the one it is given, so tp's traffic never matches the
/// caller's own messages, and switches it to MPI_ERRORS_RETURN so that failures become CommError.
///
/// MPI has no timeouts of its own: a peer that dies is reported by the launcher (mpirun aborts the
/// job), not by this class.

#ifndef TP_HAS_MPI
#error "tp/comm/mpi_communicator.hpp needs the tp::mpi CMake component: target_link_libraries(... tp::mpi)"
#endif

#include <mpi.h>

#include <climits>
#include <memory>
#include <vector>

#include "tp/comm/communicator.hpp"

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
    case DType::bf16: return MPI_UINT16_T;  // moved as raw 16-bit words; MPI cannot add them
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

inline int mpi_count(std::size_t n, const char* op) {
  TP_CHECK(n <= static_cast<std::size_t>(INT_MAX), "MPI {}: {} elements exceed MPI's int count limit", op, n);
  return static_cast<int>(n);
}

}  // namespace detail

/// Initializes MPI for its lifetime (MPI_THREAD_MULTIPLE where the library offers it) and finalizes
/// it on destruction. Create one in main() before any MpiCommunicator.
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
    if (owner_) MPI_Finalize();
  }

 private:
  bool owner_ = false;
};

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(MPI_Comm comm = MPI_COMM_WORLD) : MpiCommunicator(duplicate(comm), true) {}

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

  void barrier() override { detail::mpi_check(MPI_Barrier(comm_), "MPI_Barrier", rank_); }

  std::shared_ptr<Communicator> split(int color, int key) override {
    MPI_Comm sub = MPI_COMM_NULL;
    detail::mpi_check(MPI_Comm_split(comm_, color < 0 ? MPI_UNDEFINED : color, key, &sub), "MPI_Comm_split", rank_);
    if (sub == MPI_COMM_NULL) return nullptr;
    return std::shared_ptr<Communicator>(new MpiCommunicator(sub, true));
  }

 protected:
  void do_all_reduce(const void* send, void* recv, std::size_t count, DType dtype, ReduceOp op, Stream) override {
    check_reducible(dtype, "all_reduce");
    detail::mpi_check(MPI_Allreduce(send == recv ? MPI_IN_PLACE : send, recv, detail::mpi_count(count, "all_reduce"),
                                    detail::mpi_type(dtype), detail::mpi_op(op), comm_),
                      "MPI_Allreduce", rank_);
  }

  std::unique_ptr<Work> do_all_reduce_async(const void* send, void* recv, std::size_t count, DType dtype, ReduceOp op,
                                            Stream) override {
    check_reducible(dtype, "all_reduce");
    auto work = std::make_unique<Request>(rank_);
    detail::mpi_check(MPI_Iallreduce(send == recv ? MPI_IN_PLACE : send, recv,
                                     detail::mpi_count(count, "all_reduce"), detail::mpi_type(dtype),
                                     detail::mpi_op(op), comm_, &work->request),
                      "MPI_Iallreduce", rank_);
    return work;
  }

  void do_all_gather_v(const void* send, void* recv, std::span<const std::size_t> counts, DType dtype,
                       Stream) override {
    const auto [ints, displs] = int_counts(counts, "all_gather_v");
    const bool in_place = send == static_cast<const std::byte*>(recv) + displs[rank_] * size_of(dtype);
    detail::mpi_check(MPI_Allgatherv(in_place ? MPI_IN_PLACE : send, ints[rank_], detail::mpi_type(dtype), recv,
                                     ints.data(), displs.data(), detail::mpi_type(dtype), comm_),
                      "MPI_Allgatherv", rank_);
  }

  void do_reduce_scatter_v(const void* send, void* recv, std::span<const std::size_t> counts, DType dtype,
                           ReduceOp op, Stream) override {
    check_reducible(dtype, "reduce_scatter");
    const auto [ints, displs] = int_counts(counts, "reduce_scatter_v");
    detail::mpi_check(MPI_Reduce_scatter(send, recv, ints.data(), detail::mpi_type(dtype), detail::mpi_op(op), comm_),
                      "MPI_Reduce_scatter", rank_);
  }

  void do_broadcast(void* buffer, std::size_t count, DType dtype, int root, Stream) override {
    detail::mpi_check(MPI_Bcast(buffer, detail::mpi_count(count, "broadcast"), detail::mpi_type(dtype), root, comm_),
                      "MPI_Bcast", rank_);
  }

 private:
  struct Request final : Work {
    explicit Request(int r) : rank(r) {}
    ~Request() override {
      if (request != MPI_REQUEST_NULL) MPI_Wait(&request, MPI_STATUS_IGNORE);
    }
    void wait() override { detail::mpi_check(MPI_Wait(&request, MPI_STATUS_IGNORE), "MPI_Wait", rank); }
    MPI_Request request = MPI_REQUEST_NULL;
    int rank;
  };

  MpiCommunicator(MPI_Comm owned, bool) : comm_(owned) {
    detail::mpi_check(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler", -1);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }

  static MPI_Comm duplicate(MPI_Comm comm) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) TP_THROW(CommError, "MpiCommunicator: MPI is not initialized; create a tp::MpiEnvironment first");
    MPI_Comm dup = MPI_COMM_NULL;
    detail::mpi_check(MPI_Comm_dup(comm, &dup), "MPI_Comm_dup", -1);
    return dup;
  }

  void check_reducible(DType dtype, const char* op) const {
    TP_CHECK(dtype != DType::f16 && dtype != DType::bf16, "MpiCommunicator {}: MPI cannot reduce {} buffers", op,
             name(dtype));
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

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
};

}  // namespace tp
