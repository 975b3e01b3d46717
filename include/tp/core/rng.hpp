#pragma once
/// Counter-based random numbers (Philox-4x32-10, Salmon et al., SC'11): the value at a global
/// element index depends only on (seed, key, index), so every rank can generate exactly its
/// shard of a full matrix, and the gathered weights are bitwise the same at any TP degree.

#include <array>
#include <cmath>
#include <cstdint>
#include <string_view>

namespace tp {

class Philox {
 public:
  using Block = std::array<std::uint32_t, 4>;

  constexpr Philox(std::uint64_t seed, std::uint64_t key) : seed_(seed), key_(key) {}

  /// Four random words for counter `n`.
  constexpr Block operator()(std::uint64_t n) const {
    Block c{static_cast<std::uint32_t>(n), static_cast<std::uint32_t>(n >> 32), static_cast<std::uint32_t>(key_),
            static_cast<std::uint32_t>(key_ >> 32)};
    std::uint32_t k0 = static_cast<std::uint32_t>(seed_), k1 = static_cast<std::uint32_t>(seed_ >> 32);
    for (int round = 0; round < 10; ++round) {
      const std::uint64_t p0 = std::uint64_t{0xD2511F53} * c[0], p1 = std::uint64_t{0xCD9E8D57} * c[2];
      c = {static_cast<std::uint32_t>(p1 >> 32) ^ c[1] ^ k0, static_cast<std::uint32_t>(p1),
           static_cast<std::uint32_t>(p0 >> 32) ^ c[3] ^ k1, static_cast<std::uint32_t>(p0)};
      k0 += 0x9E3779B9;
      k1 += 0xBB67AE85;
    }
    return c;
  }

  /// Uniform in [0, 1), 24 bits, for element `index`.
  constexpr float uniform(std::uint64_t index) const { return static_cast<float>((*this)(index)[0] >> 8) * 0x1p-24f; }

  /// Standard normal for element `index` (Box-Muller over one counter block).
  float normal(std::uint64_t index) const {
    const Block b = (*this)(index);
    const double u1 = (static_cast<double>(b[0] >> 8) + 1.0) * 0x1p-24, u2 = static_cast<double>(b[1] >> 8) * 0x1p-24;
    return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
  }

 private:
  std::uint64_t seed_, key_;
};

/// FNV-1a of a parameter name: the key that separates the streams of different parameters.
constexpr std::uint64_t name_key(std::string_view name) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (char ch : name) h = (h ^ static_cast<unsigned char>(ch)) * 0x100000001b3ull;
  return h;
}

}  // namespace tp
