#pragma once
/// Choosing the next token from vocabulary-parallel logits: greedy, or temperature / top-k / top-p
/// sampling with a seed, every rank returning the same token.
///
/// Each rank holds the logits of its slice of the vocabulary (what ParallelLMHead or a
/// ColumnParallelLinear LM head gives, never gathered in training). Only what the choice needs
/// crosses the ranks: each rank's best logit for greedy, its best top_k for top-k sampling, the
/// whole row only when sampling over the full vocabulary. Every rank then runs the same arithmetic
/// on the same gathered candidates, sorted by (logit descending, id ascending), so all ranks pick
/// the same token, and the token depends only on the logits, the options and (seed, step, row):
/// never on the TP degree or on how the vocabulary is split.
///
/// The rules, in Hugging Face's order: temperature 0 (or top_k 1) is greedy, the argmax with ties
/// to the lowest id. Otherwise the candidates are the top_k largest logits (0: all), their
/// probabilities softmax(logit / temperature), top_p keeps the smallest prefix of them (most
/// probable first) whose probability reaches top_p (at least one token), and a uniform draw keyed
/// by (seed, step, row) picks one of those by the renormalised probabilities.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "tp/core/context.hpp"
#include "tp/core/error.hpp"
#include "tp/core/partition.hpp"
#include "tp/core/rng.hpp"
#include "tp/core/tensor.hpp"

