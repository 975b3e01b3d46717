#pragma once
/// The CPU side of tp/ops/attention.hpp: flash attention. Each (sequence, kv head) runs in tiles of
/// kQueryTile queries of every query head in its group (packed into one matrix, so that the group
/// shares each GEMM with the key tile: group x 128 rows instead of 128) by kKeyTile keys, through
/// Cpu::gemm, with an online softmax (a running row maximum and sum, rescaling the partial output
/// when the maximum grows), so memory is a tile of scores per group, not seq_len^2; causal tiles
/// wholly above the diagonal are skipped. Masked keys get -inf scores, then exactly zero
/// probability; a query that sees no key gets a zero output and lse = +inf, which makes every
/// probability backward rebuilds from it zero. Backward rebuilds each tile's probabilities from q,
/// k and the saved log-sum-exp. Row sums are in double. The 16-bit types run the float kernels on
/// widened copies. The loops over a tile's scores are cloned per instruction set
/// (tp/device/cpu/simd.hpp).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "tp/detail/extern_templates.hpp"
#include "tp/detail/shape_checks.hpp"
#include "tp/device/cpu/cpu.hpp"
#include "tp/device/cpu/fast_math.hpp"
#include "tp/device/cpu/simd.hpp"
#include "tp/ops/attention_sequences.hpp"

