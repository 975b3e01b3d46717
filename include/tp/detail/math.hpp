#pragma once
/// The formulas of the ops, written once and called by the CPU loops (device/cpu/) and the CUDA
/// kernels (device/cuda/) alike. `A` is the type the arithmetic runs in: double on the CPU where it
/// computes wider than T, the kernels' accumulation type (float for 16-bit data) on the GPU.

#include <cmath>
#include <cstdint>

#include "tp/core/host_device.hpp"
#include "tp/core/ops.hpp"

namespace tp::math {

/// libm on the host, CUDA's overloads on the device (std:: is not callable from device code).
#ifdef __CUDA_ARCH__
template <class A>
__device__ inline A exp(A x) {
  return ::exp(x);
}
template <class A>
__device__ inline A erfc(A x) {
  return ::erfc(x);
}
template <class A>
__device__ inline A sqrt(A x) {
  return ::sqrt(x);
}
template <class A>
__device__ inline A log(A x) {
  return ::log(x);
}
#else
template <class A>
inline A exp(A x) {
  return std::exp(x);
}
template <class A>
inline A erfc(A x) {
  return std::erfc(x);
}
template <class A>
inline A sqrt(A x) {
  return std::sqrt(x);
}
template <class A>
inline A log(A x) {
  return std::log(x);
}
#endif

/// pow, sin and cos in double on the host and the device alike (RoPE's angles).
TP_HOST_DEVICE double pow_d(double x, double y) {
#ifdef __CUDA_ARCH__
  return ::pow(x, y);
#else
  return std::pow(x, y);
#endif
}
TP_HOST_DEVICE void sincos_d(double x, double& s, double& c) {
#ifdef __CUDA_ARCH__
  ::sincos(x, &s, &c);
#else
  s = std::sin(x);
  c = std::cos(x);
#endif
}

template <class A>
TP_HOST_DEVICE A sigmoid(A x) {
  return A(1) / (A(1) + math::exp(-x));
}

/// GELU in forms without cancellation: 1 + erf(z) and 1 + tanh(u) lose every digit for negative x
/// (1 + tanh(-3) = 0.0037, so one float ulp of tanh is a 1e-5 error); erfc(-z) and 2 sigmoid(2u)
/// do not.
template <class A>
TP_HOST_DEVICE A gelu_value(A x, Gelu kind) {
  if (kind == Gelu::exact) return A(0.5) * x * math::erfc(-x * A(0.70710678118654752));
  const A u = A(0.79788456080286536) * (x + A(0.044715) * x * x * x);
  return x / (A(1) + math::exp(A(-2) * u));
}

/// d gelu(x) / dx in the same stable forms: Phi(x) + x phi(x), or s + 2 x s (1 - s) u' with
/// s = sigmoid(2u).
template <class A>
TP_HOST_DEVICE A gelu_slope(A x, Gelu kind) {
  if (kind == Gelu::exact)
    return A(0.5) * math::erfc(-x * A(0.70710678118654752)) + x * A(0.39894228040143268) * math::exp(A(-0.5) * x * x);
  const A k = A(0.79788456080286536), u = k * (x + A(0.044715) * x * x * x), s = A(1) / (A(1) + math::exp(A(-2) * u));
  return s + A(2) * x * s * (A(1) - s) * k * (A(1) + A(3 * 0.044715) * x * x);
}

/// SwiGLU of one (gate, up) pair: silu(gate) * up.
template <class A>
TP_HOST_DEVICE A swiglu_value(A gate, A up) {
  return gate * math::sigmoid(gate) * up;
}

/// The gradients of swiglu_value given dy: d gate = dy up silu'(gate), d up = dy silu(gate).
template <class A>
TP_HOST_DEVICE void swiglu_grad(A gate, A up, A dy, A& d_gate, A& d_up) {
  const A s = math::sigmoid(gate);
  d_gate = dy * up * (s + gate * s * (A(1) - s));
  d_up = dy * gate * s;
}

/// The constants of one AdamW step (torch.optim.AdamW, decoupled weight decay), computed on the
/// host in double and rounded to the type the update runs in.
template <class A>
struct AdamWConstants {
  A decay, beta1, beta2, one_minus_beta1, one_minus_beta2, step_size, inv_sqrt_bc2, eps;
};

template <class A>
AdamWConstants<A> adamw_constants(double lr, double beta1, double beta2, double eps, double weight_decay,
                                  std::int64_t step) {
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(step)),
               bc2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  return {static_cast<A>(1.0 - lr * weight_decay),
          static_cast<A>(beta1),
          static_cast<A>(beta2),
          static_cast<A>(1.0 - beta1),
          static_cast<A>(1.0 - beta2),
          static_cast<A>(lr / bc1),
          static_cast<A>(1.0 / std::sqrt(bc2)),
          static_cast<A>(eps)};
}

