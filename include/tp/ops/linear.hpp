#pragma once
/// A linear layer's products and their element-wise ends: the forward (y = x w^T + bias) and the
/// backward (dx and the weight gradient together), bias add and bias gradient, and GEMMs with a
/// fused epilogue (tp::Cuda runs them inside cuBLASLt; tp::Cpu runs Cpu::gemm, then the
/// element-wise step). tp::Cpu runs the forward and backward of few tokens as streaming kernels
/// (tp/device/cpu/streaming_linear.hpp), the rest as GEMMs; given the weight packed once
/// (pack_weight, the layers' inference mode), the forward of more tokens runs on the packed copy.

#include <cstdint>
#include <memory>

#include "tp/detail/shape_checks.hpp"
#include "tp/device/device.hpp"
#include "tp/device/packed_weight.hpp"
#include "tp/ops/dispatch.hpp"

TP_OPS_DECLARE(add_bias)
TP_OPS_DECLARE(add_bias_grad)
TP_OPS_DECLARE(gemm_bias)
TP_OPS_DECLARE(gemm_epilogue)
TP_OPS_DECLARE(linear_forward)
TP_OPS_DECLARE(linear_backward)
TP_OPS_DECLARE(pack_weight)
TP_OPS_DECLARE(linear_forward_packed)

#ifdef TP_HAS_BLAS
#include "tp/device/cpu/linear.hpp"
#endif
#if defined(TP_HAS_CUDA) && defined(__CUDACC__)
#include "tp/device/cuda/linear.cuh"
#endif

