#pragma once
/// The safetensors header, and nothing else: the format's 8 bytes of little-endian header length,
/// then a JSON header {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
/// {..}}, then the raw tensor bytes (offsets relative to the end of the header).
///
/// `parse_safetensors_header` takes bytes and returns a validated header, touching no file, so the
/// fuzz target (tests/fuzz/safetensors_fuzz.cpp) covers all of it; a bad header throws
/// tp::IoError naming the file and the tensor. `parse_safetensors_index` does the same for a
/// Hugging Face index (`model.safetensors.index.json`). The readers and the writer are in
/// tp/io/safetensors.hpp.
///
/// Cost: parsing is linear in the header's bytes, which are bounded (max_safetensors_header,
/// 100 MB, about 1.5M tensors): a header of 1M tensors parses in about a second (see the test
/// Safetensors.ParsesAMillionTensorsInLinearTime). JSON nesting is bounded too (3 levels for a
/// header, max_safetensors_index_depth for an index), checked as the parser descends, so a
/// hostile file is refused before it can take memory.

#ifndef TP_HAS_IO
#error "tp/io/safetensors_header.hpp needs the tp::io CMake component: target_link_libraries(... tp::io)"
#endif

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tp/core/dtype.hpp"
#include "tp/core/error.hpp"

namespace tp {

static_assert(std::endian::native == std::endian::little, "tp's safetensors I/O assumes a little-endian host");

/// One tensor of a safetensors file, as its header describes it.
struct SafetensorsTensor {
  std::string name;
  std::string dtype;  ///< the file's spelling: "F32", "BF16", ...
  std::size_t element_size = 0;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0, end = 0;  ///< data_offsets, relative to the start of the data section

  /// The parser guarantees that the product of the non-zero dimensions times the element size
  /// fits in int64, so neither this nor rows() can overflow.
  std::int64_t numel() const { return rows() * cols(); }
  /// The tensor as a matrix: [rows, cols] for 2-D, [1, n] for 1-D, [1, 1] for a scalar, and
  /// [prod(shape[:-1]), shape[-1]] above two dimensions. Computed without dividing, so that a
  /// zero last dimension gives rows x 0, not a division by zero.
  std::int64_t rows() const {
    std::int64_t n = 1;
    for (std::size_t i = 0; i + 1 < shape.size(); ++i) n *= shape[i];
    return n;
  }
  std::int64_t cols() const { return shape.empty() ? 1 : shape.back(); }
};

/// A parsed, validated header.
struct SafetensorsHeader {
  std::map<std::string, SafetensorsTensor, std::less<>> tensors;
  std::map<std::string, std::string, std::less<>> metadata;
  std::uint64_t data_start = 0;  ///< file offset of the data section: 8 + header length
};

using SafetensorsMetadata = std::map<std::string, std::string, std::less<>>;

namespace detail {

/// Bytes per element of every dtype the safetensors format defines; nullopt for anything else.
inline std::optional<std::size_t> safetensors_element_size(std::string_view dtype) {
  static constexpr std::pair<std::string_view, std::size_t> sizes[] = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E4M3", 1}, {"F8_E5M2", 1}, {"I16", 2}, {"U16", 2}, {"F16", 2},
      {"BF16", 2}, {"I32", 4}, {"U32", 4}, {"F32", 4},     {"I64", 8},     {"U64", 8}, {"F64", 8}};
  for (auto [name, size] : sizes)
    if (name == dtype) return size;
  return std::nullopt;
}

inline std::string_view safetensors_dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "F32";
    case DType::f64: return "F64";
    case DType::f16: return "F16";
    case DType::bf16: return "BF16";
    case DType::i32: return "I32";
    case DType::i64: return "I64";
    case DType::u8: return "U8";
  }
  return "?";
}

/// Headers larger than this are refused (the Hugging Face implementation's limit too), so that a
/// hostile length cannot make us allocate gigabytes.
inline constexpr std::uint64_t max_safetensors_header = 100'000'000;

