#pragma once
/// One transformer built from tp's layers for the three architectures of tp/models/config.hpp,
/// on one rank of a TP group:
///
///   gpt2   x = embed(ids) + position(pos); per layer x += attn(norm1(x)); x += mlp(norm2(x));
///          logits = head(final_norm(x)), LayerNorm, GELU (tanh), the head tied to `embed`.
///   llama  x = embed(ids); the same pre-norm layers with RMSNorm, rotary q/k inside the
///          attention, SwiGLU; head tied (ParallelLMHead) or its own ColumnParallelLinear.
///   bert   x = embed_norm(embed(ids) + position(pos) + token_type(types)); per layer
///          x = norm1(x + attn(x)); x = norm2(x + mlp(x)) (post-norm, bidirectional attention);
///          the output is x, the last hidden states.
///
/// Parameters (names in parameters(); tp/models/hugging_face.hpp maps them to Hugging Face's):
///   embed.weight, position.weight (gpt2, bert), token_type.weight, embed_norm.{weight,bias} (bert),
///   layers.<i>.{norm1, attention.qkv, attention.dense, norm2, mlp.fc1, mlp.fc2}.{weight,bias},
///   final_norm.{weight,bias} (decoders; RMSNorm has no bias), lm_head.weight (untied decoders).
///
/// Input: token ids [1, tokens] in device memory, the sequences of an AttentionBatch packed one
/// after another (no padding). Output: a decoder's logits, this rank's vocabulary columns
/// [tokens, vocab_range().size()] (VocabParallelCrossEntropy's split and tp::sample's); BERT's
/// last hidden states [tokens, hidden], the same on every rank. backward takes the gradient of
/// that output and accumulates every parameter's gradient. Incremental decoding: make_cache, then
/// forward(ids, batch, cache) with the new tokens of each sequence (inference only), or
/// next_token_logits(ids, batch, cache) for the logits of each sequence's last new token alone.
///
/// Training at scale (tp/train/): set_grad_ready_hook(f) has backward call f(first, last) as soon
/// as the gradients of parameters()[first, last) are final (after each layer's backward, after the
/// final norm and head, after the embeddings), which is when data-parallel reduction of their
/// bucket may start; set_param_use_hook(f) has forward call f(first, last) before each part reads
/// its weights (and parameters(), layer(i), an inference forward call it for all of them), which is
/// where the all-gather of ZeRO-1's updated weights is waited for. set_recompute(full) keeps only
/// each layer's input in forward (the layer runs under tp::NoGrad and then frees its buffers) and
/// reruns the layer's forward just before its backward, freeing the buffers again after it: the
/// same arithmetic on the same input, so the same gradients bit for bit, with one layer's
/// activations alive at a time instead of all of them. `selective` is the same as `none`, see
/// Recompute.
///
/// Inference mode (pack_for_inference, unpack; torch calls the idea freezing, IPEX weight
/// prepacking): every layer's QKV, output, fc1 and fc2 weights are also held packed for the
/// device's GEMMs (tp::ops::pack_weight), which the prefill (forwards of more tokens than the
/// streaming kernels take) reads, while decode keeps the plain weights: one more copy of those
/// weights in memory (packed_bytes(); 0 where nothing is packed: doubles, 16-bit types, tp::Cuda;
/// the embeddings, norms and LM head are not packed). While packed, whatever could change a
/// weight throws tp::Error naming the layer and saying to unpack() first: parameters() (so
/// load_hugging_face, savers and optimizers built afterwards), each layer's load_full and writable
/// weight accessors, and backward. Views of parameters() taken before packing are the caller's:
/// writing through them while packed (an optimizer built earlier stepping) leaves the packed copies
/// stale; unpack() first, write, and pack again. tp::generate does not pack by itself.

