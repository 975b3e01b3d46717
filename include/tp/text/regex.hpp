#pragma once
/// The regular expressions of tokenizer files (Split and Replace patterns, the ByteLevel
/// pre-tokenizer's), through PCRE2 in UTF and UCP mode (\s, \w, \d and \p{..} by Unicode
/// properties, as the `tokenizers` library's Oniguruma has them), JIT-compiled where PCRE2 can.
///
/// A pattern that does not compile is refused naming where it came from and PCRE2's message. A
/// match is bounded (match and depth limits): a pattern that backtracks without end on some text
/// throws instead of hanging.

#ifndef TP_HAS_TEXT
#error "tp/text/regex.hpp needs the tp::text CMake component: target_link_libraries(... tp::text)"
#endif

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif
#include <pcre2.h>

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tp/core/error.hpp"
#include "tp/io/json_file.hpp"

namespace tp::text {

/// One piece of a text split by a pattern: [begin, end) and whether it is a match.
struct Span {
  std::size_t begin = 0, end = 0;
  bool is_match = false;
};

class Regex {
 public:
  /// Backtracking steps one match may take before it is abandoned (PCRE2's default is 10M).
  static constexpr std::uint32_t match_limit = 10'000'000;

  /// Compiles `pattern`, as a regular expression or (literal) as plain text. `where` names the
  /// file and the component in errors.
  Regex(std::string_view pattern, bool literal, std::string where) : pattern_(pattern), where_(std::move(where)) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    const std::uint32_t options = literal ? PCRE2_UTF | PCRE2_LITERAL : PCRE2_UTF | PCRE2_UCP;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options, &error,
                                     &offset, nullptr);
    if (!code)
      TP_THROW(IoError, "{}: the pattern \"{}\" does not compile: {} at offset {}", where_, pattern_, message(error),
               offset);
    code_.reset(code, pcre2_code_free);
    jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
    pcre2_match_context* context = pcre2_match_context_create(nullptr);
    if (!context) TP_THROW(Error, "{}: PCRE2 cannot allocate a match context", where_);
    context_.reset(context, pcre2_match_context_free);
    pcre2_set_match_limit(context, match_limit);
    pcre2_set_depth_limit(context, match_limit);
  }

  const std::string& pattern() const { return pattern_; }
  bool jit() const { return jit_; }

  /// Calls fn(begin, end) for each match, left to right, without overlaps. An empty match right
  /// after the previous match is skipped and the search moves on by one character (Oniguruma's
  /// and Rust's iteration). `text` must be valid UTF-8.
  template <class Fn>
  void for_each_match(std::string_view text, Fn&& fn) const {
    std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> data(
        pcre2_match_data_create_from_pattern(code_.get(), nullptr), pcre2_match_data_free);
    if (!data) TP_THROW(Error, "{}: PCRE2 cannot allocate match data", where_);
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    std::size_t start = 0, last_end = std::string_view::npos;
    while (start <= text.size()) {
      const int rc = pcre2_match(code_.get(), subject, text.size(), start, PCRE2_NO_UTF_CHECK, data.get(), context_.get());
      if (rc == PCRE2_ERROR_NOMATCH) return;
      if (rc < 0)
        TP_THROW(IoError, "{}: the pattern \"{}\" failed on a text of {} bytes: {}", where_, pattern_, text.size(),
                 message(rc));
      const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data.get());
      const std::size_t begin = ovector[0], end = ovector[1];
      if (begin == end && end == last_end) {
        start = next_character(text, begin);
        continue;
      }
      fn(begin, end);
      last_end = end;
      start = begin == end ? next_character(text, end) : end;
    }
  }

  /// `text` cut into matches and the text between them, covering it whole.
  std::vector<Span> split(std::string_view text) const {
    std::vector<Span> spans;
    std::size_t previous = 0;
    for_each_match(text, [&](std::size_t begin, std::size_t end) {
      if (previous != begin) spans.push_back({previous, begin, false});
      spans.push_back({begin, end, true});
      previous = end;
    });
    if (previous != text.size()) spans.push_back({previous, text.size(), false});
    return spans;
  }

 private:
  static std::size_t next_character(std::string_view text, std::size_t i) {
    if (i >= text.size()) return i + 1;
    ++i;
    while (i < text.size() && (static_cast<unsigned char>(text[i]) & 0xC0) == 0x80) ++i;
    return i;
  }
  static std::string message(int error) {
    PCRE2_UCHAR buffer[256];
    return pcre2_get_error_message(error, buffer, sizeof buffer) < 0 ? fmt::format("PCRE2 error {}", error)
                                                                     : std::string(reinterpret_cast<char*>(buffer));
  }

  std::string pattern_, where_;
  std::shared_ptr<pcre2_code> code_;
  std::shared_ptr<pcre2_match_context> context_;
  bool jit_ = false;
};

/// A component's "pattern" member: {"String": text} (matched literally) or {"Regex": pattern}.
inline Regex pattern_from_json(const JsonNode& node) {
  const auto& members = node.object();
  if (members.size() == 1 && members.begin()->first == "String")
    return Regex(node.at("String").string(), true, fmt::format("{}: {}", node.file(), node.path()));
  if (members.size() == 1 && members.begin()->first == "Regex")
    return Regex(node.at("Regex").string(), false, fmt::format("{}: {}", node.file(), node.path()));
  node.fail("expected {{\"String\": ...}} or {{\"Regex\": ...}}, found {}", node.json().dump().substr(0, 200));
}

}  // namespace tp::text
