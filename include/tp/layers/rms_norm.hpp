#pragma once
/// RMSNorm over the hidden dimension (Llama's LlamaRMSNorm, also Qwen2's and Mistral's): y = x /
/// sqrt(mean(x^2) + eps) * weight per row, with a replicated [1, hidden] weight (init 1) and no
/// bias. Statistics in double.
///
/// Tensor parallelism and sequence parallelism as for LayerNorm (layers/layer_norm.hpp): on full
/// activations every rank computes the same output and weight gradient; with `sequence_parallel`
/// each rank normalizes its rows partition(tokens, world, rank) (possibly none) and backward
/// all-reduces this call's weight gradient over the group before accumulating it, so every rank
/// holds the full gradient.

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

struct RMSNormOptions {
  /// Llama's rms_norm_eps (1e-6; Llama 2 and Qwen2 checkpoints set 1e-5 or 1e-6 in config.json).
  double eps = 1e-6;
  /// The parameter is "<name>.weight".
  std::string name = "rms_norm";
  /// The input is this rank's rows of the tokens (sequence parallelism): the weight gradient is
  /// all-reduced over the group in backward, and zero-row inputs are accepted.
  bool sequence_parallel = false;
};

template <class T, class Device = Cpu>
class RMSNorm {
 public:
  using Options = RMSNormOptions;

  RMSNorm(Context<Device> ctx, std::int64_t hidden, Options options = {})
      : ctx_(std::move(ctx)), hidden_(hidden), options_(std::move(options)) {
    TP_CHECK(hidden_ > 0, "{}: hidden size must be positive, got {}", options_.name, hidden_);
    TP_CHECK(options_.eps > 0 && std::isfinite(options_.eps), "{}: eps must be positive and finite, got {}",
             options_.name, options_.eps);
    weight_ = Tensor<T, Device>(ctx_.device, 1, hidden_);
    weight_grad_ = Tensor<T, Device>(ctx_.device, 1, hidden_);
    ctx_.device->fill(weight_.view(), T(1));
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
    // Normalize the saved copy: x may be this layer's own output buffer (norm(norm(x))).
    tp::ops::rms_norm(dev, ConstView<T>(saved), weight_.view(), detail::ensure(output_, ctx_, x.rows, hidden_),
                      detail::ensure(rstd_, ctx_, x.rows, 1), options_.eps);
    saved_.on_forward();
    return output_;
  }

  /// Takes dL/dY, accumulates the weight gradient (under sequence_parallel summed over the group),
  /// returns dL/dX.
  const Tensor<T, Device>& backward(ConstView<T> grad_output) {
    saved_.on_backward(options_.name);
    TP_CHECK(grad_output.rows == input_.rows() && grad_output.cols == hidden_,
             "{}: output gradient is {}x{}, expected {}x{}", options_.name, grad_output.rows, grad_output.cols,
             input_.rows(), hidden_);
    const Device& dev = *ctx_.device;
    MatrixView<T> dx = detail::ensure(grad_input_, ctx_, input_.rows(), hidden_);
    if (!options_.sequence_parallel || ctx_.world() == 1) {
      tp::ops::rms_norm_backward(dev, input_.view(), weight_.view(), rstd_.view(), grad_output, dx,
                                 weight_grad_.view());
      return grad_input_;
    }
    // This call's weight gradient alone is summed over the group, then accumulated (reducing the
    // accumulated sum would count earlier calls again).
    MatrixView<T> partial = detail::ensure(partial_grad_, ctx_, 1, hidden_);
    dev.fill(partial, T(0));
    tp::ops::rms_norm_backward(dev, input_.view(), weight_.view(), rstd_.view(), grad_output, dx, partial);
    detail::all_reduce_sum(ctx_, partial);
    tp::ops::add(dev, ConstView<T>(partial), weight_grad_.view());
    return grad_input_;
  }

  /// Frees the buffers of forward and backward (saved input, outputs, scratch), keeping weights
  /// and gradients; the next forward allocates them again. Activation recomputation calls it
  /// between a layer's forward and its rerun (tp::models::Transformer, Recompute::full).
  void release_activations() { detail::release(input_, output_, rstd_, grad_input_, partial_grad_); }

  void zero_grad() { ctx_.device->fill(weight_grad_.view(), T(0)); }

  /// The weight, replicated (every rank holds the full [1, hidden]), without weight decay.
  std::vector<Parameter<T>> parameters() {
    return {{options_.name + ".weight", weight_.view(), weight_grad_.view(), 1, hidden_, {0, 1}, {0, hidden_}, 0,
             false}};
  }

  /// Loads the full [1, hidden] host weight.
  void load_full(ConstView<T> weight) { load_from_full(*ctx_.device, parameters().front(), weight); }

  MatrixView<T> weight() { return weight_.view(); }
  MatrixView<T> weight_grad() { return weight_grad_.view(); }
  std::int64_t hidden() const { return hidden_; }
  const Options& options() const { return options_; }

 private:
  Context<Device> ctx_;
  std::int64_t hidden_;
  Options options_;
  Tensor<T, Device> weight_, weight_grad_;
  Tensor<T, Device> input_, output_, rstd_, grad_input_, partial_grad_;
  detail::SavedActivation saved_;
};

}  // namespace tp
