#pragma once
/// tp::text::Tokenizer: text to ids and back, driven by a Hugging Face tokenizer.json, as the
/// `tokenizers` library (and so transformers' fast tokenizers) computes them: byte-level BPE
/// (GPT-2, Llama 3, Qwen2, SmolLM2), SentencePiece-style BPE with byte fallback (Llama 2,
/// Mistral) and WordPiece (BERT).
///
///   auto tok = tp::text::Tokenizer::from_directory("Qwen2-0.5B");   // tokenizer.json (+ tokenizer_config.json)
///   std::vector<std::int64_t> ids = tok.encode("Hello, world", /*add_special_tokens=*/true);
///   std::string text = tok.decode(ids, /*skip_special_tokens=*/true);
///
/// Encoding, as the reference does it: invalid UTF-8 becomes U+FFFD (unicode.hpp); added tokens
/// are found (added_tokens.hpp); the text between them is normalized (normalizers.hpp) and cut
/// into pieces (pre_tokenizers.hpp); the model encodes each piece (bpe.hpp, wordpiece.hpp); the
/// post-processor adds the special tokens (post_processors.hpp). Decoding maps ids to tokens,
/// drops special ones if asked, and runs the decoder (decoders.hpp). The file's "truncation" and
/// "padding" are ignored, as transformers ignores them unless a call asks for them.
///
/// A Tokenizer is immutable once built: copies share it, and any number of threads may encode
/// and decode at once. Files that are not what they claim (not JSON, wrong types, merges naming
/// unknown tokens, ids out of range or duplicated, patterns that do not compile, components tp
/// does not have) are refused with a tp::IoError naming the file, the place in it and what was
/// expected.

#ifndef TP_HAS_TEXT
#error "tp/text/tokenizer.hpp needs the tp::text CMake component: target_link_libraries(... tp::text)"
#endif

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tp/core/error.hpp"
#include "tp/text/added_tokens.hpp"
#include "tp/text/bpe.hpp"
#include "tp/text/decoders.hpp"
#include "tp/io/json_file.hpp"
#include "tp/text/model.hpp"
#include "tp/text/normalizers.hpp"
#include "tp/text/post_processors.hpp"
#include "tp/text/pre_tokenizers.hpp"
#include "tp/text/tokenizer_config.hpp"
#include "tp/text/unicode.hpp"
#include "tp/text/wordpiece.hpp"

namespace tp::text {

/// A token and its id.
struct SpecialToken {
  std::string content;
  std::int64_t id = -1;
  bool operator==(const SpecialToken&) const = default;
};

/// The tokens with a role: from tokenizer_config.json where there is one (as transformers takes
/// them); without it, only `unk`, from the model's unk_token.
struct SpecialTokens {
  std::optional<SpecialToken> bos, eos, pad, unk;
};

class Tokenizer {
 public:
  /// Reads a tokenizer.json.
  static Tokenizer from_file(const std::filesystem::path& tokenizer_json) {
    return Tokenizer(read_json_file(tokenizer_json, "tokenizer.json"), tokenizer_json.string());
  }

  /// Reads a model directory: tokenizer.json, and tokenizer_config.json (special tokens, chat
  /// template) and chat_template.jinja where they exist.
  static Tokenizer from_directory(const std::filesystem::path& dir) {
    Tokenizer t = from_file(dir / "tokenizer.json");
    const auto config_path = dir / "tokenizer_config.json";
    std::optional<TokenizerConfig> config;
    if (std::filesystem::exists(config_path)) {
      const nlohmann::json json = read_json_file(config_path, "tokenizer_config.json");
      config = TokenizerConfig::from_json(JsonNode(json, config_path.string()));
    }
    const auto jinja = dir / "chat_template.jinja";
    if (std::filesystem::exists(jinja)) {
      if (!config) config.emplace();
      config->chat_templates.try_emplace("default", read_text_file(jinja, "chat template"));
    }
    if (config) t.apply_config(*config, config_path.string());
    return t;
  }

