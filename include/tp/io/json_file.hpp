#pragma once
/// How tp reads JSON files (config.json, generation_config.json, tokenizer.json,
/// tokenizer_config.json): `read_json_file`, the one function through which they are read, and
/// `JsonNode`, a value together with its file and its path in the file, whose typed accessors
/// throw tp::IoError naming both ("tokenizer.json: model.vocab: expected an object, got array").
///
/// Bounds, so that a hostile or broken file fails fast, in bounded memory, with a message naming
/// it: the file is opened by the regular-file opener of the safetensors reader (a FIFO, device,
/// directory or socket is refused by name, never waited on), is at most max_json_file_bytes
/// (64 MiB: the largest real tokenizer.json files are tens of MB, Gemma's 33 MB; a config.json is
/// a few KB), nests no deeper than max_json_depth, and has no key twice in one object (the checks
/// of the safetensors index reader, made as the parser goes, before anything is built).

#ifndef TP_HAS_IO
#error "tp/io/json_file.hpp needs the tp::io CMake component: target_link_libraries(... tp::io)"
#endif

#include <cstdint>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tp/core/error.hpp"
#include "tp/io/file.hpp"
#include "tp/io/safetensors_header.hpp"

namespace tp {

/// JSON files larger than this are refused before they are read (see the header comment).
inline constexpr std::uint64_t max_json_file_bytes = 64ull << 20;
/// How deep a JSON file may nest: tokenizer.json nests a few levels (a Sequence of pre-tokenizers
/// holding a Split holding its pattern is 5), config.json two or three (rope_scaling,
/// task_specific_params); deeper is refused as the parser reaches it, so that neither the parser
/// nor the readers recurse without bound.
inline constexpr int max_json_depth = 32;

/// Reads a whole text file tp takes as input (a JSON file, a chat template): a regular file of
/// at most max_json_file_bytes; `what` names it in errors.
inline std::string read_text_file(const std::filesystem::path& path, std::string_view what) {
  const std::string name = path.string();
  const detail::Fd fd = detail::Fd::open_regular(name);
  const std::uint64_t size = fd.size();
  if (size > max_json_file_bytes)
    TP_THROW(IoError, "{}: {} of {} bytes is over the limit of {} bytes", name, what, size, max_json_file_bytes);
  std::string text(size, '\0');
  fd.read_at(text.data(), text.size(), 0, what);
  return text;
}

/// Parses JSON given as text, with the bounds of read_json_file; `name` names it in errors.
inline nlohmann::json parse_json_text(std::string_view text, std::string_view name, std::string_view what) {
  if (text.size() > max_json_file_bytes)
    TP_THROW(IoError, "{}: {} of {} bytes is over the limit of {} bytes", name, what, text.size(), max_json_file_bytes);
  return detail::parse_guarded_json(text, name, what, max_json_depth);
}

/// Reads and parses a JSON file (see the header comment): the one function through which tp
/// reads them. `what` says what the file is ("config.json", "tokenizer.json").
inline nlohmann::json read_json_file(const std::filesystem::path& path, std::string_view what) {
  return parse_json_text(read_text_file(path, what), path.string(), what);
}

/// A JSON value, the file it came from and where in the file it sits, so that every error names
/// both. Cheap to copy: it refers to the parsed document, which must outlive it.
class JsonNode {
 public:
  JsonNode(const nlohmann::json& value, std::string_view file, std::string path = {})
      : value_(&value), file_(file), path_(std::move(path)) {}

  const nlohmann::json& json() const { return *value_; }
  const std::string& file() const { return file_; }
  const std::string& path() const { return path_; }
  bool is_null() const { return value_->is_null(); }

  /// The member `key`, which must be present (it may be null).
  JsonNode at(std::string_view key) const {
    const auto& obj = object();
    const auto it = obj.find(std::string(key));
    if (it == obj.end()) fail("has no \"{}\"", key);
    return child(it->second, key);
  }
  /// The member `key`, or nullopt when it is absent or null.
  std::optional<JsonNode> find(std::string_view key) const {
    const auto& obj = object();
    const auto it = obj.find(std::string(key));
    if (it == obj.end() || it->second.is_null()) return std::nullopt;
    return child(it->second, key);
  }
  JsonNode operator[](std::size_t i) const { return JsonNode(array().at(i), file_, fmt::format("{}[{}]", path_, i)); }

  const nlohmann::json::object_t& object() const {
    if (!value_->is_object()) expected("an object");
    return *value_->get_ptr<const nlohmann::json::object_t*>();
  }
  const nlohmann::json::array_t& array() const {
    if (!value_->is_array()) expected("an array");
    return *value_->get_ptr<const nlohmann::json::array_t*>();
  }
  std::size_t size() const { return array().size(); }
  const std::string& string() const {
    if (!value_->is_string()) expected("a string");
    return *value_->get_ptr<const std::string*>();
  }
  bool boolean() const {
    if (!value_->is_boolean()) expected("true or false");
    return value_->get<bool>();
  }
  /// An integer in [lo, hi].
  std::int64_t integer(std::int64_t lo = 0, std::int64_t hi = std::numeric_limits<std::int32_t>::max()) const {
    if (!value_->is_number_integer()) expected("an integer");
    const bool in_range =
        value_->is_number_unsigned()
            ? value_->get<std::uint64_t>() <= static_cast<std::uint64_t>(hi) && value_->get<std::int64_t>() >= lo
            : value_->get<std::int64_t>() >= lo && value_->get<std::int64_t>() <= hi;
    if (!in_range)
      fail("is {}, outside [{}, {}]", value_->dump(), lo, hi);
    return value_->get<std::int64_t>();
  }
  double number() const {
    if (!value_->is_number()) expected("a number");
    return value_->get<double>();
  }
  /// The string member `key`, or `fallback` when it is absent or null.
  std::string string_or(std::string_view key, std::string_view fallback) const {
    const auto node = find(key);
    return node ? node->string() : std::string(fallback);
  }
  bool boolean_or(std::string_view key, bool fallback) const {
    const auto node = find(key);
    return node ? node->boolean() : fallback;
  }
  /// The component type: the member "type", a string.
  const std::string& type() const { return at("type").string(); }

  /// Throws tp::IoError: "<file>: <path>: <message>".
  template <class... Args>
  [[noreturn]] void fail(fmt::format_string<Args...> message, Args&&... args) const {
    TP_THROW(IoError, "{}: {}: {}", file_, path_.empty() ? std::string("the top level") : path_,
             fmt::format(message, std::forward<Args>(args)...));
  }
  /// The value's type, and the value itself when it is short ("string \"4\"", "array").
  std::string describe() const {
    if (value_->is_structured() || value_->is_null()) return value_->type_name();
    std::string text = value_->dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    if (text.size() > 40) text = text.substr(0, 37) + "...";
    return fmt::format("{} {}", value_->type_name(), text);
  }
  [[noreturn]] void expected(std::string_view what) const { fail("expected {}, got {}", what, describe()); }

 private:
  JsonNode child(const nlohmann::json& value, std::string_view key) const {
    return JsonNode(value, file_, path_.empty() ? std::string(key) : fmt::format("{}.{}", path_, key));
  }
  const nlohmann::json* value_;
  std::string file_, path_;
};

/// `make(entry)` for each entry of a JSON array, in order (the parts of a Sequence component).
template <class Make>
auto make_each(const JsonNode& list, Make make) {
  std::vector<decltype(make(list))> parts;
  for (std::size_t i = 0; i < list.size(); ++i) parts.push_back(make(list[i]));
  return parts;
}

}  // namespace tp
