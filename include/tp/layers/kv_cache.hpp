#pragma once
/// The keys and values a ParallelAttention has seen, for incremental decoding: ParallelAttention::
/// make_cache(batch, max_len) builds one, and forward(x, batch, cache) appends each sequence's new
/// tokens after what the cache holds and attends to all of it. Sharded like the layer's weights:
/// each rank holds the (already rotated) keys and the values of its own kv heads only.

#include <algorithm>
#include <cstdint>
#include <vector>

#include "tp/core/context.hpp"
#include "tp/core/error.hpp"
#include "tp/core/tensor.hpp"

namespace tp {

template <class T, class Device>
class ParallelAttention;

template <class T, class Device = Cpu>
class KvCache {
 public:
  KvCache() = default;

  /// Tokens cached for sequence b.
  std::int64_t length(std::int64_t b) const {
    TP_CHECK(b >= 0 && b < batch(), "KvCache: sequence {} of a cache for {}", b, batch());
    return lengths_[static_cast<std::size_t>(b)];
  }
  std::int64_t batch() const { return static_cast<std::int64_t>(lengths_.size()); }
  std::int64_t max_len() const { return max_len_; }
  /// Forgets every sequence (the memory stays).
  void reset() {
    std::fill(lengths_.begin(), lengths_.end(), 0);
    std::fill(mask_.begin(), mask_.end(), std::uint8_t{1});
  }

 private:
  friend class ParallelAttention<T, Device>;

  KvCache(const Context<Device>& ctx, std::int64_t batch, std::int64_t max_len, std::int64_t kv_width,
          std::uint64_t owner)
      : keys_(ctx.device, batch * max_len, kv_width),
        values_(ctx.device, batch * max_len, kv_width),
        lengths_(static_cast<std::size_t>(batch), 0),
        mask_(static_cast<std::size_t>(batch * max_len), std::uint8_t{1}),
        max_len_(max_len),
        owner_(owner) {}

  /// Sequence b's rows are [b max_len, b max_len + length(b)) of keys_ and values_ ([batch max_len,
  /// kv heads of this rank * head_dim]); mask_ holds each cached token's key-mask byte.
  Tensor<T, Device> keys_, values_;
  std::vector<std::int64_t> lengths_;
  std::vector<std::uint8_t> mask_;
  std::int64_t max_len_ = 0;
  std::uint64_t owner_ = 0;  // the id of the layer that made it
};

}  // namespace tp
