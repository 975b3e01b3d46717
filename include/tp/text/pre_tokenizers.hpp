#pragma once
/// Pre-tokenizers: how tokenizer.json's "pre_tokenizer" cuts normalized text into the pieces the
/// model encodes one by one. Each is the `tokenizers` library's component of the same name:
/// ByteLevel (GPT-2's regex, then bytes as characters), Split (the file's pattern and one of its
/// five delimiter behaviours), Metaspace (SentencePiece's ▁), BertPreTokenizer, Whitespace,
/// WhitespaceSplit, Digits, Punctuation, CharDelimiterSplit and Sequence. Any other type
/// (UnicodeScripts, FixedLength, ...) is refused by name.

#ifndef TP_HAS_TEXT
#error "tp/text/pre_tokenizers.hpp needs the tp::text CMake component: target_link_libraries(... tp::text)"
#endif

#include <algorithm>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tp/text/byte_level.hpp"
#include "tp/io/json_file.hpp"
#include "tp/text/regex.hpp"
#include "tp/text/unicode.hpp"

namespace tp::text {

/// A piece of text on its way to the model.
struct Piece {
  std::string text;
  /// Whether the piece starts at the first byte of the input (Metaspace's prepend_scheme
  /// "first" adds its ▁ to that piece only).
  bool at_input_start = false;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  /// Replaces `pieces` by their pre-tokenized sub-pieces, in order, none empty.
  virtual void pre_tokenize(std::vector<Piece>& pieces) const = 0;
};

/// What a split does with the matches (the delimiters): the reference's SplitDelimiterBehavior.
enum class SplitBehavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };

inline SplitBehavior split_behavior_from_json(const JsonNode& node) {
  const std::string& name = node.string();
  if (name == "Removed") return SplitBehavior::removed;
  if (name == "Isolated") return SplitBehavior::isolated;
  if (name == "MergedWithPrevious") return SplitBehavior::merged_with_previous;
  if (name == "MergedWithNext") return SplitBehavior::merged_with_next;
  if (name == "Contiguous") return SplitBehavior::contiguous;
  node.fail("split behavior \"{}\" is not one of Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous",
            name);
}

namespace pre_tokenizers {

/// Each character for which `is_delimiter` holds is a match of its own.
template <class Predicate>
std::vector<Span> split_by_character(std::string_view text, Predicate is_delimiter) {
  std::vector<Span> spans;
  std::size_t previous = 0;
  for (std::size_t i = 0; i < text.size();) {
    const std::size_t begin = i;
    if (!is_delimiter(unicode::next_code_point(text, i))) continue;
    if (previous < begin) spans.push_back({previous, begin, false});
    spans.push_back({begin, i, true});
    previous = i;
  }
  if (previous < text.size()) spans.push_back({previous, text.size(), false});
  return spans;
}

/// Appends to `out` the sub-pieces of `piece` that `spans` (covering it, in order) and the
/// behaviour make, dropping empty ones.
inline void split_piece(const Piece& piece, std::vector<Span> spans, SplitBehavior behavior, bool invert,
                        std::vector<Piece>& out) {
  if (invert)
    for (Span& s : spans) s.is_match = !s.is_match;
  std::vector<Span> kept;  // is_match now means "remove"
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::isolated:
      for (const Span& s : spans) kept.push_back({s.begin, s.end, false});
      break;
    case SplitBehavior::removed: kept = spans; break;
    case SplitBehavior::contiguous:
      for (const Span& s : spans) {
        if (s.is_match == previous_match && !kept.empty()) kept.back().end = s.end;
        else kept.push_back({s.begin, s.end, false});
        previous_match = s.is_match;
      }
      break;
    case SplitBehavior::merged_with_previous:
      for (const Span& s : spans) {
        if (s.is_match && !previous_match && !kept.empty()) kept.back().end = s.end;
        else kept.push_back({s.begin, s.end, false});
        previous_match = s.is_match;
      }
      break;
    case SplitBehavior::merged_with_next:
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !previous_match && !kept.empty()) kept.back().begin = it->begin;
        else kept.push_back({it->begin, it->end, false});
        previous_match = it->is_match;
      }
      std::reverse(kept.begin(), kept.end());
      break;
  }
  for (const Span& s : kept)
    if (!s.is_match && s.end > s.begin)
      out.push_back({piece.text.substr(s.begin, s.end - s.begin), piece.at_input_start && s.begin == 0});
}

/// Applies `split(piece, out)` to every piece.
template <class Fn>
void split_each(std::vector<Piece>& pieces, Fn&& split) {
  std::vector<Piece> out;
  out.reserve(pieces.size());
  for (const Piece& p : pieces) split(p, out);
  pieces = std::move(out);
}

