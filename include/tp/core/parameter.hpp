#pragma once
/// A parameter as a rank holds it: its shard and gradient, plus where the shard sits in the full
/// (unsharded) tensor, which is what checkpoints, initializers and optimizers need to know.

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "tp/core/partition.hpp"
#include "tp/core/rng.hpp"
#include "tp/core/tensor.hpp"

namespace tp {

template <class T>
struct Parameter {
  std::string name;  ///< e.g. "mlp.fc1.weight"
  MatrixView<T> value;
  MatrixView<T> grad;
  std::int64_t full_rows = 0, full_cols = 0;  ///< shape of the unsharded tensor
  Range rows, cols;                           ///< the block of it this rank holds
  /// Which copy of this block the rank holds when several ranks hold the same block (GQA kv heads
  /// replicated over world / kv_heads ranks). Global reductions such as gradient norms count copy
  /// 0 only, so the result does not depend on the TP degree.
  int copy = 0;
  /// Whether AdamW's weight decay applies: true for weight matrices and embeddings, false for
  /// biases and norm weights (Megatron's rule). Set by the layer that owns the parameter, never
  /// guessed from the shape: a [1, in] weight (one output feature) is a matrix all the same.
  bool weight_decay = true;

  bool sharded() const { return rows.size() != full_rows || cols.size() != full_cols; }
};

/// Copies this rank's block of a full host tensor into the parameter.
template <class T, class Device>
void load_from_full(const Device& device, const Parameter<T>& p, ConstView<T> full) {
  TP_CHECK(full.rows == p.full_rows && full.cols == p.full_cols, "{}: full tensor is {}x{}, the layer expects {}x{}",
           p.name, full.rows, full.cols, p.full_rows, p.full_cols);
  device.from_host(full.block(p.rows.begin, p.cols.begin, p.rows.size(), p.cols.size()), p.value);
}

/// Copies a host shard, as saved by the rank that held it, into the parameter.
template <class T, class Device>
void load_shard(const Device& device, const Parameter<T>& p, ConstView<T> shard) {
  TP_CHECK(shard.rows == p.value.rows && shard.cols == p.value.cols,
           "{}: shard is {}x{}, but this rank holds rows [{}, {}) and columns [{}, {}) of the {}x{} tensor ({}x{}); "
           "was it saved at another world size?",
           p.name, shard.rows, shard.cols, p.rows.begin, p.rows.end, p.cols.begin, p.cols.end, p.full_rows,
           p.full_cols, p.value.rows, p.value.cols);
  device.from_host(shard, p.value);
}

namespace detail {
/// Generates this rank's block of the full tensor on the host, element by element from its global
/// index, then copies it to the device: `value(rng, index)` sees only (seed, name, index), never
/// the world size, so the gathered tensor is bitwise the same at every TP degree.
template <class T, class Device, class F>
void init_from_index(const Device& device, const Parameter<T>& p, std::uint64_t seed, F value) {
  TP_CHECK(p.value.rows == p.rows.size() && p.value.cols == p.cols.size(),
           "{}: the shard is {}x{}, but rows [{}, {}) and columns [{}, {}) were declared", p.name, p.value.rows,
           p.value.cols, p.rows.begin, p.rows.end, p.cols.begin, p.cols.end);
  TP_CHECK(p.rows.begin >= 0 && p.cols.begin >= 0 && p.rows.end <= p.full_rows && p.cols.end <= p.full_cols,
           "{}: block rows [{}, {}) x columns [{}, {}) is outside the {}x{} tensor", p.name, p.rows.begin, p.rows.end,
           p.cols.begin, p.cols.end, p.full_rows, p.full_cols);
  const Philox rng(seed, name_key(p.name));
  std::vector<T> host(static_cast<std::size_t>(p.value.size()));
  for (std::int64_t r = 0; r < p.rows.size(); ++r)
    for (std::int64_t c = 0; c < p.cols.size(); ++c) {
      const auto index = static_cast<std::uint64_t>((p.rows.begin + r) * p.full_cols + p.cols.begin + c);
      host[r * p.cols.size() + c] = static_cast<T>(value(rng, index));
    }
  device.from_host(ConstView<T>(host.data(), p.rows.size(), p.cols.size()), p.value);
}
}  // namespace detail

/// Fills the parameter with uniform(-bound, bound) values keyed by (seed, name, index in the full
/// tensor): the same full tensor whatever the world size.
template <class T, class Device>
void init_uniform(const Device& device, const Parameter<T>& p, std::uint64_t seed, double bound) {
  TP_CHECK(std::isfinite(bound) && bound >= 0.0, "{}: init_uniform needs a finite, non-negative bound, got {}", p.name,
           bound);
  detail::init_from_index(device, p, seed,
                          [&](const Philox& rng, std::uint64_t i) { return (2.0 * rng.uniform(i) - 1.0) * bound; });
}

/// Fills the parameter with normal(mean, std) values keyed like init_uniform: Megatron's
/// init_method_normal (std 0.02 for GPT), but independent of the TP degree. Megatron draws the
/// full master weight on every rank and slices it; this draws only the shard.
template <class T, class Device>
void init_normal(const Device& device, const Parameter<T>& p, std::uint64_t seed, double std = 0.02,
                 double mean = 0.0) {
  TP_CHECK(std::isfinite(std) && std >= 0.0 && std::isfinite(mean),
           "{}: init_normal needs a finite, non-negative std and a finite mean, got std {} and mean {}", p.name, std,
           mean);
  detail::init_from_index(device, p, seed,
                          [&](const Philox& rng, std::uint64_t i) { return mean + std * double(rng.normal(i)); });
}

/// Megatron's scaled_init_method_normal for output projections: std / sqrt(2 * layers).
inline double scaled_init_std(double std, std::int64_t num_layers) {
  TP_CHECK(num_layers > 0, "scaled_init_std: num_layers must be positive, got {}", num_layers);
  TP_CHECK(std::isfinite(std) && std >= 0.0, "scaled_init_std: std must be finite and non-negative, got {}", std);
  return std / std::sqrt(2.0 * static_cast<double>(num_layers));
}

}  // namespace tp
