#pragma once
/// Gradient clipping by global norm (torch.nn.utils.clip_grad_norm_, Megatron's clip_grad_norm)
/// over sharded parameters: each sharded gradient contributes its own elements, a replicated one
/// (the same on every rank, or on the ranks sharing a GQA kv head: Parameter::copy) is counted once, and one all-reduce gives every rank the norm of the
/// full model's gradient, so all ranks scale by the same factor at any TP degree.

#include <cmath>
#include <span>
#include <vector>

#include "tp/core/context.hpp"
#include "tp/core/parameter.hpp"
#include "tp/core/tensor.hpp"
#include "tp/ops/reduce.hpp"

namespace tp {

/// The L2 norm of all gradients, as if unsharded. Collective over the context's communicator.
template <class T, class Device>
double grad_norm(const Context<Device>& ctx, std::span<const Parameter<T>> params) {
  double local = 0;
  for (const auto& p : params)
    if (p.sharded() ? p.copy == 0 : ctx.rank() == 0)
      local += tp::ops::sum_squares<T>(*ctx.device, ConstView<T>(p.grad));
  if (ctx.world() > 1) {
    if constexpr (Device::on_host) {
      ctx.comm->all_reduce(std::span<double>(&local, 1), ReduceOp::sum);
    } else {
      // Device communicators (NCCL, LocalCommunicator over device memory) reduce device buffers only.
      Tensor<double, Device> wide(ctx.device, 1, 1);
      ctx.device->from_host(ConstView<double>(&local, 1, 1), wide.view());
      ctx.comm->all_reduce(wide.data(), wide.data(), 1, dtype_of<double>, ReduceOp::sum, ctx.stream());
      ctx.device->to_host(ConstView<double>(wide.view()), MatrixView<double>(&local, 1, 1));
    }
  }
  return std::sqrt(local);
}

/// Scales all gradients by max_norm / norm when the norm exceeds max_norm; returns the norm
/// before clipping (what trainers log).
template <class T, class Device>
double clip_grad_norm(const Context<Device>& ctx, std::span<const Parameter<T>> params, double max_norm) {
  TP_CHECK(max_norm > 0, "clip_grad_norm: max_norm must be positive, got {}", max_norm);
  const double norm = grad_norm(ctx, params);
  if (std::isfinite(norm) && norm > max_norm) {
    const T factor = static_cast<T>(max_norm / (norm + 1e-6));
    for (const auto& p : params) tp::ops::scale(*ctx.device, p.grad, factor);
  }
  return norm;
}

}  // namespace tp
