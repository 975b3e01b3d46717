/// Generates text from a Hugging Face checkpoint directory (config.json + model.safetensors or a
/// sharded index) with the weights split across ranks: the prompt in one forward, then one token
/// at a time through the KV cache (tp/inference/generate.hpp), printing the text and the prefill and
/// decode tokens per second.
///
///   mpirun -np 2 generate --model tiny --prompt "In the beginning"       # what train_tiny_lm --save-hf wrote
///   generate --backend local --world 4 --model tiny --prompt "And God" --temperature 0.8 --top-p 0.95
///   generate --model qwen-like --prompt-ids "785 6722 315" --max-new-tokens 20
///
/// Vocabulary-256 models (train_tiny_lm's) read --prompt as bytes and print bytes. Other vocabularies
/// take --prompt-ids and print the new ids, decoded through the directory's tokenizer.json
/// vocabulary when there is one. The model is tp::models::Transformer: GPT-2, Llama, Qwen2 and
/// Mistral checkpoints (tp/models/hugging_face.hpp).

#include <CLI/CLI.hpp>
#include <tp/comm/launch.hpp>
#include <tp/inference/generate.hpp>
#include <tp/tp.hpp>

#include <tp/io/json_file.hpp>
#include <tp/models/hugging_face.hpp>

#include <charconv>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <sstream>

namespace {

/// GPT-2's byte-level BPE spells each byte as a printable character (bytes_to_unicode): the
/// printable Latin-1 bytes as themselves, the others as U+0100 onwards in byte order.
std::map<char32_t, unsigned char> byte_level_decoder() {
  std::vector<int> printable;
  for (int b = '!'; b <= '~'; ++b) printable.push_back(b);
  for (int b = 0xA1; b <= 0xAC; ++b) printable.push_back(b);
  for (int b = 0xAE; b <= 0xFF; ++b) printable.push_back(b);
  std::map<char32_t, unsigned char> decoder;
  for (int b : printable) decoder[static_cast<char32_t>(b)] = static_cast<unsigned char>(b);
  char32_t next = 256;
  for (int b = 0; b < 256; ++b)
    if (std::find(printable.begin(), printable.end(), b) == printable.end())
      decoder[next++] = static_cast<unsigned char>(b);
  return decoder;
}

/// The code points of a UTF-8 string (tokenizer.json is UTF-8).
std::u32string utf8_decode(const std::string& s) {
  std::u32string out;
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const int n = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    char32_t cp = n == 1 ? c : c & (0xFF >> (n + 1));
    for (int k = 1; k < n && i + k < s.size(); ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
    out.push_back(cp);
    i += n;
  }
  return out;
}

/// Turns ids into text with tokenizer.json's vocabulary: byte-level BPE (GPT-2, Llama 3, Qwen2)
/// maps each character back to its byte; SentencePiece-style vocabularies (Llama 2, Mistral) use
/// "▁" for a space and "<0xNN>" for raw bytes. Unknown ids print as <id>.
class Detokenizer {
  /// The byte of a SentencePiece byte-fallback piece "<0xNN>" (two hex digits); nullopt for any
  /// other token, "<0xZZ>" included, which is then text like any other.
  static std::optional<unsigned char> byte_piece(const std::string& t) {
    if (t.size() != 6 || !t.starts_with("<0x") || !t.ends_with(">")) return std::nullopt;
    unsigned value = 0;
    const auto [end, ec] = std::from_chars(t.data() + 3, t.data() + 5, value, 16);
    if (ec != std::errc() || end != t.data() + 5) return std::nullopt;
    return static_cast<unsigned char>(value);
  }

 public:
  /// Reads `file` if there is one (a model without tokenizer.json prints ids); a file that is
  /// there but is not a regular file, is too large, is not JSON or has a key of the wrong type is
  /// refused, naming the file and the key (tp/io/json_file.hpp).
  explicit Detokenizer(const std::filesystem::path& file) {
    if (!std::filesystem::exists(std::filesystem::symlink_status(file))) return;
    const nlohmann::json json = tp::read_json_file(file, "tokenizer.json");
    const tp::JsonNode root(json, file.string());
    for (const auto& [token, id] : root.at("model").at("vocab").object())
      tokens_[tp::JsonNode(id, file.string(), fmt::format("model.vocab[{}]", nlohmann::json(token).dump()))
                  .integer(0, std::numeric_limits<std::int64_t>::max())] = token;
    if (const auto added = root.find("added_tokens"))
      for (std::size_t i = 0; i < added->size(); ++i)
        tokens_[(*added)[i].at("id").integer(0, std::numeric_limits<std::int64_t>::max())] =
            (*added)[i].at("content").string();
    if (const auto decoder = root.find("decoder")) {
      byte_level_ = decoder->string_or("type", "") == "ByteLevel";
      if (const auto parts = decoder->find("decoders"))
        for (std::size_t i = 0; i < parts->size(); ++i)
          byte_level_ = byte_level_ || (*parts)[i].string_or("type", "") == "ByteLevel";
    }
  }

