#pragma once
/// The transformer MLP as Megatron splits it: a ColumnParallelLinear (fc1), the activation on each
/// rank's shard, a RowParallelLinear (fc2); one all-reduce forward and one backward (or an
/// all-gather and a reduce-scatter along tokens under sequence parallelism).
///
/// Activations: GELU (exact or tanh) on fc1 [ffn, hidden]; or SwiGLU, silu(gate) * up, with gate
/// and up merged into ONE fc1 weight of [2 * ffn, hidden] whose full layout is [gate; up] (rows
/// [0, ffn) are gate, rows [ffn, 2 ffn) are up, like Megatron's gated linear unit and a
/// concatenation of Hugging Face's gate_proj and up_proj). Rank r holds rows partition(ffn, world,
/// r) of gate AND the same rows of up, stored [gate_r; up_r], so its SwiGLU needs no communication.
/// parameters() reports fc1's weight as two records named "<name>.fc1.weight", one per block, each
/// placing its rows in the full tensor; a checkpoint writer must use those ranges, not assume one
/// contiguous block. fc2 is [hidden, ffn], split by columns as partition(ffn).
///
/// Inference mode (pack_for_inference, unpack): fc1's and fc2's weights packed (see
/// ColumnParallelLinear); while packed their parameters(), load_full, weight() and backward throw,
/// and so do this layer's.

#include <cstdint>
#include <string>
#include <vector>

#include "tp/core/context.hpp"
#include "tp/core/ops.hpp"
#include "tp/layers/column_parallel_linear.hpp"
#include "tp/layers/row_parallel_linear.hpp"
#include "tp/ops/activation.hpp"

namespace tp {

enum class Activation : std::uint8_t { gelu_exact, gelu_tanh, swiglu };

struct ParallelMLPOptions {
  Activation activation = Activation::gelu_tanh;
  bool bias = true;
  /// Input and output split along tokens (Megatron's sequence_parallel); forward takes the full token count.
  bool sequence_parallel = false;
  /// Parameters are "<name>.fc1.weight", "<name>.fc1.bias", "<name>.fc2.weight", "<name>.fc2.bias".
  std::string name = "mlp";
  std::uint64_t seed = 0;
};

template <class T, class Device = Cpu>
class ParallelMLP {
 public:
  using Options = ParallelMLPOptions;

  ParallelMLP(Context<Device> ctx, std::int64_t hidden, std::int64_t ffn, Options options = {})
      : ctx_(ctx),
        options_(std::move(options)),
        fc1_(ctx, hidden, gated() ? 2 * ffn : ffn,
             {.bias = options_.bias,
              .name = options_.name + ".fc1",
              .seed = options_.seed,
              .sequence_parallel = options_.sequence_parallel,
              .stacked = gated() ? 2 : 1}),
        fc2_(ctx, ffn, hidden,
             {.bias = options_.bias,
              .name = options_.name + ".fc2",
              .seed = options_.seed,
              .sequence_parallel = options_.sequence_parallel}) {
    TP_CHECK(options_.activation == Activation::gelu_exact || options_.activation == Activation::gelu_tanh ||
                 options_.activation == Activation::swiglu,
             "{}: activation {} is not a tp::Activation", options_.name, static_cast<unsigned>(options_.activation));
  }

  /// [tokens, hidden] -> [tokens, hidden], the same on every rank; under sequence_parallel both are
  /// this rank's rows partition(tokens) and `tokens` is the full count.
  const Tensor<T, Device>& forward(ConstView<T> x, std::int64_t tokens = -1) {
    const Device& dev = *ctx_.device;
    const auto& h = fc1_.forward(x, tokens);
    MatrixView<T> a = detail::ensure(act_, ctx_, h.rows(), fc2_.input_range().size());
    switch (options_.activation) {
      case Activation::gelu_exact:
        tp::ops::gelu(dev, h.view(), a, Gelu::exact);
        break;
      case Activation::gelu_tanh:
        tp::ops::gelu(dev, h.view(), a, Gelu::tanh);
        break;
      case Activation::swiglu:
        tp::ops::swiglu(dev, h.view(), a);
        break;
    }
    const auto& y = fc2_.forward(a);
    saved_.on_forward();
    return y;
  }

