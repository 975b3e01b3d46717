#pragma once
/// A small GPT-style byte-level language model built from tp's layers, with its optimizer, data
/// and checkpoints: what examples/train_tiny_lm/main.cpp trains and
/// tests/examples/train_tiny_lm_test.cpp drives.
///
///   ids -> wte (VocabParallelEmbedding) + wpe (learned positions, also a VocabParallelEmbedding
///   over positions) -> layers x [x += attn(ln_1(x)); x += mlp(ln_2(x))] -> ln_f -> lm_head
///   (ColumnParallelLinear to the vocabulary, output left split by vocabulary) ->
///   VocabParallelCrossEntropy, mean over the tokens.
///
/// The LM head is untied from wte: a ColumnParallelLinear [vocab, hidden] splits its rows as
/// partition(vocab) like the embedding table, so tying would be possible, but two parameters keep
/// the gradient flow of each layer as its own tests check it and cost 32K parameters here.
///
/// Everything that decides a step (initial weights, batches, learning rate) is a function of
/// (seed, step) and never of the TP degree, so TP 1, 2 and 4 train the same model; their losses
/// differ only by the float rounding of the sharded GEMMs and reductions.

#ifndef TP_HAS_IO
#error "train_tiny_lm/model.hpp needs the tp::io CMake component (checkpoints): target_link_libraries(... tp::io)"
#endif

#include <algorithm>
#include <cmath>
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
#include "tp/layers/column_parallel_linear.hpp"
#include "tp/layers/layer_norm.hpp"
#include "tp/layers/parallel_attention.hpp"
#include "tp/layers/parallel_mlp.hpp"
#include "tp/layers/vocab_parallel_cross_entropy.hpp"
#include "tp/layers/vocab_parallel_embedding.hpp"
#include "tp/optim/adamw.hpp"
#include "tp/optim/clip_grad_norm.hpp"

namespace tiny_lm {

struct ModelConfig {
  std::int64_t vocab = 256;  ///< bytes
  std::int64_t hidden = 128;
  std::int64_t heads = 4;
  std::int64_t kv_heads = 2;
  std::int64_t layers = 2;
  std::int64_t ffn = 0;  ///< 0 means 4 * hidden
  std::int64_t seq_len = 64;
  std::int64_t batch = 8;
  std::uint64_t seed = 1;

