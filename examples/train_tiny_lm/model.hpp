#pragma once
/// A small byte-level language model built from tp's layers, with its optimizer, data and
/// checkpoints: what examples/train_tiny_lm/main.cpp trains and tests/examples/train_tiny_lm_test.cpp
/// drives. Two architectures:
///
/// gpt2:  ids -> wte (VocabParallelEmbedding) + wpe (learned positions, also a VocabParallelEmbedding
///        over positions) -> layers x [x += attn(ln_1(x)); x += mlp(ln_2(x))] (LayerNorm, GELU MLP)
///        -> ln_f -> lm_head (ColumnParallelLinear to the vocabulary, output left split by
///        vocabulary, untied from wte: two parameters keep each layer's gradient flow as its own
///        tests check it) -> VocabParallelCrossEntropy, mean over the tokens.
/// llama: ids -> model.embed_tokens -> layers x [x += self_attn(input_layernorm(x)) (rotary
///        positions, no biases); x += mlp(post_attention_layernorm(x)) (SwiGLU)] (RMSNorm) ->
///        model.norm -> the LM head tied to embed_tokens (ParallelLMHead) -> the same loss. Its
///        parameters carry Hugging Face's Llama names, so the weights file is a LlamaForCausalLM
///        checkpoint as it is (save_hugging_face adds config.json).
///
/// Both use grouped-query attention (kv_heads) and serve incremental decoding through a KV cache
/// (make_cache, forward with a cache), which tp/inference/generate.hpp drives.
///
/// Everything that decides a step (initial weights, batches, learning rate) is a function of
/// (seed, step) and never of the TP degree, so TP 1, 2 and 4 train the same model; their losses
/// differ only by the float rounding of the sharded GEMMs and reductions.

#ifndef TP_HAS_IO
#error "train_tiny_lm/model.hpp needs the tp::io CMake component (checkpoints): target_link_libraries(... tp::io)"
#endif

#include <algorithm>
#include <cmath>
#include <optional>
#include <string_view>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <numbers>
#include <span>
#include <string>
#include <vector>

#include "tp/io/checkpoint.hpp"
#include "tp/io/resume.hpp"
#include "tp/io/safetensors.hpp"
#include <nlohmann/json.hpp>

#include "tp/core/grad_mode.hpp"
#include "tp/layers/attention_batch.hpp"
#include "tp/layers/column_parallel_linear.hpp"
#include "tp/layers/kv_cache.hpp"
#include "tp/layers/layer_norm.hpp"
#include "tp/layers/parallel_attention.hpp"
#include "tp/layers/parallel_lm_head.hpp"
#include "tp/layers/parallel_mlp.hpp"
#include "tp/layers/rms_norm.hpp"
#include "tp/layers/vocab_parallel_cross_entropy.hpp"
#include "tp/layers/vocab_parallel_embedding.hpp"
#include "tp/optim/adamw.hpp"
#include "tp/optim/clip_grad_norm.hpp"

namespace tiny_lm {

/// Which block the model stacks (see the top of this file).
enum class Arch { gpt2, llama };

inline std::string_view arch_name(Arch a) { return a == Arch::llama ? "llama" : "gpt2"; }

inline Arch parse_arch(std::string_view name) {
  if (name == "gpt2") return Arch::gpt2;
  if (name == "llama") return Arch::llama;
  TP_THROW(tp::InvalidArgument, "tiny_lm: architecture '{}' is neither gpt2 nor llama", name);
}

struct ModelConfig {
  Arch arch = Arch::gpt2;
  std::int64_t vocab = 256;  ///< bytes
  std::int64_t hidden = 128;
  std::int64_t heads = 4;
  std::int64_t kv_heads = 2;
  std::int64_t layers = 2;
  std::int64_t ffn = 0;  ///< 0 means 4 * hidden
  std::int64_t seq_len = 64;
  std::int64_t batch = 8;
  std::uint64_t seed = 1;
  double rope_theta = 10000;  ///< llama: the rotary base
  double norm_eps = 1e-5;     ///< llama: RMSNorm's eps (gpt2's LayerNorm keeps its 1e-5)

