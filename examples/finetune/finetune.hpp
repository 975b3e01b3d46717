#pragma once
/// Fine-tuning a Hugging Face causal LM (GPT-2, Llama, Qwen2, Mistral) on a TP x DP mesh: the data
/// (a text file, or JSONL of {"prompt", "completion"} with the loss on the completion only), the
/// batches, and a run of tp::Trainer with its cosine schedule and checkpoints (`Finetune`), which
/// examples/finetune/main.cpp drives and tests/examples/finetune_test.cpp checks.
///
/// One step: the step's global batch of sequences, each padded to the longest of the batch, the
/// targets of prompt and padding positions -100 (so the loss is the mean over the completion
/// tokens; causal attention keeps the padding after a sequence out of its positions), this DP
/// rank's rows of it handed to tp::Trainer (micro-batches, DP reduction, ZeRO-1, clipping,
/// recomputation, AdamW on fp32 master weights). Everything that decides a step (the batch, the
/// learning rate) is a function of (seed, step), never of the mesh, so a resumed run or another
/// TP x DP trains the same model, to float rounding.

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <tp/models/hugging_face.hpp>
#include <tp/io/json_file.hpp>
#include <tp/text/tokenizer.hpp>
#include <tp/tp.hpp>
#include <tp/train/checkpoint.hpp>
#include <tp/train/schedule.hpp>
#include <tp/train/trainer.hpp>

namespace finetune {

/// One training sequence: its ids and, per position, whether the loss counts the token there
/// (false for a prompt's tokens).
struct Example {
  std::vector<std::int64_t> ids;
  std::vector<bool> counted;
};

/// The training examples of a file. `*.jsonl`: one {"prompt": ..., "completion": ...} per line;
/// prompt tokens (with the tokenizer's BOS where its post-processor adds one) are not counted,
/// completion tokens and the EOS after them are; a record longer than seq_length + 1 tokens is
/// cut there. Anything else: UTF-8 text, encoded whole and cut into windows of seq_length + 1
/// tokens (overlapping by one, so every token is a target once), all counted.
inline std::vector<Example> read_examples(const std::filesystem::path& file, const tp::text::Tokenizer& tok,
                                          std::int64_t seq_length) {
  TP_CHECK(seq_length > 0, "--seq-length must be positive, got {}", seq_length);
  const std::string text = tp::read_text_file(file, "training data");
  const auto window = static_cast<std::size_t>(seq_length + 1);
  std::vector<Example> out;
  if (file.extension() == ".jsonl") {
    const auto eos = tok.special_tokens().eos;
    std::size_t line_no = 0;
    for (std::size_t at = 0; at < text.size();) {
      const std::size_t end = std::min(text.find('\n', at), text.size());
      const std::string_view line = std::string_view(text).substr(at, end - at);
      at = end + 1;
      ++line_no;
      if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
      const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (j.is_discarded() || !j.is_object() || !j.contains("prompt") || !j.contains("completion") ||
          !j["prompt"].is_string() || !j["completion"].is_string())
        TP_THROW(tp::IoError, "{}:{}: expected a JSON object with string \"prompt\" and \"completion\"",
                 file.string(), line_no);
      Example e;
      e.ids = tok.encode(j["prompt"].get<std::string>(), /*add_special_tokens=*/true);
      e.counted.assign(e.ids.size(), false);
      auto completion = tok.encode(j["completion"].get<std::string>(), /*add_special_tokens=*/false);
      if (eos) completion.push_back(eos->id);
      TP_CHECK(completion.size() > (eos ? 1u : 0u), "{}:{}: the completion is empty", file.string(), line_no);
      e.ids.insert(e.ids.end(), completion.begin(), completion.end());
      e.counted.insert(e.counted.end(), completion.size(), true);
      if (e.ids.size() > window) {
        e.ids.resize(window);
        e.counted.resize(window);
      }
      // Position 0 is never a target; a record whose counted tokens were all cut trains nothing.
      if (std::any_of(e.counted.begin() + 1, e.counted.end(), [](bool c) { return c; })) out.push_back(std::move(e));
    }
  } else {
    const auto ids = tok.encode(text, /*add_special_tokens=*/true);
    for (std::size_t at = 0; at + 1 < ids.size(); at += window - 1) {
      Example e;
      e.ids.assign(ids.begin() + static_cast<std::ptrdiff_t>(at),
                   ids.begin() + static_cast<std::ptrdiff_t>(std::min(at + window, ids.size())));
      e.counted.assign(e.ids.size(), true);
      out.push_back(std::move(e));
    }
  }
  TP_CHECK(!out.empty(), "{}: no training example (an empty file, or records whose completions are all cut)",
           file.string());
  return out;
}

struct Options {
  std::int64_t train_iters = 100;        ///< steps; the cosine decay reaches min_lr here
  std::int64_t global_batch_size = 4;    ///< sequences per step, split over the DP ranks
  int micro_batches = 1;                 ///< gradient accumulation: micro-batches per step per DP rank
  int zero = 0;                          ///< 1: ZeRO-1, the optimizer state sharded over the DP group
  tp::models::Recompute recompute = tp::models::Recompute::none;
  double lr = 1e-4, min_lr = 1e-5;
  std::int64_t lr_warmup_iters = 10;
  double weight_decay = 0.0;
  double clip_grad = 1.0;  ///< global gradient norm clip (0: none)
  std::uint64_t seed = 1234;
  /// Dynamic loss scaling (--precision f16); none: no scaling.
  std::optional<tp::LossScalerOptions> loss_scaling{};

