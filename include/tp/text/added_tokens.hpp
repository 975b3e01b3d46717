#pragma once
/// Added tokens (tokenizer.json's "added_tokens": special tokens such as <|endoftext|> or [CLS],
/// and tokens added to a trained vocabulary), found in the text before the pre-tokenizer sees it,
/// as the `tokenizers` library does: tokens with "normalized": false are matched in the raw text,
/// then the text between them is normalized and tokens with "normalized": true are matched in that
/// (in their own normalized form). Matching is leftmost-longest; "single_word" tokens match only
/// between non-word characters, "lstrip"/"rstrip" take the whitespace on their left/right with
/// them.
///
/// Ids: the reference gives a token whose content is in the model's vocabulary that token's id,
/// and the others consecutive ids from the vocabulary's size on, whatever the file says; tp
/// computes the same and refuses a file whose "id" disagrees, naming the token.

#ifndef TP_HAS_TEXT
#error "tp/text/added_tokens.hpp needs the tp::text CMake component: target_link_libraries(... tp::text)"
#endif

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tp/io/json_file.hpp"
#include "tp/text/model.hpp"
#include "tp/text/normalizers.hpp"
#include "tp/text/unicode.hpp"

namespace tp::text {

struct AddedToken {
  std::string content;
  std::int64_t id = -1;
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
  /// What the token matches and decodes as: its content through the normalizer when
  /// `normalized` (the content otherwise).
  std::string form;
};

/// A stretch of text between added tokens, or one added token (id >= 0).
struct Segment {
  std::string text;
  std::int64_t id = -1;
  bool at_input_start = false;  ///< whether the text starts at the first byte of the input
};

class AddedVocabulary {
 public:
  /// Added tokens longer than this are refused (real ones are tens of bytes); matching costs up
  /// to this many steps per byte of text.
  static constexpr std::size_t max_token_bytes = 1024;

  AddedVocabulary() = default;
  AddedVocabulary(const JsonNode& list, const Vocabulary& model, const Normalizer* normalizer) {
    const std::int64_t model_size = static_cast<std::int64_t>(model.size());
    std::int64_t next_id = model_size;
    for (std::size_t i = 0; i < list.size(); ++i) {
      const JsonNode node = list[i];
      AddedToken t;
      t.content = node.at("content").string();
      const std::int64_t file_id = node.at("id").integer(0, max_token_id);
      t.single_word = node.boolean_or("single_word", false);
      t.lstrip = node.boolean_or("lstrip", false);
      t.rstrip = node.boolean_or("rstrip", false);
      t.normalized = node.boolean_or("normalized", true);
      t.special = node.boolean_or("special", false);
      if (t.content.empty()) continue;  // the reference ignores it
      if (t.content.size() > max_token_bytes)
        node.fail("added token of {} bytes is over the limit of {}", t.content.size(), max_token_bytes);
      if (by_content_.count(t.content)) node.fail("added token \"{}\" appears twice", t.content);
      const auto in_model = model.id(t.content);
      t.id = in_model ? *in_model : next_id++;
      if (t.id != file_id)
        node.fail("added token \"{}\" has id {}, but {} {}", t.content, file_id,
                  in_model ? "the model's vocabulary gives it" : "the tokens before it make it", t.id);
      if (by_id_.count(t.id) || (!in_model && model.token(t.id)))
        node.fail("added token \"{}\" would have id {}, which another token has", t.content, t.id);
      t.form = t.normalized && normalizer ? normalizer->normalize(t.content) : t.content;
      by_content_.emplace(t.content, tokens_.size());
      by_id_.emplace(t.id, tokens_.size());
      tokens_.push_back(std::move(t));
    }
    for (std::size_t i = 0; i < tokens_.size(); ++i)
      (tokens_[i].normalized ? normalized_ : raw_).insert(tokens_[i].normalized ? tokens_[i].form : tokens_[i].content, i);
  }

  const std::vector<AddedToken>& tokens() const { return tokens_; }
  const AddedToken* find(std::int64_t id) const {
    const auto it = by_id_.find(id);
    return it == by_id_.end() ? nullptr : &tokens_[it->second];
  }
  const AddedToken* find_content(std::string_view content) const {
    const auto it = by_content_.find(content);
    return it == by_content_.end() ? nullptr : &tokens_[it->second];
  }

