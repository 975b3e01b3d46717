#pragma once
/// The CPU side of tp/ops/attention.hpp: flash attention. Each (sequence, head) runs in tiles of
/// kQueryTile queries by kKeyTile keys through Cpu::gemm, with an online softmax (a running row
/// maximum and sum, rescaling the partial output when the maximum grows), so memory is two tiles of
/// scores, not seq_len^2; causal tiles wholly above the diagonal are skipped. Backward rebuilds each
/// tile's probabilities from q, k and the saved log-sum-exp. Row sums are in double.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "tp/detail/shape_checks.hpp"
#include "tp/device/cpu/cpu.hpp"
#include "tp/device/cpu/fast_math.hpp"

namespace tp::impl {

namespace attention_detail {

/// Tile sides: 128 x 128 float scores are 64 KiB, two of them stay in L2 beside the q, k, v, dout
/// tiles they come from, and GEMMs of 128 rows by head_dim run near the BLAS's rate.
inline constexpr std::int64_t kQueryTile = 128, kKeyTile = 128;

/// exp without a libm call for float, so that the tile loops vectorize (tp/device/cpu/fast_math.hpp).
template <class T>
inline T exp_of(T x) {
  if constexpr (std::is_same_v<T, float>)
    return detail::exp_fast(x);
  else
    return std::exp(x);
}

/// Columns of key tile [j0, j0 + cols) that query i sees: all, or those up to i when causal.
inline std::int64_t visible_cols(bool causal, std::int64_t i, std::int64_t j0, std::int64_t cols) {
  return causal ? std::clamp<std::int64_t>(i - j0 + 1, 0, cols) : cols;
}

}  // namespace attention_detail

template <class T>
void attention_forward(const Cpu& dev, const detail::AttentionGeometry& g, ConstView<T> q, ConstView<T> k,
                       ConstView<T> v, std::int64_t seq_len, std::int64_t head_dim, bool causal,
                       MatrixView<detail::attention_stat_t<T>> lse, MatrixView<T> out) {
  using namespace attention_detail;
  using S = detail::attention_stat_t<T>;
  const T scale = T(1) / std::sqrt(static_cast<T>(head_dim));
  const std::int64_t bq = std::min(kQueryTile, seq_len), bk = std::min(kKeyTile, seq_len);
  std::vector<T> scores(static_cast<std::size_t>(bq * bk));
  std::vector<T> row_max(static_cast<std::size_t>(bq));
  std::vector<double> row_sum(static_cast<std::size_t>(bq));
  for (std::int64_t b = 0; b < g.batch; ++b)
    for (std::int64_t h = 0; h < g.hq; ++h) {
      const std::int64_t kv = h / g.group, r0 = b * seq_len;
      for (std::int64_t i0 = 0; i0 < seq_len; i0 += bq) {
        const std::int64_t rows = std::min(bq, seq_len - i0);
        const ConstView<T> q_tile = q.block(r0 + i0, h * head_dim, rows, head_dim);
        const MatrixView<T> acc = out.block(r0 + i0, h * head_dim, rows, head_dim);
        std::fill(row_max.begin(), row_max.end(), -std::numeric_limits<T>::infinity());
        std::fill(row_sum.begin(), row_sum.end(), 0.0);
        const std::int64_t key_end = causal ? i0 + rows : seq_len;  // tiles past it are masked whole
        for (std::int64_t j0 = 0; j0 < key_end; j0 += bk) {
          const std::int64_t cols = std::min(bk, seq_len - j0);
          const MatrixView<T> s(scores.data(), rows, cols);
          dev.gemm<T>(Op::n, Op::t, scale, q_tile, k.block(r0 + j0, kv * head_dim, cols, head_dim), T(0), s);
          for (std::int64_t r = 0; r < rows; ++r) {
            T* sr = s.row(r);
            const std::int64_t visible = visible_cols(causal, i0 + r, j0, cols);
            T m = row_max[r];
            for (std::int64_t c = 0; c < visible; ++c) m = std::max(m, sr[c]);
            // m is finite: every row sees key 0 in the first tile.
            const T rescale = exp_of<T>(row_max[r] - m);
            row_max[r] = m;
            T sum = T(0);
            for (std::int64_t c = 0; c < visible; ++c) sum += (sr[c] = exp_of<T>(sr[c] - m));
            std::fill(sr + visible, sr + cols, T(0));
            row_sum[r] = row_sum[r] * static_cast<double>(rescale) + static_cast<double>(sum);
            if (j0 > 0) {
              T* ar = acc.row(r);
              for (std::int64_t d = 0; d < head_dim; ++d) ar[d] *= rescale;
            }
          }
          dev.gemm<T>(Op::n, Op::n, T(1), ConstView<T>(s), v.block(r0 + j0, kv * head_dim, cols, head_dim),
                      j0 > 0 ? T(1) : T(0), acc);
        }
        S* l = lse.row(b * g.hq + h) + i0;
        for (std::int64_t r = 0; r < rows; ++r) {
          const T inv = static_cast<T>(1.0 / row_sum[r]);
          T* ar = acc.row(r);
          for (std::int64_t d = 0; d < head_dim; ++d) ar[d] *= inv;
          l[r] = static_cast<S>(static_cast<double>(row_max[r]) + std::log(row_sum[r]));
        }
      }
    }
}

/// Per key tile, for each query tile that sees it: p = exp(scale q k^T - lse); dv += p^T do;
/// dp = do v^T; ds = p (dp - rowsum(do o)) scale; dq += ds k; dk += ds^T q.
template <class T>
void attention_backward(const Cpu& dev, const detail::AttentionGeometry& g, ConstView<T> q, ConstView<T> k,
                        ConstView<T> v, ConstView<T> out, ConstView<detail::attention_stat_t<T>> lse,
                        ConstView<T> dout, std::int64_t seq_len, std::int64_t head_dim, bool causal, MatrixView<T> dq,
                        MatrixView<T> dk, MatrixView<T> dv) {
  using namespace attention_detail;
  const T scale = T(1) / std::sqrt(static_cast<T>(head_dim));
  const std::int64_t bq = std::min(kQueryTile, seq_len), bk = std::min(kKeyTile, seq_len);
  std::vector<T> probs(static_cast<std::size_t>(bq * bk)), d_probs(static_cast<std::size_t>(bq * bk));
  std::vector<T> row_dot(static_cast<std::size_t>(seq_len));
  dev.fill<T>(dq, T(0));
  dev.fill<T>(dk, T(0));
  dev.fill<T>(dv, T(0));
  for (std::int64_t b = 0; b < g.batch; ++b)
    for (std::int64_t h = 0; h < g.hq; ++h) {
      const std::int64_t kv = h / g.group, r0 = b * seq_len;
      const auto stat = lse.row(b * g.hq + h);
      // rowsum(do o) = rowsum(p dp): the softmax backward's row term, from seq_len x head_dim.
      for (std::int64_t i = 0; i < seq_len; ++i) {
        const T* o = out.row(r0 + i) + h * head_dim;
        const T* d_o = dout.row(r0 + i) + h * head_dim;
        double dot = 0;
        for (std::int64_t d = 0; d < head_dim; ++d) dot += static_cast<double>(o[d]) * static_cast<double>(d_o[d]);
        row_dot[i] = static_cast<T>(dot);
      }
      for (std::int64_t j0 = 0; j0 < seq_len; j0 += bk) {
        const std::int64_t cols = std::min(bk, seq_len - j0);
        const ConstView<T> k_tile = k.block(r0 + j0, kv * head_dim, cols, head_dim),
                           v_tile = v.block(r0 + j0, kv * head_dim, cols, head_dim);
        const MatrixView<T> dk_tile = dk.block(r0 + j0, kv * head_dim, cols, head_dim),
                            dv_tile = dv.block(r0 + j0, kv * head_dim, cols, head_dim);
        // Causal: query tiles wholly above the diagonal (their last row before j0) see none of it.
        for (std::int64_t i0 = causal ? j0 / bq * bq : 0; i0 < seq_len; i0 += bq) {
          const std::int64_t rows = std::min(bq, seq_len - i0);
          const ConstView<T> q_tile = q.block(r0 + i0, h * head_dim, rows, head_dim),
                             do_tile = dout.block(r0 + i0, h * head_dim, rows, head_dim);
          const MatrixView<T> p(probs.data(), rows, cols), dp(d_probs.data(), rows, cols);
          dev.gemm<T>(Op::n, Op::t, scale, q_tile, k_tile, T(0), p);
          for (std::int64_t r = 0; r < rows; ++r) {
            T* pr = p.row(r);
            const T l = static_cast<T>(stat[i0 + r]);
            const std::int64_t visible = visible_cols(causal, i0 + r, j0, cols);
            for (std::int64_t c = 0; c < visible; ++c) pr[c] = exp_of<T>(pr[c] - l);
            std::fill(pr + visible, pr + cols, T(0));
          }
          dev.gemm<T>(Op::t, Op::n, T(1), ConstView<T>(p), do_tile, T(1), dv_tile);
          dev.gemm<T>(Op::n, Op::t, T(1), do_tile, v_tile, T(0), dp);
          for (std::int64_t r = 0; r < rows; ++r) {
            const T* pr = p.row(r);
            T* ds = dp.row(r);
            const T dot = row_dot[i0 + r];
            for (std::int64_t c = 0; c < cols; ++c) ds[c] = pr[c] * (ds[c] - dot) * scale;
          }
          dev.gemm<T>(Op::n, Op::n, T(1), ConstView<T>(dp), k_tile, T(1), dq.block(r0 + i0, h * head_dim, rows, head_dim));
          dev.gemm<T>(Op::t, Op::n, T(1), ConstView<T>(dp), q_tile, T(1), dk_tile);
        }
      }
    }
}

}  // namespace tp::impl
