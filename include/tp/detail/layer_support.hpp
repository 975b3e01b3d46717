#pragma once
/// Pieces the parallel layers share: shape checks, collectives on matrices, column gathers.

#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tp/core/context.hpp"
#include "tp/core/grad_mode.hpp"
#include "tp/core/ops.hpp"
#include "tp/core/partition.hpp"
#include "tp/core/tensor.hpp"
#include "tp/ops/linear.hpp"

namespace tp::detail {

/// Counts the forwards a layer's one saved activation has seen since its last backward, so that a
/// backward never differentiates an input other than the one it belongs to. Forward, forward,
/// backward (two micro-batches in flight, a layer shared by two places, recomputation run too
/// early) would otherwise use the second input for both: it throws instead. A forward under
/// tp::NoGrad replaces the saved input too, and leaves nothing to differentiate. A backward uses
/// up its forward, also when it throws (a wrong gradient shape): run the forward again.
class SavedActivation {
 public:
  void on_forward() {
    // Saturates: a forward-only loop (inference) runs any number of forwards.
    if (!grad_enabled())
      pending_ = 0;
    else if (pending_ < std::numeric_limits<int>::max())
      ++pending_;
  }
  void on_backward(const std::string& layer) {
    const int pending = std::exchange(pending_, 0);
    TP_CHECK(pending != 0,
             "{}: backward called before forward: nothing to differentiate (no forward yet, its backward already "
             "ran, or a forward under tp::NoGrad replaced the saved input)",
             layer);
    TP_CHECK(pending == 1,
             "{}: backward after {} forwards: the layer saves only the last forward's input, so the earlier ones "
             "cannot be differentiated; run forward and backward in pairs (micro-batches, recomputation), and "
             "forwards that need no backward under tp::NoGrad",
             layer, pending);
  }
  /// Marks the saved input as used, as a backward does: a composite layer whose own backward
  /// refused calls this on its parts, which saw the same forwards.
  void forget() { pending_ = 0; }