  /// The learning rate of each step: linear warmup, then cosine decay to min_lr at train_iters.
  tp::CosineSchedule schedule() const {
    return {.lr = lr, .min_lr = min_lr, .warmup = lr_warmup_iters, .steps = train_iters};
  }
};

/// The examples of step `step`: the k-th sequence of the run (k = step * global_batch_size + b) is
/// example perm_e[k mod n] of epoch e = k / n, each epoch's permutation drawn from (seed, e).
inline std::vector<std::size_t> batch_of(std::size_t n, const Options& o, std::int64_t step) {
  std::vector<std::size_t> out;
  std::int64_t cached_epoch = -1;
  std::vector<std::size_t> perm(n);
  for (std::int64_t b = 0; b < o.global_batch_size; ++b) {
    const auto k = static_cast<std::uint64_t>(step * o.global_batch_size + b);
    const auto epoch = static_cast<std::int64_t>(k / n);
    if (epoch != cached_epoch) {
      std::iota(perm.begin(), perm.end(), std::size_t{0});
      std::mt19937_64 rng(o.seed * 1000003u + static_cast<std::uint64_t>(epoch));
      for (std::size_t i = n; i > 1; --i) std::swap(perm[i - 1], perm[rng() % i]);  // Fisher-Yates, portable
      cached_epoch = epoch;
    }
    out.push_back(perm[k % n]);
  }
  return out;
}

/// The global batch of a step as [global_batch_size, longest - 1] ids and targets: each sequence's
/// ids but its last, its next tokens as targets where counted, -100 elsewhere (the prompt, and the
/// padding after a shorter sequence, whose ids are 0).
struct Batch {
  tp::Tensor<std::int64_t, tp::Cpu> ids, targets;
  std::int64_t tokens = 0;  ///< real (unpadded) tokens through the model
};

inline Batch global_batch(const std::vector<Example>& examples, const Options& o, std::int64_t step) {
  const auto picked = batch_of(examples.size(), o, step);
  std::int64_t cols = 1;
  for (const std::size_t i : picked) cols = std::max(cols, static_cast<std::int64_t>(examples[i].ids.size()) - 1);
  Batch b{tp::Tensor<std::int64_t, tp::Cpu>(o.global_batch_size, cols),
          tp::Tensor<std::int64_t, tp::Cpu>(o.global_batch_size, cols)};
  auto ids = b.ids.view();
  auto targets = b.targets.view();
  for (std::int64_t r = 0; r < o.global_batch_size; ++r) {
    const Example& e = examples[picked[static_cast<std::size_t>(r)]];
    const auto n = static_cast<std::int64_t>(e.ids.size()) - 1;
    for (std::int64_t t = 0; t < cols; ++t) {
      const auto at = static_cast<std::size_t>(t);
      ids(r, t) = t < n ? e.ids[at] : 0;
      targets(r, t) = t < n && e.counted[at + 1] ? e.ids[at + 1] : -100;
    }
    b.tokens += std::max<std::int64_t>(n, 0);
  }
  return b;
}

struct StepResult {
  double loss = 0;        ///< mean over the counted tokens of the global batch
  double grad_norm = 0;   ///< before clipping
  double lr = 0;
  std::int64_t tokens = 0;  ///< real tokens of the global batch through the model (all DP ranks)
  std::int64_t sequences = 0;  ///< rows this DP rank trained on (global batch size / dp)
  bool skipped = false;        ///< inf/nan gradients (f16's loss scale too high): nothing was updated
};

/// The model on one rank of the mesh, tp::Trainer over it and the schedule. Collective over the
/// mesh's world.
template <class T = float, class Device = tp::Cpu>
class Finetune {
 public:
  Finetune(const tp::Mesh<Device>& mesh, const std::filesystem::path& model_dir, Options options)
      : options_(check(options)),
        model_(tp::models::open_hugging_face<T>(mesh.tp_context(), model_dir)),
        trainer_(mesh, *model_,
                 {.micro_batches = options.micro_batches,
                  .zero = options.zero,
                  .adamw = {.lr = options.lr, .weight_decay = options.weight_decay},
                  .clip = options.clip_grad,
                  .loss_scaling = options.loss_scaling,
                  .recompute = options.recompute}),
        schedule_(options.schedule()),
        rows_(tp::Trainer<T, Device>::dp_rows(mesh, options.global_batch_size)) {
    schedule_.validate();
    TP_CHECK(rows_.size() % options.micro_batches == 0,
             "finetune: a global batch of {} sequences over dp = {} is {} per DP rank, which does not split into {} "
             "micro-batches", options.global_batch_size, mesh.dp(), rows_.size(), options.micro_batches);
  }

