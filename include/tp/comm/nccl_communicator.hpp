#pragma once
/// Collectives over NCCL, on the caller's CUDA stream. Three ways in: over any host communicator
/// that can broadcast the unique id (an MpiCommunicator, a GlooCommunicator: `create(bootstrap)`),
/// from a unique id the caller distributed itself (`create(id, rank, world)`), or alone at world
/// size 1 with no bootstrap (`create_single()`).
///
/// Communicators are non-blocking NCCL communicators, so that no NCCL call can hang the host: each
/// call that reports ncclInProgress is polled with ncclCommGetAsyncError until it completes, fails
/// or the timeout passes; host waits (`synchronize`, `barrier`, async `Work::wait_host`) poll the
/// same way. On a timeout of a collective or an asynchronous error (a peer died) the communicator
/// is aborted with ncclCommAbort and the call throws tp::CommError; the communicator cannot be used
/// afterwards. Two waits abort less: a failed `split` aborts only the new communicator (the parent
/// stays usable), and `synchronize(stream)` waits for whatever the caller queued on the stream (a
/// whole training step, not only collectives) under its own deadline, `stream_timeout`, whose
/// passing throws without aborting anything.
///
/// Uneven all_gather_v / reduce_scatter_v: when the counts are equal they map to ncclAllGather /
/// ncclReduceScatter; otherwise to one group of ncclBroadcast (root q sends block q) or ncclReduce
/// (root q receives block q) calls, one per rank, which NCCL runs as a single fused launch. That moves
/// the same bytes as a padded collective without the padding copies.

#ifndef TP_HAS_NCCL
#error "tp/comm/nccl_communicator.hpp needs the tp::nccl CMake component: target_link_libraries(... tp::nccl)"
#endif

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "tp/comm/communicator.hpp"
#include "tp/device/cuda/error.hpp"

namespace tp {

struct NcclOptions {
  /// How long a host-side wait on NCCL itself (creation, split, an enqueue, barrier, an async
  /// collective's wait_host) may take before the communicator is aborted and CommError thrown.
  std::chrono::milliseconds timeout = std::chrono::minutes(5);
  /// How long synchronize(stream) waits for the caller's stream. The stream carries the caller's
  /// own kernels too, so passing this deadline says nothing about the peers: CommError is thrown
  /// and the communicator stays usable (it is aborted only if NCCL itself reports an error).
  std::chrono::milliseconds stream_timeout = std::chrono::minutes(30);
  /// Device ordinal; -1 takes the calling thread's current device.
  int device = -1;
};

namespace detail {

inline ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::f32: return ncclFloat32;
    case DType::f64: return ncclFloat64;
    case DType::f16: return ncclFloat16;
    case DType::bf16: return ncclBfloat16;
    case DType::i32: return ncclInt32;
    case DType::i64: return ncclInt64;
    case DType::u8: return ncclUint8;
  }
  return ncclUint8;
}

inline ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return ncclSum;
    case ReduceOp::prod: return ncclProd;
    case ReduceOp::min: return ncclMin;
    case ReduceOp::max: return ncclMax;
  }
  return ncclSum;
}

inline std::string nccl_status(ncclResult_t r, ncclComm_t comm = nullptr) {
  const char* last = ncclGetLastError(comm);
  return last != nullptr && *last != '\0' ? fmt::format("{} ({})", ncclGetErrorString(r), last)
                                          : std::string(ncclGetErrorString(r));
}

/// Where collective verification moves the call signatures: a device array with one slot per
/// rank, which the all-gather fills, and pinned host memory on both sides of it. Pinned, because a
/// copy between the device and pageable host memory may block the host until the stream reaches
/// it (device to pageable host always does), and on the side stream that is after the all-gather,
/// when every peer has joined: a missing peer would hang the host there, before the
/// communicator's deadline could fire. Copies to and from pinned memory are only queued; the host
/// waits in the communicator's poll, which has the deadline.
class SignatureBuffers {
 public:
  static constexpr std::size_t words = CallSignature::words;

