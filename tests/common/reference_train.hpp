#pragma once
/// Unsharded double-precision references for training: AdamW, LayerNorm and RMSNorm as plain loops.

#include <cmath>
#include <cstdint>

#include "common/reference.hpp"

namespace tp::ref {

struct AdamWState {
  Matrix m, v;
  std::int64_t step = 0;
};

/// torch.optim.AdamW's update, written out.
inline void adamw_step(Matrix& p, const Matrix& g, AdamWState& s, double lr, double beta1, double beta2, double eps,
                       double weight_decay) {
  if (s.m.data.empty()) s.m = s.v = Matrix(p.rows, p.cols);
  ++s.step;
  const double bc1 = 1 - std::pow(beta1, double(s.step)), bc2 = 1 - std::pow(beta2, double(s.step));
  for (std::size_t i = 0; i < p.data.size(); ++i) {
    p.data[i] *= 1 - lr * weight_decay;
    s.m.data[i] = beta1 * s.m.data[i] + (1 - beta1) * g.data[i];
    s.v.data[i] = beta2 * s.v.data[i] + (1 - beta2) * g.data[i] * g.data[i];
    const double m_hat = s.m.data[i] / bc1, v_hat = s.v.data[i] / bc2;
    p.data[i] -= lr * m_hat / (std::sqrt(v_hat) + eps);
  }
}

struct LayerNormResult {
  Matrix y, dx, dgamma, dbeta;
};

/// torch.nn.LayerNorm's forward and backward, the backward by differentiating the forward's
/// formula term by term (not by the compact formula the device uses).
inline LayerNormResult layer_norm(const Matrix& x, const Matrix& gamma, const Matrix& beta, const Matrix& dy, double eps) {
  const std::int64_t n = x.cols;
  LayerNormResult out{Matrix(x.rows, n), Matrix(x.rows, n), Matrix(1, n), Matrix(1, n)};
  for (std::int64_t r = 0; r < x.rows; ++r) {
    double mu = 0, var = 0;
    for (std::int64_t c = 0; c < n; ++c) mu += x(r, c) / double(n);
    for (std::int64_t c = 0; c < n; ++c) var += (x(r, c) - mu) * (x(r, c) - mu) / double(n);
    const double s = std::sqrt(var + eps);
    for (std::int64_t c = 0; c < n; ++c) {
      const double xhat = (x(r, c) - mu) / s;
      out.y(r, c) = xhat * gamma(0, c) + beta(0, c);
      out.dgamma(0, c) += dy(r, c) * xhat;
      out.dbeta(0, c) += dy(r, c);
    }
    // y_c = gamma_c (x_c - mu) / s: dy_c/dx_k = gamma_c [(delta_ck - 1/n) / s - (x_c - mu)(x_k - mu) / (n s^3)]
    for (std::int64_t k = 0; k < n; ++k) {
      double acc = 0;
      for (std::int64_t c = 0; c < n; ++c) {
        const double jac = gamma(0, c) * (((c == k ? 1.0 : 0.0) - 1.0 / double(n)) / s -
                                          (x(r, c) - mu) * (x(r, k) - mu) / (double(n) * s * s * s));
        acc += dy(r, c) * jac;
      }
      out.dx(r, k) = acc;
    }
  }
  return out;
}

struct RmsNormResult {
  Matrix y, dx, dgamma;
};

/// Llama's RMSNorm (y = x / sqrt(mean(x^2) + eps) * gamma) and its backward, the backward by
/// differentiating the forward's formula term by term, as layer_norm above.
inline RmsNormResult rms_norm(const Matrix& x, const Matrix& gamma, const Matrix& dy, double eps) {
  const std::int64_t n = x.cols;
  RmsNormResult out{Matrix(x.rows, n), Matrix(x.rows, n), Matrix(1, n)};
  for (std::int64_t r = 0; r < x.rows; ++r) {
    double ms = 0;
    for (std::int64_t c = 0; c < n; ++c) ms += x(r, c) * x(r, c) / double(n);
    const double s = std::sqrt(ms + eps);
    for (std::int64_t c = 0; c < n; ++c) {
      out.y(r, c) = x(r, c) / s * gamma(0, c);
      out.dgamma(0, c) += dy(r, c) * x(r, c) / s;
    }
    // y_c = gamma_c x_c / s, ds/dx_k = x_k / (n s): dy_c/dx_k = gamma_c [delta_ck / s - x_c x_k / (n s^3)]
    for (std::int64_t k = 0; k < n; ++k) {
      double acc = 0;
      for (std::int64_t c = 0; c < n; ++c)
        acc += dy(r, c) * gamma(0, c) * ((c == k ? 1.0 : 0.0) / s - x(r, c) * x(r, k) / (double(n) * s * s * s));
      out.dx(r, k) = acc;
    }
  }
  return out;
}

}  // namespace tp::ref