/// ASCII punctuation, or a Unicode 8.0 punctuation character (the reference's tables).
inline bool is_bert_punctuation(char32_t c) {
  if (c < 0x80) return (c >= '!' && c <= '/') || (c >= ':' && c <= '@') || (c >= '[' && c <= '`') || (c >= '{' && c <= '~');
  return unicode::is_punctuation(c) && unicode::assigned_by_unicode(c, 8);
}

/// GPT-2's pre-tokenizer: an optional leading space, GPT-2's regex (contractions, letters, numbers,
/// other symbols, whitespace), then each byte as its byte-level character.
class ByteLevel final : public PreTokenizer {
 public:
  explicit ByteLevel(const JsonNode& node)
      : add_prefix_space_(node.boolean_or("add_prefix_space", true)), use_regex_(node.boolean_or("use_regex", true)) {}

  static const Regex& gpt2_regex() {
    static const Regex re(R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)", false,
                          "ByteLevel pre-tokenizer");
    return re;
  }

  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_each(pieces, [&](const Piece& piece, std::vector<Piece>& out) {
      Piece p = piece;
      if (add_prefix_space_ && p.text.front() != ' ') p.text.insert(0, 1, ' ');
      const std::size_t first = out.size();
      if (use_regex_) split_piece(p, gpt2_regex().split(p.text), SplitBehavior::isolated, false, out);
      else out.push_back(std::move(p));
      for (std::size_t i = first; i < out.size(); ++i) out[i].text = byte_level::encode(out[i].text);
    });
  }

 private:
  bool add_prefix_space_, use_regex_;
};

class Split final : public PreTokenizer {
 public:
  explicit Split(const JsonNode& node)
      : pattern_(pattern_from_json(node.at("pattern"))),
        behavior_(split_behavior_from_json(node.at("behavior"))),
        invert_(node.boolean_or("invert", false)) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_each(pieces, [&](const Piece& p, std::vector<Piece>& out) {
      split_piece(p, pattern_.split(p.text), behavior_, invert_, out);
    });
  }

 private:
  Regex pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

/// SentencePiece's spaces: each space becomes the replacement (▁), which is prepended to the text
/// (always, never, or only at the start of the input: "first"), and the text optionally split
/// before each ▁.
class Metaspace final : public PreTokenizer {
 public:
  enum class Prepend { always, first, never };
  explicit Metaspace(const JsonNode& node) : replacement_(node.at("replacement").string()), split_(node.boolean_or("split", true)) {
    if (!unicode::is_valid_utf8(replacement_) || unicode::code_points(replacement_).size() != 1)
      node.at("replacement").fail("expected one character, found \"{}\"", replacement_);
    prepend_ = prepend_scheme(node);
  }

  /// prepend_scheme, or the older add_prefix_space (false: never), as the reference reads them.
  static Prepend prepend_scheme(const JsonNode& node) {
    Prepend scheme = Prepend::always;
    if (const auto s = node.find("prepend_scheme")) {
      const std::string& name = s->string();
      if (name == "always") scheme = Prepend::always;
      else if (name == "first") scheme = Prepend::first;
      else if (name == "never") scheme = Prepend::never;
      else s->fail("prepend_scheme \"{}\" is not one of always, first, never", name);
    }
    if (const auto add = node.find("add_prefix_space"); add && !add->boolean()) {
      if (node.find("prepend_scheme") && scheme != Prepend::never)
        add->fail("add_prefix_space false contradicts prepend_scheme");
      scheme = Prepend::never;
    }
    return scheme;
  }

  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_each(pieces, [&](const Piece& piece, std::vector<Piece>& out) {
      Piece p{replace_spaces(piece.text, replacement_), piece.at_input_start};
      const bool starts = p.text.compare(0, replacement_.size(), replacement_) == 0;
      if (!starts && (prepend_ == Prepend::always || (prepend_ == Prepend::first && p.at_input_start)))
        p.text.insert(0, replacement_);
      if (!split_) {
        out.push_back(std::move(p));
        return;
      }
      const char32_t r = unicode::code_points(replacement_)[0];
      split_piece(p, split_by_character(p.text, [r](char32_t c) { return c == r; }), SplitBehavior::merged_with_next,
                  false, out);
    });
  }

 private:
  static std::string replace_spaces(std::string_view text, std::string_view with) {
    std::string out;
    out.reserve(text.size() + text.size() / 4);
    for (char c : text) c == ' ' ? out.append(with) : out.append(1, c);
    return out;
  }
  std::string replacement_;
  bool split_;
  Prepend prepend_ = Prepend::always;
};

