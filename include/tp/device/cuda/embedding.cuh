#pragma once
/// The CUDA side of tp/ops/embedding.hpp. No atomics on values: the gradient adds repeated ids in
/// token order, as on the CPU, so results are bitwise reproducible.

#include <cmath>
#include <cstdint>

#include "tp/detail/math.hpp"
#include "tp/detail/shape_checks.hpp"
#include "tp/device/cuda/block_reduce.cuh"
#include "tp/device/cuda/cuda.hpp"
#include "tp/device/cuda/launch.cuh"

namespace tp::kernels {

/// *first = min over positions i of ids outside [begin, end) and not `allowed`; it starts at
/// ~0ull ("none"). atomicMin on an index is order-independent, so the answer is deterministic.
template <class I>
__global__ void first_outside(const I* ids, std::int64_t n, I begin, I end, I allowed, unsigned long long* first) {
  TP_GRID_STRIDE(i, n) {
    const I id = ids[i];
    if ((id < begin || id >= end) && id != allowed) atomicMin(first, static_cast<unsigned long long>(i));
  }
}

/// out[i, :] = table[ids[i] - first, :] or zeros; s = {tokens, hidden}.
template <class T>
__global__ void embedding_forward(const std::int64_t* ids, const T* table, std::int64_t ldt, std::int64_t table_rows,
                                  std::int64_t first, T* out, std::int64_t ldo, Shape2 s) {
  TP_GRID_STRIDE(i, s.rows * s.cols) {
    const std::int64_t t = i / s.cols, c = i % s.cols, row = ids[t] - first;
    out[t * ldo + c] = row >= 0 && row < table_rows ? table[row * ldt + c] : store<T>(accum_t<T>(0));
  }
}

/// d_table[ids[i] - first, c] += dy[i, c]. One thread per column walks the tokens in order, so
/// repeated ids add up in token order, as on the CPU, with no atomics: deterministic, and parallel
/// over the hidden size (thousands of columns in real models). s = {tokens, hidden}.
template <class T>
__global__ void embedding_backward(const std::int64_t* ids, const T* dy, std::int64_t lddy, std::int64_t first,
                                   T* d_table, std::int64_t ldd, std::int64_t table_rows, Shape2 s) {
  TP_GRID_STRIDE(c, s.cols) {
    for (std::int64_t t = 0; t < s.rows; ++t) {
      const std::int64_t row = ids[t] - first;
      if (row < 0 || row >= table_rows) continue;
      T& d = d_table[row * ldd + c];
      d = store<T>(load(d) + load(dy[t * lddy + c]));
    }
  }
}

}  // namespace tp::kernels

namespace tp::impl {

/// Returns to the host, so it waits for the stream.
inline std::int64_t first_outside(const Cuda& dev, ConstView<std::int64_t> ids, std::int64_t begin, std::int64_t end,
                                  std::int64_t allowed) {
  const Cuda::Scratch<unsigned long long> first(dev, 1);
  dev.activate();
  TP_CUDA_CHECK(cudaMemsetAsync(first.data, 0xff, sizeof(unsigned long long), dev.stream()),
                "clearing first_outside's result on device {}", dev.device());
  kernels::launch(dev, "first_outside", ids.rows, ids.cols, kernels::grid_for(ids.size()), kernels::kThreads,
                  &kernels::first_outside<std::int64_t>, ids.data, ids.size(), begin, end, allowed, first.data);
  unsigned long long host = 0;
  TP_CUDA_CHECK(cudaMemcpyAsync(&host, first.data, sizeof host, cudaMemcpyDeviceToHost, dev.stream()),
                "reading first_outside's result for {}x{} ids on device {}", ids.rows, ids.cols, dev.device());
  dev.synchronize();
  return host == ~0ull ? -1 : static_cast<std::int64_t>(host);
}

template <class T>
void embedding_forward(const Cuda& dev, ConstView<std::int64_t> ids, ConstView<T> table, std::int64_t first,
                       MatrixView<T> out) {
  kernels::launch(dev, "embedding_forward", out.rows, out.cols, kernels::grid_for(out.size()), kernels::kThreads,
                  &kernels::embedding_forward<T>, ids.data, table.data, table.ld, table.rows, first, out.data, out.ld,
                  kernels::Shape2{out.rows, out.cols});
}

template <class T>
void embedding_backward(const Cuda& dev, ConstView<std::int64_t> ids, ConstView<T> dy, std::int64_t first,
                        MatrixView<T> d_table) {
  kernels::launch(dev, "embedding_backward", dy.rows, dy.cols, kernels::grid_for(dy.cols), kernels::kThreads,
                  &kernels::embedding_backward<T>, ids.data, dy.data, dy.ld, first, d_table.data, d_table.ld,
                  d_table.rows, kernels::Shape2{dy.rows, dy.cols});
}

}  // namespace tp::impl
