#pragma once
/// Self-attention split by heads (Megatron's ParallelAttention, vLLM's QKVParallelLinear): a fused
/// QKV column-parallel projection, optional rotary position embeddings on q and k, scaled
/// dot-product attention on each rank's heads, and a row-parallel output projection (`dense`); one
/// all-reduce forward and one backward.
///
/// Input [tokens, hidden] holding sequences back to back, as a tp::AttentionBatch describes them:
/// variable lengths without padding (forward(x, seq_len) is the special case of equal lengths),
/// each token's position for RoPE, and an optional key padding mask. Attention never crosses
/// sequences. Causal (a token sees itself and earlier ones) or not. Scores are scaled by 1 /
/// sqrt(head_dim). Backward rebuilds the softmax from q, k and the per-row log-sum-exp forward
/// saves (heads_r * tokens numbers per rank), as flash attention does, so no seq_len^2
/// probabilities are kept (tp::ops::attention_forward). A query whose keys are all masked gets a
/// zero output and zero gradients.
///
/// RoPE (options.rope_theta > 0, Hugging Face's rotate-half convention, tp::ops::rope) turns q and
/// k after the projection and its bias; backward turns their gradients back.
///
/// Incremental decoding: make_cache(batch, max_len) and forward(x, batch, cache) keep each
/// sequence's rotated keys and its values (this rank's kv heads only), append the new tokens and
/// attend to everything cached, causally aligned to the end. Inference only: backward after a
/// cached forward throws.
///
/// Grouped-query attention: `heads` query heads share `kv_heads` key/value heads, query head h
/// reading kv head h / (heads / kv_heads) (kv_heads = heads is multi-head, 1 is multi-query).
/// Heads are split evenly: heads must be a multiple of the world size. When kv_heads >= world,
/// kv_heads must be a multiple of it and rank r holds kv heads [r k, (r + 1) k), k = kv_heads /
/// world; when world > kv_heads, the world must be a multiple of kv_heads and each kv head is
/// replicated on world / kv_heads consecutive ranks (rank r holds kv head r / (world / kv_heads)),
/// so each rank holds exactly the kv heads its query heads need, as vLLM and TensorRT-LLM do. A
/// replicated head's weight gradient is summed over its replicas, so every replica holds the full
/// gradient and takes the same optimizer step.
///
/// Fused QKV weight, full layout [(heads + 2 kv_heads) head_dim, hidden] = [Wq; Wk; Wv] stacked by
/// rows ([out, in] as torch.nn.Linear, i.e. the concatenation of Hugging Face's q_proj, k_proj,
/// v_proj), each head's head_dim rows contiguous. Rank r holds its query heads' rows of Wq and its
/// kv heads' rows of Wk and Wv, stored [q_r; k_r; v_r]; parameters() reports "<name>.qkv.weight" as
/// three records (q, k, v) with their rows in the full tensor, and the bias likewise. The output
/// projection "<name>.dense.weight" is [hidden, heads head_dim], split by columns.
///
/// Inference mode (pack_for_inference, unpack): the QKV and dense weights packed as
/// ColumnParallelLinear packs its own (the prefill reads the packed copies, decode the plain
/// weights); while packed, parameters(), load_full, qkv_weight() and backward throw, and so do
/// dense()'s own (RowParallelLinear's rule).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tp/core/context.hpp"
#include "tp/core/parameter.hpp"
#include "tp/detail/layer_support.hpp"
#include "tp/layers/attention_batch.hpp"
#include "tp/layers/kv_cache.hpp"
#include "tp/layers/row_parallel_linear.hpp"
#include "tp/ops/attention.hpp"
#include "tp/ops/reduce.hpp"
#include "tp/ops/rope.hpp"

namespace tp {

struct ParallelAttentionOptions {
  bool causal = true;
  /// Bias on the QKV projection, and on the output projection unless dense_bias says otherwise.
  bool bias = true;
  /// Bias on the output projection; unset: the same as `bias` (Qwen2 has a QKV bias but none here).
  std::optional<bool> dense_bias;
  /// Rotary position embeddings on q and k with this base (Llama: 10000); 0: none.
  double rope_theta = 0;
  /// 0 means hidden / heads.
  std::int64_t head_dim = 0;
  /// Input and output split along tokens (Megatron's sequence_parallel); forward takes the full token count.
  bool sequence_parallel = false;
  std::string name = "attention";
  std::uint64_t seed = 0;
};

template <class T, class Device = Cpu>
class ParallelAttention {
 public:
  using Options = ParallelAttentionOptions;

