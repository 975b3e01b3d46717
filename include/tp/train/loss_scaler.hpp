#pragma once
/// Dynamic loss scaling (Megatron's DynamicGradScaler, torch.amp.GradScaler) for f16 training:
/// the loss gradient is multiplied by `scale` so that small gradients survive f16's range, the main
/// gradients are divided by it after the reduction, and a step whose gradients hold an inf or a
/// NaN is skipped and the scale multiplied by `backoff`; after `growth_interval` clean steps in a
/// row the scale is multiplied by `growth`.

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
    TP_CHECK(std::isfinite(o.initial_scale) && o.initial_scale > 0 && o.growth >= 1 && o.backoff > 0 &&
                 o.backoff < 1 && o.growth_interval > 0 && o.min_scale > 0,
             "DynamicLossScaler: initial_scale {} > 0, growth {} >= 1, backoff {} in (0, 1), growth_interval {} > 0, "
             "min_scale {} > 0",
             o.initial_scale, o.growth, o.backoff, o.growth_interval, o.min_scale);
  }
  double scale() const { return scale_; }
  void set_scale(double s) { scale_ = s; }
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