#include <cstdint>
#include <functional>
#include <string_view>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tp/core/context.hpp"
#include "tp/core/grad_mode.hpp"
#include "tp/core/ops.hpp"
#include "tp/core/parameter.hpp"
#include "tp/layers/attention_batch.hpp"
#include "tp/layers/column_parallel_linear.hpp"
#include "tp/layers/kv_cache.hpp"
#include "tp/layers/layer_norm.hpp"
#include "tp/layers/parallel_attention.hpp"
#include "tp/layers/parallel_lm_head.hpp"
#include "tp/layers/parallel_mlp.hpp"
#include "tp/layers/rms_norm.hpp"
#include "tp/layers/vocab_parallel_embedding.hpp"
#include "tp/models/config.hpp"

namespace tp::models {

/// LayerNorm or RMSNorm, as the architecture says.
template <class T, class Device>
class Norm {
 public:
  Norm(const Context<Device>& ctx, const TransformerConfig& c, const std::string& name) {
    if (c.arch == Architecture::llama)
      rms_ = std::make_unique<RMSNorm<T, Device>>(ctx, c.hidden, RMSNormOptions{.eps = c.norm_eps, .name = name});
    else
      ln_ = std::make_unique<LayerNorm<T, Device>>(ctx, c.hidden, LayerNormOptions{.eps = c.norm_eps, .name = name});
  }
  const Tensor<T, Device>& forward(ConstView<T> x) { return rms_ ? rms_->forward(x) : ln_->forward(x); }
  const Tensor<T, Device>& backward(ConstView<T> dy) { return rms_ ? rms_->backward(dy) : ln_->backward(dy); }
  std::vector<Parameter<T>> parameters() { return rms_ ? rms_->parameters() : ln_->parameters(); }
  void zero_grad() { rms_ ? rms_->zero_grad() : ln_->zero_grad(); }
  void release_activations() { rms_ ? rms_->release_activations() : ln_->release_activations(); }

 private:
  std::unique_ptr<LayerNorm<T, Device>> ln_;
  std::unique_ptr<RMSNorm<T, Device>> rms_;
};

template <class T, class Device>
struct TransformerLayer {
  Norm<T, Device> norm1;
  ParallelAttention<T, Device> attention;
  Norm<T, Device> norm2;
  ParallelMLP<T, Device> mlp;

  TransformerLayer(const Context<Device>& ctx, const TransformerConfig& c, const std::string& name, std::uint64_t seed)
      : norm1(ctx, c, name + ".norm1"),
        attention(ctx, c.hidden, c.heads, c.kv_heads,
                  {.causal = c.decoder(),
                   .bias = c.qkv_bias,
                   .dense_bias = c.dense_bias,
                   .rope_theta = c.arch == Architecture::llama ? c.rope_theta : 0.0,
                   .head_dim = c.head_dim,
                   .name = name + ".attention",
                   .seed = seed}),
        norm2(ctx, c, name + ".norm2"),
        mlp(ctx, c.hidden, c.ffn, {.activation = c.activation, .bias = c.mlp_bias, .name = name + ".mlp", .seed = seed}) {}

