#pragma once
/// The CUDA side of tp/ops/attention.hpp, one sequence at a time: per sequence, cuBLASLt GEMMs for
/// the scores and the output (strided-batched over the kv heads, one call per query head of a
/// group), with a single softmax kernel over all heads between them. The probabilities live in
/// scratch for the call only: forward saves their log-sum-exp and backward rebuilds them from the
/// recomputed scores (not tiled here: the scratch is heads * q_length * k_length of the longest
/// sequence for the duration of one call). The key mask is copied to the device once per call.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "tp/detail/math.hpp"
#include "tp/detail/shape_checks.hpp"
#include "tp/device/cuda/block_reduce.cuh"
#include "tp/device/cuda/cuda.hpp"
#include "tp/device/cuda/launch.cuh"
#include "tp/ops/attention_sequences.hpp"

namespace tp::kernels {

/// One sequence's place in the probabilities: row r = h nq + i holds query i of head h against
/// its nk keys; keys are visible up to i + nk - nq when causal, and where mask (null: none, else
/// this sequence's bytes) is nonzero. Query i's log-sum-exp is lse[h lse_ld + q0 + i].
struct AttentionRows {
  std::int64_t nq, nk, q0;
  bool causal;
  const std::uint8_t* mask;

  __device__ std::int64_t visible(std::int64_t r) const {
    if (!causal) return nk;
    const std::int64_t v = r % nq + nk - nq + 1;
    return v < 0 ? 0 : (v > nk ? nk : v);
  }
  __device__ bool seen(std::int64_t j, std::int64_t visible) const { return j < visible && (!mask || mask[j]); }
  template <class S>
  __device__ S& lse_at(S* lse, std::int64_t lse_ld, std::int64_t r) const {
    return lse[r / nq * lse_ld + q0 + r % nq];
  }
};

/// In place on the scaled scores: each row becomes softmax over the keys it sees, zeros elsewhere,
/// and its log-sum-exp goes to lse (+inf, and a zero row, when it sees none); one block per row.
/// The sum is in double, as on the CPU; the exponentials are recomputed rather than stored
/// rounded, so 16-bit probabilities are rounded once.
template <class T, class S>
__global__ void attention_softmax(T* probs, std::int64_t ld, std::int64_t rows, AttentionRows g, S* lse,
                                  std::int64_t lse_ld) {
  using A = accum_t<T>;
  __shared__ A scratch[kRowThreads];
  __shared__ double wide[kRowThreads];
  TP_BLOCK_PER_ROW(r, rows) {
    T* row = probs + r * ld;
    const std::int64_t visible = g.visible(r);
    A m = -INFINITY;
    TP_THREAD_PER_COL(j, visible) {
      const A v = load(row[j]);
      if (g.seen(j, visible) && m < v) m = v;
    }
    m = block_max(m, scratch);
    double sum = 0;
    if (m != -INFINITY)
      TP_THREAD_PER_COL(j, visible) if (g.seen(j, visible)) sum += static_cast<double>(exp(load(row[j]) - m));
    const double total = block_sum(sum, wide);
    const A inv = total > 0 ? static_cast<A>(1.0 / total) : A(0);
    TP_THREAD_PER_COL(j, g.nk) row[j] = store<T>(g.seen(j, visible) && total > 0 ? exp(load(row[j]) - m) * inv : A(0));
    if (threadIdx.x == 0)
      g.lse_at(lse, lse_ld, r) = total > 0 ? static_cast<S>(static_cast<double>(m) + ::log(total)) : static_cast<S>(INFINITY);
  }
}

/// In place on recomputed scaled scores: p = exp(s - lse) where the row sees the key, zeros elsewhere
/// (everywhere for lse = +inf, a row that saw no key).
template <class T, class S>
__global__ void attention_probs_from_lse(T* probs, std::int64_t ld, std::int64_t rows, AttentionRows g, const S* lse,
                                         std::int64_t lse_ld) {
  using A = accum_t<T>;
  TP_BLOCK_PER_ROW(r, rows) {
    T* row = probs + r * ld;
    const S l_stat = g.lse_at(lse, lse_ld, r);
    const std::int64_t visible = isinf(static_cast<double>(l_stat)) ? 0 : g.visible(r);
    const A l = static_cast<A>(l_stat);
    TP_THREAD_PER_COL(j, g.nk) row[j] = store<T>(g.seen(j, visible) ? exp(load(row[j]) - l) : A(0));
  }
}

/// ds = p (dp - rowsum(p dp)) scale in place on dp, one block per row; rowsum in double.
template <class T>
__global__ void attention_softmax_backward(const T* probs, std::int64_t ldp, T* ds, std::int64_t ldd, std::int64_t rows,
                                           std::int64_t cols, accum_t<T> scale) {
  using A = accum_t<T>;
  __shared__ double wide[kRowThreads];
  TP_BLOCK_PER_ROW(r, rows) {
    const T* p = probs + r * ldp;
    T* d = ds + r * ldd;
    double dot = 0;
    TP_THREAD_PER_COL(j, cols) dot += static_cast<double>(load(p[j])) * static_cast<double>(load(d[j]));
    const A row_dot = static_cast<A>(block_sum(dot, wide));
    TP_THREAD_PER_COL(j, cols) d[j] = store<T>(load(p[j]) * (load(d[j]) - row_dot) * scale);
  }
}

}  // namespace tp::kernels

