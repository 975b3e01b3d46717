/// Generates text from a Hugging Face checkpoint directory (config.json + model.safetensors or a
/// sharded index) with the weights split across ranks: the prompt in one forward, then one token
/// at a time through the KV cache (tp/inference/generate.hpp), printing the text as the tokens
/// arrive and then the prefill and decode tokens per second.
///
///   mpirun -np 2 generate --model tiny --prompt "In the beginning"       # what train_tiny_lm --save-hf wrote
///   generate --backend local --world 4 --model tiny --prompt "And God" --temperature 0.8 --top-p 0.95
///   generate --model SmolLM2-135M-Instruct --chat --prompt "What is the capital of France?"
///   generate --model qwen-like --prompt-ids "785 6722 315" --max-new-tokens 20
///
/// Vocabulary-256 models (train_tiny_lm's) read --prompt as bytes and print bytes. Other models
/// read --prompt through the directory's tokenizer.json (tp::text::Tokenizer, with the special
/// tokens its post-processor adds, as transformers' tokenizer(prompt) does) and print the new
/// tokens' text as it completes (tp::text::TextStream: a character split across tokens appears
/// once whole). --chat wraps the prompt in the chat template of tokenizer_config.json as a user
/// turn (after --system's, if given), opens the assistant's turn and stops at the end-of-turn
/// token (tp::text::ChatTemplate: ChatML, Llama 3 and Mistral templates; others are refused by
/// name). --prompt-ids gives the ids directly. The model is tp::models::Transformer: GPT-2, Llama,
/// Qwen2 and Mistral checkpoints (tp/models/hugging_face.hpp), packed for inference after loading
/// (Transformer::pack_for_inference: the prompt's GEMMs on weights packed for this CPU's GEMM
/// library, one more copy of the linear weights in memory; --no-pack leaves them as stored).

#include <CLI/CLI.hpp>
#include <tp/comm/launch.hpp>
#include <tp/inference/generate.hpp>
#include <tp/tp.hpp>

#include <tp/io/json_file.hpp>
#include <tp/models/hugging_face.hpp>
#include <tp/text/chat_template.hpp>
#include <tp/text/text_stream.hpp>
#include <tp/text/tokenizer.hpp>

#include <cstdio>
#include <optional>
#include <set>
#include <sstream>

