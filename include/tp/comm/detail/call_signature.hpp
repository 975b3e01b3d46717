#pragma once
/// What one rank asked of a collective, packed into a few integers that ranks exchange before any
/// data moves (Communicator's collective verification). Ranks that call different collectives, or
/// the same one with other sizes, element types, roots or reductions, would otherwise hang, abort
/// inside the backend or return garbage; comparing signatures turns that into one CommError that
/// every rank throws, naming the ranks and each call.

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tp/core/dtype.hpp"
#include "tp/core/error.hpp"

namespace tp {

/// The collectives a Communicator runs, as its public entry points name them.
enum class Collective : std::uint8_t { all_reduce, all_gather, all_gather_v, reduce_scatter, reduce_scatter_v,
                                       broadcast, barrier, split };

constexpr std::string_view name(Collective c) {
  switch (c) {
    case Collective::all_reduce: return "all_reduce";
    case Collective::all_gather: return "all_gather";
    case Collective::all_gather_v: return "all_gather_v";
    case Collective::reduce_scatter: return "reduce_scatter";
    case Collective::reduce_scatter_v: return "reduce_scatter_v";
    case Collective::broadcast: return "broadcast";
    case Collective::barrier: return "barrier";
    case Collective::split: return "split";
  }
  return "unknown";
}

namespace detail {

/// One rank's call. Fields a collective does not use stay zero, so they always compare equal.
struct CallSignature {
  Collective op = Collective::barrier;
  DType dtype = DType::u8;
  ReduceOp reduce = ReduceOp::sum;
  std::int64_t root = 0;
  /// Elements per rank (even forms, broadcast) or in all (the _v forms).
  std::uint64_t count = 0;
  /// FNV-1a of the per-rank counts of the _v forms: every rank must pass the same counts.
  std::uint64_t counts_hash = 0;
  /// The asynchronous form (all_reduce_async, ...). MPI does not match a non-blocking collective
  /// with a blocking one, so a rank that calls one while its peers call the other is refused.
  bool async = false;

  static constexpr std::size_t words = 4;
  /// Marks a packed signature, so that a peer that sent something else (verification off on that
  /// rank) is reported as such rather than as a strange call.
  static constexpr std::int64_t magic = 0x7470'5349'47 << 16;  // "tpSIG"

  std::array<std::int64_t, words> pack() const {
    return {magic | static_cast<std::int64_t>(async) << 15 | static_cast<std::int64_t>(op) << 8 |
                static_cast<std::int64_t>(dtype) << 4 | static_cast<std::int64_t>(reduce),
            root, static_cast<std::int64_t>(count), static_cast<std::int64_t>(counts_hash)};
  }
  static bool valid(std::span<const std::int64_t, words> w) { return (w[0] & ~std::int64_t{0xffff}) == magic; }
  static CallSignature unpack(std::span<const std::int64_t, words> w) {
    CallSignature s;
    s.op = static_cast<Collective>((w[0] >> 8) & 0x7f);
    s.async = (w[0] >> 15) & 1;
    s.dtype = static_cast<DType>((w[0] >> 4) & 0xf);
    s.reduce = static_cast<ReduceOp>(w[0] & 0xf);
    s.root = w[1];
    s.count = static_cast<std::uint64_t>(w[2]);
    s.counts_hash = static_cast<std::uint64_t>(w[3]);
    return s;
  }
};

inline std::uint64_t hash_counts(std::span<const std::size_t> counts) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (std::size_t c : counts) {
    h ^= static_cast<std::uint64_t>(c);
    h *= 0x100000001b3ull;
  }
  return h;
}

/// "all_reduce(1000 x float32, sum)", "reduce_scatter_v_async(10 x float64 in all, counts
/// #..., sum)", "broadcast(129 x int64, root 2)", "barrier()".
inline std::string describe(const CallSignature& s) {
  if (s.async) {
    CallSignature blocking = s;
    blocking.async = false;
    std::string text = describe(blocking);
    return text.insert(text.find('('), "_async");
  }
  switch (s.op) {
    case Collective::all_reduce:
    case Collective::reduce_scatter:
      return fmt::format("{}({} x {}, {})", name(s.op), s.count, name(s.dtype), name(s.reduce));
    case Collective::reduce_scatter_v:
      return fmt::format("{}({} x {} in all, counts #{:016x}, {})", name(s.op), s.count, name(s.dtype), s.counts_hash,
                         name(s.reduce));
    case Collective::all_gather: return fmt::format("{}({} x {})", name(s.op), s.count, name(s.dtype));
    case Collective::all_gather_v:
      return fmt::format("{}({} x {} in all, counts #{:016x})", name(s.op), s.count, name(s.dtype), s.counts_hash);
    case Collective::broadcast:
      return fmt::format("{}({} x {}, root {})", name(s.op), s.count, name(s.dtype), s.root);
    case Collective::barrier:
    case Collective::split: return fmt::format("{}()", name(s.op));
  }
  return "unknown()";
}

/// Throws CommError unless every rank's packed signature in `all` (rank order) is the same. The
/// message is the same on every rank but for `rank`: it lists each distinct call with the ranks
/// that made it.
inline void check_signatures(std::span<const std::int64_t> all, int size, int rank, std::string_view backend) {
  constexpr std::size_t w = CallSignature::words;
  const auto at = [&](int r) { return std::span<const std::int64_t, w>(all.data() + static_cast<std::size_t>(r) * w, w); };
  bool same = true;
  for (int r = 1; r < size && same; ++r) same = std::equal(at(r).begin(), at(r).end(), at(0).begin());
  if (same && CallSignature::valid(at(0))) return;
  // Distinct calls in order of their first rank, with every rank that made each.
  std::vector<int> first;
  std::vector<std::vector<int>> ranks;
  for (int r = 0; r < size; ++r) {
    std::size_t k = 0;
    while (k < first.size() && !std::equal(at(r).begin(), at(r).end(), at(first[k]).begin())) ++k;
    if (k == first.size()) first.push_back(r), ranks.emplace_back();
    ranks[k].push_back(r);
  }
  std::string calls;
  for (std::size_t k = 0; k < first.size(); ++k) {
    const auto words = at(first[k]);
    const std::string call = CallSignature::valid(words)
                                 ? describe(CallSignature::unpack(words))
                                 : std::string("something without a call signature (verification off there?)");
    calls += fmt::format("{}{} {} called {}", k == 0 ? "" : "; ", ranks[k].size() == 1 ? "rank" : "ranks",
                         ranks[k].size() == 1 ? fmt::format("{}", ranks[k][0]) : fmt::format("{}", ranks[k]), call);
  }
  TP_THROW(CommError, "{} communicator, rank {} of {}: ranks disagree on the collective: {}; the caller's buffers are untouched",
           backend,
           rank, size, calls);
}

}  // namespace detail
}  // namespace tp
