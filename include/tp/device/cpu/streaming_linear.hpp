#pragma once
/// Linear-layer kernels for few tokens (1 to 16 rows), where a step is bound by
/// memory, not arithmetic: each weight element is used only `m` times, so the time is that of
/// reading the weight (and reading and writing its gradient), and what matters is touching each
/// element once per pass. The BLAS does not: a backward done as two GEMMs reads the weight for
/// dX = dY W and then reads and writes dW for dW += dY^T X, and OpenBLAS's small-M sgemm packs
/// the weight before using it. Here
///   forward:  y = x w^T                 one sweep over w, every token's dot products at once;
///   backward: dx = dy w, dw += dy^T x   one sweep over w and dw together.
/// The loops work on GCC vector types and are compiled for AVX-512, AVX2+FMA and the baseline
/// (tp/device/cpu/simd.hpp): built for the baseline alone (SSE2, no FMA), they would be bound by
/// arithmetic, not memory.
/// The token count is a template parameter so that the per-token loops unroll into registers.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "tp/core/error.hpp"
#include "tp/core/tensor.hpp"
#include "tp/detail/extern_templates.hpp"
#include "tp/device/cpu/simd.hpp"

namespace tp::detail {

/// Token counts up to which tp::Cpu's linear ops take these kernels. Measured side by side with
/// oneDNN's sgemm on an AVX-512 Xeon (thread CPU time, best of 20, the MLP's 2048x1024 and
/// 1024x2048 weight shards, BENCHMARKS.md): the forward took 0.3-0.57 of the GEMMs' time from 1
/// to 12 tokens and 0.84 at 16; the backward 0.4-0.6 at 1 and 2 tokens, 0.93 at 4, 0.98-1.05 at
/// 8 and 12 (where it is bound by the 2m multiply-adds per weight element, as the GEMMs are) and
/// 1.05-1.15 at 16.
inline constexpr std::int64_t kStreamingForwardMaxTokens = 16;
inline constexpr std::int64_t kStreamingBackwardMaxTokens = 12;

namespace streaming {

using simd::kLanes;
using simd::load;
using simd::store;
using simd::Vec;

/// Weight rows handled together, so that each load of x (and each load and store of dx) serves R
/// rows. Measured on AVX-512 (thread CPU time, 1..16 tokens, 2048x1024 and 1024x2048 weights):
/// 4 beat 1, 2 and 8 at every token count in both kernels, although at 16 tokens 4 x 16
/// accumulators no longer fit in the registers.
inline constexpr int kRowBlock = 4;

/// y[i, j0 + r] = sum_c x[i, c] w[j0 + r, c] (+ beta y) for r < R. Each (token, row) keeps a vector
/// of partial sums over the lanes, added up once per row.
template <class T, int M, int R>
[[gnu::always_inline]] inline void forward_block(const T* x, std::int64_t ldx, const T* w, std::int64_t ldw, T beta,
                                                 T* y, std::int64_t ldy, std::int64_t k, std::int64_t j0) {
  constexpr std::int64_t L = kLanes<T>;
  const std::int64_t kv = k - k % L;
  Vec<T> acc[R][M];
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < M; ++i) acc[r][i] = Vec<T>{};
  for (std::int64_t c = 0; c < kv; c += L) {
    Vec<T> wv[R], xv;
    for (int r = 0; r < R; ++r) load(wv[r], w + (j0 + r) * ldw + c);
    for (int i = 0; i < M; ++i) {
      load(xv, x + i * ldx + c);
      for (int r = 0; r < R; ++r) acc[r][i] += xv * wv[r];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < M; ++i) {
      T sum = T(0);
      for (std::int64_t l = 0; l < L; ++l) sum += acc[r][i][l];
      for (std::int64_t c = kv; c < k; ++c) sum += x[i * ldx + c] * w[(j0 + r) * ldw + c];
      T& out = y[i * ldy + j0 + r];
      out = beta == T(0) ? sum : sum + beta * out;
    }
}

/// y = x w^T (+ beta y) over rows [j0, j1) of w; M tokens.
template <class T, int M>
TP_CPU_CLONES void forward_rows(const T* x, std::int64_t ldx, const T* w, std::int64_t ldw, T beta, T* y,
                                std::int64_t ldy, std::int64_t k, std::int64_t j0, std::int64_t j1) {
  constexpr int R = kRowBlock;
  std::int64_t j = j0;
  for (; j + R <= j1; j += R) forward_block<T, M, R>(x, ldx, w, ldw, beta, y, ldy, k, j);
  for (; j < j1; ++j) forward_block<T, M, 1>(x, ldx, w, ldw, beta, y, ldy, k, j);
}

/// Rows [j0, j0 + R) of w and dw, R at a time so that each pass over x and dx serves R weight rows:
///   dx[i, :] += sum_r dy[i, j0 + r] w[j0 + r, :],   dw[j0 + r, :] = beta dw[j0 + r, :] + sum_i dy[i, j0 + r] x[i, :]
/// (beta = 0 writes dw without reading it: NaN there does not survive, as with BLAS).
template <class T, int M, int R, bool Keep>
[[gnu::always_inline]] inline void backward_block(const T* dy, std::int64_t lddy, const T* x, std::int64_t ldx,
                                                  const T* w, std::int64_t ldw, T* dx, std::int64_t lddx, T beta, T* dw,
                                                  std::int64_t lddw, std::int64_t k, std::int64_t j0) {
  constexpr std::int64_t L = kLanes<T>;
  const std::int64_t kv = k - k % L;
  T g[R][M];
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < M; ++i) g[r][i] = dy[i * lddy + j0 + r];
  for (std::int64_t c = 0; c < kv; c += L) {
    Vec<T> wv[R], s[R], xv, d;
    for (int r = 0; r < R; ++r) {
      load(wv[r], w + (j0 + r) * ldw + c);
      s[r] = Vec<T>{};
      if constexpr (Keep) {
        load(s[r], dw + (j0 + r) * lddw + c);
        s[r] *= beta;
      }
    }
    for (int i = 0; i < M; ++i) {
      load(xv, x + i * ldx + c);
      load(d, dx + i * lddx + c);
      for (int r = 0; r < R; ++r) {
        s[r] += g[r][i] * xv;
        d += g[r][i] * wv[r];
      }
      store(dx + i * lddx + c, d);
    }
    for (int r = 0; r < R; ++r) store(dw + (j0 + r) * lddw + c, s[r]);
  }
  for (std::int64_t c = kv; c < k; ++c)
    for (int r = 0; r < R; ++r) {
      T s = Keep ? beta * dw[(j0 + r) * lddw + c] : T(0);
      for (int i = 0; i < M; ++i) {
        s += g[r][i] * x[i * ldx + c];
        dx[i * lddx + c] += g[r][i] * w[(j0 + r) * ldw + c];
      }
      dw[(j0 + r) * lddw + c] = s;
    }
}

/// The backward over rows [j0, j1) of w and dw, accumulating into dx (which the caller has scaled).
template <class T, int M>
TP_CPU_CLONES void backward_rows(const T* dy, std::int64_t lddy, const T* x, std::int64_t ldx, const T* w,
                                 std::int64_t ldw, T* dx, std::int64_t lddx, T beta, T* dw, std::int64_t lddw,
                                 std::int64_t k, std::int64_t j0, std::int64_t j1) {
  // No lambda here: it would be a function of its own, compiled for the baseline, not this clone.
  constexpr int R = kRowBlock;
  std::int64_t j = j0;
  if (beta == T(0)) {
    for (; j + R <= j1; j += R)
      backward_block<T, M, R, false>(dy, lddy, x, ldx, w, ldw, dx, lddx, beta, dw, lddw, k, j);
    for (; j < j1; ++j) backward_block<T, M, 1, false>(dy, lddy, x, ldx, w, ldw, dx, lddx, beta, dw, lddw, k, j);
  } else {
    for (; j + R <= j1; j += R) backward_block<T, M, R, true>(dy, lddy, x, ldx, w, ldw, dx, lddx, beta, dw, lddw, k, j);
    for (; j < j1; ++j) backward_block<T, M, 1, true>(dy, lddy, x, ldx, w, ldw, dx, lddx, beta, dw, lddw, k, j);
  }
}

/// Calls f(std::integral_constant<int, m>) for m in [1, Max].
template <std::int64_t Max, class F>
void with_tokens(std::int64_t m, F&& f) {
  [&]<int... I>(std::integer_sequence<int, I...>) {
    ((m == I + 1 ? (f(std::integral_constant<int, I + 1>{}), true) : false) || ...);
  }(std::make_integer_sequence<int, static_cast<int>(Max)>{});
}

/// Runs f(t, j0, j1) over `threads` contiguous slices of [0, n) in parallel (t = 0 on the caller's thread).
template <class F>
void over_row_slices(std::int64_t n, int threads, F&& f) {
  threads = static_cast<int>(std::clamp<std::int64_t>(threads, 1, std::max<std::int64_t>(n / 64, 1)));
  if (threads == 1) return f(0, std::int64_t(0), n);
  std::vector<std::jthread> workers;
  const auto slice = [&](int t) { return n * t / threads; };
  for (int t = 1; t < threads; ++t) workers.emplace_back([&, t] { f(t, slice(t), slice(t + 1)); });
  f(0, std::int64_t(0), slice(1));
}

/// Rows of a few-token matrix copied to 64-byte aligned storage whose row stride is an odd number
/// of cache lines. Rows of 1024 or 2048 floats lie 4 or 8 KiB apart, so the same cache line of
/// every row falls in one L1 set; with 8 to 16 rows of x and of dx in use at once, more than the
/// set's ways, every access missed L1 (the backward ran 10x slower at 16 tokens before this).
template <class T>
struct PaddedRows {
  PaddedRows(std::int64_t rows, std::int64_t cols)
      : ld((cols + kLanes<T> - 1) / kLanes<T> / 2 * 2 * kLanes<T> + kLanes<T>),
        storage(static_cast<std::size_t>(rows * ld + kLanes<T>), T(0)) {
    void* p = storage.data();
    std::size_t space = storage.size() * sizeof(T);
    data = static_cast<T*>(std::align(64, static_cast<std::size_t>(rows * ld) * sizeof(T), p, space));
  }
  std::int64_t ld;
  std::vector<T> storage;
  T* data = nullptr;
};

}  // namespace streaming