  bool llama() const { return arch == Arch::llama; }
  std::int64_t ffn_size() const { return ffn > 0 ? ffn : 4 * hidden; }
  std::int64_t tokens() const { return batch * seq_len; }
  /// Stored in checkpoints: a resume into a different model is refused with this text.
  std::string describe() const {
    std::string s = fmt::format("arch={} vocab={} hidden={} heads={} kv_heads={} layers={} ffn={} seq_len={} batch={} seed={}",
                                arch_name(arch), vocab, hidden, heads, kv_heads, layers, ffn_size(), seq_len, batch, seed);
    if (llama()) s += fmt::format(" rope_theta={} norm_eps={}", rope_theta, norm_eps);
    return s;
  }
};

struct TrainConfig {
  double lr = 3e-3;
  double min_lr = 3e-4;
  std::int64_t warmup = 20;  ///< linear warmup steps
  std::int64_t steps = 2000;  ///< total steps: the cosine decay reaches min_lr here
  double weight_decay = 0.1;
  double clip = 1.0;  ///< global gradient norm clip
};

/// Learning rate at `step` (0-based): linear warmup, then cosine decay to min_lr at `steps`. A pure
/// function of the step, so a resumed run follows the same schedule.
inline double learning_rate(const TrainConfig& c, std::int64_t step) {
  if (step < c.warmup) return c.lr * static_cast<double>(step + 1) / static_cast<double>(c.warmup);
  if (step >= c.steps) return c.min_lr;
  const double progress = static_cast<double>(step - c.warmup) / static_cast<double>(std::max<std::int64_t>(1, c.steps - c.warmup));
  return c.min_lr + 0.5 * (c.lr - c.min_lr) * (1.0 + std::cos(std::numbers::pi * progress));
}

/// The training text as byte ids, and batches drawn from it by (seed, step): sequence b of step s
/// starts at a Philox draw keyed by the seed and s * batch + b, so every rank and every TP degree
/// (and a resumed run) sees the same data without sharing any state.
class TextData {
 public:
  explicit TextData(const std::filesystem::path& path) : path_(path.string()) {
    std::ifstream in(path, std::ios::binary);
    if (!in) TP_THROW(tp::IoError, "{}: cannot open the training text", path_);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    bytes_.assign(text.begin(), text.end());
  }
  explicit TextData(std::vector<unsigned char> bytes, std::string name = "text")
      : path_(std::move(name)), bytes_(std::move(bytes)) {}

  std::int64_t size() const { return static_cast<std::int64_t>(bytes_.size()); }

  /// Fills ids and targets ([batch, seq_len] host tensors; targets are ids shifted by one).
  void batch(std::uint64_t seed, std::int64_t step, tp::MatrixView<std::int64_t> ids,
             tp::MatrixView<std::int64_t> targets) const {
    const std::int64_t seq = ids.cols, span = size() - seq;
    TP_CHECK(span > 0, "{}: {} bytes are too short for sequences of {} + 1", path_, size(), seq);
    const tp::Philox rng(seed, tp::name_key("tiny_lm.batch"));
    for (std::int64_t b = 0; b < ids.rows; ++b) {
      const auto block = rng(static_cast<std::uint64_t>(step * ids.rows + b));
      const std::uint64_t draw = (std::uint64_t{block[1]} << 32) | block[0];
      const auto start = static_cast<std::int64_t>(draw % static_cast<std::uint64_t>(span));
      for (std::int64_t t = 0; t < seq; ++t) {
        ids(b, t) = bytes_[start + t];
        targets(b, t) = bytes_[start + t + 1];
      }
    }
  }

 private:
  std::string path_;
  std::vector<unsigned char> bytes_;
};

/// LayerNorm (gpt2) or RMSNorm (llama), one interface.
template <class T, class Device>
class Norm {
 public:
  Norm(const tp::Context<Device>& ctx, const ModelConfig& c, const std::string& name) {
    if (c.llama())
      rms_.emplace(ctx, c.hidden, tp::RMSNormOptions{.eps = c.norm_eps, .name = name});
    else
      ln_.emplace(ctx, c.hidden, tp::LayerNormOptions{.name = name});
  }
  const tp::Tensor<T, Device>& forward(tp::ConstView<T> x) { return rms_ ? rms_->forward(x) : ln_->forward(x); }
  const tp::Tensor<T, Device>& backward(tp::ConstView<T> dy) { return rms_ ? rms_->backward(dy) : ln_->backward(dy); }
  std::vector<tp::Parameter<T>> parameters() { return rms_ ? rms_->parameters() : ln_->parameters(); }

