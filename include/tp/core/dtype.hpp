#pragma once
/// Element types as values, so that communicators and checkpoints can take type-erased buffers.

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <type_traits>

#include "tp/core/float16.hpp"

namespace tp {

enum class DType : std::uint8_t { f32, f64, f16, bf16, i32, i64, u8 };

enum class ReduceOp : std::uint8_t { sum, prod, min, max };

/// Whether the value is one of the named ones: an enum cast from an out-of-range integer is not,
/// and would fall through every switch below.
constexpr bool valid(DType t) { return static_cast<unsigned>(t) <= static_cast<unsigned>(DType::u8); }
constexpr bool valid(ReduceOp op) { return static_cast<unsigned>(op) <= static_cast<unsigned>(ReduceOp::max); }

constexpr std::size_t size_of(DType t) {
  switch (t) {
    case DType::f64:
    case DType::i64: return 8;
    case DType::f32:
    case DType::i32: return 4;
    case DType::f16:
    case DType::bf16: return 2;
    case DType::u8: return 1;
  }
  return 0;
}

constexpr std::string_view name(DType t) {
  switch (t) {
    case DType::f32: return "float32";
    case DType::f64: return "float64";
    case DType::f16: return "float16";
    case DType::bf16: return "bfloat16";
    case DType::i32: return "int32";
    case DType::i64: return "int64";
    case DType::u8: return "uint8";
  }
  return "unknown";
}

constexpr std::string_view name(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return "sum";
    case ReduceOp::prod: return "prod";
    case ReduceOp::min: return "min";
    case ReduceOp::max: return "max";
  }
  return "unknown";
}

/// Maps a C++ element type to its DType; tp::f16 and tp::bf16 (tp/core/float16.hpp) are the host's
/// 16-bit types, and the CUDA device header adds CUDA's own, __half and __nv_bfloat16.
template <class T>
struct DTypeOf;
template <> struct DTypeOf<float> : std::integral_constant<DType, DType::f32> {};
template <> struct DTypeOf<double> : std::integral_constant<DType, DType::f64> {};
template <> struct DTypeOf<f16> : std::integral_constant<DType, DType::f16> {};
template <> struct DTypeOf<bf16> : std::integral_constant<DType, DType::bf16> {};
template <> struct DTypeOf<std::int32_t> : std::integral_constant<DType, DType::i32> {};
template <> struct DTypeOf<std::int64_t> : std::integral_constant<DType, DType::i64> {};
template <> struct DTypeOf<std::uint8_t> : std::integral_constant<DType, DType::u8> {};

template <class T>
inline constexpr DType dtype_of = DTypeOf<std::remove_cv_t<T>>::value;

}  // namespace tp
