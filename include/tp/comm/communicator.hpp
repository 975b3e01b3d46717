#pragma once
/// The one interface every backend implements. Collectives take type-erased buffers, a DType and a
/// stream (null on the host); the typed templates below sit on top. Argument checks that do not
/// depend on the backend live here, once; backends implement the protected `do_*` hooks.
///
/// A virtual call costs nanoseconds and a collective microseconds, so the backend is picked at run
/// time at no measurable price.
///
/// Collective verification (on by default): before each collective the ranks exchange a 32-byte
/// signature of the call (which collective, count or counts, element type, root, reduce op) and
/// compare them, so that ranks that disagree all throw the same CommError naming the ranks and each
/// call, before any of the caller's buffers is written, instead of hanging or returning garbage.
/// On its own the exchange is one small all-gather per collective. Backends that implement the
/// message hooks (`fused_capacity`, `do_exchange_messages`: MPI and Gloo) carry a small
/// all_reduce's data in the same exchange as its signature and reduce locally once every signature
/// matched, so verification adds no round trip there (bench/comm_bench.cpp measures both;
/// docs/design.md says why the data of larger calls cannot move before the check). Switch it off with `set_verify_collectives(false)` on every rank alike, never on some
/// ranks only.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tp/comm/detail/call_signature.hpp"
#include "tp/core/dtype.hpp"
#include "tp/core/error.hpp"
#include "tp/detail/host_reduce.hpp"

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
    const detail::CallSignature call{.op = Collective::all_reduce, .dtype = dtype, .reduce = op, .count = count};
    if (fuses(call, stream)) return fused_all_reduce(call, send, recv);
    verify(call);
    do_all_reduce(send, recv, count, dtype, op, stream);
  }
  /// The asynchronous forms (all_reduce_async, all_gather_async, all_gather_v_async,
  /// reduce_scatter_async, reduce_scatter_v_async) check and verify their arguments as the
  /// blocking ones do, before returning, and start the collective; its result is in `recv` once
  /// `wait()` on the Work has returned. Until then neither buffer may be touched, and `counts`
  /// need not outlive the call. Every rank must call the same form: MPI does not match a
  /// non-blocking collective with a blocking one, so verification refuses the mix by name.
  /// Where the backend has no asynchrony of its own (local, Gloo) the collective completes before
  /// the call returns, as does an all_reduce small enough to travel with its signature (fused
  /// verification, below). A Work destroyed unwaited is completed by its destructor.
  std::unique_ptr<Work> all_reduce_async(const void* send, void* recv, std::size_t count, DType dtype,
                                         ReduceOp op = ReduceOp::sum, Stream stream = nullptr) {
    check_enums(dtype, op, "all_reduce_async");
    const detail::CallSignature call{.op = Collective::all_reduce, .dtype = dtype, .reduce = op, .count = count,
                                     .async = true};
    // Where the blocking form reduces on the host with the signatures, so does this one, at once:
    // both forms then give the same bits (a backend's own all_reduce may sum in another order).
    if (fuses(call, stream)) {
      fused_all_reduce(call, send, recv);
      return std::make_unique<CompletedWork>();
    }
    verify(call);
    return do_all_reduce_async(send, recv, count, dtype, op, stream);
  }

  /// recv holds size() blocks of `count` elements, rank r's send in block r.
  void all_gather(const void* send, void* recv, std::size_t count, DType dtype, Stream stream = nullptr) {
    check_enums(dtype, ReduceOp::sum, "all_gather");
    verify({.op = Collective::all_gather, .dtype = dtype, .count = count});
    const std::vector<std::size_t> counts(size(), count);
    do_all_gather_v(send, recv, counts, dtype, stream);
  }
  std::unique_ptr<Work> all_gather_async(const void* send, void* recv, std::size_t count, DType dtype,
                                         Stream stream = nullptr) {
    check_enums(dtype, ReduceOp::sum, "all_gather_async");
    verify({.op = Collective::all_gather, .dtype = dtype, .count = count, .async = true});
    const std::vector<std::size_t> counts(size(), count);
    return do_all_gather_v_async(send, recv, counts, dtype, stream);
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
  std::unique_ptr<Work> all_gather_v_async(const void* send, void* recv, std::span<const std::size_t> counts,
                                           DType dtype, Stream stream = nullptr) {
    check_counts(counts, "all_gather_v_async");
    check_enums(dtype, ReduceOp::sum, "all_gather_v_async");
    verify({.op = Collective::all_gather_v, .dtype = dtype, .count = total(counts),
            .counts_hash = detail::hash_counts(counts), .async = true});
    return do_all_gather_v_async(send, recv, counts, dtype, stream);
  }

  /// send holds size() blocks of `count`; rank r receives block r reduced over ranks.
  void reduce_scatter(const void* send, void* recv, std::size_t count, DType dtype, ReduceOp op = ReduceOp::sum,
                      Stream stream = nullptr) {
    check_enums(dtype, op, "reduce_scatter");
    verify({.op = Collective::reduce_scatter, .dtype = dtype, .reduce = op, .count = count});
    const std::vector<std::size_t> counts(size(), count);
    do_reduce_scatter_v(send, recv, counts, dtype, op, stream);
  }
  std::unique_ptr<Work> reduce_scatter_async(const void* send, void* recv, std::size_t count, DType dtype,
                                             ReduceOp op = ReduceOp::sum, Stream stream = nullptr) {
    check_enums(dtype, op, "reduce_scatter_async");
    verify({.op = Collective::reduce_scatter, .dtype = dtype, .reduce = op, .count = count, .async = true});
    const std::vector<std::size_t> counts(size(), count);
    return do_reduce_scatter_v_async(send, recv, counts, dtype, op, stream);
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
  std::unique_ptr<Work> reduce_scatter_v_async(const void* send, void* recv, std::span<const std::size_t> counts,
                                               DType dtype, ReduceOp op = ReduceOp::sum, Stream stream = nullptr) {
    check_counts(counts, "reduce_scatter_v_async");
    check_enums(dtype, op, "reduce_scatter_v_async");
    verify({.op = Collective::reduce_scatter_v, .dtype = dtype, .reduce = op, .count = total(counts),
            .counts_hash = detail::hash_counts(counts), .async = true});
    return do_reduce_scatter_v_async(send, recv, counts, dtype, op, stream);
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
  std::unique_ptr<Work> all_gather_async(std::span<const T> send, std::span<T> recv, Stream stream = nullptr) {
    TP_CHECK(recv.size() == send.size() * size(),
             "all_gather_async: receive buffer of {} elements, expected {} x {} ranks", recv.size(), send.size(),
             size());
    return all_gather_async(send.data(), recv.data(), send.size(), dtype_of<T>, stream);
  }
  template <class T>
  std::unique_ptr<Work> all_gather_v_async(std::span<const T> send, std::span<T> recv,
                                           std::span<const std::size_t> counts, Stream stream = nullptr) {
    check_span_counts(send.size(), recv.size(), counts, "all_gather_v_async");
    return all_gather_v_async(send.data(), recv.data(), counts, dtype_of<T>, stream);
  }
  template <class T>
  std::unique_ptr<Work> reduce_scatter_async(std::span<const T> send, std::span<T> recv, ReduceOp op = ReduceOp::sum,
                                             Stream stream = nullptr) {
    TP_CHECK(send.size() == recv.size() * size(),
             "reduce_scatter_async: send buffer of {} elements, expected {} x {} ranks", send.size(), recv.size(),
             size());
    return reduce_scatter_async(send.data(), recv.data(), recv.size(), dtype_of<T>, op, stream);
  }
  template <class T>
  std::unique_ptr<Work> reduce_scatter_v_async(std::span<const T> send, std::span<T> recv,
                                               std::span<const std::size_t> counts, ReduceOp op = ReduceOp::sum,
                                               Stream stream = nullptr) {
    check_span_counts(recv.size(), send.size(), counts, "reduce_scatter_v_async");
    return reduce_scatter_v_async(send.data(), recv.data(), counts, dtype_of<T>, op, stream);
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
  /// As do_all_reduce_async: the default completes before returning. `counts` lives only for the
  /// call; a backend whose collective outlives it keeps its own copy.
  virtual std::unique_ptr<Work> do_all_gather_v_async(const void* send, void* recv,
                                                      std::span<const std::size_t> counts, DType dtype,
                                                      Stream stream) {
    do_all_gather_v(send, recv, counts, dtype, stream);
    return std::make_unique<CompletedWork>();
  }
  virtual std::unique_ptr<Work> do_reduce_scatter_v_async(const void* send, void* recv,
                                                          std::span<const std::size_t> counts, DType dtype,
                                                          ReduceOp op, Stream stream) {
    do_reduce_scatter_v(send, recv, counts, dtype, op, stream);
    return std::make_unique<CompletedWork>();
  }
  virtual void do_broadcast(void* buffer, std::size_t count, DType dtype, int root, Stream stream) = 0;
  /// Gathers every rank's packed call signature (CallSignature::words integers each, in rank
  /// order) into `all`; both live in host memory. The default is an all-gather on the backend;
  /// backends whose buffers must live elsewhere (device memory) override it.
  /// A backend with fused verification (fused_capacity() > 0) sends them as bare messages of
  /// do_exchange_messages instead, so that they meet a peer's fused all_reduce in the same exchange.
  virtual void do_exchange_signatures(const std::int64_t* mine, std::int64_t* all) {
    if (fused_capacity() > 0) return exchange_bare_signatures(mine, all);
    const std::vector<std::size_t> counts(size(), detail::CallSignature::words);
    do_all_gather_v(mine, all, counts, DType::i64, nullptr);
  }

  /// Fused verification (optional; zero turns it off). The most payload bytes a message of
  /// do_exchange_messages may carry after its signature: the same on every rank (it depends on the
  /// world size at most), since a rank receives every peer's message into that much room. Bare
  /// signatures then travel through do_exchange_messages too (with no payload; the default
  /// do_exchange_signatures), so that a rank on the fused path and a peer verifying another call
  /// meet in the same messages and both see the mismatch.
  virtual std::size_t fused_capacity() const { return 0; }
  /// Sends the `bytes` at `mine` (a packed signature, then up to fused_capacity() payload bytes)
  /// to every peer and receives each peer q's message at `all + q * stride`, stride being
  /// fused_stride(); rank()'s own slot may be used as the backend's send buffer (`mine` never lies
  /// in it). Whatever a rank calls, the exchange must have the same shape on every rank (room for
  /// the largest message from each peer, or every message padded to the stride), so that ranks
  /// that disagree still complete it. Returns once every message has arrived and every send is
  /// complete; throws CommError on failure or timeout.
  virtual void do_exchange_messages(const std::byte* /*mine*/, std::size_t /*bytes*/, std::byte* /*all*/) {
    TP_THROW(CommError, "{} communicator: no message exchange for fused verification", backend());
  }
  /// The largest all_reduce (in bytes) that goes the fused way, at least fused_capacity(): its
  /// first fused_capacity() bytes travel with the signature, the rest in an all-gather
  /// (do_all_gather_v) that starts only once every signature matched, so every rank knows the
  /// sizes agree. Worth it where the backend's all_reduce takes more steps than two exchanges.
  virtual std::size_t fused_limit() const { return fused_capacity(); }
  std::size_t fused_stride() const { return detail::CallSignature::words * sizeof(std::int64_t) + fused_capacity(); }

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
      rethrow_exchange_failure(call, e);
    }
    detail::check_signatures(all, size(), rank(), backend());
  }
  /// Bare signatures as messages of do_exchange_messages (fused verification on).
  void exchange_bare_signatures(const std::int64_t* mine, std::int64_t* all) {
    constexpr std::size_t words = detail::CallSignature::words, head = words * sizeof(std::int64_t);
    const std::size_t stride = fused_stride();
    const int n = size(), me = rank();
    signature_room_.resize(stride * static_cast<std::size_t>(n));
    do_exchange_messages(reinterpret_cast<const std::byte*>(mine), head, signature_room_.data());
    for (int q = 0; q < n; ++q)
      std::memcpy(all + words * static_cast<std::size_t>(q),
                  q == me ? static_cast<const void*>(mine) : signature_room_.data() + stride * static_cast<std::size_t>(q),
                  head);
  }
  [[noreturn]] void rethrow_exchange_failure(const detail::CallSignature& call, const CommError& e) const {
    TP_THROW(CommError, "{} communicator, rank {} of {}: exchanging call signatures before {}: {}", backend(), rank(),
             size(), detail::describe(call), e.what());
  }

  /// Whether this call goes the fused way: verification on, a backend with message hooks, host
  /// buffers, a dtype the host reduces, and a payload that fits every peer's room.
  bool fuses(const detail::CallSignature& call, Stream stream) const {
    return verify_ && size() > 1 && fused_capacity() > 0 && stream == nullptr && call.dtype != DType::f16 && call.dtype != DType::bf16 &&
           call.count <= std::max(fused_capacity(), fused_limit()) / size_of(call.dtype);
  }

  /// A verified all_reduce in one round: every rank sends its signature and its input (up to
  /// fused_capacity() bytes of it) to every peer, checks every peer's signature, and only then
  /// gathers the rest of the inputs, if any, and reduces them on the host in rank order (the same
  /// result on every rank, as the backends' own all_reduce gives). Ranks that disagree throw before
  /// `recv` is written and before any further data moves; the peers' payloads (the bytes each
  /// sent, which never exceed the room for them) land in scratch memory only.
  void fused_all_reduce(const detail::CallSignature& call, const void* send, void* recv) {
    constexpr std::size_t words = detail::CallSignature::words, head = words * sizeof(std::int64_t);
    const std::size_t elem = size_of(call.dtype), stride = fused_stride();
    const std::size_t first = std::min(call.count, fused_capacity() / elem), rest = call.count - first;
    const std::size_t bytes = first * elem;
    const int n = size(), me = rank();
    scratch_.resize(stride * static_cast<std::size_t>(n) + head + bytes);
    std::byte* all = scratch_.data();
    std::byte* message = all + stride * static_cast<std::size_t>(n);
    const auto packed = call.pack();
    std::memcpy(message, packed.data(), head);
    if (bytes > 0) std::memcpy(message + head, send, bytes);
    try {
      do_exchange_messages(message, head + bytes, all);
    } catch (const CommError& e) {
      rethrow_exchange_failure(call, e);
    }
    signatures_.resize(words * static_cast<std::size_t>(n));
    sources_.resize(2 * static_cast<std::size_t>(n));
    for (int q = 0; q < n; ++q) {
      const std::byte* from = q == me ? message : all + stride * static_cast<std::size_t>(q);
      std::memcpy(signatures_.data() + words * static_cast<std::size_t>(q), from, head);
      sources_[static_cast<std::size_t>(q)] = q == me ? send : from + head;
    }
    detail::check_signatures(signatures_, n, me, backend());
    if (rest > 0) {  // every rank's count is known to be the same now
      const std::size_t rest_bytes = rest * elem;
      rest_.resize(rest_bytes * static_cast<std::size_t>(n));
      const std::vector<std::size_t> counts(static_cast<std::size_t>(n), rest);
      do_all_gather_v(static_cast<const std::byte*>(send) + bytes, rest_.data(), counts, call.dtype, nullptr);
      for (int q = 0; q < n; ++q)
        sources_[static_cast<std::size_t>(n + q)] = rest_.data() + rest_bytes * static_cast<std::size_t>(q);
    }
    detail::reduce_host(call.dtype, call.reduce, sources_.data(), n, 0, first, recv, "fused all_reduce");
    if (rest > 0)
      detail::reduce_host(call.dtype, call.reduce, sources_.data() + n, n, 0, rest, static_cast<std::byte*>(recv) + bytes,
                          "fused all_reduce");
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
  // Reused by fused_all_reduce: every rank's message, then this rank's; the signatures; the inputs
  // (their first parts, then the rest, gathered); the bare signatures' messages.
  std::vector<std::byte> scratch_, signature_room_, rest_;
  std::vector<std::int64_t> signatures_;
  std::vector<const void*> sources_;
};

/// Element offsets of each rank's block: the exclusive prefix sum of `counts`.
inline std::vector<std::size_t> displacements(std::span<const std::size_t> counts) {
  std::vector<std::size_t> displs(counts.size(), 0);
  std::exclusive_scan(counts.begin(), counts.end(), displs.begin(), std::size_t{0});
  return displs;
}

}  // namespace tp
