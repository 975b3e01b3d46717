#pragma once
/// Vocabulary the device policies share (tp::Cpu, tp::Cuda), so layers can name operations
/// without including a particular device.

#include <cstdint>

namespace tp {

/// Whether a GEMM operand is used as stored or transposed.
enum class Op : std::uint8_t { n, t };

/// GELU as Megatron offers it: exact (erf) or the tanh approximation.
enum class Gelu : std::uint8_t { exact, tanh };

}  // namespace tp