  bool loaded() const { return !tokens_.empty(); }

  std::string decode(const std::vector<std::int64_t>& ids) const {
    static const auto bytes = byte_level_decoder();
    std::string out;
    for (const std::int64_t id : ids) {
      const auto it = tokens_.find(id);
      if (it == tokens_.end()) {
        out += fmt::format("<{}>", id);
        continue;
      }
      const std::string& t = it->second;
      if (byte_level_) {
        for (const char32_t cp : utf8_decode(t)) {
          const auto b = bytes.find(cp);
          if (b != bytes.end()) out.push_back(static_cast<char>(b->second));
        }
      } else if (const auto byte = byte_piece(t)) {
        out.push_back(static_cast<char>(*byte));
      } else {
        for (std::size_t i = 0; i < t.size();) {
          if (t.compare(i, 3, "\u2581") == 0) {  // SentencePiece's space
            out.push_back(' ');
            i += 3;
          } else {
            out.push_back(t[i++]);
          }
        }
      }
    }
    return out;
  }

 private:
  std::map<std::int64_t, std::string> tokens_;
  bool byte_level_ = false;
};

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
  std::string backend = "mpi", model_dir, prompt, prompt_ids;
  int world = 2, timeout = 300, threads = 1;
  std::int64_t max_new_tokens = 64;
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
  auto* text_opt = app.add_option("--prompt", prompt, "prompt text (byte-level: vocabulary-256 models)");
  auto* ids_opt = app.add_option("--prompt-ids", prompt_ids, "prompt token ids, separated by spaces or commas");
  text_opt->excludes(ids_opt);
  app.add_option("--max-new-tokens", max_new_tokens, "tokens to generate")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--temperature", sampling.temperature, "0: greedy; otherwise softmax(logits / temperature)")
      ->capture_default_str();
  app.add_option("--top-k", sampling.top_k, "sample among the k most probable tokens (0: all)")->capture_default_str();
  app.add_option("--top-p", sampling.top_p, "nucleus: the most probable tokens whose probability reaches p (1: all)")
      ->capture_default_str();
  app.add_option("--seed", sampling.seed, "sampling seed")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  try {
    tp::check_sampling_options(sampling);
    const tp::models::TransformerConfig config =
        tp::models::read_hugging_face_config(std::filesystem::path(model_dir) / "config.json");
    TP_CHECK(config.decoder(), "{}: a {} model is an encoder; there is nothing to generate with it", model_dir,
             config.model_type);
    std::vector<std::int64_t> ids;
    if (!prompt_ids.empty()) {
      ids = parse_ids(prompt_ids);
    } else {
      TP_CHECK(config.vocab == 256,
               "--prompt is read as bytes, for vocabulary-256 models; {} has a vocabulary of {}: give --prompt-ids",
               model_dir, config.vocab);
      ids.assign(prompt.begin(), prompt.end());
      for (auto& id : ids) id &= 0xFF;  // bytes, not signed chars
    }
    TP_CHECK(!ids.empty(), "the prompt is empty: give --prompt or --prompt-ids");
    const Detokenizer detokenizer(std::filesystem::path(model_dir) / "tokenizer.json");
    auto text_of = [&](const std::vector<std::int64_t>& t) -> std::string {
      if (config.vocab == 256) return printable(std::string(t.begin(), t.end()));
      if (detokenizer.loaded()) return printable(detokenizer.decode(t));
      return fmt::format("{}", fmt::join(t, " "));
    };

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
                 if (lead)
                   fmt::print("generate: {} backend, world {}, {}: {} ({} parameters, hidden {}, {} layers, {} heads over "
                              "{} kv heads, vocabulary {}), loaded in {:.2f} s\n",
                              comm->backend(), comm->size(), model_dir, config.model_type, parameters, config.hidden,
                              config.layers, config.heads, config.kv_heads, config.vocab, load);
                 const auto out = tp::generate(*model, ids, max_new_tokens, {.sampling = sampling});
                 if (lead) {
                   fmt::print("--- prompt ({} tokens)\n{}\n--- generated ({} tokens, temperature {}, top-k {}, top-p {}, seed {})\n{}\n---\n",
                              ids.size(), text_of(ids), out.tokens.size(), sampling.temperature, sampling.top_k,
                              sampling.top_p, sampling.seed, text_of(out.tokens));
                   if (config.vocab != 256 && detokenizer.loaded())
                     fmt::print("ids: {}\n", fmt::join(out.tokens, " "));
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
