#pragma once
/// UTF-8 and the Unicode properties the tokenizer components use, from ICU (libicu): general
/// categories, White_Space, simple lowercase mappings and the four normalization forms.
///
/// Input text reaches the tokenizer as bytes; `to_valid_utf8` replaces each ill-formed sequence
/// by U+FFFD, one per maximal subpart (Unicode's recommended practice, which Python's
/// `bytes.decode("utf-8", "replace")` and Rust's `String::from_utf8_lossy` follow), so that every
/// component after it works on valid UTF-8.

#ifndef TP_HAS_TEXT
#error "tp/text/unicode.hpp needs the tp::text CMake component: target_link_libraries(... tp::text)"
#endif

#include <unicode/uchar.h>
#include <unicode/unorm2.h>
#include <unicode/ustring.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tp/core/error.hpp"

namespace tp::text::unicode {

inline constexpr char32_t replacement_character = 0xFFFD;

inline void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

inline std::string utf8(char32_t c) {
  std::string out;
  append_utf8(out, c);
  return out;
}

/// The length of the well-formed UTF-8 sequence at s[i], or 0 if none starts there (Unicode's
/// table 3-7: no overlong forms, no surrogates, nothing past U+10FFFF). When 0, `*bad` is the
/// length of the maximal subpart to replace by one U+FFFD (at least 1).
inline std::size_t utf8_sequence_length(std::string_view s, std::size_t i, std::size_t* bad = nullptr) {
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char b0 = byte(i);
  std::size_t need = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // the range of the second byte
  if (b0 < 0x80) return 1;
  if (b0 >= 0xC2 && b0 <= 0xDF) need = 2;
  else if (b0 == 0xE0) need = 3, lo = 0xA0;
  else if ((b0 >= 0xE1 && b0 <= 0xEC) || b0 == 0xEE || b0 == 0xEF) need = 3;
  else if (b0 == 0xED) need = 3, hi = 0x9F;
  else if (b0 == 0xF0) need = 4, lo = 0x90;
  else if (b0 >= 0xF1 && b0 <= 0xF3) need = 4;
  else if (b0 == 0xF4) need = 4, hi = 0x8F;
  std::size_t got = need == 0 ? 0 : 1;
  for (; got > 0 && got < need && i + got < s.size(); ++got) {
    const unsigned char b = byte(i + got);
    if (got == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) break;
  }
  if (need != 0 && got == need) return need;
  if (bad) *bad = got == 0 ? 1 : got;
  return 0;
}

inline bool is_valid_utf8(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = utf8_sequence_length(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

/// `bytes` with every ill-formed sequence replaced by U+FFFD (one per maximal subpart).
inline std::string to_valid_utf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (std::size_t i = 0; i < bytes.size();) {
    std::size_t bad = 0;
    const std::size_t n = utf8_sequence_length(bytes, i, &bad);
    if (n > 0) {
      out.append(bytes.substr(i, n));
      i += n;
    } else {
      append_utf8(out, replacement_character);
      i += bad;
    }
  }
  return out;
}

/// The code point at s[i] of a valid UTF-8 string; moves i past it.
inline char32_t next_code_point(std::string_view s, std::size_t& i) {
  const auto b = [&](std::size_t k) { return static_cast<char32_t>(static_cast<unsigned char>(s[k])); };
  const char32_t b0 = b(i);
  if (b0 < 0x80) return i += 1, b0;
  if (b0 < 0xE0) return i += 2, ((b0 & 0x1F) << 6) | (b(i - 1) & 0x3F);
  if (b0 < 0xF0) return i += 3, ((b0 & 0x0F) << 12) | ((b(i - 2) & 0x3F) << 6) | (b(i - 1) & 0x3F);
  return i += 4, ((b0 & 0x07) << 18) | ((b(i - 3) & 0x3F) << 12) | ((b(i - 2) & 0x3F) << 6) | (b(i - 1) & 0x3F);
}

/// The code points of a valid UTF-8 string.
inline std::u32string code_points(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) out += next_code_point(s, i);
  return out;
}

inline std::int8_t category(char32_t c) { return u_charType(static_cast<UChar32>(c)); }

/// Rust's char::is_whitespace: the White_Space property.
inline bool is_white_space(char32_t c) { return u_isUWhiteSpace(static_cast<UChar32>(c)); }

/// Rust's char::is_numeric: Nd, Nl or No.
inline bool is_numeric(char32_t c) {
  const auto t = category(c);
  return t == U_DECIMAL_DIGIT_NUMBER || t == U_LETTER_NUMBER || t == U_OTHER_NUMBER;
}

inline bool is_punctuation(char32_t c) {
  switch (category(c)) {
    case U_CONNECTOR_PUNCTUATION:
    case U_DASH_PUNCTUATION:
    case U_START_PUNCTUATION:
    case U_END_PUNCTUATION:
    case U_INITIAL_PUNCTUATION:
    case U_FINAL_PUNCTUATION:
    case U_OTHER_PUNCTUATION: return true;
    default: return false;
  }
}

/// A combining mark: Mn, Mc or Me.
inline bool is_mark(char32_t c) {
  const auto t = category(c);
  return t == U_NON_SPACING_MARK || t == U_COMBINING_SPACING_MARK || t == U_ENCLOSING_MARK;
}

/// A word character of Unicode regular expressions (`\w`): Alphabetic, a mark, a decimal digit,
/// a connector punctuation or Join_Control.
inline bool is_word_character(char32_t c) {
  const auto t = category(c);
  return u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_ALPHABETIC) || is_mark(c) || t == U_DECIMAL_DIGIT_NUMBER ||
         t == U_CONNECTOR_PUNCTUATION || u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_JOIN_CONTROL);
}