  SignatureBuffers(int rank, int world) : rank_(rank), world_(world) {
    const std::size_t bytes = words * sizeof(std::int64_t) * static_cast<std::size_t>(world);
    TP_CUDA_CHECK(cudaMalloc(&device_, bytes), "allocating NCCL rank {}'s device array of {} call signatures", rank,
                  world);
    const cudaError_t status = cudaMallocHost(&host_, bytes + words * sizeof(std::int64_t));  // + this rank's own
    if (status != cudaSuccess) discard_cuda_status(cudaFree(device_));
    TP_CUDA_CHECK(status, "allocating NCCL rank {}'s pinned host copy of {} call signatures", rank, world);
  }
  SignatureBuffers(const SignatureBuffers&) = delete;
  SignatureBuffers& operator=(const SignatureBuffers&) = delete;
  ~SignatureBuffers() {
    discard_cuda_status(cudaFree(device_));
    discard_cuda_status(cudaFreeHost(host_));
  }

  /// Queues this rank's signature (`words` values) into its slot of device() and returns the slot.
  std::int64_t* post(const std::int64_t* mine, cudaStream_t stream) {
    std::int64_t* staged = host_ + words * static_cast<std::size_t>(world_);
    std::memcpy(staged, mine, words * sizeof(std::int64_t));  // the previous exchange's copies are done
    std::int64_t* slot = device_ + words * static_cast<std::size_t>(rank_);
    TP_CUDA_CHECK(cudaMemcpyAsync(slot, staged, words * sizeof(std::int64_t), cudaMemcpyHostToDevice, stream),
                  "copying NCCL rank {}'s call signature to the device", rank_);
    return slot;
  }
  /// Every rank's slot, which the all-gather writes.
  std::int64_t* device() const { return device_; }
  /// Queues the copy of device() to host(), which holds every signature once `stream` has passed it.
  void fetch(cudaStream_t stream) {
    TP_CUDA_CHECK(cudaMemcpyAsync(host_, device_, words * sizeof(std::int64_t) * static_cast<std::size_t>(world_),
                                  cudaMemcpyDeviceToHost, stream),
                  "copying the call signatures to the host on NCCL rank {}", rank_);
  }
  const std::int64_t* host() const { return host_; }

 private:
  int rank_, world_;
  std::int64_t* device_ = nullptr;
  std::int64_t* host_ = nullptr;
};

}  // namespace detail

class NcclCommunicator final : public Communicator {
 public:
  using Options = NcclOptions;

  /// A collective in flight on the communicator's side stream; see all_reduce_async.
  class AsyncWork final : public tp::Work {
   public:
    AsyncWork(NcclCommunicator& comm, Stream caller, cudaEvent_t done) : comm_(comm), caller_(caller), done_(done) {}
    AsyncWork(const AsyncWork&) = delete;
    AsyncWork& operator=(const AsyncWork&) = delete;
    ~AsyncWork() override { detail::discard_cuda_status(cudaEventDestroy(done_)); }
    /// Orders the result before whatever is queued next on the stream the collective was given
    /// (the caller's stream waits for the event); returns without waiting for the GPU.
    void wait() override {
      comm_.activate();
      TP_CUDA_CHECK(cudaStreamWaitEvent(caller_, done_, 0), "ordering an NCCL collective on the caller's stream");
    }
    /// Blocks the host until the collective has finished, with the communicator's timeout.
    void wait_host() { comm_.wait_event(done_, "an asynchronous collective", comm_.options_.timeout, true); }

   private:
    NcclCommunicator& comm_;
    Stream caller_;
    cudaEvent_t done_;
  };

  static ncclUniqueId make_unique_id() {
    ncclUniqueId id;
    const ncclResult_t r = ncclGetUniqueId(&id);
    if (r != ncclSuccess) TP_THROW(CommError, "ncclGetUniqueId failed: {}", detail::nccl_status(r));
    return id;
  }

  /// Collective over `bootstrap`: its rank 0 makes the unique id and broadcasts it (host memory);
  /// rank r of `bootstrap` becomes rank r here. One GPU per rank.
  static std::shared_ptr<NcclCommunicator> create(Communicator& bootstrap, Options options = {}) {
    ncclUniqueId id{};
    if (bootstrap.rank() == 0) id = make_unique_id();
    bootstrap.broadcast(&id, sizeof(id), DType::u8, 0);
    return create(id, bootstrap.rank(), bootstrap.size(), options);
  }