  /// Frees every buffer of the layer's forward and backward (full recomputation, between them).
  void release_activations() {
    norm1.release_activations();
    attention.release_activations();
    norm2.release_activations();
    mlp.release_activations();
  }
};

/// One KvCache per layer, for `batch` sequences of up to `max_len` tokens.
template <class T, class Device>
struct TransformerCache {
  std::vector<KvCache<T, Device>> layers;
  std::int64_t length(std::int64_t b) const { return layers.front().length(b); }
  std::int64_t batch() const { return layers.front().batch(); }
  std::int64_t max_len() const { return layers.front().max_len(); }
  void reset() {
    for (auto& c : layers) c.reset();
  }
};

/// Activation recomputation per layer (Megatron's --recompute-granularity).
///
/// - none: every layer keeps its activations from forward to backward.
/// - selective: Megatron recomputes the attention core (QK^T, softmax, dropout, times V) because
///   it stores the [heads, s, s] scores and probabilities, quadratic in the sequence. tp's
///   attention never stores them: its forward keeps q, k, v, the context and one log-sum-exp per
///   row (all linear in s) and its backward rebuilds the softmax from them, flash-style. So the
///   attention core is recomputed under every setting and `selective` keeps exactly what `none`
///   keeps (tests/train/trainer_test.cpp checks the same gradients, memory_test.cpp the same peak).
/// - full: each layer keeps only its input and reruns its forward in backward (Transformer).
enum class Recompute { none, selective, full };

inline Recompute parse_recompute(std::string_view name) {
  if (name == "none") return Recompute::none;
  if (name == "selective") return Recompute::selective;
  if (name == "full") return Recompute::full;
  TP_THROW(InvalidArgument, "recompute '{}' is not one of none, selective, full", name);
}

template <class T, class Device = Cpu>
class Transformer {
 public:
  /// f(first, last): the gradients of parameters()[first, last) are final for this backward.
  using GradReadyHook = std::function<void(std::size_t, std::size_t)>;
  /// f(first, last): the values of parameters()[first, last) are about to be read.
  using ParamUseHook = std::function<void(std::size_t, std::size_t)>;

  using Cache = TransformerCache<T, Device>;

  /// A model of `config` with freshly initialised weights (keyed by `seed`, the same full tensors
  /// at every TP degree), usually replaced by load_hugging_face. Throws InvalidArgument if the
  /// config is inconsistent or its heads cannot be split over the group.
  Transformer(Context<Device> ctx, TransformerConfig config, std::uint64_t seed = 0)
      : ctx_(std::move(ctx)), config_((config.validate(), std::move(config))) {
    const TransformerConfig& c = config_;
    embed_ = std::make_unique<VocabParallelEmbedding<T, Device>>(ctx_, c.vocab, c.hidden,
                                                                 VocabParallelEmbeddingOptions{.name = "embed", .seed = seed});
    if (c.arch != Architecture::llama)
      position_ = std::make_unique<VocabParallelEmbedding<T, Device>>(
          ctx_, c.max_positions, c.hidden, VocabParallelEmbeddingOptions{.name = "position", .seed = seed});
    if (c.arch == Architecture::bert) {
      token_type_ = std::make_unique<VocabParallelEmbedding<T, Device>>(
          ctx_, c.type_vocab, c.hidden, VocabParallelEmbeddingOptions{.name = "token_type", .seed = seed});
      embed_norm_ = std::make_unique<Norm<T, Device>>(ctx_, c, "embed_norm");
    }
    for (std::int64_t i = 0; i < c.layers; ++i)
      layers_.push_back(std::make_unique<TransformerLayer<T, Device>>(ctx_, c, fmt::format("layers.{}", i), seed));
    if (c.decoder()) {
      final_norm_ = std::make_unique<Norm<T, Device>>(ctx_, c, "final_norm");
      if (c.tie_embeddings)
        tied_head_ = std::make_unique<ParallelLMHead<T, Device>>(*embed_);
      else
        head_ = std::make_unique<ColumnParallelLinear<T, Device>>(
            ctx_, c.hidden, c.vocab, ColumnParallelOptions{.bias = false, .name = "lm_head", .seed = seed});
    }
    ranges_.embeddings_end = count(embed_) + count(position_) + count(token_type_) + count(embed_norm_);
    std::size_t n = ranges_.embeddings_end;
    for (auto& l : layers_) {
      ranges_.layer_ends.push_back(n += l->norm1.parameters().size() + l->attention.parameters().size() +
                                        l->norm2.parameters().size() + l->mlp.parameters().size());
    }
    ranges_.layers_end = n;
    ranges_.total = n + count(final_norm_) + count(head_);
  }

  Transformer(const Transformer&) = delete;
  Transformer& operator=(const Transformer&) = delete;