  ParallelAttention(Context<Device> ctx, std::int64_t hidden, std::int64_t heads, std::int64_t kv_heads,
                    Options options = {})
      : ctx_(ctx),
        hidden_(hidden),
        heads_(heads),
        kv_heads_(kv_heads),
        options_(std::move(options)),
        head_dim_(checked_head_dim()),
        rope_(checked_rope()),
        dense_(ctx, heads_ * head_dim_, hidden_,
               {.bias = options_.dense_bias.value_or(options_.bias), .name = options_.name + ".dense", .seed = options_.seed,
                .sequence_parallel = options_.sequence_parallel}) {
    const int world = ctx_.world(), rank = ctx_.rank();
    const std::int64_t q_per_rank = heads_ / world;
    q_heads_ = {rank * q_per_rank, (rank + 1) * q_per_rank};
    if (kv_heads_ >= world) {
      const std::int64_t k = kv_heads_ / world;
      kv_heads_range_ = {rank * k, (rank + 1) * k};
    } else {
      replicas_ = world / kv_heads_;
      kv_heads_range_ = {rank / replicas_, rank / replicas_ + 1};
      // Collective: every rank constructs the layer, and all agree that replicas_ > 1.
      kv_comm_ = ctx_.comm->split(static_cast<int>(rank / replicas_), rank);
    }
    q_width_ = q_heads_.size() * head_dim_;
    kv_width_ = kv_heads_range_.size() * head_dim_;
    const std::int64_t width = q_width_ + 2 * kv_width_;
    weight_ = Tensor<T, Device>(ctx_.device, width, hidden_);
    weight_grad_ = Tensor<T, Device>(ctx_.device, width, hidden_);
    if (options_.bias) {
      bias_ = Tensor<T, Device>(ctx_.device, 1, width);
      bias_grad_ = Tensor<T, Device>(ctx_.device, 1, width);
      ctx_.device->fill(bias_.view(), T(0));
    }
    zero_grad();
    for (const auto& p : qkv_parameters())
      if (p.name.ends_with(".weight"))
        init_uniform(*ctx_.device, p, options_.seed, 1.0 / std::sqrt(static_cast<double>(hidden_)));
  }

  /// x [tokens, hidden] (under sequence_parallel this rank's rows partition(tokens), with `tokens`
  /// the full count), tokens = batch * seq_len -> [tokens, hidden] (or this rank's rows of it).
  const Tensor<T, Device>& forward(ConstView<T> x, std::int64_t seq_len, std::int64_t tokens = -1) {
    check_input(x);
    tokens = detail::full_tokens(options_.sequence_parallel, x.rows, tokens, ctx_.world(), ctx_.rank(), options_.name);
    TP_CHECK(seq_len > 0 && tokens % seq_len == 0, "{}: {} tokens are not a whole number of sequences of {}",
             options_.name, tokens, seq_len);
    return forward(x, AttentionBatch::uniform(tokens / seq_len, seq_len));
  }

  /// x [tokens, hidden] with tokens = the sum of batch.lengths (under sequence_parallel this rank's
  /// rows partition(tokens) of it) -> [tokens, hidden] (or this rank's rows of it).
  const Tensor<T, Device>& forward(ConstView<T> x, const AttentionBatch& batch) {
    const std::int64_t tokens = batch_tokens(x, batch);
    const Device& dev = *ctx_.device;
    const MatrixView<T> qkv = project(x, tokens);
    std::vector<std::int64_t> start(batch.lengths.size(), 0);
    rotate(qkv, batch, start, tokens);
    seqs_ = AttentionSequences::packed(batch.lengths);
    seqs_.key_mask = batch.key_mask;
    const auto lse = detail::ensure(lse_, ctx_, q_heads_.size(), tokens);
    MatrixView<T> out = detail::ensure(context_, ctx_, tokens, q_width_);
    tp::ops::attention_forward(dev, ConstView<T>(qkv.cols_range(0, q_width_)),
                               ConstView<T>(qkv.cols_range(q_width_, kv_width_)),
                               ConstView<T>(qkv.cols_range(q_width_ + kv_width_, kv_width_)), seqs_, head_dim_,
                               options_.causal, lse, out);
    const auto& y = dense_.forward(out);
    cached_ = false;
    saved_.on_forward();
    return y;
  }

