#pragma once
/// The tiny byte-level language model of examples/train_tiny_lm: its shape (a
/// tp::models::Transformer config), its training text, and a run of tp::Trainer over it with the
/// schedule and checkpoints, which main.cpp drives and tests/examples/train_tiny_lm_test.cpp checks.
///
/// gpt2:  LayerNorm, learned positions (seq_len of them), GELU, biases, the head tied to the
///        embedding; grouped-query attention all the same (kv_heads).
/// llama: RMSNorm, rotary positions, SwiGLU, no biases, the head tied; saved as a Hugging Face
///        LlamaForCausalLM checkpoint (--save-hf) that examples/generate and transformers load.
///
/// Everything that decides a step (initial weights, batches, learning rate) is a function of
/// (seed, step), never of the mesh, so every (tp, dp) trains the same model; the losses differ only
/// by the float rounding of the sharded GEMMs and reductions.

#ifndef TP_HAS_IO
#error "train_tiny_lm/tiny_lm.hpp needs the tp::io CMake component (checkpoints): target_link_libraries(... tp::io)"
#endif

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tp/models/hugging_face.hpp"
#include "tp/models/transformer.hpp"
#include "tp/train/checkpoint.hpp"
#include "tp/train/schedule.hpp"
#include "tp/train/trainer.hpp"

namespace tiny_lm {

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
  std::int64_t batch = 8;  ///< sequences per step: the global batch, split over the DP ranks
  std::uint64_t seed = 1;
  double rope_theta = 10000;  ///< llama: the rotary base
  double norm_eps = 1e-5;

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
  /// The tp::models::Transformer of this shape.
  tp::models::TransformerConfig transformer() const {
    tp::models::TransformerConfig c;
    c.arch = llama() ? tp::models::Architecture::llama : tp::models::Architecture::gpt2;
    c.model_type = std::string(arch_name(arch));
    c.vocab = vocab;
    c.hidden = hidden;
    c.layers = layers;
    c.heads = heads;
    c.kv_heads = kv_heads;
    c.head_dim = heads > 0 ? hidden / heads : 0;
    c.ffn = ffn_size();
    // Rotary positions are not learned: the trained context is seq_len, longer generations extrapolate.
    c.max_positions = llama() ? std::max<std::int64_t>(seq_len, 1024) : seq_len;
    c.norm_eps = norm_eps;
    c.rope_theta = llama() ? rope_theta : 0;
    c.tie_embeddings = true;
    c.qkv_bias = c.dense_bias = c.mlp_bias = !llama();
    c.activation = llama() ? tp::Activation::swiglu : tp::Activation::gelu_tanh;
    return c;
  }
};

/// Parameters of the full model (what a TP-1 copy would hold; a fused tensor's records summed).
template <class T, class Device>
std::int64_t parameter_count(tp::models::Transformer<T, Device>& model) {
  // Each full tensor once: records of one name are blocks of one tensor.
  std::vector<std::string> seen;
  std::int64_t n = 0;
  for (const auto& p : model.parameters())
    if (std::find(seen.begin(), seen.end(), p.name) == seen.end()) {
      seen.push_back(p.name);
      n += p.full_rows * p.full_cols;
    }
  return n;
}

struct TrainConfig {
  double lr = 3e-3;
  double min_lr = 3e-4;
  std::int64_t warmup = 20;   ///< linear warmup steps
  std::int64_t steps = 2000;  ///< total steps: the cosine decay reaches min_lr here
  double weight_decay = 0.1;
  double clip = 1.0;  ///< global gradient norm clip
  int micro_batches = 1;
  int zero = 0;
  std::int64_t bucket_size = 0;
  bool overlap = true;
  tp::models::Recompute recompute = tp::models::Recompute::none;
  /// Dynamic loss scaling (--precision f16); none: no scaling.
  std::optional<tp::LossScalerOptions> loss_scaling{};
};

/// The training text as byte ids, and batches drawn from it by (seed, step): sequence b of step s
/// starts at a Philox draw keyed by the seed and s * batch + b, so every rank and every mesh (and
/// a resumed run) sees the same data without sharing any state.
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

/// The model on one rank of the mesh, tp::Trainer over it, the cosine schedule; one step() is one
/// optimizer step on that step's global batch (this DP rank's rows of it).
template <class T = float, class Device = tp::Cpu>
class Training {
 public:
  Training(const tp::Mesh<Device>& mesh, ModelConfig model, TrainConfig train)
      : config_(model),
        train_(train),
        model_(mesh.tp_context(), model.transformer(), model.seed),
        trainer_(mesh, model_,
                 {.micro_batches = train.micro_batches,
                  .zero = train.zero,
                  .bucket_size = train.bucket_size,
                  .overlap = train.overlap,
                  .adamw = {.lr = train.lr, .weight_decay = train.weight_decay},
                  .clip = train.clip,
                  .loss_scaling = train.loss_scaling,
                  .recompute = train.recompute}),
        schedule_{.lr = train.lr, .min_lr = train.min_lr, .warmup = train.warmup, .steps = train.steps} {
    TP_CHECK(train.clip > 0 && train.warmup > 0 && train.steps > 0,
             "tiny_lm: clip {}, warmup {} and steps {} must be positive", train.clip, train.warmup, train.steps);
    schedule_.validate();
    rows_ = tp::Trainer<T, Device>::dp_rows(mesh, model.batch);
  }

  tp::StepResult step(const TextData& data) {
    tp::Tensor<std::int64_t, tp::Cpu> ids(config_.batch, config_.seq_len), targets(config_.batch, config_.seq_len);
    data.batch(config_.seed, steps_done(), ids.view(), targets.view());
    auto mine = [&](const tp::Tensor<std::int64_t, tp::Cpu>& t) {
      return tp::ConstView<std::int64_t>(t.view()).block(rows_.begin, 0, rows_.size(), config_.seq_len);
    };
    return trainer_.step(mine(ids), mine(targets), schedule_(steps_done()));
  }

  std::int64_t steps_done() const { return trainer_.steps_done(); }
  tp::models::Transformer<T, Device>& model() { return model_; }
  tp::Trainer<T, Device>& trainer() { return trainer_; }
  const ModelConfig& config() const { return config_; }

  /// Writes this step's checkpoint under `root` (tp/train/checkpoint.hpp), keeping the newest
  /// `keep` steps (0: all). Collective over the mesh.
  std::filesystem::path save(const std::filesystem::path& root, int keep = 0) {
    return tp::save_training_checkpoint(trainer_, root, {{"tiny_lm.config", config_.describe()}}, keep);
  }

  /// Continues from a checkpoint saved at any mesh: a root (its latest step), a step directory or
  /// a resume.safetensors. Throws InvalidArgument when it is of another model.
  void load(const std::filesystem::path& path) {
    tp::load_training_checkpoint(trainer_, path, [&](const tp::SafetensorsMetadata& meta, const std::filesystem::path& file) {
      const auto config = meta.find("tiny_lm.config");
      const std::string mine = config_.describe();
      if (config == meta.end() || config->second != mine)
        TP_THROW(tp::InvalidArgument, "{}: the checkpoint is of the model '{}', this run is '{}'", file.string(),
                 config == meta.end() ? std::string("(none)") : config->second, mine);
    });
  }

 private:
  ModelConfig config_;
  TrainConfig train_;
  tp::models::Transformer<T, Device> model_;
  tp::Trainer<T, Device> trainer_;
  tp::CosineSchedule schedule_;
  tp::Range rows_;
};

}  // namespace tiny_lm