  /// ids [1, tokens] (device memory) -> a decoder's logits shard [tokens, vocab_range().size()], or
  /// BERT's last hidden states [tokens, hidden]. token_types [1, tokens] (device) only for BERT
  /// (empty: all type 0). Valid until the next forward.
  const Tensor<T, Device>& forward(ConstView<std::int64_t> ids, const AttentionBatch& batch,
                                   ConstView<std::int64_t> token_types = {}) {
    const std::int64_t tokens = check_ids(ids, batch);
    TP_CHECK(token_types.empty() || config_.arch == Architecture::bert,
             "{}: token types are BERT's; this is a {} model", config_.model_type, config_.model_type);
    params_used(0, config_.decoder() ? ranges_.embeddings_end : ranges_.total);
    embed(ids, batch, token_types, nullptr);
    if (config_.decoder()) {
      const bool keep_inputs = recompute_ == Recompute::full && grad_enabled();
      if (keep_inputs) {
        inputs_.resize(layers_.size());
        batch_ = batch;
      }
      for (std::size_t i = 0; i < layers_.size(); ++i) {
        params_used(ranges_.layer_begin(i), ranges_.layer_begin(i + 1));
        if (keep_inputs) {
          // Only the layer's input is kept; its forward runs without saving for a backward.
          ctx_.device->copy(ConstView<T>(x_.view()), tp::detail::ensure(inputs_[i], ctx_, tokens, config_.hidden));
          const NoGrad no_grad;
          decoder_layer_forward(*layers_[i], x_, batch);
          layers_[i]->release_activations();
        } else {
          decoder_layer_forward(*layers_[i], x_, batch);
        }
      }
      recomputed_ = keep_inputs;
      params_used(ranges_.layers_end, ranges_.total);
      return head_forward();
    }
    for (auto& l : layers_) {
      MatrixView<T> s = tp::detail::ensure(sum_, ctx_, tokens, config_.hidden);
      ctx_.device->copy(ConstView<T>(x_.view()), s);
      add(l->attention.forward(x_.view(), batch), sum_);
      ctx_.device->copy(l->norm1.forward(sum_.view()).view(), x_.view());
      ctx_.device->copy(ConstView<T>(x_.view()), s);
      add(l->mlp.forward(x_.view()), sum_);
      ctx_.device->copy(l->norm2.forward(sum_.view()).view(), x_.view());
    }
    return x_;
  }

  /// Decoders: batch.lengths[b] new tokens of cached sequence b, after what `cache` holds; returns
  /// their logits. Inference only (no backward).
  const Tensor<T, Device>& forward(ConstView<std::int64_t> ids, const AttentionBatch& batch, Cache& cache) {
    cached_layers_forward(ids, batch, cache);
    return head_forward();
  }

  /// Decoders: forward(ids, batch, cache), but only the logits that choose each sequence's next
  /// token: row b is the logits after sequence b's last new token, [batch.lengths.size(),
  /// vocab_range().size()]. The final norm and the LM head run on those rows alone, which spares a
  /// prompt of n tokens n - 1 rows of the vocabulary projection (tp::generate's prefill). Every
  /// sequence needs at least one new token. Inference only; valid until the next forward.
  const Tensor<T, Device>& next_token_logits(ConstView<std::int64_t> ids, const AttentionBatch& batch, Cache& cache) {
    for (std::size_t b = 0; b < batch.lengths.size(); ++b)
      TP_CHECK(batch.lengths[b] > 0,
               "{}: next_token_logits needs a new token in every sequence; sequence {} of {} has {}", config_.model_type,
               b, batch.lengths.size(), batch.lengths[b]);
    cached_layers_forward(ids, batch, cache);
    const auto sequences = static_cast<std::int64_t>(batch.lengths.size());
    MatrixView<T> last = tp::detail::ensure(last_, ctx_, sequences, config_.hidden);
    std::int64_t end = 0;
    for (std::int64_t b = 0; b < sequences; ++b) {
      end += batch.lengths[static_cast<std::size_t>(b)];
      ctx_.device->copy(ConstView<T>(x_.view().rows_range(end - 1, 1)), last.rows_range(b, 1));
    }
    return head_forward(ConstView<T>(last));
  }

