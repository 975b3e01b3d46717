#pragma once
/// Checkpoints in the safetensors format of Hugging Face (the format and its parser:
/// tp/io/safetensors_header.hpp; the file calls: tp/io/file.hpp).
///
/// Loading is sharded: each rank opens the file and reads only its block of each tensor, one
/// `pread` for a block of whole rows, one per row for a block of columns, so a checkpoint written
/// at any TP degree loads at any other. A Hugging Face index (`model.safetensors.index.json`, whose
/// `weight_map` names the file that holds each tensor) loads the same way.
///
/// Saving writes one full file that any TP degree (or `safetensors.torch.load_file`) can load:
/// every rank builds the same header from its parameter list, rank 0 writes it and sizes the file,
/// and every rank writes its own blocks with `pwrite` (a block held by several ranks by one). The
/// ranks must therefore see one file system (one machine, or a shared one). The file appears
/// under its name only when complete: rank 0 creates `<path>.tmp-<random hex>` exclusively (a file
/// or symbolic link already at that name is never followed or overwritten; tp/io/file.hpp), every
/// rank writes and fsyncs its blocks there, then rank 0 renames it to `<path>` and fsyncs the
/// directory. A save that fails removes its temporary file; one killed mid-way leaves it, under a
/// name no reader opens. Several files that must change together (weights and optimizer state)
/// belong in one step directory: tp/io/checkpoint.hpp.
///
/// Every header is validated before any data is read; a bad file throws tp::IoError naming the
/// file and the tensor, a tensor whose shape does not fit the layer tp::InvalidArgument.

#ifndef TP_HAS_IO
#error "tp/io/safetensors.hpp needs the tp::io CMake component: target_link_libraries(... tp::io)"
#endif

#include <fcntl.h>

#include <algorithm>
#include <array>
#include <numeric>
#include <bit>
#include <cstdint>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <type_traits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tp/comm/communicator.hpp"
#include "tp/comm/detail/host_staged_communicator.hpp"
#include "tp/core/dtype.hpp"
#include "tp/core/error.hpp"
#include "tp/core/parameter.hpp"
#include "tp/core/tensor.hpp"
#include "tp/io/file.hpp"
#include "tp/io/safetensors_header.hpp"

namespace tp {

namespace detail {

inline float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  std::uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf, nan
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal: value = mant * 2^-24, exact in float
    const float v = static_cast<float>(mant) * 0x1p-24f;
    bits = sign | std::bit_cast<std::uint32_t>(v);
  }
  return std::bit_cast<float>(bits);
}

inline float bfloat16_to_float(std::uint16_t b) { return std::bit_cast<float>(std::uint32_t(b) << 16); }

/// Whether `v` converts to the integer type T without leaving its range (NaN never does).
template <class T, class V>
bool fits_integer(V v) {
  if constexpr (std::is_integral_v<V>) {
    return std::in_range<T>(v);
  } else {
    const double d = static_cast<double>(v);
    return d >= static_cast<double>(std::numeric_limits<T>::min()) &&
           d < std::ldexp(1.0, std::numeric_limits<T>::digits);
  }
}

