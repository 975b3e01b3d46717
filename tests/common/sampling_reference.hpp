#pragma once
/// The unsharded sampling rules over one full row of logits, written plainly (sort every id,
/// normalise, cut, invert the CDF) to check tp::sample's sharded candidate exchange against.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

namespace tp::ref {

/// The token `tp::sample` must return for a row of `logits` (the full vocabulary) given the
/// options and the row's uniform draw `u` (tp::sampling_uniform).
inline std::int64_t sample_row(const std::vector<double>& logits, double temperature, std::int64_t top_k, double top_p,
                               double u) {
  const auto vocab = static_cast<std::int64_t>(logits.size());
  if (temperature == 0 || top_k == 1) {
    std::int64_t best = 0;
    for (std::int64_t i = 1; i < vocab; ++i)
      if (logits[i] > logits[best]) best = i;  // strict: ties keep the lower id
    return best;
  }
  std::vector<std::int64_t> order(static_cast<std::size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) { return logits[a] > logits[b]; });
  if (top_k > 0 && top_k < vocab) order.resize(static_cast<std::size_t>(top_k));
  std::vector<double> p(order.size());
  double sum = 0;
  for (std::size_t i = 0; i < order.size(); ++i) sum += p[i] = std::exp((logits[order[i]] - logits[order[0]]) / temperature);
  for (double& v : p) v /= sum;
  // Nucleus: a token stays when the probability of the tokens before it is still below top_p.
  std::size_t kept = 0;
  double before = 0;
  while (kept < p.size() && (kept == 0 || before < top_p)) before += p[kept++];
  double kept_sum = 0;
  for (std::size_t i = 0; i < kept; ++i) kept_sum += p[i];
  double cum = 0;
  for (std::size_t i = 0; i < kept; ++i) {
    cum += p[i] / kept_sum;
    if (u < cum) return order[i];
  }
  return order[kept - 1];
}

/// The probability of each id under the options (what frequencies of many draws approach).
inline std::vector<double> sampling_distribution(const std::vector<double>& logits, double temperature, std::int64_t top_k,
                                                 double top_p) {
  const auto vocab = static_cast<std::int64_t>(logits.size());
  std::vector<double> dist(static_cast<std::size_t>(vocab), 0.0);
  std::vector<std::int64_t> order(static_cast<std::size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) { return logits[a] > logits[b]; });
  if (top_k > 0 && top_k < vocab) order.resize(static_cast<std::size_t>(top_k));
  std::vector<double> p(order.size());
  double sum = 0;
  for (std::size_t i = 0; i < order.size(); ++i) sum += p[i] = std::exp((logits[order[i]] - logits[order[0]]) / temperature);
  for (double& v : p) v /= sum;
  std::size_t kept = 0;
  double before = 0;
  while (kept < p.size() && (kept == 0 || before < top_p)) before += p[kept++];
  for (std::size_t i = 0; i < kept; ++i) dist[static_cast<std::size_t>(order[i])] = p[i] / before;
  return dist;
}

}  // namespace tp::ref
