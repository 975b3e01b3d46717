/// libFuzzer target over the safetensors header parser (tp/io/safetensors_header.hpp: bytes in,
/// parsed header out, no file touched): the input is a whole file (8-byte length,
/// header, data). The parser must either accept it, with every invariant the loaders rely on
/// holding, or throw tp::IoError; any other exception, crash, sanitizer report or timeout is a bug.
/// Built and run by scripts/fuzz.sh (clang with -fsanitize=fuzzer,address,undefined).

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <utility>
#include <vector>

#include "tp/io/safetensors_header.hpp"

namespace {
void check(bool cond, const char* what) {
  if (!cond) {
    std::fprintf(stderr, "invariant broken: %s\n", what);
    std::abort();
  }
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto header = tp::parse_safetensors_header(std::span<const unsigned char>(data, size), size, "fuzz-input");
    check(header.data_start >= 8 && header.data_start <= size, "data section starts inside the file");
    const std::uint64_t data_size = size - header.data_start;
    std::uint64_t previous_end = 0;
    std::vector<std::pair<std::uint64_t, std::uint64_t>> spans;
    for (const auto& [name, t] : header.tensors) {
      check(name == t.name && name != "__metadata__", "tensor names");
      check(t.begin <= t.end && t.end <= data_size, "offsets inside the data section");
      check(t.element_size == 1 || t.element_size == 2 || t.element_size == 4 || t.element_size == 8, "element size");
      std::uint64_t bytes = t.element_size;
      for (auto d : t.shape) {
        check(d >= 0, "non-negative dimensions");
        if (d != 0 && bytes > UINT64_MAX / static_cast<std::uint64_t>(d)) return 0;  // only possible with an empty tensor
        bytes *= static_cast<std::uint64_t>(d);
      }
      check(bytes == t.end - t.begin, "byte count matches the shape");
      if (t.begin != t.end) spans.emplace_back(t.begin, t.end);
    }
    std::sort(spans.begin(), spans.end());
    for (const auto& [b, e] : spans) {
      check(b >= previous_end, "tensors do not overlap");
      previous_end = e;
    }
  } catch (const tp::IoError&) {
    // refusing the input is fine
  }
  return 0;
}
