#pragma once
/// The CPU loops of tp/ops/cross_entropy.hpp. Sums over a vocabulary shard of 50k terms run in
/// double whatever T.

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "tp/detail/math.hpp"
#include "tp/device/cpu/cpu.hpp"

namespace tp::impl {

template <class T>
void row_max(const Cpu&, ConstView<T> logits, MatrixView<T> out) {
  for (std::int64_t t = 0; t < logits.rows; ++t)
    out(t, 0) = *std::max_element(logits.row(t), logits.row(t) + logits.cols);
}

template <class T>
void cross_entropy_stats(const Cpu&, ConstView<T> logits, ConstView<std::int64_t> targets, std::int64_t first,
                         ConstView<T> max, MatrixView<double> stats) {
  for (std::int64_t t = 0; t < logits.rows; ++t) {
    const T* x = logits.row(t);
    const T m = max(t, 0);
    double sum_exp = 0, sum_shifted = 0;
    for (std::int64_t j = 0; j < logits.cols; ++j) {
      sum_exp += static_cast<double>(std::exp(x[j] - m));
      sum_shifted += static_cast<double>(x[j] - m);
    }
    const std::int64_t j = targets.data[t] - first;
    stats(t, 0) = sum_exp;
    stats(t, 1) = j >= 0 && j < logits.cols ? static_cast<double>(x[j] - m) : 0.0;
    stats(t, 2) = sum_shifted;
  }
}

template <class T>
void cross_entropy_loss(const Cpu&, ConstView<double> stats, ConstView<std::int64_t> targets, std::int64_t vocab,
                        std::int64_t ignore_index, double smoothing, MatrixView<T> loss) {
  for (std::int64_t t = 0; t < stats.rows; ++t)
    loss(t, 0) =
        targets.data[t] == ignore_index
            ? T(0)
            : static_cast<T>(math::cross_entropy_token_loss(stats(t, 0), stats(t, 1), stats(t, 2), vocab, smoothing));
}

template <class T>
void cross_entropy_backward(const Cpu&, ConstView<T> logits, ConstView<std::int64_t> targets, std::int64_t first,
                            ConstView<T> max, ConstView<double> stats, ConstView<T> grad_loss, std::int64_t vocab,
                            std::int64_t ignore_index, double smoothing, MatrixView<T> grad_logits) {
  const double uniform = smoothing / static_cast<double>(vocab), on_target = 1 - smoothing;
  for (std::int64_t t = 0; t < logits.rows; ++t) {
    T* d = grad_logits.row(t);
    if (targets.data[t] == ignore_index) {
      std::fill_n(d, logits.cols, T(0));
      continue;
    }
    const T* x = logits.row(t);
    const T m = max(t, 0);
    const double inv_sum = 1.0 / stats(t, 0), g = grad_loss(t, 0);
    const std::int64_t target = targets.data[t] - first;
    for (std::int64_t j = 0; j < logits.cols; ++j)
      d[j] = static_cast<T>(math::cross_entropy_dlogit(g, static_cast<double>(std::exp(x[j] - m)) * inv_sum, uniform,
                                                       j == target ? on_target : 0.0));
  }
}

}  // namespace tp::impl