  /// The gradient of forward's output (same shape) -> every parameter's gradient, accumulated.
  void backward(ConstView<T> grad_output) {
    check_unpacked("backward");
    const Device& dev = *ctx_.device;
    const std::int64_t tokens = x_.rows();
    MatrixView<T> dx = tp::detail::ensure(dx_, ctx_, tokens, config_.hidden);
    if (config_.decoder()) {
      const auto& dy = tied_head_ ? tied_head_->backward(grad_output) : head_->backward(grad_output);
      dev.copy(final_norm_->backward(dy.view()).view(), dx);
      grads_ready(ranges_.layers_end, ranges_.total);  // final norm, untied head
      for (std::size_t i = layers_.size(); i-- > 0;) {
        auto& l = *layers_[i];
        if (recomputed_) {
          // The layer's forward again, from its kept input, saving for this backward.
          MatrixView<T> y = tp::detail::ensure(recompute_x_, ctx_, tokens, config_.hidden);
          dev.copy(ConstView<T>(inputs_[i].view()), y);
          decoder_layer_forward(l, recompute_x_, batch_);
        }
        add(l.norm2.backward(l.mlp.backward(dx).view()), dx_);
        add(l.norm1.backward(l.attention.backward(dx).view()), dx_);
        if (recomputed_) l.release_activations();  // one layer's buffers at a time
        grads_ready(ranges_.layer_begin(i), ranges_.layer_begin(i + 1));
      }
      embed_->backward(dx);
      if (position_) position_->backward(dx);
      grads_ready(0, ranges_.embeddings_end);
      return;
    }
    TP_CHECK(grad_output.rows == tokens && grad_output.cols == config_.hidden,
             "bert: output gradient is {}x{}, expected {}x{}", grad_output.rows, grad_output.cols, tokens,
             config_.hidden);
    dev.copy(grad_output, dx);
    for (auto it = layers_.rbegin(); it != layers_.rend(); ++it) {
      auto& l = **it;
      // x2 = norm2(x1 + mlp(x1)): d(x1) = g + mlp'(g) with g = norm2'(dx2); the same for attention.
      dev.copy(l.norm2.backward(dx).view(), dx);
      add(l.mlp.backward(dx).view(), dx_);
      dev.copy(l.norm1.backward(dx).view(), dx);
      add(l.attention.backward(dx).view(), dx_);
      const auto i = static_cast<std::size_t>(layers_.rend() - it - 1);
      grads_ready(ranges_.layer_begin(i), ranges_.layer_begin(i + 1));
    }
    const auto& de = embed_norm_->backward(dx);
    embed_->backward(de.view());
    position_->backward(de.view());
    token_type_->backward(de.view());
    grads_ready(0, ranges_.embeddings_end);
  }

  /// Called by backward with the parameter ranges whose gradients are final (see the top).
  void set_grad_ready_hook(GradReadyHook hook) { grad_ready_ = std::move(hook); }
  /// Called with a part's parameter range before the part's forward reads it (the embeddings, each
  /// layer, the final norm and head), and with the whole range before any other access to the
  /// weights (parameters(), layer(i), an inference forward): where tp::DistributedAdamW waits for
  /// the all-gather of the weights it updated (Megatron's forward pre-hook, overlap_param_gather).
  void set_param_use_hook(ParamUseHook hook) { param_use_ = std::move(hook); }
  /// Activation recomputation of every layer (decoders; BERT runs without).
  void set_recompute(Recompute r) {
    TP_CHECK(r != Recompute::full || config_.decoder(), "{}: recomputation is implemented for decoders",
             config_.model_type);
    recompute_ = r;
  }
  Recompute recompute() const { return recompute_; }