  /// Cuts the text segments of `segments` at the added tokens found in them: those with
  /// normalized == `normalized` (the raw pass first, then the normalized pass).
  void split(std::vector<Segment>& segments, bool normalized) const {
    const Trie& trie = normalized ? normalized_ : raw_;
    if (trie.empty()) return;
    std::vector<Segment> out;
    for (Segment& s : segments) {
      if (s.id >= 0) out.push_back(std::move(s));
      else split_text(s, trie, out);
    }
    segments = std::move(out);
  }

 private:
  /// The tokens' bytes as a trie; each node has its children in a small vector.
  class Trie {
   public:
    bool empty() const { return nodes_.size() <= 1; }
    void insert(std::string_view key, std::size_t token) {
      std::size_t node = 0;
      for (unsigned char c : key) {
        std::size_t next = child(node, c);
        if (next == 0) {
          next = nodes_.size();
          nodes_[node].children.emplace_back(c, next);
          nodes_.emplace_back();
        }
        node = next;
      }
      nodes_[node].token = static_cast<std::int64_t>(token);
    }
    /// The longest key that `text` starts with at `at`: (token, length), or token -1.
    std::pair<std::int64_t, std::size_t> longest(std::string_view text, std::size_t at) const {
      std::pair<std::int64_t, std::size_t> best{-1, 0};
      std::size_t node = 0;
      for (std::size_t i = at; i < text.size(); ++i) {
        node = child(node, static_cast<unsigned char>(text[i]));
        if (node == 0) break;
        if (nodes_[node].token >= 0) best = {nodes_[node].token, i + 1 - at};
      }
      return best;
    }

   private:
    struct Node {
      std::vector<std::pair<unsigned char, std::size_t>> children;
      std::int64_t token = -1;
    };
    std::size_t child(std::size_t node, unsigned char c) const {
      for (const auto& [byte, next] : nodes_[node].children)
        if (byte == c) return next;
      return 0;
    }
    std::vector<Node> nodes_{Node{}};
  };

  static char32_t last_character(std::string_view text) {
    std::size_t i = text.size() - 1;
    while (i > 0 && (static_cast<unsigned char>(text[i]) & 0xC0) == 0x80) --i;
    return unicode::next_code_point(text, i);
  }
  static char32_t first_character(std::string_view text) {
    std::size_t i = 0;
    return unicode::next_code_point(text, i);
  }

  void split_text(const Segment& segment, const Trie& trie, std::vector<Segment>& out) const {
    const std::string_view text = segment.text;
    auto emit_text = [&](std::size_t begin, std::size_t end) {
      if (end > begin) out.push_back({std::string(text.substr(begin, end - begin)), -1, segment.at_input_start && begin == 0});
    };
    std::size_t done = 0;  // the text before this is emitted
    for (std::size_t pos = 0; pos < text.size();) {
      const auto [index, length] = trie.longest(text, pos);
      if (index < 0) {
        ++pos;
        continue;
      }
      const AddedToken& token = tokens_[static_cast<std::size_t>(index)];
      std::size_t start = pos, stop = pos + length;
      pos = stop;
      if (token.single_word) {
        const bool space_before = start == 0 || !unicode::is_word_character(last_character(text.substr(0, start)));
        const bool space_after = stop == text.size() || !unicode::is_word_character(first_character(text.substr(stop)));
        if (!space_before || !space_after) continue;
      }
      if (token.lstrip) {
        std::size_t s = start;
        while (s > 0 && unicode::is_white_space(last_character(text.substr(0, s)))) s -= unicode::utf8(last_character(text.substr(0, s))).size();
        start = std::max(s, done);
      }
      if (token.rstrip)
        while (stop < text.size() && unicode::is_white_space(first_character(text.substr(stop))))
          stop += unicode::utf8(first_character(text.substr(stop))).size();
      emit_text(done, start);
      out.push_back({std::string(text.substr(start, stop - start)), token.id, false});
      done = stop;
    }
    emit_text(done, text.size());
  }

  std::vector<AddedToken> tokens_;
  std::unordered_map<std::string, std::size_t, StringHash, std::equal_to<>> by_content_;
  std::unordered_map<std::int64_t, std::size_t> by_id_;
  Trie raw_, normalized_;
};

}  // namespace tp::text