  /// Every rank calls this with the same id (made by make_unique_id on one of them).
  static std::shared_ptr<NcclCommunicator> create(const ncclUniqueId& id, int rank, int world, Options options = {}) {
    TP_CHECK(world > 0 && rank >= 0 && rank < world, "NcclCommunicator: rank {} is outside world size {}", rank, world);
    return std::shared_ptr<NcclCommunicator>(new NcclCommunicator(id, rank, world, options));
  }

  /// World size 1, no bootstrap: tests, single-GPU runs of multi-GPU code.
  static std::shared_ptr<NcclCommunicator> create_single(Options options = {}) {
    require_device(options.device);
    return create(make_unique_id(), 0, 1, options);
  }

  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;
  ~NcclCommunicator() override {
    detail::discard_cuda_status(cudaSetDevice(device_));
    release_comm();
    signatures_.reset();
    if (scratch_) detail::discard_cuda_status(cudaFree(scratch_));
    if (side_) detail::discard_cuda_status(cudaStreamDestroy(side_));
  }

  int rank() const override { return rank_; }
  int size() const override { return world_; }
  std::string_view backend() const override { return "nccl"; }
  ncclComm_t native() const { return comm_; }
  int device() const { return device_; }

  /// Blocks until everything queued on `stream` is done, for at most options().stream_timeout. An
  /// asynchronous NCCL error meanwhile (a dead peer) aborts the communicator and throws CommError;
  /// the deadline passing throws CommError and leaves the communicator as it was.
  void synchronize(Stream stream) { synchronize(stream, options_.stream_timeout); }
  void synchronize(Stream stream, std::chrono::milliseconds timeout) {
    wait_stream(stream, "the caller's stream", timeout, /*abort_on_timeout=*/false);
  }

  bool aborted() const { return aborted_; }
  const Options& options() const { return options_; }

  /// The all-reduce runs on the communicator's side stream once `stream` has produced its input,
  /// so work queued on `stream` afterwards (the next GEMM) overlaps it. `wait()` on the result
  /// orders the reduced data before whatever is queued on `stream` next; `wait_host()` blocks the
  /// host, with the timeout. Every rank must issue its collectives in the same order, as always.
  std::unique_ptr<AsyncWork> all_reduce_async_nccl(const void* send, void* recv, std::size_t count, DType dtype,
                                                   ReduceOp op, Stream stream) {
    return on_side_stream("all_reduce", count, dtype, stream, [&] {
      enqueue("all_reduce_async", count, dtype, [&] {
        return ncclAllReduce(send, recv, count, detail::nccl_type(dtype), detail::nccl_op(op), comm_, side_);
      });
    });
  }

 protected:
  /// An all-reduce of one int on the side stream, waited for with the communicator's timeout: a
  /// rank that never arrives aborts the communicator.
  void do_barrier() override {
    activate();
    enqueue("barrier", 1, DType::i32, [&] { return ncclAllReduce(scratch_, scratch_, 1, ncclInt32, ncclSum, comm_, side_); });
    wait_stream(side_, "the barrier", options_.timeout, /*abort_on_timeout=*/true);
  }

  /// Like MPI_Comm_split; a negative color returns nullptr. NCCL runs a non-blocking split as a
  /// job of this (the parent) communicator and hands out the child only when the job is done, so:
  /// a split NCCL refuses at once (arguments, state) aborts nothing; a child that comes up broken is
  /// aborted, and this communicator too only if NCCL reports the failure on it (it records the
  /// job's error on the parent, after which the parent refuses every call); a split that does not
  /// finish within the timeout (a rank never called it) can only be cancelled by aborting this
  /// communicator, which NCCL propagates to the pending child.
  std::shared_ptr<Communicator> do_split(int color, int key) override {
    activate();
    if (aborted_) TP_THROW(CommError, "NcclCommunicator rank {} of {}: split on an aborted communicator", rank_, world_);
    ncclConfig_t config = make_config();
    ncclComm_t sub = nullptr;
    const std::string what = fmt::format("ncclCommSplit(color {}, key {})", color, key);
    const ncclResult_t r = ncclCommSplit(comm_, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &sub, &config);
    if (r == ncclInProgress) {
      wait_pending(what.c_str());  // aborts this communicator on a timeout: the only way to cancel the job
      ncclResult_t state = ncclSuccess;
      ncclCommGetAsyncError(comm_, &state);
      if (state != ncclSuccess) split_failed(sub, fmt::format("{} failed: {}", what, detail::nccl_status(state, comm_)));
    } else if (r != ncclSuccess) {
      split_failed(sub, fmt::format("{} failed: {}", what, detail::nccl_status(r, comm_)));
    }
    if (sub == nullptr) return nullptr;  // negative color, like MPI_UNDEFINED
    int sub_rank = 0, sub_world = 0;
    ncclResult_t info = ncclCommUserRank(sub, &sub_rank);
    if (info == ncclSuccess) info = ncclCommCount(sub, &sub_world);
    if (info != ncclSuccess)
      split_failed(sub, fmt::format("reading the rank and size of the communicator {} made: {}", what,
                                    detail::nccl_status(info, sub)));
    try {
      return std::shared_ptr<NcclCommunicator>(new NcclCommunicator(sub, sub_rank, sub_world, device_, options_));
    } catch (...) {
      ncclCommAbort(sub);  // the constructor threw before the new object owned `sub`
      throw;
    }
  }

