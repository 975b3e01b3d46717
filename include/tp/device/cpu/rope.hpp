#pragma once
/// The CPU side of tp/ops/rope.hpp: per token, the sines and cosines of its head_dim / 2 angles,
/// then every head's pairs rotated in double, in a loop cloned per instruction set
/// (tp/device/cpu/simd.hpp). The sines and cosines of positions below kRopeTablePositions come
/// from a table kept per thread and per (head_dim, theta), filled once with the same double
/// arithmetic: a prefill rotates q and k in every layer at the same positions, and computing them
/// each time (a pow, a sin and a cos per angle) took most of RoPE's time there (BENCHMARKS.md).

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "tp/detail/math.hpp"
#include "tp/device/cpu/cpu.hpp"
#include "tp/device/cpu/simd.hpp"

namespace tp::impl {

namespace rope_detail {

/// Positions [0, kRopeTablePositions) are tabled: 8192 x 32 pairs of doubles, 4 MiB, for head_dim 64.
inline constexpr std::int64_t kRopeTablePositions = 8192;

/// sin and cos of rope_angle(pos, i) at [pos * half + i], for positions [0, rows).
struct RopeTable {
  std::int64_t head_dim = 0;
  double theta = 0;
  std::int64_t rows = 0;
  std::vector<double> sin, cos;
};

inline void angles(std::int64_t pos, std::int64_t head_dim, double theta, double* sin, double* cos) {
  for (std::int64_t i = 0; i < head_dim / 2; ++i) math::sincos_d(math::rope_angle(pos, i, head_dim, theta), sin[i], cos[i]);
}

/// This thread's table for (head_dim, theta), holding at least positions [0, rows) (rows <=
/// kRopeTablePositions). Ranks that run as threads keep one each, so none is shared.
inline const RopeTable& table(std::int64_t head_dim, double theta, std::int64_t rows) {
  thread_local std::vector<std::unique_ptr<RopeTable>> tables;
  auto it = std::find_if(tables.begin(), tables.end(),
                         [&](const auto& t) { return t->head_dim == head_dim && t->theta == theta; });
  if (it == tables.end()) {
    if (tables.size() >= 4) tables.erase(tables.begin());  // a process uses one or two; bound the memory
    tables.push_back(std::make_unique<RopeTable>(RopeTable{.head_dim = head_dim, .theta = theta}));
    it = tables.end() - 1;
  }
  RopeTable& t = **it;
  if (t.rows < rows) {
    const std::int64_t half = head_dim / 2, grown = std::min(std::max(rows, 2 * t.rows), kRopeTablePositions);
    t.sin.resize(static_cast<std::size_t>(grown * half));
    t.cos.resize(t.sin.size());
    for (std::int64_t pos = t.rows; pos < grown; ++pos)
      angles(pos, head_dim, theta, t.sin.data() + pos * half, t.cos.data() + pos * half);
    t.rows = grown;
  }
  return t;
}

/// Every head of one token's row turned by (sin, cos) (sin negated when inverse).
template <detail::simd::Isa, class T>
[[gnu::always_inline]] inline void rotate_row(T* row, std::int64_t heads, std::int64_t half, const double* sin,
                                              const double* cos, bool inverse) {
  const double sign = inverse ? -1.0 : 1.0;
  for (std::int64_t h = 0; h < heads; ++h) {
    T* head = row + h * 2 * half;
    for (std::int64_t i = 0; i < half; ++i) {
      double a = head[i], b = head[i + half];
      math::rope_rotate(a, b, sign * sin[i], cos[i]);
      head[i] = static_cast<T>(a);
      head[i + half] = static_cast<T>(b);
    }
  }
}

}  // namespace rope_detail

template <class T>
void rope(const Cpu&, MatrixView<T> x, ConstView<std::int64_t> positions, std::int64_t head_dim, double theta,
          bool inverse) {
  using namespace rope_detail;
  const std::int64_t half = head_dim / 2, heads = x.cols / head_dim;
  std::int64_t tabled = 0;  // positions [0, tabled) come from the table
  for (std::int64_t t = 0; t < x.rows; ++t)
    if (const std::int64_t pos = positions(0, t); pos >= 0 && pos < kRopeTablePositions)
      tabled = std::max(tabled, pos + 1);
  const RopeTable* table = tabled > 0 ? &rope_detail::table(head_dim, theta, tabled) : nullptr;
  std::vector<double> sin(static_cast<std::size_t>(half)), cos(static_cast<std::size_t>(half));
  const detail::simd::Isa isa = detail::simd::active_isa();
  for (std::int64_t t = 0; t < x.rows; ++t) {
    const std::int64_t pos = positions(0, t);
    const double *s = sin.data(), *c = cos.data();
    if (pos >= 0 && pos < kRopeTablePositions) {
      s = table->sin.data() + pos * half;
      c = table->cos.data() + pos * half;
    } else {
      angles(pos, head_dim, theta, sin.data(), cos.data());
    }
    T* row = x.row(t);
    TP_CPU_DISPATCH(isa, I, rotate_row<I, T>(row, heads, half, s, c, inverse));
  }
}

}  // namespace tp::impl