  /// This DP rank's rows of step `step`'s global batch (tokens: the global batch's), what step() trains on.
  Batch local_batch(const std::vector<Example>& examples, std::int64_t step) const {
    const Batch b = global_batch(examples, options_, step);
    const std::int64_t cols = b.ids.view().cols;
    Batch out{tp::Tensor<std::int64_t, tp::Cpu>(rows_.size(), cols), tp::Tensor<std::int64_t, tp::Cpu>(rows_.size(), cols),
              b.tokens};
    auto ids = out.ids.view();
    auto targets = out.targets.view();
    for (std::int64_t r = 0; r < rows_.size(); ++r)
      for (std::int64_t c = 0; c < cols; ++c) {
        ids(r, c) = b.ids.view()(rows_.begin + r, c);
        targets(r, c) = b.targets.view()(rows_.begin + r, c);
      }
    return out;
  }

  /// One optimizer step on the global batch of steps_done() from `examples` (this DP rank's rows).
  StepResult step(const std::vector<Example>& examples) {
    const std::int64_t s = steps_done();
    const Batch b = local_batch(examples, s);
    const tp::StepResult r = trainer_.step(b.ids.view(), b.targets.view(), schedule_(s));
    return {.loss = r.loss, .grad_norm = r.grad_norm, .lr = r.lr, .tokens = b.tokens, .sequences = b.ids.view().rows,
            .skipped = r.skipped};
  }

  std::int64_t steps_done() const { return trainer_.steps_done(); }

  /// Writes <root>/step-NNNNNN/ (tp/train/checkpoint.hpp: master weights, AdamW moments, step, the
  /// model's weights) as one unit, keeping the newest `keep` steps (0: all).
  std::filesystem::path save(const std::filesystem::path& root, int keep) {
    return tp::save_training_checkpoint(trainer_, root, data_metadata(), keep);
  }

  /// Continues from a checkpoint saved at any mesh: a root (its latest step), a step directory or a
  /// resume.safetensors. Throws InvalidArgument when its data order (seed, global batch) differs.
  void load(const std::filesystem::path& from) {
    tp::load_training_checkpoint(trainer_, from, [&](const tp::SafetensorsMetadata& meta, const std::filesystem::path& file) {
      for (const auto& [key, mine] : data_metadata()) {
        const auto it = meta.find(key);
        if (it == meta.end() || it->second != mine)
          TP_THROW(tp::InvalidArgument, "{}: the checkpoint was written with {} {}, this run has {}: its batches would differ",
                   file.string(), key, it == meta.end() ? std::string("(none)") : it->second, mine);
      }
    });
  }

  tp::models::Transformer<T, Device>& model() { return *model_; }
  tp::Trainer<T, Device>& trainer() { return trainer_; }
  const Options& options() const { return options_; }

 private:
  static Options check(const Options& o) {
    TP_CHECK(o.global_batch_size > 0 && o.train_iters > 0 && o.lr_warmup_iters >= 0,
             "finetune: global batch size {} and train iters {} must be positive, warmup {} not negative",
             o.global_batch_size, o.train_iters, o.lr_warmup_iters);
    return o;
  }

  tp::SafetensorsMetadata data_metadata() const {
    return {{"finetune.seed", std::to_string(options_.seed)},
            {"finetune.global_batch_size", std::to_string(options_.global_batch_size)}};
  }

  Options options_;
  std::unique_ptr<tp::models::Transformer<T, Device>> model_;
  tp::Trainer<T, Device> trainer_;
  tp::CosineSchedule schedule_;
  tp::Range rows_;
};

}  // namespace finetune
