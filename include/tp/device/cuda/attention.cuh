#pragma once
/// The CUDA side of tp/ops/attention.hpp: one cuBLASLt GEMM per (sequence, head) for the scores
/// and one for the output, with a single softmax kernel over all heads between them. The
/// probabilities live in scratch for the call only: forward saves their log-sum-exp and backward
/// rebuilds them from the recomputed scores (not tiled here: the scratch is batch * heads *
/// seq_len^2 for the duration of one call).

#include <cmath>
#include <cstdint>

#include "tp/detail/math.hpp"
#include "tp/detail/shape_checks.hpp"
#include "tp/device/cuda/block_reduce.cuh"
#include "tp/device/cuda/cuda.hpp"
#include "tp/device/cuda/launch.cuh"

namespace tp::kernels {

/// Row r = (b hq + h) seq_len + i of the probabilities holds query i of block (b, h); its
/// log-sum-exp is lse[(b hq + h) lse_ld + i].
template <class S>
__device__ S& lse_at(S* lse, std::int64_t lse_ld, std::int64_t r, std::int64_t seq_len) {
  return lse[r / seq_len * lse_ld + r % seq_len];
}

/// In place on the scaled scores: each row i of block (b, h) (row r = (b hq + h) seq_len + i)
/// becomes softmax over its first i + 1 columns (causal) or all, zeros after, and its log-sum-exp
/// goes to lse; one block per row. The sum is in double, as on the CPU; the exponentials are
/// recomputed rather than stored rounded, so 16-bit probabilities are rounded once.
template <class T, class S>
__global__ void attention_softmax(T* probs, std::int64_t ld, std::int64_t rows, std::int64_t seq_len, bool causal,
                                  S* lse, std::int64_t lse_ld) {
  using A = accum_t<T>;
  __shared__ A scratch[kRowThreads];
  __shared__ double wide[kRowThreads];
  TP_BLOCK_PER_ROW(r, rows) {
    T* row = probs + r * ld;
    const std::int64_t visible = causal ? r % seq_len + 1 : seq_len;
    A m = load(row[0]);
    TP_THREAD_PER_COL(j, visible) {
      const A v = load(row[j]);
      if (m < v) m = v;
    }
    m = block_max(m, scratch);
    double sum = 0;
    TP_THREAD_PER_COL(j, visible) sum += static_cast<double>(exp(load(row[j]) - m));
    const double total = block_sum(sum, wide);
    const A inv = static_cast<A>(1.0 / total);
    TP_THREAD_PER_COL(j, seq_len) row[j] = store<T>(j < visible ? exp(load(row[j]) - m) * inv : A(0));
    if (threadIdx.x == 0) lse_at(lse, lse_ld, r, seq_len) = static_cast<S>(static_cast<double>(m) + ::log(total));
  }
}

/// In place on recomputed scaled scores: p = exp(s - lse) over the visible columns, zeros after.
template <class T, class S>
__global__ void attention_probs_from_lse(T* probs, std::int64_t ld, std::int64_t rows, std::int64_t seq_len,
                                         bool causal, const S* lse, std::int64_t lse_ld) {
  using A = accum_t<T>;
  TP_BLOCK_PER_ROW(r, rows) {
    T* row = probs + r * ld;
    const std::int64_t visible = causal ? r % seq_len + 1 : seq_len;
    const A l = static_cast<A>(lse_at(lse, lse_ld, r, seq_len));
    TP_THREAD_PER_COL(j, seq_len) row[j] = store<T>(j < visible ? exp(load(row[j]) - l) : A(0));
  }
}

/// ds = p (dp - rowsum(p dp)) scale in place on dp, one block per row; rowsum in double.
template <class T>
__global__ void attention_softmax_backward(const T* probs, std::int64_t ldp, T* ds, std::int64_t ldd, std::int64_t rows,
                                           std::int64_t seq_len, accum_t<T> scale) {
  using A = accum_t<T>;
  __shared__ double wide[kRowThreads];
  TP_BLOCK_PER_ROW(r, rows) {
    const T* p = probs + r * ldp;
    T* d = ds + r * ldd;
    double dot = 0;
    TP_THREAD_PER_COL(j, seq_len) dot += static_cast<double>(load(p[j])) * static_cast<double>(load(d[j]));
    const A row_dot = static_cast<A>(block_sum(dot, wide));
    TP_THREAD_PER_COL(j, seq_len) d[j] = store<T>(load(p[j]) * (load(d[j]) - row_dot) * scale);
  }
}

}  // namespace tp::kernels