/// m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2.
template <class A>
TP_HOST_DEVICE void adamw_moments(const AdamWConstants<A>& k, A grad, A& m, A& v) {
  m = k.beta1 * m + k.one_minus_beta1 * grad;
  v = k.beta2 * v + k.one_minus_beta2 * grad * grad;
}

/// The new parameter from the updated moments (as stored, so a device that rounds them to a
/// 16-bit T reads them back first): p (1 - lr wd) - lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps).
template <class A>
TP_HOST_DEVICE A adamw_param(const AdamWConstants<A>& k, A p, A m, A v) {
  return p * k.decay - k.step_size * m / (math::sqrt(v) * k.inv_sqrt_bc2 + k.eps);
}

/// RoPE's angle for pair i (i < head_dim / 2) at position pos: pos * theta^(-2i / head_dim), in
/// double (Hugging Face's inv_freq = 1 / theta^(arange(0, d, 2) / d)).
TP_HOST_DEVICE double rope_angle(std::int64_t pos, std::int64_t i, std::int64_t head_dim, double theta) {
  return static_cast<double>(pos) * pow_d(theta, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
}

/// Rotates the pair (x[i], x[i + d/2]) by angle (sin, cos) in the rotate-half convention:
/// (a, b) -> (a cos - b sin, b cos + a sin); a negated sin rotates back (the inverse, RoPE's backward).
template <class A>
TP_HOST_DEVICE void rope_rotate(A& a, A& b, A sin, A cos) {
  const A a0 = a, b0 = b;
  a = a0 * cos - b0 * sin;
  b = b0 * cos + a0 * sin;
}

/// LayerNorm's rstd from the sum of squared deviations over n columns (biased variance, as
/// torch.nn.LayerNorm).
TP_HOST_DEVICE double layer_norm_rstd(double sum_sq, double n, double eps) {
  return 1.0 / math::sqrt(sum_sq / n + eps);
}

/// LayerNorm's input gradient of one element: rstd (d - mean(d) - xhat mean(d xhat)), d = dy gamma.
TP_HOST_DEVICE double layer_norm_dx(double rstd, double d, double xhat, double sum_d, double sum_dxhat, double n) {
  return rstd * (d - sum_d / n - xhat * sum_dxhat / n);
}

/// RMSNorm's rstd from the sum of squares over n columns: 1 / sqrt(mean(x^2) + eps) (Llama's
/// LlamaRMSNorm; no mean is subtracted).
TP_HOST_DEVICE double rms_norm_rstd(double sum_sq, double n, double eps) {
  return 1.0 / math::sqrt(sum_sq / n + eps);
}

/// RMSNorm's input gradient of one element: rstd (d - xhat mean(d xhat)), d = dy gamma, xhat = x
/// rstd (LayerNorm's formula without the mean term, since no mean was subtracted).
TP_HOST_DEVICE double rms_norm_dx(double rstd, double d, double xhat, double sum_dxhat, double n) {
  return rstd * (d - xhat * sum_dxhat / n);
}

/// One token's cross-entropy from the statistics summed over the vocabulary shards ({sum exp(x - m),
/// x_target - m, sum (x - m)}): (1 - s) (lse - x_target) + s (lse - mean_j x_j).
TP_HOST_DEVICE double cross_entropy_token_loss(double sum_exp, double target_shifted, double sum_shifted,
                                               std::int64_t vocab, double smoothing) {
  const double log_sum = math::log(sum_exp), nll = log_sum - target_shifted;
  return smoothing == 0 ? nll
                        : (1 - smoothing) * nll + smoothing * (log_sum - sum_shifted / static_cast<double>(vocab));
}

/// d loss / d logit of one element from its softmax probability p: g (p - s / vocab - (1 - s) [j ==
/// target]), with `uniform` = s / vocab and `on_target` = 1 - s where j is the target, else 0.
TP_HOST_DEVICE double cross_entropy_dlogit(double grad_loss, double p, double uniform, double on_target) {
  return grad_loss * (p - uniform - on_target);
}

}  // namespace tp::math
