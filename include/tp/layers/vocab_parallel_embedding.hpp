#pragma once
/// Token embedding with the [vocab, hidden] table split by rows (Megatron's VocabParallelEmbedding):
/// rank r holds rows partition(vocab, world, r), any vocab over any world size with no padding
/// (50257 over 4 gives 12565, 12564, 12564, 12564). Each rank looks up the ids in its shard and
/// writes zero rows for the others; the sum over ranks (all-reduce, or a reduce-scatter along
/// tokens under sequence parallelism) is the full lookup. Backward adds each token's output
/// gradient to its id's row of the table gradient, on the rank that holds that row.
///
/// A table with fewer rows than ranks (BERT's 2 token types at TP 3) cannot give every rank a row:
/// it is replicated instead. Every rank holds the whole table (vocab_range() is [0, vocab),
/// Parameter::copy = rank, so gradient norms and checkpoints count it once), looks every id up
/// itself with no collective in forward (under sequence parallelism it keeps its rows of the
/// result), and accumulates the same full gradient in backward (under sequence parallelism from
/// the gathered output gradient), so the copies stay identical under the optimizer.
///
/// Ids are int64 (what tokenizers and torch use; a 32-bit id would not save a collective, since ids
/// never travel). They are a contiguous matrix in device memory, read in row-major order, so a
/// [batch, seq] matrix of ids gives tokens = batch * seq output rows in the same order.

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "tp/core/context.hpp"
#include "tp/core/parameter.hpp"
#include "tp/detail/layer_support.hpp"
#include "tp/ops/embedding.hpp"

namespace tp {

struct VocabParallelEmbeddingOptions {
  /// Reduce-scatter the output along tokens: rank r gets rows partition(tokens, world, r).
  bool sequence_parallel = false;
  /// The parameter is "<name>.weight".
  std::string name = "embedding";
  std::uint64_t seed = 0;
  /// Initial values are normal(0, init_std), as Megatron's init_method_normal.
  double init_std = 0.02;
};

template <class T, class Device = Cpu>
class VocabParallelEmbedding {
 public:
  using Options = VocabParallelEmbeddingOptions;

  VocabParallelEmbedding(Context<Device> ctx, std::int64_t vocab, std::int64_t hidden, Options options = {})
      : ctx_(std::move(ctx)), vocab_(vocab), hidden_(hidden), options_(std::move(options)) {
    TP_CHECK(hidden_ > 0, "{}: hidden must be positive, got {}", options_.name, hidden_);
    TP_CHECK(std::isfinite(options_.init_std) && options_.init_std >= 0.0,
             "{}: init_std must be finite and non-negative, got {}", options_.name, options_.init_std);
    TP_CHECK(vocab_ > 0, "{}: vocab must be positive, got {}", options_.name, vocab_);
    replicated_ = vocab_ < ctx_.world();
    range_ = replicated_ ? Range{0, vocab_} : partition(vocab_, ctx_.world(), ctx_.rank());
    weight_ = Tensor<T, Device>(ctx_.device, range_.size(), hidden_);
    weight_grad_ = Tensor<T, Device>(ctx_.device, range_.size(), hidden_);
    zero_grad();
    init_normal();
  }

  /// ids (any contiguous shape, tokens = ids.size()) -> [tokens, hidden], or this rank's
  /// [partition(tokens).size(), hidden] rows under sequence_parallel. Throws InvalidArgument naming
  /// the first id outside [0, vocab) and its position.
  const Tensor<T, Device>& forward(ConstView<std::int64_t> ids) {
    const Device& dev = *ctx_.device;
    const std::int64_t tokens = ids.size();
    TP_CHECK(tokens > 0 && ids.contiguous(), "{}: ids are {}x{} with ld {}; expected a contiguous, non-empty matrix",
             options_.name, ids.rows, ids.cols, ids.ld);
    if (const std::int64_t bad = tp::ops::first_outside(dev, ids, 0, vocab_, /*allowed=*/0); bad >= 0) {
      std::int64_t id = 0;
      dev.to_host(ids.block(bad / ids.cols, bad % ids.cols, 1, 1), MatrixView<std::int64_t>(&id, 1, 1));
      TP_THROW(InvalidArgument, "{}: token id {} at position {} (row {}, column {} of the {}x{} ids) is outside the "
               "vocabulary [0, {})", options_.name, id, bad, bad / ids.cols, bad % ids.cols, ids.rows, ids.cols, vocab_);
    }
    MatrixView<std::int64_t> saved = detail::ensure(ids_, ctx_, 1, tokens);
    dev.copy(ConstView<std::int64_t>(ids.data, 1, tokens), saved);
    MatrixView<T> local = detail::ensure(options_.sequence_parallel ? full_ : output_, ctx_, tokens, hidden_);
    tp::ops::embedding_forward(dev, ConstView<std::int64_t>(saved), weight_.view(), range_.begin, local);
    saved_.on_forward();
    if (!options_.sequence_parallel) {
      if (!replicated_) detail::all_reduce_sum(ctx_, local);
      return output_;
    }
    const Range mine = partition(tokens, ctx_.world(), ctx_.rank());
    const MatrixView<T> out = detail::ensure(output_, ctx_, mine.size(), hidden_);
    if (replicated_)
      dev.copy(ConstView<T>(local.rows_range(mine.begin, mine.size())), out);  // the full lookup is already here
    else
      detail::reduce_scatter_rows(ctx_, ConstView<T>(local), out);
    return output_;
  }

