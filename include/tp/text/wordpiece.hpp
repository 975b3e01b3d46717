#pragma once
/// The WordPiece model of tokenizer.json ("type": "WordPiece", BERT's): each piece is split
/// greedily into the longest tokens of the vocabulary from the left, every token after the first
/// spelled with the continuing_subword_prefix ("##"); a piece that cannot be split that way, or
/// longer than max_input_chars_per_word characters, is the unk_token as a whole.

#ifndef TP_HAS_TEXT
#error "tp/text/wordpiece.hpp needs the tp::text CMake component: target_link_libraries(... tp::text)"
#endif

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tp/io/json_file.hpp"
#include "tp/text/model.hpp"
#include "tp/text/unicode.hpp"

namespace tp::text {

class WordPiece final : public Model {
 public:
  explicit WordPiece(const JsonNode& node)
      : vocab_(node.at("vocab")),
        unk_token_(node.at("unk_token").string()),
        prefix_(node.string_or("continuing_subword_prefix", "##")),
        max_chars_(node.find("max_input_chars_per_word") ? node.at("max_input_chars_per_word").integer(0, INT64_MAX / 2)
                                                         : 100),
        max_token_bytes_(vocab_.max_token_bytes()) {}

  const Vocabulary& vocabulary() const override { return vocab_; }
  const std::optional<std::string>& unk_token() const override { return unk_token_; }

  void tokenize(std::string_view word, std::vector<std::int64_t>& ids) const override {
    const std::size_t first = ids.size();
    std::int64_t chars = 0;
    for (char c : word) chars += !continuation(c);
    bool bad = chars > max_chars_;
    std::string candidate;
    for (std::size_t start = 0; !bad && start < word.size();) {
      // No token is longer than max_token_bytes_, so the search starts there rather than at the
      // end of the word: the same answer, in time linear in the word.
      std::size_t end = std::min(word.size(), start + max_token_bytes_);
      while (end > start && end < word.size() && continuation(word[end])) --end;  // to a character boundary
      std::optional<std::int64_t> found;
      while (end > start) {
        candidate.assign(start > 0 ? prefix_ : std::string());
        candidate.append(word.substr(start, end - start));
        if ((found = vocab_.id(candidate))) break;
        do --end;
        while (end > start && continuation(word[end]));
      }
      if (!found) {
        bad = true;
        break;
      }
      ids.push_back(*found);
      start = end;
    }
    if (bad) {
      ids.resize(first);
      const auto unk = vocab_.id(*unk_token_);
      if (!unk) TP_THROW(IoError, "WordPiece: the unk_token \"{}\" is not in the vocabulary", *unk_token_);
      ids.push_back(*unk);
    }
  }

 private:
  static bool continuation(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

  Vocabulary vocab_;
  std::optional<std::string> unk_token_;
  std::string prefix_;
  std::int64_t max_chars_;
  std::size_t max_token_bytes_;
};

}  // namespace tp::text
