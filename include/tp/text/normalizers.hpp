#pragma once
/// Normalizers: the text transformations tokenizer.json's "normalizer" names, applied to the text
/// between added tokens before pre-tokenization. Each is the `tokenizers` library's component of
/// the same name: BertNormalizer, Lowercase, Strip, StripAccents, NFC, NFD, NFKC, NFKD, Replace,
/// Prepend, ByteLevel and Sequence. Any other type (Precompiled, Nmt, ...) is refused by name.
///
/// tp keeps no alignment between normalized and original text: it produces ids, not offsets.

#ifndef TP_HAS_TEXT
#error "tp/text/normalizers.hpp needs the tp::text CMake component: target_link_libraries(... tp::text)"
#endif

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

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  /// `text` (valid UTF-8, not empty) normalized.
  virtual std::string normalize(std::string text) const = 0;
};

namespace normalizers {

/// Keeps the characters `keep` accepts, each replaced by `map(c)`.
template <class Keep, class Map>
std::string filter_map(std::string_view text, Keep keep, Map map) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size();) {
    const char32_t c = unicode::next_code_point(text, i);
    if (keep(c)) unicode::append_utf8(out, map(c));
  }
  return out;
}

inline std::string lowercase(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size();) unicode::append_lowercase(out, unicode::next_code_point(text, i));
  return out;
}

/// BERT's normalizer: control characters removed and whitespace made spaces (clean_text), CJK
/// ideographs surrounded by spaces (handle_chinese_chars), accents stripped (NFD, then the
/// non-spacing marks removed; by default when lowercasing) and lowercase. Its control, format
/// and mark classes are Unicode 8.0's, as the reference's tables are (unicode::assigned_by_unicode).
class Bert final : public Normalizer {
 public:
  explicit Bert(const JsonNode& node)
      : clean_text_(node.boolean_or("clean_text", true)),
        handle_chinese_chars_(node.boolean_or("handle_chinese_chars", true)),
        lowercase_(node.boolean_or("lowercase", true)),
        strip_accents_(node.boolean_or("strip_accents", lowercase_)) {}

  static bool is_whitespace(char32_t c) { return c == '\t' || c == '\n' || c == '\r' || unicode::is_white_space(c); }
  static bool is_control(char32_t c) {
    if (c == '\t' || c == '\n' || c == '\r') return false;
    const auto t = unicode::category(c);
    return t == U_CONTROL_CHAR || t == U_PRIVATE_USE_CHAR || (t == U_FORMAT_CHAR && unicode::assigned_by_unicode(c, 8));
  }
  static bool is_chinese_char(char32_t c) {
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
           (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
  }

  std::string normalize(std::string text) const override {
    if (clean_text_)
      text = filter_map(
          text, [](char32_t c) { return !(c == 0 || c == unicode::replacement_character || is_control(c)); },
          [](char32_t c) { return is_whitespace(c) ? char32_t{' '} : c; });
    if (handle_chinese_chars_) {
      std::string out;
      out.reserve(text.size());
      for (std::size_t i = 0; i < text.size();) {
        const char32_t c = unicode::next_code_point(text, i);
        if (is_chinese_char(c)) out += ' ';
        unicode::append_utf8(out, c);
        if (is_chinese_char(c)) out += ' ';
      }
      text = std::move(out);
    }
    if (strip_accents_)
      text = filter_map(
          unicode::normalize(text, unicode::NormalizationForm::nfd),
          [](char32_t c) { return !(unicode::category(c) == U_NON_SPACING_MARK && unicode::assigned_by_unicode(c, 8)); },
          [](char32_t c) { return c; });
    if (lowercase_) text = lowercase(text);
    return text;
  }

 private:
  bool clean_text_, handle_chinese_chars_, lowercase_, strip_accents_;
};

class Lowercase final : public Normalizer {
 public:
  std::string normalize(std::string text) const override { return lowercase(text); }
};

/// Removes White_Space characters from the left and/or the right.
class Strip final : public Normalizer {
 public:
  explicit Strip(const JsonNode& node) : left_(node.at("strip_left").boolean()), right_(node.at("strip_right").boolean()) {}
  std::string normalize(std::string text) const override {
    const std::u32string chars = unicode::code_points(text);
    std::size_t begin = 0, end = chars.size();
    while (left_ && begin < end && unicode::is_white_space(chars[begin])) ++begin;
    while (right_ && end > begin && unicode::is_white_space(chars[end - 1])) --end;
    std::string out;
    for (std::size_t i = begin; i < end; ++i) unicode::append_utf8(out, chars[i]);
    return out;
  }

