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

namespace detail {
template <class T>
tp::detail::AttentionGeometry attention_geometry(ConstView<T> q, ConstView<T> k, ConstView<T> v, std::int64_t seq_len,
                                                 std::int64_t head_dim, std::int64_t probs_rows,
                                                 std::int64_t probs_cols, std::int64_t out_rows, std::int64_t out_cols,
                                                 const char* op) {
  TP_CHECK(seq_len > 0 && head_dim > 0 && q.rows % seq_len == 0 && q.cols % head_dim == 0 && k.cols % head_dim == 0 &&
               k.rows == q.rows && v.rows == q.rows && v.cols == k.cols && k.cols > 0,
           "{}: q {}x{}, k {}x{}, v {}x{} do not hold whole sequences of {} tokens and heads of {}", op, q.rows, q.cols,
           k.rows, k.cols, v.rows, v.cols, seq_len, head_dim);
  const std::int64_t batch = q.rows / seq_len, hq = q.cols / head_dim, hk = k.cols / head_dim;
  TP_CHECK(hq % hk == 0, "{}: {} query heads cannot share {} kv heads", op, hq, hk);
  TP_CHECK(probs_rows == batch * hq * seq_len && probs_cols == seq_len && out_rows == q.rows && out_cols == q.cols,
           "{}: probs {}x{} (expected {}x{}), out {}x{} (expected {}x{})", op, probs_rows, probs_cols,
           batch * hq * seq_len, seq_len, out_rows, out_cols, q.rows, q.cols);
  return {batch, hq, hk, hq / hk};
}
}  // namespace detail

/// out = softmax(scale q k^T, causal mask) v per sequence and head, scale = 1 / sqrt(head_dim);
/// probs [batch * hq * seq_len, seq_len] keeps the softmax for backward, block (b, h) at rows
/// (b * hq + h) * seq_len.
template <class T, Device D>
void attention_forward(const D& dev, In<T> q, In<T> k, In<T> v, std::int64_t seq_len, std::int64_t head_dim,
                       bool causal, MatrixView<T> probs, MatrixView<T> out) {
  const auto g = detail::attention_geometry<T>(q, k, v, seq_len, head_dim, probs.rows, probs.cols, out.rows, out.cols,
                                               "attention_forward");
  if (g.batch == 0) return;
  TP_OPS_DISPATCH(attention_forward, dev, g, q, k, v, seq_len, head_dim, causal, probs, out);
}

/// Gradients of attention_forward: dq, dk, dv (same shapes as q, k, v; dk and dv summed over the
/// query heads of each group) from dout and the saved probs. `d_scores` is workspace of probs'
/// shape, for the gradient of the scores (a device may compute every head's at once).
template <class T, Device D>
void attention_backward(const D& dev, In<T> q, In<T> k, In<T> v, In<T> probs, In<T> dout, std::int64_t seq_len,
                        std::int64_t head_dim, MatrixView<T> d_scores, MatrixView<T> dq, MatrixView<T> dk,
                        MatrixView<T> dv) {
  const auto g = detail::attention_geometry<T>(q, k, v, seq_len, head_dim, probs.rows, probs.cols, dout.rows, dout.cols,
                                               "attention_backward");
  tp::detail::check_same_shape<T>(q, dq, "attention_backward dq");
  tp::detail::check_same_shape<T>(k, dk, "attention_backward dk");
  tp::detail::check_same_shape<T>(v, dv, "attention_backward dv");
  tp::detail::check_same_shape<T>(probs, d_scores, "attention_backward d_scores");
  if (g.batch == 0) return;
  TP_OPS_DISPATCH(attention_backward, dev, g, q, k, v, probs, dout, seq_len, head_dim, d_scores, dq, dk, dv);
}

}  // namespace tp::ops
