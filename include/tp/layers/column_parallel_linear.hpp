#pragma once
/// Y = X A^T + b with A split by output features (rows of the [out, in] weight, as torch.nn.Linear
/// stores it): rank r holds A_r and computes Y_r = X A_r^T, so Y = [Y_0 | Y_1 | ...]. The output
/// stays sharded for a following RowParallelLinear, or is gathered (`gather_output`). Backward
/// all-reduces the input gradient (Megatron's f). Output features that do not divide the world
/// size are split unevenly: 10 over 3 ranks gives 4, 3, 3.
///
/// Sequence parallelism (Megatron's `sequence_parallel`): the input arrives split along tokens
/// (rank r holds rows partition(tokens, world, r)), is all-gathered before the GEMM, and the input
/// gradient is reduce-scattered back along tokens instead of all-reduced.
///
/// Stacked weights (`stacked = s`): the full [out, in] weight is s matrices of out / s rows on top
/// of each other (SwiGLU's [gate; up]); rank r holds rows partition(out / s, world, r) of each, so
/// its shard is [gate_r; up_r] and its output [tokens, s * out_r] has the blocks side by side.
///
/// Inference mode (pack_for_inference, unpack): the weight is also held packed for the device's
/// GEMMs (tp::ops::pack_weight), one more copy of it in memory, which forwards of more tokens than
/// the streaming kernels take (the prefill) read; decode keeps the plain weight. While packed,
/// whatever could change the weight (parameters(), load_full, weight(), backward) throws: unpack()
/// first (detail::InferencePacking).

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "tp/core/context.hpp"
#include "tp/core/parameter.hpp"
#include "tp/detail/layer_support.hpp"

namespace tp {

struct ColumnParallelOptions {
  bool bias = true;
  /// All-gather the output to full width; otherwise each rank returns its [tokens, out_r] shard.
  bool gather_output = false;
  /// Leave the bias out of the output, for a caller that fuses it into the next op (bias() gives it;
  /// backward still accumulates its gradient from the output gradient).
  bool skip_bias_add = false;
  /// Parameter names are "<name>.weight" and "<name>.bias"; they key the initializer and checkpoints.
  std::string name = "column";
  std::uint64_t seed = 0;
  /// Input split along tokens; forward takes the full token count. Excludes gather_output.
  bool sequence_parallel = false;
  /// Number of equal matrices stacked in the weight, each split the same way (2 for [gate; up]).
  std::int64_t stacked = 1;
};

template <class T, class Device = Cpu>
class ColumnParallelLinear {
 public:
  using Options = ColumnParallelOptions;

  ColumnParallelLinear(Context<Device> ctx, std::int64_t in_features, std::int64_t out_features, Options options = {})
      : ctx_(std::move(ctx)), in_(in_features), out_(out_features), options_(std::move(options)) {
    TP_CHECK(in_ > 0, "{}: in_features must be positive, got {}", options_.name, in_);
    TP_CHECK(options_.stacked > 0 && out_ % options_.stacked == 0,
             "{}: out_features = {} is not {} stacked matrices of equal height", options_.name, out_, options_.stacked);
    TP_CHECK(!(options_.gather_output && (options_.sequence_parallel || options_.stacked > 1)),
             "{}: gather_output cannot be combined with sequence_parallel or stacked = {}", options_.name,
             options_.stacked);
    const Range range = partition_nonempty(out_ / options_.stacked, ctx_.world(), ctx_.rank(), "out_features");
    range_ = range;
    const std::int64_t local = options_.stacked * range.size();
    weight_ = Tensor<T, Device>(ctx_.device, local, in_);
    weight_grad_ = Tensor<T, Device>(ctx_.device, local, in_);
    if (options_.bias) {
      bias_ = Tensor<T, Device>(ctx_.device, 1, local);
      bias_grad_ = Tensor<T, Device>(ctx_.device, 1, local);
      ctx_.device->fill(bias_.view(), T(0));
    }
    zero_grad();
    for (const auto& p : parameters())
      if (p.name.ends_with(".weight"))
        init_uniform(*ctx_.device, p, options_.seed, 1.0 / std::sqrt(static_cast<double>(in_)));
  }