  /// Builds a tokenizer from tokenizer.json's text (and tokenizer_config.json's, if given); the
  /// names are for errors.
  static Tokenizer from_json(std::string_view tokenizer_json, std::string_view name = "tokenizer.json",
                             std::optional<std::string_view> config_json = std::nullopt,
                             std::string_view config_name = "tokenizer_config.json") {
    Tokenizer t(parse_json_text(tokenizer_json, name, "tokenizer.json"), std::string(name));
    if (config_json) {
      const nlohmann::json json = parse_json_text(*config_json, config_name, "tokenizer_config.json");
      t.apply_config(TokenizerConfig::from_json(JsonNode(json, config_name)), std::string(config_name));
    }
    return t;
  }

  /// The ids of `text` (any bytes: ill-formed UTF-8 is read as U+FFFD), with the
  /// post-processor's special tokens (BOS, [CLS] ... [SEP]) when `add_special_tokens`.
  std::vector<std::int64_t> encode(std::string_view text, bool add_special_tokens = true) const {
    const Parts& p = *parts_;
    std::vector<Segment> segments;
    std::string valid = unicode::to_valid_utf8(text);
    if (!valid.empty()) segments.push_back({std::move(valid), -1, true});
    p.added.split(segments, /*normalized=*/false);
    if (p.normalizer) {
      std::vector<Segment> kept;
      for (Segment& s : segments) {
        if (s.id < 0) s.text = p.normalizer->normalize(std::move(s.text));
        if (s.id >= 0 || !s.text.empty()) kept.push_back(std::move(s));
      }
      segments = std::move(kept);
    }
    p.added.split(segments, /*normalized=*/true);
    std::vector<std::int64_t> ids;
    std::vector<Piece> pieces;
    for (Segment& s : segments) {
      if (s.id >= 0) {
        ids.push_back(s.id);
        continue;
      }
      pieces.assign(1, Piece{std::move(s.text), s.at_input_start});
      if (p.pre_tokenizer) p.pre_tokenizer->pre_tokenize(pieces);
      for (const Piece& piece : pieces) p.model->tokenize(piece.text, ids);
    }
    if (p.post_processor) p.post_processor->process(ids, add_special_tokens);
    return ids;
  }

  /// The text of `ids`, through the decoder; special tokens left out when `skip_special_tokens`.
  /// An id that is no token throws tp::InvalidArgument.
  std::string decode(std::span<const std::int64_t> ids, bool skip_special_tokens = false) const {
    const Parts& p = *parts_;
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (const std::int64_t id : ids) {
      const std::string* token = nullptr;
      if (const AddedToken* added = p.added.find(id)) token = &added->form;
      else token = p.model->vocabulary().token(id);
      if (!token) TP_THROW(InvalidArgument, "Tokenizer::decode: id {} is no token of {}", id, p.file);
      // The reference skips a token whose text is a special token's content.
      if (skip_special_tokens)
        if (const AddedToken* special = p.added.find_content(*token); special && special->special) continue;
      tokens.push_back(*token);
    }
    if (!p.decoder) return decoders::join(tokens, " ");
    p.decoder->decode_chain(tokens);
    return decoders::join(tokens);
  }

  std::optional<std::int64_t> token_to_id(std::string_view token) const {
    if (const AddedToken* added = parts_->added.find_content(token)) return added->id;
    return parts_->model->vocabulary().id(token);
  }
  std::optional<std::string> id_to_token(std::int64_t id) const {
    if (const AddedToken* added = parts_->added.find(id)) return added->form;
    const std::string* token = parts_->model->vocabulary().token(id);
    return token ? std::optional<std::string>(*token) : std::nullopt;
  }
  /// The number of tokens: the model's and the added tokens it lacks (transformers' len(tokenizer)).
  std::int64_t vocab_size() const { return parts_->vocab_size; }
  /// Whether `id` is a special added token (skipped by decode(..., true)).
  bool is_special(std::int64_t id) const {
    const AddedToken* added = parts_->added.find(id);
    return added && added->special;
  }
  const std::vector<AddedToken>& added_tokens() const { return parts_->added.tokens(); }

