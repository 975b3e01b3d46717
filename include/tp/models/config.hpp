#pragma once
/// The shape of a transformer model, and Hugging Face's config.json for it.
///
/// Three architectures cover the models tp loads (tp/models/transformer.hpp builds them):
///   gpt2   GPT-2: learned positions, pre-norm LayerNorm, GELU (tanh), biases everywhere, LM head
///          tied to the token embedding.
///   llama  Llama, Qwen2, Mistral: rotary positions, pre-norm RMSNorm, SwiGLU, grouped-query
///          attention, no biases (Qwen2: a QKV bias), LM head tied or not.
///   bert   BERT's encoder: learned positions and token types, post-norm LayerNorm, exact GELU,
///          biases everywhere, no LM head (the output is the last hidden states).
///
/// read_hugging_face_config refuses what tp would compute differently from transformers (another
/// model_type, rope scaling, sliding windows, other activations) and configs that contradict
/// themselves, each with an error naming the file and the key.

#ifndef TP_HAS_IO
#error "tp/models/config.hpp needs the tp::io CMake component: target_link_libraries(... tp::io)"
#endif

#include <cstdint>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "tp/core/error.hpp"
#include "tp/io/file.hpp"
#include "tp/io/json_file.hpp"
#include "tp/layers/parallel_mlp.hpp"

namespace tp::models {

enum class Architecture : std::uint8_t { gpt2, llama, bert };

inline std::string_view name(Architecture a) {
  switch (a) {
    case Architecture::gpt2: return "gpt2";
    case Architecture::llama: return "llama";
    case Architecture::bert: return "bert";
  }
  return "?";
}

/// The largest size (vocabulary, width, heads, layers, positions) a config may give: 2^31 - 1, so
/// that products of two sizes, and twice them, fit a signed 64-bit integer.
inline constexpr std::int64_t max_config_size = std::numeric_limits<std::int32_t>::max();

struct TransformerConfig {
  Architecture arch = Architecture::llama;
  /// Hugging Face's model_type, kept so that a saved config names the same family: "gpt2",
  /// "llama", "qwen2", "mistral" or "bert".
  std::string model_type = "llama";
  std::int64_t vocab = 0, hidden = 0, layers = 0, heads = 0, kv_heads = 0;
  std::int64_t head_dim = 0;  ///< hidden / heads unless the config says otherwise
  std::int64_t ffn = 0;       ///< the MLP's inner size (SwiGLU: of gate and of up each)
  std::int64_t max_positions = 0;
  std::int64_t type_vocab = 0;  ///< bert's token types; 0 elsewhere
  double norm_eps = 1e-5;
  double rope_theta = 0;  ///< llama; 0 elsewhere
  bool tie_embeddings = false;
  bool qkv_bias = false, dense_bias = false, mlp_bias = false;
  Activation activation = Activation::gelu_tanh;
  /// bert: config.json's architectures[0] when it is a BERT class ("BertForMaskedLM",
  /// "BertForPreTraining", ...), written back on save so that the heads the checkpoint kept
  /// (Transformer::kept_tensors) load where they belong; empty: "BertModel".
  std::string bert_class;

  bool decoder() const { return arch != Architecture::bert; }

