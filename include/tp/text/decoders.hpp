#pragma once
/// Decoders: how tokenizer.json's "decoder" turns tokens back into text. Each works on the list of
/// token strings and hands the next one a list (the reference's decode_chain), and the final
/// list is concatenated: ByteLevel (characters back to bytes), Metaspace (▁ back to spaces),
/// WordPiece (## joins, spaces otherwise), BPEDecoder (end-of-word suffixes), Replace,
/// ByteFallback (<0xNN> pieces back to bytes), Fuse, Strip and Sequence. CTC and any other type
/// are refused by name.

#ifndef TP_HAS_TEXT
#error "tp/text/decoders.hpp needs the tp::text CMake component: target_link_libraries(... tp::text)"
#endif

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tp/text/byte_level.hpp"
#include "tp/io/json_file.hpp"
#include "tp/text/normalizers.hpp"
#include "tp/text/pre_tokenizers.hpp"
#include "tp/text/regex.hpp"
#include "tp/text/unicode.hpp"

namespace tp::text {

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};

namespace decoders {

inline std::string join(const std::vector<std::string>& tokens, std::string_view separator = {}) {
  std::string out;
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (i > 0) out += separator;
    out += tokens[i];
  }
  return out;
}

/// Each token's characters back to the bytes they stand for (a token with a character that stands
/// for none, such as an added token, stays as it is); the bytes are then read as UTF-8, each
/// ill-formed sequence becoming U+FFFD.
class ByteLevel final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const std::string& t : tokens) {
      std::string b;
      bool all = true;
      for (std::size_t i = 0; i < t.size() && all;) {
        const auto byte = byte_level::char_to_byte(unicode::next_code_point(t, i));
        if (byte) b += static_cast<char>(*byte);
        else all = false;
      }
      bytes += all ? b : t;
    }
    tokens.assign(1, unicode::to_valid_utf8(bytes));
  }
};

/// The replacement character back to a space, except in the first token when the pre-tokenizer
/// prepends one (there it is dropped).
class Metaspace final : public Decoder {
 public:
  explicit Metaspace(const JsonNode& node)
      : replacement_(node.at("replacement").string()),
        drop_first_(pre_tokenizers::Metaspace::prepend_scheme(node) != pre_tokenizers::Metaspace::Prepend::never) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      std::string out;
      std::string_view t = tokens[i];
      for (std::size_t at = 0; at < t.size();) {
        if (!replacement_.empty() && t.compare(at, replacement_.size(), replacement_) == 0) {
          if (!(i == 0 && drop_first_)) out += ' ';
          at += replacement_.size();
        } else {
          out += t[at++];
        }
      }
      tokens[i] = std::move(out);
    }
  }

 private:
  std::string replacement_;
  bool drop_first_;
};

/// WordPiece: a token after the first loses its prefix ("##") or gains a leading space; with
/// cleanup, spaces before punctuation and in English contractions are removed.
class WordPiece final : public Decoder {
 public:
  explicit WordPiece(const JsonNode& node) : prefix_(node.string_or("prefix", "##")), cleanup_(node.boolean_or("cleanup", true)) {}

  static std::string cleanup(std::string s) {
    static constexpr std::pair<std::string_view, std::string_view> rules[] = {
        {" .", "."},   {" ?", "?"},   {" !", "!"},   {" ,", ","},           {" ' ", "'"}, {" n't", "n't"},
        {" 'm", "'m"}, {" do not", " don't"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
    for (const auto& [from, to] : rules) {
      std::string out;
      std::size_t at = 0;
      for (std::size_t hit; (hit = s.find(from, at)) != std::string::npos; at = hit + from.size())
        out.append(s, at, hit - at).append(to);
      s = out.append(s, at, std::string::npos);
    }
    return s;
  }

  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      if (i != 0) {
        if (tokens[i].starts_with(prefix_)) tokens[i].erase(0, prefix_.size());
        else tokens[i].insert(0, 1, ' ');
      }
      if (cleanup_) tokens[i] = cleanup(std::move(tokens[i]));
    }
  }

 private:
  std::string prefix_;
  bool cleanup_;
};

