#pragma once
/// Cross-entropy over logits split by vocabulary (Megatron's vocab_parallel_cross_entropy): rank r
/// holds columns partition(vocab, world, r) of the [tokens, vocab] logits, as a ColumnParallelLinear
/// LM head leaves them, and the full logits are never gathered. Per token, three reductions over
/// the group: the max logit (all-reduce max), then in one all-reduce of [tokens, 3] doubles the sum of
/// exp(x - max), the target logit (from the rank that holds it) and the sum of (x - max), from
/// which the loss follows. Everything is relative to the max, so logits of 1e4 lose nothing.
///
/// Label smoothing as torch.nn.CrossEntropyLoss(label_smoothing = s) by default: the target
/// distribution is (1 - s) one_hot + s / vocab (the target keeps 1 - s + s / vocab), so loss =
/// (1 - s) (lse - x_target) + s (lse - mean_j x_j). With `megatron_label_smoothing`, Megatron's
/// vocab_parallel_cross_entropy instead: the target keeps exactly 1 - s and the other vocab - 1
/// classes share s, which is torch's formula with s vocab / (vocab - 1) in place of s.
/// Tokens whose target is `ignore_index` get loss 0 and gradient 0.
///
/// The loss is per token ([tokens, 1]); the caller reduces it (a mean over the tokens that are not
/// ignored is torch's default) and passes the matching per-token gradient to backward. forward
/// keeps a copy of the logits shard ([tokens, vocab_r], a language model's largest activation) for
/// backward.

#include <cstdint>
#include <limits>
#include <string>

#include "tp/core/context.hpp"
#include "tp/detail/layer_support.hpp"
#include "tp/ops/cross_entropy.hpp"

namespace tp {

struct VocabParallelCrossEntropyOptions {
  std::int64_t ignore_index = -100;
  double label_smoothing = 0.0;
  /// Megatron's convention for label_smoothing (s spread over the vocab - 1 other classes) instead
  /// of torch's (s spread over all vocab classes).
  bool megatron_label_smoothing = false;
  std::string name = "cross_entropy";
};

template <class T, class Device = Cpu>
class VocabParallelCrossEntropy {
 public:
  using Options = VocabParallelCrossEntropyOptions;

  VocabParallelCrossEntropy(Context<Device> ctx, std::int64_t vocab, Options options = {})
      : ctx_(std::move(ctx)), vocab_(vocab), options_(std::move(options)) {
    range_ = partition_nonempty(vocab_, ctx_.world(), ctx_.rank(), "vocab");
    TP_CHECK(options_.label_smoothing >= 0.0 && options_.label_smoothing <= 1.0,
             "{}: label_smoothing must be in [0, 1], got {}", options_.name, options_.label_smoothing);
    TP_CHECK(!options_.megatron_label_smoothing || options_.label_smoothing == 0.0 || vocab_ > 1,
             "{}: Megatron's label smoothing spreads {} over the other classes, and a vocabulary of {} has none",
             options_.name, options_.label_smoothing, vocab_);
    smoothing_ = options_.megatron_label_smoothing && options_.label_smoothing > 0.0
                     ? options_.label_smoothing * static_cast<double>(vocab_) / static_cast<double>(vocab_ - 1)
                     : options_.label_smoothing;
    TP_CHECK(options_.ignore_index < 0 || options_.ignore_index >= vocab_,
             "{}: ignore_index {} is a valid token id of the vocabulary [0, {})", options_.name, options_.ignore_index,
             vocab_);
  }

