#pragma once
/// The element-wise ends of a linear layer: bias add and bias gradient, and GEMMs with a fused
/// epilogue (tp::Cuda runs them inside cuBLASLt; tp::Cpu runs Cpu::gemm, then the element-wise step).

#include <cstdint>

#include "tp/detail/shape_checks.hpp"
#include "tp/device/device.hpp"
#include "tp/ops/dispatch.hpp"

TP_OPS_DECLARE(add_bias)
TP_OPS_DECLARE(add_bias_grad)
TP_OPS_DECLARE(gemm_bias)
TP_OPS_DECLARE(gemm_epilogue)

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

}  // namespace tp::ops