/// Converts `n` little-endian elements of a file dtype into T. Into an integer T, a value outside
/// T's range throws (a float-to-integer cast out of range is undefined behaviour, a narrowing
/// integer cast silently wraps).
template <class T>
void convert_from(std::string_view dtype, const unsigned char* src, T* dst, std::int64_t n, std::string_view file,
                  std::string_view name) {
  auto each = [&](auto load) {
    for (std::int64_t i = 0; i < n; ++i) {
      const auto v = load(i);
      if constexpr (std::is_integral_v<T>) {
        if (!fits_integer<T>(v))
          TP_THROW(IoError, "{}: tensor '{}' holds {}, outside the range of {}", file, name, v, tp::name(dtype_of<T>));
      }
      dst[i] = static_cast<T>(v);
    }
  };
  auto raw = [&](auto tag, std::int64_t i) {
    decltype(tag) v;
    std::memcpy(&v, src + i * sizeof v, sizeof v);
    return v;
  };
  if (dtype == "F32") each([&](std::int64_t i) { return raw(float{}, i); });
  else if (dtype == "F64") each([&](std::int64_t i) { return raw(double{}, i); });
  else if (dtype == "BF16") each([&](std::int64_t i) { return bfloat16_to_float(raw(std::uint16_t{}, i)); });
  else if (dtype == "F16") each([&](std::int64_t i) { return half_to_float(raw(std::uint16_t{}, i)); });
  else if (dtype == "I32") each([&](std::int64_t i) { return raw(std::int32_t{}, i); });
  else if (dtype == "I64") each([&](std::int64_t i) { return raw(std::int64_t{}, i); });
  else if (dtype == "U8") each([&](std::int64_t i) { return raw(std::uint8_t{}, i); });
  else if (dtype == "I8") each([&](std::int64_t i) { return raw(std::int8_t{}, i); });
  else if (dtype == "I16") each([&](std::int64_t i) { return raw(std::int16_t{}, i); });
  else if (dtype == "U16") each([&](std::int64_t i) { return raw(std::uint16_t{}, i); });
  else if (dtype == "U32") each([&](std::int64_t i) { return raw(std::uint32_t{}, i); });
  else if (dtype == "U64") each([&](std::int64_t i) { return raw(std::uint64_t{}, i); });
  else if (dtype == "BOOL") each([&](std::int64_t i) { return raw(std::uint8_t{}, i) != 0 ? 1 : 0; });
  else TP_THROW(IoError, "{}: tensor '{}' has dtype {}, which tp cannot convert to {}", file, name, dtype, tp::name(dtype_of<T>));
}

/// Whether a safetensors dtype holds integers (BOOL included) rather than floating-point numbers.
inline bool safetensors_integer_dtype(std::string_view dtype) {
  return dtype == "BOOL" || (!dtype.empty() && (dtype.front() == 'I' || dtype.front() == 'U'));
}

}  // namespace detail

/// How the readers convert a file's dtype into the caller's element type.
struct SafetensorsReadOptions {
  /// Integer tensors (I64, I32, U8, BOOL, ...) load into floating-point weights, and floating-point
  /// tensors into integer ones, only when the caller asks: a token-id, mask or quantized tensor
  /// under a weight's name is far more often a mistake than an intended conversion.
  bool allow_integer_conversion = false;
};