/// How deep an index's JSON may nest: {"metadata": {..}, "weight_map": {..}} needs 2 levels; 3
/// leaves room for a structured metadata entry.
inline constexpr int max_safetensors_index_depth = 3;

/// nlohmann's SAX-to-DOM builder plus two checks made as the parser goes, before anything is
/// built: no nesting deeper than `max_depth`, and no key twice in one object (which a JSON object
/// would otherwise silently resolve to the last one: two tensors under one name). nlohmann's own
/// callback parser could make these checks, but it rescans the enclosing object at every closing
/// brace, which made parsing quadratic in the number of tensors (80K tensors took 49 s).
class GuardedJsonBuilder {
 public:
  using Json = nlohmann::json;
  GuardedJsonBuilder(Json& root, std::string_view file, std::string_view what, int max_depth)
      : dom_(root), file_(file), what_(what), max_depth_(max_depth) {}

  bool null() { return dom_.null(); }
  bool boolean(bool v) { return dom_.boolean(v); }
  bool number_integer(Json::number_integer_t v) { return dom_.number_integer(v); }
  bool number_unsigned(Json::number_unsigned_t v) { return dom_.number_unsigned(v); }
  bool number_float(Json::number_float_t v, const Json::string_t& s) { return dom_.number_float(v, s); }
  bool string(Json::string_t& v) { return dom_.string(v); }
  bool binary(Json::binary_t& v) { return dom_.binary(v); }
  bool start_object(std::size_t n) {
    descend();
    keys_.emplace_back();
    return dom_.start_object(n);
  }
  bool key(Json::string_t& k) {
    if (!keys_.back().insert(k).second)
      TP_THROW(IoError, "{}: '{}' appears twice in one object of the {}{}", file_, k, what_,
               keys_.size() == 1 ? " (two tensors or entries under one name)" : "");
    return dom_.key(k);
  }
  bool end_object() {
    keys_.pop_back();
    --depth_;
    return dom_.end_object();
  }
  bool start_array(std::size_t n) {
    descend();
    return dom_.start_array(n);
  }
  bool end_array() {
    --depth_;
    return dom_.end_array();
  }
  template <class Exception>
  bool parse_error(std::size_t position, const std::string& token, const Exception& e) {
    return dom_.parse_error(position, token, e);  // throws e
  }

 private:
  void descend() {
    if (++depth_ > max_depth_)
      TP_THROW(IoError, "{}: the {} nests JSON deeper than {} levels, deeper than a {} can", file_, what_, max_depth_,
               what_);
  }
  nlohmann::detail::json_sax_dom_parser<Json> dom_;
  std::string file_, what_;
  int max_depth_;
  int depth_ = 0;
  std::vector<std::set<std::string, std::less<>>> keys_;  ///< one per open object
};

/// Parses `text` as JSON no deeper than `max_depth`, without duplicate keys; IoError otherwise.
inline nlohmann::json parse_guarded_json(std::string_view text, std::string_view file, std::string_view what,
                                         int max_depth) {
  nlohmann::json json;
  GuardedJsonBuilder builder(json, file, what, max_depth);
  try {
    nlohmann::json::sax_parse(text, &builder);
  } catch (const nlohmann::json::exception& e) {
    TP_THROW(IoError, "{}: {} is not valid JSON: {}", file, what, e.what());
  }
  return json;
}

inline std::int64_t checked_dim(const nlohmann::json& d, std::string_view file, std::string_view name) {
  if (!d.is_number_unsigned() || d.get<std::uint64_t>() > std::uint64_t{1} << 53)
    TP_THROW(IoError, "{}: tensor '{}' has shape entry {}, not a non-negative integer", file, name, d.dump());
  return static_cast<std::int64_t>(d.get<std::uint64_t>());
}