 private:
  std::optional<tp::LayerNorm<T, Device>> ln_;
  std::optional<tp::RMSNorm<T, Device>> rms_;
};

/// One pre-norm transformer block: x += attn(norm_1(x)); x += mlp(norm_2(x)).
template <class T, class Device>
struct Block {
  Norm<T, Device> ln_1;
  tp::ParallelAttention<T, Device> attn;
  Norm<T, Device> ln_2;
  tp::ParallelMLP<T, Device> mlp;

  Block(const tp::Context<Device>& ctx, const ModelConfig& c, const std::string& name)
      : ln_1(ctx, c, name + (c.llama() ? ".input_layernorm" : ".ln_1")),
        attn(ctx, c.hidden, c.heads, c.kv_heads,
             {.causal = true,
              .bias = !c.llama(),
              .rope_theta = c.llama() ? c.rope_theta : 0.0,
              .name = name + (c.llama() ? ".self_attn" : ".attn"),
              .seed = c.seed}),
        ln_2(ctx, c, name + (c.llama() ? ".post_attention_layernorm" : ".ln_2")),
        mlp(ctx, c.hidden, c.ffn_size(),
            {.activation = c.llama() ? tp::Activation::swiglu : tp::Activation::gelu_tanh,
             .bias = !c.llama(),
             .name = name + ".mlp",
             .seed = c.seed}) {}
};

/// Attention reports its fused QKV weight (and bias) as three records of one name, one per q, k, v
/// block, which a safetensors file cannot hold as three tensors of one name. This renames them
/// "<attn>.q_proj.weight", "<attn>.k_proj.weight", "<attn>.v_proj.weight" (Hugging Face's names),
/// each placed in its own full [heads * head_dim or kv_heads * head_dim, hidden] tensor. The views
/// are the same memory, so the optimizer, clipping and checkpoints can all use this list.
template <class T>
std::vector<tp::Parameter<T>> split_qkv(std::vector<tp::Parameter<T>> ps, std::int64_t q_full, std::int64_t kv_full) {
  static constexpr const char* parts[3] = {"q_proj", "k_proj", "v_proj"};
  const std::int64_t begin[3] = {0, q_full, q_full + kv_full}, full[3] = {q_full, kv_full, kv_full};
  int weight_seen = 0, bias_seen = 0;
  for (auto& p : ps) {
    const bool weight = p.name.ends_with(".qkv.weight"), bias = p.name.ends_with(".qkv.bias");
    if (!weight && !bias) continue;
    const int i = weight ? weight_seen++ : bias_seen++;
    TP_CHECK(i < 3, "{}: more than three q/k/v records", p.name);
    const std::string base = p.name.substr(0, p.name.size() - (weight ? 11 : 9));
    p.name = fmt::format("{}.{}.{}", base, parts[i], weight ? "weight" : "bias");
    tp::Range& r = weight ? p.rows : p.cols;
    r = {r.begin - begin[i], r.end - begin[i]};
    (weight ? p.full_rows : p.full_cols) = full[i];
  }
  return ps;
}

/// SwiGLU's stacked fc1 reports its weight as two records of one name, the gate rows [0, ffn) and the
/// up rows [ffn, 2 ffn) of the full [2 ffn, hidden] tensor; this renames them
/// "<mlp>.gate_proj.weight" and "<mlp>.up_proj.weight" (Hugging Face's names), each placed in its
/// own full [ffn, hidden] tensor. The views are the same memory.
template <class T>
std::vector<tp::Parameter<T>> split_gate_up(std::vector<tp::Parameter<T>> ps, std::int64_t ffn) {
  for (auto& p : ps) {
    if (!p.name.ends_with(".fc1.weight")) continue;
    const bool up = p.rows.begin >= ffn;
    p.name = p.name.substr(0, p.name.size() - 11) + (up ? ".up_proj.weight" : ".gate_proj.weight");
    if (up) p.rows = {p.rows.begin - ffn, p.rows.end - ffn};
    p.full_rows = ffn;
  }
  return ps;
}

/// tp's layer names -> Hugging Face Llama's: the attention output is o_proj, the MLP's second
/// projection down_proj.
template <class T>
std::vector<tp::Parameter<T>> llama_names(std::vector<tp::Parameter<T>> ps) {
  auto rename = [](std::string& name, std::string_view from, std::string_view to) {
    if (name.ends_with(from)) name = name.substr(0, name.size() - from.size()) + std::string(to);
  };
  for (auto& p : ps) {
    rename(p.name, ".self_attn.dense.weight", ".self_attn.o_proj.weight");
    rename(p.name, ".mlp.fc2.weight", ".mlp.down_proj.weight");
  }
  return ps;
}

/// The model on one rank of the TP group: its shards of every layer and its activations.
template <class T = float, class Device = tp::Cpu>
class TinyLm {
 public:
  /// One KvCache per block, for incremental decoding (make_cache, forward with a cache).
  struct Cache {
    std::vector<tp::KvCache<T, Device>> layers;
    /// Tokens cached for sequence b.
    std::int64_t length(std::int64_t b) const { return layers.front().length(b); }
    std::int64_t batch() const { return layers.front().batch(); }
    std::int64_t max_len() const { return layers.front().max_len(); }
    void reset() {
      for (auto& c : layers) c.reset();
    }
  };

