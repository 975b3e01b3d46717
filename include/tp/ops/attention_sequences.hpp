#pragma once
/// Where attention's sequences sit in its q and k/v matrices: sequence s's queries are rows
/// [q_begin[s], q_begin[s] + q_length[s]) of q, its keys and values rows [k_begin[s], k_begin[s] +
/// k_length[s]) of k and v. Queries attend only to their own sequence's keys. Packed variable-length
/// batches have q and k on the same rows (`packed`); a KV cache has q holding the new tokens and k
/// the cache's rows (k_length >= q_length: causal masking is then aligned to the end, so that query
/// i of n sees keys 0 .. k_length - n + i, as flash-attention does).

#include <cstdint>
#include <vector>

namespace tp {

struct AttentionSequences {
  std::vector<std::int64_t> q_begin, q_length, k_begin, k_length;
  /// Empty, or one byte per row of k (host memory): 0 = no query attends to that key. A query that
  /// sees no key at all gets a zero output (and zero gradients), not NaN.
  std::vector<std::uint8_t> key_mask;

  std::int64_t count() const { return static_cast<std::int64_t>(q_begin.size()); }

  /// Sequences of the given lengths stacked in order, q and k on the same rows.
  static AttentionSequences packed(const std::vector<std::int64_t>& lengths) {
    AttentionSequences s;
    std::int64_t begin = 0;
    for (const std::int64_t n : lengths) {
      s.q_begin.push_back(begin);
      s.q_length.push_back(n);
      begin += n;
    }
    s.k_begin = s.q_begin;
    s.k_length = s.q_length;
    return s;
  }
  /// `batch` sequences of seq_len tokens.
  static AttentionSequences uniform(std::int64_t batch, std::int64_t seq_len) {
    return packed(std::vector<std::int64_t>(static_cast<std::size_t>(batch), seq_len));
  }
};

}  // namespace tp
