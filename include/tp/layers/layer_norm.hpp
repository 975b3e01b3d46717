#pragma once
/// LayerNorm over the hidden dimension (torch.nn.LayerNorm(hidden)): y = (x - mean) / sqrt(var +
/// eps) * weight + bias per row, with a replicated [1, hidden] weight (init 1) and bias (init 0).
///
/// Under tensor parallelism (no sequence parallelism) the layer norm sits between the parallel
/// blocks on full activations that are identical on every rank, so every rank computes the same
/// output and the same weight and bias gradients: no reduction is needed, and the optimizer keeps
/// the replicated copies identical.
///
/// With `sequence_parallel` each rank normalizes only its rows partition(tokens, world, rank) of
/// the tokens (possibly none: 2 tokens on 4 ranks), so its weight and bias gradients are partial
/// sums: backward all-reduces this call's contribution over the group before adding it to the
/// accumulated gradients (Megatron all-reduces the "sequence_parallel" gradients the same way), so
/// every rank holds the full gradient and the replicas stay identical.

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "tp/core/context.hpp"
#include "tp/core/parameter.hpp"
#include "tp/detail/layer_support.hpp"
#include "tp/ops/norm.hpp"
#include "tp/ops/reduce.hpp"

namespace tp {

struct LayerNormOptions {
  double eps = 1e-5;
  /// Parameter names are "<name>.weight" and "<name>.bias".
  std::string name = "layer_norm";
  /// The input is this rank's rows of the tokens (sequence parallelism): the weight and bias
  /// gradients are all-reduced over the group in backward, and zero-row inputs are accepted.
  bool sequence_parallel = false;
};

template <class T, class Device = Cpu>
class LayerNorm {
 public:
  using Options = LayerNormOptions;

  LayerNorm(Context<Device> ctx, std::int64_t hidden, Options options = {})
      : ctx_(std::move(ctx)), hidden_(hidden), options_(std::move(options)) {
    TP_CHECK(hidden_ > 0, "{}: hidden size must be positive, got {}", options_.name, hidden_);
    TP_CHECK(options_.eps > 0 && std::isfinite(options_.eps), "{}: eps must be positive and finite, got {}",
             options_.name, options_.eps);
    weight_ = Tensor<T, Device>(ctx_.device, 1, hidden_);
    bias_ = Tensor<T, Device>(ctx_.device, 1, hidden_);
    weight_grad_ = Tensor<T, Device>(ctx_.device, 1, hidden_);
    bias_grad_ = Tensor<T, Device>(ctx_.device, 1, hidden_);
    ctx_.device->fill(weight_.view(), T(1));
    ctx_.device->fill(bias_.view(), T(0));
    zero_grad();
  }

  /// [tokens, hidden] -> [tokens, hidden] (under sequence_parallel: this rank's rows, maybe none).
  /// The returned tensor is the layer's own buffer: its contents change at the next forward, and
  /// views taken from it dangle when that forward has more tokens (the buffer grows).
  const Tensor<T, Device>& forward(ConstView<T> x) {
    TP_CHECK(x.cols == hidden_ && (x.rows > 0 || options_.sequence_parallel),
             "{}: input is {}x{}, expected [tokens > 0, {}]", options_.name, x.rows, x.cols, hidden_);
    const Device& dev = *ctx_.device;
    const MatrixView<T> saved = detail::ensure(input_, ctx_, x.rows, hidden_);
    dev.copy(x, saved);
    // Normalize the saved copy: x may be this layer's own output buffer (ln(ln(x))).
    tp::ops::layer_norm(dev, ConstView<T>(saved), weight_.view(), bias_.view(),
                        detail::ensure(output_, ctx_, x.rows, hidden_), detail::ensure(mean_, ctx_, x.rows, 1),
                        detail::ensure(rstd_, ctx_, x.rows, 1), options_.eps);
    saved_.on_forward();
    return output_;
  }

  /// Takes dL/dY, accumulates the weight and bias gradients (under sequence_parallel summed over
  /// the group), returns dL/dX.
  const Tensor<T, Device>& backward(ConstView<T> grad_output) {
    saved_.on_backward(options_.name);
    TP_CHECK(grad_output.rows == input_.rows() && grad_output.cols == hidden_,
             "{}: output gradient is {}x{}, expected {}x{}", options_.name, grad_output.rows, grad_output.cols,
             input_.rows(), hidden_);
    const Device& dev = *ctx_.device;
    MatrixView<T> dx = detail::ensure(grad_input_, ctx_, input_.rows(), hidden_);
    if (!options_.sequence_parallel || ctx_.world() == 1) {
      tp::ops::layer_norm_backward(dev, input_.view(), weight_.view(), mean_.view(), rstd_.view(), grad_output, dx,
                                   weight_grad_.view(), bias_grad_.view());
      return grad_input_;
    }
    // This call's weight and bias gradients in one [2, hidden] buffer, summed over the group in one
    // all-reduce, then accumulated (reducing the accumulated sums would count earlier calls again).
    MatrixView<T> partial = detail::ensure(partial_grads_, ctx_, 2, hidden_);
    dev.fill(partial, T(0));
    tp::ops::layer_norm_backward(dev, input_.view(), weight_.view(), mean_.view(), rstd_.view(), grad_output, dx,
                                 partial.rows_range(0, 1), partial.rows_range(1, 1));
    detail::all_reduce_sum(ctx_, partial);
    tp::ops::add(dev, ConstView<T>(partial.rows_range(0, 1)), weight_grad_.view());
    tp::ops::add(dev, ConstView<T>(partial.rows_range(1, 1)), bias_grad_.view());
    return grad_input_;
  }

  /// Frees the buffers of forward and backward (saved input, outputs, scratch), keeping weights
  /// and gradients; the next forward allocates them again. Activation recomputation calls it
  /// between a layer's forward and its rerun (tp::models::Transformer, Recompute::full).
  void release_activations() { detail::release(input_, output_, mean_, rstd_, grad_input_, partial_grads_); }

  void zero_grad() {
    ctx_.device->fill(weight_grad_.view(), T(0));
    ctx_.device->fill(bias_grad_.view(), T(0));
  }

  /// Weight, then bias; both replicated (every rank holds the full [1, hidden]).
  std::vector<Parameter<T>> parameters() {
    return {
        {options_.name + ".weight", weight_.view(), weight_grad_.view(), 1, hidden_, {0, 1}, {0, hidden_}, 0, false},
        {options_.name + ".bias", bias_.view(), bias_grad_.view(), 1, hidden_, {0, 1}, {0, hidden_}, 0, false}};
  }

  MatrixView<T> weight() { return weight_.view(); }
  MatrixView<T> bias() { return bias_.view(); }
  MatrixView<T> weight_grad() { return weight_grad_.view(); }
  MatrixView<T> bias_grad() { return bias_grad_.view(); }
  std::int64_t hidden() const { return hidden_; }
  const Options& options() const { return options_; }

 private:
  Context<Device> ctx_;
  std::int64_t hidden_;
  Options options_;
  Tensor<T, Device> weight_, bias_, weight_grad_, bias_grad_;
  Tensor<T, Device> input_, output_, mean_, rstd_, grad_input_, partial_grads_;
  detail::SavedActivation saved_;
};

}  // namespace tp
