#pragma once
/// The CPU side of tp/ops/attention.hpp: flash attention. Each (sequence, head) runs in tiles of
/// kQueryTile queries by kKeyTile keys through Cpu::gemm, with an online softmax (a running row
/// maximum and sum, rescaling the partial output when the maximum grows), so memory is two tiles of
/// scores, not seq_len^2; causal tiles wholly above the diagonal are skipped. Masked keys get -inf
/// scores, then exactly zero probability; a query that sees no key gets a zero output and lse =
/// +inf, which makes every probability backward rebuilds from it zero. Backward rebuilds each
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
#include "tp/ops/attention_sequences.hpp"

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

/// Columns of key tile [j0, j0 + cols) that query i sees: all, or, when causal, those up to i +
/// shift (shift = keys - queries of the sequence: causal aligned to the end).
inline std::int64_t visible_cols(bool causal, std::int64_t i, std::int64_t shift, std::int64_t j0, std::int64_t cols) {
  return causal ? std::clamp<std::int64_t>(i + shift - j0 + 1, 0, cols) : cols;
}

/// The key mask's bytes for key tile j0 of a sequence whose keys start at row k0, or null.
inline const std::uint8_t* mask_at(const AttentionSequences& seqs, std::int64_t k0, std::int64_t j0) {
  return seqs.key_mask.empty() ? nullptr : seqs.key_mask.data() + k0 + j0;
}

}  // namespace attention_detail

template <class T>
void attention_forward(const Cpu& dev, const detail::AttentionGeometry& g, ConstView<T> q, ConstView<T> k,
                       ConstView<T> v, const AttentionSequences& seqs, std::int64_t head_dim, bool causal,
                       MatrixView<detail::attention_stat_t<T>> lse, MatrixView<T> out) {
  using namespace attention_detail;
  using S = detail::attention_stat_t<T>;
  constexpr T neg_inf = -std::numeric_limits<T>::infinity();
  const T scale = T(1) / std::sqrt(static_cast<T>(head_dim));
  std::vector<T> scores(static_cast<std::size_t>(kQueryTile * kKeyTile));
  std::vector<T> row_max(static_cast<std::size_t>(kQueryTile));
  std::vector<double> row_sum(static_cast<std::size_t>(kQueryTile));
  for (std::int64_t b = 0; b < g.batch; ++b) {
    const std::int64_t nq = seqs.q_length[b], nk = seqs.k_length[b], q0 = seqs.q_begin[b], k0 = seqs.k_begin[b];
    const std::int64_t shift = nk - nq, bq = std::min(kQueryTile, nq), bk = std::min(kKeyTile, nk);
    for (std::int64_t h = 0; h < g.hq; ++h) {
      const std::int64_t kv = h / g.group;
      for (std::int64_t i0 = 0; i0 < nq; i0 += bq) {
        const std::int64_t rows = std::min(bq, nq - i0);
        const ConstView<T> q_tile = q.block(q0 + i0, h * head_dim, rows, head_dim);
        const MatrixView<T> acc = out.block(q0 + i0, h * head_dim, rows, head_dim);
        std::fill(row_max.begin(), row_max.end(), neg_inf);
        std::fill(row_sum.begin(), row_sum.end(), 0.0);
        // Tiles past key_end are masked whole.
        const std::int64_t key_end = causal ? std::clamp<std::int64_t>(shift + i0 + rows, 0, nk) : nk;
        if (key_end == 0) dev.fill<T>(acc, T(0));
        for (std::int64_t j0 = 0; j0 < key_end; j0 += bk) {
          const std::int64_t cols = std::min(bk, nk - j0);
          const MatrixView<T> s(scores.data(), rows, cols);
          const std::uint8_t* mask = mask_at(seqs, k0, j0);
          dev.gemm<T>(Op::n, Op::t, scale, q_tile, k.block(k0 + j0, kv * head_dim, cols, head_dim), T(0), s);
          for (std::int64_t r = 0; r < rows; ++r) {
            T* sr = s.row(r);
            const std::int64_t visible = visible_cols(causal, i0 + r, shift, j0, cols);
            if (mask)
              for (std::int64_t c = 0; c < visible; ++c)
                if (!mask[c]) sr[c] = neg_inf;
            T m = row_max[r];
            for (std::int64_t c = 0; c < visible; ++c) m = std::max(m, sr[c]);
            if (m == neg_inf) {  // no key seen yet: nothing to add, nothing to rescale
              std::fill(sr, sr + cols, T(0));
              continue;
            }
            // Zero when the row had seen nothing (its partial output and sum are zero anyway).
            const T rescale = row_max[r] == neg_inf ? T(0) : exp_of<T>(row_max[r] - m);
            row_max[r] = m;
            for (std::int64_t c = 0; c < visible; ++c) sr[c] = exp_of<T>(sr[c] - m);
            if (mask)  // exactly zero, not exp_fast's smallest value
              for (std::int64_t c = 0; c < visible; ++c)
                if (!mask[c]) sr[c] = T(0);
            T sum = T(0);
            for (std::int64_t c = 0; c < visible; ++c) sum += sr[c];
            std::fill(sr + visible, sr + cols, T(0));
            row_sum[r] = row_sum[r] * static_cast<double>(rescale) + static_cast<double>(sum);
            if (j0 > 0) {
              T* ar = acc.row(r);
              for (std::int64_t d = 0; d < head_dim; ++d) ar[d] *= rescale;
            }
          }
          dev.gemm<T>(Op::n, Op::n, T(1), ConstView<T>(s), v.block(k0 + j0, kv * head_dim, cols, head_dim),
                      j0 > 0 ? T(1) : T(0), acc);
        }
        S* l = lse.row(h) + q0 + i0;
        for (std::int64_t r = 0; r < rows; ++r) {
          T* ar = acc.row(r);
          if (row_sum[r] == 0) {  // saw no key: a defined zero output
            std::fill(ar, ar + head_dim, T(0));
            l[r] = std::numeric_limits<S>::infinity();
            continue;
          }
          const T inv = static_cast<T>(1.0 / row_sum[r]);
          for (std::int64_t d = 0; d < head_dim; ++d) ar[d] *= inv;
          l[r] = static_cast<S>(static_cast<double>(row_max[r]) + std::log(row_sum[r]));
        }
      }
    }
  }
}