namespace tp::impl {

namespace attention_detail {

/// Tile sides. A group of 4 query heads makes 512 packed rows; packing raised the GEMMs' rate
/// (oneDNN, one thread, AVX-512 Xeon: q k^T 167 against 157 GFLOP/s at 128 rows; backward's dk and
/// dv GEMMs sum over 512 rows instead of 128). Forward's 256 keys halve the per-row work of the
/// online softmax (seq 4096, 8 heads over 2 kv heads: 131 against 143 ms); backward measured the
/// same with 256 queries or 256 keys, and keeps two 512 x 128 tiles (256 KiB each) in L2.
inline constexpr std::int64_t kQueryTile = 128, kKeyTile = 256;
inline constexpr std::int64_t kBackwardQueryTile = 128, kBackwardKeyTile = 128;

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

/// Where a packed tile's rows come from: `heads` query heads of `rows` queries each, head-major, the
/// first query being i0 of a sequence whose keys run `shift` ahead of its queries.
struct TileRows {
  std::int64_t heads, rows, i0, shift;
  bool causal;
  std::int64_t query(std::int64_t r) const { return i0 + r % rows; }
};

/// Forward's online-softmax step on one tile of scores s [heads * rows, cols] against key tile j0:
/// turns s into unnormalized probabilities against each row's running maximum, adds their sum to
/// row_sum and rescales the partial output acc [heads * rows, head_dim] when the maximum grew.
template <detail::simd::Isa I, class T>
[[gnu::always_inline]] inline void online_softmax_tile(T* s, std::int64_t cols, const TileRows& tile, std::int64_t j0,
                                       const std::uint8_t* mask, T* row_max, double* row_sum, T* acc,
                                       std::int64_t head_dim) {
  constexpr T neg_inf = -std::numeric_limits<T>::infinity();
  for (std::int64_t r = 0; r < tile.heads * tile.rows; ++r) {
    T* sr = s + r * cols;
    const std::int64_t visible = visible_cols(tile.causal, tile.query(r), tile.shift, j0, cols);
    if (mask)
      for (std::int64_t c = 0; c < visible; ++c)
        if (!mask[c]) sr[c] = neg_inf;
    const T m = detail::simd::max_of<I>(sr, visible, row_max[r]);
    // A NaN score (max_of skips it) or a +inf one poisons the row, as in PyTorch's softmax: its
    // sum becomes NaN, which stays NaN through every rescale and makes the output and lse NaN.
    if (const T total = detail::simd::sum_of<I>(sr, visible); m == std::numeric_limits<T>::infinity() || total != total) {
      bool poisoned = m != neg_inf;  // +inf, or a NaN beside finite scores
      for (std::int64_t c = 0; c < visible && !poisoned; ++c) poisoned = std::isnan(sr[c]) && (!mask || mask[c]);
      if (poisoned) {
        row_sum[r] = std::numeric_limits<double>::quiet_NaN();
        std::fill(sr, sr + cols, T(0));
        continue;
      }
    }
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
    std::fill(sr + visible, sr + cols, T(0));
    row_sum[r] = row_sum[r] * static_cast<double>(rescale) + static_cast<double>(detail::simd::sum_of<I>(sr, visible));
    if (j0 > 0 && rescale != T(1)) {
      T* ar = acc + r * head_dim;
      for (std::int64_t d = 0; d < head_dim; ++d) ar[d] *= rescale;
    }
  }
}

/// Backward: the probabilities p = exp(s - lse) of one tile of scores s [heads * rows, cols].
template <detail::simd::Isa I, class T, class S>
[[gnu::always_inline]] inline void probabilities_tile(T* s, std::int64_t cols, const TileRows& tile, std::int64_t j0,
                                      const std::uint8_t* mask, const S* lse) {
  for (std::int64_t r = 0; r < tile.heads * tile.rows; ++r) {
    T* pr = s + r * cols;
    // A query that saw no key (lse = +inf) has no probabilities.
    const std::int64_t visible =
        std::isinf(lse[r]) ? 0 : visible_cols(tile.causal, tile.query(r), tile.shift, j0, cols);
    const T l = static_cast<T>(lse[r]);
    for (std::int64_t c = 0; c < visible; ++c) pr[c] = exp_of<T>(pr[c] - l);
    if (mask)
      for (std::int64_t c = 0; c < visible; ++c)
        if (!mask[c]) pr[c] = T(0);
    std::fill(pr + visible, pr + cols, T(0));
  }
}

/// Backward: dp := p (dp - rowsum(do o)) scale, the scores' gradient, over n rows of cols.
template <detail::simd::Isa I, class T>
[[gnu::always_inline]] inline void score_gradient_tile(const T* p, T* dp, std::int64_t n, std::int64_t cols, const T* row_dot,
                                       T scale) {
  for (std::int64_t r = 0; r < n; ++r) {
    const T* pr = p + r * cols;
    T* ds = dp + r * cols;
    const T dot = row_dot[r];
    for (std::int64_t c = 0; c < cols; ++c) ds[c] = pr[c] * (ds[c] - dot) * scale;
  }
}

/// Rows [first, first + rows) of x for the `heads` query heads from `head`, copied head-major into
/// dst [heads * rows, head_dim]; unpack_heads copies them back.
template <class T>
void pack_heads(ConstView<T> x, std::int64_t first, std::int64_t head, std::int64_t heads, std::int64_t rows,
                std::int64_t head_dim, T* dst) {
  for (std::int64_t h = 0; h < heads; ++h)
    for (std::int64_t r = 0; r < rows; ++r)
      std::copy_n(x.row(first + r) + (head + h) * head_dim, head_dim, dst + (h * rows + r) * head_dim);
}

template <class T>
void unpack_heads(const T* src, std::int64_t first, std::int64_t head, std::int64_t heads, std::int64_t rows,
                  std::int64_t head_dim, MatrixView<T> x) {
  for (std::int64_t h = 0; h < heads; ++h)
    for (std::int64_t r = 0; r < rows; ++r)
      std::copy_n(src + (h * rows + r) * head_dim, head_dim, x.row(first + r) + (head + h) * head_dim);
}

/// A 16-bit view's elements widened to float (exact), for the 16-bit types' attention, which runs
/// the float kernels on widened copies and rounds the results once.
template <class T>
struct Widened {
  explicit Widened(ConstView<T> x) : rows(x.rows), cols(x.cols), data(static_cast<std::size_t>(x.rows * x.cols)) {
    for (std::int64_t r = 0; r < rows; ++r) std::copy_n(x.row(r), cols, data.data() + r * cols);
  }
  ConstView<float> view() const { return ConstView<float>(data.data(), rows, cols); }
  MatrixView<float> mut() { return MatrixView<float>(data.data(), rows, cols); }
  void narrow_into(MatrixView<T> out) const {
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t c = 0; c < cols; ++c) out(r, c) = data[static_cast<std::size_t>(r * cols + c)];
  }
  std::int64_t rows, cols;
  std::vector<float> data;
};

}  // namespace attention_detail