/// The end-of-word suffix becomes a space, or nothing in the last token.
class BpeDecoder final : public Decoder {
 public:
  explicit BpeDecoder(const JsonNode& node) : suffix_(node.string_or("suffix", "</w>")) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    if (suffix_.empty()) return;
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      std::string out;
      const std::string& t = tokens[i];
      std::size_t at = 0;
      for (std::size_t hit; (hit = t.find(suffix_, at)) != std::string::npos; at = hit + suffix_.size())
        out.append(t, at, hit - at).append(i + 1 == tokens.size() ? "" : " ");
      tokens[i] = out.append(t, at, std::string::npos);
    }
  }

 private:
  std::string suffix_;
};

class Replace final : public Decoder {
 public:
  explicit Replace(const JsonNode& node) : pattern_(pattern_from_json(node.at("pattern"))), content_(node.at("content").string()) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) t = normalizers::Replace::replace(t, pattern_, content_);
  }

 private:
  Regex pattern_;
  std::string content_;
};

/// Runs of <0xNN> tokens back to their bytes: valid UTF-8 as one token, otherwise one U+FFFD per
/// byte.
class ByteFallback final : public Decoder {
 public:
  static int byte_of(std::string_view t) {
    const auto hex = [](char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1; };
    if (t.size() != 6 || !t.starts_with("<0x") || t[5] != '>' || hex(t[3]) < 0 || hex(t[4]) < 0) return -1;
    return hex(t[3]) * 16 + hex(t[4]);
  }
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    std::string bytes;
    auto flush = [&] {
      if (bytes.empty()) return;
      if (unicode::is_valid_utf8(bytes)) out.push_back(bytes);
      else
        for (std::size_t i = 0; i < bytes.size(); ++i) out.push_back(unicode::utf8(unicode::replacement_character));
      bytes.clear();
    };
    for (std::string& t : tokens) {
      if (const int b = byte_of(t); b >= 0) {
        bytes += static_cast<char>(b);
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens = std::move(out);
  }
};

class Fuse final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override { tokens.assign(1, join(tokens)); }
};

/// Removes up to `start` leading and `stop` trailing copies of one character from each token.
class Strip final : public Decoder {
 public:
  explicit Strip(const JsonNode& node)
      : content_(node.at("content").string()), start_(node.at("start").integer(0, INT64_MAX)), stop_(node.at("stop").integer(0, INT64_MAX)) {
    if (unicode::code_points(content_).size() != 1) node.at("content").fail("expected one character, found \"{}\"", content_);
  }
  void decode_chain(std::vector<std::string>& tokens) const override {
    const char32_t c = unicode::code_points(content_)[0];
    for (std::string& t : tokens) {
      const std::u32string chars = unicode::code_points(t);
      std::size_t begin = 0, end = chars.size();
      for (std::int64_t i = 0; i < start_ && begin < chars.size() && chars[begin] == c; ++i) ++begin;
      for (std::int64_t i = 0; i < stop_ && end > begin && chars[end - 1] == c; ++i) --end;
      std::string out;
      for (std::size_t i = begin; i < end; ++i) unicode::append_utf8(out, chars[i]);
      t = std::move(out);
    }
  }

 private:
  std::string content_;
  std::int64_t start_, stop_;
};

class Sequence final : public Decoder {
 public:
  explicit Sequence(std::vector<std::unique_ptr<Decoder>> parts) : parts_(std::move(parts)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& p : parts_) p->decode_chain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> parts_;
};

}  // namespace decoders

/// The decoder a tokenizer.json "decoder" object describes; refuses unknown types by name.
inline std::unique_ptr<Decoder> make_decoder(const JsonNode& node) {
  namespace d = decoders;
  const std::string& type = node.type();
  if (type == "ByteLevel") return std::make_unique<d::ByteLevel>();
  if (type == "Metaspace") return std::make_unique<d::Metaspace>(node);
  if (type == "WordPiece") return std::make_unique<d::WordPiece>(node);
  if (type == "BPEDecoder") return std::make_unique<d::BpeDecoder>(node);
  if (type == "Replace") return std::make_unique<d::Replace>(node);
  if (type == "ByteFallback") return std::make_unique<d::ByteFallback>();
  if (type == "Fuse") return std::make_unique<d::Fuse>();
  if (type == "Strip") return std::make_unique<d::Strip>(node);
  if (type == "Sequence") return std::make_unique<d::Sequence>(make_each(node.at("decoders"), make_decoder));
  node.fail("decoder type \"{}\" is not supported (tp has ByteLevel, Metaspace, WordPiece, BPEDecoder, Replace, "
            "ByteFallback, Fuse, Strip and Sequence)",
            type);
}

}  // namespace tp::text
