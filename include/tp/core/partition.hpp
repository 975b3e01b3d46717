#pragma once
/// How a dimension of n is split over ranks: contiguous ranges, the first n % world ranks one
/// larger, so that no padding is ever needed (10 over 3 gives 4, 3, 3).

#include <cstdint>
#include <vector>

#include "tp/core/error.hpp"

namespace tp {

struct Range {
  std::int64_t begin = 0;
  std::int64_t end = 0;
  constexpr std::int64_t size() const { return end - begin; }
  friend constexpr bool operator==(Range, Range) = default;
};

inline Range partition(std::int64_t n, int world, int rank) {
  TP_CHECK(n >= 0 && world > 0 && rank >= 0 && rank < world,
           "cannot partition {} over world size {} at rank {}", n, world, rank);
  const std::int64_t base = n / world, extra = n % world;
  const std::int64_t begin = rank * base + (rank < extra ? rank : extra);
  return {begin, begin + base + (rank < extra ? 1 : 0)};
}

/// Every rank's share of n, in rank order.
inline std::vector<std::int64_t> partition_sizes(std::int64_t n, int world) {
  std::vector<std::int64_t> sizes(world);
  for (int r = 0; r < world; ++r) sizes[r] = partition(n, world, r).size();
  return sizes;
}

/// Like partition, for a dimension a layer splits: every rank must get at least one element.
inline Range partition_nonempty(std::int64_t n, int world, int rank, const char* what) {
  TP_CHECK(n >= world, "{} = {} cannot be split over {} ranks: every rank needs at least one", what, n,
           world);
  return partition(n, world, rank);
}

}  // namespace tp