/// y = x w^T + beta y for x [m, k] (m <= kStreamingForwardMaxTokens), w [n, k], y [m, n]; rows of w split
/// over `threads` threads. Shapes are the caller's to check.
template <class T>
void streaming_linear_forward(ConstView<T> x, ConstView<T> w, T beta, MatrixView<T> y, int threads) {
  const std::int64_t m = x.rows, k = x.cols;
  TP_CHECK(m >= 1 && m <= kStreamingForwardMaxTokens, "streaming_linear_forward: {} tokens, not 1 to {}", m,
           kStreamingForwardMaxTokens);
  streaming::PaddedRows<T> xp(m, k);
  for (std::int64_t i = 0; i < m; ++i) std::copy_n(x.row(i), k, xp.data + i * xp.ld);
  streaming::with_tokens<kStreamingForwardMaxTokens>(m, [&](auto tokens) {
    streaming::over_row_slices(w.rows, threads, [&](int, std::int64_t j0, std::int64_t j1) {
      streaming::forward_rows<T, decltype(tokens)::value>(xp.data, xp.ld, w.data, w.ld, beta, y.data, y.ld, k, j0, j1);
    });
  });
}

/// dx = dy w + beta_dx dx and dw = dy^T x + beta_dw dw in one sweep over w and dw, for dy [m, n]
/// (m <= kStreamingBackwardMaxTokens), x [m, k], w and dw [n, k], dx [m, k]. With several threads each
/// takes a slice of the rows of w and dw and sums its part of dx privately; the parts are added in
/// thread order, so the result does not depend on timing.
template <class T>
void streaming_linear_backward(ConstView<T> dy, ConstView<T> x, ConstView<T> w, T beta_dx, MatrixView<T> dx, T beta_dw,
                               MatrixView<T> dw, int threads) {
  const std::int64_t m = dy.rows, n = w.rows, k = w.cols;
  TP_CHECK(m >= 1 && m <= kStreamingBackwardMaxTokens, "streaming_linear_backward: {} tokens, not 1 to {}", m,
           kStreamingBackwardMaxTokens);
  threads = static_cast<int>(std::clamp<std::int64_t>(threads, 1, std::max<std::int64_t>(n / 64, 1)));
  streaming::PaddedRows<T> xp(m, k);
  for (std::int64_t i = 0; i < m; ++i) std::copy_n(x.row(i), k, xp.data + i * xp.ld);
  std::vector<streaming::PaddedRows<T>> parts;
  parts.reserve(static_cast<std::size_t>(threads));
  for (int t = 0; t < threads; ++t) parts.emplace_back(m, k);
  streaming::with_tokens<kStreamingBackwardMaxTokens>(m, [&](auto tokens) {
    streaming::over_row_slices(n, threads, [&](int t, std::int64_t j0, std::int64_t j1) {
      streaming::backward_rows<T, decltype(tokens)::value>(dy.data, dy.ld, xp.data, xp.ld, w.data, w.ld, parts[t].data,
                                                           parts[t].ld, beta_dw, dw.data, dw.ld, k, j0, j1);
    });
  });
  for (std::int64_t i = 0; i < m; ++i) {
    T* row = dx.row(i);
    for (std::int64_t c = 0; c < k; ++c) {
      T sum = beta_dx == T(0) ? T(0) : beta_dx * row[c];
      for (int t = 0; t < threads; ++t) sum += parts[t].data[i * parts[t].ld + c];
      row[c] = sum;
    }
  }
}

}  // namespace tp::detail

/// Compiled once where TP_EXTERN_TEMPLATES is defined (tp/detail/extern_templates.hpp).
#define TP_STREAMING_LINEAR_INSTANTIATIONS(EXTERN, T)                                                              \
  EXTERN template void tp::detail::streaming_linear_forward<T>(ConstView<T>, ConstView<T>, T, MatrixView<T>, int); \
  EXTERN template void tp::detail::streaming_linear_backward<T>(ConstView<T>, ConstView<T>, ConstView<T>, T,       \
                                                                MatrixView<T>, T, MatrixView<T>, int);
TP_EXTERN_INSTANTIATIONS(TP_STREAMING_LINEAR_INSTANTIATIONS)