  /// Takes dL/dY ([tokens, hidden], or this rank's rows under sequence_parallel) and accumulates the
  /// table gradient of this rank's rows (of every row when replicated). Ids have no gradient.
  void backward(ConstView<T> grad_output) {
    saved_.on_backward(options_.name);
    const std::int64_t tokens = ids_.cols();
    const std::int64_t rows = options_.sequence_parallel ? partition(tokens, ctx_.world(), ctx_.rank()).size() : tokens;
    TP_CHECK(grad_output.rows == rows && grad_output.cols == hidden_,
             "{}: output gradient is {}x{}, expected {}x{} (rank {} of {})", options_.name, grad_output.rows,
             grad_output.cols, rows, hidden_, ctx_.rank(), ctx_.world());
    if (options_.sequence_parallel) {
      MatrixView<T> full = detail::ensure(full_, ctx_, tokens, hidden_);
      detail::gather_rows(ctx_, grad_output, full);
      grad_output = full;
    }
    tp::ops::embedding_backward(*ctx_.device, ids_.view(), grad_output, range_.begin, weight_grad_.view());
  }

  void zero_grad() { ctx_.device->fill(weight_grad_.view(), T(0)); }

  /// The table: this rank's rows, or the whole table as copy `rank` when replicated.
  std::vector<Parameter<T>> parameters() {
    return {{options_.name + ".weight", weight_.view(), weight_grad_.view(), vocab_, hidden_, range_, {0, hidden_},
             replicated_ ? ctx_.rank() : 0}};
  }

  /// Loads this rank's rows of the full [vocab, hidden] host table.
  void load_full(ConstView<T> table) { load_from_full(*ctx_.device, parameters().front(), table); }

  MatrixView<T> weight() { return weight_.view(); }
  MatrixView<T> weight_grad() { return weight_grad_.view(); }
  /// The vocabulary ids (rows of the full table) this rank holds: [0, vocab) when replicated.
  Range vocab_range() const { return range_; }
  /// Whether every rank holds the whole table (fewer rows than ranks).
  bool replicated() const { return replicated_; }
  std::int64_t vocab_size() const { return vocab_; }
  std::int64_t hidden_size() const { return hidden_; }
  const Options& options() const { return options_; }
  const Context<Device>& context() const { return ctx_; }

 private:
  /// normal(0, init_std) keyed by (seed, name, index in the full table): the same table at any world size.
  void init_normal() {
    const Philox rng(options_.seed, name_key(options_.name + ".weight"));
    std::vector<T> host(static_cast<std::size_t>(weight_.size()));
    for (std::int64_t r = 0; r < range_.size(); ++r)
      for (std::int64_t c = 0; c < hidden_; ++c)
        host[r * hidden_ + c] =
            static_cast<T>(options_.init_std * rng.normal(static_cast<std::uint64_t>((range_.begin + r) * hidden_ + c)));
    ctx_.device->from_host(ConstView<T>(host.data(), range_.size(), hidden_), weight_.view());
  }

  Context<Device> ctx_;
  std::int64_t vocab_, hidden_;
  Options options_;
  Range range_;
  bool replicated_ = false;
  Tensor<T, Device> weight_, weight_grad_, output_, full_;
  Tensor<std::int64_t, Device> ids_;
  detail::SavedActivation saved_;
};

}  // namespace tp
