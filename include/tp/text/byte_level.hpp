#pragma once
/// GPT-2's byte-to-character table, which byte-level BPE vocabularies are written in: each of the
/// 256 byte values stands for one printable character (the printable Latin-1 bytes for
/// themselves, the others for U+0100 onwards: a space is "Ġ", a newline "Ċ"), so that any byte
/// string is a string of vocabulary characters.

#ifndef TP_HAS_TEXT
#error "tp/text/byte_level.hpp needs the tp::text CMake component: target_link_libraries(... tp::text)"
#endif

#include <array>
#include <optional>
#include <string>
#include <string_view>

#include "tp/text/unicode.hpp"

namespace tp::text::byte_level {

/// The character each byte stands for: bytes ! to ~, ¡ to ¬ and ® to ÿ for themselves, the
/// others, in order, for U+0100, U+0101, ...
inline const std::array<char32_t, 256>& byte_to_char() {
  static const std::array<char32_t, 256> table = [] {
    std::array<char32_t, 256> t{};
    char32_t next = 0x100;
    for (int b = 0; b < 256; ++b) {
      const bool kept = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      t[static_cast<std::size_t>(b)] = kept ? static_cast<char32_t>(b) : next++;
    }
    return t;
  }();
  return table;
}

/// The byte a character stands for, or nullopt if it stands for none.
inline std::optional<unsigned char> char_to_byte(char32_t c) {
  static const std::array<int, 0x200> table = [] {
    std::array<int, 0x200> t{};
    t.fill(-1);
    for (int b = 0; b < 256; ++b) t[byte_to_char()[static_cast<std::size_t>(b)]] = b;
    return t;
  }();
  if (c >= table.size() || table[c] < 0) return std::nullopt;
  return static_cast<unsigned char>(table[c]);
}

/// Each byte of `text` as its character, in UTF-8.
inline std::string encode(std::string_view text) {
  std::string out;
  out.reserve(2 * text.size());
  for (unsigned char b : text) unicode::append_utf8(out, byte_to_char()[b]);
  return out;
}

}  // namespace tp::text::byte_level
