#pragma once
/// The CUDA side of tp/ops/embedding.hpp. No atomics on values: the gradient adds repeated ids in
/// token order, as on the CPU, so results are bitwise reproducible.

#include <algorithm>
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

/// d_table[ids[t] - first, c] += dy[t, c], parallel over columns and over groups of table rows:
/// block b covers column tile b % col_tiles and the rows with row % groups == b / col_tiles. Each
/// (row, column) is still summed by one thread, in token order, as on the CPU: no atomics, the same
/// bits as one thread per column walking every token, but hidden 8192 runs 32 x groups blocks
/// instead of 32. The ids pass through shared memory a tile at a time. s = {tokens, hidden}.
template <class T>
__global__ void embedding_backward(const std::int64_t* ids, const T* dy, std::int64_t lddy, std::int64_t first,
                                   T* d_table, std::int64_t ldd, std::int64_t table_rows, Shape2 s,
                                   std::int64_t col_tiles, std::int64_t groups) {
  __shared__ std::int64_t tile[kThreads];
  const std::int64_t group = blockIdx.x / col_tiles;
  const std::int64_t c = (blockIdx.x % col_tiles) * blockDim.x + threadIdx.x;
  for (std::int64_t t0 = 0; t0 < s.rows; t0 += blockDim.x) {
    const std::int64_t n = s.rows - t0 < blockDim.x ? s.rows - t0 : blockDim.x;
    if (threadIdx.x < n) tile[threadIdx.x] = ids[t0 + threadIdx.x] - first;
    __syncthreads();
    if (c < s.cols)
      for (std::int64_t j = 0; j < n; ++j) {
        const std::int64_t row = tile[j];  // the same for the whole block: no divergence
        if (row < 0 || row >= table_rows || row % groups != group) continue;
        T& d = d_table[row * ldd + c];
        d = store<T>(load(d) + load(dy[(t0 + j) * lddy + c]));
      }
    __syncthreads();
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
  if (dy.rows == 0 || dy.cols == 0) return;
  // About 512 blocks; each reads every id, so more groups cost id reads (cheap, from shared memory).
  const std::int64_t col_tiles = (dy.cols + kernels::kThreads - 1) / kernels::kThreads;
  const std::int64_t groups = std::clamp<std::int64_t>(512 / col_tiles, 1, std::max<std::int64_t>(1, d_table.rows));
  kernels::launch(dev, "embedding_backward", dy.rows, dy.cols, static_cast<unsigned>(col_tiles * groups),
                  kernels::kThreads, &kernels::embedding_backward<T>, ids.data, dy.data, dy.ld, first, d_table.data,
                  d_table.ld, d_table.rows, kernels::Shape2{dy.rows, dy.cols}, col_tiles, groups);
}

}  // namespace tp::impl