/// attention_forward in T itself (float, double).
template <class T>
void attention_forward_native(const Cpu& dev, const detail::AttentionGeometry& g, ConstView<T> q, ConstView<T> k,
                       ConstView<T> v, const AttentionSequences& seqs, std::int64_t head_dim, bool causal,
                       MatrixView<detail::attention_stat_t<T>> lse, MatrixView<T> out) {
  using namespace attention_detail;
  using S = detail::attention_stat_t<T>;
  constexpr T neg_inf = -std::numeric_limits<T>::infinity();
  const T scale = T(1) / std::sqrt(static_cast<T>(head_dim));
  const detail::simd::Isa isa = detail::simd::active_isa();
  // Tiles as large as the sequences need, not kQueryTile x kKeyTile: a decoded token (one query,
  // a cache of keys) would otherwise allocate and zero some 600 KiB per call, through mmap, page
  // faults and all (a tenth of the attention's time at decode).
  std::int64_t tile_rows = 1, tile_cols = 1;
  for (std::int64_t b = 0; b < g.batch; ++b) {
    tile_rows = std::max(tile_rows, std::min(kQueryTile, seqs.q_length[b]));
    tile_cols = std::max(tile_cols, std::min(kKeyTile, seqs.k_length[b]));
  }
  const std::int64_t packed_rows = g.group * tile_rows;
  std::vector<T> scores(static_cast<std::size_t>(packed_rows * tile_cols)),
      q_packed(static_cast<std::size_t>(packed_rows * head_dim)), acc(q_packed.size()), row_max(packed_rows);
  std::vector<double> row_sum(static_cast<std::size_t>(packed_rows));
  for (std::int64_t b = 0; b < g.batch; ++b) {
    const std::int64_t nq = seqs.q_length[b], nk = seqs.k_length[b], q0 = seqs.q_begin[b], k0 = seqs.k_begin[b];
    const std::int64_t shift = nk - nq, bq = std::min(kQueryTile, nq), bk = std::min(kKeyTile, nk);
    for (std::int64_t kv = 0; kv < g.hk; ++kv) {
      const std::int64_t head = kv * g.group;
      for (std::int64_t i0 = 0; i0 < nq; i0 += bq) {
        const std::int64_t rows = std::min(bq, nq - i0), n = g.group * rows;
        const TileRows tile{g.group, rows, i0, shift, causal};
        pack_heads(q, q0 + i0, head, g.group, rows, head_dim, q_packed.data());
        const ConstView<T> q_tile(q_packed.data(), n, head_dim);
        const MatrixView<T> partial(acc.data(), n, head_dim);
        std::fill_n(row_max.begin(), n, neg_inf);
        std::fill_n(row_sum.begin(), n, 0.0);
        // Tiles past key_end are masked whole.
        const std::int64_t key_end = causal ? std::clamp<std::int64_t>(shift + i0 + rows, 0, nk) : nk;
        for (std::int64_t j0 = 0; j0 < key_end; j0 += bk) {
          const std::int64_t cols = std::min(bk, nk - j0);
          const MatrixView<T> s(scores.data(), n, cols);
          dev.gemm<T>(Op::n, Op::t, scale, q_tile, k.block(k0 + j0, kv * head_dim, cols, head_dim), T(0), s);
          TP_CPU_DISPATCH(isa, I,
                          online_softmax_tile<I, T>(s.data, cols, tile, j0, mask_at(seqs, k0, j0), row_max.data(),
                                                    row_sum.data(), acc.data(), head_dim));
          dev.gemm<T>(Op::n, Op::n, T(1), ConstView<T>(s), v.block(k0 + j0, kv * head_dim, cols, head_dim),
                      j0 > 0 ? T(1) : T(0), partial);
        }
        for (std::int64_t r = 0; r < n; ++r) {
          T* ar = partial.row(r);
          S& l = lse.row(head + r / rows)[q0 + i0 + r % rows];
          if (row_sum[r] == 0) {  // saw no key: a defined zero output
            std::fill(ar, ar + head_dim, T(0));
            l = std::numeric_limits<S>::infinity();
            continue;
          }
          const T inv = static_cast<T>(1.0 / row_sum[r]);
          for (std::int64_t d = 0; d < head_dim; ++d) ar[d] *= inv;
          l = static_cast<S>(static_cast<double>(row_max[r]) + std::log(row_sum[r]));
        }
        unpack_heads(acc.data(), q0 + i0, head, g.group, rows, head_dim, out);
      }
    }
  }
}

