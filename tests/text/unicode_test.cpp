// UTF-8 repair (as Python's decode("utf-8", "replace") does it) and the Unicode helpers the
// tokenizer components rest on.
#include <gtest/gtest.h>

#include <string>
#include <tp/text/byte_level.hpp>
#include <tp/text/regex.hpp>
#include <tp/text/unicode.hpp>

namespace {

namespace u = tp::text::unicode;
const std::string fffd = "\xEF\xBF\xBD";

TEST(Unicode, IllFormedUtf8BecomesOneReplacementPerMaximalSubpart) {
  EXPECT_EQ(u::to_valid_utf8("abc"), "abc");
  EXPECT_EQ(u::to_valid_utf8("\xFF"), fffd);
  EXPECT_EQ(u::to_valid_utf8("\xE2\x82"), fffd);                      // a truncated 3-byte sequence: one
  EXPECT_EQ(u::to_valid_utf8("\xE2\x82x"), fffd + "x");
  EXPECT_EQ(u::to_valid_utf8("\xED\xA0\x80"), fffd + fffd + fffd);    // a surrogate: each byte
  EXPECT_EQ(u::to_valid_utf8("\xC0\xAF"), fffd + fffd);               // overlong
  EXPECT_EQ(u::to_valid_utf8("\xF4\x90\x80\x80"), fffd + fffd + fffd + fffd);  // past U+10FFFF
  EXPECT_EQ(u::to_valid_utf8("\xF0\x9F\x98"), fffd);
  EXPECT_EQ(u::to_valid_utf8("\xF0\x9F\x98\x80"), "\xF0\x9F\x98\x80");
  EXPECT_EQ(u::to_valid_utf8(std::string("a\0b", 3)), std::string("a\0b", 3));
  EXPECT_TRUE(u::is_valid_utf8("h\xC3\xA9llo"));
  EXPECT_FALSE(u::is_valid_utf8("h\xC3llo"));
}

TEST(Unicode, PropertiesAndForms) {
  EXPECT_TRUE(u::is_white_space(0x85));
  EXPECT_TRUE(u::is_white_space(0x3000));
  EXPECT_FALSE(u::is_white_space(0x200B));
  EXPECT_TRUE(u::is_punctuation(0x2E4E));             // Po since Unicode 11 ...
  EXPECT_FALSE(u::assigned_by_unicode(0x2E4E, 8));    // ... which BERT's tables predate
  EXPECT_TRUE(u::assigned_by_unicode(0x2E4E, 11));
  EXPECT_TRUE(u::assigned_by_unicode(U'!', 8));
  EXPECT_FALSE(u::assigned_by_unicode(0x0378, 15));   // unassigned
  std::string lower;
  u::append_lowercase(lower, 0x130);
  EXPECT_EQ(lower, "i\xCC\x87");
  EXPECT_EQ(u::normalize("e\xCC\x81", u::NormalizationForm::nfc), "\xC3\xA9");
  EXPECT_EQ(u::normalize("\xC3\xA9", u::NormalizationForm::nfd), "e\xCC\x81");
  EXPECT_EQ(u::normalize("\xEF\xAC\x81", u::NormalizationForm::nfkc), "fi");
}

TEST(Unicode, ByteLevelTableIsGpt2s) {
  namespace b = tp::text::byte_level;
  EXPECT_EQ(b::byte_to_char()[' '], U'\u0120');  // Ġ
  EXPECT_EQ(b::byte_to_char()['\n'], U'\u010A');  // Ċ
  EXPECT_EQ(b::byte_to_char()['A'], U'A');
  for (int i = 0; i < 256; ++i) EXPECT_EQ(b::char_to_byte(b::byte_to_char()[static_cast<std::size_t>(i)]), i);
  EXPECT_FALSE(b::char_to_byte(U'\u0200'));
}

TEST(Unicode, RegexIsUnicodeAware) {
  const tp::text::Regex words(R"(\p{L}+|\s+)", false, "test");
  const auto spans = words.split("K\xC3\xB6ln ist");
  ASSERT_EQ(spans.size(), 3u);
  EXPECT_EQ(spans[0].end, 5u);  // Köln: 5 bytes
  EXPECT_TRUE(spans[1].is_match);
  const tp::text::Regex literal("a.b", true, "test");
  EXPECT_EQ(literal.split("xa.bxaxb").size(), 3u);
}

}  // namespace
