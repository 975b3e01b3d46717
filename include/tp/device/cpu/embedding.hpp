#pragma once
/// The CPU loops of tp/ops/embedding.hpp: id range check, masked lookup and its gradient.

#include <algorithm>
#include <cstdint>

#include "tp/device/cpu/cpu.hpp"

namespace tp::impl {

inline std::int64_t first_outside(const Cpu&, ConstView<std::int64_t> ids, std::int64_t begin, std::int64_t end,
                                  std::int64_t allowed) {
  for (std::int64_t i = 0; i < ids.size(); ++i)
    if ((ids.data[i] < begin || ids.data[i] >= end) && ids.data[i] != allowed) return i;
  return -1;
}

template <class T>
void embedding_forward(const Cpu&, ConstView<std::int64_t> ids, ConstView<T> table, std::int64_t first,
                       MatrixView<T> out) {
  for (std::int64_t i = 0; i < out.rows; ++i) {
    const std::int64_t row = ids.data[i] - first;
    if (row >= 0 && row < table.rows)
      std::copy_n(table.row(row), out.cols, out.row(i));
    else
      std::fill_n(out.row(i), out.cols, T(0));
  }
}

template <class T>
void embedding_backward(const Cpu&, ConstView<std::int64_t> ids, ConstView<T> dy, std::int64_t first,
                        MatrixView<T> d_table) {
  for (std::int64_t i = 0; i < dy.rows; ++i) {
    const std::int64_t row = ids.data[i] - first;
    if (row < 0 || row >= d_table.rows) continue;
    const T* g = dy.row(i);
    T* d = d_table.row(row);
    for (std::int64_t c = 0; c < dy.cols; ++c) d[c] += g[c];
  }
}

}  // namespace tp::impl