  TinyLm(tp::Context<Device> ctx, ModelConfig config)
      : ctx_(std::move(ctx)),
        config_(config),
        wte_(ctx_, config_.vocab, config_.hidden, {.name = config_.llama() ? "model.embed_tokens" : "wte", .seed = config_.seed}),
        ln_f_(ctx_, config_, config_.llama() ? "model.norm" : "ln_f"),
        loss_fn_(ctx_, config_.vocab) {
    if (config_.llama()) {
      tied_head_.emplace(wte_, tp::ParallelLMHeadOptions{.name = "lm_head"});
    } else {
      wpe_.emplace(ctx_, config_.seq_len, config_.hidden, tp::VocabParallelEmbeddingOptions{.name = "wpe", .seed = config_.seed});
      lm_head_.emplace(ctx_, config_.hidden, config_.vocab,
                       tp::ColumnParallelOptions{.bias = false, .gather_output = false, .name = "lm_head", .seed = config_.seed});
    }
    for (std::int64_t i = 0; i < config_.layers; ++i)
      blocks_.push_back(std::make_unique<Block<T, Device>>(
          ctx_, config_, config_.llama() ? fmt::format("model.layers.{}", i) : fmt::format("h.{}", i)));
    const std::int64_t tokens = config_.tokens();
    x_ = tp::Tensor<T, Device>(ctx_.device, tokens, config_.hidden);
    dx_ = tp::Tensor<T, Device>(ctx_.device, tokens, config_.hidden);
    grad_loss_ = tp::Tensor<T, Device>(ctx_.device, tokens, 1);
    hx_ = tp::Tensor<T, Device>(ctx_.device, 1, config_.hidden);  // inference: resized to each call's tokens
    hpos_ = tp::Tensor<std::int64_t, Device>(ctx_.device, 1, 1);
    ids_ = tp::Tensor<std::int64_t, Device>(ctx_.device, config_.batch, config_.seq_len);
    targets_ = tp::Tensor<std::int64_t, Device>(ctx_.device, config_.batch, config_.seq_len);
    positions_ = tp::Tensor<std::int64_t, Device>(ctx_.device, config_.batch, config_.seq_len);
    std::vector<std::int64_t> pos(static_cast<std::size_t>(tokens));
    for (std::int64_t i = 0; i < tokens; ++i) pos[i] = i % config_.seq_len;
    ctx_.device->from_host(tp::ConstView<std::int64_t>(pos.data(), config_.batch, config_.seq_len), positions_.view());
    // The mean over tokens: every token's loss gradient is 1 / tokens.
    std::vector<T> g(static_cast<std::size_t>(tokens), T(1) / static_cast<T>(tokens));
    ctx_.device->from_host(tp::ConstView<T>(g.data(), tokens, 1), grad_loss_.view());
  }