/// Splits on White_Space (removed), then on punctuation (isolated).
class Bert final : public PreTokenizer {
 public:
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_each(pieces, [](const Piece& p, std::vector<Piece>& out) {
      split_piece(p, split_by_character(p.text, unicode::is_white_space), SplitBehavior::removed, false, out);
    });
    split_each(pieces, [](const Piece& p, std::vector<Piece>& out) {
      split_piece(p, split_by_character(p.text, is_bert_punctuation), SplitBehavior::isolated, false, out);
    });
  }
};

/// Runs of word characters and runs of other non-space characters: the reference's
/// `\w+|[^\w\s]+` in Rust's regex syntax, where \w is Alphabetic, marks, decimal digits,
/// connector punctuation and Join_Control (PCRE2's \w lacks some of these: the zero-width joiner
/// of emoji sequences is one) and \s is White_Space, spelled out here.
class Whitespace final : public PreTokenizer {
 public:
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    static const Regex words(R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D}]+)"
                             R"(|[^\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D}\p{White_Space}]+)",
                             false, "Whitespace pre-tokenizer");
    split_each(pieces, [](const Piece& p, std::vector<Piece>& out) {
      split_piece(p, words.split(p.text), SplitBehavior::removed, true, out);
    });
  }
};

/// Splits at each character `is_delimiter` accepts, with the given behaviour.
template <class Predicate>
class CharacterSplit final : public PreTokenizer {
 public:
  CharacterSplit(Predicate is_delimiter, SplitBehavior behavior) : is_delimiter_(is_delimiter), behavior_(behavior) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    split_each(pieces, [&](const Piece& p, std::vector<Piece>& out) {
      split_piece(p, split_by_character(p.text, is_delimiter_), behavior_, false, out);
    });
  }

 private:
  Predicate is_delimiter_;
  SplitBehavior behavior_;
};

template <class Predicate>
std::unique_ptr<PreTokenizer> character_split(Predicate is_delimiter, SplitBehavior behavior) {
  return std::make_unique<CharacterSplit<Predicate>>(is_delimiter, behavior);
}

class Sequence final : public PreTokenizer {
 public:
  explicit Sequence(std::vector<std::unique_ptr<PreTokenizer>> parts) : parts_(std::move(parts)) {}
  void pre_tokenize(std::vector<Piece>& pieces) const override {
    for (const auto& p : parts_) p->pre_tokenize(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

}  // namespace pre_tokenizers

/// The pre-tokenizer a tokenizer.json "pre_tokenizer" object describes; refuses unknown types.
inline std::unique_ptr<PreTokenizer> make_pre_tokenizer(const JsonNode& node) {
  namespace p = pre_tokenizers;
  const std::string& type = node.type();
  if (type == "ByteLevel") return std::make_unique<p::ByteLevel>(node);
  if (type == "Split") return std::make_unique<p::Split>(node);
  if (type == "Metaspace") return std::make_unique<p::Metaspace>(node);
  if (type == "BertPreTokenizer") return std::make_unique<p::Bert>();
  if (type == "Whitespace") return std::make_unique<p::Whitespace>();
  if (type == "WhitespaceSplit") return p::character_split(unicode::is_white_space, SplitBehavior::removed);
  if (type == "Digits")
    return p::character_split(unicode::is_numeric, node.boolean_or("individual_digits", false)
                                                        ? SplitBehavior::isolated
                                                        : SplitBehavior::contiguous);
  if (type == "Punctuation") {
    const auto behavior = node.find("behavior");
    return p::character_split(p::is_bert_punctuation,
                              behavior ? split_behavior_from_json(*behavior) : SplitBehavior::isolated);
  }
  if (type == "CharDelimiterSplit") {
    const JsonNode d = node.at("delimiter");
    const std::u32string c = unicode::code_points(d.string());
    if (c.size() != 1) d.fail("expected one character, found \"{}\"", d.string());
    return p::character_split([delimiter = c[0]](char32_t x) { return x == delimiter; }, SplitBehavior::removed);
  }
  if (type == "Sequence") return std::make_unique<p::Sequence>(make_each(node.at("pretokenizers"), make_pre_tokenizer));
  node.fail("pre-tokenizer type \"{}\" is not supported (tp has ByteLevel, Split, Metaspace, BertPreTokenizer, "
            "Whitespace, WhitespaceSplit, Digits, Punctuation, CharDelimiterSplit and Sequence)",
            type);
}

}  // namespace tp::text