/// Whether Unicode `major`.0 had assigned `c`. Some of the `tokenizers` library's components
/// answer from Unicode tables of their own age: BERT's punctuation, control, format and
/// non-spacing-mark classes are Unicode 8.0's (the unicode_categories crate), StripAccents' marks
/// Unicode 9.0's (unicode-normalization-alignments), so a character assigned since is none of
/// them there. tp asks ICU for the category and this for the age, to answer as those tables do.
inline bool assigned_by_unicode(char32_t c, int major) {
  UVersionInfo age{};
  u_charAge(static_cast<UChar32>(c), age);
  return age[0] != 0 && age[0] <= major;  // age 0.0: unassigned
}

/// Appends Rust's char::to_lowercase of `c`: the simple mapping, except U+0130 (İ), whose
/// lowercase is two characters.
inline void append_lowercase(std::string& out, char32_t c) {
  if (c == 0x130) {
    out += "i\xCC\x87";
    return;
  }
  append_utf8(out, static_cast<char32_t>(u_tolower(static_cast<UChar32>(c))));
}

enum class NormalizationForm { nfc, nfd, nfkc, nfkd };

/// `s` (valid UTF-8) in the given normalization form.
inline std::string normalize(std::string_view s, NormalizationForm form) {
  bool ascii = true;
  for (char ch : s) ascii = ascii && static_cast<unsigned char>(ch) < 0x80;
  if (ascii) return std::string(s);  // every form leaves ASCII alone
  UErrorCode status = U_ZERO_ERROR;
  const UNormalizer2* normalizer = form == NormalizationForm::nfc    ? unorm2_getNFCInstance(&status)
                                   : form == NormalizationForm::nfd  ? unorm2_getNFDInstance(&status)
                                   : form == NormalizationForm::nfkc ? unorm2_getNFKCInstance(&status)
                                                                     : unorm2_getNFKDInstance(&status);
  if (U_FAILURE(status)) TP_THROW(Error, "ICU: cannot load the normalizer: {}", u_errorName(status));
  TP_CHECK(s.size() < (std::size_t{1} << 30), "unicode::normalize: {} bytes of text is too long", s.size());
  std::vector<UChar> in(s.size() + 1), out;
  std::int32_t in_len = 0;
  u_strFromUTF8(in.data(), static_cast<std::int32_t>(in.size()), &in_len, s.data(), static_cast<std::int32_t>(s.size()),
                &status);
  // Decompositions grow text by at most a small factor (18 for NFKD's worst character); retry
  // with the length ICU asks for.
  for (std::size_t capacity = 3 * static_cast<std::size_t>(in_len) + 16;;) {
    out.resize(capacity);
    std::int32_t out_len = unorm2_normalize(normalizer, in.data(), in_len, out.data(),
                                            static_cast<std::int32_t>(out.size()), &status);
    if (status == U_BUFFER_OVERFLOW_ERROR) {
      status = U_ZERO_ERROR;
      capacity = static_cast<std::size_t>(out_len);
      continue;
    }
    if (U_FAILURE(status)) TP_THROW(Error, "ICU: normalization failed: {}", u_errorName(status));
    std::string result(static_cast<std::size_t>(out_len) * 3, '\0');
    std::int32_t result_len = 0;
    u_strToUTF8(result.data(), static_cast<std::int32_t>(result.size()), &result_len, out.data(), out_len, &status);
    if (U_FAILURE(status)) TP_THROW(Error, "ICU: cannot convert normalized text to UTF-8: {}", u_errorName(status));
    result.resize(static_cast<std::size_t>(result_len));
    return result;
  }
}

}  // namespace tp::text::unicode
