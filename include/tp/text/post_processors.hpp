#pragma once
/// Post-processors: the special tokens tokenizer.json's "post_processor" puts around an encoded
/// text when special tokens are asked for: TemplateProcessing (its "single" template, e.g.
/// "<|begin_of_text|> $A" or "[CLS] $A [SEP]"), BertProcessing ([CLS] $A [SEP]),
/// RobertaProcessing (<s> $A </s>), ByteLevel (offsets only: nothing for ids) and Sequence. tp
/// encodes one text at a time, so pair templates are not used. Other types are refused by name.

#ifndef TP_HAS_TEXT
#error "tp/text/post_processors.hpp needs the tp::text CMake component: target_link_libraries(... tp::text)"
#endif

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tp/io/json_file.hpp"
#include "tp/text/model.hpp"

namespace tp::text {

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  /// Adds the special tokens around `ids` when `add_special_tokens`.
  virtual void process(std::vector<std::int64_t>& ids, bool add_special_tokens) const = 0;
};

namespace post_processors {

/// The ids to put before and after the text.
class Around final : public PostProcessor {
 public:
  Around(std::vector<std::int64_t> before, std::vector<std::int64_t> after) : before_(std::move(before)), after_(std::move(after)) {}
  void process(std::vector<std::int64_t>& ids, bool add_special_tokens) const override {
    if (!add_special_tokens) return;
    ids.insert(ids.begin(), before_.begin(), before_.end());
    ids.insert(ids.end(), after_.begin(), after_.end());
  }

 private:
  std::vector<std::int64_t> before_, after_;
};

/// TemplateProcessing's "single" template: special tokens (each standing for the ids its
/// "special_tokens" entry lists) around the one sequence $A.
inline std::unique_ptr<PostProcessor> make_template(const JsonNode& node) {
  const JsonNode specials = node.at("special_tokens");
  std::map<std::string, std::vector<std::int64_t>, std::less<>> ids_of;
  for (const auto& [name, value] : specials.object()) {
    const JsonNode entry(value, specials.file(), fmt::format("{}[\"{}\"]", specials.path(), name));
    const JsonNode ids = entry.at("ids");
    std::vector<std::int64_t> list;
    for (std::size_t i = 0; i < ids.size(); ++i) list.push_back(ids[i].integer(0, max_token_id));
    if (const auto tokens = entry.find("tokens"); tokens && tokens->size() != list.size())
      entry.fail("has {} ids but {} tokens", list.size(), tokens->size());
    ids_of.emplace(name, std::move(list));
  }
  const JsonNode single = node.at("single");
  std::vector<std::int64_t> before, after;
  bool seen_sequence = false;
  auto add_special = [&](const JsonNode& where, const std::string& name) {
    const auto it = ids_of.find(name);
    if (it == ids_of.end()) where.fail("names the special token \"{}\", which special_tokens does not define", name);
    auto& side = seen_sequence ? after : before;
    side.insert(side.end(), it->second.begin(), it->second.end());
  };
  auto add_sequence = [&](const JsonNode& where, const std::string& id) {
    if (id != "A") where.fail("the single template may hold only the sequence A, found \"{}\"", id);
    if (seen_sequence) where.fail("the single template holds the sequence A twice");
    seen_sequence = true;
  };
  for (std::size_t i = 0; i < single.size(); ++i) {
    const JsonNode piece = single[i];
    if (piece.json().is_string()) {  // the short form: "<s>", "$A", "$0", "[SEP]:1"
      const std::string& text = piece.string();
      const std::string name = text.substr(0, text.find(':'));
      if (!name.starts_with('$')) {
        add_special(piece, name);
      } else {
        const std::string id = name.substr(1);
        const bool a = id.empty() || id == "A" || id == "a" ||
                       std::all_of(id.begin(), id.end(), [](char c) { return c >= '0' && c <= '9'; });
        add_sequence(piece, a ? "A" : id);
      }
    } else if (const auto special = piece.find("SpecialToken")) {
      add_special(*special, special->at("id").string());
    } else if (const auto sequence = piece.find("Sequence")) {
      add_sequence(*sequence, sequence->at("id").string());
    } else {
      piece.fail("expected {{\"SpecialToken\": ...}} or {{\"Sequence\": ...}}");
    }
  }
  if (!seen_sequence) single.fail("the single template does not hold the sequence $A");
  return std::make_unique<Around>(std::move(before), std::move(after));
}

/// BertProcessing / RobertaProcessing: "cls" and "sep", each ["token", id], around the text.
inline std::unique_ptr<PostProcessor> make_cls_sep(const JsonNode& node) {
  auto id_of = [&](std::string_view key) {
    const JsonNode pair = node.at(key);
    if (pair.size() != 2) pair.fail("expected [token, id], found {} entries", pair.size());
    pair[0].string();
    return pair[1].integer(0, max_token_id);
  };
  return std::make_unique<Around>(std::vector<std::int64_t>{id_of("cls")}, std::vector<std::int64_t>{id_of("sep")});
}

class Sequence final : public PostProcessor {
 public:
  explicit Sequence(std::vector<std::unique_ptr<PostProcessor>> parts) : parts_(std::move(parts)) {}
  void process(std::vector<std::int64_t>& ids, bool add_special_tokens) const override {
    for (const auto& p : parts_) p->process(ids, add_special_tokens);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> parts_;
};

}  // namespace post_processors

/// The post-processor a tokenizer.json "post_processor" object describes; refuses unknown types.
inline std::unique_ptr<PostProcessor> make_post_processor(const JsonNode& node) {
  namespace p = post_processors;
  const std::string& type = node.type();
  if (type == "TemplateProcessing") return p::make_template(node);
  if (type == "BertProcessing" || type == "RobertaProcessing") return p::make_cls_sep(node);
  if (type == "ByteLevel") return std::make_unique<p::Around>(std::vector<std::int64_t>{}, std::vector<std::int64_t>{});
  if (type == "Sequence") return std::make_unique<p::Sequence>(make_each(node.at("processors"), make_post_processor));
  node.fail("post-processor type \"{}\" is not supported (tp has TemplateProcessing, BertProcessing, RobertaProcessing, "
            "ByteLevel and Sequence)",
            type);
}

}  // namespace tp::text