  /// logits [tokens, vocab_r] (this rank's columns), targets any contiguous matrix of tokens int64
  /// ids in row-major order -> per-token loss [tokens, 1], the same on every rank. Throws
  /// InvalidArgument naming the first target outside [0, vocab) that is not ignore_index.
  const Tensor<T, Device>& forward(ConstView<T> logits, ConstView<std::int64_t> targets) {
    const Device& dev = *ctx_.device;
    const std::int64_t tokens = logits.rows;
    TP_CHECK(logits.cols == range_.size() && tokens > 0,
             "{}: logits are {}x{}, expected [tokens > 0, {}] (vocab {} columns [{}, {}) on rank {} of {})",
             options_.name, logits.rows, logits.cols, range_.size(), vocab_, range_.begin, range_.end, ctx_.rank(),
             ctx_.world());
    TP_CHECK(targets.size() == tokens && targets.contiguous(), "{}: {}x{} targets (ld {}) for {} tokens",
             options_.name, targets.rows, targets.cols, targets.ld, tokens);
    MatrixView<std::int64_t> saved = detail::ensure(targets_, ctx_, 1, tokens);
    dev.copy(ConstView<std::int64_t>(targets.data, 1, tokens), saved);
    check_targets(saved);

    MatrixView<T> x = detail::ensure(logits_, ctx_, tokens, range_.size());
    dev.copy(logits, x);
    MatrixView<T> max = detail::ensure(max_, ctx_, tokens, 1);
    tp::ops::row_max(dev, ConstView<T>(x), max);
    if (ctx_.world() > 1)
      ctx_.comm->all_reduce(max.data, max.data, static_cast<std::size_t>(tokens), dtype_of<T>, ReduceOp::max,
                            ctx_.stream());
    MatrixView<double> stats = detail::ensure(stats_, ctx_, tokens, 3);
    tp::ops::cross_entropy_stats<T>(dev, ConstView<T>(x), ConstView<std::int64_t>(saved), range_.begin,
                                    ConstView<T>(max), stats);
    detail::all_reduce_sum(ctx_, stats);
    tp::ops::cross_entropy_loss(dev, ConstView<double>(stats), ConstView<std::int64_t>(saved), vocab_,
                                options_.ignore_index, smoothing_, detail::ensure(loss_, ctx_, tokens, 1));
    saved_.on_forward();
    return loss_;
  }

  /// Takes dL/d loss [tokens, 1] and returns dL/d logits [tokens, vocab_r]; no communication.
  const Tensor<T, Device>& backward(ConstView<T> grad_loss) {
    saved_.on_backward(options_.name);
    TP_CHECK(grad_loss.rows == logits_.rows() && grad_loss.cols == 1, "{}: loss gradient is {}x{}, expected {}x1",
             options_.name, grad_loss.rows, grad_loss.cols, logits_.rows());
    tp::ops::cross_entropy_backward(*ctx_.device, logits_.view(), targets_.view(), range_.begin, max_.view(),
                                    stats_.view(), grad_loss, vocab_, options_.ignore_index, smoothing_,
                                    detail::ensure(grad_logits_, ctx_, logits_.rows(), range_.size()));
    return grad_logits_;
  }

  /// The vocabulary columns this rank's logits hold.
  Range vocab_range() const { return range_; }
  std::int64_t vocab_size() const { return vocab_; }
  const Options& options() const { return options_; }

 private:
  /// A target outside the vocabulary would silently give the loss of a wrong class.
  void check_targets(ConstView<std::int64_t> targets) const {
    const Device& dev = *ctx_.device;
    const std::int64_t bad = tp::ops::first_outside(dev, targets, 0, vocab_, options_.ignore_index);
    if (bad < 0) return;
    std::int64_t value = 0;
    dev.to_host(targets.block(0, bad, 1, 1), MatrixView<std::int64_t>(&value, 1, 1));
    TP_THROW(InvalidArgument, "{}: target {} at position {} is outside the vocabulary [0, {}) and is not ignore_index {}",
             options_.name, value, bad, vocab_, options_.ignore_index);
  }

  Context<Device> ctx_;
  std::int64_t vocab_;
  Options options_;
  Range range_;
  double smoothing_ = 0.0;  ///< torch's s for the ops, whichever convention the options name
  Tensor<T, Device> logits_, max_, loss_, grad_logits_;
  Tensor<double, Device> stats_;  ///< double whatever T (see Cpu::cross_entropy_stats)
  Tensor<std::int64_t, Device> targets_;
  detail::SavedActivation saved_;
};

}  // namespace tp
