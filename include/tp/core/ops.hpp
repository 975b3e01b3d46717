#pragma once
/// Vocabulary the devices and the op functions share (tp::Cpu, tp::Cuda, tp::ops), so layers can
/// name operations without including a particular device.

#include <cstdint>

#include "tp/core/tensor.hpp"

namespace tp {

/// Whether a GEMM operand is used as stored or transposed.
enum class Op : std::uint8_t { n, t };

/// GELU as Megatron offers it: exact (erf) or the tanh approximation.
enum class Gelu : std::uint8_t { exact, tanh };

/// Whether the value is one of the named ones (an enum cast from an out-of-range integer is not).
constexpr bool valid(Op op) { return op == Op::n || op == Op::t; }
constexpr bool valid(Gelu kind) { return kind == Gelu::exact || kind == Gelu::tanh; }

/// What a fused GEMM applies to the product before it is stored, in row-major terms (tp::Cuda runs
/// them inside cuBLASLt; tp::Cpu runs the GEMM, then the element-wise step).
enum class Epilogue : std::uint8_t {
  none,
  bias,           ///< C = alpha op(A) op(B) + beta C + bias[0, :]
  gelu,           ///< C = gelu_tanh(...)
  gelu_bias,      ///< C = gelu_tanh(... + bias)
  gelu_aux_bias,  ///< C = gelu_tanh(... + bias), and aux = the pre-activation (... + bias)
  dgelu,          ///< C = (...) * gelu_tanh'(aux)
  dgelu_bgrad,    ///< C = (...) * gelu_tanh'(aux), and bias_grad[0, :] = column sums of C
  bgrad_a,        ///< bias_grad[0, :m] = row sums of op(A) over k (the bias gradient of dW = dY^T X)
};

/// Extra operands of an epilogue. `bias` is read (bias epilogues) or written (gradient ones).
template <class T>
struct EpilogueArgs {
  Epilogue kind = Epilogue::none;
  const void* bias = nullptr;
  T* bias_grad = nullptr;
  MatrixView<T> aux{};  ///< [m, n] like C; cuBLASLt wants its ld to be a multiple of 8
};

}  // namespace tp