  const SpecialTokens& special_tokens() const { return special_; }
  /// tokenizer_config.json's additional_special_tokens (ChatML's <|im_start|>, ...).
  const std::vector<SpecialToken>& additional_special_tokens() const { return additional_; }
  /// The chat template (Jinja text) from tokenizer_config.json or chat_template.jinja, if any.
  std::optional<std::string> chat_template(const std::string& name = "default") const {
    const auto it = chat_templates_.find(name);
    return it == chat_templates_.end() ? std::nullopt : std::optional<std::string>(it->second);
  }
  const std::map<std::string, std::string>& chat_templates() const { return chat_templates_; }

 private:
  struct Parts {
    std::string file;
    std::unique_ptr<Model> model;
    std::unique_ptr<Normalizer> normalizer;
    std::unique_ptr<PreTokenizer> pre_tokenizer;
    std::unique_ptr<PostProcessor> post_processor;
    std::unique_ptr<Decoder> decoder;
    AddedVocabulary added;
    std::int64_t vocab_size = 0;
  };

  Tokenizer(const nlohmann::json& json, std::string file) {
    const JsonNode root(json, file);
    root.object();
    auto parts = std::make_shared<Parts>();
    parts->file = file;
    if (const auto version = root.find("version"); version && version->string() != "1.0")
      version->fail("tokenizer.json version \"{}\" is not 1.0, the only version there is", version->string());
    const JsonNode model = root.at("model");
    const std::string& type = model.type();
    if (type == "BPE") parts->model = std::make_unique<Bpe>(model);
    else if (type == "WordPiece") parts->model = std::make_unique<WordPiece>(model);
    else model.fail("model type \"{}\" is not supported (tp has BPE and WordPiece)", type);
    if (const auto n = root.find("normalizer")) parts->normalizer = make_normalizer(*n);
    if (const auto n = root.find("pre_tokenizer")) parts->pre_tokenizer = make_pre_tokenizer(*n);
    if (const auto n = root.find("post_processor")) parts->post_processor = make_post_processor(*n);
    if (const auto n = root.find("decoder")) parts->decoder = make_decoder(*n);
    if (const auto n = root.find("added_tokens"))
      parts->added = AddedVocabulary(*n, parts->model->vocabulary(), parts->normalizer.get());
    const Vocabulary& vocab = parts->model->vocabulary();
    parts->vocab_size = static_cast<std::int64_t>(vocab.size());
    for (const AddedToken& t : parts->added.tokens()) parts->vocab_size += !vocab.id(t.content);
    if (const auto& unk = parts->model->unk_token())
      if (const auto id = vocab.id(*unk)) special_.unk = SpecialToken{*unk, *id};
    parts_ = std::move(parts);
  }

  /// Takes the special tokens and chat templates of tokenizer_config.json; a token it names that
  /// the tokenizer lacks is refused.
  void apply_config(const TokenizerConfig& config, const std::string& file) {
    auto resolve = [&](const std::string& content, std::string_view key) {
      const auto id = token_to_id(content);
      if (!id) TP_THROW(IoError, "{}: {} \"{}\" is not a token of {}", file, key, content, parts_->file);
      return SpecialToken{content, *id};
    };
    auto role = [&](const std::optional<std::string>& token, std::string_view key) -> std::optional<SpecialToken> {
      if (!token) return std::nullopt;
      return resolve(*token, key);
    };
    special_.bos = role(config.bos_token, "bos_token");
    special_.eos = role(config.eos_token, "eos_token");
    special_.pad = role(config.pad_token, "pad_token");
    if (config.unk_token) special_.unk = role(config.unk_token, "unk_token");
    additional_.clear();
    for (const std::string& t : config.additional_special_tokens) additional_.push_back(resolve(t, "additional_special_tokens"));
    chat_templates_ = config.chat_templates;
  }

  std::shared_ptr<const Parts> parts_;
  SpecialTokens special_;
  std::vector<SpecialToken> additional_;
  std::map<std::string, std::string> chat_templates_;
};

}  // namespace tp::text
