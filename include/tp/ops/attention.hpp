#pragma once
/// Scaled dot-product attention on [tokens, heads * head_dim] matrices over sequences laid out by
/// tp::AttentionSequences (variable lengths, no padding; q may be shorter than k, as with a KV
/// cache), with an optional key padding mask. q has hq heads, k and v hk heads, hq a multiple of
/// hk: query head h reads kv head h / (hq / hk) (grouped-query attention). The seq_len overloads
/// take `tokens / seq_len` sequences of seq_len tokens, q, k and v on the same rows.

#include <cstdint>

#include "tp/detail/shape_checks.hpp"
#include "tp/device/device.hpp"
#include "tp/ops/attention_sequences.hpp"
#include "tp/ops/dispatch.hpp"

TP_OPS_DECLARE(attention_forward)
TP_OPS_DECLARE(attention_backward)

#ifdef TP_HAS_BLAS
#include "tp/device/cpu/attention.hpp"
#endif
#if defined(TP_HAS_CUDA) && defined(__CUDACC__)
#include "tp/device/cuda/attention.cuh"
#endif

namespace tp::ops {

/// The saved softmax statistic's element type for T (float, or double for double).
template <class T>
using AttentionStat = tp::detail::attention_stat_t<T>;

namespace detail {
template <class T>
tp::detail::AttentionGeometry attention_geometry(ConstView<T> q, ConstView<T> k, ConstView<T> v,
                                                 const AttentionSequences& seqs, std::int64_t head_dim,
                                                 std::int64_t lse_rows, std::int64_t lse_cols, std::int64_t out_rows,
                                                 std::int64_t out_cols, const char* op) {
  TP_CHECK(head_dim > 0 && q.cols % head_dim == 0 && k.cols % head_dim == 0 && v.rows == k.rows &&
               v.cols == k.cols && k.cols > 0 && q.cols > 0,
           "{}: q {}x{}, k {}x{}, v {}x{} are not whole heads of {} (k and v alike)", op, q.rows, q.cols, k.rows,
           k.cols, v.rows, v.cols, head_dim);
  const std::int64_t n = seqs.count();
  TP_CHECK(static_cast<std::int64_t>(seqs.q_length.size()) == n && static_cast<std::int64_t>(seqs.k_begin.size()) == n &&
               static_cast<std::int64_t>(seqs.k_length.size()) == n,
           "{}: sequences give {} q offsets, {} q lengths, {} k offsets, {} k lengths", op, n, seqs.q_length.size(),
           seqs.k_begin.size(), seqs.k_length.size());
  for (std::int64_t s = 0; s < n; ++s) {
    TP_CHECK(seqs.q_begin[s] >= 0 && seqs.q_length[s] >= 0 && seqs.q_begin[s] + seqs.q_length[s] <= q.rows,
             "{}: sequence {} has queries [{}, {} + {}) outside q's {} rows", op, s, seqs.q_begin[s], seqs.q_begin[s],
             seqs.q_length[s], q.rows);
    TP_CHECK(seqs.k_begin[s] >= 0 && seqs.k_length[s] >= 0 && seqs.k_begin[s] + seqs.k_length[s] <= k.rows,
             "{}: sequence {} has keys [{}, {} + {}) outside k's {} rows", op, s, seqs.k_begin[s], seqs.k_begin[s],
             seqs.k_length[s], k.rows);
  }
  TP_CHECK(seqs.key_mask.empty() || static_cast<std::int64_t>(seqs.key_mask.size()) == k.rows,
           "{}: key mask has {} entries for {} keys", op, seqs.key_mask.size(), k.rows);
  const std::int64_t hq = q.cols / head_dim, hk = k.cols / head_dim;
  TP_CHECK(hq % hk == 0, "{}: {} query heads cannot share {} kv heads", op, hq, hk);
  TP_CHECK(lse_rows == hq && lse_cols == q.rows && out_rows == q.rows && out_cols == q.cols,
           "{}: lse {}x{} (expected {}x{}: heads x tokens), out {}x{} (expected {}x{})", op, lse_rows, lse_cols, hq,
           q.rows, out_rows, out_cols, q.rows, q.cols);
  return {n, hq, hk, hq / hk};
}

inline AttentionSequences uniform_sequences(std::int64_t tokens, std::int64_t k_rows, std::int64_t seq_len,
                                            const char* op) {
  TP_CHECK(seq_len > 0 && tokens % seq_len == 0 && k_rows == tokens,
           "{}: q has {} tokens and k {}: not the same whole sequences of {} tokens", op, tokens, k_rows, seq_len);
  return AttentionSequences::uniform(tokens / seq_len, seq_len);
}
}  // namespace detail

/// out = softmax(scale q k^T + mask) v per sequence and head, scale = 1 / sqrt(head_dim); the mask
/// hides keys after the query (causal, aligned to the end of the keys) and keys whose key_mask
/// byte is 0. Saves for backward only the log-sum-exp of each query's scaled scores, lse [hq,
/// q.rows] (row h, column = the query's row in q; +inf for a query that sees no key), not the
/// probabilities: backward rebuilds them from q, k and lse (flash attention's scheme; the CPU
/// works in tiles and never holds a head's whole score matrix). Rows of q in no sequence are left
/// as they are in out.
template <class T, Device D>
void attention_forward(const D& dev, In<T> q, In<T> k, In<T> v, const AttentionSequences& seqs,
                       std::int64_t head_dim, bool causal, MatrixView<AttentionStat<T>> lse, MatrixView<T> out) {
  const auto g = detail::attention_geometry<T>(q, k, v, seqs, head_dim, lse.rows, lse.cols, out.rows, out.cols,
                                               "attention_forward");
  if (g.batch == 0) return;
  TP_OPS_DISPATCH(attention_forward, dev, g, q, k, v, seqs, head_dim, causal, lse, out);
}

/// Gradients of attention_forward: dq, dk, dv (same shapes as q, k, v; dk and dv summed over the
/// query heads of each group; zero on rows in no sequence) from dout, forward's `out` and its
/// saved `lse`; `seqs` and `causal` as forward.
template <class T, Device D>
void attention_backward(const D& dev, In<T> q, In<T> k, In<T> v, In<T> out, ConstView<AttentionStat<T>> lse,
                        In<T> dout, const AttentionSequences& seqs, std::int64_t head_dim, bool causal,
                        MatrixView<T> dq, MatrixView<T> dk, MatrixView<T> dv) {
  const auto g = detail::attention_geometry<T>(q, k, v, seqs, head_dim, lse.rows, lse.cols, dout.rows, dout.cols,
                                               "attention_backward");
  tp::detail::check_same_shape<T>(q, out, "attention_backward out");
  tp::detail::check_same_shape<T>(q, dq, "attention_backward dq");
  tp::detail::check_same_shape<T>(k, dk, "attention_backward dk");
  tp::detail::check_same_shape<T>(v, dv, "attention_backward dv");
  TP_OPS_DISPATCH(attention_backward, dev, g, q, k, v, out, lse, dout, seqs, head_dim, causal, dq, dk, dv);
}

/// tokens / seq_len sequences of seq_len tokens each (q, k and v on the same rows).
template <class T, Device D>
void attention_forward(const D& dev, In<T> q, In<T> k, In<T> v, std::int64_t seq_len, std::int64_t head_dim,
                       bool causal, MatrixView<AttentionStat<T>> lse, MatrixView<T> out) {
  attention_forward<T>(dev, q, k, v, detail::uniform_sequences(q.rows, k.rows, seq_len, "attention_forward"),
                       head_dim, causal, lse, out);
}

template <class T, Device D>
void attention_backward(const D& dev, In<T> q, In<T> k, In<T> v, In<T> out, ConstView<AttentionStat<T>> lse,
                        In<T> dout, std::int64_t seq_len, std::int64_t head_dim, bool causal, MatrixView<T> dq,
                        MatrixView<T> dk, MatrixView<T> dv) {
  attention_backward<T>(dev, q, k, v, out, lse, dout,
                        detail::uniform_sequences(q.rows, k.rows, seq_len, "attention_backward"), head_dim, causal,
                        dq, dk, dv);
}

}  // namespace tp::ops