  /// Collective verification: the signatures travel through device memory on the side stream
  /// (NCCL moves nothing else), staged in pinned host memory (detail::SignatureBuffers), and the
  /// host waits for them only in wait_stream's poll, with the timeout.
  void do_exchange_signatures(const std::int64_t* mine, std::int64_t* all) override {
    if (aborted_)
      TP_THROW(CommError, "NcclCommunicator rank {} of {}: call signature exchange on an aborted communicator", rank_,
               world_);
    activate();
    constexpr std::size_t words = detail::SignatureBuffers::words;
    std::int64_t* slot = signatures_->post(mine, side_);
    enqueue("call signature exchange", words, DType::i64,
            [&] { return ncclAllGather(slot, signatures_->device(), words, ncclInt64, comm_, side_); });
    signatures_->fetch(side_);
    wait_stream(side_, "the call signature exchange", options_.timeout, /*abort_on_timeout=*/true);
    std::memcpy(all, signatures_->host(), words * sizeof(std::int64_t) * static_cast<std::size_t>(world_));
  }

  void do_all_reduce(const void* send, void* recv, std::size_t count, DType dtype, ReduceOp op,
                     Stream stream) override {
    activate();
    enqueue("all_reduce", count, dtype, [&] {
      return ncclAllReduce(send, recv, count, detail::nccl_type(dtype), detail::nccl_op(op), comm_, stream);
    });
  }

  std::unique_ptr<tp::Work> do_all_reduce_async(const void* send, void* recv, std::size_t count, DType dtype,
                                                ReduceOp op, Stream stream) override {
    return all_reduce_async_nccl(send, recv, count, dtype, op, stream);
  }

  /// The gathers and reduce-scatters run on the side stream as all_reduce_async does.
  std::unique_ptr<tp::Work> do_all_gather_v_async(const void* send, void* recv, std::span<const std::size_t> counts,
                                                  DType dtype, Stream stream) override {
    const std::size_t total = std::accumulate(counts.begin(), counts.end(), std::size_t{0});
    return on_side_stream("all_gather", total, dtype, stream,
                          [&] { do_all_gather_v(send, recv, counts, dtype, side_); });
  }
  std::unique_ptr<tp::Work> do_reduce_scatter_v_async(const void* send, void* recv,
                                                      std::span<const std::size_t> counts, DType dtype, ReduceOp op,
                                                      Stream stream) override {
    const std::size_t total = std::accumulate(counts.begin(), counts.end(), std::size_t{0});
    return on_side_stream("reduce_scatter", total, dtype, stream,
                          [&] { do_reduce_scatter_v(send, recv, counts, dtype, op, side_); });
  }

  void do_all_gather_v(const void* send, void* recv, std::span<const std::size_t> counts, DType dtype,
                       Stream stream) override {
    activate();
    const auto type = detail::nccl_type(dtype);
    const std::size_t total = std::accumulate(counts.begin(), counts.end(), std::size_t{0});
    if (std::all_of(counts.begin(), counts.end(), [&](std::size_t c) { return c == counts[0]; })) {
      enqueue("all_gather", total, dtype, [&] { return ncclAllGather(send, recv, counts[0], type, comm_, stream); });
      return;
    }
    const auto displs = displacements(counts);
    const std::size_t elem = size_of(dtype);
    enqueue("all_gather_v", total, dtype, [&] {
      ncclResult_t r = ncclGroupStart();
      for (int q = 0; q < world_ && r == ncclSuccess; ++q) {
        if (counts[q] == 0) continue;
        void* block = static_cast<std::byte*>(recv) + displs[q] * elem;
        r = ncclBroadcast(q == rank_ ? send : block, block, counts[q], type, q, comm_, stream);
      }
      const ncclResult_t end = ncclGroupEnd();
      return r != ncclSuccess ? r : end;
    });
  }