  /// A cache for `batch` sequences of up to max_len tokens each, holding this rank's kv heads.
  KvCache<T, Device> make_cache(std::int64_t batch, std::int64_t max_len) const {
    TP_CHECK(batch > 0 && max_len > 0, "{}: a KV cache needs batch > 0 and max_len > 0, got {} and {}",
             options_.name, batch, max_len);
    return KvCache<T, Device>(ctx_, batch, max_len, kv_width_, id_);
  }

  /// Incremental decoding: batch.lengths[b] new tokens of cached sequence b (lengths.size() ==
  /// cache.batch(); 0 allowed), appended after cache.length(b). Queries attend to all cached keys
  /// of their sequence plus the new ones causally (query i of n new sees keys 0 .. cached + i).
  /// Positions default to cache.length(b) + i; key_mask bytes are kept with the cached keys.
  /// Inference only: a backward after it throws.
  const Tensor<T, Device>& forward(ConstView<T> x, const AttentionBatch& batch, KvCache<T, Device>& cache) {
    const std::int64_t tokens = batch_tokens(x, batch);
    TP_CHECK(cache.owner_ == id_, "{}: this KV cache was made by another attention layer (use one cache per layer, "
             "from that layer's make_cache)", options_.name);
    TP_CHECK(cache.batch() == static_cast<std::int64_t>(batch.lengths.size()),
             "{}: the cache holds {} sequences, the batch has {}", options_.name, cache.batch(), batch.lengths.size());
    for (std::size_t b = 0; b < batch.lengths.size(); ++b)
      TP_CHECK(cache.lengths_[b] + batch.lengths[b] <= cache.max_len(),
               "{}: sequence {} holds {} cached tokens; {} more pass the cache's max_len {}", options_.name, b,
               cache.lengths_[b], batch.lengths[b], cache.max_len());
    const Device& dev = *ctx_.device;
    const MatrixView<T> qkv = project(x, tokens);
    rotate(qkv, batch, cache.lengths_, tokens);
    // Append the new keys (rotated) and values; describe each sequence's queries against its rows.
    AttentionSequences seqs;
    const std::int64_t max_len = cache.max_len();
    std::int64_t row = 0;
    for (std::size_t b = 0; b < batch.lengths.size(); ++b) {
      const std::int64_t n = batch.lengths[b], cached = cache.lengths_[b], at = static_cast<std::int64_t>(b) * max_len;
      dev.copy(ConstView<T>(qkv.block(row, q_width_, n, kv_width_)), cache.keys_.view().rows_range(at + cached, n));
      dev.copy(ConstView<T>(qkv.block(row, q_width_ + kv_width_, n, kv_width_)),
               cache.values_.view().rows_range(at + cached, n));
      if (!batch.key_mask.empty())
        std::copy_n(batch.key_mask.begin() + row, n, cache.mask_.begin() + at + cached);
      seqs.q_begin.push_back(row);
      seqs.q_length.push_back(n);
      seqs.k_begin.push_back(at);
      seqs.k_length.push_back(cached + n);
      cache.lengths_[b] = cached + n;
      row += n;
    }
    // The mask goes to the op only when a cached key is masked: decoding without padding skips it.
    bool masked = false;
    for (std::size_t b = 0; b < batch.lengths.size(); ++b) {
      const auto first = cache.mask_.begin() + static_cast<std::int64_t>(b) * max_len;
      masked = masked || std::find(first, first + cache.lengths_[b], std::uint8_t{0}) != first + cache.lengths_[b];
    }
    if (masked) seqs.key_mask = cache.mask_;
    const auto lse = detail::ensure(lse_, ctx_, q_heads_.size(), tokens);
    MatrixView<T> out = detail::ensure(context_, ctx_, tokens, q_width_);
    tp::ops::attention_forward(dev, ConstView<T>(qkv.cols_range(0, q_width_)), ConstView<T>(cache.keys_.view()),
                               ConstView<T>(cache.values_.view()), seqs, head_dim_, options_.causal, lse, out);
    const auto& y = dense_.forward(out);
    // Nothing here can be differentiated: neither this layer nor dense keeps a forward to pair
    // with a backward, and backward says why.
    dense_.forget_forward();
    saved_.forget();
    cached_ = true;
    return y;
  }