  /// [tokens, in] -> [tokens, out_r], or [tokens, out] with gather_output. Under sequence_parallel
  /// x is this rank's [partition(tokens).size(), in] rows and `tokens` the full count. The result
  /// lives in this layer and stays valid until the next forward.
  const Tensor<T, Device>& forward(ConstView<T> x, std::int64_t tokens = -1) {
    TP_CHECK(x.cols == in_ && (x.rows > 0 || options_.sequence_parallel), "{}: input is {}x{}, expected [tokens > 0, {}]",
             options_.name, x.rows, x.cols, in_);
    tokens = detail::full_tokens(options_.sequence_parallel, x.rows, tokens, ctx_.world(), ctx_.rank(), options_.name);
    const Device& dev = *ctx_.device;
    MatrixView<T> input = detail::ensure(input_, ctx_, tokens, in_);
    if (options_.sequence_parallel)
      detail::gather_rows(ctx_, x, input);
    else
      dev.copy(x, input);
    MatrixView<T> y = detail::ensure(shard_out_, ctx_, tokens, options_.stacked * range_.size());
    const bool add_bias = options_.bias && !options_.skip_bias_add;
    const ConstView<T> bias = add_bias ? ConstView<T>(bias_.view()) : ConstView<T>{};
    if (packing_.on())
      tp::ops::linear_forward<T>(dev, ConstView<T>(input), weight_.view(), packing_.weight(), bias, y);
    else
      tp::ops::linear_forward<T>(dev, ConstView<T>(input), weight_.view(), bias, y);
    saved_.on_forward();
    if (!options_.gather_output) return shard_out_;
    detail::gather_columns(ctx_, ConstView<T>(y), out_, gather_scratch_, detail::ensure(full_out_, ctx_, tokens, out_));
    return full_out_;
  }

  /// Takes dL/dY (the shard, or full width with gather_output), accumulates the weight and bias
  /// gradients, and returns dL/dX [tokens, in], all-reduced over the group (under sequence_parallel:
  /// reduce-scattered, this rank's [partition(tokens).size(), in] rows).
  const Tensor<T, Device>& backward(ConstView<T> grad_output) {
    packing_.check_unpacked(options_.name, "backward");
    saved_.on_backward(options_.name);
    const std::int64_t tokens = input_.rows(), width = options_.gather_output ? out_ : options_.stacked * range_.size();
    TP_CHECK(grad_output.rows == tokens && grad_output.cols == width,
             "{}: output gradient is {}x{}, expected {}x{} (rank {} of {})", options_.name, grad_output.rows,
             grad_output.cols, tokens, width, ctx_.rank(), ctx_.world());
    const ConstView<T> g = options_.gather_output ? grad_output.cols_range(range_.begin, range_.size()) : grad_output;
    const Device& dev = *ctx_.device;
    MatrixView<T> dx = detail::ensure(options_.sequence_parallel ? grad_full_ : grad_input_, ctx_, tokens, in_);
    tp::ops::linear_backward<T>(dev, g, input_.view(), weight_.view(), T(0), dx, T(1), weight_grad_.view());
    if (options_.bias) tp::ops::add_bias_grad(dev, g, bias_grad_.view());
    if (!options_.sequence_parallel) {
      detail::all_reduce_sum(ctx_, dx);
      return grad_input_;
    }
    const Range mine = partition(tokens, ctx_.world(), ctx_.rank());
    detail::reduce_scatter_rows(ctx_, ConstView<T>(dx), detail::ensure(grad_input_, ctx_, mine.size(), in_));
    return grad_input_;
  }

  /// Marks the saved input as used without a backward: the next backward needs a new forward.
  void forget_forward() { saved_.forget(); }