namespace tp::impl {

namespace attention_detail {

/// The key mask on the device (null without one), for the call.
struct DeviceKeyMask {
  DeviceKeyMask(const Cuda& dev, const AttentionSequences& seqs)
      : scratch(dev, std::max<std::int64_t>(1, static_cast<std::int64_t>(seqs.key_mask.size()))) {
    if (seqs.key_mask.empty()) return;
    const auto n = static_cast<std::int64_t>(seqs.key_mask.size());
    dev.from_host<std::uint8_t>(ConstView<std::uint8_t>(seqs.key_mask.data(), 1, n),
                                MatrixView<std::uint8_t>(scratch.data, 1, n));
  }
  const std::uint8_t* at(const AttentionSequences& seqs, std::int64_t k0) const {
    return seqs.key_mask.empty() ? nullptr : scratch.data + k0;
  }
  Cuda::Scratch<std::uint8_t> scratch;
};

/// The largest hq * nq * nk over the sequences: the probabilities' scratch.
inline std::int64_t largest_scores(const detail::AttentionGeometry& g, const AttentionSequences& seqs) {
  std::int64_t most = 1;
  for (std::int64_t s = 0; s < g.batch; ++s) most = std::max(most, g.hq * seqs.q_length[s] * seqs.k_length[s]);
  return most;
}

/// For each query head gi of a group, one GEMM strided-batched over the kv heads: query head
/// kv group + gi is group * head_dim columns after the previous one in q, kv head kv is head_dim
/// columns after the previous one in k, and the rows of head h start at h nq in the scores.
struct HeadBatch {
  std::int32_t kv_heads;
  std::int64_t group, head_dim, nq, scores_ld;
  std::int64_t q_step() const { return group * head_dim; }
  std::int64_t kv_step() const { return head_dim; }
  std::int64_t scores_step() const { return group * nq * scores_ld; }
};

}  // namespace attention_detail

template <class T>
void attention_forward(const Cuda& dev, const detail::AttentionGeometry& g, ConstView<T> q, ConstView<T> k,
                       ConstView<T> v, const AttentionSequences& seqs, std::int64_t head_dim, bool causal,
                       MatrixView<detail::attention_stat_t<T>> lse, MatrixView<T> out) {
  using namespace attention_detail;
  using S = detail::attention_stat_t<T>;
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  const Cuda::Scratch<T> scratch(dev, largest_scores(g, seqs));
  const DeviceKeyMask mask(dev, seqs);
  for (std::int64_t s = 0; s < g.batch; ++s) {
    const std::int64_t nq = seqs.q_length[s], nk = seqs.k_length[s], q0 = seqs.q_begin[s], k0 = seqs.k_begin[s];
    if (nq == 0) continue;
    if (nk == 0) {  // no key: zero output, lse = +inf
      dev.fill<T>(out.rows_range(q0, nq), T(0));
      dev.fill<S>(lse.cols_range(q0, nq), std::numeric_limits<S>::infinity());
      continue;
    }
    const MatrixView<T> probs(scratch.data, g.hq * nq, nk);
    const HeadBatch hb{static_cast<std::int32_t>(g.hk), g.group, head_dim, nq, probs.ld};
    for (std::int64_t gi = 0; gi < g.group; ++gi)
      dev.gemm_batched<T>(Op::n, Op::t, scale, q.block(q0, gi * head_dim, nq, head_dim), k.block(k0, 0, nk, head_dim),
                          0.0, probs.rows_range(gi * nq, nq),
                          {hb.kv_heads, hb.q_step(), hb.kv_step(), hb.scores_step()});
    const kernels::AttentionRows rows{nq, nk, q0, causal, mask.at(seqs, k0)};
    kernels::launch(dev, "attention_softmax", probs.rows, probs.cols, kernels::row_grid(probs.rows),
                    kernels::kRowThreads, &kernels::attention_softmax<T, S>, probs.data, probs.ld, probs.rows, rows,
                    lse.data, lse.ld);
    for (std::int64_t gi = 0; gi < g.group; ++gi)
      dev.gemm_batched<T>(Op::n, Op::n, 1.0, ConstView<T>(probs.rows_range(gi * nq, nq)), v.block(k0, 0, nk, head_dim),
                          0.0, out.block(q0, gi * head_dim, nq, head_dim),
                          {hb.kv_heads, hb.scores_step(), hb.kv_step(), hb.q_step()});
  }
}

/// The probabilities of one sequence are rebuilt for every head at once (scores GEMMs, then one
/// kernel), and every head's score gradient is held at once, so one kernel does the softmax
/// backward of all heads. `out` is not needed: the kernel takes rowsum(p dp) from the rebuilt
/// probabilities. dk and dv add up the query heads of each group: those GEMMs accumulate (beta 1).
template <class T>
void attention_backward(const Cuda& dev, const detail::AttentionGeometry& g, ConstView<T> q, ConstView<T> k,
                        ConstView<T> v, ConstView<T> /*out*/, ConstView<detail::attention_stat_t<T>> lse,
                        ConstView<T> dout, const AttentionSequences& seqs, std::int64_t head_dim, bool causal,
                        MatrixView<T> dq, MatrixView<T> dk, MatrixView<T> dv) {
  using namespace attention_detail;
  using S = detail::attention_stat_t<T>;
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  dev.fill<T>(dq, T(0));
  dev.fill<T>(dk, T(0));
  dev.fill<T>(dv, T(0));
  if (g.batch == 0) return;
  const std::int64_t most = largest_scores(g, seqs);
  const Cuda::Scratch<T> scratch(dev, 2 * most);
  const DeviceKeyMask mask(dev, seqs);
  for (std::int64_t s = 0; s < g.batch; ++s) {
    const std::int64_t nq = seqs.q_length[s], nk = seqs.k_length[s], q0 = seqs.q_begin[s], k0 = seqs.k_begin[s];
    if (nq == 0 || nk == 0) continue;
    const MatrixView<T> probs(scratch.data, g.hq * nq, nk), d_scores(scratch.data + most, g.hq * nq, nk);
    const HeadBatch hb{static_cast<std::int32_t>(g.hk), g.group, head_dim, nq, probs.ld};
    for (std::int64_t gi = 0; gi < g.group; ++gi)
      dev.gemm_batched<T>(Op::n, Op::t, scale, q.block(q0, gi * head_dim, nq, head_dim), k.block(k0, 0, nk, head_dim),
                          0.0, probs.rows_range(gi * nq, nq),
                          {hb.kv_heads, hb.q_step(), hb.kv_step(), hb.scores_step()});
    const kernels::AttentionRows rows{nq, nk, q0, causal, mask.at(seqs, k0)};
    kernels::launch(dev, "attention_probs_from_lse", probs.rows, probs.cols, kernels::row_grid(probs.rows),
                    kernels::kRowThreads, &kernels::attention_probs_from_lse<T, S>, probs.data, probs.ld, probs.rows,
                    rows, lse.data, lse.ld);
    // dv += p^T do; dp = do v^T; ds = p (dp - rowsum(p dp)) scale; dq = ds k; dk += ds^T q.
    for (std::int64_t gi = 0; gi < g.group; ++gi) {
      const ConstView<T> d_o = dout.block(q0, gi * head_dim, nq, head_dim);
      dev.gemm_batched<T>(Op::t, Op::n, 1.0, ConstView<T>(probs.rows_range(gi * nq, nq)), d_o, 1.0,
                          dv.block(k0, 0, nk, head_dim), {hb.kv_heads, hb.scores_step(), hb.q_step(), hb.kv_step()});
      dev.gemm_batched<T>(Op::n, Op::t, 1.0, d_o, v.block(k0, 0, nk, head_dim), 0.0, d_scores.rows_range(gi * nq, nq),
                          {hb.kv_heads, hb.q_step(), hb.kv_step(), hb.scores_step()});
    }
    kernels::launch(dev, "attention_softmax_backward", probs.rows, probs.cols, kernels::row_grid(probs.rows),
                    kernels::kRowThreads, &kernels::attention_softmax_backward<T>, probs.data, probs.ld, d_scores.data,
                    d_scores.ld, probs.rows, nk, static_cast<kernels::accum_t<T>>(scale));
    for (std::int64_t gi = 0; gi < g.group; ++gi) {
      const ConstView<T> ds = ConstView<T>(d_scores).rows_range(gi * nq, nq);
      dev.gemm_batched<T>(Op::n, Op::n, 1.0, ds, k.block(k0, 0, nk, head_dim), 0.0,
                          dq.block(q0, gi * head_dim, nq, head_dim),
                          {hb.kv_heads, hb.scores_step(), hb.kv_step(), hb.q_step()});
      dev.gemm_batched<T>(Op::t, Op::n, 1.0, ds, q.block(q0, gi * head_dim, nq, head_dim), 1.0,
                          dk.block(k0, 0, nk, head_dim), {hb.kv_heads, hb.scores_step(), hb.q_step(), hb.kv_step()});
    }
  }
}

}  // namespace tp::impl