  /// Forward and backward on one batch (host [batch, seq_len] ids and targets); accumulates the
  /// gradients and returns the mean loss, the same on every rank.
  double forward_backward(tp::ConstView<std::int64_t> ids, tp::ConstView<std::int64_t> targets) {
    const Device& dev = *ctx_.device;
    const std::int64_t seq = config_.seq_len;
    dev.from_host(ids, ids_.view());
    dev.from_host(targets, targets_.view());

    dev.copy(wte_.forward(ids_.view()).view(), x_.view());
    if (wpe_) tp::ops::add(dev, wpe_->forward(positions_.view()).view(), x_.view());
    for (auto& b : blocks_) {
      tp::ops::add(dev, b->attn.forward(b->ln_1.forward(x_.view()).view(), seq).view(), x_.view());
      tp::ops::add(dev, b->mlp.forward(b->ln_2.forward(x_.view()).view()).view(), x_.view());
    }
    const auto& logits = head_forward(ln_f_.forward(x_.view()).view());
    const auto& loss = loss_fn_.forward(logits.view(), targets_.view());
    std::vector<T> host(static_cast<std::size_t>(loss.size()));
    dev.to_host(loss.view(), tp::MatrixView<T>(host.data(), loss.rows(), 1));
    double sum = 0;
    for (T v : host) sum += static_cast<double>(v);

    const auto& dlogits = loss_fn_.backward(grad_loss_.view());
    dev.copy(ln_f_.backward(head_backward(dlogits.view()).view()).view(), dx_.view());
    for (auto it = blocks_.rbegin(); it != blocks_.rend(); ++it) {
      auto& b = **it;
      tp::ops::add(dev, b.ln_2.backward(b.mlp.backward(dx_.view()).view()).view(), dx_.view());
      tp::ops::add(dev, b.ln_1.backward(b.attn.backward(dx_.view()).view()).view(), dx_.view());
    }
    wte_.backward(dx_.view());  // adds to the tied head's share of the table's gradient (llama)
    if (wpe_) wpe_->backward(dx_.view());
    return sum / static_cast<double>(host.size());
  }

  /// Inference (under tp::NoGrad: nothing is kept for a backward): ids [1, tokens] in device memory
  /// holding the sequences of `batch` back to back -> this rank's logits [tokens,
  /// vocab_range().size()], valid until the next call. Positions start at 0 in every sequence.
  const tp::Tensor<T, Device>& forward(tp::ConstView<std::int64_t> ids, const tp::AttentionBatch& batch) {
    return infer(ids, batch, nullptr);
  }

  /// The same, appending each sequence's new tokens after what `cache` holds (make_cache) and
  /// attending to all of it: prefill with the prompt, then one token at a time.
  const tp::Tensor<T, Device>& forward(tp::ConstView<std::int64_t> ids, const tp::AttentionBatch& batch, Cache& cache) {
    return infer(ids, batch, &cache);
  }

  /// A cache for `batch` sequences of up to max_len tokens (gpt2: at most seq_len, its learned positions).
  Cache make_cache(std::int64_t batch, std::int64_t max_len) {
    TP_CHECK(config_.llama() || max_len <= config_.seq_len,
             "tiny_lm: the gpt2 architecture has {} learned positions; a cache of {} tokens would pass them",
             config_.seq_len, max_len);
    Cache cache;
    for (auto& b : blocks_) cache.layers.push_back(b->attn.make_cache(batch, max_len));
    return cache;
  }

  /// This rank's slice of the vocabulary: the columns of the logits it returns.
  tp::Range vocab_range() const { return wte_.vocab_range(); }

  /// Every parameter this rank holds (q, k, v split as split_qkv says; llama: gate and up as
  /// split_gate_up says, under Hugging Face's names), in a fixed order.
  std::vector<tp::Parameter<T>> parameters() { return collect(); }

  /// Parameters in the full model (what a TP-1 copy would hold).
  std::int64_t parameter_count() {
    std::int64_t n = 0;
    for (const auto& p : parameters()) n += p.full_rows * p.full_cols;
    return n;
  }

  const ModelConfig& config() const { return config_; }
  const tp::Context<Device>& context() const { return ctx_; }

 private:
  const tp::Tensor<T, Device>& head_forward(tp::ConstView<T> h) {
    return tied_head_ ? tied_head_->forward(h) : lm_head_->forward(h);
  }
  const tp::Tensor<T, Device>& head_backward(tp::ConstView<T> dlogits) {
    return tied_head_ ? tied_head_->backward(dlogits) : lm_head_->backward(dlogits);
  }