  void do_reduce_scatter_v(const void* send, void* recv, std::span<const std::size_t> counts, DType dtype,
                           ReduceOp op, Stream stream) override {
    activate();
    const auto type = detail::nccl_type(dtype);
    const auto red = detail::nccl_op(op);
    const std::size_t total = std::accumulate(counts.begin(), counts.end(), std::size_t{0});
    if (std::all_of(counts.begin(), counts.end(), [&](std::size_t c) { return c == counts[0]; })) {
      enqueue("reduce_scatter", total, dtype,
              [&] { return ncclReduceScatter(send, recv, counts[0], type, red, comm_, stream); });
      return;
    }
    const auto displs = displacements(counts);
    const std::size_t elem = size_of(dtype);
    enqueue("reduce_scatter_v", total, dtype, [&] {
      ncclResult_t r = ncclGroupStart();
      for (int q = 0; q < world_ && r == ncclSuccess; ++q) {
        if (counts[q] == 0) continue;
        const void* block = static_cast<const std::byte*>(send) + displs[q] * elem;
        r = ncclReduce(block, recv, counts[q], type, red, q, comm_, stream);
      }
      const ncclResult_t end = ncclGroupEnd();
      return r != ncclSuccess ? r : end;
    });
  }

  void do_broadcast(void* buffer, std::size_t count, DType dtype, int root, Stream stream) override {
    activate();
    enqueue("broadcast", count, dtype,
            [&] { return ncclBroadcast(buffer, buffer, count, detail::nccl_type(dtype), root, comm_, stream); });
  }

 private:
  friend class AsyncWork;

