#pragma once
/// Autoregressive generation through a model's KV cache: the prompt in one forward (prefill), then
/// one token per forward (decode), each token chosen by tp::sample from the vocabulary-parallel
/// logits, so every rank of the TP group produces the same tokens.
///
///   auto out = tp::generate(model, prompt_ids, 64, {.temperature = 0.8, .top_p = 0.95, .seed = 1});
///   // out.tokens: the new ids; out.prefill_tokens_per_second(), out.decode_tokens_per_second()
///
/// The model is any decoder with the interface of tp::models::Transformer:
///   auto cache = model.make_cache(batch, max_len);
///   const Tensor<T, Device>& logits = model.forward(ids /*[1, tokens], device*/, AttentionBatch, cache);
///     // this rank's logits [tokens, vocab_range().size()]
///   model.vocab_range(), model.config().vocab, model.context().
/// A model that also has next_token_logits(ids, batch, cache) (the logits of the last new token
/// alone, [1, vocab_range().size()]) is run through it, so that the prefill projects one row onto
/// the vocabulary, not the whole prompt.
/// generate does not pack the model for inference by itself (Transformer::pack_for_inference: the
/// prefill's GEMMs on prepacked weights, at the cost of a pass over the weights and a second copy
/// of them); a caller that generates more than once packs it first, as examples/generate does.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <span>
#include <type_traits>
#include <vector>

#include "tp/core/context.hpp"
#include "tp/core/error.hpp"
#include "tp/core/grad_mode.hpp"
#include "tp/core/tensor.hpp"
#include "tp/inference/sampling.hpp"
#include "tp/layers/attention_batch.hpp"

namespace tp {

struct GenerateOptions {
  /// How each token is chosen (greedy by default); token i of the output draws with step i.
  SamplingOptions sampling{};
  /// Ids that end the generation (the id itself is kept as the last token), e.g. the model's EOS.
  std::vector<std::int64_t> stop_tokens{};
  /// Called with each new token as soon as it is chosen (to print text as it arrives; see
  /// tp/text/text_stream.hpp), on every rank that passes one.
  std::function<void(std::int64_t)> on_token{};
};

struct GenerateResult {
  /// The new tokens, without the prompt.
  std::vector<std::int64_t> tokens;
  std::int64_t prompt_tokens = 0;
  /// Wall seconds of the prompt's forward and the choice of the first new token.
  double prefill_seconds = 0;
  /// Wall seconds of the other new tokens, one forward and one choice each.
  double decode_seconds = 0;

  /// Prompt tokens processed per second in the prefill.
  double prefill_tokens_per_second() const {
    return prefill_seconds > 0 ? static_cast<double>(prompt_tokens) / prefill_seconds : 0.0;
  }
  /// Tokens per second after the first (each one forward through the cache).
  double decode_tokens_per_second() const {
    const auto n = static_cast<double>(tokens.size() > 1 ? tokens.size() - 1 : 0);
    return decode_seconds > 0 ? n / decode_seconds : 0.0;
  }
};

namespace detail {

/// The logits that choose the next token: the model's next_token_logits when it has one, else the
/// logits of every new token (choose_last takes the last row of either).
template <class Model, class Cache>
decltype(auto) next_logits(Model& model, ConstView<std::int64_t> ids, const AttentionBatch& batch, Cache& cache) {
  if constexpr (requires { model.next_token_logits(ids, batch, cache); })
    return model.next_token_logits(ids, batch, cache);
  else
    return model.forward(ids, batch, cache);
}

/// The token chosen from the last row of a logits shard.
template <class T, class Device>
std::int64_t choose_last(const Context<Device>& ctx, const Tensor<T, Device>& logits, Range vocab_range,
                         std::int64_t vocab, const SamplingOptions& sampling, std::uint64_t step) {
  TP_CHECK(logits.rows() > 0 && logits.cols() == vocab_range.size(),
           "generate: the model returned logits of {}x{}, expected [tokens, {}] (this rank's vocabulary [{}, {}))",
           logits.rows(), logits.cols(), vocab_range.size(), vocab_range.begin, vocab_range.end);
  return sample<T>(ctx, logits.view().rows_range(logits.rows() - 1, 1), vocab_range, vocab, sampling, step)[0];
}

}  // namespace detail

/// Generates up to max_new_tokens after `prompt` (host ids) with batch 1: one forward over the
/// prompt that fills the model's KV cache, then one forward per token. Collective over the
/// model's communicator; every rank returns the same tokens. Throws InvalidArgument for an empty
/// prompt, a negative count or bad sampling options, and whatever the model throws for ids outside
/// its vocabulary or a length past its positions.
template <class Model>
GenerateResult generate(Model& model, std::span<const std::int64_t> prompt, std::int64_t max_new_tokens,
                        const GenerateOptions& options = {}) {
  using Clock = std::chrono::steady_clock;
  TP_CHECK(!prompt.empty(), "generate: the prompt is empty (at least one token is needed to start from)");
  TP_CHECK(max_new_tokens >= 0, "generate: max_new_tokens must be >= 0, got {}", max_new_tokens);
  check_sampling_options(options.sampling);
  const auto& ctx = model.context();
  const auto& device = ctx.device;
  const std::int64_t vocab = model.config().vocab;
  const Range vocab_range = model.vocab_range();
  const auto n = static_cast<std::int64_t>(prompt.size());
  GenerateResult result;
  result.prompt_tokens = n;
  if (max_new_tokens == 0) return result;
  // The KV cache holds prompt + new tokens: bounded by the model's context (its positions), so
  // that a huge max_new_tokens is a clear error, not an allocation that fails.
  if constexpr (requires { model.config().max_positions; }) {
    const std::int64_t context = model.config().max_positions;
    TP_CHECK(n <= context && max_new_tokens <= context - n,
             "generate: a prompt of {} tokens plus max_new_tokens {} is past the model's context of {} positions "
             "(max_position_embeddings); ask for at most {} new tokens",
             n, max_new_tokens, context, std::max<std::int64_t>(context - n, 0));
  }

  const NoGrad no_grad;
  auto cache = model.make_cache(1, n + max_new_tokens);
  using Ids = Tensor<std::int64_t, std::remove_cvref_t<decltype(*device)>>;
  Ids ids(device, 1, n);
  const auto is_stop = [&](std::int64_t t) {
    for (const std::int64_t s : options.stop_tokens)
      if (s == t) return true;
    return false;
  };

  auto start = Clock::now();
  device->from_host(ConstView<std::int64_t>(prompt.data(), 1, n), ids.view());
  std::int64_t token =
      detail::choose_last(ctx, detail::next_logits(model, ids.view(), AttentionBatch{.lengths = {n}}, cache),
                          vocab_range, vocab, options.sampling, 0);
  result.tokens.push_back(token);
  if (options.on_token) options.on_token(token);
  result.prefill_seconds = std::chrono::duration<double>(Clock::now() - start).count();

  start = Clock::now();
  Ids next(device, 1, 1);
  for (std::int64_t i = 1; i < max_new_tokens && !is_stop(token); ++i) {
    device->from_host(ConstView<std::int64_t>(&token, 1, 1), next.view());
    token = detail::choose_last(ctx, detail::next_logits(model, next.view(), AttentionBatch{.lengths = {1}}, cache),
                                vocab_range, vocab, options.sampling, static_cast<std::uint64_t>(i));
    result.tokens.push_back(token);
    if (options.on_token) options.on_token(token);
  }
  result.decode_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return result;
}

}  // namespace tp
