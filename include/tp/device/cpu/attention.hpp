#pragma once
/// The CPU side of tp/ops/attention.hpp: per sequence and head, two GEMMs through Cpu::gemm around
/// a softmax loop (sums in double).

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "tp/detail/shape_checks.hpp"
#include "tp/device/cpu/cpu.hpp"

namespace tp::impl {

template <class T>
void attention_forward(const Cpu& dev, const detail::AttentionGeometry& g, ConstView<T> q, ConstView<T> k,
                       ConstView<T> v, std::int64_t seq_len, std::int64_t head_dim, bool causal, MatrixView<T> probs,
                       MatrixView<T> out) {
  const T scale = T(1) / std::sqrt(static_cast<T>(head_dim));
  for (std::int64_t b = 0; b < g.batch; ++b)
    for (std::int64_t h = 0; h < g.hq; ++h) {
      const std::int64_t kv = h / g.group, r0 = b * seq_len;
      MatrixView<T> p = probs.rows_range((b * g.hq + h) * seq_len, seq_len);
      dev.gemm<T>(Op::n, Op::t, scale, q.block(r0, h * head_dim, seq_len, head_dim),
                  k.block(r0, kv * head_dim, seq_len, head_dim), T(0), p);
      for (std::int64_t i = 0; i < seq_len; ++i) {
        T* row = p.row(i);
        const std::int64_t visible = causal ? i + 1 : seq_len;
        const T m = *std::max_element(row, row + visible);
        double sum = 0;
        for (std::int64_t j = 0; j < visible; ++j) sum += static_cast<double>(row[j] = std::exp(row[j] - m));
        const T inv = static_cast<T>(1.0 / sum);
        for (std::int64_t j = 0; j < visible; ++j) row[j] *= inv;
        std::fill(row + visible, row + seq_len, T(0));
      }
      dev.gemm<T>(Op::n, Op::n, T(1), ConstView<T>(p), v.block(r0, kv * head_dim, seq_len, head_dim), T(0),
                  out.block(r0, h * head_dim, seq_len, head_dim));
    }
}

template <class T>
void attention_backward(const Cpu& dev, const detail::AttentionGeometry& g, ConstView<T> q, ConstView<T> k,
                        ConstView<T> v, ConstView<T> probs, ConstView<T> dout, std::int64_t seq_len,
                        std::int64_t head_dim, MatrixView<T> d_scores, MatrixView<T> dq, MatrixView<T> dk,
                        MatrixView<T> dv) {
  const T scale = T(1) / std::sqrt(static_cast<T>(head_dim));
  dev.fill<T>(dk, T(0));
  dev.fill<T>(dv, T(0));
  for (std::int64_t b = 0; b < g.batch; ++b)
    for (std::int64_t h = 0; h < g.hq; ++h) {
      const std::int64_t kv = h / g.group, r0 = b * seq_len;
      const ConstView<T> p = probs.rows_range((b * g.hq + h) * seq_len, seq_len);
      const ConstView<T> d_o = dout.block(r0, h * head_dim, seq_len, head_dim);
      const MatrixView<T> scratch = d_scores.rows_range((b * g.hq + h) * seq_len, seq_len);
      // dv += p^T do; dp = do v^T; ds = p (dp - rowsum(p dp)) scale; dq = ds k; dk += ds^T q.
      dev.gemm<T>(Op::t, Op::n, T(1), p, d_o, T(1), dv.block(r0, kv * head_dim, seq_len, head_dim));
      dev.gemm<T>(Op::n, Op::t, T(1), d_o, v.block(r0, kv * head_dim, seq_len, head_dim), T(0), scratch);
      for (std::int64_t i = 0; i < seq_len; ++i) {
        const T* pr = p.row(i);
        T* ds = scratch.row(i);
        double wide = 0;
        for (std::int64_t j = 0; j < seq_len; ++j) wide += static_cast<double>(pr[j]) * static_cast<double>(ds[j]);
        const T dot = static_cast<T>(wide);
        for (std::int64_t j = 0; j < seq_len; ++j) ds[j] = pr[j] * (ds[j] - dot) * scale;
      }
      dev.gemm<T>(Op::n, Op::n, T(1), ConstView<T>(scratch), k.block(r0, kv * head_dim, seq_len, head_dim), T(0),
                  dq.block(r0, h * head_dim, seq_len, head_dim));
      dev.gemm<T>(Op::t, Op::n, T(1), ConstView<T>(scratch), q.block(r0, h * head_dim, seq_len, head_dim), T(1),
                  dk.block(r0, kv * head_dim, seq_len, head_dim));
    }
}

}  // namespace tp::impl