  const tp::Tensor<T, Device>& infer(tp::ConstView<std::int64_t> ids, const tp::AttentionBatch& batch, Cache* cache) {
    const Device& dev = *ctx_.device;
    const tp::NoGrad no_grad;
    const std::int64_t tokens = ids.size();
    TP_CHECK(tokens > 0 && ids.rows == 1, "tiny_lm: ids are {}x{}, expected [1, tokens > 0]", ids.rows, ids.cols);
    TP_CHECK(!cache || cache->layers.size() == blocks_.size(), "tiny_lm: a cache of {} layers for a model of {}",
             cache ? cache->layers.size() : 0, blocks_.size());
    hx_.resize(tokens, config_.hidden);
    dev.copy(wte_.forward(ids).view(), hx_.view());
    if (wpe_) {  // learned positions: cached + i for token i of each sequence
      std::vector<std::int64_t> pos;
      for (std::size_t b = 0; b < batch.lengths.size(); ++b)
        for (std::int64_t i = 0; i < batch.lengths[b]; ++i) {
          const std::int64_t p = (cache ? cache->length(static_cast<std::int64_t>(b)) : 0) + i;
          TP_CHECK(p < config_.seq_len, "tiny_lm: position {} of sequence {} is past the gpt2 architecture's {} learned positions",
                   p, b, config_.seq_len);
          pos.push_back(p);
        }
      TP_CHECK(static_cast<std::int64_t>(pos.size()) == tokens, "tiny_lm: {} ids, but the batch's lengths add up to {}",
               tokens, pos.size());
      hpos_.resize(1, tokens);
      dev.from_host(tp::ConstView<std::int64_t>(pos.data(), 1, tokens), hpos_.view());
      tp::ops::add(dev, wpe_->forward(hpos_.view()).view(), hx_.view());
    }
    for (std::size_t i = 0; i < blocks_.size(); ++i) {
      auto& b = *blocks_[i];
      const auto h = b.ln_1.forward(hx_.view()).view();
      tp::ops::add(dev, (cache ? b.attn.forward(h, batch, cache->layers[i]) : b.attn.forward(h, batch)).view(), hx_.view());
      tp::ops::add(dev, b.mlp.forward(b.ln_2.forward(hx_.view()).view()).view(), hx_.view());
    }
    return head_forward(ln_f_.forward(hx_.view()).view());
  }

  std::vector<tp::Parameter<T>> collect() {
    std::vector<tp::Parameter<T>> ps;
    auto append = [&](std::vector<tp::Parameter<T>> more) { ps.insert(ps.end(), more.begin(), more.end()); };
    append(wte_.parameters());
    if (wpe_) append(wpe_->parameters());
    for (auto& b : blocks_) {
      const std::int64_t d = b->attn.head_dim();
      append(b->ln_1.parameters());
      append(split_qkv(b->attn.parameters(), config_.heads * d, config_.kv_heads * d));
      append(b->ln_2.parameters());
      append(split_gate_up(b->mlp.parameters(), config_.ffn_size()));
    }
    append(ln_f_.parameters());
    if (lm_head_) append(lm_head_->parameters());  // the tied head has none: embed_tokens holds the table
    return config_.llama() ? llama_names(std::move(ps)) : ps;
  }