  /// Every parameter this rank holds, in a fixed order (embeddings, layers, final norm, head).
  std::vector<Parameter<T>> parameters() {
    check_unpacked("parameters()");
    params_used(0, ranges_.total);
    std::vector<Parameter<T>> ps;
    auto append = [&](std::vector<Parameter<T>> more) { ps.insert(ps.end(), more.begin(), more.end()); };
    append(embed_->parameters());
    if (position_) append(position_->parameters());
    if (token_type_) append(token_type_->parameters());
    if (embed_norm_) append(embed_norm_->parameters());
    for (auto& l : layers_) {
      append(l->norm1.parameters());
      append(l->attention.parameters());
      append(l->norm2.parameters());
      append(l->mlp.parameters());
    }
    if (final_norm_) append(final_norm_->parameters());
    if (head_) append(head_->parameters());
    return ps;
  }

  void zero_grad() {
    embed_->zero_grad();
    if (position_) position_->zero_grad();
    if (token_type_) token_type_->zero_grad();
    if (embed_norm_) embed_norm_->zero_grad();
    for (auto& l : layers_) {
      l->norm1.zero_grad();
      l->attention.zero_grad();
      l->norm2.zero_grad();
      l->mlp.zero_grad();
    }
    if (final_norm_) final_norm_->zero_grad();
    if (head_) head_->zero_grad();
  }

  /// Inference mode (see the top): packs every layer's linear weights, a pass over them; call it
  /// after loading. Packing again repacks (after unpack(), a change and pack_for_inference()).
  void pack_for_inference() {
    params_used(0, ranges_.total);
    for (auto& l : layers_) {
      l->attention.pack_for_inference();
      l->mlp.pack_for_inference();
    }
    packed_ = true;
  }
  /// Back to training mode: frees the packed copies.
  void unpack() {
    for (auto& l : layers_) {
      l->attention.unpack();
      l->mlp.unpack();
    }
    packed_ = false;
  }
  bool packed_for_inference() const { return packed_; }
  /// Bytes of this rank's packed copies (beside the plain weights).
  std::int64_t packed_bytes() const {
    std::int64_t bytes = 0;
    for (const auto& l : layers_) bytes += l->attention.packed_bytes() + l->mlp.packed_bytes();
    return bytes;
  }

  /// One KvCache per layer for `batch` sequences of up to max_len tokens (decoders).
  Cache make_cache(std::int64_t batch, std::int64_t max_len) {
    TP_CHECK(config_.decoder(), "{}: a KV cache is for decoders", config_.model_type);
    TP_CHECK(config_.arch == Architecture::llama || max_len <= config_.max_positions,
             "{}: a cache of {} tokens is longer than the {} learned positions", config_.model_type, max_len,
             config_.max_positions);
    Cache cache;
    for (auto& l : layers_) cache.layers.push_back(l->attention.make_cache(batch, max_len));
    return cache;
  }

  /// The vocabulary columns of this rank's logits.
  Range vocab_range() const { return head_ ? head_->output_range() : embed_->vocab_range(); }
  const TransformerConfig& config() const { return config_; }
  const Context<Device>& context() const { return ctx_; }
  std::int64_t num_layers() const { return static_cast<std::int64_t>(layers_.size()); }
  TransformerLayer<T, Device>& layer(std::int64_t i) {
    params_used(0, ranges_.total);
    return *layers_.at(static_cast<std::size_t>(i));
  }

