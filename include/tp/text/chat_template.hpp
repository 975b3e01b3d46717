#pragma once
/// tp::text::ChatTemplate: a conversation as the text a chat model was trained on, from the chat
/// template of its tokenizer_config.json.
///
///   const auto tok = tp::text::Tokenizer::from_directory(dir);
///   const auto chat = tp::text::ChatTemplate::from_tokenizer(tok, dir.string());
///   const auto ids = tok.encode(chat.render({{"user", "Hello"}}), /*add_special_tokens=*/false);
///   // generate, stopping at chat.end_of_turn_id()
///
/// Hugging Face templates are Jinja programs, and no C++ library in the registries tp builds
/// from renders them (Debian has no inja, Jinja2Cpp or minja). So tp recognises the common
/// templates by comparing them, text for text, with known ones, and renders those formats itself:
///
///   ChatML       <|im_start|>role\ncontent<|im_end|>\n ... <|im_start|>assistant\n
///                (Qwen2 and SmolLM2 Instruct, with their default system turn; the plain form)
///   Llama 3      <|begin_of_text|><|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|> ...
///   Mistral      <s>[INST] user [/INST]assistant</s>[INST] ...   (Mistral 7B Instruct v0.1-v0.2's form)
///
/// Any other template is refused with tp::InvalidArgument naming the formats tp knows. A known
/// template may carry a default system message (Qwen2: "You are a helpful assistant."), taken
/// from the template's text where the known one has it. Jinja string literals may spell a newline
/// as "\n" or as a newline; both compare equal.

#ifndef TP_HAS_TEXT
#error "tp/text/chat_template.hpp needs the tp::text CMake component: target_link_libraries(... tp::text)"
#endif

#include <algorithm>
#include <array>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tp/core/error.hpp"
#include "tp/text/tokenizer.hpp"
#include "tp/text/unicode.hpp"

namespace tp::text {

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

enum class ChatFormat { chatml, llama3, mistral };

inline std::string_view chat_format_name(ChatFormat f) {
  switch (f) {
    case ChatFormat::chatml: return "ChatML";
    case ChatFormat::llama3: return "Llama 3";
    case ChatFormat::mistral: return "Mistral";
  }
  return "?";
}

namespace detail {

/// A known template: its text, with "{system}" where a default system message sits.
struct KnownChatTemplate {
  std::string_view name;
  ChatFormat format;
  std::string_view text;
};

// The templates as the models' tokenizer_config.json files hold them (their Jinja), and the plain
// forms of each format (tests/text/golden's).
inline constexpr std::array<KnownChatTemplate, 6> known_chat_templates{{
    {"ChatML with a default system turn (Qwen2 Instruct, SmolLM2 Instruct)", ChatFormat::chatml,
     "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n"
     "{system}<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
     "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"},
    {"ChatML", ChatFormat::chatml,
     "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
     "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"},
    {"Llama 3 Instruct", ChatFormat::llama3,
     "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
     "message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 "
     "%}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ "
     "'<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"},
    {"Llama 3", ChatFormat::llama3,
     "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
     "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt "
     "%}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"},
    {"Mistral 7B Instruct", ChatFormat::mistral,
     "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ "
     "raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if "
     "message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == "
     "'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles "
     "are supported!') }}{% endif %}{% endfor %}"},
    {"Mistral", ChatFormat::mistral,
     "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] "
     "+ ' [/INST]' }}{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"},
}};

/// Jinja string literals: "\n" (backslash, n) and a newline are the same character.
inline std::string normalize_template(std::string_view t) {
  std::string out;
  for (std::size_t i = 0; i < t.size(); ++i) {
    if (t[i] == '\\' && i + 1 < t.size() && t[i + 1] == 'n') {
      out += '\n';
      ++i;
    } else {
      out += t[i];
    }
  }
  // Leading and trailing whitespace is not output (transformers' templates are trimmed by
  // Jinja's trim_blocks/lstrip_blocks only inside; files often end in a newline).
  const auto first = out.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return {};
  return out.substr(first, out.find_last_not_of(" \t\r\n") - first + 1);
}

/// Python's str.isspace() for one character: bidirectional class WS, B or S, or category Zs.
inline bool python_space(char32_t c) {
  const auto dir = u_charDirection(static_cast<UChar32>(c));
  return dir == U_WHITE_SPACE_NEUTRAL || dir == U_BLOCK_SEPARATOR || dir == U_SEGMENT_SEPARATOR ||
         u_charType(static_cast<UChar32>(c)) == U_SPACE_SEPARATOR;
}

/// Python's str.strip() (Unicode whitespace too): Jinja's `trim` filter.
inline std::string trim(std::string_view s) {
  const std::string text = unicode::to_valid_utf8(s);
  std::size_t begin = 0, end = 0;
  bool seen = false;
  for (std::size_t i = 0; i < text.size();) {
    const std::size_t at = i;
    if (!python_space(unicode::next_code_point(text, i))) {
      if (!seen) begin = at;
      seen = true;
      end = i;
    }
  }
  return seen ? text.substr(begin, end - begin) : std::string();
}

}  // namespace detail

class ChatTemplate {
 public:
  /// Recognises `jinja` (the template's text); `bos`/`eos` are the tokenizer's (the Llama 3 and
  /// Mistral templates use them), `source` names the file in errors.
  static ChatTemplate recognise(std::string_view jinja, std::optional<std::string> bos, std::optional<std::string> eos,
                                std::string_view source) {
    const std::string text = detail::normalize_template(jinja);
    for (const detail::KnownChatTemplate& known : detail::known_chat_templates) {
      const std::string want = detail::normalize_template(known.text);
      std::optional<std::string> system;
      const auto hole = want.find("{system}");
      if (hole == std::string::npos) {
        if (text != want) continue;
      } else {
        const std::string_view head = std::string_view(want).substr(0, hole);
        const std::string_view tail = std::string_view(want).substr(hole + 8);
        if (text.size() < head.size() + tail.size() || !text.starts_with(head) || !text.ends_with(tail)) continue;
        system = text.substr(head.size(), text.size() - head.size() - tail.size());
        // The default system message is a plain string literal's content: no quote, no Jinja.
        if (system->find_first_of("'{}%\\") != std::string::npos) continue;
      }
      ChatTemplate t;
      t.name_ = known.name;
      t.format_ = known.format;
      t.default_system_ = std::move(system);
      t.bos_ = std::move(bos);
      t.eos_ = std::move(eos);
      if ((t.format_ == ChatFormat::llama3 || t.format_ == ChatFormat::mistral) && !t.bos_)
        TP_THROW(InvalidArgument, "{}: the {} chat template begins with bos_token, which the tokenizer has not",
                 source, known.name);
      if (t.format_ == ChatFormat::mistral && !t.eos_)
        TP_THROW(InvalidArgument, "{}: the {} chat template ends turns with eos_token, which the tokenizer has not",
                 source, known.name);
      return t;
    }
    std::string names;
    for (const auto& known : detail::known_chat_templates) names += fmt::format("{}{}", names.empty() ? "" : "; ", known.name);
    TP_THROW(InvalidArgument,
             "{}: the chat template ({} characters, beginning \"{}\") is not one tp renders; tp renders these "
             "templates only (tp/text/chat_template.hpp): {}",
             source, jinja.size(), jinja.substr(0, std::min<std::size_t>(jinja.size(), 60)), names);
  }

