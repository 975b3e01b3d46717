#pragma once
/// Linear-layer kernels for few tokens (1 to 16 rows), where a step is bound by
/// memory, not arithmetic: each weight element is used only `m` times, so the time is that of
/// reading the weight (and reading and writing its gradient), and what matters is touching each
/// element once per pass. The BLAS does not: a backward done as two GEMMs reads the weight for
/// dX = dY W and then reads and writes dW for dW += dY^T X, and OpenBLAS's small-M sgemm packs
/// the weight before using it. Here
///   forward:  y = x w^T                 one sweep over w, every token's dot products at once;
///   backward: dx = dy w, dw += dy^T x   one sweep over w and dw together.
/// The loops work on GCC vector types and are compiled for AVX-512, AVX2+FMA and the baseline, each
/// with register blocking that fits its registers (tp/device/cpu/simd.hpp): built for the baseline
/// alone (SSE2, no FMA), they would be bound by arithmetic, not memory; AVX2 running AVX-512's
/// blocking (64-byte vectors, 4 rows x 8 tokens of accumulators) spilled and ran 2.5-3.6x slower
/// than the GEMMs.
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

using simd::Isa;

/// Token counts up to which tp::Cpu's linear ops take these kernels, per instruction set (the
/// kernels compile for up to kStreamingMaxTokens). Measured side by side with the GEMMs
/// (tp_bench_layers --compare-gemm, BENCHMARKS.md); see streaming_forward_max_tokens.
inline constexpr std::int64_t kStreamingMaxTokens = 16;