namespace tp {

struct SamplingOptions {
  /// 0: greedy (argmax). Otherwise logits are divided by it before the softmax.
  double temperature = 0;
  /// Sample among the top_k largest logits only; 0: no limit, 1: greedy.
  std::int64_t top_k = 0;
  /// Nucleus sampling: the smallest set of most probable tokens whose probability reaches top_p;
  /// in (0, 1], 1: no limit.
  double top_p = 1;
  /// With the step and the row, decides the uniform draw (sampling_uniform).
  std::uint64_t seed = 0;
};

/// Throws InvalidArgument naming the bad value: temperature negative or not finite, top_k
/// negative, top_p outside (0, 1].
inline void check_sampling_options(const SamplingOptions& o) {
  TP_CHECK(std::isfinite(o.temperature) && o.temperature >= 0,
           "sampling: temperature must be finite and >= 0 (0: greedy), got {}", o.temperature);
  TP_CHECK(o.top_k >= 0, "sampling: top_k must be >= 0 (0: no limit), got {}", o.top_k);
  TP_CHECK(o.top_p > 0 && o.top_p <= 1, "sampling: top_p must be in (0, 1] (1: no limit), got {}", o.top_p);
}

/// Whether the options choose the argmax (no random draw).
inline bool is_greedy(const SamplingOptions& o) { return o.temperature == 0 || o.top_k == 1; }

/// The uniform draw in [0, 1) (53 bits) that picks the token of `row` at `step`: a Philox counter
/// keyed by (seed, step, row), so a generation repeats exactly and rows draw independently.
inline double sampling_uniform(std::uint64_t seed, std::uint64_t step, std::int64_t row) {
  const Philox rng(seed, name_key("tp.sample") + static_cast<std::uint64_t>(row));
  const Philox::Block b = rng(step);
  const std::uint64_t bits = (std::uint64_t{b[0] >> 5} << 26) | (b[1] >> 6);
  return static_cast<double>(bits) * 0x1p-53;
}

namespace detail {

/// One token of a row as sampling sees it.
struct TokenLogit {
  double logit;
  std::int64_t id;
};

/// The order of candidates: larger logit first, ties to the lower id; NaN before everything, so
/// that a NaN anywhere in a row reaches every rank's candidates and is reported there.
inline bool ranks_before(const TokenLogit& a, const TokenLogit& b) {
  const bool na = std::isnan(a.logit), nb = std::isnan(b.logit);
  if (na != nb) return na;
  if (!na && a.logit != b.logit) return a.logit > b.logit;
  return a.id < b.id;
}

/// A host element of any logit type as double. The CUDA 16-bit types convert to float only
/// unambiguously, float and double directly.
template <class T>
double logit_value(T v) {
  if constexpr (std::is_floating_point_v<T>)
    return static_cast<double>(v);
  else
    return static_cast<double>(static_cast<float>(v));
}

/// all_gather_v of host values on any device: device communicators (NCCL, LocalCommunicator over
/// device memory) move device buffers only, so the values are staged through the device there.
template <class U, class Device>
void gather_host_values(const Context<Device>& ctx, std::span<const U> send, std::span<U> recv,
                        std::span<const std::size_t> counts) {
  if constexpr (Device::on_host) {
    ctx.comm->all_gather_v(send, recv, counts);
  } else {
    Tensor<U, Device> s(ctx.device, 1, std::max<std::int64_t>(1, static_cast<std::int64_t>(send.size())));
    Tensor<U, Device> r(ctx.device, 1, std::max<std::int64_t>(1, static_cast<std::int64_t>(recv.size())));
    if (!send.empty())
      ctx.device->from_host(ConstView<U>(send.data(), 1, static_cast<std::int64_t>(send.size())),
                            s.view().cols_range(0, static_cast<std::int64_t>(send.size())));
    ctx.comm->all_gather_v(s.data(), r.data(), counts, dtype_of<U>, ctx.stream());
    if (!recv.empty())
      ctx.device->to_host(ConstView<U>(r.view().cols_range(0, static_cast<std::int64_t>(recv.size()))),
                          MatrixView<U>(recv.data(), 1, static_cast<std::int64_t>(recv.size())));
  }
}

/// The token chosen among a row's candidates (every token that can be chosen, in any order; more
/// than top_k allowed). `u` is the row's uniform draw.
inline std::int64_t choose_token(std::vector<TokenLogit>& c, const SamplingOptions& o, double u, std::int64_t row) {
  TP_CHECK(!c.empty(), "sampling: row {} has no candidates", row);
  const bool greedy = is_greedy(o);
  if (greedy) {
    const auto best = std::min_element(c.begin(), c.end(), ranks_before);
    TP_CHECK(!std::isnan(best->logit), "sampling: row {} has a NaN logit (token {})", row, best->id);
    return best->id;
  }
  std::sort(c.begin(), c.end(), ranks_before);
  if (o.top_k > 0 && static_cast<std::int64_t>(c.size()) > o.top_k) c.resize(static_cast<std::size_t>(o.top_k));
  const double top = c.front().logit;
  TP_CHECK(!std::isnan(top), "sampling: row {} has a NaN logit (token {})", row, c.front().id);
  TP_CHECK(std::isfinite(top), "sampling: row {} has a logit of {} (token {}): no distribution to sample", row, top,
           c.front().id);
  // Unnormalised probabilities, most probable first (the largest is exp(0) = 1), and the top-p cut.
  std::vector<double> p(c.size());
  double total = 0;
  for (std::size_t i = 0; i < c.size(); ++i) total += p[i] = std::exp((c[i].logit - top) / o.temperature);
  std::size_t kept = c.size();
  double kept_total = total;
  if (o.top_p < 1) {
    double cum = 0;
    for (std::size_t i = 0; i < c.size(); ++i) {
      cum += p[i];
      if (cum >= o.top_p * total) {
        kept = i + 1;
        kept_total = cum;
        break;
      }
    }
  }
  // Inverse CDF over the kept tokens; a draw past the last cumulative sum (rounding) takes the last
  // token with a non-zero probability.
  const double target = u * kept_total;
  double cum = 0;
  std::size_t last = 0;
  for (std::size_t i = 0; i < kept; ++i) {
    if (p[i] <= 0) continue;
    cum += p[i];
    last = i;
    if (target < cum) return c[i].id;
  }
  return c[last].id;
}

}  // namespace detail

/// The next token of every row of `logits_shard` ([rows, vocab_range.size()], this rank's slice of
/// the vocabulary, in device memory), the same on every rank. `vocab_range` is this rank's slice:
/// the slices of the ranks, in rank order, tile [0, vocab), or every rank holds all of it
/// (a replicated head: nothing is exchanged). `step` (with the seed and the row) keys the draw:
/// pass the position or the generation step, so that each token gets a fresh one. Collective over
/// the context's communicator.
template <class T, class Device>
std::vector<std::int64_t> sample(const Context<Device>& ctx, ConstView<T> logits_shard, Range vocab_range,
                                 std::int64_t vocab, const SamplingOptions& options, std::uint64_t step) {
  check_sampling_options(options);
  TP_CHECK(vocab > 0 && vocab_range.begin >= 0 && vocab_range.begin <= vocab_range.end && vocab_range.end <= vocab,
           "sampling: vocabulary range [{}, {}) of rank {} is not inside the vocabulary of {}", vocab_range.begin,
           vocab_range.end, ctx.rank(), vocab);
  TP_CHECK(logits_shard.cols == vocab_range.size(),
           "sampling: rank {} has logits of {} columns for its vocabulary range [{}, {}) of {} ids", ctx.rank(),
           logits_shard.cols, vocab_range.begin, vocab_range.end, vocab_range.size());
  const std::int64_t rows = logits_shard.rows;
  const int world = ctx.world();

  // Every rank's row count and range, so that all ranks check the split together (and all throw
  // alike) and know how many candidates each sends.
  std::vector<std::int64_t> header{rows, vocab_range.begin, vocab_range.end};
  std::vector<std::int64_t> headers(header);
  if (world > 1) {
    headers.resize(3 * static_cast<std::size_t>(world));
    const std::vector<std::size_t> counts(static_cast<std::size_t>(world), 3);
    detail::gather_host_values<std::int64_t>(ctx, header, headers, counts);
  }
  bool replicated = true, tiled = true;
  for (int r = 0; r < world; ++r) {
    const std::int64_t* h = &headers[3 * static_cast<std::size_t>(r)];
    TP_CHECK(h[0] == rows, "sampling: rank {} has {} rows of logits, rank {} has {}", r, h[0], ctx.rank(), rows);
    replicated = replicated && h[1] == 0 && h[2] == vocab;
    tiled = tiled && h[1] == (r == 0 ? 0 : headers[3 * static_cast<std::size_t>(r) - 1]) && h[2] >= h[1];
  }
  tiled = tiled && headers[3 * static_cast<std::size_t>(world) - 1] == vocab;
  if (!tiled && !replicated) {
    std::string ranges;
    for (int r = 0; r < world; ++r)
      ranges += fmt::format("{}[{}, {})", r ? ", " : "", headers[3 * static_cast<std::size_t>(r) + 1],
                            headers[3 * static_cast<std::size_t>(r) + 2]);
    TP_THROW(InvalidArgument,
             "sampling: the ranks' vocabulary ranges {} neither tile [0, {}) in rank order nor each cover all of it",
             ranges, vocab);
  }
  const bool exchange = world > 1 && !replicated;

  // How many candidates a rank contributes per row: 1 for greedy, top_k for top-k, all otherwise.
  const std::int64_t wanted = is_greedy(options) ? 1 : options.top_k > 0 ? std::min(options.top_k, vocab) : vocab;
  auto contributed = [&](std::int64_t shard) { return std::min(wanted, shard); };

  std::vector<T> host(static_cast<std::size_t>(rows * vocab_range.size()));
  ctx.device->to_host(logits_shard, MatrixView<T>(host.data(), rows, vocab_range.size()));
  const std::int64_t mine = contributed(vocab_range.size());
  // This rank's candidates, [rows][mine] pairs (logit, id) flattened into doubles for the exchange
  // (ids up to 2^53 are exact).
  std::vector<double> send(static_cast<std::size_t>(2 * rows * mine));
  std::vector<detail::TokenLogit> row_tokens(static_cast<std::size_t>(mine == 1 ? 1 : vocab_range.size()));
  for (std::int64_t i = 0; i < rows; ++i) {
    const T* row = host.data() + i * vocab_range.size();
    if (mine == 1 && vocab_range.size() > 1) {
      // Greedy: the first candidate in one scan, without the array of pairs (a decoded token's
      // sampling spent most of its time building and partitioning it).
      detail::TokenLogit best{detail::logit_value(row[0]), vocab_range.begin};
      for (std::int64_t j = 1; j < vocab_range.size(); ++j) {
        const detail::TokenLogit t{detail::logit_value(row[j]), vocab_range.begin + j};
        if (detail::ranks_before(t, best)) best = t;
      }
      row_tokens[0] = best;
    } else {
      for (std::int64_t j = 0; j < vocab_range.size(); ++j) row_tokens[j] = {detail::logit_value(row[j]), vocab_range.begin + j};
      if (mine < vocab_range.size())
        std::nth_element(row_tokens.begin(), row_tokens.begin() + (mine - 1), row_tokens.end(), detail::ranks_before);
    }
    for (std::int64_t j = 0; j < mine; ++j) {
      send[static_cast<std::size_t>(2 * (i * mine + j))] = row_tokens[j].logit;
      send[static_cast<std::size_t>(2 * (i * mine + j) + 1)] = static_cast<double>(row_tokens[j].id);
    }
  }

  std::vector<std::size_t> counts;  // doubles per rank
  std::vector<double> all;
  if (exchange) {
    std::size_t total = 0;
    for (int r = 0; r < world; ++r) {
      const std::int64_t* h = &headers[3 * static_cast<std::size_t>(r)];
      counts.push_back(static_cast<std::size_t>(2 * rows * contributed(h[2] - h[1])));
      total += counts.back();
    }
    all.resize(total);
    detail::gather_host_values<double>(ctx, send, all, counts);
  } else {
    counts.push_back(send.size());
    all = std::move(send);
  }

  std::vector<std::int64_t> tokens(static_cast<std::size_t>(rows));
  std::vector<detail::TokenLogit> candidates;
  for (std::int64_t i = 0; i < rows; ++i) {
    candidates.clear();
    std::size_t offset = 0;
    for (const std::size_t count : counts) {
      const std::size_t per_row = count / static_cast<std::size_t>(2 * std::max<std::int64_t>(rows, 1));
      const double* block = all.data() + offset + 2 * static_cast<std::size_t>(i) * per_row;
      for (std::size_t j = 0; j < per_row; ++j)
        candidates.push_back({block[2 * j], static_cast<std::int64_t>(block[2 * j + 1])});
      offset += count;
    }
    tokens[static_cast<std::size_t>(i)] =
        detail::choose_token(candidates, options, is_greedy(options) ? 0.0 : sampling_uniform(options.seed, step, i), i);
  }
  return tokens;
}

}  // namespace tp