  /// dL/dY (shaped as forward's output) -> dL/dX (shaped as forward's input); accumulates every
  /// weight gradient.
  const Tensor<T, Device>& backward(ConstView<T> grad_output) {
    packing_.check_unpacked(options_.name, "backward");
    TP_CHECK(!cached_, "{}: backward after a forward with a KV cache: cached forwards are inference only",
             options_.name);
    try {
      saved_.on_backward(options_.name);
    } catch (...) {
      // The parts saw the same forwards: without a backward of their own they would still count them.
      dense_.forget_forward();
      throw;
    }
    const Device& dev = *ctx_.device;
    const auto& d_context = dense_.backward(grad_output);
    const std::int64_t tokens = qkv_.rows();
    MatrixView<T> dqkv = detail::ensure(grad_qkv_, ctx_, tokens, weight_.rows());
    const ConstView<T> qkv = qkv_.view();
    tp::ops::attention_backward(dev, qkv.cols_range(0, q_width_), qkv.cols_range(q_width_, kv_width_),
                                qkv.cols_range(q_width_ + kv_width_, kv_width_), context_.view(), lse_.view(),
                                d_context.view(), seqs_, head_dim_, options_.causal, dqkv.cols_range(0, q_width_),
                                dqkv.cols_range(q_width_, kv_width_), dqkv.cols_range(q_width_ + kv_width_, kv_width_));
    if (rope_) {  // gradients of the rotated q and k -> of the projected ones: the inverse rotation
      tp::ops::rope(dev, dqkv.cols_range(0, q_width_), positions_.view(), head_dim_, options_.rope_theta, true);
      tp::ops::rope(dev, dqkv.cols_range(q_width_, kv_width_), positions_.view(), head_dim_, options_.rope_theta, true);
    }

    // Weight and bias gradients; a replicated kv head's share is summed over its replicas first.
    const ConstView<T> dq = dqkv.cols_range(0, q_width_), dkv = dqkv.cols_range(q_width_, 2 * kv_width_);
    dev.gemm(Op::t, Op::n, T(1), dq, input_.view(), T(1), weight_grad_.view().rows_range(0, q_width_));
    if (options_.bias) tp::ops::add_bias_grad(dev, dq, bias_grad_.view().cols_range(0, q_width_));
    MatrixView<T> dw_kv = weight_grad_.view().rows_range(q_width_, 2 * kv_width_);
    if (replicas_ == 1) {
      dev.gemm(Op::t, Op::n, T(1), dkv, input_.view(), T(1), dw_kv);
      if (options_.bias) tp::ops::add_bias_grad(dev, dkv, bias_grad_.view().cols_range(q_width_, 2 * kv_width_));
    } else {
      // The bias gradient rides in an extra row of the same buffer when it fits, so one all-reduce
      // carries both.
      const bool packed = options_.bias && 2 * kv_width_ <= hidden_;
      MatrixView<T> step = detail::ensure(kv_grad_, ctx_, 2 * kv_width_ + (packed ? 1 : 0), hidden_);
      MatrixView<T> step_w = step.rows_range(0, 2 * kv_width_);
      dev.gemm(Op::t, Op::n, T(1), dkv, input_.view(), T(0), step_w);
      MatrixView<T> step_b;
      if (options_.bias) {
        if (packed) dev.fill(step.rows_range(2 * kv_width_, 1), T(0));
        step_b = packed ? step.block(2 * kv_width_, 0, 1, 2 * kv_width_)
                        : detail::ensure(kv_bias_grad_, ctx_, 1, 2 * kv_width_);
        if (!packed) dev.fill(step_b, T(0));
        tp::ops::add_bias_grad(dev, dkv, step_b);
      }
      kv_comm_->all_reduce(step.data, step.data, static_cast<std::size_t>(step.size()), dtype_of<T>, ReduceOp::sum,
                           ctx_.stream());
      if (options_.bias && !packed)
        kv_comm_->all_reduce(step_b.data, step_b.data, static_cast<std::size_t>(step_b.size()), dtype_of<T>,
                             ReduceOp::sum, ctx_.stream());
      tp::ops::add(dev, ConstView<T>(step_w), dw_kv);
      if (options_.bias) tp::ops::add(dev, ConstView<T>(step_b), bias_grad_.view().cols_range(q_width_, 2 * kv_width_));
    }

    // Input gradient: summed over ranks (f), or reduce-scattered along tokens.
    MatrixView<T> dx = detail::ensure(options_.sequence_parallel ? grad_full_ : grad_input_, ctx_, tokens, hidden_);
    dev.gemm(Op::n, Op::n, T(1), ConstView<T>(dqkv), weight_.view(), T(0), dx);
    if (!options_.sequence_parallel) {
      detail::all_reduce_sum(ctx_, dx);
      return grad_input_;
    }
    const Range mine = partition(tokens, ctx_.world(), ctx_.rank());
    detail::reduce_scatter_rows(ctx_, ConstView<T>(dx), detail::ensure(grad_input_, ctx_, mine.size(), hidden_));
    return grad_input_;
  }