  tp::Context<Device> ctx_;
  ModelConfig config_;
  tp::VocabParallelEmbedding<T, Device> wte_;
  std::optional<tp::VocabParallelEmbedding<T, Device>> wpe_;
  std::vector<std::unique_ptr<Block<T, Device>>> blocks_;
  Norm<T, Device> ln_f_;
  std::optional<tp::ColumnParallelLinear<T, Device>> lm_head_;
  std::optional<tp::ParallelLMHead<T, Device>> tied_head_;
  tp::VocabParallelCrossEntropy<T, Device> loss_fn_;
  tp::Tensor<T, Device> x_, dx_, grad_loss_, hx_;
  tp::Tensor<std::int64_t, Device> ids_, targets_, positions_, hpos_;
};

/// tp stores a norm's weight as a [1, hidden] matrix, Hugging Face as a [hidden] vector: rewrites the
/// shapes of the "...norm.weight" tensors of a safetensors file (written by save_safetensors, not
/// yet read by anyone) in place. The header only gets shorter, and keeps its length with trailing
/// spaces, as the format allows, so the data section does not move.
inline void squeeze_norm_weights(const std::filesystem::path& file) {
  std::fstream io(file, std::ios::in | std::ios::out | std::ios::binary);
  std::uint64_t length = 0;
  io.read(reinterpret_cast<char*>(&length), 8);
  TP_CHECK(io && length < (std::uint64_t{1} << 30), "{}: not a safetensors file", file.string());
  std::string text(length, ' ');
  io.read(text.data(), static_cast<std::streamsize>(length));
  auto header = nlohmann::ordered_json::parse(text);
  for (auto& [name, tensor] : header.items())
    if (name.ends_with("norm.weight") && tensor.at("shape").size() == 2 && tensor.at("shape")[0] == 1)
      tensor["shape"] = nlohmann::ordered_json::array({tensor.at("shape")[1]});
  std::string squeezed = header.dump();
  TP_CHECK(squeezed.size() <= length, "{}: the rewritten header grew", file.string());
  squeezed.resize(length, ' ');
  io.seekp(8);
  io.write(squeezed.data(), static_cast<std::streamsize>(squeezed.size()));
  io.flush();
  if (!io) TP_THROW(tp::IoError, "{}: cannot rewrite the header", file.string());
}

/// Writes `dir`/config.json and `dir`/model.safetensors: a Hugging Face LlamaForCausalLM checkpoint
/// of a llama-architecture model (its parameters already carry Llama's names and layout; the head
/// is tied, so there is no lm_head.weight). The gpt2 architecture has no Hugging Face counterpart
/// (grouped-query attention and an untied head do not fit GPT2LMHeadModel) and is refused.
/// Collective over the group; rank 0 writes.
template <class T, class Device>
void save_hugging_face(TinyLm<T, Device>& model, const std::filesystem::path& dir) {
  const ModelConfig& c = model.config();
  TP_CHECK(c.llama(), "tiny_lm: only the llama architecture saves as a Hugging Face checkpoint ({}: Hugging Face's "
           "GPT-2 has neither grouped-query attention nor an untied head); train with --arch llama", dir.string());
  const tp::Context<Device>& ctx = model.context();
  if (ctx.rank() == 0) {
    std::filesystem::create_directories(dir);
    const nlohmann::ordered_json config{
        {"architectures", {"LlamaForCausalLM"}},
        {"model_type", "llama"},
        {"vocab_size", c.vocab},
        {"hidden_size", c.hidden},
        {"intermediate_size", c.ffn_size()},
        {"num_hidden_layers", c.layers},
        {"num_attention_heads", c.heads},
        {"num_key_value_heads", c.kv_heads},
        {"head_dim", c.hidden / c.heads},
        // Rotary positions are not learned: the trained context is seq_len, longer runs extrapolate.
        {"max_position_embeddings", std::max<std::int64_t>(c.seq_len, 1024)},
        {"rms_norm_eps", c.norm_eps},
        {"rope_theta", c.rope_theta},
        {"tie_word_embeddings", true},
        {"hidden_act", "silu"},
        {"attention_bias", false},
        {"mlp_bias", false},
        {"torch_dtype", "float32"},
    };
    // An exclusive temporary file renamed over config.json: a link planted there is replaced, not followed.
    tp::detail::write_file_atomically(dir / "config.json", config.dump(2) + "\n", "config.json");
  }
  ctx.comm->barrier();
  const auto params = model.parameters();
  const std::filesystem::path file = dir / "model.safetensors";
  tp::save_safetensors<T>(*ctx.comm, *ctx.device, params, file, {{"format", "pt"}});
  if (ctx.rank() == 0) squeeze_norm_weights(file);
  ctx.comm->barrier();
}

/// What one step reports.
struct StepResult {
  double loss = 0, grad_norm = 0, lr = 0;
};

/// The model, AdamW over its parameters, and the step counter; one `step()` is one optimizer step
/// on the batch of that step.
template <class T = float, class Device = tp::Cpu>
class Trainer {
 public:
  Trainer(tp::Context<Device> ctx, ModelConfig model, TrainConfig train)
      : model_(std::move(ctx), model),
        train_(train),
        params_(model_.parameters()),
        opt_(model_.context(), params_, {.lr = train.lr, .weight_decay = train.weight_decay}) {
    TP_CHECK(train_.clip > 0 && train_.warmup > 0 && train_.steps > 0,
             "tiny_lm: clip {}, warmup {} and steps {} must be positive", train_.clip, train_.warmup, train_.steps);
  }