/// One safetensors file opened for reading: the header is read and validated on construction,
/// tensor data only by `read_block`.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::filesystem::path& path) : fd_(detail::Fd::open_regular(path.string())) {
    const std::uint64_t size = fd_.size();
    std::vector<unsigned char> prefix(std::min<std::uint64_t>(size, 8));
    fd_.read_at(prefix.data(), prefix.size(), 0, "the header length");
    if (size >= 8) {
      std::uint64_t len = 0;
      std::memcpy(&len, prefix.data(), 8);
      if (len <= size - 8 && len <= detail::max_safetensors_header) {
        prefix.resize(8 + len);
        fd_.read_at(prefix.data() + 8, len, 8, "the header");
      }
    }
    header_ = parse_safetensors_header(prefix, size, fd_.path());
  }

  const std::string& path() const { return fd_.path(); }
  const SafetensorsMetadata& metadata() const { return header_.metadata; }
  const SafetensorsHeader& header() const { return header_; }
  bool contains(std::string_view name) const { return header_.tensors.find(name) != header_.tensors.end(); }

  const SafetensorsTensor& tensor(std::string_view name) const {
    const auto it = header_.tensors.find(name);
    if (it == header_.tensors.end())
      TP_THROW(IoError, "{}: no tensor '{}' in the file ({} tensors)", path(), name, header_.tensors.size());
    return it->second;
  }

  /// Reads the block of `out.rows` x `out.cols` elements at (r0, c0) of tensor `name` (seen as a
  /// matrix, SafetensorsTensor::rows/cols) into host memory, converting the file's dtype to T.
  /// Whole rows are one read; a column block is one read per row. An integer tensor into a
  /// floating-point T (or the reverse) throws IoError unless `options` allows it.
  template <class T>
  void read_block(std::string_view name, std::int64_t r0, std::int64_t c0, MatrixView<T> out,
                  const SafetensorsReadOptions& options = {}) const {
    const SafetensorsTensor& t = tensor(name);
    constexpr bool integer_t = dtype_of<T> == DType::i32 || dtype_of<T> == DType::i64 || dtype_of<T> == DType::u8;
    if (detail::safetensors_integer_dtype(t.dtype) != integer_t && !options.allow_integer_conversion)
      TP_THROW(IoError,
               "{}: tensor '{}' is {}, {} dtype, and the caller reads {}; pass SafetensorsReadOptions"
               "{{.allow_integer_conversion = true}} to convert",
               path(), name, t.dtype, integer_t ? "a floating-point" : "an integer", tp::name(dtype_of<T>));
    const std::int64_t rows = t.rows(), cols = t.cols();
    TP_CHECK(r0 >= 0 && c0 >= 0 && r0 + out.rows <= rows && c0 + out.cols <= cols,
             "{}: block [{}:{}, {}:{}] is outside tensor '{}' of {}x{}", path(), r0, r0 + out.rows, c0, c0 + out.cols,
             name, rows, cols);
    if (out.empty()) return;
    const std::size_t es = t.element_size;
    const std::uint64_t base = header_.data_start + t.begin;
    const std::string what = fmt::format("tensor '{}'", name);
    if (out.cols == cols) {  // whole rows: contiguous in the file; read in chunks of about 16 MiB
      const std::int64_t chunk = std::max<std::int64_t>(1, (std::int64_t{16} << 20) / static_cast<std::int64_t>(cols * es));
      std::vector<unsigned char> buf(static_cast<std::size_t>(std::min(chunk, out.rows) * cols) * es);
      for (std::int64_t r = 0; r < out.rows; r += chunk) {
        const std::int64_t nr = std::min(chunk, out.rows - r);
        fd_.read_at(buf.data(), static_cast<std::size_t>(nr * cols) * es, base + static_cast<std::uint64_t>((r0 + r) * cols) * es, what);
        for (std::int64_t i = 0; i < nr; ++i)
          detail::convert_from(t.dtype, buf.data() + static_cast<std::size_t>(i * cols) * es, out.row(r + i), cols, path(), name);
      }
      return;
    }
    std::vector<unsigned char> buf(static_cast<std::size_t>(out.cols) * es);
    for (std::int64_t r = 0; r < out.rows; ++r) {
      fd_.read_at(buf.data(), buf.size(), base + static_cast<std::uint64_t>((r0 + r) * cols + c0) * es, what);
      detail::convert_from(t.dtype, buf.data(), out.row(r), out.cols, path(), name);
    }
  }

 private:
  detail::Fd fd_;
  SafetensorsHeader header_;
};

/// A checkpoint to load from: one .safetensors file, or a Hugging Face index (.json with a
/// `weight_map` from tensor name to a file beside the index) over several.
class SafetensorsCheckpoint {
 public:
  explicit SafetensorsCheckpoint(const std::filesystem::path& path) : path_(path.string()) {
    if (path.extension() != ".json") {
      files_.push_back(std::make_unique<SafetensorsFile>(path));
      return;
    }
    std::string text;
    {
      const detail::Fd fd = detail::Fd::open_regular(path.string());
      const std::uint64_t size = fd.size();
      if (size > detail::max_safetensors_header)
        TP_THROW(IoError, "{}: index of {} bytes is over the limit of {}", path_, size, detail::max_safetensors_header);
      text.resize(size);
      fd.read_at(text.data(), size, 0, "the index");
    }
    std::map<std::string, std::size_t> opened;
    for (const auto& [name, rel] : parse_safetensors_index(text, path_)) {
      auto [it, fresh] = opened.emplace(rel, files_.size());
      if (fresh) files_.push_back(std::make_unique<SafetensorsFile>(path.parent_path() / rel));
      if (!files_[it->second]->contains(name))
        TP_THROW(IoError, "{}: index says tensor '{}' is in {}, but it is not", path_, name, files_[it->second]->path());
      owner_.emplace(name, it->second);
    }
  }