  /// dL/dY -> dL/dX (shapes as forward's output and input); accumulates every weight gradient.
  const Tensor<T, Device>& backward(ConstView<T> grad_output) {
    TP_CHECK(!packed_for_inference(),
             "{}: backward while the layer is packed for inference (pack_for_inference): call unpack() first",
             options_.name);
    try {
      saved_.on_backward(options_.name);
    } catch (...) {
      // The parts saw the same forwards: without a backward of their own they would still count them.
      fc1_.forget_forward();
      fc2_.forget_forward();
      throw;
    }
    const Device& dev = *ctx_.device;
    const auto& da = fc2_.backward(grad_output);
    // fc1 keeps its last output, the activation's input, so it needs no copy here.
    const Tensor<T, Device>& h = fc1_.output();
    MatrixView<T> dh = detail::ensure(grad_h_, ctx_, h.rows(), h.cols());
    switch (options_.activation) {
      case Activation::gelu_exact:
        tp::ops::gelu_backward(dev, h.view(), da.view(), dh, Gelu::exact);
        break;
      case Activation::gelu_tanh:
        tp::ops::gelu_backward(dev, h.view(), da.view(), dh, Gelu::tanh);
        break;
      case Activation::swiglu:
        tp::ops::swiglu_backward(dev, h.view(), da.view(), dh);
        break;
    }
    return fc1_.backward(dh);
  }

  /// Frees the buffers of forward and backward (saved input, outputs, scratch), keeping weights
  /// and gradients; the next forward allocates them again. Activation recomputation calls it
  /// between a layer's forward and its rerun (tp::models::Transformer, Recompute::full).
  void release_activations() {
    detail::release(act_, grad_h_);
    fc1_.release_activations();
    fc2_.release_activations();
  }

  void zero_grad() {
    fc1_.zero_grad();
    fc2_.zero_grad();
  }

  /// fc1's records (two per tensor under SwiGLU, see above), then fc2's.
  std::vector<Parameter<T>> parameters() {
    auto ps = fc1_.parameters();
    for (auto& p : fc2_.parameters()) ps.push_back(p);
    return ps;
  }

  /// Loads this rank's parts of the full weights: fc1 [ffn or 2 ffn ([gate; up]), hidden], fc2 [hidden, ffn].
  void load_full(ConstView<T> fc1_weight, ConstView<T> fc1_bias, ConstView<T> fc2_weight, ConstView<T> fc2_bias) {
    fc1_.load_full(fc1_weight, fc1_bias);
    fc2_.load_full(fc2_weight, fc2_bias);
  }

  /// Inference mode: packs fc1's and fc2's weights; unpack() frees the copies.
  void pack_for_inference() {
    fc1_.pack_for_inference();
    fc2_.pack_for_inference();
  }
  void unpack() {
    fc1_.unpack();
    fc2_.unpack();
  }
  bool packed_for_inference() const { return fc1_.packed_for_inference(); }
  std::int64_t packed_bytes() const { return fc1_.packed_bytes() + fc2_.packed_bytes(); }

  ColumnParallelLinear<T, Device>& fc1() { return fc1_; }
  RowParallelLinear<T, Device>& fc2() { return fc2_; }
  const ColumnParallelLinear<T, Device>& fc1() const { return fc1_; }
  const RowParallelLinear<T, Device>& fc2() const { return fc2_; }
  /// The ffn features this rank holds (of gate and of up, under SwiGLU).
  Range ffn_range() const { return fc2_.input_range(); }
  const Options& options() const { return options_; }

 private:
  bool gated() const { return options_.activation == Activation::swiglu; }

  Context<Device> ctx_;
  Options options_;
  ColumnParallelLinear<T, Device> fc1_;
  RowParallelLinear<T, Device> fc2_;
  detail::SavedActivation saved_;
  Tensor<T, Device> act_, grad_h_;
};

}  // namespace tp
