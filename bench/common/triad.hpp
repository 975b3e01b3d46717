#pragma once
/// STREAM's triad (a = b + s c, 3 x 4 bytes per element) on this rank's arrays, started by every
/// rank at once (a barrier first), as the ranks decode: the memory-bandwidth limit of
/// tp_bench_decode and tp_bench_decode_parts.

#include <tp/comm/communicator.hpp>

#include <chrono>
#include <cstdint>
#include <vector>

namespace tp::bench {

class Triad {
 public:
  explicit Triad(std::int64_t bytes_per_array)
      : n_(static_cast<std::size_t>(bytes_per_array / 4)), a_(n_, 0.0f), b_(n_, 1.0f), c_(n_, 2.0f) {}

  /// This rank's bandwidth in bytes/s for one pass (the caller sums over ranks).
  double run(Communicator& comm) {
    comm.barrier();
    const auto t0 = std::chrono::steady_clock::now();
    const float s = 0.5f + static_cast<float>(++passes_);
    for (std::size_t i = 0; i < n_; ++i) a_[i] = b_[i] + s * c_[i];
    const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    volatile float sink = a_[n_ / 2];
    (void)sink;
    return 3.0 * 4.0 * static_cast<double>(n_) / t;
  }

 private:
  std::size_t n_;
  std::vector<float> a_, b_, c_;
  int passes_ = 0;
};

}  // namespace tp::bench