 private:
  int pending_ = 0;
};

/// Frees each tensor's memory (an empty tensor, no device); ensure() allocates it again.
template <class... Tensors>
void release(Tensors&... ts) {
  ((ts = Tensors()), ...);
}

/// Makes `t` a rows x cols tensor on `ctx`'s device, allocating only when it must grow.
template <class T, class Device>
MatrixView<T> ensure(Tensor<T, Device>& t, const Context<Device>& ctx, std::int64_t rows, std::int64_t cols) {
  if (t.device_ptr() == nullptr) t = Tensor<T, Device>(ctx.device, rows, cols);
  t.resize(rows, cols);
  return t.view();
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

/// Element counts of every rank's block of rows when `rows` rows of width `cols` are split by
/// partition(rows): the counts all_gather_v and reduce_scatter_v take for sequence parallelism.
inline std::vector<std::size_t> row_block_counts(std::int64_t rows, std::int64_t cols, int world) {
  std::vector<std::size_t> counts(world);
  for (int r = 0; r < world; ++r) counts[r] = static_cast<std::size_t>(partition(rows, world, r).size() * cols);
  return counts;
}

/// out [rows, cols] = every rank's block of rows stacked in rank order; rank r's block `shard` holds
/// rows partition(rows, world, r). Sequence parallelism's all-gather along tokens.
template <class T, class Device>
void gather_rows(const Context<Device>& ctx, ConstView<T> shard, MatrixView<T> out) {
  const Range mine = partition(out.rows, ctx.world(), ctx.rank());
  TP_CHECK(shard.rows == mine.size() && shard.cols == out.cols && out.contiguous(),
           "sequence parallel: rank {} of {} holds {}x{} rows, but its share of {} tokens is rows [{}, {}) of width {}",
           ctx.rank(), ctx.world(), shard.rows, shard.cols, out.rows, mine.begin, mine.end, out.cols);
  ctx.device->copy(shard, out.rows_range(mine.begin, mine.size()));
  if (ctx.world() == 1) return;
  const auto counts = row_block_counts(out.rows, out.cols, ctx.world());
  ctx.comm->all_gather_v(out.data + mine.begin * out.cols, out.data, counts, dtype_of<T>, ctx.stream());
}

/// out = this rank's rows partition(full.rows) of the sum over ranks of `full`. Sequence
/// parallelism's reduce-scatter along tokens.
template <class T, class Device>
void reduce_scatter_rows(const Context<Device>& ctx, ConstView<T> full, MatrixView<T> out) {
  const Range mine = partition(full.rows, ctx.world(), ctx.rank());
  TP_CHECK(out.rows == mine.size() && out.cols == full.cols && full.contiguous() && out.contiguous(),
           "sequence parallel: rank {} of {} needs rows [{}, {}) of a {}x{} matrix, output is {}x{}", ctx.rank(),
           ctx.world(), mine.begin, mine.end, full.rows, full.cols, out.rows, out.cols);
  if (ctx.world() == 1) {
    ctx.device->copy(full, out);
    return;
  }
  const auto counts = row_block_counts(full.rows, full.cols, ctx.world());
  ctx.comm->reduce_scatter_v(full.data, out.data, counts, dtype_of<T>, ReduceOp::sum, ctx.stream());
}

/// The full token count of a forward call: `tokens` under sequence parallelism (where the input holds
/// only this rank's rows of it), otherwise the input's rows (and `tokens`, if given, must agree).
inline std::int64_t full_tokens(bool sequence_parallel, std::int64_t input_rows, std::int64_t tokens, int world,
                                int rank, const std::string& layer) {
  if (!sequence_parallel) {
    TP_CHECK(tokens < 0 || tokens == input_rows, "{}: input has {} tokens, but tokens = {} was passed", layer,
             input_rows, tokens);
    return input_rows;
  }
  TP_CHECK(tokens > 0, "{}: under sequence_parallel, forward needs the full token count (got {}); the input holds "
           "only this rank's {} rows", layer, tokens, input_rows);
  const Range mine = partition(tokens, world, rank);
  TP_CHECK(input_rows == mine.size(),
           "{}: under sequence_parallel rank {} of {} must hold rows [{}, {}) of the {} tokens, got {} rows", layer,
           rank, world, mine.begin, mine.end, tokens, input_rows);
  return tokens;
}

/// A linear layer's inference mode (pack_for_inference): its weight's packed copy
/// (tp::ops::pack_weight), which forwards of more tokens than the streaming kernels take (the
/// prefill) read, and the rule that keeps the copy from going stale: while packed, every call of
/// the layer that could change the weight or hand it out for writing (parameters(), load_full,
/// the mutable weight accessors, backward) throws, naming the layer and saying to unpack() first.
/// Packing is a mode, not the packed copy's presence: the types and devices that hold no copy
/// (doubles, the 16-bit types, tp::Cuda) follow the same rule, so code behaves alike on all.
template <class T, class Device>
class InferencePacking {
 public:
  void pack(const std::shared_ptr<Device>& device, ConstView<T> w) {
    packed_ = tp::ops::pack_weight<T>(device, w);
    on_ = true;
  }
  void unpack() {
    packed_ = PackedWeight<T, Device>();
    on_ = false;
  }
  bool on() const { return on_; }
  const PackedWeight<T, Device>& weight() const { return packed_; }
  /// Bytes of the packed copy (beside the plain weight).
  std::int64_t bytes() const { return packed_.bytes(); }
  /// Throws unless unpacked: `what` could change the weight while its packed copy lives.
  void check_unpacked(const std::string& layer, std::string_view what) const {
    TP_CHECK(!on_,
             "{}: {} while the layer is packed for inference (pack_for_inference): its packed copy of the weight would "
             "go stale; call unpack() first",
             layer, what);
  }

 private:
  PackedWeight<T, Device> packed_;
  bool on_ = false;
};

}  // namespace tp::detail
