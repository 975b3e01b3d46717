#pragma once
/// Pieces the parallel layers share: shape checks, collectives on matrices, column gathers.

#include <cstdint>
#include <vector>

#include "tp/core/context.hpp"
#include "tp/core/ops.hpp"
#include "tp/core/partition.hpp"
#include "tp/core/tensor.hpp"

namespace tp::detail {

/// Makes `t` a rows x cols tensor on `ctx`'s device, allocating only when it must grow.
template <class T, class Device>
MatrixView<T> ensure(Tensor<T, Device>& t, const Context<Device>& ctx, std::int64_t rows, std::int64_t cols) {
  if (t.device_ptr() == nullptr) t = Tensor<T, Device>(ctx.device, rows, cols);
  t.resize(rows, cols);
  return t.view();
}

/// y = x w^T + bias (bias may be empty): one fused GEMM where the device offers a bias epilogue
/// (tp::Cuda's cuBLASLt), a GEMM then add_bias elsewhere. Same result, one pass over y fewer.
template <class T, class Device>
void linear_forward(const Device& dev, ConstView<T> x, ConstView<T> w, ConstView<T> bias, MatrixView<T> y) {
  if (bias.data == nullptr) {
    dev.gemm(Op::n, Op::t, T(1), x, w, T(0), y);
  } else if constexpr (requires { dev.gemm_bias(Op::n, Op::t, T(1), x, w, T(0), y, bias); }) {
    dev.gemm_bias(Op::n, Op::t, T(1), x, w, T(0), y, bias);
  } else {
    dev.gemm(Op::n, Op::t, T(1), x, w, T(0), y);
    dev.add_bias(y, bias);
  }
}

/// Sums a contiguous matrix over the group, in place.
template <class T, class Device>
void all_reduce_sum(const Context<Device>& ctx, MatrixView<T> x) {
  if (ctx.world() == 1) return;
  TP_CHECK(x.contiguous(), "all_reduce needs a contiguous matrix, got ld {} for {} columns", x.ld, x.cols);
  ctx.comm->all_reduce(x.data, x.data, static_cast<std::size_t>(x.size()), dtype_of<T>, ReduceOp::sum, ctx.stream());
}

/// out = [shard_0 | shard_1 | ...]: concatenates every rank's column block (widths from
/// `partition(full_cols)`), through one variable-count all-gather into `scratch`.
template <class T, class Device>
void gather_columns(const Context<Device>& ctx, ConstView<T> shard, std::int64_t full_cols, Tensor<T, Device>& scratch,
                    MatrixView<T> out) {
  const std::int64_t rows = shard.rows;
  const Device& dev = *ctx.device;
  if (ctx.world() == 1) {
    dev.copy(shard, out);
    return;
  }
  std::vector<std::size_t> counts(ctx.world());
  for (int r = 0; r < ctx.world(); ++r) counts[r] = static_cast<std::size_t>(rows * partition(full_cols, ctx.world(), r).size());
  MatrixView<T> flat = ensure(scratch, ctx, 1, rows * full_cols);
  const Range mine = partition(full_cols, ctx.world(), ctx.rank());
  const std::size_t offset = static_cast<std::size_t>(rows * mine.begin);
  dev.copy(shard, MatrixView<T>(flat.data + offset, rows, mine.size()));
  ctx.comm->all_gather_v(flat.data + offset, flat.data, counts, dtype_of<T>, ctx.stream());
  for (int r = 0; r < ctx.world(); ++r) {
    const Range cols = partition(full_cols, ctx.world(), r);
    dev.copy(ConstView<T>(flat.data + rows * cols.begin, rows, cols.size()), out.cols_range(cols.begin, cols.size()));
  }
}

}  // namespace tp::detail
