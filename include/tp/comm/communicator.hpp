#pragma once
/// The one interface every backend implements. Collectives take type-erased buffers, a DType and a
/// stream (null on the host); the typed templates below sit on top. Argument checks that do not
/// depend on the backend live here, once; backends implement the protected `do_*` hooks.
///
/// A virtual call costs nanoseconds and a collective microseconds, so the backend is picked at run
/// time at no measurable price.
///
/// Collective verification (on by default): before each collective the ranks all-gather a
/// 32-byte signature of the call (which collective, count or counts, element type, root, reduce
/// op) and compare them, so that ranks that disagree all throw the same CommError naming the ranks
/// and each call, before any data moves, instead of hanging or returning garbage. It costs one
/// small all-gather per collective (bench/comm_bench.cpp measures it); switch it off with
/// `set_verify_collectives(false)` on every rank alike, never on some ranks only.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <numeric>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tp/comm/detail/call_signature.hpp"
#include "tp/core/dtype.hpp"
#include "tp/core/error.hpp"

struct CUstream_st;

namespace tp {

/// A CUDA stream, forward-declared so that host code never includes CUDA headers.
using Stream = CUstream_st*;

/// A collective in flight; `wait()` returns once its result is in the receive buffer (on a
/// device backend: once it is ordered on the stream given at launch).
class Work {
 public:
  virtual ~Work() = default;
  virtual void wait() = 0;
};

/// A Work that was already complete when it was returned.
class CompletedWork final : public Work {
 public:
  void wait() override {}
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string_view backend() const = 0;

  /// Whether each collective first checks that every rank made the same call. Every rank of a
  /// communicator must use the same setting: a rank that verifies waits for its peers' signatures.
  /// Communicators made by `split` inherit it.
  bool verify_collectives() const { return verify_; }
  void set_verify_collectives(bool on) { verify_ = on; }

  /// recv = op over ranks of send; send == recv is in place.
  void all_reduce(const void* send, void* recv, std::size_t count, DType dtype, ReduceOp op = ReduceOp::sum,
                  Stream stream = nullptr) {
    check_enums(dtype, op, "all_reduce");
    verify({.op = Collective::all_reduce, .dtype = dtype, .reduce = op, .count = count});
    do_all_reduce(send, recv, count, dtype, op, stream);
  }
  std::unique_ptr<Work> all_reduce_async(const void* send, void* recv, std::size_t count, DType dtype,
                                         ReduceOp op = ReduceOp::sum, Stream stream = nullptr) {
    check_enums(dtype, op, "all_reduce_async");
    verify({.op = Collective::all_reduce, .dtype = dtype, .reduce = op, .count = count});
    return do_all_reduce_async(send, recv, count, dtype, op, stream);
  }

  /// recv holds size() blocks of `count` elements, rank r's send in block r.
  void all_gather(const void* send, void* recv, std::size_t count, DType dtype, Stream stream = nullptr) {
    check_enums(dtype, ReduceOp::sum, "all_gather");
    verify({.op = Collective::all_gather, .dtype = dtype, .count = count});
    const std::vector<std::size_t> counts(size(), count);
    do_all_gather_v(send, recv, counts, dtype, stream);
  }
  /// Uneven blocks: rank r sends counts[r] elements, placed after those of ranks 0..r-1.
  void all_gather_v(const void* send, void* recv, std::span<const std::size_t> counts, DType dtype,
                    Stream stream = nullptr) {
    check_counts(counts, "all_gather_v");
    check_enums(dtype, ReduceOp::sum, "all_gather_v");
    verify({.op = Collective::all_gather_v, .dtype = dtype, .count = total(counts),
            .counts_hash = detail::hash_counts(counts)});
    do_all_gather_v(send, recv, counts, dtype, stream);
  }