/// Per key tile, for each query tile that sees it: p = exp(scale q k^T - lse); dv += p^T do;
/// dp = do v^T; ds = p (dp - rowsum(do o)) scale; dq += ds k; dk += ds^T q.
template <class T>
void attention_backward(const Cpu& dev, const detail::AttentionGeometry& g, ConstView<T> q, ConstView<T> k,
                        ConstView<T> v, ConstView<T> out, ConstView<detail::attention_stat_t<T>> lse,
                        ConstView<T> dout, const AttentionSequences& seqs, std::int64_t head_dim, bool causal,
                        MatrixView<T> dq, MatrixView<T> dk, MatrixView<T> dv) {
  using namespace attention_detail;
  const T scale = T(1) / std::sqrt(static_cast<T>(head_dim));
  std::vector<T> probs(static_cast<std::size_t>(kQueryTile * kKeyTile)),
      d_probs(static_cast<std::size_t>(kQueryTile * kKeyTile));
  std::vector<T> row_dot;
  dev.fill<T>(dq, T(0));
  dev.fill<T>(dk, T(0));
  dev.fill<T>(dv, T(0));
  for (std::int64_t b = 0; b < g.batch; ++b) {
    const std::int64_t nq = seqs.q_length[b], nk = seqs.k_length[b], q0 = seqs.q_begin[b], k0 = seqs.k_begin[b];
    const std::int64_t shift = nk - nq, bq = std::min(kQueryTile, nq), bk = std::min(kKeyTile, nk);
    if (nq == 0 || nk == 0) continue;
    row_dot.resize(static_cast<std::size_t>(nq));
    for (std::int64_t h = 0; h < g.hq; ++h) {
      const std::int64_t kv = h / g.group;
      const auto stat = lse.row(h) + q0;
      // rowsum(do o) = rowsum(p dp): the softmax backward's row term, from nq x head_dim.
      for (std::int64_t i = 0; i < nq; ++i) {
        const T* o = out.row(q0 + i) + h * head_dim;
        const T* d_o = dout.row(q0 + i) + h * head_dim;
        double dot = 0;
        for (std::int64_t d = 0; d < head_dim; ++d) dot += static_cast<double>(o[d]) * static_cast<double>(d_o[d]);
        row_dot[i] = static_cast<T>(dot);
      }
      for (std::int64_t j0 = 0; j0 < nk; j0 += bk) {
        const std::int64_t cols = std::min(bk, nk - j0);
        const std::uint8_t* mask = mask_at(seqs, k0, j0);
        const ConstView<T> k_tile = k.block(k0 + j0, kv * head_dim, cols, head_dim),
                           v_tile = v.block(k0 + j0, kv * head_dim, cols, head_dim);
        const MatrixView<T> dk_tile = dk.block(k0 + j0, kv * head_dim, cols, head_dim),
                            dv_tile = dv.block(k0 + j0, kv * head_dim, cols, head_dim);
        // Causal: query tiles wholly above the diagonal (their last row i has i + shift < j0) see none of it.
        const std::int64_t first = causal ? std::max<std::int64_t>(j0 - shift, 0) / bq * bq : 0;
        for (std::int64_t i0 = first; i0 < nq; i0 += bq) {
          const std::int64_t rows = std::min(bq, nq - i0);
          const ConstView<T> q_tile = q.block(q0 + i0, h * head_dim, rows, head_dim),
                             do_tile = dout.block(q0 + i0, h * head_dim, rows, head_dim);
          const MatrixView<T> p(probs.data(), rows, cols), dp(d_probs.data(), rows, cols);
          dev.gemm<T>(Op::n, Op::t, scale, q_tile, k_tile, T(0), p);
          for (std::int64_t r = 0; r < rows; ++r) {
            T* pr = p.row(r);
            const double l = static_cast<double>(stat[i0 + r]);
            // A query that saw no key (lse = +inf) has no probabilities.
            const std::int64_t visible = std::isinf(l) ? 0 : visible_cols(causal, i0 + r, shift, j0, cols);
            const T lt = static_cast<T>(l);
            for (std::int64_t c = 0; c < visible; ++c) pr[c] = exp_of<T>(pr[c] - lt);
            if (mask)
              for (std::int64_t c = 0; c < visible; ++c)
                if (!mask[c]) pr[c] = T(0);
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
          dev.gemm<T>(Op::n, Op::n, T(1), ConstView<T>(dp), k_tile, T(1),
                      dq.block(q0 + i0, h * head_dim, rows, head_dim));
          dev.gemm<T>(Op::t, Op::n, T(1), ConstView<T>(dp), q_tile, T(1), dk_tile);
        }
      }
    }
  }
}

}  // namespace tp::impl
