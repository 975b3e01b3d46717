#pragma once
/// What every tokenizer model (BPE, WordPiece) shares: its vocabulary, read from the model's
/// "vocab" object ({"token": id, ...}) with every id checked, and the interface that turns one
/// pre-tokenized piece into ids.

#ifndef TP_HAS_TEXT
#error "tp/text/model.hpp needs the tp::text CMake component: target_link_libraries(... tp::text)"
#endif

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tp/io/json_file.hpp"

namespace tp::text {

/// Ids are at most this (the reference stores them as u32; no vocabulary comes near).
inline constexpr std::int64_t max_token_id = std::numeric_limits<std::int32_t>::max();

/// A hash that lets std::unordered_map<std::string, ...> be searched with a string_view.
struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

/// Tokens and ids, both ways; each token and each id appears once.
class Vocabulary {
 public:
  Vocabulary() = default;
  /// Reads {"token": id, ...}; refuses ids that are not integers in [0, max_token_id] or that
  /// two tokens share.
  explicit Vocabulary(const JsonNode& node) {
    const auto& entries = node.object();
    ids_.reserve(entries.size());
    tokens_.reserve(entries.size());
    for (const auto& [token, value] : entries) {
      const std::int64_t id = JsonNode(value, node.file(), fmt::format("{}[\"{}\"]", node.path(), token)).integer(0, max_token_id);
      if (const auto [it, fresh] = tokens_.emplace(id, token); !fresh)
        node.fail("tokens \"{}\" and \"{}\" both have id {}", it->second, token, id);
      ids_.emplace(token, id);
    }
  }

  std::optional<std::int64_t> id(std::string_view token) const {
    const auto it = ids_.find(token);
    return it == ids_.end() ? std::nullopt : std::optional<std::int64_t>(it->second);
  }
  const std::string* token(std::int64_t id) const {
    const auto it = tokens_.find(id);
    return it == tokens_.end() ? nullptr : &it->second;
  }
  std::size_t size() const { return ids_.size(); }
  /// The largest id, or -1 when empty.
  std::int64_t max_id() const {
    std::int64_t m = -1;
    for (const auto& [id, token] : tokens_) m = std::max(m, id);
    return m;
  }
  /// The length in bytes of the longest token.
  std::size_t max_token_bytes() const {
    std::size_t m = 0;
    for (const auto& [token, id] : ids_) m = std::max(m, token.size());
    return m;
  }

 private:
  std::unordered_map<std::string, std::int64_t, StringHash, std::equal_to<>> ids_;
  std::unordered_map<std::int64_t, std::string> tokens_;
};

class Model {
 public:
  virtual ~Model() = default;
  /// Appends the ids of one pre-tokenized piece (valid UTF-8, not empty).
  virtual void tokenize(std::string_view piece, std::vector<std::int64_t>& ids) const = 0;
  virtual const Vocabulary& vocabulary() const = 0;
  /// The model's unknown token, if it has one.
  virtual const std::optional<std::string>& unk_token() const = 0;
};

}  // namespace tp::text