  const std::string& path() const { return path_; }
  bool contains(std::string_view name) const {
    return files_.size() == 1 && owner_.empty() ? files_[0]->contains(name) : owner_.find(name) != owner_.end();
  }
  /// Every tensor's name, sorted.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    if (owner_.empty()) {
      for (const auto& f : files_)
        for (const auto& [name, t] : f->header().tensors) out.push_back(name);
    } else {
      for (const auto& [name, file] : owner_) out.push_back(name);
    }
    std::sort(out.begin(), out.end());
    return out;
  }
  /// The file that holds `name`; throws IoError naming the checkpoint and the tensor if none does.
  const SafetensorsFile& file_of(std::string_view name) const {
    if (owner_.empty() && files_.size() == 1) {
      files_[0]->tensor(name);  // throws if missing
      return *files_[0];
    }
    const auto it = owner_.find(name);
    if (it == owner_.end()) TP_THROW(IoError, "{}: no tensor '{}' in the checkpoint's weight_map", path_, name);
    return *files_[it->second];
  }
  /// The metadata of the first (or only) file.
  const SafetensorsMetadata& metadata() const {
    static const SafetensorsMetadata none;
    return files_.empty() ? none : files_[0]->metadata();
  }

 private:
  std::string path_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, std::size_t, std::less<>> owner_;
};

/// Reads this rank's block of `p` from the checkpoint into the parameter. The stored tensor must
/// have the parameter's full shape ([rows, cols]; a [cols] vector also fits a [1, cols] parameter).
template <class T, class Device>
void load_parameter(const Device& device, const Parameter<T>& p, const SafetensorsCheckpoint& checkpoint,
                    const SafetensorsReadOptions& options = {}) {
  const SafetensorsFile& file = checkpoint.file_of(p.name);
  const SafetensorsTensor& t = file.tensor(p.name);
  const bool fits = (t.shape.size() == 2 && t.shape[0] == p.full_rows && t.shape[1] == p.full_cols) ||
                    (t.shape.size() == 1 && p.full_rows == 1 && t.shape[0] == p.full_cols) ||
                    (t.shape.empty() && p.full_rows == 1 && p.full_cols == 1);
  TP_CHECK(fits, "{}: tensor '{}' has shape [{}], but the layer's parameter is {}x{}", file.path(), p.name,
           fmt::join(t.shape, ", "), p.full_rows, p.full_cols);
  if constexpr (Device::on_host) {
    if (p.value.contiguous() || p.value.rows == 1) {
      file.read_block(p.name, p.rows.begin, p.cols.begin, p.value, options);
      return;
    }
  }
  std::vector<T> host(static_cast<std::size_t>(p.rows.size() * p.cols.size()));
  const MatrixView<T> view(host.data(), p.rows.size(), p.cols.size());
  file.read_block(p.name, p.rows.begin, p.cols.begin, view, options);
  device.from_host(ConstView<T>(view), p.value);
}

/// Loads every parameter's block from a .safetensors file or an index .json.
template <class T, class Device>
void load_safetensors(const Device& device, std::span<const Parameter<T>> params, const std::filesystem::path& path,
                      const SafetensorsReadOptions& options = {}) {
  const SafetensorsCheckpoint checkpoint(path);
  for (const auto& p : params) load_parameter(device, p, checkpoint, options);
}

