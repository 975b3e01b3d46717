/// libFuzzer target over tp's safetensors readers. The input is used three ways:
///  - as a whole file's bytes (8-byte length, header, data) for the header parser
///    (tp/io/safetensors_header.hpp, no file touched), checking every invariant the loaders rely on
///    and every accessor of each tensor (rows, cols, numel);
///  - as a file on disk for SafetensorsFile and SafetensorsCheckpoint (tp/io/safetensors.hpp):
///    every tensor read whole into float, double and (with the conversion allowed) int32, and a
///    column block, each compared with the parser's offsets;
///  - as the text of a Hugging Face index for parse_safetensors_index and for a checkpoint opened
///    through it (its weight_map may name "x.safetensors", the same input on disk).
/// Each must either accept the input with the invariants holding or throw tp::IoError; any other
/// exception, crash, sanitizer report or timeout is a bug. Built and run by scripts/fuzz.sh (clang
/// with -fsanitize=fuzzer,address,undefined), at small and at large input sizes.

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "tp/io/safetensors.hpp"

namespace {

void check(bool cond, const char* what) {
  if (!cond) {
    std::fprintf(stderr, "invariant broken: %s\n", what);
    std::abort();
  }
}

/// A private directory holding the input as x.safetensors and as index.json, rewritten per input.
struct Scratch {
  std::filesystem::path dir, file, index;
  Scratch() {
    char name[] = "/tmp/tp_fuzz_XXXXXX";
    check(::mkdtemp(name) != nullptr, "mkdtemp");
    dir = name;
    file = dir / "x.safetensors";
    index = dir / "index.json";
  }
  static void write(const std::filesystem::path& path, const std::uint8_t* data, std::size_t size) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    check(fd >= 0, "open the scratch file");
    std::size_t done = 0;
    while (done < size) {
      const ssize_t n = ::write(fd, data + done, size - done);
      check(n > 0, "write the scratch file");
      done += static_cast<std::size_t>(n);
    }
    ::close(fd);
  }
};

/// The header's invariants and accessors.
void check_header(const tp::SafetensorsHeader& header, std::size_t size) {
  check(header.data_start >= 8 && header.data_start <= size, "data section starts inside the file");
  const std::uint64_t data_size = size - header.data_start;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> spans;
  for (const auto& [name, t] : header.tensors) {
    check(name == t.name && name != "__metadata__", "tensor names");
    check(t.begin <= t.end && t.end <= data_size, "offsets inside the data section");
    check(t.element_size == 1 || t.element_size == 2 || t.element_size == 4 || t.element_size == 8, "element size");
    std::uint64_t bytes = t.element_size;
    for (auto d : t.shape) {
      check(d >= 0, "non-negative dimensions");
      if (d != 0) check(!__builtin_mul_overflow(bytes, static_cast<std::uint64_t>(d), &bytes), "dimensions fit");
    }
    const std::int64_t rows = t.rows(), cols = t.cols(), numel = t.numel();  // no overflow, no division by zero
    check(rows >= 0 && cols >= 0 && numel >= 0, "non-negative matrix sizes");
    check(static_cast<std::uint64_t>(numel) * t.element_size == t.end - t.begin, "byte count matches the shape");
    if (t.begin != t.end) spans.emplace_back(t.begin, t.end);
  }
  std::sort(spans.begin(), spans.end());
  std::uint64_t previous_end = 0;
  for (const auto& [b, e] : spans) {
    check(b >= previous_end, "tensors do not overlap");
    previous_end = e;
  }
}

/// Reads every tensor of an opened file whole (as float, double and int32) and as a column block.
void read_all(const tp::SafetensorsFile& file, const std::uint8_t* data) {
  const tp::SafetensorsReadOptions convert{.allow_integer_conversion = true};
  check(file.metadata().size() == file.header().metadata.size(), "metadata accessor");
  for (const auto& [name, t] : file.header().tensors) {
    check(file.contains(name) && &file.tensor(name) == &t, "tensor lookup");
    const std::int64_t rows = t.rows(), cols = t.cols();
    std::vector<float> f(static_cast<std::size_t>(t.numel()) + 1);
    std::vector<double> d(f.size());
    std::vector<std::int32_t> i(f.size());
    try {
      file.read_block(name, 0, 0, tp::MatrixView<float>(f.data(), rows, cols));
      check(!tp::detail::safetensors_integer_dtype(t.dtype), "integers refused into float by default");
      if (t.dtype == "F32")
        check(std::memcmp(f.data(), data + file.header().data_start + t.begin, t.end - t.begin) == 0, "F32 read back");
    } catch (const tp::IoError&) {
      check(tp::detail::safetensors_integer_dtype(t.dtype) || t.dtype.starts_with("F8"), "only integers refused");
    }
    try {
      file.read_block(name, 0, 0, tp::MatrixView<double>(d.data(), rows, cols), convert);
    } catch (const tp::IoError&) {
      check(t.dtype.starts_with("F8"), "every dtype but F8 converts to double when asked");
    }
    try {
      file.read_block(name, 0, 0, tp::MatrixView<std::int32_t>(i.data(), rows, cols), convert);
    } catch (const tp::IoError&) {
      // Floats, and integers wider than int32, may hold values outside int32: refused, not wrapped.
      const bool always_fits = t.dtype == "BOOL" || t.dtype == "U8" || t.dtype == "I8" || t.dtype == "U16" ||
                               t.dtype == "I16" || t.dtype == "I32";
      check(!always_fits, "small integer dtypes convert to int32");
    }
    if (rows > 0 && cols > 1) {  // the last rows' trailing columns: one read per row
      const std::int64_t r0 = rows / 2, c0 = cols / 2;
      try {
        file.read_block(name, r0, c0, tp::MatrixView<float>(f.data(), rows - r0, cols - c0), convert);
      } catch (const tp::IoError&) {
        check(t.dtype.starts_with("F8"), "column blocks read");
      }
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static Scratch scratch;
  bool parsed = false;
  try {
    const auto header = tp::parse_safetensors_header(std::span<const unsigned char>(data, size), size, "fuzz-input");
    check_header(header, size);
    parsed = true;
  } catch (const tp::IoError&) {
    // refusing the input is fine
  }
  Scratch::write(scratch.file, data, size);
  bool opened = false;
  try {
    const tp::SafetensorsCheckpoint checkpoint(scratch.file);
    opened = true;
    for (const auto& name : {"w", "x", ""})
      check(checkpoint.contains(name) == checkpoint.file_of(name).contains(name), "lookup");
  } catch (const tp::IoError&) {
  }
  check(opened == parsed, "the file reader accepts what the parser accepts, and only that");
  if (parsed) {
    const tp::SafetensorsFile file(scratch.file);
    read_all(file, data);
  }
  // The same bytes as an index.
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const auto weight_map = tp::parse_safetensors_index(text, "fuzz-index");
    for (const auto& [name, rel] : weight_map)
      check(!rel.empty() && rel.front() != '/' && rel.find("..") == std::string::npos, "index names files beside it");
    Scratch::write(scratch.index, data, size);
    const tp::SafetensorsCheckpoint checkpoint(scratch.index);
    for (const auto& [name, rel] : weight_map) check(checkpoint.file_of(name).contains(name), "index lookups");
  } catch (const tp::IoError&) {
  }
  return 0;
}