  /// The tokenizer's default chat template; `source` (the model directory) names it in errors.
  static ChatTemplate from_tokenizer(const Tokenizer& tokenizer, std::string_view source) {
    const auto jinja = tokenizer.chat_template();
    if (!jinja)
      TP_THROW(InvalidArgument, "{}: the tokenizer has no chat template (tokenizer_config.json's chat_template or "
               "chat_template.jinja); give a plain prompt", source);
    const auto& s = tokenizer.special_tokens();
    return recognise(*jinja, s.bos ? std::optional(s.bos->content) : std::nullopt,
                     s.eos ? std::optional(s.eos->content) : std::nullopt, source);
  }

  /// The conversation as text, with the assistant's turn opened when add_generation_prompt
  /// (transformers' apply_chat_template(messages, tokenize=False, add_generation_prompt=...)).
  /// Encode it with add_special_tokens=false: the template writes BOS itself.
  std::string render(std::span<const ChatMessage> messages, bool add_generation_prompt = true) const {
    std::string out;
    switch (format_) {
      case ChatFormat::chatml:
        for (std::size_t i = 0; i < messages.size(); ++i) {
          if (i == 0 && default_system_ && messages[0].role != "system")
            out += "<|im_start|>system\n" + *default_system_ + "<|im_end|>\n";
          out += "<|im_start|>" + messages[i].role + "\n" + messages[i].content + "<|im_end|>\n";
        }
        if (add_generation_prompt) out += "<|im_start|>assistant\n";
        break;
      case ChatFormat::llama3:
        for (std::size_t i = 0; i < messages.size(); ++i) {
          if (i == 0) out += *bos_;
          out += "<|start_header_id|>" + messages[i].role + "<|end_header_id|>\n\n" + detail::trim(messages[i].content) +
                 "<|eot_id|>";
        }
        if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
        break;
      case ChatFormat::mistral:
        out += *bos_;
        for (std::size_t i = 0; i < messages.size(); ++i) {
          const ChatMessage& m = messages[i];
          // The template's raise_exception: roles alternate, user first, no system turn.
          if (m.role != "user" && m.role != "assistant")
            TP_THROW(InvalidArgument, "{} chat template: only user and assistant roles are supported, message {} is {}",
                     name_, i, m.role);
          if ((m.role == "user") != (i % 2 == 0))
            TP_THROW(InvalidArgument, "{} chat template: roles must alternate user/assistant/..., message {} is {}",
                     name_, i, m.role);
          out += m.role == "user" ? "[INST] " + m.content + " [/INST]" : m.content + *eos_;
        }
        break;
    }
    return out;
  }
  std::string render(std::initializer_list<ChatMessage> messages, bool add_generation_prompt = true) const {
    return render(std::span<const ChatMessage>(messages.begin(), messages.size()), add_generation_prompt);
  }

  /// The token that ends the assistant's turn: <|im_end|>, <|eot_id|>, or EOS (Mistral).
  std::string end_of_turn() const {
    switch (format_) {
      case ChatFormat::chatml: return "<|im_end|>";
      case ChatFormat::llama3: return "<|eot_id|>";
      case ChatFormat::mistral: return *eos_;
    }
    return {};
  }
  /// end_of_turn()'s id in `tokenizer`; tp::InvalidArgument if it has no such token.
  std::int64_t end_of_turn_id(const Tokenizer& tokenizer) const {
    const auto id = tokenizer.token_to_id(end_of_turn());
    if (!id) TP_THROW(InvalidArgument, "{} chat template: the end-of-turn token {} is not in the tokenizer", name_, end_of_turn());
    return *id;
  }

  ChatFormat format() const { return format_; }
  /// Which known template it is.
  std::string_view name() const { return name_; }
  /// The system message the template adds when the conversation has none.
  const std::optional<std::string>& default_system() const { return default_system_; }

 private:
  ChatTemplate() = default;
  std::string_view name_;
  ChatFormat format_ = ChatFormat::chatml;
  std::optional<std::string> default_system_, bos_, eos_;
};

}  // namespace tp::text
