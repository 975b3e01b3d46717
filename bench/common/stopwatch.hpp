#pragma once
/// Wall-clock timing helpers the benchmark programs share: seconds since a time point, and the
/// median of a set of timings.

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <vector>

namespace tp::bench {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

/// The middle value (the upper one of an even count); 0 for none. Takes a copy to sort.
inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  const auto middle = v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2);
  std::nth_element(v.begin(), middle, v.end());
  return *middle;
}

}  // namespace tp::bench