  /// A tensor of the checkpoint the model was loaded from that tp does not compute with (BERT's
  /// pooler, its masked-LM and next-sentence heads), held whole on every rank, unchanged by
  /// training, so that saving writes the checkpoint whole (tp/models/hugging_face.hpp).
  struct KeptTensor {
    std::string name;                 ///< the checkpoint's, e.g. "bert.pooler.dense.weight"
    std::vector<std::int64_t> shape;  ///< as stored
    Tensor<T, Device> value;          ///< [rows, cols] of the shape seen as a matrix
  };
  std::vector<KeptTensor>& kept_tensors() { return kept_; }
  /// The prefix of the checkpoint's names for the model's own tensors ("bert." in a
  /// BertForMaskedLM or BertForPreTraining checkpoint); empty: the architecture's default.
  std::string& checkpoint_prefix() { return checkpoint_prefix_; }

 private:
  /// Where each part's parameters start and end in parameters().
  struct Ranges {
    std::size_t embeddings_end = 0, layers_end = 0, total = 0;
    std::vector<std::size_t> layer_ends;
    std::size_t layer_begin(std::size_t i) const { return i == 0 ? embeddings_end : layer_ends[i - 1]; }
  };
  template <class P>
  static std::size_t count(const std::unique_ptr<P>& p) {
    return p ? p->parameters().size() : 0;
  }
  void check_unpacked(std::string_view what) const {
    TP_CHECK(!packed_,
             "{}: {} while the model is packed for inference (pack_for_inference: layers.0.attention.qkv and every "
             "other linear layer hold packed copies of their weights, which would go stale); call unpack() first",
             config_.model_type, what);
  }
  void grads_ready(std::size_t first, std::size_t last) {
    if (grad_ready_ && first < last) grad_ready_(first, last);
  }
  void params_used(std::size_t first, std::size_t last) {
    if (param_use_ && first < last) param_use_(first, last);
  }
  /// x += attention(norm1(x)); x += mlp(norm2(x)).
  void decoder_layer_forward(TransformerLayer<T, Device>& l, Tensor<T, Device>& x, const AttentionBatch& batch) {
    add(l.attention.forward(l.norm1.forward(x.view()).view(), batch), x);
    add(l.mlp.forward(l.norm2.forward(x.view()).view()), x);
  }

  static void add_impl(const Device& dev, ConstView<T> y, MatrixView<T> x) { tp::ops::add(dev, y, x); }
  void add(const Tensor<T, Device>& y, Tensor<T, Device>& x) { add_impl(*ctx_.device, y.view(), x.view()); }
  void add(ConstView<T> y, Tensor<T, Device>& x) { add_impl(*ctx_.device, y, x.view()); }

  std::int64_t check_ids(ConstView<std::int64_t> ids, const AttentionBatch& batch) const {
    TP_CHECK(ids.rows == 1 && ids.cols > 0, "{}: ids are {}x{}, expected [1, tokens > 0]", config_.model_type,
             ids.rows, ids.cols);
    std::int64_t sum = 0;
    for (const std::int64_t n : batch.lengths) {
      TP_CHECK(n >= 0, "{}: a sequence length is {}", config_.model_type, n);
      sum += n;
    }
    TP_CHECK(sum == ids.cols, "{}: the batch's sequence lengths add up to {}, but there are {} ids",
             config_.model_type, sum, ids.cols);
    return ids.cols;
  }