inline std::uint64_t checked_offset(const nlohmann::json& d, std::string_view file, std::string_view name) {
  if (!d.is_number_unsigned())
    TP_THROW(IoError, "{}: tensor '{}' has data offset {}, not a non-negative integer", file, name, d.dump());
  return d.get<std::uint64_t>();
}

}  // namespace detail

/// Parses and validates a whole safetensors header given the file's bytes up to at least the end
/// of the header (`file_size` is the size of the whole file): the header length fits the file,
/// the header is a JSON object of tensors with known dtypes, shapes that match their byte counts,
/// offsets inside the data section that do not overlap, and string-to-string metadata.
/// `file` names the file in errors. This is what the fuzz target exercises.
inline SafetensorsHeader parse_safetensors_header(std::span<const unsigned char> prefix, std::uint64_t file_size,
                                                  std::string_view file) {
  if (file_size < 8 || prefix.size() < 8)
    TP_THROW(IoError, "{}: {} bytes is too short for a safetensors file (8-byte header length first)", file,
             file_size);
  std::uint64_t header_len = 0;
  std::memcpy(&header_len, prefix.data(), 8);
  if (header_len > file_size - 8)
    TP_THROW(IoError, "{}: header length {} runs past the end of the file ({} bytes)", file, header_len, file_size);
  if (header_len > detail::max_safetensors_header)
    TP_THROW(IoError, "{}: header length {} is over the limit of {} bytes", file, header_len,
             detail::max_safetensors_header);
  if (prefix.size() < 8 + header_len)
    TP_THROW(IoError, "{}: only {} of the {} header bytes were given", file, prefix.size() - 8, header_len);
  const std::string_view text(reinterpret_cast<const char*>(prefix.data() + 8), header_len);

  SafetensorsHeader header;
  header.data_start = 8 + header_len;
  const std::uint64_t data_size = file_size - header.data_start;
  const nlohmann::json json = detail::parse_guarded_json(text, file, "safetensors header", 3);
  if (!json.is_object()) TP_THROW(IoError, "{}: safetensors header is {}, not a JSON object", file, json.type_name());

  for (const auto& [name, entry] : json.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) TP_THROW(IoError, "{}: __metadata__ is {}, not an object", file, entry.type_name());
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string())
          TP_THROW(IoError, "{}: __metadata__ entry '{}' is {}, not a string", file, key, value.type_name());
        header.metadata.emplace(key, value.get<std::string>());
      }
      continue;
    }
    if (!entry.is_object()) TP_THROW(IoError, "{}: tensor '{}' is described by {}, not an object", file, name, entry.type_name());
    SafetensorsTensor t;
    t.name = name;
    const auto dtype = entry.find("dtype"), shape = entry.find("shape"), offsets = entry.find("data_offsets");
    if (dtype == entry.end() || !dtype->is_string())
      TP_THROW(IoError, "{}: tensor '{}' has no dtype string", file, name);
    t.dtype = dtype->get<std::string>();
    const auto size = detail::safetensors_element_size(t.dtype);
    if (!size) TP_THROW(IoError, "{}: tensor '{}' has unknown dtype '{}'", file, name, t.dtype);
    t.element_size = *size;
    if (shape == entry.end() || !shape->is_array()) TP_THROW(IoError, "{}: tensor '{}' has no shape array", file, name);
    std::uint64_t bytes = t.element_size, nonzero_bytes = t.element_size;
    bool nonzero_overflow = false;
    for (const auto& d : *shape) {
      t.shape.push_back(detail::checked_dim(d, file, name));
      const auto dim = static_cast<std::uint64_t>(t.shape.back());
      if (bytes != UINT64_MAX && __builtin_mul_overflow(bytes, dim, &bytes))
        bytes = UINT64_MAX;  // saturate: cannot match any offsets below
      if (dim != 0 && !nonzero_overflow) nonzero_overflow = __builtin_mul_overflow(nonzero_bytes, dim, &nonzero_bytes);
    }
    if (std::find(t.shape.begin(), t.shape.end(), 0) != t.shape.end()) bytes = 0;  // exact, even past a saturation
    if (offsets == entry.end() || !offsets->is_array() || offsets->size() != 2)
      TP_THROW(IoError, "{}: tensor '{}' has no data_offsets [begin, end]", file, name);
    t.begin = detail::checked_offset((*offsets)[0], file, name);
    t.end = detail::checked_offset((*offsets)[1], file, name);
    if (t.begin > t.end || t.end > data_size)
      TP_THROW(IoError, "{}: tensor '{}' has data_offsets [{}, {}] outside the {} data bytes of the file", file, name,
               t.begin, t.end, data_size);
    if (t.end - t.begin != bytes)
      TP_THROW(IoError, "{}: tensor '{}' is {} {} of shape [{}] ({} bytes) but data_offsets [{}, {}] span {} bytes",
               file, name, bytes == UINT64_MAX ? std::string("too many") : std::to_string(bytes / t.element_size), t.dtype,
               fmt::join(t.shape, ", "), bytes == UINT64_MAX ? std::string("overflow") : std::to_string(bytes), t.begin,
               t.end, t.end - t.begin);
    // An empty tensor matches any shape with a zero in it, [2^53, 2^53, 0] too; its other
    // dimensions must still multiply within int64, or rows() and numel() would overflow.
    if (nonzero_overflow || nonzero_bytes > static_cast<std::uint64_t>(INT64_MAX))
      TP_THROW(IoError, "{}: tensor '{}' has shape [{}], whose non-zero dimensions multiply past 2^63", file, name,
               fmt::join(t.shape, ", "));
    header.tensors.emplace(name, std::move(t));
  }

  std::vector<const SafetensorsTensor*> by_offset;
  for (const auto& [name, t] : header.tensors) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](auto* a, auto* b) { return a->begin != b->begin ? a->begin < b->begin : a->end < b->end; });
  const SafetensorsTensor* last = nullptr;  // the non-empty tensor that ends furthest so far
  for (const SafetensorsTensor* t : by_offset) {
    if (t->begin == t->end) continue;
    if (last != nullptr && t->begin < last->end)
      TP_THROW(IoError, "{}: tensors '{}' [{}, {}] and '{}' [{}, {}] overlap", file, last->name, last->begin,
               last->end, t->name, t->begin, t->end);
    if (last == nullptr || t->end > last->end) last = t;
  }
  return header;
}

