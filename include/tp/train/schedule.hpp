#pragma once
/// Learning-rate schedules as pure functions of the step, so a resumed run follows the same one.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>

#include "tp/core/error.hpp"

namespace tp {

/// Megatron's --lr-warmup-iters / --lr-decay-style cosine: linear warmup over `warmup` steps,
/// then cosine decay from lr to min_lr at `steps`, min_lr after.
struct CosineSchedule {
  double lr = 3e-4, min_lr = 3e-5;
  std::int64_t warmup = 0, steps = 1;

  void validate() const {
    TP_CHECK(std::isfinite(lr) && lr >= 0 && std::isfinite(min_lr) && min_lr >= 0,
             "CosineSchedule: lr {} and min_lr {} must be finite and >= 0", lr, min_lr);
    TP_CHECK(warmup >= 0 && steps > 0, "CosineSchedule: warmup {} must be >= 0 and steps {} positive", warmup, steps);
  }

  /// The learning rate of step `step` (0-based).
  double operator()(std::int64_t step) const {
    if (step < warmup) return lr * static_cast<double>(step + 1) / static_cast<double>(warmup);
    if (step >= steps) return min_lr;
    const double progress =
        static_cast<double>(step - warmup) / static_cast<double>(std::max<std::int64_t>(1, steps - warmup));
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(std::numbers::pi * progress));
  }
};

}  // namespace tp