/// Per kv head, the group's q, dout, lse and rowsum(do o) packed once (query tile by query tile,
/// head-major inside each, as forward packs q), and dq accumulated packed; then per key tile, for
/// each query tile that sees it: p = exp(scale q k^T - lse); dv += p^T do; dp = do v^T;
/// ds = p (dp - rowsum(do o)) scale; dq += ds k; dk += ds^T q.
template <class T>
void attention_backward_native(const Cpu& dev, const detail::AttentionGeometry& g, ConstView<T> q, ConstView<T> k,
                        ConstView<T> v, ConstView<T> out, ConstView<detail::attention_stat_t<T>> lse, ConstView<T> dout,
                        const AttentionSequences& seqs, std::int64_t head_dim, bool causal, MatrixView<T> dq,
                        MatrixView<T> dk, MatrixView<T> dv) {
  using namespace attention_detail;
  using S = detail::attention_stat_t<T>;
  const T scale = T(1) / std::sqrt(static_cast<T>(head_dim));
  const detail::simd::Isa isa = detail::simd::active_isa();
  const std::int64_t packed_rows = g.group * kBackwardQueryTile;
  std::vector<T> probs(static_cast<std::size_t>(packed_rows * kBackwardKeyTile)), d_probs(probs.size());
  std::vector<T> q_packed, do_packed, dq_packed, row_dot;
  std::vector<S> lse_packed;
  dev.fill<T>(dq, T(0));
  dev.fill<T>(dk, T(0));
  dev.fill<T>(dv, T(0));
  for (std::int64_t b = 0; b < g.batch; ++b) {
    const std::int64_t nq = seqs.q_length[b], nk = seqs.k_length[b], q0 = seqs.q_begin[b], k0 = seqs.k_begin[b];
    const std::int64_t shift = nk - nq, bq = std::min(kBackwardQueryTile, nq), bk = std::min(kBackwardKeyTile, nk);
    if (nq == 0 || nk == 0) continue;
    const auto packed = static_cast<std::size_t>(g.group * nq * head_dim);
    q_packed.resize(packed);
    do_packed.resize(packed);
    row_dot.resize(static_cast<std::size_t>(g.group * nq));
    lse_packed.resize(row_dot.size());
    for (std::int64_t kv = 0; kv < g.hk; ++kv) {
      const std::int64_t head = kv * g.group;
      dq_packed.assign(packed, T(0));  // this group's dq accumulates over every key tile
      // Query tile i0 starts at packed row group * i0.
      for (std::int64_t i0 = 0; i0 < nq; i0 += bq) {
        const std::int64_t rows = std::min(bq, nq - i0), base = g.group * i0;
        pack_heads(q, q0 + i0, head, g.group, rows, head_dim, q_packed.data() + base * head_dim);
        pack_heads(dout, q0 + i0, head, g.group, rows, head_dim, do_packed.data() + base * head_dim);
        for (std::int64_t r = 0; r < g.group * rows; ++r) {
          const std::int64_t h = head + r / rows, i = q0 + i0 + r % rows;
          lse_packed[static_cast<std::size_t>(base + r)] = lse.row(h)[i];
          // rowsum(do o) = rowsum(p dp): the softmax backward's row term.
          const T* o = out.row(i) + h * head_dim;
          const T* d_o = dout.row(i) + h * head_dim;
          double dot = 0;
          for (std::int64_t d = 0; d < head_dim; ++d) dot += static_cast<double>(o[d]) * static_cast<double>(d_o[d]);
          row_dot[static_cast<std::size_t>(base + r)] = static_cast<T>(dot);
        }
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
          const std::int64_t rows = std::min(bq, nq - i0), n = g.group * rows, base = g.group * i0;
          const ConstView<T> q_tile(q_packed.data() + base * head_dim, n, head_dim),
              do_tile(do_packed.data() + base * head_dim, n, head_dim);
          const MatrixView<T> p(probs.data(), n, cols), dp(d_probs.data(), n, cols);
          dev.gemm<T>(Op::n, Op::t, scale, q_tile, k_tile, T(0), p);
          TP_CPU_DISPATCH(isa, I,
                          probabilities_tile<I, T, S>(p.data, cols, TileRows{g.group, rows, i0, shift, causal}, j0,
                                                      mask, lse_packed.data() + base));
          dev.gemm<T>(Op::t, Op::n, T(1), ConstView<T>(p), do_tile, T(1), dv_tile);
          dev.gemm<T>(Op::n, Op::t, T(1), do_tile, v_tile, T(0), dp);
          TP_CPU_DISPATCH(isa, I, score_gradient_tile<I, T>(p.data, dp.data, n, cols, row_dot.data() + base, scale));
          dev.gemm<T>(Op::n, Op::n, T(1), ConstView<T>(dp), k_tile, T(1),
                      MatrixView<T>(dq_packed.data() + base * head_dim, n, head_dim));
          dev.gemm<T>(Op::t, Op::n, T(1), ConstView<T>(dp), q_tile, T(1), dk_tile);
        }
      }
      for (std::int64_t i0 = 0; i0 < nq; i0 += bq)
        unpack_heads(dq_packed.data() + g.group * i0 * head_dim, q0 + i0, head, g.group, std::min(bq, nq - i0),
                     head_dim, dq);
    }
  }
}

