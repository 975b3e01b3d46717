#pragma once
/// The unsharded sampling rules over one full row of logits, written plainly (sort every id,
/// normalise, cut, invert the CDF) to check tp::sample's sharded candidate exchange against.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

namespace tp::ref {

/// The tokens that survive temperature, top-k and top-p, most probable first, with their
/// renormalised probabilities (sorted ids, softmax, cut, divided by what is kept).
struct Candidates {
  std::vector<std::int64_t> ids;
  std::vector<double> probs;
};

inline Candidates candidates(const std::vector<double>& logits, double temperature, std::int64_t top_k, double top_p) {
  const auto vocab = static_cast<std::int64_t>(logits.size());
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
  order.resize(kept);
  p.resize(kept);
  for (double& v : p) v /= before;
  return {order, p};
}

/// The token `tp::sample` must return for a row of `logits` (the full vocabulary) given the
/// options and the row's uniform draw `u` (tp::sampling_uniform).
inline std::int64_t sample_row(const std::vector<double>& logits, double temperature, std::int64_t top_k, double top_p,
                               double u) {
  if (temperature == 0 || top_k == 1) {
    std::int64_t best = 0;
    for (std::size_t i = 1; i < logits.size(); ++i)
      if (logits[i] > logits[best]) best = static_cast<std::int64_t>(i);  // strict: ties keep the lower id
    return best;
  }
  const Candidates c = candidates(logits, temperature, top_k, top_p);
  double cum = 0;
  for (std::size_t i = 0; i < c.ids.size(); ++i) {
    cum += c.probs[i];
    if (u < cum) return c.ids[i];
  }
  return c.ids.back();
}

/// The probability of each id under the options (what frequencies of many draws approach).
inline std::vector<double> sampling_distribution(const std::vector<double>& logits, double temperature, std::int64_t top_k,
                                                 double top_p) {
  std::vector<double> dist(logits.size(), 0.0);
  const Candidates c = candidates(logits, temperature, top_k, top_p);
  for (std::size_t i = 0; i < c.ids.size(); ++i) dist[static_cast<std::size_t>(c.ids[i])] = c.probs[i];
  return dist;
}

}  // namespace tp::ref