namespace tp::impl {

/// Every GEMM below runs once per head, batched over the sequences (strided-batched cuBLASLt: the
/// sequences of one head sit at a fixed row stride in q, k, v, probs and out), so a pass costs
/// 2 x heads GEMM calls instead of 2 x sequences x heads. With grouped-query attention head h
/// reads kv head h / group, still at a fixed stride.
template <class T>
void attention_forward(const Cuda& dev, const detail::AttentionGeometry& g, ConstView<T> q, ConstView<T> k,
                       ConstView<T> v, std::int64_t seq_len, std::int64_t head_dim, bool causal,
                       MatrixView<detail::attention_stat_t<T>> lse, MatrixView<T> out) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  const std::int64_t rows = g.batch * g.hq * seq_len;
  const Cuda::Scratch<T> scratch(dev, rows * seq_len);
  const MatrixView<T> probs(scratch.data, rows, seq_len);
  const auto seqs = static_cast<std::int32_t>(g.batch);
  const std::int64_t probs_stride = g.hq * seq_len * probs.ld;
  for (std::int64_t h = 0; h < g.hq; ++h) {
    const std::int64_t kv = h / g.group;
    dev.gemm_batched<T>(Op::n, Op::t, scale, q.block(0, h * head_dim, seq_len, head_dim),
                        k.block(0, kv * head_dim, seq_len, head_dim), 0.0, probs.rows_range(h * seq_len, seq_len),
                        {seqs, seq_len * q.ld, seq_len * k.ld, probs_stride});
  }
  kernels::launch(dev, "attention_softmax", probs.rows, probs.cols, kernels::row_grid(probs.rows), kernels::kRowThreads,
                  &kernels::attention_softmax<T, detail::attention_stat_t<T>>, probs.data, probs.ld, probs.rows,
                  seq_len, causal, lse.data, lse.ld);
  for (std::int64_t h = 0; h < g.hq; ++h) {
    const std::int64_t kv = h / g.group;
    dev.gemm_batched<T>(Op::n, Op::n, 1.0, ConstView<T>(probs.rows_range(h * seq_len, seq_len)),
                        v.block(0, kv * head_dim, seq_len, head_dim), 0.0, out.block(0, h * head_dim, seq_len, head_dim),
                        {seqs, probs_stride, seq_len * v.ld, seq_len * out.ld});
  }
}

/// The probabilities are rebuilt for every head at once (scores GEMMs, then one kernel), and every
/// head's score gradient is held at once, so one kernel does the softmax backward of all heads.
/// `out` is not needed: the kernel takes rowsum(p dp) from the rebuilt probabilities. dk and dv add
/// up the query heads of each group: those GEMMs accumulate (beta 1), one head after the other.
template <class T>
void attention_backward(const Cuda& dev, const detail::AttentionGeometry& g, ConstView<T> q, ConstView<T> k,
                        ConstView<T> v, ConstView<T> /*out*/, ConstView<detail::attention_stat_t<T>> lse,
                        ConstView<T> dout, std::int64_t seq_len, std::int64_t head_dim, bool causal, MatrixView<T> dq,
                        MatrixView<T> dk, MatrixView<T> dv) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  const std::int64_t rows = g.batch * g.hq * seq_len;
  const Cuda::Scratch<T> scratch(dev, 2 * rows * seq_len);
  const MatrixView<T> probs(scratch.data, rows, seq_len), d_scores(scratch.data + rows * seq_len, rows, seq_len);
  dev.fill<T>(dk, T(0));
  dev.fill<T>(dv, T(0));
  const auto seqs = static_cast<std::int32_t>(g.batch);
  const std::int64_t probs_stride = g.hq * seq_len * probs.ld, ds_stride = g.hq * seq_len * d_scores.ld;
  for (std::int64_t h = 0; h < g.hq; ++h) {
    const std::int64_t kv = h / g.group;
    dev.gemm_batched<T>(Op::n, Op::t, scale, q.block(0, h * head_dim, seq_len, head_dim),
                        k.block(0, kv * head_dim, seq_len, head_dim), 0.0, probs.rows_range(h * seq_len, seq_len),
                        {seqs, seq_len * q.ld, seq_len * k.ld, probs_stride});
  }
  kernels::launch(dev, "attention_probs_from_lse", probs.rows, probs.cols, kernels::row_grid(probs.rows),
                  kernels::kRowThreads, &kernels::attention_probs_from_lse<T, detail::attention_stat_t<T>>,
                  probs.data, probs.ld, probs.rows, seq_len, causal, lse.data, lse.ld);
  // dv += p^T do; dp = do v^T; ds = p (dp - rowsum(p dp)) scale; dq = ds k; dk += ds^T q.
  for (std::int64_t h = 0; h < g.hq; ++h) {
    const std::int64_t kv = h / g.group;
    const ConstView<T> d_o = dout.block(0, h * head_dim, seq_len, head_dim);
    dev.gemm_batched<T>(Op::t, Op::n, 1.0, ConstView<T>(probs.rows_range(h * seq_len, seq_len)), d_o, 1.0,
                        dv.block(0, kv * head_dim, seq_len, head_dim),
                        {seqs, probs_stride, seq_len * dout.ld, seq_len * dv.ld});
    dev.gemm_batched<T>(Op::n, Op::t, 1.0, d_o, v.block(0, kv * head_dim, seq_len, head_dim), 0.0,
                        d_scores.rows_range(h * seq_len, seq_len), {seqs, seq_len * dout.ld, seq_len * v.ld, ds_stride});
  }
  kernels::launch(dev, "attention_softmax_backward", probs.rows, probs.cols, kernels::row_grid(probs.rows),
                  kernels::kRowThreads, &kernels::attention_softmax_backward<T>, probs.data, probs.ld, d_scores.data,
                  d_scores.ld, probs.rows, seq_len, static_cast<kernels::accum_t<T>>(scale));
  for (std::int64_t h = 0; h < g.hq; ++h) {
    const std::int64_t kv = h / g.group;
    const ConstView<T> ds = ConstView<T>(d_scores).rows_range(h * seq_len, seq_len);
    dev.gemm_batched<T>(Op::n, Op::n, 1.0, ds, k.block(0, kv * head_dim, seq_len, head_dim), 0.0,
                        dq.block(0, h * head_dim, seq_len, head_dim), {seqs, ds_stride, seq_len * k.ld, seq_len * dq.ld});
    dev.gemm_batched<T>(Op::t, Op::n, 1.0, ds, q.block(0, h * head_dim, seq_len, head_dim), 1.0,
                        dk.block(0, kv * head_dim, seq_len, head_dim), {seqs, ds_stride, seq_len * q.ld, seq_len * dk.ld});
  }
}

}  // namespace tp::impl