 private:
  bool left_, right_;
};

/// Removes combining marks (Mn, Mc, Me) that Unicode 9.0 had (the reference's table); meant to
/// follow NFD or NFKD.
class StripAccents final : public Normalizer {
 public:
  std::string normalize(std::string text) const override {
    return filter_map(
        text, [](char32_t c) { return !(unicode::is_mark(c) && unicode::assigned_by_unicode(c, 9)); },
        [](char32_t c) { return c; });
  }
};

class UnicodeForm final : public Normalizer {
 public:
  explicit UnicodeForm(unicode::NormalizationForm form) : form_(form) {}
  std::string normalize(std::string text) const override { return unicode::normalize(text, form_); }

 private:
  unicode::NormalizationForm form_;
};

/// Replaces every match of the pattern by the content.
class Replace final : public Normalizer {
 public:
  explicit Replace(const JsonNode& node) : pattern_(pattern_from_json(node.at("pattern"))), content_(node.at("content").string()) {}
  std::string normalize(std::string text) const override { return replace(text, pattern_, content_); }

  static std::string replace(std::string_view text, const Regex& pattern, std::string_view content) {
    std::string out;
    out.reserve(text.size());
    for (const Span& s : pattern.split(text))
      s.is_match ? out.append(content) : out.append(text.substr(s.begin, s.end - s.begin));
    return out;
  }

 private:
  Regex pattern_;
  std::string content_;
};

class Prepend final : public Normalizer {
 public:
  explicit Prepend(const JsonNode& node) : prefix_(node.at("prepend").string()) {}
  std::string normalize(std::string text) const override { return text.empty() ? text : prefix_ + text; }

 private:
  std::string prefix_;
};

/// Each byte as GPT-2's byte-level character (byte_level.hpp).
class ByteLevel final : public Normalizer {
 public:
  std::string normalize(std::string text) const override { return byte_level::encode(text); }
};

class Sequence final : public Normalizer {
 public:
  explicit Sequence(std::vector<std::unique_ptr<Normalizer>> parts) : parts_(std::move(parts)) {}
  std::string normalize(std::string text) const override {
    for (const auto& p : parts_) {
      if (text.empty()) break;  // the reference never normalizes an empty text
      text = p->normalize(std::move(text));
    }
    return text;
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;
};

}  // namespace normalizers

/// The normalizer a tokenizer.json "normalizer" object describes; refuses unknown types by name.
inline std::unique_ptr<Normalizer> make_normalizer(const JsonNode& node) {
  namespace n = normalizers;
  const std::string& type = node.type();
  if (type == "BertNormalizer") return std::make_unique<n::Bert>(node);
  if (type == "Lowercase") return std::make_unique<n::Lowercase>();
  if (type == "Strip") return std::make_unique<n::Strip>(node);
  if (type == "StripAccents") return std::make_unique<n::StripAccents>();
  if (type == "NFC") return std::make_unique<n::UnicodeForm>(unicode::NormalizationForm::nfc);
  if (type == "NFD") return std::make_unique<n::UnicodeForm>(unicode::NormalizationForm::nfd);
  if (type == "NFKC") return std::make_unique<n::UnicodeForm>(unicode::NormalizationForm::nfkc);
  if (type == "NFKD") return std::make_unique<n::UnicodeForm>(unicode::NormalizationForm::nfkd);
  if (type == "Replace") return std::make_unique<n::Replace>(node);
  if (type == "Prepend") return std::make_unique<n::Prepend>(node);
  if (type == "ByteLevel") return std::make_unique<n::ByteLevel>();
  if (type == "Sequence") return std::make_unique<n::Sequence>(make_each(node.at("normalizers"), make_normalizer));
  node.fail("normalizer type \"{}\" is not supported (tp has BertNormalizer, Lowercase, Strip, StripAccents, NFC, NFD, "
            "NFKC, NFKD, Replace, Prepend, ByteLevel and Sequence)",
            type);
}

}  // namespace tp::text
