#pragma once
/// The output projection of a language model tied to its token embedding (GPT-2's and many Llama
/// models' tie_word_embeddings): logits = x E^T with E the [vocab, hidden] table of a
/// VocabParallelEmbedding. There is one parameter, the embedding's; this layer reads its rows and
/// adds its own gradient, dE += dlogits^T x, to the embedding's weight_grad(), so the table's
/// gradient is the sum of both uses. parameters() is empty: the embedding reports the table.
///
/// Rank r holds rows vocab_range() of E, so its logits are columns vocab_range() of the full
/// [tokens, vocab]: exactly the vocabulary split VocabParallelCrossEntropy takes, with the full
/// logits never gathered (Megatron's parallel_lm_logits with parallel_output). The input is the
/// same on every rank; backward all-reduces the input gradient (a column-parallel layer's f).
/// Under `sequence_parallel` the input is this rank's rows partition(tokens, world, rank), gathered
/// first, and the input gradient is reduce-scattered back to them.
///
/// The embedding must outlive the head. A replicated table (fewer rows than ranks) is refused:
/// its logits would not be split by vocabulary.

#include <cstdint>
#include <string>

#include "tp/core/context.hpp"
#include "tp/detail/layer_support.hpp"
#include "tp/layers/vocab_parallel_embedding.hpp"

namespace tp {

struct ParallelLMHeadOptions {
  /// Names the layer in error messages (the parameter keeps the embedding's name).
  std::string name = "lm_head";
  /// Input split along tokens; forward takes the full token count.
  bool sequence_parallel = false;
};

template <class T, class Device = Cpu>
class ParallelLMHead {
 public:
  using Options = ParallelLMHeadOptions;

  explicit ParallelLMHead(VocabParallelEmbedding<T, Device>& embedding, Options options = {})
      : embedding_(&embedding), options_(std::move(options)) {
    TP_CHECK(!embedding.replicated(),
             "{}: the tied table '{}' has {} rows over {} ranks and is replicated; an LM head needs it split by "
             "vocabulary (at least one row per rank)",
             options_.name, embedding.options().name, embedding.vocab_size(), embedding.context().world());
  }

  /// [tokens, hidden] -> this rank's logits [tokens, vocab_range().size()]. Under sequence_parallel
  /// x is this rank's [partition(tokens).size(), hidden] rows and `tokens` the full count. The
  /// result lives in this layer and stays valid until the next forward.
  const Tensor<T, Device>& forward(ConstView<T> x, std::int64_t tokens = -1) {
    const Context<Device>& ctx = embedding_->context();
    const std::int64_t hidden = embedding_->hidden_size();
    TP_CHECK(x.cols == hidden && (x.rows > 0 || options_.sequence_parallel),
             "{}: input is {}x{}, expected [tokens > 0, {}]", options_.name, x.rows, x.cols, hidden);
    tokens = detail::full_tokens(options_.sequence_parallel, x.rows, tokens, ctx.world(), ctx.rank(), options_.name);
    const Device& dev = *ctx.device;
    MatrixView<T> input = detail::ensure(input_, ctx, tokens, hidden);
    if (options_.sequence_parallel)
      detail::gather_rows(ctx, x, input);
    else
      dev.copy(x, input);
    const ConstView<T> table = embedding_->weight();
    // A linear layer's forward (the streaming kernels at few tokens, as the other layers' at decode).
    tp::ops::linear_forward<T>(dev, ConstView<T>(input), table, ConstView<T>{},
                               detail::ensure(logits_, ctx, tokens, table.rows));
    saved_.on_forward();
    return logits_;
  }

  /// Takes dL/dlogits (this rank's [tokens, vocab_r] columns), adds dL/dE of this rank's rows to
  /// the embedding's weight_grad(), returns dL/dX [tokens, hidden] summed over the group (under
  /// sequence_parallel: reduce-scattered, this rank's rows).
  const Tensor<T, Device>& backward(ConstView<T> grad_logits) {
    saved_.on_backward(options_.name);
    const Context<Device>& ctx = embedding_->context();
    const std::int64_t tokens = input_.rows(), hidden = embedding_->hidden_size();
    const ConstView<T> table = embedding_->weight();
    TP_CHECK(grad_logits.rows == tokens && grad_logits.cols == table.rows,
             "{}: logits gradient is {}x{}, expected {}x{} (vocab rows [{}, {}) on rank {} of {})", options_.name,
             grad_logits.rows, grad_logits.cols, tokens, table.rows, embedding_->vocab_range().begin,
             embedding_->vocab_range().end, ctx.rank(), ctx.world());
    const Device& dev = *ctx.device;
    MatrixView<T> dx = detail::ensure(options_.sequence_parallel ? grad_full_ : grad_input_, ctx, tokens, hidden);
    tp::ops::linear_backward<T>(dev, grad_logits, input_.view(), table, T(0), dx, T(1), embedding_->weight_grad());
    if (!options_.sequence_parallel) {
      detail::all_reduce_sum(ctx, dx);
      return grad_input_;
    }
    const Range mine = partition(tokens, ctx.world(), ctx.rank());
    detail::reduce_scatter_rows(ctx, ConstView<T>(dx), detail::ensure(grad_input_, ctx, mine.size(), hidden));
    return grad_input_;
  }

  /// None: the table and its gradient belong to the embedding.
  std::vector<Parameter<T>> parameters() { return {}; }
  /// Nothing to zero of its own; the embedding's zero_grad() clears both uses' gradient.
  void zero_grad() {}

  /// The vocabulary columns of this rank's logits.
  Range vocab_range() const { return embedding_->vocab_range(); }
  std::int64_t vocab_size() const { return embedding_->vocab_size(); }
  std::int64_t hidden_size() const { return embedding_->hidden_size(); }
  const Options& options() const { return options_; }

 private:
  VocabParallelEmbedding<T, Device>* embedding_;
  Options options_;
  Tensor<T, Device> input_, logits_, grad_input_, grad_full_;
  detail::SavedActivation saved_;
};

}  // namespace tp
