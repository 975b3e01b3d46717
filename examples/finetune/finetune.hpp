#pragma once
/// Fine-tuning a Hugging Face causal LM (GPT-2, Llama, Qwen2, Mistral) with tensor parallelism: the
/// data (a text file, or JSONL of {"prompt", "completion"} with the loss on the completion only),
/// the learning-rate schedule, and the training loop in one place (`Finetune`), which
/// examples/finetune/main.cpp drives and tests/examples/finetune_test.cpp checks.
///
/// One step: the batch's sequences packed into one [1, tokens] row (AttentionBatch lengths, no
/// padding), the model's logits split by vocabulary, VocabParallelCrossEntropy with the prompt
/// positions ignored (-100), the mean over the counted tokens, backward, clip_grad_norm, the
/// cosine learning rate, AdamW. Everything that decides a step (the batch, the learning rate) is a
/// function of (seed, step), never of the TP degree, so a resumed run or another TP degree trains
/// the same model.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <numbers>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <tp/io/checkpoint.hpp>
#include <tp/io/resume.hpp>
#include <tp/layers/vocab_parallel_cross_entropy.hpp>
#include <tp/models/hugging_face.hpp>
#include <tp/optim/adamw.hpp>
#include <tp/optim/clip_grad_norm.hpp>
#include <tp/io/json_file.hpp>
#include <tp/text/tokenizer.hpp>
#include <tp/tp.hpp>

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
  std::int64_t train_iters = 100;    ///< steps; the cosine decay reaches min_lr here
  std::int64_t micro_batch_size = 4;  ///< sequences per step
  double lr = 1e-4, min_lr = 1e-5;
  std::int64_t lr_warmup_iters = 10;
  double weight_decay = 0.0;
  double clip_grad = 1.0;  ///< global gradient norm clip (0: none)
  std::uint64_t seed = 1234;
};

/// Learning rate at `step` (0-based): linear warmup, then cosine decay to min_lr at train_iters.
inline double learning_rate(const Options& o, std::int64_t step) {
  if (step < o.lr_warmup_iters) return o.lr * static_cast<double>(step + 1) / static_cast<double>(o.lr_warmup_iters);
  if (step >= o.train_iters) return o.min_lr;
  const double progress = static_cast<double>(step - o.lr_warmup_iters) /
                          static_cast<double>(std::max<std::int64_t>(1, o.train_iters - o.lr_warmup_iters));
  return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1.0 + std::cos(std::numbers::pi * progress));
}

