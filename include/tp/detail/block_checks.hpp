#pragma once
/// Shape checks of the transformer-block members that every device policy offers (tp::Cpu,
/// tp::Cuda), written once so that both devices reject bad shapes with the same messages.

#include <cstdint>

#include "tp/core/error.hpp"
#include "tp/core/tensor.hpp"

namespace tp::detail {

template <class T>
void check_swiglu(ConstView<T> gate_up, std::int64_t rows, std::int64_t cols, const char* op) {
  TP_CHECK(gate_up.rows == rows && gate_up.cols == 2 * cols, "{}: gate_up is {}x{}, expected {}x{} for {}x{}", op,
           gate_up.rows, gate_up.cols, rows, 2 * cols, rows, cols);
}
inline void check_ids(ConstView<std::int64_t> ids, std::int64_t tokens, const char* op) {
  TP_CHECK(ids.contiguous() && ids.size() == tokens, "{}: {}x{} ids (ld {}) for {} tokens; ids must be contiguous", op,
           ids.rows, ids.cols, ids.ld, tokens);
}
template <class T>
void check_ce(ConstView<T> logits, ConstView<std::int64_t> targets, ConstView<T> max, ConstView<double> stats,
              const char* op) {
  check_ids(targets, logits.rows, op);
  TP_CHECK(max.rows == logits.rows && max.cols == 1 && stats.rows == logits.rows && stats.cols == 3,
           "{}: logits {}x{}, max {}x{}, stats {}x{}", op, logits.rows, logits.cols, max.rows, max.cols, stats.rows,
           stats.cols);
}
struct AttentionGeometry {
  std::int64_t batch, hq, hk, group;
};
template <class T>
AttentionGeometry attention_geometry(ConstView<T> q, ConstView<T> k, ConstView<T> v, std::int64_t seq_len,
                                     std::int64_t head_dim, std::int64_t probs_rows, std::int64_t probs_cols,
                                     std::int64_t out_rows, std::int64_t out_cols, const char* op) {
  TP_CHECK(seq_len > 0 && head_dim > 0 && q.rows % seq_len == 0 && q.cols % head_dim == 0 && k.cols % head_dim == 0 &&
               k.rows == q.rows && v.rows == q.rows && v.cols == k.cols && k.cols > 0,
           "{}: q {}x{}, k {}x{}, v {}x{} do not hold whole sequences of {} tokens and heads of {}", op, q.rows, q.cols,
           k.rows, k.cols, v.rows, v.cols, seq_len, head_dim);
  const AttentionGeometry g{q.rows / seq_len, q.cols / head_dim, k.cols / head_dim, 0};
  TP_CHECK(g.hq % g.hk == 0, "{}: {} query heads cannot share {} kv heads", op, g.hq, g.hk);
  TP_CHECK(probs_rows == g.batch * g.hq * seq_len && probs_cols == seq_len && out_rows == q.rows && out_cols == q.cols,
           "{}: probs {}x{} (expected {}x{}), out {}x{} (expected {}x{})", op, probs_rows, probs_cols,
           g.batch * g.hq * seq_len, seq_len, out_rows, out_cols, q.rows, q.cols);
  return {g.batch, g.hq, g.hk, g.hq / g.hk};
}

}  // namespace tp::detail
