#pragma once
/// The CUDA side of tp/ops/cross_entropy.hpp: one block per row for the row statistics, sums in
/// double in a fixed tree order (no atomics), so results are bitwise reproducible.

#include <cmath>
#include <cstdint>

#include "tp/detail/math.hpp"
#include "tp/detail/shape_checks.hpp"
#include "tp/device/cuda/block_reduce.cuh"
#include "tp/device/cuda/cuda.hpp"
#include "tp/device/cuda/launch.cuh"

namespace tp::kernels {

/// out[t] = max_j logits[t, j]; one block per row. The max of stored values is exact in T.
template <class T>
__global__ void row_max(const T* logits, std::int64_t ld, Shape2 s, T* out, std::int64_t ldo) {
  using A = accum_t<T>;
  __shared__ A scratch[kRowThreads];
  TP_BLOCK_PER_ROW(t, s.rows) {
    const T* x = logits + t * ld;
    A m = load(x[0]);
    TP_THREAD_PER_COL(j, s.cols) {
      const A v = load(x[j]);
      if (m < v) m = v;
    }
    m = block_max(m, scratch);
    if (threadIdx.x == 0) out[t * ldo] = store<T>(m);
  }
}

/// stats[t] = {sum_j exp(x_tj - m_t), x_t,target - m_t (0 unless the target is in this shard),
/// sum_j (x_tj - m_t)}, the sums in double; one block per row.
template <class T>
__global__ void cross_entropy_stats(const T* logits, std::int64_t ld, Shape2 s, const std::int64_t* targets,
                                    std::int64_t first, const T* max, std::int64_t ldm, double* stats,
                                    std::int64_t lds) {
  using A = accum_t<T>;
  __shared__ double scratch[kRowThreads];
  TP_BLOCK_PER_ROW(t, s.rows) {
    const T* x = logits + t * ld;
    const A m = load(max[t * ldm]);
    double sum_exp = 0, sum_shifted = 0;
    TP_THREAD_PER_COL(j, s.cols) {
      const A shifted = load(x[j]) - m;
      sum_exp += static_cast<double>(exp(shifted));
      sum_shifted += static_cast<double>(shifted);
    }
    sum_exp = block_sum(sum_exp, scratch);
    sum_shifted = block_sum(sum_shifted, scratch);
    if (threadIdx.x == 0) {
      const std::int64_t j = targets[t] - first;
      stats[t * lds + 0] = sum_exp;
      stats[t * lds + 1] = j >= 0 && j < s.cols ? static_cast<double>(load(x[j]) - m) : 0.0;
      stats[t * lds + 2] = sum_shifted;
    }
  }
}

template <class T>
__global__ void cross_entropy_loss(const double* stats, std::int64_t lds, const std::int64_t* targets,
                                   std::int64_t tokens, std::int64_t vocab, std::int64_t ignore_index, double smoothing,
                                   T* loss, std::int64_t ldl) {
  TP_GRID_STRIDE(t, tokens) {
    if (targets[t] == ignore_index) {
      loss[t * ldl] = store_double<T>(0.0);
      continue;
    }
    loss[t * ldl] = store_double<T>(
        math::cross_entropy_token_loss(stats[t * lds], stats[t * lds + 1], stats[t * lds + 2], vocab, smoothing));
  }
}

template <class T>
__global__ void cross_entropy_backward(const T* logits, std::int64_t ld, Shape2 s, const std::int64_t* targets,
                                       std::int64_t first, const T* max, std::int64_t ldm, const double* stats,
                                       std::int64_t lds, const T* grad_loss, std::int64_t ldgl, std::int64_t vocab,
                                       std::int64_t ignore_index, double smoothing, T* grad, std::int64_t ldg) {
  const double uniform = smoothing / static_cast<double>(vocab), on_target = 1 - smoothing;
  TP_GRID_STRIDE(i, s.rows * s.cols) {
    const std::int64_t t = i / s.cols, j = i % s.cols;
    if (targets[t] == ignore_index) {
      grad[t * ldg + j] = store_double<T>(0.0);
      continue;
    }
    const double p = static_cast<double>(exp(load(logits[t * ld + j]) - load(max[t * ldm]))) / stats[t * lds];
    const double g = static_cast<double>(load(grad_loss[t * ldgl]));
    grad[t * ldg + j] =
        store_double<T>(math::cross_entropy_dlogit(g, p, uniform, j == targets[t] - first ? on_target : 0.0));
  }
}

}  // namespace tp::kernels

namespace tp::impl {

template <class T>
void row_max(const Cuda& dev, ConstView<T> logits, MatrixView<T> out) {
  kernels::launch(dev, "row_max", logits.rows, logits.cols, kernels::row_grid(logits.rows), kernels::kRowThreads,
                  &kernels::row_max<T>, logits.data, logits.ld, kernels::Shape2{logits.rows, logits.cols}, out.data,
                  out.ld);
}

template <class T>
void cross_entropy_stats(const Cuda& dev, ConstView<T> logits, ConstView<std::int64_t> targets, std::int64_t first,
                         ConstView<T> max, MatrixView<double> stats) {
  kernels::launch(dev, "cross_entropy_stats", logits.rows, logits.cols, kernels::row_grid(logits.rows),
                  kernels::kRowThreads, &kernels::cross_entropy_stats<T>, logits.data, logits.ld,
                  kernels::Shape2{logits.rows, logits.cols}, targets.data, first, max.data, max.ld, stats.data,
                  stats.ld);
}

template <class T>
void cross_entropy_loss(const Cuda& dev, ConstView<double> stats, ConstView<std::int64_t> targets, std::int64_t vocab,
                        std::int64_t ignore_index, double smoothing, MatrixView<T> loss) {
  kernels::launch(dev, "cross_entropy_loss", stats.rows, stats.cols, kernels::grid_for(stats.rows), kernels::kThreads,
                  &kernels::cross_entropy_loss<T>, stats.data, stats.ld, targets.data, stats.rows, vocab, ignore_index,
                  smoothing, loss.data, loss.ld);
}

template <class T>
void cross_entropy_backward(const Cuda& dev, ConstView<T> logits, ConstView<std::int64_t> targets, std::int64_t first,
                            ConstView<T> max, ConstView<double> stats, ConstView<T> grad_loss, std::int64_t vocab,
                            std::int64_t ignore_index, double smoothing, MatrixView<T> grad_logits) {
  kernels::launch(dev, "cross_entropy_backward", logits.rows, logits.cols, kernels::grid_for(logits.size()),
                  kernels::kThreads, &kernels::cross_entropy_backward<T>, logits.data, logits.ld,
                  kernels::Shape2{logits.rows, logits.cols}, targets.data, first, max.data, max.ld, stats.data,
                  stats.ld, grad_loss.data, grad_loss.ld, vocab, ignore_index, smoothing, grad_logits.data,
                  grad_logits.ld);
}

}  // namespace tp::impl