namespace detail {

/// The blocks of one full tensor that a save writes, gathered from every rank: [name index, row
/// begin, row end, column begin, column end, rank] per block.
using SavedBlocks = std::vector<std::array<std::int64_t, 6>>;

/// Whether this rank writes record `p`: the copy-0 holder of a block held by several ranks
/// (Parameter::copy), and rank 0 alone for a record that holds the whole tensor (a replicated
/// parameter such as a LayerNorm weight, held with copy 0 everywhere).
template <class T>
bool writes_record(const Parameter<T>& p, int rank) {
  return p.copy == 0 && !p.value.empty() && (p.sharded() || rank == 0);
}

/// Checks that the written blocks of every tensor are disjoint and cover it exactly; identical on
/// every rank, which all see the same gathered list.
inline void check_block_cover(const std::string& file, const std::vector<std::string>& names,
                              const std::vector<std::array<std::int64_t, 2>>& shapes, SavedBlocks blocks) {
  std::sort(blocks.begin(), blocks.end());
  std::size_t b = 0;
  for (std::size_t n = 0; n < names.size(); ++n) {
    const std::size_t first = b;
    std::int64_t area = 0;
    for (; b < blocks.size() && blocks[b][0] == static_cast<std::int64_t>(n); ++b) {
      const auto& x = blocks[b];
      area += (x[2] - x[1]) * (x[4] - x[3]);
      for (std::size_t o = first; o < b; ++o) {
        const auto& y = blocks[o];
        if (x[1] < y[2] && y[1] < x[2] && x[3] < y[4] && y[3] < x[4])
          TP_THROW(InvalidArgument,
                   "{}: parameter '{}' is listed twice: rank {} writes rows [{}, {}) x columns [{}, {}) and rank {} "
                   "rows [{}, {}) x columns [{}, {}) of the {}x{} tensor (a block held by several ranks must have "
                   "Parameter::copy = 0 on exactly one)",
                   file, names[n], y[5], y[1], y[2], y[3], y[4], x[5], x[1], x[2], x[3], x[4], shapes[n][0],
                   shapes[n][1]);
      }
    }
    const std::int64_t full = shapes[n][0] * shapes[n][1];
    if (area != full) {
      std::string listed;
      for (std::size_t o = first; o < b; ++o)
        listed += fmt::format("{}rank {}: [{}, {}) x [{}, {})", o == first ? "" : "; ", blocks[o][5], blocks[o][1],
                              blocks[o][2], blocks[o][3], blocks[o][4]);
      TP_THROW(InvalidArgument,
               "{}: the ranks' blocks of parameter '{}' cover {} of its {}x{} = {} elements, so part of the tensor "
               "would be left unwritten (blocks: {})",
               file, names[n], area, shapes[n][0], shapes[n][1], full, listed.empty() ? "none" : listed);
    }
  }
}

}  // namespace detail