  /// Frees the buffers of forward and backward (saved input, outputs, scratch), keeping weights
  /// and gradients; the next forward allocates them again. Activation recomputation calls it
  /// between a layer's forward and its rerun (tp::models::Transformer, Recompute::full).
  void release_activations() { detail::release(input_, shard_out_, full_out_, gather_scratch_, grad_input_, grad_full_); }

  void zero_grad() {
    ctx_.device->fill(weight_grad_.view(), T(0));
    if (options_.bias) ctx_.device->fill(bias_grad_.view(), T(0));
  }

  /// The weight, then the bias if there is one; with stacked = s, s records for each (same name,
  /// one per stacked block), each placing its block of the shard in the full tensor.
  std::vector<Parameter<T>> parameters() {
    packing_.check_unpacked(options_.name, "parameters()");
    std::vector<Parameter<T>> ps;
    const std::int64_t n = range_.size(), height = out_ / options_.stacked;
    for (std::int64_t i = 0; i < options_.stacked; ++i) {
      const Range rows{i * height + range_.begin, i * height + range_.end};
      ps.push_back({options_.name + ".weight", weight_.view().rows_range(i * n, n),
                    weight_grad_.view().rows_range(i * n, n), out_, in_, rows, {0, in_}});
    }
    if (options_.bias)
      for (std::int64_t i = 0; i < options_.stacked; ++i) {
        const Range cols{i * height + range_.begin, i * height + range_.end};
        ps.push_back({options_.name + ".bias",
                      bias_.view().cols_range(i * n, n),
                      bias_grad_.view().cols_range(i * n, n),
                      1,
                      out_,
                      {0, 1},
                      cols,
                      0,
                      false});
      }
    return ps;
  }

  /// Loads this rank's rows of a full [out, in] host weight (and [1, out] bias).
  void load_full(ConstView<T> weight, ConstView<T> bias = {}) {
    packing_.check_unpacked(options_.name, "load_full");
    for (const auto& p : parameters()) load_from_full(*ctx_.device, p, p.name.ends_with(".bias") ? bias : weight);
  }

  /// The last forward's result (what forward returned), e.g. the activation input a fused MLP needs in backward.
  const Tensor<T, Device>& output() const { return options_.gather_output ? full_out_ : shard_out_; }
  MatrixView<T> weight() {
    packing_.check_unpacked(options_.name, "weight() (writable)");
    return weight_.view();
  }
  ConstView<T> weight() const { return weight_.view(); }
  MatrixView<T> bias() { return bias_.view(); }
  MatrixView<T> weight_grad() { return weight_grad_.view(); }
  MatrixView<T> bias_grad() { return bias_grad_.view(); }
  /// The output features (rows of the full weight) this rank holds; with stacked > 1, the rows it
  /// holds of each stacked block, relative to the block.
  Range output_range() const { return range_; }
  std::int64_t in_features() const { return in_; }
  std::int64_t out_features() const { return out_; }
  const Options& options() const { return options_; }
  const Context<Device>& context() const { return ctx_; }

  /// Inference mode: packs the weight (see the top); again after unpack() to take changed weights.
  void pack_for_inference() { packing_.pack(ctx_.device, weight_.view()); }
  /// Back to training mode: frees the packed copy.
  void unpack() { packing_.unpack(); }
  bool packed_for_inference() const { return packing_.on(); }
  /// The packed copy's bytes (0 unpacked, and where the device or type packs nothing).
  std::int64_t packed_bytes() const { return packing_.bytes(); }
  /// What the prefill's forward reads while packed (tp_bench_prefill times it on its own).
  const PackedWeight<T, Device>& packed_weight() const { return packing_.weight(); }

 private:
  Context<Device> ctx_;
  std::int64_t in_, out_;
  Options options_;
  Range range_;
  Tensor<T, Device> weight_, bias_, weight_grad_, bias_grad_;
  Tensor<T, Device> input_, shard_out_, full_out_, gather_scratch_, grad_input_, grad_full_;
  detail::SavedActivation saved_;
  detail::InferencePacking<T, Device> packing_;
};

}  // namespace tp