namespace {

/// "1, 2 3" -> {1, 2, 3}.
std::vector<std::int64_t> parse_ids(const std::string& text) {
  std::string s = text;
  std::replace(s.begin(), s.end(), ',', ' ');
  std::istringstream in(s);
  std::vector<std::int64_t> ids;
  std::string word;
  while (in >> word) {
    std::size_t used = 0;
    std::int64_t id = 0;
    try {
      id = std::stoll(word, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    TP_CHECK(used == word.size(), "--prompt-ids: '{}' is not an integer id", word);
    ids.push_back(id);
  }
  return ids;
}

/// Bytes as text, with control characters other than newline and tab escaped.
std::string printable(const std::string& bytes) {
  std::string out;
  for (const char ch : bytes) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '\n' || c == '\t' || c >= 0x20)
      out.push_back(ch);
    else
      out += fmt::format("\\x{:02x}", c);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Generate text from a Hugging Face checkpoint with tensor parallelism"};
  std::string backend = "mpi", model_dir, prompt, prompt_ids, system;
  int world = 2, timeout = 300, threads = 1;
  std::int64_t max_new_tokens = 64;
  bool chat = false;
  tp::SamplingOptions sampling;
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.add_option("--model", model_dir, "Hugging Face checkpoint directory: config.json + model.safetensors (or an index)")
      ->required();
  app.add_option("--backend", backend, "local (ranks as threads), mpi or gloo (start with mpirun -np N)")
      ->capture_default_str();
  app.add_option("--world", world, "ranks in this process (local, or gloo without mpirun)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--timeout", timeout, "seconds a rank waits for its peers (local, mpi, gloo) before failing with an error")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--threads", threads, "BLAS threads per rank")->check(CLI::PositiveNumber)->capture_default_str();
  auto* text_opt = app.add_option(
      "--prompt", prompt, "prompt text: through tokenizer.json, or as bytes for vocabulary-256 models");
  auto* ids_opt = app.add_option("--prompt-ids", prompt_ids, "prompt token ids, separated by spaces or commas");
  text_opt->excludes(ids_opt);
  auto* chat_opt = app.add_flag("--chat", chat,
                                "wrap --prompt in the chat template (tokenizer_config.json) as a user turn and stop at "
                                "the end of the assistant's turn");
  chat_opt->needs(text_opt);
  app.add_option("--system", system, "with --chat: a system turn before the prompt")->needs(chat_opt);
  app.add_option("--max-new-tokens", max_new_tokens, "tokens to generate")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--temperature", sampling.temperature, "0: greedy; otherwise softmax(logits / temperature)")
      ->capture_default_str();
  app.add_option("--top-k", sampling.top_k, "sample among the k most probable tokens (0: all)")->capture_default_str();
  app.add_option("--top-p", sampling.top_p, "nucleus: the most probable tokens whose probability reaches p (1: all)")
      ->capture_default_str();
  app.add_option("--seed", sampling.seed, "sampling seed")->capture_default_str();
  bool no_pack = false;
  app.add_flag("--no-pack", no_pack,
               "leave the weights unpacked: the prompt's GEMMs then read them as stored (packing holds a second copy "
               "of the linear weights; Transformer::pack_for_inference)");
  CLI11_PARSE(app, argc, argv);

  try {
    tp::check_sampling_options(sampling);
    const std::filesystem::path dir(model_dir);
    const tp::models::TransformerConfig config = tp::models::read_hugging_face_config(dir / "config.json");
    TP_CHECK(config.decoder(), "{}: a {} model is an encoder; there is nothing to generate with it", model_dir,
             config.model_type);
    const bool bytes = config.vocab == 256;
    // The tokenizer: needed for a text prompt (other than bytes), used for printing when present.
    std::optional<tp::text::Tokenizer> tokenizer;
    if (!bytes && (!prompt.empty() || std::filesystem::exists(dir / "tokenizer.json")))
      tokenizer = tp::text::Tokenizer::from_directory(dir);
    TP_CHECK(!chat || tokenizer, "--chat needs the model's tokenizer; {} has a byte vocabulary", model_dir);
    std::vector<std::int64_t> ids;
    tp::GenerateOptions options{.sampling = sampling};
    std::string shown_prompt;  // the prompt as the model sees it
    if (!prompt_ids.empty()) {
      ids = parse_ids(prompt_ids);
    } else if (bytes) {
      ids.assign(prompt.begin(), prompt.end());
      for (auto& id : ids) id &= 0xFF;  // bytes, not signed chars
    } else if (chat) {
      const auto chat_template = tp::text::ChatTemplate::from_tokenizer(*tokenizer, model_dir);
      std::vector<tp::text::ChatMessage> messages;
      if (!system.empty()) messages.push_back({"system", system});
      messages.push_back({"user", prompt});
      shown_prompt = chat_template.render(messages, /*add_generation_prompt=*/true);
      // The template writes BOS itself (transformers' apply_chat_template(tokenize=True) likewise).
      ids = tokenizer->encode(shown_prompt, /*add_special_tokens=*/false);
      options.stop_tokens.push_back(chat_template.end_of_turn_id(*tokenizer));
    } else {
      ids = tokenizer->encode(prompt);
    }
    TP_CHECK(!ids.empty(), "the prompt is empty: give --prompt or --prompt-ids");
    for (const std::int64_t id : ids)
      TP_CHECK(id >= 0 && id < config.vocab, "prompt id {} is outside {}'s vocabulary of {}", id, model_dir,
               config.vocab);
    if (shown_prompt.empty())
      shown_prompt = bytes ? std::string(ids.begin(), ids.end())
                     : tokenizer ? tokenizer->decode(ids)
                                 : fmt::format("{}", fmt::join(ids, " "));

    tp::launch({.backend = backend, .world = world, .timeout = std::chrono::seconds(timeout)}, argc, argv,
               [&](std::shared_ptr<tp::Communicator> comm) {
                 tp::Context<> ctx(comm, std::make_shared<tp::Cpu>(tp::CpuOptions{.threads = threads}));
                 const bool lead = comm->rank() == 0;
                 const auto t0 = std::chrono::steady_clock::now();
                 const auto model = tp::models::open_hugging_face<float>(ctx, model_dir);
                 const double load = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                 // Records sharing a name are blocks of one tensor (fused q/k/v, stacked gate/up).
                 std::set<std::string> seen;
                 std::int64_t parameters = 0;
                 for (const auto& p : model->parameters())
                   if (seen.insert(p.name).second) parameters += p.full_rows * p.full_cols;
                 // The prefill's GEMMs on weights packed once for this CPU's GEMM library (decode reads
                 // the plain ones): a pass over the weights now, one more copy of them in memory.
                 if (!no_pack) model->pack_for_inference();
                 if (lead) {
                   fmt::print("generate: {} backend, world {}, {}: {} ({} parameters, hidden {}, {} layers, {} heads over "
                              "{} kv heads, vocabulary {}), loaded in {:.2f} s{}\n",
                              comm->backend(), comm->size(), model_dir, config.model_type, parameters, config.hidden,
                              config.layers, config.heads, config.kv_heads, config.vocab, load,
                              no_pack ? "" : fmt::format(", packed for inference ({:.1f} MB more on rank 0)",
                                                         1e-6 * static_cast<double>(model->packed_bytes())));
                   fmt::print("--- prompt ({} tokens)\n{}\n--- generated (temperature {}, top-k {}, top-p {}, seed {})\n",
                              ids.size(), printable(shown_prompt), sampling.temperature, sampling.top_k,
                              sampling.top_p, sampling.seed);
                   std::fflush(stdout);
                 }
                 // The lead rank prints each token's text as it completes.
                 std::optional<tp::text::TextStream> stream;
                 if (lead && tokenizer) stream.emplace(*tokenizer, ids);
                 tp::GenerateOptions run = options;
                 if (lead)
                   run.on_token = [&](std::int64_t token) {
                     if (bytes) fmt::print("{}", printable(std::string(1, static_cast<char>(token))));
                     else if (stream) fmt::print("{}", printable(stream->push(token)));
                     else fmt::print("{} ", token);
                     std::fflush(stdout);
                   };
                 const auto out = tp::generate(*model, ids, max_new_tokens, run);
                 if (lead) {
                   fmt::print("{}\n---\n", stream ? printable(stream->finish()) : std::string());
                   fmt::print("tokens: {}\n", out.tokens.size());
                   if (tokenizer) fmt::print("ids: {}\n", fmt::join(out.tokens, " "));
                   fmt::print("prefill: {} tokens in {:.1f} ms, {:.0f} tokens/s\n", out.prompt_tokens,
                              1e3 * out.prefill_seconds, out.prefill_tokens_per_second());
                   fmt::print("decode: {} tokens in {:.1f} ms, {:.1f} tokens/s\n",
                              out.tokens.size() > 1 ? out.tokens.size() - 1 : 0, 1e3 * out.decode_seconds,
                              out.decode_tokens_per_second());
                 }
               });
  } catch (const std::exception& e) {
    fmt::print(stderr, "generate: {}\n", e.what());
    return 1;
  }
  return 0;
}