/// Parses and validates a Hugging Face index (`{"metadata": {..}, "weight_map": {"tensor":
/// "file", ..}}`) given its text: returns the weight map, each file a plain relative name beside
/// the index (no absolute path, no ".."). `file` names the index in errors.
inline std::map<std::string, std::string, std::less<>> parse_safetensors_index(std::string_view text,
                                                                                std::string_view file) {
  if (text.size() > detail::max_safetensors_header)
    TP_THROW(IoError, "{}: index of {} bytes is over the limit of {}", file, text.size(),
             detail::max_safetensors_header);
  const nlohmann::json index = detail::parse_guarded_json(text, file, "safetensors index",
                                                          detail::max_safetensors_index_depth);
  const auto map = index.is_object() ? index.find("weight_map") : index.end();
  if (map == index.end() || !map->is_object()) TP_THROW(IoError, "{}: index has no weight_map object", file);
  std::map<std::string, std::string, std::less<>> weight_map;
  for (const auto& [name, entry] : map->items()) {
    if (!entry.is_string()) TP_THROW(IoError, "{}: weight_map entry for tensor '{}' is not a file name", file, name);
    const std::string rel = entry.get<std::string>();
    if (rel.empty() || rel.front() == '/' || rel.find("..") != std::string::npos || rel.find('\0') != std::string::npos)
      TP_THROW(IoError, "{}: weight_map sends tensor '{}' to '{}', not a file beside the index", file, name, rel);
    weight_map.emplace(name, rel);
  }
  return weight_map;
}

}  // namespace tp