  /// Frees the buffers of forward and backward (saved input, outputs, scratch), keeping weights
  /// and gradients; the next forward allocates them again. Activation recomputation calls it
  /// between a layer's forward and its rerun (tp::models::Transformer, Recompute::full).
  void release_activations() {
    detail::release(input_, qkv_, context_, grad_qkv_, kv_grad_, kv_bias_grad_, grad_input_, grad_full_, lse_,
                    positions_);
    dense_.release_activations();
  }

  void zero_grad() {
    ctx_.device->fill(weight_grad_.view(), T(0));
    if (options_.bias) ctx_.device->fill(bias_grad_.view(), T(0));
    dense_.zero_grad();
  }

  /// The QKV records (q, k, v blocks of the weight, then of the bias), then dense's weight and bias.
  std::vector<Parameter<T>> parameters() {
    packing_.check_unpacked(options_.name, "parameters()");
    auto ps = qkv_parameters();
    for (auto& p : dense_.parameters()) ps.push_back(p);
    return ps;
  }

  /// Loads this rank's parts of the full fused QKV [(heads + 2 kv_heads) head_dim, hidden] weight
  /// and [1, ...] bias, and of the dense [hidden, heads head_dim] weight and [1, hidden] bias.
  void load_full(ConstView<T> qkv_weight, ConstView<T> qkv_bias, ConstView<T> dense_weight, ConstView<T> dense_bias) {
    packing_.check_unpacked(options_.name, "load_full");
    for (const auto& p : qkv_parameters())
      load_from_full(*ctx_.device, p, p.name.ends_with(".bias") ? qkv_bias : qkv_weight);
    dense_.load_full(dense_weight, dense_bias);
  }

  /// The query heads this rank holds.
  Range q_heads() const { return q_heads_; }
  /// The kv heads this rank holds (one, shared with other ranks, when world > kv_heads).
  Range kv_heads() const { return kv_heads_range_; }
  /// How many ranks hold each kv head.
  std::int64_t kv_replicas() const { return replicas_; }
  std::int64_t head_dim() const { return head_dim_; }
  /// The output projection (it keeps its own inference mode's rule, see RowParallelLinear).
  RowParallelLinear<T, Device>& dense() { return dense_; }
  const RowParallelLinear<T, Device>& dense() const { return dense_; }
  MatrixView<T> qkv_weight() {
    packing_.check_unpacked(options_.name, "qkv_weight() (writable)");
    return weight_.view();
  }
  ConstView<T> qkv_weight() const { return weight_.view(); }
  MatrixView<T> qkv_weight_grad() { return weight_grad_.view(); }
  MatrixView<T> qkv_bias_grad() { return bias_grad_.view(); }
  const Options& options() const { return options_; }

  /// Inference mode: packs the QKV and dense weights (see the top); unpack() frees the copies.
  void pack_for_inference() {
    packing_.pack(ctx_.device, weight_.view());
    dense_.pack_for_inference();
  }
  void unpack() {
    packing_.unpack();
    dense_.unpack();
  }
  bool packed_for_inference() const { return packing_.on(); }
  std::int64_t packed_bytes() const { return packing_.bytes() + dense_.packed_bytes(); }
  /// The QKV weight's packed copy (the dense one: dense().packed_weight()).
  const PackedWeight<T, Device>& packed_qkv_weight() const { return packing_.weight(); }