/// Writes the parameters as one full safetensors file at `path`. Collective over `comm`: every
/// rank passes the same parameter list (names and full shapes; a hash of the header is checked)
/// holding its own blocks, e.g. any layer's own parameters(). Several records may share a name:
/// they are disjoint blocks of one full tensor (a fused QKV weight's q, k and v rows, SwiGLU's
/// stacked gate and up), each written where it belongs. A block several ranks hold (a replicated
/// GQA kv head, a replicated table) is written by the rank whose record has copy 0, a record that
/// holds the whole tensor by rank 0. The union of the written blocks over all ranks must cover
/// each tensor exactly once (checked before anything is written). Tensors are stored in T's
/// dtype, in the order of their names' first records, 2-D [full_rows, full_cols] unless
/// `stored_shapes` gives a tensor another shape of as many elements (Hugging Face stores biases
/// and norm weights 1-D). `metadata` goes into `__metadata__`. On a device (Device::on_host
/// false), `comm` may be the device's (NCCL): the small collectives over host buffers (the header
/// hash, the block list, rank 0's verdicts) are staged through device buffers (detail::HostComm:
/// one blocking device copy each way per collective), and each block is copied to the host to be
/// written.
template <class T, class Device>
void save_safetensors(Communicator& comm, const Device& device, std::span<const Parameter<T>> params,
                      const std::filesystem::path& path, const SafetensorsMetadata& metadata = {},
                      const std::map<std::string, std::vector<std::int64_t>, std::less<>>& stored_shapes = {}) {
  const detail::HostComm<Device> group(comm, device);  // staged on a device
  const std::string file = path.string();
  // The header, identical on every rank: one entry per name.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<std::uint64_t> offsets;  // of each record's tensor
  std::uint64_t data_size = 0;
  std::map<std::string, std::size_t, std::less<>> index;  // name -> position in `names`
  std::vector<std::string> names;
  std::vector<std::array<std::int64_t, 2>> shapes;
  std::vector<std::uint64_t> name_offsets;
  detail::SavedBlocks mine;
  for (const auto& p : params) {
    TP_CHECK(p.name != "__metadata__", "{}: a parameter cannot be called __metadata__", file);
    TP_CHECK(p.value.rows == p.rows.size() && p.value.cols == p.cols.size() && p.rows.begin >= 0 &&
                 p.cols.begin >= 0 && p.rows.end <= p.full_rows && p.cols.end <= p.full_cols,
             "{}: parameter '{}' holds a {}x{} shard as rows [{}, {}) x columns [{}, {}) of {}x{}", file, p.name,
             p.value.rows, p.value.cols, p.rows.begin, p.rows.end, p.cols.begin, p.cols.end, p.full_rows, p.full_cols);
    auto [it, fresh] = index.emplace(p.name, names.size());
    if (fresh) {
      const std::uint64_t bytes = static_cast<std::uint64_t>(p.full_rows * p.full_cols) * sizeof(T);
      std::vector<std::int64_t> shape{p.full_rows, p.full_cols};
      if (const auto stored = stored_shapes.find(p.name); stored != stored_shapes.end()) {
        std::int64_t n = 1;
        for (const std::int64_t d : stored->second) n *= d;
        TP_CHECK(n == p.full_rows * p.full_cols && std::ranges::all_of(stored->second, [](std::int64_t d) { return d >= 0; }),
                 "{}: parameter '{}' is {}x{}, which cannot be stored with shape [{}]", file, p.name, p.full_rows,
                 p.full_cols, fmt::join(stored->second, ", "));
        shape = stored->second;
      }
      header[p.name] = {{"dtype", detail::safetensors_dtype_name(dtype_of<T>)},
                        {"shape", shape},
                        {"data_offsets", {data_size, data_size + bytes}}};
      names.push_back(p.name);
      shapes.push_back({p.full_rows, p.full_cols});
      name_offsets.push_back(data_size);
      data_size += bytes;
    } else {
      const auto& s = shapes[it->second];
      TP_CHECK(s[0] == p.full_rows && s[1] == p.full_cols,
               "{}: parameter '{}' is listed as a block of a {}x{} tensor and of a {}x{} one", file, p.name, s[0], s[1],
               p.full_rows, p.full_cols);
    }
    offsets.push_back(name_offsets[it->second]);
    if (detail::writes_record(p, group->rank()))
      mine.push_back({static_cast<std::int64_t>(it->second), p.rows.begin, p.rows.end, p.cols.begin, p.cols.end,
                      group->rank()});
  }
  std::string text = header.dump();
  text.resize((text.size() + 7) / 8 * 8, ' ');  // pad so the data section is 8-byte aligned
  const std::uint64_t data_start = 8 + text.size();

  // Every rank must describe the same file.
  std::int64_t hash[2] = {static_cast<std::int64_t>(name_key(text) >> 1), 0};
  hash[1] = -hash[0];
  group->all_reduce(std::span<std::int64_t>(hash, 2), ReduceOp::max);
  if (hash[0] != -hash[1])
    TP_THROW(InvalidArgument, "{}: the ranks passed different parameter lists (rank {} of {})", file, group->rank(),
             group->size());

  // Every block written once, every element covered: gather what each rank would write.
  {
    std::int64_t count = static_cast<std::int64_t>(mine.size() * 6);
    std::vector<std::int64_t> counts(static_cast<std::size_t>(group->size()));
    group->all_gather(std::span<const std::int64_t>(&count, 1), std::span<std::int64_t>(counts));
    std::vector<std::size_t> sizes(counts.begin(), counts.end());
    std::vector<std::int64_t> all(static_cast<std::size_t>(std::accumulate(counts.begin(), counts.end(), std::int64_t{0})));
    group->all_gather_v(std::span<const std::int64_t>(mine.empty() ? nullptr : mine.front().data(), mine.size() * 6),
                      std::span<std::int64_t>(all), std::span<const std::size_t>(sizes));
    detail::SavedBlocks blocks(all.size() / 6);
    for (std::size_t i = 0; i < blocks.size(); ++i) std::copy_n(all.data() + 6 * i, 6, blocks[i].data());
    detail::check_block_cover(file, names, shapes, std::move(blocks));
  }

  // Rank 0 creates the temporary file with its header and full size; the others wait for its
  // verdict and the random suffix that names the file.
  std::int32_t failed = 0;
  std::int64_t created[2] = {0, 0};  // {failed, suffix}
  std::string error;
  if (group->rank() == 0) {
    try {
      auto [fd, suffix] = detail::create_temp_file(path);
      created[1] = static_cast<std::int64_t>(suffix);
      const std::uint64_t len = text.size();
      fd.write_at(&len, 8, 0, "the header length");
      fd.write_at(text.data(), text.size(), 8, "the header");
      fd.resize(data_start + data_size);
      fd.close();
    } catch (const Error& e) {
      created[0] = 1;
      error = e.what();
    }
  }
  group->broadcast(std::span<std::int64_t>(created, 2), 0);
  if (created[0])
    TP_THROW(IoError, "{}: {}", file, group->rank() == 0 ? error : "rank 0 could not create the file");
  const std::string tmp = detail::temp_name(path, static_cast<std::uint64_t>(created[1])).string();

  // Each rank writes its blocks (detail::writes_record: one writer per block).
  try {
    detail::Fd fd = detail::Fd::open_for_writing(tmp);
    std::vector<T> host;
    for (std::size_t i = 0; i < params.size(); ++i) {
      const Parameter<T>& p = params[i];
      if (!detail::writes_record(p, group->rank())) continue;
      host.resize(static_cast<std::size_t>(p.value.size()));
      const MatrixView<T> h(host.data(), p.value.rows, p.value.cols);
      device.to_host(ConstView<T>(p.value), h);
      const std::string what = fmt::format("tensor '{}'", p.name);
      const std::uint64_t base = data_start + offsets[i];
      if (p.cols.size() == p.full_cols) {
        fd.write_at(h.data, host.size() * sizeof(T), base + static_cast<std::uint64_t>(p.rows.begin * p.full_cols) * sizeof(T), what);
      } else {
        for (std::int64_t r = 0; r < h.rows; ++r)
          fd.write_at(h.row(r), static_cast<std::size_t>(h.cols) * sizeof(T),
                      base + static_cast<std::uint64_t>((p.rows.begin + r) * p.full_cols + p.cols.begin) * sizeof(T), what);
      }
    }
    fd.sync();
    fd.close();
  } catch (const Error& e) {
    failed = 1;
    error = e.what();
  }
  std::int32_t any = failed;
  group->all_reduce(std::span<std::int32_t>(&any, 1), ReduceOp::max);
  if (any) {
    std::error_code ignored;
    if (group->rank() == 0) std::filesystem::remove(tmp, ignored);
    TP_THROW(IoError, "{}: {}", file, failed ? error : "another rank failed to write its blocks");
  }
  if (group->rank() == 0) {
    error = detail::rename_file(tmp, path);
    if (error.empty()) {
      try {
        detail::sync_directory(path.parent_path());
      } catch (const Error& e) {
        error = e.what();
      }
    } else {
      std::error_code ignored;
      std::filesystem::remove(tmp, ignored);
    }
    failed = error.empty() ? 0 : 1;
  }
  group->broadcast(std::span<std::int32_t>(&failed, 1), 0);
  if (failed) TP_THROW(IoError, "{}: {}", file, group->rank() == 0 ? error : "rank 0 could not finish the file");
}

}  // namespace tp