  /// Orders the side stream after what `stream` has queued so far (the collective's input), runs
  /// `launch` (which enqueues the collective on side_), and returns the Work whose wait() orders
  /// its result before what `stream` gets next.
  template <class F>
  std::unique_ptr<AsyncWork> on_side_stream(const char* what, std::size_t count, DType dtype, Stream stream,
                                            F&& launch) {
    activate();
    cudaEvent_t ready = nullptr;
    TP_CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming), "creating an event");
    cudaError_t status = cudaEventRecord(ready, stream);
    if (status == cudaSuccess) status = cudaStreamWaitEvent(side_, ready, 0);
    detail::discard_cuda_status(cudaEventDestroy(ready));  // released once the wait has consumed it
    TP_CUDA_CHECK(status, "ordering an asynchronous {} of {} x {} after the caller's stream on rank {}", what, count,
                  name(dtype), rank_);
    launch();
    return record(side_, stream);
  }

  static void require_device(int device) {
    int count = 0;
    const cudaError_t status = cudaGetDeviceCount(&count);
    if (status != cudaSuccess) {
      (void)cudaGetLastError();
      TP_THROW(CudaError, "NcclCommunicator: no CUDA device: cudaGetDeviceCount failed: {}",
               detail::cuda_status(status));
    }
    if (count == 0) TP_THROW(CudaError, "NcclCommunicator: no CUDA device: cudaGetDeviceCount found 0 devices");
    TP_CHECK(device < count, "NcclCommunicator: device {} requested, {} present", device, count);
  }

  static ncclConfig_t make_config() {
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;  // every call returns; we poll with a deadline instead of hanging
    return config;
  }

  NcclCommunicator(const ncclUniqueId& id, int rank, int world, Options options)
      : rank_(rank), world_(world), options_(options) {
    require_device(options.device);
    device_ = options.device;
    if (device_ < 0) TP_CUDA_CHECK(cudaGetDevice(&device_), "reading the current device");
    TP_CUDA_CHECK(cudaSetDevice(device_), "selecting device {} for NCCL rank {} of {}", device_, rank, world);
    ncclConfig_t config = make_config();
    ncclComm_t comm = nullptr;
    const ncclResult_t r = ncclCommInitRankConfig(&comm, world, id, rank, &config);
    if (r != ncclSuccess && r != ncclInProgress)
      TP_THROW(CommError, "ncclCommInitRankConfig failed on rank {} of {} (device {}): {}", rank, world, device_,
               detail::nccl_status(r));
    comm_ = comm;
    wait_ready(comm_, "ncclCommInitRankConfig");
    init_resources();
  }

  NcclCommunicator(ncclComm_t comm, int rank, int world, int device, Options options)
      : comm_(comm), rank_(rank), world_(world), device_(device), options_(options) {
    init_resources();
  }

  /// Finalize flushes queued work; if that does not finish in time, abort rather than hang.
  void release_comm() noexcept {
    if (comm_ == nullptr || aborted_) return;
    ncclResult_t r = ncclCommFinalize(comm_);
    const auto deadline = std::chrono::steady_clock::now() + options_.timeout;
    while (r == ncclSuccess || r == ncclInProgress) {
      ncclResult_t state = ncclSuccess;
      if (ncclCommGetAsyncError(comm_, &state) != ncclSuccess || state != ncclInProgress) {
        r = state;
        break;
      }
      if (std::chrono::steady_clock::now() > deadline) {
        r = ncclInProgress;
        break;
      }
      std::this_thread::yield();
    }
    if (r == ncclSuccess) ncclCommDestroy(comm_);
    else ncclCommAbort(comm_);
  }

  void init_resources() {
    TP_CUDA_CHECK(cudaStreamCreateWithFlags(&side_, cudaStreamNonBlocking), "creating NCCL rank {}'s side stream",
                  rank_);
    TP_CUDA_CHECK(cudaMalloc(&scratch_, sizeof(int)), "allocating NCCL rank {}'s barrier word", rank_);
    // Here rather than at the first exchange: allocating pinned memory may wait for the device.
    if (world_ > 1) signatures_ = std::make_unique<detail::SignatureBuffers>(rank_, world_);
  }

  void activate() const {
    int current = -1;
    if (cudaGetDevice(&current) == cudaSuccess && current == device_) return;
    TP_CUDA_CHECK(cudaSetDevice(device_), "selecting device {} for NCCL rank {}", device_, rank_);
  }

  /// A split that did not produce a working communicator: abort the child, and this communicator
  /// only if NCCL reports an error on it as well.
  [[noreturn]] void split_failed(ncclComm_t sub, const std::string& what) {
    if (sub != nullptr) ncclCommAbort(sub);
    ncclResult_t state = ncclSuccess;
    const ncclResult_t q = ncclCommGetAsyncError(comm_, &state);
    if (q != ncclSuccess || (state != ncclSuccess && state != ncclInProgress))
      fail(fmt::format("{}; NCCL recorded the failure on this communicator as well", what));
    TP_THROW(CommError, "NcclCommunicator rank {} of {}: {}; nothing was created and this communicator is still usable",
             rank_, world_, what);
  }

  [[noreturn]] void fail(const std::string& what) {
    if (comm_ != nullptr && !aborted_) {
      ncclCommAbort(comm_);
      aborted_ = true;
    }
    TP_THROW(CommError, "NcclCommunicator rank {} of {}: {}; the communicator was aborted", rank_, world_, what);
  }

  void check(ncclResult_t r, const char* call) {
    if (r != ncclSuccess) fail(fmt::format("{} failed: {}", call, detail::nccl_status(r, comm_)));
  }

  /// Polls this communicator until its pending operation is no longer in progress (success or an
  /// error, which the caller reads); aborts it when the timeout passes.
  void wait_pending(const char* call) {
    const auto deadline = std::chrono::steady_clock::now() + options_.timeout;
    for (;;) {
      ncclResult_t state = ncclSuccess;
      if (ncclCommGetAsyncError(comm_, &state) != ncclSuccess || state != ncclInProgress) return;
      if (std::chrono::steady_clock::now() > deadline)
        fail(fmt::format("{} did not complete within {} ms (are all {} ranks calling it?)", call,
                         options_.timeout.count(), world_));
      std::this_thread::yield();
    }
  }

  /// Polls a non-blocking communicator until its pending operation is done.
  void wait_ready(ncclComm_t comm, const char* call) {
    const auto deadline = std::chrono::steady_clock::now() + options_.timeout;
    for (;;) {
      ncclResult_t state = ncclSuccess;
      const ncclResult_t r = ncclCommGetAsyncError(comm, &state);
      if (r != ncclSuccess) state = r;
      if (state == ncclSuccess) return;
      if (state != ncclInProgress) {
        if (comm != comm_) ncclCommAbort(comm);
        fail(fmt::format("{} failed: {}", call, detail::nccl_status(state, comm)));
      }
      if (std::chrono::steady_clock::now() > deadline) {
        if (comm != comm_) ncclCommAbort(comm);
        fail(fmt::format("{} did not complete within {} ms (are all {} ranks calling it?)", call,
                         options_.timeout.count(), world_));
      }
      std::this_thread::yield();
    }
  }

  template <class F>
  void enqueue(const char* op, std::size_t count, DType dtype, F&& f) {
    if (aborted_) TP_THROW(CommError, "NcclCommunicator rank {} of {}: {} on an aborted communicator", rank_, world_, op);
    const ncclResult_t r = f();
    if (r == ncclInProgress) return wait_ready(comm_, op);
    if (r != ncclSuccess)
      fail(fmt::format("{} of {} x {} failed: {}", op, count, name(dtype), detail::nccl_status(r, comm_)));
  }

  /// An event recorded on `ran_on` after a collective, handed to the caller of stream `caller`.
  std::unique_ptr<AsyncWork> record(Stream ran_on, Stream caller) {
    cudaEvent_t done = nullptr;
    TP_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), "creating an event");
    const cudaError_t recorded = cudaEventRecord(done, ran_on);
    if (recorded != cudaSuccess) detail::discard_cuda_status(cudaEventDestroy(done));
    TP_CUDA_CHECK(recorded, "recording an event after a collective on rank {}", rank_);
    return std::make_unique<AsyncWork>(*this, caller, done);
  }

  /// Records an event on `stream` and waits for it (wait_event).
  void wait_stream(Stream stream, const char* what, std::chrono::milliseconds timeout, bool abort_on_timeout) {
    activate();
    cudaEvent_t event = nullptr;
    TP_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "creating an event");
    const cudaError_t recorded = cudaEventRecord(event, stream);
    if (recorded != cudaSuccess) detail::discard_cuda_status(cudaEventDestroy(event));
    TP_CUDA_CHECK(recorded, "recording an event on the stream of rank {}", rank_);
    try {
      wait_event(event, what, timeout, abort_on_timeout);
    } catch (...) {
      detail::discard_cuda_status(cudaEventDestroy(event));
      throw;
    }
    detail::discard_cuda_status(cudaEventDestroy(event));
  }

  /// Polls `event` and the communicator's asynchronous error until the event completes. An NCCL
  /// error aborts the communicator; the deadline passing aborts it only when the wait was for
  /// NCCL's own work (`abort_on_timeout`), since a late stream may just be busy with the caller's kernels.
  void wait_event(cudaEvent_t event, const char* what, std::chrono::milliseconds timeout, bool abort_on_timeout) {
    activate();
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      const cudaError_t q = cudaEventQuery(event);
      if (q == cudaSuccess) return;
      if (q != cudaErrorNotReady) TP_CUDA_CHECK(q, "waiting for {} on NCCL rank {} of {}", what, rank_, world_);
      ncclResult_t state = ncclSuccess;
      if (!aborted_) ncclCommGetAsyncError(comm_, &state);
      if (state != ncclSuccess && state != ncclInProgress)
        fail(fmt::format("waiting for {}: asynchronous error {}", what, detail::nccl_status(state, comm_)));
      if (std::chrono::steady_clock::now() > deadline) {
        if (abort_on_timeout)
          fail(fmt::format("waiting for {} timed out after {} ms (a peer died or stopped calling collectives?)", what,
                           timeout.count()));
        TP_THROW(CommError,
                 "NcclCommunicator rank {} of {}: {} was not done after {} ms (stream_timeout; the stream also holds "
                 "the caller's own work); NCCL reports no error and the communicator was not aborted",
                 rank_, world_, what, timeout.count());
      }
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }

  ncclComm_t comm_ = nullptr;
  int rank_ = 0, world_ = 1, device_ = 0;
  Options options_;
  bool aborted_ = false;
  cudaStream_t side_ = nullptr;
  int* scratch_ = nullptr;
  std::unique_ptr<detail::SignatureBuffers> signatures_;  // none at world size 1, which exchanges nothing
};

}  // namespace tp