 private:
  std::int64_t checked_head_dim() const {
    const int world = ctx_.world();
    TP_CHECK(hidden_ > 0 && heads_ > 0 && kv_heads_ > 0, "{}: hidden {}, heads {}, kv_heads {} must be positive",
             options_.name, hidden_, heads_, kv_heads_);
    TP_CHECK(heads_ % kv_heads_ == 0, "{}: heads = {} is not a multiple of kv_heads = {}", options_.name, heads_,
             kv_heads_);
    TP_CHECK(heads_ % world == 0, "{}: heads = {} cannot be split over world size {}: every rank needs the same "
             "number of query heads", options_.name, heads_, world);
    TP_CHECK(kv_heads_ % world == 0 || world % kv_heads_ == 0,
             "{}: kv_heads = {} cannot be split over world size {} nor replicated across it (one must divide the "
             "other)", options_.name, kv_heads_, world);
    TP_CHECK(options_.head_dim >= 0, "{}: head_dim must be positive (or 0: hidden / heads), got {}", options_.name,
             options_.head_dim);
    TP_CHECK(options_.head_dim > 0 || hidden_ % heads_ == 0,
             "{}: hidden = {} is not a multiple of heads = {}; pass head_dim", options_.name, hidden_, heads_);
    return options_.head_dim > 0 ? options_.head_dim : hidden_ / heads_;
  }

  static std::uint64_t next_id() {
    static std::atomic<std::uint64_t> count{0};
    return ++count;
  }

  bool checked_rope() const {
    TP_CHECK(options_.rope_theta >= 0, "{}: rope_theta must be positive (or 0: no RoPE), got {}", options_.name,
             options_.rope_theta);
    TP_CHECK(options_.rope_theta == 0 || head_dim_ % 2 == 0, "{}: RoPE needs an even head_dim, got {}",
             options_.name, head_dim_);
    return options_.rope_theta > 0;
  }

  void check_input(ConstView<T> x) const {
    TP_CHECK(x.cols == hidden_ && (x.rows > 0 || options_.sequence_parallel),
             "{}: input is {}x{}, expected [tokens > 0, {}]", options_.name, x.rows, x.cols, hidden_);
  }

  /// The full token count of batch, checked against x and the batch's positions and mask.
  std::int64_t batch_tokens(ConstView<T> x, const AttentionBatch& batch) const {
    check_input(x);
    std::int64_t tokens = 0;
    for (const std::int64_t n : batch.lengths) {
      TP_CHECK(n >= 0, "{}: sequence length {} is negative", options_.name, n);
      tokens += n;
    }
    TP_CHECK(options_.sequence_parallel || x.rows == tokens,
             "{}: input has {} tokens, but the batch's {} sequence lengths add up to {}", options_.name, x.rows,
             batch.lengths.size(), tokens);
    if (options_.sequence_parallel)
      detail::full_tokens(true, x.rows, tokens, ctx_.world(), ctx_.rank(), options_.name);
    TP_CHECK(batch.positions.data == nullptr || (batch.positions.rows == 1 && batch.positions.cols == tokens),
             "{}: positions are {}x{}, expected 1x{} (one per token)", options_.name, batch.positions.rows,
             batch.positions.cols, tokens);
    TP_CHECK(batch.key_mask.empty() || static_cast<std::int64_t>(batch.key_mask.size()) == tokens,
             "{}: key mask has {} entries for {} tokens", options_.name, batch.key_mask.size(), tokens);
    return tokens;
  }

  /// Gathers the input (sequence parallel) into input_ and projects it: qkv_ = input W^T + b.
  MatrixView<T> project(ConstView<T> x, std::int64_t tokens) {
    const Device& dev = *ctx_.device;
    MatrixView<T> input = detail::ensure(input_, ctx_, tokens, hidden_);
    if (options_.sequence_parallel)
      detail::gather_rows(ctx_, x, input);
    else
      dev.copy(x, input);
    MatrixView<T> qkv = detail::ensure(qkv_, ctx_, tokens, weight_.rows());
    // Through the linear op, not a bare GEMM: at few tokens (decoding) it takes the CPU's streaming
    // kernels, where Cpu::gemm would run a GEMV per token.
    const ConstView<T> bias = options_.bias ? ConstView<T>(bias_.view()) : ConstView<T>{};
    if (packing_.on())
      tp::ops::linear_forward<T>(dev, ConstView<T>(input), weight_.view(), packing_.weight(), bias, qkv);
    else
      tp::ops::linear_forward<T>(dev, ConstView<T>(input), weight_.view(), bias, qkv);
    return qkv;
  }