namespace streaming {

using simd::kLanes;
using simd::load;
using simd::store;
using simd::Vec;

/// Register blocking per instruction set and token count: `rows` weight rows at a time, so that
/// each load of x (and each load and store of dx) serves that many rows, and at most `tokens`
/// tokens per pass over a block of rows, so that the accumulators stay in registers: forward keeps
/// rows x tokens partial sums, a weight vector per row and an x vector; backward a weight and a dw
/// vector per row and an x and a dx vector (the rows x tokens gradients are broadcast from L1, so
/// the token count does not take registers). More tokens take several passes over the block of
/// rows, which then comes from L1 or L2, not memory, but costs the arithmetic's loads again (and in
/// backward dw's loads and stores). AVX2 and SSE have 16 vector registers, AVX-512 32. Chosen by
/// measurement (thread CPU time, 1 to 16 tokens, 4096x1024 and 1024x4096 weights, on an AVX-512
/// Xeon running each instruction set's code, weights in the last-level cache):
///   forward, AVX-512: 4 rows x up to 6 tokens, but 3 x 8 (24 sums, one pass) at 7 and 8 tokens,
///     0.96 against 1.05 ms at 8 (4 x 6 stays ahead at 4, 12 and 16: 1.36 against 1.80 ms at 12);
///   forward, AVX2 and baseline: 3 x 4 (12 sums, 3 weights, one x: the 16 registers exactly) beat
///     4 x 3 (one register over, so the weights were reloaded from memory operands) by 20-30% at
///     4 and 8 tokens and 5-15% at 12 and 16, and 2 x 4, 2 x 6, 1 x 8 and 3 x 3 by 10-30%;
///   forward at 1 token (decoding; weights from memory): more rows at once, each a stream for the
///     prefetchers: AVX-512 8 rows, AVX2 and baseline 12 (12 sums, an x, weights as memory operands)
///     took 0.87 and 0.86-0.88 of the time of 4 and 3 rows, interleaved token by token on the 100 M
///     decode model's weights at TP 2 (two processes at once, each weight once per token in model
///     order; AVX2 6 rows 0.94, AVX-512 16 rows 0.86; BENCHMARKS.md, "Decode at TP 1 and TP 2");
///   backward, every instruction set: 4 rows x all 16 tokens in one pass beat the earlier 4 x 5
///     (AVX-512) and 4 x 2 (AVX2) by 25-40% at 8 tokens (AVX2 2.2 against 3.6 ms per 16 MiB
///     weight) and 35-50% at 12 and 16, and 8 x 4 and 6 x 4 by 30%; alike at 1 and 2 tokens.
template <Isa I, int M>
struct Blocking {
  static constexpr bool avx512 = I == Isa::avx512;
  static constexpr int forward_rows = M == 1 ? (avx512 ? 8 : 12) : avx512 ? (M == 7 || M == 8 ? 3 : 4) : 3;
  static constexpr int forward_tokens = avx512 ? (M == 7 || M == 8 ? 8 : 6) : 4;
  static constexpr int backward_rows = 4;
  static constexpr int backward_tokens = 16;
};

/// Tokens per pass for M tokens and at most `Max` per pass, as even as possible (8 tokens with 6
/// at most: two passes of 4, not 6 and 2).
template <int M, int Max>
inline constexpr int kChunk = (M + (M + Max - 1) / Max - 1) / ((M + Max - 1) / Max);

/// y[i, j0 + r] = sum_c x[i, c] w[j0 + r, c] (+ beta y) for r < R and i < M. Each (token, row)
/// keeps a vector of partial sums over the lanes, added up once per row.
template <Isa I, class T, int M, int R>
[[gnu::always_inline]] inline void forward_block(const T* x, std::int64_t ldx, const T* w, std::int64_t ldw, T beta,
                                                 T* y, std::int64_t ldy, std::int64_t k, std::int64_t j0) {
  constexpr std::int64_t L = kLanes<T, I>;
  const std::int64_t kv = k - k % L;
  Vec<T, I> acc[R][M];
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < M; ++i) acc[r][i] = Vec<T, I>{};
  for (std::int64_t c = 0; c < kv; c += L) {
    Vec<T, I> wv[R], xv;
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

/// forward_block for all M tokens, in passes of at most Blocking<I, M>::forward_tokens.
template <Isa I, class T, int M, int R>
[[gnu::always_inline]] inline void forward_tokens(const T* x, std::int64_t ldx, const T* w, std::int64_t ldw, T beta,
                                                  T* y, std::int64_t ldy, std::int64_t k, std::int64_t j0) {
  constexpr int C = kChunk<M, Blocking<I, M>::forward_tokens>, Full = M / C, Rest = M % C;
  for (int q = 0; q < Full; ++q) forward_block<I, T, C, R>(x + q * C * ldx, ldx, w, ldw, beta, y + q * C * ldy, ldy, k, j0);
  if constexpr (Rest > 0)
    forward_block<I, T, Rest, R>(x + Full * C * ldx, ldx, w, ldw, beta, y + Full * C * ldy, ldy, k, j0);
}

/// y = x w^T (+ beta y) over rows [j0, j1) of w; M tokens.
template <Isa I, class T, int M>
[[gnu::always_inline]] inline void forward_rows(const T* x, std::int64_t ldx, const T* w, std::int64_t ldw, T beta,
                                                T* y, std::int64_t ldy, std::int64_t k, std::int64_t j0,
                                                std::int64_t j1) {
  constexpr int R = Blocking<I, M>::forward_rows;
  std::int64_t j = j0;
  for (; j + R <= j1; j += R) forward_tokens<I, T, M, R>(x, ldx, w, ldw, beta, y, ldy, k, j);
  for (; j < j1; ++j) forward_tokens<I, T, M, 1>(x, ldx, w, ldw, beta, y, ldy, k, j);
}

/// How a backward pass starts each dw element: written (beta = 0: NaN there does not survive, as
/// with BLAS), scaled by beta, or added to (a later pass over more tokens).
enum class DwStart { write, scale, add };

/// Rows [j0, j0 + R) of w and dw against M tokens, R rows at a time so that each pass over x and dx
/// serves R weight rows:
///   dx[i, :] += sum_r dy[i, j0 + r] w[j0 + r, :],   dw[j0 + r, :] = start(dw[j0 + r, :]) + sum_i dy[i, j0 + r] x[i, :]
template <Isa I, class T, int M, int R, DwStart Start>
[[gnu::always_inline]] inline void backward_block(const T* dy, std::int64_t lddy, const T* x, std::int64_t ldx,
                                                  const T* w, std::int64_t ldw, T* dx, std::int64_t lddx, T beta, T* dw,
                                                  std::int64_t lddw, std::int64_t k, std::int64_t j0) {
  constexpr std::int64_t L = kLanes<T, I>;
  const std::int64_t kv = k - k % L;
  T g[R][M];
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < M; ++i) g[r][i] = dy[i * lddy + j0 + r];
  for (std::int64_t c = 0; c < kv; c += L) {
    Vec<T, I> wv[R], s[R], xv, d;
    for (int r = 0; r < R; ++r) {
      load(wv[r], w + (j0 + r) * ldw + c);
      s[r] = Vec<T, I>{};
      if constexpr (Start != DwStart::write) load(s[r], dw + (j0 + r) * lddw + c);
      if constexpr (Start == DwStart::scale) s[r] *= beta;
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
      T& out = dw[(j0 + r) * lddw + c];
      T s = Start == DwStart::write ? T(0) : Start == DwStart::scale ? beta * out : out;
      for (int i = 0; i < M; ++i) {
        s += g[r][i] * x[i * ldx + c];
        dx[i * lddx + c] += g[r][i] * w[(j0 + r) * ldw + c];
      }
      out = s;
    }
}

/// backward_block for all M tokens, in passes of at most Blocking<I, M>::backward_tokens; the first
/// starts dw as Start says, the others add to it.
template <Isa I, class T, int M, int R, DwStart Start>
[[gnu::always_inline]] inline void backward_tokens(const T* dy, std::int64_t lddy, const T* x, std::int64_t ldx,
                                                   const T* w, std::int64_t ldw, T* dx, std::int64_t lddx, T beta,
                                                   T* dw, std::int64_t lddw, std::int64_t k, std::int64_t j0) {
  constexpr int C = kChunk<M, Blocking<I, M>::backward_tokens>, Full = M / C, Rest = M % C;
  backward_block<I, T, C, R, Start>(dy, lddy, x, ldx, w, ldw, dx, lddx, beta, dw, lddw, k, j0);
  for (int q = 1; q < Full; ++q)
    backward_block<I, T, C, R, DwStart::add>(dy + q * C * lddy, lddy, x + q * C * ldx, ldx, w, ldw, dx + q * C * lddx,
                                            lddx, beta, dw, lddw, k, j0);
  if constexpr (Rest > 0)
    backward_block<I, T, Rest, R, DwStart::add>(dy + Full * C * lddy, lddy, x + Full * C * ldx, ldx, w, ldw,
                                               dx + Full * C * lddx, lddx, beta, dw, lddw, k, j0);
}

/// The backward over rows [j0, j1) of w and dw, accumulating into dx (which the caller has scaled).
template <Isa I, class T, int M>
[[gnu::always_inline]] inline void backward_rows(const T* dy, std::int64_t lddy, const T* x, std::int64_t ldx,
                                                 const T* w, std::int64_t ldw, T* dx, std::int64_t lddx, T beta, T* dw,
                                                 std::int64_t lddw, std::int64_t k, std::int64_t j0, std::int64_t j1) {
  constexpr int R = Blocking<I, M>::backward_rows;
  std::int64_t j = j0;
  if (beta == T(0)) {
    for (; j + R <= j1; j += R)
      backward_tokens<I, T, M, R, DwStart::write>(dy, lddy, x, ldx, w, ldw, dx, lddx, beta, dw, lddw, k, j);
    for (; j < j1; ++j)
      backward_tokens<I, T, M, 1, DwStart::write>(dy, lddy, x, ldx, w, ldw, dx, lddx, beta, dw, lddw, k, j);
  } else {
    for (; j + R <= j1; j += R)
      backward_tokens<I, T, M, R, DwStart::scale>(dy, lddy, x, ldx, w, ldw, dx, lddx, beta, dw, lddw, k, j);
    for (; j < j1; ++j)
      backward_tokens<I, T, M, 1, DwStart::scale>(dy, lddy, x, ldx, w, ldw, dx, lddx, beta, dw, lddw, k, j);
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
  static constexpr std::int64_t kLine = 64 / static_cast<std::int64_t>(sizeof(T));  // T per cache line
  PaddedRows(std::int64_t rows, std::int64_t cols)
      : ld((cols + kLine - 1) / kLine / 2 * 2 * kLine + kLine), storage(static_cast<std::size_t>(rows * ld + kLine), T(0)) {
    void* p = storage.data();
    std::size_t space = storage.size() * sizeof(T);
    data = static_cast<T*>(std::align(64, static_cast<std::size_t>(rows * ld) * sizeof(T), p, space));
  }
  std::int64_t ld;
  std::vector<T> storage;
  T* data = nullptr;
};

}  // namespace streaming

/// The most tokens for which tp::Cpu's linear forward and backward take the streaming kernels on
/// `isa` (on more, GEMMs), from the MLP h1024 (2048x1024 and 1024x2048 weight shards at 2 ranks,
/// 4096x1024 and 1024x4096 at one) side by side with the GEMMs that tp::Cpu would run on a CPU of
/// that instruction set (tp_bench_layers --compare-gemm, one process per instruction set with
/// TP_CPU_ISA and the BLAS capped to match, BENCHMARKS.md):
///   AVX-512 (Xeon, oneDNN sgemm): the forward took 0.3-0.57 of the GEMMs' time from 1 to 12
///   tokens and 0.84 at 16; the backward 0.4-0.6 at 1 and 2 tokens, 0.93 at 4, 0.98-1.05 at 8 and
///   12 (bound by the 2m multiply-adds per weight element, as the GEMMs are) and 1.05-1.15 at 16.
///   With this file's per-ISA blocking, one rank (CPU time): MLP forward 0.50-0.83 of the GEMMs'
///   at 1-16 tokens, forward+backward 0.84-0.94.
///   AVX2 (the same Xeon running the AVX2 code, OpenBLAS Haswell kernels): forward 0.68-0.99,
///   forward+backward 0.86-0.99 at 1-16 tokens. The baseline (OpenBLAS Prescott kernels): forward
///   0.60-0.86, forward+backward 0.70-0.87.
/// So the limits are the same on each instruction set today; they are kept per instruction set so
/// that a measurement that says otherwise has one place to go.
inline std::int64_t streaming_forward_max_tokens(Isa isa = simd::active_isa()) {
  switch (isa) {
    case Isa::avx512:
      return 16;
    case Isa::avx2:
      return 16;
    default:
      return 16;
  }
}
inline std::int64_t streaming_backward_max_tokens(Isa isa = simd::active_isa()) {
  switch (isa) {
    case Isa::avx512:
      return 12;
    case Isa::avx2:
      return 12;
    default:
      return 12;
  }
}

/// y = x w^T + beta y for x [m, k] (m <= kStreamingMaxTokens), w [n, k], y [m, n]; rows of w split
/// over `threads` threads, on the calling thread's instruction set (simd::active_isa). Shapes are
/// the caller's to check.
template <class T>
void streaming_linear_forward(ConstView<T> x, ConstView<T> w, T beta, MatrixView<T> y, int threads) {
  const std::int64_t m = x.rows, k = x.cols;
  TP_CHECK(m >= 1 && m <= kStreamingMaxTokens, "streaming_linear_forward: {} tokens, not 1 to {}", m,
           kStreamingMaxTokens);
  const Isa isa = simd::active_isa();
  streaming::PaddedRows<T> xp(m, k);
  for (std::int64_t i = 0; i < m; ++i) std::copy_n(x.row(i), k, xp.data + i * xp.ld);
  streaming::with_tokens<kStreamingMaxTokens>(m, [&](auto tokens) {
    constexpr int M = decltype(tokens)::value;
    streaming::over_row_slices(w.rows, threads, [&](int, std::int64_t j0, std::int64_t j1) {
      TP_CPU_DISPATCH(isa, I, streaming::forward_rows<I, T, M>(xp.data, xp.ld, w.data, w.ld, beta, y.data, y.ld, k, j0, j1));
    });
  });
}

/// dx = dy w + beta_dx dx and dw = dy^T x + beta_dw dw in one sweep over w and dw, for dy [m, n]
/// (m <= kStreamingMaxTokens), x [m, k], w and dw [n, k], dx [m, k]. With several threads each
/// takes a slice of the rows of w and dw and sums its part of dx privately; the parts are added in
/// thread order, so the result does not depend on timing.
template <class T>
void streaming_linear_backward(ConstView<T> dy, ConstView<T> x, ConstView<T> w, T beta_dx, MatrixView<T> dx, T beta_dw,
                               MatrixView<T> dw, int threads) {
  const std::int64_t m = dy.rows, n = w.rows, k = w.cols;
  TP_CHECK(m >= 1 && m <= kStreamingMaxTokens, "streaming_linear_backward: {} tokens, not 1 to {}", m,
           kStreamingMaxTokens);
  const Isa isa = simd::active_isa();
  threads = static_cast<int>(std::clamp<std::int64_t>(threads, 1, std::max<std::int64_t>(n / 64, 1)));
  streaming::PaddedRows<T> xp(m, k);
  for (std::int64_t i = 0; i < m; ++i) std::copy_n(x.row(i), k, xp.data + i * xp.ld);
  std::vector<streaming::PaddedRows<T>> parts;
  parts.reserve(static_cast<std::size_t>(threads));
  for (int t = 0; t < threads; ++t) parts.emplace_back(m, k);
  streaming::with_tokens<kStreamingMaxTokens>(m, [&](auto tokens) {
    constexpr int M = decltype(tokens)::value;
    streaming::over_row_slices(n, threads, [&](int t, std::int64_t j0, std::int64_t j1) {
      TP_CPU_DISPATCH(isa, I,
                      streaming::backward_rows<I, T, M>(dy.data, dy.ld, xp.data, xp.ld, w.data, w.ld, parts[t].data,
                                                        parts[t].ld, beta_dw, dw.data, dw.ld, k, j0, j1));
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