  /// send holds size() blocks of `count`; rank r receives block r reduced over ranks.
  void reduce_scatter(const void* send, void* recv, std::size_t count, DType dtype, ReduceOp op = ReduceOp::sum,
                      Stream stream = nullptr) {
    check_enums(dtype, op, "reduce_scatter");
    verify({.op = Collective::reduce_scatter, .dtype = dtype, .reduce = op, .count = count});
    const std::vector<std::size_t> counts(size(), count);
    do_reduce_scatter_v(send, recv, counts, dtype, op, stream);
  }
  /// Uneven blocks: rank r receives counts[r] elements, taken after those of ranks 0..r-1.
  void reduce_scatter_v(const void* send, void* recv, std::span<const std::size_t> counts, DType dtype,
                        ReduceOp op = ReduceOp::sum, Stream stream = nullptr) {
    check_counts(counts, "reduce_scatter_v");
    check_enums(dtype, op, "reduce_scatter_v");
    verify({.op = Collective::reduce_scatter_v, .dtype = dtype, .reduce = op, .count = total(counts),
            .counts_hash = detail::hash_counts(counts)});
    do_reduce_scatter_v(send, recv, counts, dtype, op, stream);
  }

  void broadcast(void* buffer, std::size_t count, DType dtype, int root, Stream stream = nullptr) {
    TP_CHECK(root >= 0 && root < size(), "broadcast root {} is outside world size {}", root, size());
    check_enums(dtype, ReduceOp::sum, "broadcast");
    verify({.op = Collective::broadcast, .dtype = dtype, .root = root, .count = count});
    do_broadcast(buffer, count, dtype, root, stream);
  }

  /// Returns once every rank has called it. With verification on, the signature exchange (an
  /// all-gather, which no rank can leave before every rank has entered it) is the barrier.
  void barrier() {
    if (verify_ && size() > 1) return verify({.op = Collective::barrier});
    do_barrier();
  }

  /// A communicator over the ranks that passed the same `color`, ordered by (key, rank). Collective
  /// over this communicator: a TP group inside a larger world is `world.split(rank / tp, rank % tp)`.
  std::shared_ptr<Communicator> split(int color, int key) {
    verify({.op = Collective::split});
    auto sub = do_split(color, key);
    if (sub) sub->verify_ = verify_;
    return sub;
  }

  // Typed forms. Element counts come from the spans.
  template <class T>
  void all_reduce(std::span<T> data, ReduceOp op = ReduceOp::sum, Stream stream = nullptr) {
    all_reduce(data.data(), data.data(), data.size(), dtype_of<T>, op, stream);
  }
  template <class T>
  void all_gather(std::span<const T> send, std::span<T> recv, Stream stream = nullptr) {
    TP_CHECK(recv.size() == send.size() * size(), "all_gather: receive buffer of {} elements, expected {} x {} ranks",
             recv.size(), send.size(), size());
    all_gather(send.data(), recv.data(), send.size(), dtype_of<T>, stream);
  }
  template <class T>
  void all_gather_v(std::span<const T> send, std::span<T> recv, std::span<const std::size_t> counts,
                    Stream stream = nullptr) {
    check_span_counts(send.size(), recv.size(), counts, "all_gather_v");
    all_gather_v(send.data(), recv.data(), counts, dtype_of<T>, stream);
  }
  template <class T>
  void reduce_scatter(std::span<const T> send, std::span<T> recv, ReduceOp op = ReduceOp::sum,
                      Stream stream = nullptr) {
    TP_CHECK(send.size() == recv.size() * size(),
             "reduce_scatter: send buffer of {} elements, expected {} x {} ranks", send.size(), recv.size(), size());
    reduce_scatter(send.data(), recv.data(), recv.size(), dtype_of<T>, op, stream);
  }
  template <class T>
  void reduce_scatter_v(std::span<const T> send, std::span<T> recv, std::span<const std::size_t> counts,
                        ReduceOp op = ReduceOp::sum, Stream stream = nullptr) {
    check_span_counts(recv.size(), send.size(), counts, "reduce_scatter_v");
    reduce_scatter_v(send.data(), recv.data(), counts, dtype_of<T>, op, stream);
  }
  template <class T>
  void broadcast(std::span<T> data, int root, Stream stream = nullptr) {
    broadcast(data.data(), data.size(), dtype_of<T>, root, stream);
  }

