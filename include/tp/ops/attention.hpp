#pragma once
/// Scaled dot-product attention on [tokens, heads * head_dim] matrices, tokens = batch * seq_len
/// (sequence b is rows [b * seq_len, (b + 1) * seq_len)). q has hq heads, k and v hk heads, hq a
/// multiple of hk: query head h reads kv head h / (hq / hk) (grouped-query attention).

#include <cstdint>

#include "tp/detail/shape_checks.hpp"
#include "tp/device/device.hpp"
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
tp::detail::AttentionGeometry attention_geometry(ConstView<T> q, ConstView<T> k, ConstView<T> v, std::int64_t seq_len,
                                                 std::int64_t head_dim, std::int64_t lse_rows, std::int64_t lse_cols,
                                                 std::int64_t out_rows, std::int64_t out_cols, const char* op) {
  TP_CHECK(seq_len > 0 && head_dim > 0 && q.rows % seq_len == 0 && q.cols % head_dim == 0 && k.cols % head_dim == 0 &&
               k.rows == q.rows && v.rows == q.rows && v.cols == k.cols && k.cols > 0,
           "{}: q {}x{}, k {}x{}, v {}x{} do not hold whole sequences of {} tokens and heads of {}", op, q.rows, q.cols,
           k.rows, k.cols, v.rows, v.cols, seq_len, head_dim);
  const std::int64_t batch = q.rows / seq_len, hq = q.cols / head_dim, hk = k.cols / head_dim;
  TP_CHECK(hq % hk == 0, "{}: {} query heads cannot share {} kv heads", op, hq, hk);
  TP_CHECK(lse_rows == batch * hq && lse_cols == seq_len && out_rows == q.rows && out_cols == q.cols,
           "{}: lse {}x{} (expected {}x{}), out {}x{} (expected {}x{})", op, lse_rows, lse_cols, batch * hq, seq_len,
           out_rows, out_cols, q.rows, q.cols);
  return {batch, hq, hk, hq / hk};
}
}  // namespace detail

/// out = softmax(scale q k^T, causal mask) v per sequence and head, scale = 1 / sqrt(head_dim).
/// Saves for backward only the log-sum-exp of each query's scaled scores, lse [batch * hq,
/// seq_len] (row b * hq + h, column i), not the seq_len^2 probabilities: backward rebuilds them
/// from q, k and lse (flash attention's scheme; the CPU works in tiles and never holds a head's
/// whole score matrix).
template <class T, Device D>
void attention_forward(const D& dev, In<T> q, In<T> k, In<T> v, std::int64_t seq_len, std::int64_t head_dim,
                       bool causal, MatrixView<AttentionStat<T>> lse, MatrixView<T> out) {
  const auto g = detail::attention_geometry<T>(q, k, v, seq_len, head_dim, lse.rows, lse.cols, out.rows, out.cols,
                                               "attention_forward");
  if (g.batch == 0) return;
  TP_OPS_DISPATCH(attention_forward, dev, g, q, k, v, seq_len, head_dim, causal, lse, out);
}

/// Gradients of attention_forward: dq, dk, dv (same shapes as q, k, v; dk and dv summed over the
/// query heads of each group) from dout, forward's `out` and its saved `lse`; `causal` as forward.
template <class T, Device D>
void attention_backward(const D& dev, In<T> q, In<T> k, In<T> v, In<T> out, ConstView<AttentionStat<T>> lse,
                        In<T> dout, std::int64_t seq_len, std::int64_t head_dim, bool causal, MatrixView<T> dq,
                        MatrixView<T> dk, MatrixView<T> dv) {
  const auto g = detail::attention_geometry<T>(q, k, v, seq_len, head_dim, lse.rows, lse.cols, dout.rows, dout.cols,
                                               "attention_backward");
  tp::detail::check_same_shape<T>(q, out, "attention_backward out");
  tp::detail::check_same_shape<T>(q, dq, "attention_backward dq");
  tp::detail::check_same_shape<T>(k, dk, "attention_backward dk");
  tp::detail::check_same_shape<T>(v, dv, "attention_backward dv");
  if (g.batch == 0) return;
  TP_OPS_DISPATCH(attention_backward, dev, g, q, k, v, out, lse, dout, seq_len, head_dim, causal, dq, dk, dv);
}

}  // namespace tp::ops