  /// Throws InvalidArgument naming `where` and the first inconsistency: non-positive sizes, heads
  /// that do not divide, an activation or tying the architecture does not have.
  void validate(std::string_view where = "TransformerConfig") const {
    auto positive = [&](std::int64_t v, const char* key) {
      TP_CHECK(v > 0, "{}: {} must be positive, got {}", where, key, v);
    };
    positive(vocab, "vocab");
    positive(hidden, "hidden");
    positive(layers, "layers");
    positive(heads, "heads");
    positive(kv_heads, "kv_heads");
    positive(head_dim, "head_dim");
    positive(ffn, "ffn");
    positive(max_positions, "max_positions");
    auto bounded = [&](std::int64_t v, const char* key) {
      TP_CHECK(v <= max_config_size, "{}: {} is {}, over tp's bound on a size, {} (2^31 - 1)", where, key, v,
               max_config_size);
    };
    bounded(vocab, "vocab");
    bounded(hidden, "hidden");
    bounded(layers, "layers");
    bounded(heads, "heads");
    bounded(kv_heads, "kv_heads");
    bounded(head_dim, "head_dim");
    bounded(ffn, "ffn");
    bounded(max_positions, "max_positions");
    bounded(type_vocab, "type_vocab");
    // The element count of each weight, exactly (each factor is below 2^31), must fit a signed
    // 64-bit size with room to double it (the stacked SwiGLU weight is 2 x ffn rows).
    using Wide = __int128;
    auto elements = [&](Wide n, std::string_view tensor) {
      TP_CHECK(n <= Wide{std::numeric_limits<std::int64_t>::max() / 4},
               "{}: the {} would have {:.3g} elements, more than a 64-bit size can count (vocab {}, hidden {}, heads "
               "{}, kv_heads {}, head_dim {}, ffn {})",
               where, tensor, static_cast<double>(n), vocab, hidden, heads, kv_heads, head_dim, ffn);
    };
    elements(Wide{vocab} * hidden, "token embedding (vocab x hidden)");
    elements(Wide{max_positions} * hidden, "position embedding (max_positions x hidden)");
    elements((Wide{heads} + 2 * Wide{kv_heads}) * head_dim * hidden, "fused q/k/v weight ((heads + 2 kv_heads) head_dim x hidden)");
    elements(2 * Wide{ffn} * hidden, "stacked MLP weight (2 ffn x hidden)");
    TP_CHECK(heads % kv_heads == 0, "{}: {} attention heads are not a multiple of {} key/value heads", where, heads,
             kv_heads);
    TP_CHECK(norm_eps > 0, "{}: the norm epsilon must be positive, got {}", where, norm_eps);
    const bool family = arch == Architecture::llama
                            ? (model_type == "llama" || model_type == "qwen2" || model_type == "mistral")
                            : model_type == name(arch);
    TP_CHECK(family, "{}: model_type \"{}\" is not of the {} architecture", where, model_type, name(arch));
    switch (arch) {
      case Architecture::gpt2:
        TP_CHECK(tie_embeddings, "{}: GPT-2's LM head is always tied to its token embedding", where);
        TP_CHECK(activation != Activation::swiglu, "{}: GPT-2 has no SwiGLU MLP", where);
        break;
      case Architecture::llama:
        TP_CHECK(activation == Activation::swiglu, "{}: a Llama-family MLP is SwiGLU", where);
        TP_CHECK(rope_theta > 0, "{}: rope_theta must be positive, got {}", where, rope_theta);
        TP_CHECK(head_dim % 2 == 0, "{}: rotary embeddings need an even head_dim, got {}", where, head_dim);
        break;
      case Architecture::bert:
        positive(type_vocab, "type_vocab");
        TP_CHECK(activation != Activation::swiglu, "{}: BERT has no SwiGLU MLP", where);
        TP_CHECK(!tie_embeddings, "{}: tp's BERT is the encoder alone, with no LM head to tie", where);
        break;
    }
  }
};

namespace detail {

/// config.json's keys, read with errors that name the file and the key ("config.json: hidden_size:
/// expected an integer, got string \"4\"").
class JsonConfig {
 public:
  JsonConfig(nlohmann::json j, std::string file) : j_(std::move(j)), file_(std::move(file)) {
    if (!j_.is_object())
      TP_THROW(InvalidArgument, "{}: expected a JSON object at the top level, got {}", file_, j_.type_name());
  }
  const std::string& file() const { return file_; }
  bool has(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }

