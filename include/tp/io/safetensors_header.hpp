#pragma once
/// The safetensors header, and nothing else: the format's 8 bytes of little-endian header length,
/// then a JSON header {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
/// {..}}, then the raw tensor bytes (offsets relative to the end of the header).
///
/// `parse_safetensors_header` takes bytes and returns a validated header, touching no file, so the
/// fuzz target (tests/fuzz/safetensors_fuzz.cpp) covers all of it; a bad header throws
/// tp::IoError naming the file and the tensor. The readers and the writer are in
/// tp/io/safetensors.hpp.

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

  std::int64_t numel() const {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
  }
  /// The tensor as a matrix: [rows, cols] for 2-D, [1, n] for 1-D, [1, 1] for a scalar, and
  /// [prod(shape[:-1]), shape[-1]] above two dimensions.
  std::int64_t rows() const { return shape.size() < 2 ? 1 : numel() / shape.back(); }
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

/// Rejects JSON nested deeper than a header can be, and duplicate tensor names (which a JSON
/// object would otherwise silently resolve to the last one).
class HeaderParseGuard {
 public:
  explicit HeaderParseGuard(std::string_view file) : file_(file) {}
  bool operator()(int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    if (depth > 3) TP_THROW(IoError, "{}: safetensors header nests JSON deeper than a header can", file_);
    if (event == nlohmann::json::parse_event_t::key && depth == 1) {
      const auto& key = parsed.get_ref<const std::string&>();
      if (!keys_.insert(key).second) TP_THROW(IoError, "{}: tensor '{}' appears twice in the header", file_, key);
    }
    return true;
  }

 private:
  std::string file_;
  std::set<std::string, std::less<>> keys_;
};

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
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(text, detail::HeaderParseGuard(file));
  } catch (const nlohmann::json::exception& e) {
    TP_THROW(IoError, "{}: safetensors header is not valid JSON: {}", file, e.what());
  }
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
    std::uint64_t bytes = t.element_size;
    for (const auto& d : *shape) {
      t.shape.push_back(detail::checked_dim(d, file, name));
      if (bytes != UINT64_MAX && __builtin_mul_overflow(bytes, static_cast<std::uint64_t>(t.shape.back()), &bytes))
        bytes = UINT64_MAX;  // saturate: cannot match any offsets below
    }
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

}  // namespace tp
