#pragma once
/// What tp takes from a Hugging Face tokenizer_config.json: which tokens are the BOS, EOS, padding
/// and unknown tokens (a string, or an object with "content" as transformers writes an
/// AddedToken), the additional special tokens, and the chat template (a string, or a list of
/// {"name", "template"} of which "default" is the chat template). Rendering the template is not
/// tp's business here: it is exposed as text.

#ifndef TP_HAS_TEXT
#error "tp/text/tokenizer_config.hpp needs the tp::text CMake component: target_link_libraries(... tp::text)"
#endif

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "tp/io/json_file.hpp"

namespace tp::text {

struct TokenizerConfig {
  std::optional<std::string> bos_token, eos_token, pad_token, unk_token;
  std::vector<std::string> additional_special_tokens;
  /// Chat templates by name; a config with one template names it "default".
  std::map<std::string, std::string> chat_templates;

  static TokenizerConfig from_json(const JsonNode& root) {
    TokenizerConfig c;
    root.object();
    c.bos_token = token(root, "bos_token");
    c.eos_token = token(root, "eos_token");
    c.pad_token = token(root, "pad_token");
    c.unk_token = token(root, "unk_token");
    if (const auto list = root.find("additional_special_tokens"))
      for (std::size_t i = 0; i < list->size(); ++i) c.additional_special_tokens.push_back(content((*list)[i]));
    if (const auto t = root.find("chat_template")) {
      if (t->json().is_string()) {
        c.chat_templates.emplace("default", t->string());
      } else {
        for (std::size_t i = 0; i < t->size(); ++i) {
          const JsonNode entry = (*t)[i];
          if (!c.chat_templates.emplace(entry.at("name").string(), entry.at("template").string()).second)
            entry.fail("a second chat template named \"{}\"", entry.at("name").string());
        }
      }
    }
    return c;
  }

 private:
  static std::string content(const JsonNode& node) {
    return node.json().is_string() ? node.string() : node.at("content").string();
  }
  static std::optional<std::string> token(const JsonNode& root, std::string_view key) {
    const auto node = root.find(key);
    return node ? std::optional<std::string>(content(*node)) : std::nullopt;
  }
};

}  // namespace tp::text
