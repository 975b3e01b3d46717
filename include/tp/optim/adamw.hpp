#pragma once
/// AdamW (Loshchilov & Hutter; PyTorch's torch.optim.AdamW) over the parameter shards a rank
/// holds. Its state (first and second moments) is kept per shard, next to the parameter, so the
/// optimizer never communicates: the update is element-wise, and a sharded element sees the same
/// gradient as at world size 1, so training at TP 1, 2 and 4 agrees step by step up to the float
/// rounding of the gradients themselves (which the GEMM splits change).
///
/// Replicated parameters (biases of row-parallel layers, layer norms) are updated on every rank
/// with the same gradient and stay identical. The moments are exposed as Parameters named
/// "adamw.exp_avg.<name>" and "adamw.exp_avg_sq.<name>" with the parameter's block, so a resume
/// checkpoint (tp/io/resume.hpp) saves them whole and reloads them at another world size.

#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tp/core/context.hpp"
#include "tp/core/parameter.hpp"
#include "tp/core/tensor.hpp"
#include "tp/ops/adamw.hpp"

namespace tp {

struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.01;
  /// Apply weight decay to the parameters whose `weight_decay` flag is false (biases, norm weights)
  /// too. Megatron and nanoGPT decay only weight matrices and embeddings, the default here.
  bool decay_vectors = false;
};

template <class T, class Device = Cpu>
class AdamW {
 public:
  using Options = AdamWOptions;

  AdamW(Context<Device> ctx, std::vector<Parameter<T>> params, Options options = {})
      : ctx_(std::move(ctx)), params_(std::move(params)), options_(options) {
    // Each bound written so that NaN fails it too; an infinite lr, eps or weight_decay turns every
    // parameter into NaN or zero at the first step.
    TP_CHECK(std::isfinite(options.lr) && options.lr >= 0, "AdamW: lr must be finite and >= 0, got {}", options.lr);
    TP_CHECK(std::isfinite(options.eps) && options.eps > 0, "AdamW: eps must be finite and > 0, got {}", options.eps);
    TP_CHECK(std::isfinite(options.weight_decay) && options.weight_decay >= 0,
             "AdamW: weight_decay must be finite and >= 0, got {}", options.weight_decay);
    TP_CHECK(options.beta1 >= 0 && options.beta1 < 1 && options.beta2 >= 0 && options.beta2 < 1,
             "AdamW: betas must be in [0, 1), got ({}, {})", options.beta1, options.beta2);
    for (const auto& p : params_) {
      TP_CHECK(p.value.rows == p.grad.rows && p.value.cols == p.grad.cols,
               "AdamW: parameter '{}' is {}x{} but its gradient {}x{}", p.name, p.value.rows, p.value.cols,
               p.grad.rows, p.grad.cols);
      auto& m = exp_avg_.emplace_back(ctx_.device, p.value.rows, p.value.cols);
      auto& v = exp_avg_sq_.emplace_back(ctx_.device, p.value.rows, p.value.cols);
      ctx_.device->fill(m.view(), T(0));
      ctx_.device->fill(v.view(), T(0));
    }
  }

  /// Updates every parameter from its gradient and advances the step count.
  void step() {
    ++step_;
    for (std::size_t i = 0; i < params_.size(); ++i) {
      const Parameter<T>& p = params_[i];
      const bool decay = options_.decay_vectors || p.weight_decay;
      tp::ops::adamw_step(*ctx_.device, p.value, ConstView<T>(p.grad), exp_avg_[i].view(), exp_avg_sq_[i].view(),
                          options_.lr, options_.beta1, options_.beta2, options_.eps,
                          decay ? options_.weight_decay : 0.0, step_);
    }
  }

  void zero_grad() {
    for (const auto& p : params_) ctx_.device->fill(p.grad, T(0));
  }

  /// The learning rate, settable every step for a schedule.
  double lr() const { return options_.lr; }
  void set_lr(double lr) {
    TP_CHECK(std::isfinite(lr) && lr >= 0, "AdamW: learning rate must be finite and >= 0, got {}", lr);
    options_.lr = lr;
  }
  /// Steps taken so far; restored by a resume.
  std::int64_t step_count() const { return step_; }
  void set_step_count(std::int64_t step) {
    TP_CHECK(step >= 0, "AdamW: step count {} is negative", step);
    step_ = step;
  }
  const Options& options() const { return options_; }
  const std::vector<Parameter<T>>& parameters() const { return params_; }
  const Context<Device>& context() const { return ctx_; }

  /// The moments as parameters (no gradient) with the blocks of the parameters they belong to.
  std::vector<Parameter<T>> state() {
    std::vector<Parameter<T>> out;
    // Each moment is a copy of its parameter with another name and value, so it keeps the block
    // and `copy` (a replicated GQA kv head's moments are written once, like its weights).
    auto moment = [](const Parameter<T>& p, const char* prefix, MatrixView<T> value) {
      Parameter<T> m = p;
      m.name = prefix + p.name;
      m.value = value;
      m.grad = {};
      return m;
    };
    for (std::size_t i = 0; i < params_.size(); ++i) {
      out.push_back(moment(params_[i], "adamw.exp_avg.", exp_avg_[i].view()));
      out.push_back(moment(params_[i], "adamw.exp_avg_sq.", exp_avg_sq_[i].view()));
    }
    return out;
  }

 private:
  Context<Device> ctx_;
  std::vector<Parameter<T>> params_;
  Options options_;
  std::vector<Tensor<T, Device>> exp_avg_, exp_avg_sq_;
  std::int64_t step_ = 0;
};

}  // namespace tp
