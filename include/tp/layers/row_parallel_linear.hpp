#pragma once
/// Y = X A^T + b with A split by input features (columns of the [out, in] weight): rank r holds
/// A_r and the matching columns X_r of the input, computes X_r A_r^T, and Y = sum_r X_r A_r^T
/// (all-reduce). The bias is added once, after the reduce. Backward keeps the input gradient
/// sharded (Megatron's g), or gathers it when the layer took the full input.
///
/// Sequence parallelism (Megatron's `sequence_parallel`): the partial products are reduce-scattered
/// along tokens instead of all-reduced, so rank r gets rows partition(tokens, world, r) of Y (the
/// bias added to those rows); backward all-gathers the output gradient along tokens first. The
/// bias gradient is then taken over all tokens, so it is the full gradient on every rank.
///
/// Inference mode (pack_for_inference, unpack): as ColumnParallelLinear's.

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "tp/core/context.hpp"
#include "tp/core/parameter.hpp"
#include "tp/detail/layer_support.hpp"

namespace tp {

struct RowParallelOptions {
  bool bias = true;
  /// The input arrives split by features ([tokens, in_r], as a ColumnParallelLinear leaves it);
  /// otherwise the layer takes the full [tokens, in] input and uses its own columns.
  bool input_is_parallel = true;
  /// Leave the bias out of the output (bias() gives it); backward still accumulates its gradient.
  bool skip_bias_add = false;
  std::string name = "row";
  std::uint64_t seed = 0;
  /// Reduce-scatter the output along tokens; needs input_is_parallel.
  bool sequence_parallel = false;
};

template <class T, class Device = Cpu>
class RowParallelLinear {
 public:
  using Options = RowParallelOptions;

  RowParallelLinear(Context<Device> ctx, std::int64_t in_features, std::int64_t out_features, Options options = {})
      : ctx_(std::move(ctx)), in_(in_features), out_(out_features), options_(std::move(options)) {
    TP_CHECK(out_ > 0, "{}: out_features must be positive, got {}", options_.name, out_);
    TP_CHECK(!options_.sequence_parallel || options_.input_is_parallel,
             "{}: sequence_parallel needs input_is_parallel", options_.name);
    range_ = partition_nonempty(in_, ctx_.world(), ctx_.rank(), "in_features");
    weight_ = Tensor<T, Device>(ctx_.device, out_, range_.size());
    weight_grad_ = Tensor<T, Device>(ctx_.device, out_, range_.size());
    if (options_.bias) {
      bias_ = Tensor<T, Device>(ctx_.device, 1, out_);
      bias_grad_ = Tensor<T, Device>(ctx_.device, 1, out_);
      ctx_.device->fill(bias_.view(), T(0));
    }
    zero_grad();
    init_uniform(*ctx_.device, parameters().front(), options_.seed, 1.0 / std::sqrt(static_cast<double>(in_)));
  }

  /// [tokens, in_r] (or [tokens, in] without input_is_parallel) -> [tokens, out], identical on
  /// every rank; under sequence_parallel -> this rank's [partition(tokens).size(), out] rows. The
  /// result lives in this layer and stays valid until the next forward.
  const Tensor<T, Device>& forward(ConstView<T> x) {
    const std::int64_t width = options_.input_is_parallel ? range_.size() : in_;
    TP_CHECK(x.cols == width && x.rows > 0, "{}: input is {}x{}, expected [tokens > 0, {}] on rank {} of {}",
             options_.name, x.rows, x.cols, width, ctx_.rank(), ctx_.world());
    const ConstView<T> xr = options_.input_is_parallel ? x : x.cols_range(range_.begin, range_.size());
    const Device& dev = *ctx_.device;
    // Multiply the saved copy, never the caller's buffer: x may be this layer's own output (a
    // square layer applied twice), which the GEMM below overwrites.
    const MatrixView<T> saved = detail::ensure(input_, ctx_, x.rows, range_.size());
    dev.copy(xr, saved);
    MatrixView<T> y = detail::ensure(options_.sequence_parallel ? full_ : output_, ctx_, x.rows, out_);
    if (packing_.on())
      tp::ops::linear_forward<T>(dev, ConstView<T>(saved), weight_.view(), packing_.weight(), ConstView<T>{}, y);
    else
      tp::ops::linear_forward<T>(dev, ConstView<T>(saved), weight_.view(), ConstView<T>{}, y);
    if (options_.sequence_parallel) {
      const Range mine = partition(x.rows, ctx_.world(), ctx_.rank());
      MatrixView<T> shard = detail::ensure(output_, ctx_, mine.size(), out_);
      detail::reduce_scatter_rows(ctx_, ConstView<T>(y), shard);
      y = shard;
    } else {
      detail::all_reduce_sum(ctx_, y);
    }
    if (options_.bias && !options_.skip_bias_add) tp::ops::add_bias(dev, y, bias_.view());
    saved_.on_forward();
    return output_;
  }

