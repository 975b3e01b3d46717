#pragma once
/// Dynamic loss scaling (Megatron's DynamicGradScaler, torch.amp.GradScaler) for f16 training:
/// the loss gradient is multiplied by `scale` so that small gradients survive f16's range, the main
/// gradients are divided by it after the reduction, and a step whose gradients hold an inf or a
/// NaN is skipped and the scale multiplied by `backoff`; after `growth_interval` clean steps in a
/// row the scale is multiplied by `growth`.

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "tp/core/error.hpp"

namespace tp {

struct LossScalerOptions {
  double initial_scale = 65536.0;
  double growth = 2.0, backoff = 0.5;
  std::int64_t growth_interval = 1000;
  double min_scale = 1.0;
};

class DynamicLossScaler {
 public:
  explicit DynamicLossScaler(LossScalerOptions o = {}) : o_(o), scale_(o.initial_scale) {
    TP_CHECK(std::isfinite(o.initial_scale) && o.initial_scale > 0,
             "DynamicLossScaler: initial_scale {} must be finite and > 0", o.initial_scale);
    TP_CHECK(std::isfinite(o.growth) && o.growth >= 1, "DynamicLossScaler: growth {} must be finite and >= 1", o.growth);
    TP_CHECK(o.backoff > 0 && o.backoff < 1, "DynamicLossScaler: backoff {} must lie in (0, 1)", o.backoff);
    TP_CHECK(o.growth_interval > 0, "DynamicLossScaler: growth_interval {} must be > 0", o.growth_interval);
    TP_CHECK(std::isfinite(o.min_scale) && o.min_scale > 0 && o.min_scale <= o.initial_scale,
             "DynamicLossScaler: min_scale {} must be finite, > 0 and at most initial_scale {}", o.min_scale,
             o.initial_scale);
  }
  double scale() const { return scale_; }
  /// Sets the scale (a resumed run's); finite and > 0, below min_scale raised to it.
  void set_scale(double s) {
    TP_CHECK(std::isfinite(s) && s > 0, "DynamicLossScaler: a loss scale must be finite and > 0, got {}", s);
    scale_ = std::max(o_.min_scale, s);
  }
  /// Clean steps in a row since the last growth or overflow (a checkpoint keeps it, so that a
  /// resumed run grows its scale at the same step as the uninterrupted one).
  std::int64_t clean_steps() const { return clean_; }
  void set_clean_steps(std::int64_t n) {
    TP_CHECK(n >= 0 && n < o_.growth_interval, "DynamicLossScaler: {} clean steps: expected 0 to growth_interval {} - 1",
             n, o_.growth_interval);
    clean_ = n;
  }
  const LossScalerOptions& options() const { return o_; }
  /// After each step: whether its gradients were finite. Returns whether the step may be applied.
  bool update(bool finite) {
    if (!finite) {
      scale_ = std::max(o_.min_scale, scale_ * o_.backoff);
      clean_ = 0;
      return false;
    }
    if (++clean_ >= o_.growth_interval) {
      scale_ *= o_.growth;
      clean_ = 0;
    }
    return true;
  }

 private:
  LossScalerOptions o_;
  double scale_;
  std::int64_t clean_ = 0;
};

}  // namespace tp