/// The examples of step `step`: the k-th sequence of the run (k = step * batch + b) is example
/// perm_e[k mod n] of epoch e = k / n, each epoch's permutation drawn from (seed, e).
inline std::vector<std::size_t> batch_of(std::size_t n, const Options& o, std::int64_t step) {
  std::vector<std::size_t> out;
  std::int64_t cached_epoch = -1;
  std::vector<std::size_t> perm(n);
  for (std::int64_t b = 0; b < o.micro_batch_size; ++b) {
    const auto k = static_cast<std::uint64_t>(step * o.micro_batch_size + b);
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

struct StepResult {
  double loss = 0;        ///< mean over the counted tokens
  double grad_norm = 0;   ///< before clipping
  double lr = 0;
  std::int64_t tokens = 0;  ///< tokens through the model
};

/// The model, its optimizer and the loop. Collective over the context's communicator (the TP group).
template <class T = float, class Device = tp::Cpu>
class Finetune {
 public:
  Finetune(const tp::Context<Device>& ctx, const std::filesystem::path& model_dir, Options options)
      : ctx_(ctx), options_(options), model_(tp::models::open_hugging_face<T>(ctx, model_dir)),
        ce_(ctx, model_->config().vocab),
        adamw_(ctx, model_->parameters(), {.lr = options.lr, .weight_decay = options.weight_decay}) {
    TP_CHECK(model_->config().decoder(), "{}: a {} model is an encoder; finetune trains causal language models",
             model_dir.string(), model_->config().model_type);
    TP_CHECK(options.micro_batch_size > 0 && options.train_iters > 0 && options.lr_warmup_iters >= 0,
             "finetune: micro batch size {} and train iters {} must be positive, warmup {} not negative",
             options.micro_batch_size, options.train_iters, options.lr_warmup_iters);
  }

  /// One optimizer step on the batch of step_done() from `examples`.
  StepResult step(const std::vector<Example>& examples) {
    const std::int64_t s = adamw_.step_count();
    std::vector<std::int64_t> ids, targets, lengths;
    std::int64_t counted = 0;
    for (const std::size_t i : batch_of(examples.size(), options_, s)) {
      const Example& e = examples[i];
      const auto n = static_cast<std::int64_t>(e.ids.size()) - 1;
      if (n < 1) continue;
      lengths.push_back(n);
      for (std::int64_t t = 0; t < n; ++t) {
        ids.push_back(e.ids[static_cast<std::size_t>(t)]);
        const bool c = e.counted[static_cast<std::size_t>(t + 1)];
        targets.push_back(c ? e.ids[static_cast<std::size_t>(t + 1)] : -100);
        counted += c;
      }
    }
    TP_CHECK(counted > 0, "finetune: step {} has no counted token", s);
    const auto tokens = static_cast<std::int64_t>(ids.size());
    const auto& dev = ctx_.device;
    tp::Tensor<std::int64_t, Device> d_ids(dev, 1, tokens), d_targets(dev, 1, tokens);
    dev->from_host(tp::ConstView<std::int64_t>(ids.data(), 1, tokens), d_ids.view());
    dev->from_host(tp::ConstView<std::int64_t>(targets.data(), 1, tokens), d_targets.view());

    model_->zero_grad();
    const auto& logits = model_->forward(d_ids.view(), tp::AttentionBatch{.lengths = lengths});
    const auto& per_token = ce_.forward(logits.view(), d_targets.view());
    std::vector<T> host(static_cast<std::size_t>(tokens));
    dev->to_host(tp::ConstView<T>(per_token.view()), tp::MatrixView<T>(host.data(), tokens, 1));
    StepResult r;
    for (const T l : host) r.loss += static_cast<double>(l);
    r.loss /= static_cast<double>(counted);
    std::vector<T> g(static_cast<std::size_t>(tokens), T(1) / static_cast<T>(counted));
    tp::Tensor<T, Device> grad_loss(dev, tokens, 1);
    dev->from_host(tp::ConstView<T>(g.data(), tokens, 1), grad_loss.view());
    model_->backward(ce_.backward(grad_loss.view()).view());
    const auto params = adamw_.parameters();
    r.grad_norm = options_.clip_grad > 0 ? tp::clip_grad_norm<T>(ctx_, std::span(params), options_.clip_grad)
                                         : tp::grad_norm<T>(ctx_, std::span(params));
    r.lr = learning_rate(options_, s);
    adamw_.set_lr(r.lr);
    adamw_.step();
    r.tokens = tokens;
    return r;
  }

  std::int64_t steps_done() const { return adamw_.step_count(); }

  /// Writes <root>/step-NNNNNN/resume.safetensors (weights, AdamW moments, step) as one unit.
  std::filesystem::path save(const std::filesystem::path& root, int keep) {
    return tp::save_checkpoint(
        *ctx_.comm, root, steps_done(),
        [&](const std::filesystem::path& dir) {
          tp::save_resume(adamw_, dir / "resume.safetensors", {{"finetune.seed", std::to_string(options_.seed)}});
        },
        {.keep = keep});
  }

  /// Continues from a checkpoint root (its latest step), a step directory or a resume file.
  void load(const std::filesystem::path& from) {
    std::filesystem::path file = from;
    if (std::filesystem::is_directory(from)) {
      const auto latest = tp::checkpoint_step(from.filename().string()) ? std::optional(from) : tp::latest_checkpoint(from);
      TP_CHECK(latest, "{}: no complete checkpoint (step-NNNNNN) to resume from", from.string());
      file = *latest / "resume.safetensors";
    }
    const auto metadata = tp::load_resume(adamw_, file);
    const auto seed = metadata.find("finetune.seed");
    TP_CHECK(seed != metadata.end() && seed->second == std::to_string(options_.seed),
             "{}: the checkpoint was written with seed {}, this run has seed {}: its batches would differ",
             file.string(), seed == metadata.end() ? "(none)" : seed->second, options_.seed);
  }

  tp::models::Transformer<T, Device>& model() { return *model_; }
  const Options& options() const { return options_; }

 private:
  tp::Context<Device> ctx_;
  Options options_;
  std::unique_ptr<tp::models::Transformer<T, Device>> model_;
  tp::VocabParallelCrossEntropy<T, Device> ce_;
  tp::AdamW<T, Device> adamw_;
};

}  // namespace finetune