 protected:
  virtual void do_barrier() = 0;
  virtual std::shared_ptr<Communicator> do_split(int color, int key) = 0;
  virtual void do_all_reduce(const void* send, void* recv, std::size_t count, DType dtype, ReduceOp op,
                             Stream stream) = 0;
  /// Backends with real asynchrony override this; the default completes before returning.
  virtual std::unique_ptr<Work> do_all_reduce_async(const void* send, void* recv, std::size_t count, DType dtype,
                                                    ReduceOp op, Stream stream) {
    do_all_reduce(send, recv, count, dtype, op, stream);
    return std::make_unique<CompletedWork>();
  }
  virtual void do_all_gather_v(const void* send, void* recv, std::span<const std::size_t> counts, DType dtype,
                               Stream stream) = 0;
  virtual void do_reduce_scatter_v(const void* send, void* recv, std::span<const std::size_t> counts, DType dtype,
                                   ReduceOp op, Stream stream) = 0;
  virtual void do_broadcast(void* buffer, std::size_t count, DType dtype, int root, Stream stream) = 0;
  /// Gathers every rank's packed call signature (CallSignature::words integers each, in rank
  /// order) into `all`; both live in host memory. The default is an all-gather on the backend;
  /// backends whose buffers must live elsewhere (device memory) override it.
  virtual void do_exchange_signatures(const std::int64_t* mine, std::int64_t* all) {
    const std::vector<std::size_t> counts(size(), detail::CallSignature::words);
    do_all_gather_v(mine, all, counts, DType::i64, nullptr);
  }

 private:
  /// A DType or ReduceOp cast from an out-of-range integer would fall through the backends' switches.
  static void check_enums(DType dtype, ReduceOp op, const char* what) {
    TP_CHECK(valid(dtype), "{}: dtype {} is not a tp::DType", what, static_cast<unsigned>(dtype));
    TP_CHECK(valid(op), "{}: reduce op {} is not a tp::ReduceOp", what, static_cast<unsigned>(op));
  }
  /// Exchanges this call's signature and throws CommError on every rank if any rank differs.
  void verify(const detail::CallSignature& call) {
    if (!verify_ || size() <= 1) return;
    const auto mine = call.pack();
    std::vector<std::int64_t> all(mine.size() * static_cast<std::size_t>(size()));
    try {
      do_exchange_signatures(mine.data(), all.data());
    } catch (const CommError& e) {
      TP_THROW(CommError, "{} communicator, rank {} of {}: exchanging call signatures before {}: {}", backend(), rank(),
               size(), detail::describe(call), e.what());
    }
    detail::check_signatures(all, size(), rank(), backend());
  }
  static std::size_t total(std::span<const std::size_t> counts) {
    return std::accumulate(counts.begin(), counts.end(), std::size_t{0});
  }
  void check_counts(std::span<const std::size_t> counts, const char* op) const {
    TP_CHECK(counts.size() == static_cast<std::size_t>(size()), "{}: {} counts given for world size {}", op,
             counts.size(), size());
  }
  /// `mine` is this rank's block, `all` the concatenation of every rank's.
  void check_span_counts(std::size_t mine, std::size_t all, std::span<const std::size_t> counts, const char* op) const {
    check_counts(counts, op);
    const std::size_t total = std::accumulate(counts.begin(), counts.end(), std::size_t{0});
    TP_CHECK(mine == counts[rank()] && all == total,
             "{}: rank {} has a block of {} and a buffer of {}, but the counts {} say {} and {}", op, rank(), mine,
             all, counts, counts[rank()], total);
  }

  bool verify_ = true;
};

/// Element offsets of each rank's block: the exclusive prefix sum of `counts`.
inline std::vector<std::size_t> displacements(std::span<const std::size_t> counts) {
  std::vector<std::size_t> displs(counts.size(), 0);
  std::exclusive_scan(counts.begin(), counts.end(), displs.begin(), std::size_t{0});
  return displs;
}

}  // namespace tp
