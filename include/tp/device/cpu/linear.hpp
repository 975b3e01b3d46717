#pragma once
/// The CPU side of tp/ops/linear.hpp: a linear layer's forward and backward (streaming kernels for
/// few tokens, GEMMs otherwise), bias add and its gradient, and the fused-GEMM epilogues as a
/// Cpu::gemm followed by the element-wise step (the GELU ones are the tanh approximation, as in
/// cuBLASLt), and the forward on a packed weight (tp/device/cpu/packed_weight.hpp).

#include <algorithm>
#include <cstdint>
#include <vector>

#include "tp/detail/math.hpp"
#include "tp/device/cpu/cpu.hpp"
#include "tp/device/cpu/packed_weight.hpp"
#include "tp/device/cpu/streaming_linear.hpp"

namespace tp::impl {

/// An empty bias adds nothing.
template <class T>
void add_bias(const Cpu&, MatrixView<T> y, ConstView<T> bias) {
  if (bias.empty()) return;
  for (std::int64_t r = 0; r < y.rows; ++r) {
    T* yr = y.row(r);
    for (std::int64_t c = 0; c < y.cols; ++c) yr[c] += bias.data[c];
  }
}

/// Summed over the rows (tokens) in accum_t<T>: float for the 16-bit types, which would stop
/// growing after a few hundred rows of their own additions.
template <class T>
void add_bias_grad(const Cpu&, ConstView<T> dy, MatrixView<T> db) {
  std::vector<accum_t<T>> sum(db.data, db.data + dy.cols);
  for (std::int64_t r = 0; r < dy.rows; ++r) {
    const T* g = dy.row(r);
    for (std::int64_t c = 0; c < dy.cols; ++c) sum[c] += g[c];
  }
  std::copy(sum.begin(), sum.end(), db.data);
}

template <class T>
void gemm_bias(const Cpu& dev, Op op_a, Op op_b, T alpha, ConstView<T> a, ConstView<T> b, T beta, MatrixView<T> c,
               ConstView<T> bias) {
  dev.gemm<T>(op_a, op_b, alpha, a, b, beta, c);
  add_bias(dev, c, bias);
}

template <class T>
void gemm_epilogue(const Cpu& dev, Op op_a, Op op_b, T alpha, ConstView<T> a, ConstView<T> b, T beta, MatrixView<T> c,
                   const EpilogueArgs<T>& e) {
  dev.gemm<T>(op_a, op_b, alpha, a, b, beta, c);
  const ConstView<T> bias(static_cast<const T*>(e.bias), 1, c.cols);
  switch (e.kind) {
    case Epilogue::none:
      return;
    case Epilogue::bias:
      return add_bias(dev, c, bias);
    case Epilogue::gelu:
    case Epilogue::gelu_bias:
    case Epilogue::gelu_aux_bias:
      if (e.kind != Epilogue::gelu) add_bias(dev, c, bias);
      if (e.kind == Epilogue::gelu_aux_bias) dev.copy<T>(c, e.aux);
      for (std::int64_t r = 0; r < c.rows; ++r)
        for (std::int64_t j = 0; j < c.cols; ++j)
          c(r, j) = static_cast<T>(math::gelu_value<double>(c(r, j), Gelu::tanh));
      return;
    case Epilogue::dgelu:
    case Epilogue::dgelu_bgrad:
      for (std::int64_t r = 0; r < c.rows; ++r)
        for (std::int64_t j = 0; j < c.cols; ++j)
          c(r, j) = static_cast<T>(c(r, j) * math::gelu_slope<double>(e.aux(r, j), Gelu::tanh));
      if (e.kind == Epilogue::dgelu_bgrad) {
        for (std::int64_t j = 0; j < c.cols; ++j) e.bias_grad[j] = T(0);
        add_bias_grad(dev, ConstView<T>(c), MatrixView<T>(e.bias_grad, 1, c.cols));
      }
      return;
    case Epilogue::bgrad_a: {
      const std::int64_t m = c.rows, k = op_a == Op::n ? a.cols : a.rows;
      for (std::int64_t i = 0; i < m; ++i) {
        accum_t<T> sum = 0;
        for (std::int64_t j = 0; j < k; ++j) sum += op_a == Op::n ? a(i, j) : a(j, i);
        e.bias_grad[i] = static_cast<T>(sum);
      }
      return;
    }
  }
}

/// The streaming kernels are float and double only; the 16-bit types always run as GEMMs.
template <class T>
void linear_forward(const Cpu& dev, ConstView<T> x, ConstView<T> w, ConstView<T> bias, MatrixView<T> y) {
  if constexpr (!is_float16_v<T>) {
    if (dev.streaming_linear() && x.rows >= 1 && x.rows <= detail::streaming_forward_max_tokens() && x.cols > 0) {
      detail::streaming_linear_forward<T>(x, w, T(0), y, dev.threads());
      add_bias(dev, y, bias);
      return;
    }
  }
  gemm_bias(dev, Op::n, Op::t, T(1), x, w, T(0), y, bias);
}

template <class T>
PackedWeight<T, Cpu> pack_weight(const std::shared_ptr<Cpu>& device, ConstView<T> w) {
  return PackedWeight<T, Cpu>(device, w);
}

/// The prefill (more tokens than the streaming kernels take) on the packed weight; fewer tokens
/// (decode) stay on linear_forward's path over the plain weight.
template <class T>
void linear_forward_packed(const Cpu& dev, ConstView<T> x, ConstView<T> w, const PackedWeight<T, Cpu>& packed,
                           ConstView<T> bias, MatrixView<T> y) {
  using Form = typename PackedWeight<T, Cpu>::Form;
  if (x.rows <= detail::streaming_forward_max_tokens()) return linear_forward(dev, x, w, bias, y);
  if (packed.form() == Form::transposed)
    return gemm_bias(dev, Op::n, Op::n, T(1), x, packed.transposed(), T(0), y, bias);
  if (!packed.run_onednn(dev, x, bias, y)) gemm_bias(dev, Op::n, Op::t, T(1), x, w, T(0), y, bias);
}

template <class T>
void linear_backward(const Cpu& dev, ConstView<T> dy, ConstView<T> x, ConstView<T> w, T beta_dx, MatrixView<T> dx,
                     T beta_dw, MatrixView<T> dw) {
  if constexpr (!is_float16_v<T>) {
    if (dev.streaming_linear() && dy.rows >= 1 && dy.rows <= detail::streaming_backward_max_tokens() && x.cols > 0 &&
        w.rows > 0)
      return detail::streaming_linear_backward<T>(dy, x, w, beta_dx, dx, beta_dw, dw, dev.threads());
  }
  dev.gemm<T>(Op::n, Op::n, T(1), dy, w, beta_dx, dx);
  dev.gemm<T>(Op::t, Op::n, T(1), dy, x, beta_dw, dw);
}

}  // namespace tp::impl