  std::int64_t ffn_size() const { return ffn > 0 ? ffn : 4 * hidden; }
  std::int64_t tokens() const { return batch * seq_len; }
  /// Stored in checkpoints: a resume into a different model is refused with this text.
  std::string describe() const {
    return fmt::format("vocab={} hidden={} heads={} kv_heads={} layers={} ffn={} seq_len={} batch={} seed={}", vocab,
                       hidden, heads, kv_heads, layers, ffn_size(), seq_len, batch, seed);
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

/// One pre-norm transformer block.
template <class T, class Device>
struct Block {
  tp::LayerNorm<T, Device> ln_1;
  tp::ParallelAttention<T, Device> attn;
  tp::LayerNorm<T, Device> ln_2;
  tp::ParallelMLP<T, Device> mlp;

  Block(const tp::Context<Device>& ctx, const ModelConfig& c, const std::string& name)
      : ln_1(ctx, c.hidden, {.name = name + ".ln_1"}),
        attn(ctx, c.hidden, c.heads, c.kv_heads, {.causal = true, .name = name + ".attn", .seed = c.seed}),
        ln_2(ctx, c.hidden, {.name = name + ".ln_2"}),
        mlp(ctx, c.hidden, c.ffn_size(), {.activation = tp::Activation::gelu_tanh, .name = name + ".mlp", .seed = c.seed}) {}
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

/// The model on one rank of the TP group: its shards of every layer and its activations.
template <class T = float, class Device = tp::Cpu>
class TinyLm {
 public:
  TinyLm(tp::Context<Device> ctx, ModelConfig config)
      : ctx_(std::move(ctx)),
        config_(config),
        wte_(ctx_, config_.vocab, config_.hidden, {.name = "wte", .seed = config_.seed}),
        wpe_(ctx_, config_.seq_len, config_.hidden, {.name = "wpe", .seed = config_.seed}),
        ln_f_(ctx_, config_.hidden, {.name = "ln_f"}),
        lm_head_(ctx_, config_.hidden, config_.vocab,
                 {.bias = false, .gather_output = false, .name = "lm_head", .seed = config_.seed}),
        loss_fn_(ctx_, config_.vocab) {
    for (std::int64_t i = 0; i < config_.layers; ++i)
      blocks_.push_back(std::make_unique<Block<T, Device>>(ctx_, config_, fmt::format("h.{}", i)));
    const std::int64_t tokens = config_.tokens();
    x_ = tp::Tensor<T, Device>(ctx_.device, tokens, config_.hidden);
    dx_ = tp::Tensor<T, Device>(ctx_.device, tokens, config_.hidden);
    grad_loss_ = tp::Tensor<T, Device>(ctx_.device, tokens, 1);
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
    tp::ops::add(dev, wpe_.forward(positions_.view()).view(), x_.view());
    for (auto& b : blocks_) {
      tp::ops::add(dev, b->attn.forward(b->ln_1.forward(x_.view()).view(), seq).view(), x_.view());
      tp::ops::add(dev, b->mlp.forward(b->ln_2.forward(x_.view()).view()).view(), x_.view());
    }
    const auto& logits = lm_head_.forward(ln_f_.forward(x_.view()).view());
    const auto& loss = loss_fn_.forward(logits.view(), targets_.view());
    std::vector<T> host(static_cast<std::size_t>(loss.size()));
    dev.to_host(loss.view(), tp::MatrixView<T>(host.data(), loss.rows(), 1));
    double sum = 0;
    for (T v : host) sum += static_cast<double>(v);

    const auto& dlogits = loss_fn_.backward(grad_loss_.view());
    dev.copy(ln_f_.backward(lm_head_.backward(dlogits.view()).view()).view(), dx_.view());
    for (auto it = blocks_.rbegin(); it != blocks_.rend(); ++it) {
      auto& b = **it;
      tp::ops::add(dev, b.ln_2.backward(b.mlp.backward(dx_.view()).view()).view(), dx_.view());
      tp::ops::add(dev, b.ln_1.backward(b.attn.backward(dx_.view()).view()).view(), dx_.view());
    }
    wte_.backward(dx_.view());
    wpe_.backward(dx_.view());
    return sum / static_cast<double>(host.size());
  }

  /// Every parameter this rank holds (q, k, v split as split_qkv says), in a fixed order.
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
  std::vector<tp::Parameter<T>> collect() {
    std::vector<tp::Parameter<T>> ps;
    auto append = [&](std::vector<tp::Parameter<T>> more) { ps.insert(ps.end(), more.begin(), more.end()); };
    append(wte_.parameters());
    append(wpe_.parameters());
    for (auto& b : blocks_) {
      const std::int64_t d = b->attn.head_dim();
      append(b->ln_1.parameters());
      append(split_qkv(b->attn.parameters(), config_.heads * d, config_.kv_heads * d));
      append(b->ln_2.parameters());
      append(b->mlp.parameters());
    }
    append(ln_f_.parameters());
    append(lm_head_.parameters());
    return ps;
  }

  tp::Context<Device> ctx_;
  ModelConfig config_;
  tp::VocabParallelEmbedding<T, Device> wte_, wpe_;
  std::vector<std::unique_ptr<Block<T, Device>>> blocks_;
  tp::LayerNorm<T, Device> ln_f_;
  tp::ColumnParallelLinear<T, Device> lm_head_;
  tp::VocabParallelCrossEntropy<T, Device> loss_fn_;
  tp::Tensor<T, Device> x_, dx_, grad_loss_;
  tp::Tensor<std::int64_t, Device> ids_, targets_, positions_;
};

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