template <class T>
void attention_forward(const Cpu& dev, const detail::AttentionGeometry& g, ConstView<T> q, ConstView<T> k,
                       ConstView<T> v, const AttentionSequences& seqs, std::int64_t head_dim, bool causal,
                       MatrixView<detail::attention_stat_t<T>> lse, MatrixView<T> out) {
  using attention_detail::Widened;
  if constexpr (is_float16_v<T>) {  // in float, rounded once
    Widened<T> out32{ConstView<T>(out)};
    attention_forward_native<float>(dev, g, Widened<T>(q).view(), Widened<T>(k).view(), Widened<T>(v).view(), seqs,
                                    head_dim, causal, lse, out32.mut());
    out32.narrow_into(out);
  } else {
    attention_forward_native<T>(dev, g, q, k, v, seqs, head_dim, causal, lse, out);
  }
}

template <class T>
void attention_backward(const Cpu& dev, const detail::AttentionGeometry& g, ConstView<T> q, ConstView<T> k,
                        ConstView<T> v, ConstView<T> out, ConstView<detail::attention_stat_t<T>> lse, ConstView<T> dout,
                        const AttentionSequences& seqs, std::int64_t head_dim, bool causal, MatrixView<T> dq,
                        MatrixView<T> dk, MatrixView<T> dv) {
  using attention_detail::Widened;
  if constexpr (is_float16_v<T>) {  // in float, rounded once
    Widened<T> dq32{ConstView<T>(dq)}, dk32{ConstView<T>(dk)}, dv32{ConstView<T>(dv)};
    attention_backward_native<float>(dev, g, Widened<T>(q).view(), Widened<T>(k).view(), Widened<T>(v).view(),
                                     Widened<T>(out).view(), lse, Widened<T>(dout).view(), seqs, head_dim, causal,
                                     dq32.mut(), dk32.mut(), dv32.mut());
    dq32.narrow_into(dq);
    dk32.narrow_into(dk);
    dv32.narrow_into(dv);
  } else {
    attention_backward_native<T>(dev, g, q, k, v, out, lse, dout, seqs, head_dim, causal, dq, dk, dv);
  }
}

}  // namespace tp::impl

/// Compiled once where TP_EXTERN_TEMPLATES is defined (tp/detail/extern_templates.hpp).
#define TP_CPU_ATTENTION_INSTANTIATIONS(EXTERN, T)                                                            \
  EXTERN template void tp::impl::attention_forward<T>(                                                        \
      const Cpu&, const detail::AttentionGeometry&, ConstView<T>, ConstView<T>, ConstView<T>,                 \
      const AttentionSequences&, std::int64_t, bool, MatrixView<detail::attention_stat_t<T>>, MatrixView<T>); \
  EXTERN template void tp::impl::attention_backward<T>(                                                       \
      const Cpu&, const detail::AttentionGeometry&, ConstView<T>, ConstView<T>, ConstView<T>, ConstView<T>,   \
      ConstView<detail::attention_stat_t<T>>, ConstView<T>, const AttentionSequences&, std::int64_t, bool,    \
      MatrixView<T>, MatrixView<T>, MatrixView<T>);
TP_EXTERN_INSTANTIATIONS(TP_CPU_ATTENTION_INSTANTIATIONS)
