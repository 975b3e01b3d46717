#pragma once
/// Column sums over many rows, parallel over the rows as well. One thread per column alone gives
/// cols / 256 blocks that each walk every row (32 blocks for hidden 8192 on a GPU of 132
/// multiprocessors): that was the shape of the bias and norm-parameter gradients in backward. Here
/// the rows are cut into blocks: pass 1 writes one partial sum per (row block, column), pass 2 adds
/// each column's partials in block order into the stored gradient. The cut depends only on the
/// shape, so every run adds in the same order and results are bitwise reproducible.

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "tp/device/cuda/launch.cuh"

namespace tp::kernels {

/// How the rows of a [rows, cols] column reduction are cut: pass 1 runs col_tiles x count blocks
/// of kThreads threads, block b covering column tile b % col_tiles and row block b / col_tiles.
struct RowBlocks {
  std::int64_t col_tiles = 1;  ///< tiles of kThreads columns
  std::int64_t count = 1;      ///< row blocks
  std::int64_t rows_each = 1;  ///< rows per block (the last may have fewer)
};

/// About 512 blocks (a few waves on a large GPU), with at least 16 rows a block so that the
/// partials stay few.
inline RowBlocks row_blocks(std::int64_t rows, std::int64_t cols) {
  constexpr std::int64_t kTargetBlocks = 512, kMinRows = 16;
  RowBlocks b;
  b.col_tiles = std::max<std::int64_t>(1, (cols + kThreads - 1) / kThreads);
  const std::int64_t most = std::max<std::int64_t>(1, rows / kMinRows);
  const std::int64_t want = std::clamp<std::int64_t>((kTargetBlocks + b.col_tiles - 1) / b.col_tiles, 1, most);
  b.rows_each = std::max<std::int64_t>(1, (rows + want - 1) / want);
  b.count = std::max<std::int64_t>(1, (rows + b.rows_each - 1) / b.rows_each);
  return b;
}

/// This thread's column and row range in pass 1; false when the column is past the end.
__device__ __forceinline__ bool row_block_range(const RowBlocks& b, std::int64_t rows, std::int64_t cols,
                                                std::int64_t& c, std::int64_t& r0, std::int64_t& r1) {
  const std::int64_t tile = blockIdx.x % b.col_tiles, block = blockIdx.x / b.col_tiles;
  c = tile * blockDim.x + threadIdx.x;
  r0 = block * b.rows_each;
  r1 = r0 + b.rows_each < rows ? r0 + b.rows_each : rows;
  return c < cols;
}

/// Pass 2: out[c] += sum over the row blocks of partial[block, c], in block order, rounded to T once.
template <class T, class A>
__global__ void add_column_partials(const A* partial, std::int64_t count, std::int64_t cols, T* out) {
  TP_GRID_STRIDE(c, cols) {
    A acc = 0;
    for (std::int64_t b = 0; b < count; ++b) acc += partial[b * cols + c];
    if constexpr (std::is_same_v<A, double>)
      out[c] = store_double<T>(static_cast<double>(load(out[c])) + acc);
    else
      out[c] = store<T>(load(out[c]) + acc);
  }
}

}  // namespace tp::kernels