namespace tp::ops {

/// y[r, :] += bias[0, :] for every row r.
template <class T, Device D>
void add_bias(const D& dev, MatrixView<T> y, In<T> bias) {
  TP_CHECK(bias.rows == 1 && bias.cols == y.cols, "add_bias: bias is {}x{}, output has {} columns", bias.rows,
           bias.cols, y.cols);
  if (y.empty()) return;
  TP_OPS_DISPATCH(add_bias, dev, y, bias);
}

/// db[0, :] += sum over rows of dy.
template <class T, Device D>
void add_bias_grad(const D& dev, In<T> dy, MatrixView<T> db) {
  TP_CHECK(db.rows == 1 && db.cols == dy.cols, "add_bias_grad: bias gradient is {}x{}, gradient has {} columns",
           db.rows, db.cols, dy.cols);
  if (dy.cols == 0) return;
  TP_OPS_DISPATCH(add_bias_grad, dev, dy, db);
}

/// c = alpha op(a) op(b) + beta c + bias[0, :]: one fused GEMM where the device has a bias
/// epilogue, a GEMM then add_bias elsewhere. Layers use it instead of gemm + add_bias.
template <class T, Device D>
void gemm_bias(const D& dev, Op op_a, Op op_b, std::type_identity_t<T> alpha, In<T> a, In<T> b,
               std::type_identity_t<T> beta, MatrixView<T> c, In<T> bias) {
  TP_CHECK(bias.rows == 1 && bias.cols == c.cols, "gemm_bias: bias is {}x{}, output has {} columns", bias.rows,
           bias.cols, c.cols);
  TP_OPS_DISPATCH(gemm_bias, dev, op_a, op_b, alpha, a, b, beta, c, bias);
}

/// c = epilogue(alpha op(a) op(b) + beta c), see tp::Epilogue (the GELU ones are the tanh
/// approximation). `aux` must be [m, n] with ld a multiple of 8 where the epilogue uses it.
template <class T, Device D>
void gemm_epilogue(const D& dev, Op op_a, Op op_b, std::type_identity_t<T> alpha, In<T> a, In<T> b,
                   std::type_identity_t<T> beta, MatrixView<T> c, const EpilogueArgs<T>& epilogue) {
  const bool aux = epilogue.kind == Epilogue::gelu_aux_bias || epilogue.kind == Epilogue::dgelu ||
                   epilogue.kind == Epilogue::dgelu_bgrad;
  TP_CHECK(!aux || (epilogue.aux.rows == c.rows && epilogue.aux.cols == c.cols && epilogue.aux.ld % 8 == 0),
           "gemm_epilogue: aux is {}x{} with ld {}, expected {}x{} with ld a multiple of 8", epilogue.aux.rows,
           epilogue.aux.cols, epilogue.aux.ld, c.rows, c.cols);
  TP_OPS_DISPATCH(gemm_epilogue, dev, op_a, op_b, alpha, a, b, beta, c, epilogue);
}

/// linear_forward's argument checks.
template <class T>
void linear_forward_checks(In<T> x, In<T> w, In<T> bias, MatrixView<T> y) {
  TP_CHECK(x.cols == w.cols && y.rows == x.rows && y.cols == w.rows,
           "linear_forward: x is {}x{}, w is {}x{}, y is {}x{} (want x [m, k], w [n, k], y [m, n])", x.rows, x.cols,
           w.rows, w.cols, y.rows, y.cols);
  TP_CHECK(bias.empty() || (bias.rows == 1 && bias.cols == y.cols), "linear_forward: bias is {}x{}, y has {} columns",
           bias.rows, bias.cols, y.cols);
  TP_CHECK(!tp::detail::overlaps<T>(y, x) && !tp::detail::overlaps<T>(y, w) && !tp::detail::overlaps<T>(y, bias),
           "linear_forward: the output y ({}x{}) overlaps an input", y.rows, y.cols);
}

/// y = x w^T, plus bias[0, :] unless bias is empty: a linear layer's forward for x [tokens, in] and
/// w [out, in] (torch.nn.Linear's layout), y [tokens, out]. y must not overlap x, w or bias.
template <class T, Device D>
void linear_forward(const D& dev, In<T> x, In<T> w, In<T> bias, MatrixView<T> y) {
  linear_forward_checks<T>(x, w, bias, y);
  if (y.empty()) return;
  TP_OPS_DISPATCH(linear_forward, dev, x, w, bias, y);
}

/// The [out, in] weight w packed for linear_forward(dev, x, w, packed, bias, y): a copy in the
/// layout the device's GEMM reads fastest (tp::Cpu: oneDNN's blocked layout where oneDNN runs its
/// float GEMMs, w^T where OpenBLAS does, measured in BENCHMARKS.md), or, where packing does not
/// pay (doubles, the 16-bit types, tp::Cuda), nothing beyond w's shape and address. It stays
/// valid while w's values do not change: the caller repacks after writing w.
template <class T, Device D>
PackedWeight<T, D> pack_weight(const std::shared_ptr<D>& device, In<T> w) {
  TP_CHECK(device != nullptr, "pack_weight: no device");
  TP_CHECK(w.rows > 0 && w.cols > 0, "pack_weight: w is {}x{}, expected [out > 0, in > 0]", w.rows, w.cols);
  if constexpr (requires { ::tp::impl::pack_weight(device, w); })
    return ::tp::impl::pack_weight(device, w);
  else
    return PackedWeight<T, D>(w);
}

/// linear_forward with w's packed form beside it: forwards of more tokens than the streaming
/// kernels take (tp::Cpu's prefill) run on `packed`, the rest on w (decode stays on the streaming
/// kernels). `packed` must come from pack_weight(w) and w must not have changed since.
template <class T, Device D>
void linear_forward(const D& dev, In<T> x, In<T> w, const PackedWeight<T, D>& packed, In<T> bias, MatrixView<T> y) {
  TP_CHECK(packed.source() == w.data && packed.rows() == w.rows && packed.cols() == w.cols,
           "linear_forward: the packed weight is {}x{} packed from another tensor than w ({}x{}); pack w again",
           packed.rows(), packed.cols(), w.rows, w.cols);
  if constexpr (requires { ::tp::impl::linear_forward_packed(dev, x, w, packed, bias, y); }) {
    if (!packed.empty()) {
      linear_forward_checks<T>(x, w, bias, y);
      if (y.empty()) return;
      return ::tp::impl::linear_forward_packed(dev, x, w, packed, bias, y);
    }
  }
  linear_forward<T>(dev, x, w, bias, y);
}

/// dx = dy w + beta_dx dx and dw = dy^T x + beta_dw dw: a linear layer's backward for dy [tokens,
/// out], x [tokens, in] (the forward's input), w and dw [out, in], dx [tokens, in]; beta_dw = 1
/// accumulates the weight gradient. A beta of 0 ignores what the output held (NaN included).
/// tp::Cpu computes both in one sweep over w and dw for few tokens. dx and dw must not overlap
/// each other or an input.
template <class T, Device D>
void linear_backward(const D& dev, In<T> dy, In<T> x, In<T> w, std::type_identity_t<T> beta_dx, MatrixView<T> dx,
                     std::type_identity_t<T> beta_dw, MatrixView<T> dw) {
  TP_CHECK(dy.rows == x.rows && dy.cols == w.rows && x.cols == w.cols && dx.rows == x.rows && dx.cols == x.cols &&
               dw.rows == w.rows && dw.cols == w.cols,
           "linear_backward: dy is {}x{}, x is {}x{}, w is {}x{}, dx is {}x{}, dw is {}x{} (want dy [m, n], x and dx "
           "[m, k], w and dw [n, k])",
           dy.rows, dy.cols, x.rows, x.cols, w.rows, w.cols, dx.rows, dx.cols, dw.rows, dw.cols);
  for (const ConstView<T> out : {ConstView<T>(dx), ConstView<T>(dw)})
    TP_CHECK(!tp::detail::overlaps<T>(out, dy) && !tp::detail::overlaps<T>(out, x) && !tp::detail::overlaps<T>(out, w),
             "linear_backward: an output ({}x{}) overlaps an input", out.rows, out.cols);
  TP_CHECK(!tp::detail::overlaps<T>(dx, dw), "linear_backward: dx ({}x{}) and dw ({}x{}) overlap", dx.rows, dx.cols,
           dw.rows, dw.cols);
  if (dx.empty() && dw.empty()) return;
  TP_OPS_DISPATCH(linear_backward, dev, dy, x, w, beta_dx, dx, beta_dw, dw);
}

}  // namespace tp::ops