  /// Takes dL/dY [tokens, out] (under sequence_parallel this rank's rows of it), accumulates the
  /// weight and bias gradients, and returns dL/dX_r [tokens, in_r], or the gathered [tokens, in]
  /// when the layer took the full input.
  const Tensor<T, Device>& backward(ConstView<T> grad_output) {
    packing_.check_unpacked(options_.name, "backward");
    saved_.on_backward(options_.name);
    const std::int64_t tokens = input_.rows();
    const std::int64_t rows = options_.sequence_parallel ? partition(tokens, ctx_.world(), ctx_.rank()).size() : tokens;
    TP_CHECK(grad_output.rows == rows && grad_output.cols == out_, "{}: output gradient is {}x{}, expected {}x{}",
             options_.name, grad_output.rows, grad_output.cols, rows, out_);
    const Device& dev = *ctx_.device;
    if (options_.sequence_parallel) {
      MatrixView<T> full = detail::ensure(full_, ctx_, tokens, out_);
      detail::gather_rows(ctx_, grad_output, full);
      grad_output = full;
    }
    MatrixView<T> dx = detail::ensure(grad_shard_, ctx_, tokens, range_.size());
    tp::ops::linear_backward<T>(dev, grad_output, input_.view(), weight_.view(), T(0), dx, T(1), weight_grad_.view());
    if (options_.bias) tp::ops::add_bias_grad(dev, grad_output, bias_grad_.view());
    if (options_.input_is_parallel) return grad_shard_;
    detail::gather_columns(ctx_, ConstView<T>(dx), in_, gather_scratch_, detail::ensure(grad_full_, ctx_, tokens, in_));
    return grad_full_;
  }

  /// Marks the saved input as used without a backward: the next backward needs a new forward.
  void forget_forward() { saved_.forget(); }

  /// Frees the buffers of forward and backward (saved input, outputs, scratch), keeping weights
  /// and gradients; the next forward allocates them again. Activation recomputation calls it
  /// between a layer's forward and its rerun (tp::models::Transformer, Recompute::full).
  void release_activations() { detail::release(input_, output_, full_, grad_shard_, grad_full_, gather_scratch_); }

  void zero_grad() {
    ctx_.device->fill(weight_grad_.view(), T(0));
    if (options_.bias) ctx_.device->fill(bias_grad_.view(), T(0));
  }

  /// Weight first, then the (replicated) bias if there is one.
  std::vector<Parameter<T>> parameters() {
    packing_.check_unpacked(options_.name, "parameters()");
    std::vector<Parameter<T>> ps{{options_.name + ".weight", weight_.view(), weight_grad_.view(), out_, in_,
                                  {0, out_}, range_}};
    if (options_.bias)
      ps.push_back({options_.name + ".bias", bias_.view(), bias_grad_.view(), 1, out_, {0, 1}, {0, out_}, 0, false});
    return ps;
  }

  /// Loads this rank's columns of a full [out, in] host weight (and the [1, out] bias).
  void load_full(ConstView<T> weight, ConstView<T> bias = {}) {
    packing_.check_unpacked(options_.name, "load_full");
    const auto ps = parameters();
    load_from_full(*ctx_.device, ps[0], weight);
    if (options_.bias) load_from_full(*ctx_.device, ps[1], bias);
  }

  MatrixView<T> weight() {
    packing_.check_unpacked(options_.name, "weight() (writable)");
    return weight_.view();
  }
  ConstView<T> weight() const { return weight_.view(); }
  MatrixView<T> bias() { return bias_.view(); }
  MatrixView<T> weight_grad() { return weight_grad_.view(); }
  MatrixView<T> bias_grad() { return bias_grad_.view(); }
  /// The input features (columns of the full weight) this rank holds.
  Range input_range() const { return range_; }
  std::int64_t in_features() const { return in_; }
  std::int64_t out_features() const { return out_; }
  const Options& options() const { return options_; }
  const Context<Device>& context() const { return ctx_; }

  /// Inference mode (ColumnParallelLinear::pack_for_inference).
  void pack_for_inference() { packing_.pack(ctx_.device, weight_.view()); }
  void unpack() { packing_.unpack(); }
  bool packed_for_inference() const { return packing_.on(); }
  std::int64_t packed_bytes() const { return packing_.bytes(); }
  const PackedWeight<T, Device>& packed_weight() const { return packing_.weight(); }

 private:
  Context<Device> ctx_;
  std::int64_t in_, out_;
  Options options_;
  Range range_;
  Tensor<T, Device> weight_, bias_, weight_grad_, bias_grad_;
  Tensor<T, Device> input_, output_, full_, grad_shard_, grad_full_, gather_scratch_;
  detail::SavedActivation saved_;
  detail::InferencePacking<T, Device> packing_;
};

}  // namespace tp
