#pragma once
/// Cross-entropy over a vocabulary shard: logits [tokens, vocab_r] hold columns [first, first +
/// vocab_r) of the full logits; per-token statistics are [tokens, 1] (max, exact in T) or
/// [tokens, 3] (stats, in double whatever T: log(sum_exp) of a confident token is log(1 + tiny),
/// and a sum rounded to float would carry a relative error of 1e-5 into that loss).

#include <cstdint>

#include "tp/detail/shape_checks.hpp"
#include "tp/device/device.hpp"
#include "tp/ops/dispatch.hpp"
#include "tp/ops/embedding.hpp"

TP_OPS_DECLARE(row_max)
TP_OPS_DECLARE(cross_entropy_stats)
TP_OPS_DECLARE(cross_entropy_loss)
TP_OPS_DECLARE(cross_entropy_backward)

#ifdef TP_HAS_BLAS
#include "tp/device/cpu/cross_entropy.hpp"
#endif
#if defined(TP_HAS_CUDA) && defined(__CUDACC__)
#include "tp/device/cuda/cross_entropy.cuh"
#endif

namespace tp::ops {

namespace detail {
template <class T>
void check_ce(ConstView<T> logits, ConstView<std::int64_t> targets, ConstView<T> max, ConstView<double> stats,
              const char* op) {
  check_ids(targets, logits.rows, op);
  TP_CHECK(max.rows == logits.rows && max.cols == 1 && stats.rows == logits.rows && stats.cols == 3,
           "{}: logits {}x{}, max {}x{}, stats {}x{}", op, logits.rows, logits.cols, max.rows, max.cols, stats.rows,
           stats.cols);
}
}  // namespace detail

/// out[t, 0] = max over this shard's columns of logits[t, :].
template <class T, Device D>
void row_max(const D& dev, In<T> logits, MatrixView<T> out) {
  TP_CHECK(out.rows == logits.rows && out.cols == 1 && logits.cols > 0, "row_max: logits are {}x{}, output {}x{}",
           logits.rows, logits.cols, out.rows, out.cols);
  if (logits.rows == 0) return;
  TP_OPS_DISPATCH(row_max, dev, logits, out);
}

/// This shard's partial sums, given the global row max m: stats[t] = {sum_j exp(x_tj - m_t),
/// x_t,target - m_t (0 unless the target is in this shard), sum_j (x_tj - m_t)}. Summed over ranks
/// they give every statistic the loss needs; the last is taken relative to m so that it stays
/// exact for logits of 1e4.
template <class T, Device D>
void cross_entropy_stats(const D& dev, In<T> logits, In<std::int64_t> targets, std::int64_t first, In<T> max,
                         MatrixView<double> stats) {
  detail::check_ce<T>(logits, targets, max, stats, "cross_entropy_stats");
  if (logits.rows == 0) return;
  TP_OPS_DISPATCH(cross_entropy_stats, dev, logits, targets, first, max, stats);
}

/// Per-token loss from the summed statistics: (1 - s) (lse - x_target) + s (lse - mean_j x_j);
/// zero where the target is `ignore_index`.
template <class T, Device D>
void cross_entropy_loss(const D& dev, In<double> stats, In<std::int64_t> targets, std::int64_t vocab,
                        std::int64_t ignore_index, double smoothing, MatrixView<T> loss) {
  TP_CHECK(stats.cols == 3 && loss.rows == stats.rows && loss.cols == 1 && targets.size() == stats.rows &&
               targets.contiguous(),
           "cross_entropy_loss: stats {}x{}, {} targets, loss {}x{}", stats.rows, stats.cols, targets.size(), loss.rows,
           loss.cols);
  if (stats.rows == 0) return;
  TP_OPS_DISPATCH(cross_entropy_loss, dev, stats, targets, vocab, ignore_index, smoothing, loss);
}

/// d logits[t, j] = grad_loss[t] (softmax_tj - (1 - s) [j == target] - s / vocab), zero rows where
/// the target is `ignore_index`.
template <class T, Device D>
void cross_entropy_backward(const D& dev, In<T> logits, In<std::int64_t> targets, std::int64_t first, In<T> max,
                            In<double> stats, In<T> grad_loss, std::int64_t vocab, std::int64_t ignore_index,
                            double smoothing, MatrixView<T> grad_logits) {
  detail::check_ce<T>(logits, targets, max, stats, "cross_entropy_backward");
  tp::detail::check_same_shape<T>(logits, grad_logits, "cross_entropy_backward");
  TP_CHECK(grad_loss.rows == logits.rows && grad_loss.cols == 1,
           "cross_entropy_backward: loss gradient is {}x{}, expected {}x1", grad_loss.rows, grad_loss.cols,
           logits.rows);
  if (logits.empty()) return;
  TP_OPS_DISPATCH(cross_entropy_backward, dev, logits, targets, first, max, stats, grad_loss, vocab, ignore_index,
                  smoothing, grad_logits);
}

}  // namespace tp::ops