  /// An integer in [lo, hi]; sizes are bounded by max_config_size, so that no product of two of
  /// them overflows and no 2^40 reaches an allocation.
  std::int64_t integer(const char* key, std::optional<std::int64_t> fallback = std::nullopt,
                       std::int64_t lo = std::numeric_limits<std::int64_t>::min(),
                       std::int64_t hi = max_config_size) const {
    if (!has(key)) {
      if (fallback) return *fallback;
      TP_THROW(InvalidArgument, "{}: key '{}' is missing", file_, key);
    }
    const TypedNode v = node(key);
    if (!v.json().is_number_integer()) v.expected("an integer");
    const bool in_range = v.json().is_number_unsigned()
                              ? v.json().get<std::uint64_t>() <= static_cast<std::uint64_t>(hi) &&
                                    (lo <= 0 || v.json().get<std::uint64_t>() >= static_cast<std::uint64_t>(lo))
                              : v.json().get<std::int64_t>() >= lo && v.json().get<std::int64_t>() <= hi;
    if (!in_range && lo == std::numeric_limits<std::int64_t>::min())
      TP_THROW(InvalidArgument, "{}: {}: {} is above {}{}", file_, key, v.json().dump(), hi,
               hi == max_config_size ? ", tp's bound on a size (2^31 - 1)" : "");
    if (!in_range) TP_THROW(InvalidArgument, "{}: {}: {} is outside [{}, {}]", file_, key, v.json().dump(), lo, hi);
    return v.json().get<std::int64_t>();
  }
  double number(const char* key, std::optional<double> fallback = std::nullopt) const {
    if (!has(key)) {
      if (fallback) return *fallback;
      TP_THROW(InvalidArgument, "{}: key '{}' is missing", file_, key);
    }
    const TypedNode v = node(key);
    if (!v.json().is_number()) v.expected("a number");
    return v.json().get<double>();
  }
  bool boolean(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    const TypedNode v = node(key);
    if (!v.json().is_boolean()) v.expected("true or false");
    return v.json().get<bool>();
  }
  std::string string(const char* key, std::optional<std::string> fallback = std::nullopt) const {
    if (!has(key)) {
      if (fallback) return *fallback;
      TP_THROW(InvalidArgument, "{}: key '{}' is missing", file_, key);
    }
    const TypedNode v = node(key);
    if (!v.json().is_string()) v.expected("a string");
    return v.json().get<std::string>();
  }
  /// An object-valued key as a config of its own ("<file>: <key>" in errors); nullopt if absent.
  std::optional<JsonConfig> object(const char* key) const {
    if (!has(key)) return std::nullopt;
    if (!j_[key].is_object())
      TP_THROW(InvalidArgument, "{}: key '{}' is {}, expected an object", file_, key, j_[key].dump());
    return JsonConfig(j_[key], file_ + ": " + key);
  }
  /// The first string of an array-valued key (config.json's "architectures"); "" if absent or not one.
  std::string first_string(const char* key) const {
    if (!has(key) || !j_[key].is_array() || j_[key].empty() || !j_[key][0].is_string()) return {};
    return j_[key][0].get<std::string>();
  }
  /// Refuses a key whose value tp would not honour (anything but absent, null or `ok`).
  void refuse_unless(const char* key, const nlohmann::json& ok, std::string_view why) const {
    if (has(key) && j_[key] != ok)
      TP_THROW(InvalidArgument, "{}: key '{}' is {}, which tp does not support ({})", file_, key, j_[key].dump(), why);
  }

 private:
  /// A key's value, whose wrong type is a bad config (InvalidArgument, as every refusal here).
  class TypedNode {
   public:
    TypedNode(const nlohmann::json& v, const std::string& file, const char* key) : v_(v), file_(file), key_(key) {}
    const nlohmann::json& json() const { return v_; }
    [[noreturn]] void expected(std::string_view what) const {
      TP_THROW(InvalidArgument, "{}: {}: expected {}, got {}", file_, key_, what,
               tp::JsonNode(v_, file_, key_).describe());
    }

   private:
    const nlohmann::json& v_;
    const std::string& file_;
    const char* key_;
  };
  TypedNode node(const char* key) const { return TypedNode(j_.at(key), file_, key); }

