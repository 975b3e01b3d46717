#pragma once
/// tp::text::TextStream: the text of a generation as its tokens arrive, for printing while a model
/// generates. A token can end inside a character (byte-level BPE spells a 4-byte emoji over two
/// tokens, SentencePiece byte fallback one byte per token), and a decoder can change how a token
/// reads once another follows (SentencePiece drops the leading space of the first token), so a
/// token's text is not decode({token}). As transformers' TextStreamer and TGI do, the stream
/// decodes a window of the recent tokens, with and without the new ones, and hands out what the
/// new tokens added, holding it back while the text ends in an incomplete character (U+FFFD).
///
///   tp::text::TextStream stream(tokenizer, prompt_ids);
///   for (id : generated) std::cout << stream.push(id) << std::flush;
///   std::cout << stream.finish();
///
/// The pieces put together are decode(generated) for the byte-level and SentencePiece-style
/// decoders tp has (tests/text/text_stream_test.cpp), except that a generation cut inside a
/// character ends in U+FFFD only at finish(), and that SentencePiece's byte fallback reads a run
/// of byte tokens that is not valid UTF-8 as one U+FFFD per byte, so a byte that arrives later can
/// turn a character already printed into U+FFFDs in decode() (only ill-formed byte runs do this).

#ifndef TP_HAS_TEXT
#error "tp/text/text_stream.hpp needs the tp::text CMake component: target_link_libraries(... tp::text)"
#endif

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tp/text/tokenizer.hpp"

namespace tp::text {

class TextStream {
 public:
  /// `context`: the prompt's ids (or its last few), which are not printed but decide how the
  /// first new token reads (a leading space, the rest of a character the prompt began).
  explicit TextStream(const Tokenizer& tokenizer, std::span<const std::int64_t> context = {},
                      bool skip_special_tokens = false)
      : tokenizer_(&tokenizer), skip_special_(skip_special_tokens) {
    // A few tokens of context are enough; decoding the whole prompt each step would cost O(prompt).
    const std::size_t keep = std::min<std::size_t>(context.size(), context_tokens);
    ids_.assign(context.end() - static_cast<std::ptrdiff_t>(keep), context.end());
    prefix_ = 0;
    read_ = ids_.size();
  }

  /// Adds a generated token; returns the text it completes (often empty while a character is cut).
  std::string push(std::int64_t id) {
    ids_.push_back(id);
    const std::string before = decode(prefix_, read_);
    const std::string now = decode(prefix_, ids_.size());
    if (now.size() <= before.size() || ends_incomplete(now)) return {};
    // A decoder that rewrites the window's start cannot make `before` stop being a prefix of
    // `now` for the decoders tp has; if it ever did, the new text is all that differs.
    std::string out = now.starts_with(before) ? now.substr(before.size()) : now;
    prefix_ = read_;
    read_ = ids_.size();
    compact();
    return out;
  }

  /// What is left at the end of the generation: the text of tokens still held back (an
  /// incomplete character, as U+FFFD, as decode() gives it).
  std::string finish() {
    const std::string before = decode(prefix_, read_);
    const std::string now = decode(prefix_, ids_.size());
    prefix_ = read_ = ids_.size();
    if (now.size() <= before.size()) return {};
    return now.starts_with(before) ? now.substr(before.size()) : now;
  }

  /// Tokens of context the window keeps before the unprinted ones.
  static constexpr std::size_t context_tokens = 5;

 private:
  std::string decode(std::size_t begin, std::size_t end) const {
    return tokenizer_->decode(std::span<const std::int64_t>(ids_).subspan(begin, end - begin), skip_special_);
  }

  /// U+FFFD at the end: the decoder's reading of a character whose bytes have not all arrived.
  static bool ends_incomplete(std::string_view s) { return s.ends_with("\xEF\xBF\xBD"); }

  /// Drops ids before the window so that a long generation keeps a short buffer.
  void compact() {
    if (prefix_ < 1024) return;
    ids_.erase(ids_.begin(), ids_.begin() + static_cast<std::ptrdiff_t>(prefix_));
    read_ -= prefix_;
    prefix_ = 0;
  }

  const Tokenizer* tokenizer_;
  bool skip_special_;
  std::vector<std::int64_t> ids_;
  std::size_t prefix_ = 0, read_ = 0;
};

}  // namespace tp::text
