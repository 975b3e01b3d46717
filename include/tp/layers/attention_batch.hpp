#pragma once
/// How ParallelAttention's input rows form sequences: variable lengths packed without padding,
/// the position of each token for rotary embeddings, and an optional key padding mask.
///
///   tp::AttentionBatch batch{.lengths = {5, 3}};   // rows 0-4 are one sequence, 5-7 another
///   attention.forward(x, batch);

#include <cstdint>
#include <vector>

#include "tp/core/tensor.hpp"

namespace tp {

struct AttentionBatch {
  /// New tokens of each sequence, in the input's row order; their sum is the input's token count.
  std::vector<std::int64_t> lengths;
  /// Position of each token for RoPE, [1, tokens] in device memory; empty: 0, 1, ... within
  /// each sequence, continuing after what a KV cache already holds.
  ConstView<std::int64_t> positions{};
  /// Optional key padding mask, one byte per token of the input (host memory): 0 = no query
  /// attends to this key (Hugging Face's attention_mask); empty: all keys attended.
  std::vector<std::uint8_t> key_mask;

  /// `batch` sequences of seq_len tokens each.
  static AttentionBatch uniform(std::int64_t batch, std::int64_t seq_len) {
    return {std::vector<std::int64_t>(static_cast<std::size_t>(batch), seq_len), {}, {}};
  }
};

}  // namespace tp