  nlohmann::json j_;
  std::string file_;
};

inline Activation activation_from(const JsonConfig& c, const char* key, const std::string& value) {
  // transformers' ACT2FN names: "gelu" is the exact erf form, "gelu_new" and "gelu_pytorch_tanh"
  // the tanh approximation.
  if (value == "gelu") return Activation::gelu_exact;
  if (value == "gelu_new" || value == "gelu_pytorch_tanh" || value == "gelu_fast") return Activation::gelu_tanh;
  TP_THROW(InvalidArgument, "{}: key '{}' is \"{}\"; tp's {} MLP supports \"gelu\", \"gelu_new\" and "
           "\"gelu_pytorch_tanh\"", c.file(), key, value, key);
}

}  // namespace detail

/// Reads a Hugging Face config.json (gpt2, llama, qwen2, mistral or bert).
inline TransformerConfig read_hugging_face_config(const std::filesystem::path& config_json) {
  const std::string file = config_json.string();
  const detail::JsonConfig c(read_json_file(config_json, "config.json"), file);
  TransformerConfig t;
  t.model_type = c.string("model_type");
  if (t.model_type == "gpt2") {
    t.arch = Architecture::gpt2;
    t.vocab = c.integer("vocab_size");
    t.hidden = c.integer("n_embd");
    t.layers = c.integer("n_layer");
    t.heads = t.kv_heads = c.integer("n_head");
    t.ffn = c.integer("n_inner", 4 * t.hidden);
    t.max_positions = c.integer("n_positions");
    t.norm_eps = c.number("layer_norm_epsilon", 1e-5);
    t.activation = detail::activation_from(c, "activation_function", c.string("activation_function", "gelu_new"));
    t.tie_embeddings = c.boolean("tie_word_embeddings", true);
    TP_CHECK(t.tie_embeddings, "{}: key 'tie_word_embeddings' is false, but GPT-2's LM head is its token embedding",
             file);
    t.qkv_bias = t.dense_bias = t.mlp_bias = true;
    c.refuse_unless("scale_attn_weights", true, "scores are always scaled by 1 / sqrt(head_dim)");
    c.refuse_unless("scale_attn_by_inverse_layer_idx", false, "no per-layer attention scaling");
  } else if (t.model_type == "llama" || t.model_type == "qwen2" || t.model_type == "mistral") {
    t.arch = Architecture::llama;
    t.vocab = c.integer("vocab_size");
    t.hidden = c.integer("hidden_size");
    t.layers = c.integer("num_hidden_layers");
    t.heads = c.integer("num_attention_heads");
    t.kv_heads = c.integer("num_key_value_heads", t.heads);
    if (c.has("head_dim")) t.head_dim = c.integer("head_dim");
    t.ffn = c.integer("intermediate_size");
    t.max_positions = c.integer("max_position_embeddings");
    t.norm_eps = c.number("rms_norm_eps", 1e-6);
    t.rope_theta = c.number("rope_theta", 10000.0);
    // transformers 5 writes the rotary settings as "rope_parameters": {"rope_theta", "rope_type"}.
    if (const auto rope = c.object("rope_parameters")) {
      TP_CHECK(!c.has("rope_theta") || rope->number("rope_theta", t.rope_theta) == t.rope_theta,
               "{}: keys 'rope_theta' and 'rope_parameters.rope_theta' disagree", file);
      t.rope_theta = rope->number("rope_theta", t.rope_theta);
      rope->refuse_unless("rope_type", "default", "rotary embeddings without scaling");
    }
    t.tie_embeddings = c.boolean("tie_word_embeddings", false);
    t.activation = Activation::swiglu;
    const std::string act = c.string("hidden_act", "silu");
    TP_CHECK(act == "silu", "{}: key 'hidden_act' is \"{}\"; a Llama-family MLP is SwiGLU (\"silu\")", file, act);
    if (t.model_type == "qwen2") {
      t.qkv_bias = true;  // Qwen2: biases on q, k and v only
    } else {
      t.qkv_bias = t.dense_bias = c.boolean("attention_bias", false);
      t.mlp_bias = c.boolean("mlp_bias", false);
    }
    c.refuse_unless("rope_scaling", nullptr, "rotary embeddings without scaling");
    c.refuse_unless("use_sliding_window", false, "attention over the whole context");
    c.refuse_unless("pretraining_tp", 1, "the exact, unsliced linear layers");
    if (t.model_type == "mistral" && c.has("sliding_window"))
      TP_CHECK(c.integer("sliding_window") >= t.max_positions,
               "{}: key 'sliding_window' is {}, shorter than max_position_embeddings {}; tp attends over the whole "
               "context", file, c.integer("sliding_window"), t.max_positions);
  } else if (t.model_type == "bert") {
    t.arch = Architecture::bert;
    t.vocab = c.integer("vocab_size");
    t.hidden = c.integer("hidden_size");
    t.layers = c.integer("num_hidden_layers");
    t.heads = t.kv_heads = c.integer("num_attention_heads");
    t.ffn = c.integer("intermediate_size");
    t.max_positions = c.integer("max_position_embeddings");
    t.type_vocab = c.integer("type_vocab_size", 2);
    t.norm_eps = c.number("layer_norm_eps", 1e-12);
    t.activation = detail::activation_from(c, "hidden_act", c.string("hidden_act", "gelu"));
    t.qkv_bias = t.dense_bias = t.mlp_bias = true;
    c.refuse_unless("position_embedding_type", "absolute", "learned absolute positions");
    if (const std::string cls = c.first_string("architectures"); cls.starts_with("Bert")) t.bert_class = cls;
  } else {
    TP_THROW(InvalidArgument, "{}: model_type \"{}\" is not one tp loads (gpt2, llama, qwen2, mistral, bert)", file,
             t.model_type);
  }
  if (t.head_dim == 0) {
    TP_CHECK(t.heads > 0 && t.hidden % t.heads == 0,
             "{}: hidden size {} is not a multiple of {} attention heads, and no head_dim is given", file, t.hidden,
             t.heads);
    t.head_dim = t.hidden / t.heads;
  }
  t.validate(file);
  return t;
}

/// The config.json Hugging Face's from_pretrained reads for `config`; `torch_dtype` names the
/// dtype of the weights saved beside it ("float32", "float64", "float16", "bfloat16").
inline nlohmann::ordered_json hugging_face_config_json(const TransformerConfig& t,
                                                       std::string_view torch_dtype = "float32") {
  t.validate();
  nlohmann::ordered_json j;
  auto act_name = [](Activation a) { return a == Activation::gelu_exact ? "gelu" : "gelu_new"; };
  switch (t.arch) {
    case Architecture::gpt2:
      TP_CHECK(t.kv_heads == t.heads && t.head_dim * t.heads == t.hidden && t.qkv_bias && t.dense_bias && t.mlp_bias,
               "gpt2 config: GPT-2 has multi-head attention of hidden / heads per head and biases everywhere");
      j = {{"architectures", {"GPT2LMHeadModel"}}, {"model_type", "gpt2"},
           {"vocab_size", t.vocab}, {"n_embd", t.hidden}, {"n_layer", t.layers}, {"n_head", t.heads},
           {"n_inner", t.ffn}, {"n_positions", t.max_positions}, {"n_ctx", t.max_positions},
           {"layer_norm_epsilon", t.norm_eps}, {"activation_function", act_name(t.activation)},
           {"tie_word_embeddings", true}};
      break;
    case Architecture::llama: {
      const bool qwen2 = t.model_type == "qwen2";
      TP_CHECK(!qwen2 || (t.qkv_bias && !t.dense_bias && !t.mlp_bias),
               "qwen2 config: Qwen2 has biases on q, k and v and nowhere else");
      TP_CHECK(qwen2 || t.qkv_bias == t.dense_bias,
               "{} config: attention_bias covers both the q/k/v and the output projections", t.model_type);
      const char* arch = qwen2 ? "Qwen2ForCausalLM" : t.model_type == "mistral" ? "MistralForCausalLM" : "LlamaForCausalLM";
      j = {{"architectures", {arch}}, {"model_type", t.model_type},
           {"vocab_size", t.vocab}, {"hidden_size", t.hidden}, {"num_hidden_layers", t.layers},
           {"num_attention_heads", t.heads}, {"num_key_value_heads", t.kv_heads}, {"head_dim", t.head_dim},
           {"intermediate_size", t.ffn}, {"max_position_embeddings", t.max_positions}, {"rms_norm_eps", t.norm_eps},
           {"rope_theta", t.rope_theta}, {"hidden_act", "silu"}, {"tie_word_embeddings", t.tie_embeddings}};
      if (!qwen2) {
        j["attention_bias"] = t.qkv_bias;
        j["mlp_bias"] = t.mlp_bias;
      }
      if (t.model_type == "mistral") j["sliding_window"] = nullptr;
      break;
    }
    case Architecture::bert:
      TP_CHECK(t.kv_heads == t.heads && t.head_dim * t.heads == t.hidden,
               "bert config: BERT has multi-head attention of hidden / heads per head");
      j = {{"architectures", {t.bert_class.empty() ? std::string("BertModel") : t.bert_class}}, {"model_type", "bert"},
           {"vocab_size", t.vocab}, {"hidden_size", t.hidden}, {"num_hidden_layers", t.layers},
           {"num_attention_heads", t.heads}, {"intermediate_size", t.ffn},
           {"max_position_embeddings", t.max_positions}, {"type_vocab_size", t.type_vocab},
           {"layer_norm_eps", t.norm_eps}, {"hidden_act", act_name(t.activation)},
           {"position_embedding_type", "absolute"}, {"hidden_dropout_prob", 0.0},
           {"attention_probs_dropout_prob", 0.0}};
      break;
  }
  j["torch_dtype"] = std::string(torch_dtype);
  return j;
}

/// Writes config.json for `config` (see hugging_face_config_json), atomically.
inline void write_hugging_face_config(const TransformerConfig& config, const std::filesystem::path& config_json,
                                      std::string_view torch_dtype = "float32") {
  // Written as safetensors files are: an exclusive temporary file beside it, renamed over it, so
  // that a link planted at the name is replaced, never followed.
  tp::detail::write_file_atomically(config_json, hugging_face_config_json(config, torch_dtype).dump(2) + "\n",
                                "the config");
}

}  // namespace tp::models