  /// x_ = the embeddings of the input (bert: normalised). Learned positions count from 0 in each
  /// sequence, after what `cache` holds (or are batch.positions when given).
  void embed(ConstView<std::int64_t> ids, const AttentionBatch& batch, ConstView<std::int64_t> token_types,
             const Cache* cache) {
    const Device& dev = *ctx_.device;
    const std::int64_t tokens = ids.cols;
    MatrixView<T> x = tp::detail::ensure(x_, ctx_, tokens, config_.hidden);
    dev.copy(embed_->forward(ids).view(), x);
    if (position_) {
      ConstView<std::int64_t> pos = batch.positions;
      if (pos.empty()) {
        std::vector<std::int64_t> host;
        host.reserve(static_cast<std::size_t>(tokens));
        for (std::size_t b = 0; b < batch.lengths.size(); ++b) {
          const std::int64_t start = cache ? cache->length(static_cast<std::int64_t>(b)) : 0;
          for (std::int64_t i = 0; i < batch.lengths[b]; ++i) host.push_back(start + i);
        }
        for (const std::int64_t p : host)
          TP_CHECK(p < config_.max_positions, "{}: position {} is past the model's {} learned positions",
                   config_.model_type, p, config_.max_positions);
        MatrixView<std::int64_t> d = tp::detail::ensure(positions_, ctx_, 1, tokens);
        dev.from_host(ConstView<std::int64_t>(host.data(), 1, tokens), d);
        pos = positions_.view();
      }
      TP_CHECK(pos.size() == tokens, "{}: {} positions for {} tokens", config_.model_type, pos.size(), tokens);
      add(position_->forward(pos), x_);
    }
    if (token_type_) {
      ConstView<std::int64_t> types = token_types;
      if (types.empty()) {
        MatrixView<std::int64_t> d = tp::detail::ensure(types_, ctx_, 1, tokens);
        dev.fill(d, std::int64_t{0});
        types = types_.view();
      }
      TP_CHECK(types.size() == tokens, "bert: {} token types for {} tokens", types.size(), tokens);
      add(token_type_->forward(types), x_);
      dev.copy(embed_norm_->forward(x_.view()).view(), x);
    }
  }

  const Tensor<T, Device>& head_forward() { return head_forward(ConstView<T>(x_.view())); }
  const Tensor<T, Device>& head_forward(ConstView<T> x) {
    const auto& h = final_norm_->forward(x);
    return tied_head_ ? tied_head_->forward(h.view()) : head_->forward(h.view());
  }

  /// x_ = the last hidden states (before the final norm) of the new tokens, through `cache`.
  void cached_layers_forward(ConstView<std::int64_t> ids, const AttentionBatch& batch, Cache& cache) {
    params_used(0, ranges_.total);
    TP_CHECK(config_.decoder(), "{}: a KV cache is for decoders; BERT attends in both directions", config_.model_type);
    TP_CHECK(cache.layers.size() == layers_.size(), "{}: the cache has {} layers, the model {}", config_.model_type,
             cache.layers.size(), layers_.size());
    check_ids(ids, batch);
    embed(ids, batch, {}, &cache);
    for (std::size_t i = 0; i < layers_.size(); ++i) {
      auto& l = *layers_[i];
      add(l.attention.forward(l.norm1.forward(x_.view()).view(), batch, cache.layers[i]), x_);
      add(l.mlp.forward(l.norm2.forward(x_.view()).view()), x_);
    }
  }

  Context<Device> ctx_;
  TransformerConfig config_;
  std::unique_ptr<VocabParallelEmbedding<T, Device>> embed_, position_, token_type_;
  std::unique_ptr<Norm<T, Device>> embed_norm_, final_norm_;
  std::vector<std::unique_ptr<TransformerLayer<T, Device>>> layers_;
  std::unique_ptr<ParallelLMHead<T, Device>> tied_head_;
  std::unique_ptr<ColumnParallelLinear<T, Device>> head_;
  Tensor<T, Device> x_, dx_, sum_, last_;
  Tensor<std::int64_t, Device> positions_, types_;
  std::vector<KeptTensor> kept_;
  std::string checkpoint_prefix_;
  Ranges ranges_;
  GradReadyHook grad_ready_;
  ParamUseHook param_use_;
  Recompute recompute_ = Recompute::none;
  bool packed_ = false;               ///< pack_for_inference (see the top)
  bool recomputed_ = false;           ///< the last forward kept only the layers' inputs
  std::vector<Tensor<T, Device>> inputs_;  ///< each layer's input (full recomputation)
  Tensor<T, Device> recompute_x_;
  AttentionBatch batch_;
};

}  // namespace tp::models