  StepResult step(const TextData& data) {
    const ModelConfig& c = model_.config();
    tp::Tensor<std::int64_t, tp::Cpu> ids(c.batch, c.seq_len), targets(c.batch, c.seq_len);
    data.batch(c.seed, step_, ids.view(), targets.view());
    StepResult r;
    r.loss = model_.forward_backward(ids.view(), targets.view());
    r.grad_norm = tp::clip_grad_norm<T>(model_.context(), std::span<const tp::Parameter<T>>(params_), train_.clip);
    r.lr = learning_rate(train_, step_);
    opt_.set_lr(r.lr);
    opt_.step();
    opt_.zero_grad();
    ++step_;
    return r;
  }

  /// Steps done so far (the next batch is this step's).
  std::int64_t steps_done() const { return step_; }
  TinyLm<T, Device>& model() { return model_; }
  tp::AdamW<T, Device>& optimizer() { return opt_; }
  const TrainConfig& train_config() const { return train_; }

  /// Writes this step's checkpoint under `root` as one unit (tp/io/checkpoint.hpp):
  /// `<root>/step-NNNNNN/model.safetensors` (the full weights, loadable at any TP degree) and
  /// `<root>/step-NNNNNN/resume.safetensors` (weights, AdamW moments, step count and the model's
  /// description), keeping the newest `keep` steps (0: all). Returns the step's directory.
  /// Collective over the group.
  std::filesystem::path save(const std::filesystem::path& root, int keep = 0) {
    const tp::Context<Device>& ctx = model_.context();
    const tp::SafetensorsMetadata meta{{"tiny_lm.config", model_.config().describe()},
                                       {"tiny_lm.step", std::to_string(step_)}};
    return tp::save_checkpoint(
        *ctx.comm, root, step_,
        [&](const std::filesystem::path& dir) {
          tp::save_safetensors<T>(*ctx.comm, *ctx.device, params_, dir / "model.safetensors", meta);
          tp::save_resume(opt_, dir / "resume.safetensors", meta);
        },
        {.keep = keep});
  }

  /// Loads a checkpoint written by save(), at any TP degree, and continues from its step: `path`
  /// is a checkpoint root (its latest complete step is taken), a step directory, or a
  /// resume.safetensors file. Rank 0 picks the step and tells the others, so that every rank
  /// loads the same one. Throws IoError when there is none, InvalidArgument when it belongs to
  /// another model.
  void load(std::filesystem::path path) {
    const tp::Context<Device>& ctx = model_.context();
    std::int64_t step = -1;  // -1: `path` is a file or a step directory itself
    if (ctx.rank() == 0 && std::filesystem::is_directory(path) && !std::filesystem::exists(path / "resume.safetensors"))
      if (const auto latest = tp::latest_checkpoint(path)) step = *tp::checkpoint_step(latest->filename().string());
    ctx.comm->broadcast(std::span<std::int64_t>(&step, 1), 0);
    if (step >= 0) path /= tp::checkpoint_name(step);
    if (std::filesystem::is_directory(path)) {
      if (!std::filesystem::exists(path / "resume.safetensors") && !tp::checkpoint_step(path.filename().string()))
        TP_THROW(tp::IoError, "{}: no complete checkpoint in it (a step-NNNNNN directory holding resume.safetensors)",
                 path.string());
      path /= "resume.safetensors";
    }
    const tp::SafetensorsMetadata meta = tp::load_resume(opt_, path);
    const auto config = meta.find("tiny_lm.config");
    const std::string mine = model_.config().describe();
    if (config == meta.end() || config->second != mine)
      TP_THROW(tp::InvalidArgument, "{}: the checkpoint is of the model '{}', this run is '{}'", path.string(),
               config == meta.end() ? std::string("(none)") : config->second, mine);
    step_ = opt_.step_count();
  }

 private:
  TinyLm<T, Device> model_;
  TrainConfig train_;
  std::vector<tp::Parameter<T>> params_;
  tp::AdamW<T, Device> opt_;
  std::int64_t step_ = 0;
};

}  // namespace tiny_lm