  /// RoPE on q and k in place, at batch.positions or, without them, start[b] + i for token i of
  /// sequence b; the positions stay in positions_ for backward.
  void rotate(MatrixView<T> qkv, const AttentionBatch& batch, const std::vector<std::int64_t>& start,
              std::int64_t tokens) {
    if (!rope_) return;
    const Device& dev = *ctx_.device;
    const MatrixView<std::int64_t> positions = detail::ensure(positions_, ctx_, 1, tokens);
    if (batch.positions.data != nullptr) {
      dev.copy(batch.positions, positions);
    } else {
      std::vector<std::int64_t> host;
      host.reserve(static_cast<std::size_t>(tokens));
      for (std::size_t b = 0; b < batch.lengths.size(); ++b)
        for (std::int64_t i = 0; i < batch.lengths[b]; ++i) host.push_back(start[b] + i);
      dev.from_host(ConstView<std::int64_t>(host.data(), 1, tokens), positions);
    }
    tp::ops::rope(dev, qkv.cols_range(0, q_width_), ConstView<std::int64_t>(positions), head_dim_,
                  options_.rope_theta, false);
    tp::ops::rope(dev, qkv.cols_range(q_width_, kv_width_), ConstView<std::int64_t>(positions), head_dim_,
                  options_.rope_theta, false);
  }

  std::vector<Parameter<T>> qkv_parameters() {
    const std::int64_t d = head_dim_, q_full = heads_ * d, kv_full = kv_heads_ * d;
    const Range q{q_heads_.begin * d, q_heads_.end * d};
    const Range k{q_full + kv_heads_range_.begin * d, q_full + kv_heads_range_.end * d};
    const Range v{q_full + kv_full + kv_heads_range_.begin * d, q_full + kv_full + kv_heads_range_.end * d};
    const std::int64_t full = q_full + 2 * kv_full;
    const std::int64_t offsets[3] = {0, q_width_, q_width_ + kv_width_};
    const Range blocks[3] = {q, k, v};
    // k and v blocks are held by replicas_ consecutive ranks when the world exceeds the kv heads.
    const int copies[3] = {0, ctx_.rank() % static_cast<int>(replicas_), ctx_.rank() % static_cast<int>(replicas_)};
    std::vector<Parameter<T>> ps;
    for (int i = 0; i < 3; ++i)
      ps.push_back({options_.name + ".qkv.weight", weight_.view().rows_range(offsets[i], blocks[i].size()),
                    weight_grad_.view().rows_range(offsets[i], blocks[i].size()), full, hidden_, blocks[i],
                    {0, hidden_}, copies[i]});
    if (options_.bias)
      for (int i = 0; i < 3; ++i)
        ps.push_back({options_.name + ".qkv.bias",
                      bias_.view().cols_range(offsets[i], blocks[i].size()),
                      bias_grad_.view().cols_range(offsets[i], blocks[i].size()),
                      1,
                      full,
                      {0, 1},
                      blocks[i],
                      copies[i],
                      false});
    return ps;
  }

  Context<Device> ctx_;
  std::int64_t hidden_, heads_, kv_heads_;
  Options options_;
  std::int64_t head_dim_;
  bool rope_;
  RowParallelLinear<T, Device> dense_;
  Range q_heads_, kv_heads_range_;
  std::int64_t replicas_ = 1, q_width_ = 0, kv_width_ = 0;
  AttentionSequences seqs_;  // the last forward's sequences, for backward
  bool cached_ = false;      // the last forward used a KV cache: nothing to differentiate
  // Tells this layer's caches from other layers' (kept by a move, unlike the address).
  std::uint64_t id_ = next_id();
  std::shared_ptr<Communicator> kv_comm_;
  Tensor<T, Device> weight_, bias_, weight_grad_, bias_grad_;
  Tensor<T, Device> input_, qkv_, context_, grad_qkv_, kv_grad_, kv_bias_grad_, grad_input_, grad_full_;
  Tensor<tp::ops::AttentionStat<T>, Device> lse_;  // attention_forward's per-row log-sum-exp
  Tensor<std::int64_t, Device> positions_;          // RoPE's positions of the last forward
  detail::SavedActivation saved_;
  detail::InferencePacking<T, Device> packing_;
};

}  // namespace tp
