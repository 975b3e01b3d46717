#pragma once
/// Element-wise reduction of host buffers, shared by the host backends.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "tp/core/dtype.hpp"
#include "tp/core/error.hpp"

namespace tp::detail {

/// The 16-bit types accumulate in float and round once, so a sum over ranks is the correctly
/// rounded float sum, not a chain of 16-bit roundings.
template <class T>
void reduce_typed(ReduceOp op, const void* const* srcs, int n, std::size_t offset, std::size_t count, void* dst) {
  using A = accum_t<T>;
  T* out = static_cast<T*>(dst);
  for (std::size_t i = 0; i < count; ++i) {
    A acc = static_cast<const T*>(srcs[0])[offset + i];
    for (int q = 1; q < n; ++q) {
      const A v = static_cast<const T*>(srcs[q])[offset + i];
      switch (op) {
        case ReduceOp::sum: acc = acc + v; break;
        case ReduceOp::prod: acc = acc * v; break;
        case ReduceOp::min: acc = std::min(acc, v); break;
        case ReduceOp::max: acc = std::max(acc, v); break;
      }
    }
    out[i] = static_cast<T>(acc);  // every source is read before the write, so dst may alias srcs[q] + offset
  }
}

/// dst[i] = op over q of srcs[q][offset + i], for i < count, in rank order (deterministic).
inline void reduce_host(DType dtype, ReduceOp op, const void* const* srcs, int n, std::size_t offset,
                        std::size_t count, void* dst, const char* backend) {
  switch (dtype) {
    case DType::f32: return reduce_typed<float>(op, srcs, n, offset, count, dst);
    case DType::f64: return reduce_typed<double>(op, srcs, n, offset, count, dst);
    case DType::i32: return reduce_typed<std::int32_t>(op, srcs, n, offset, count, dst);
    case DType::i64: return reduce_typed<std::int64_t>(op, srcs, n, offset, count, dst);
    case DType::u8: return reduce_typed<std::uint8_t>(op, srcs, n, offset, count, dst);
    case DType::f16: return reduce_typed<f16>(op, srcs, n, offset, count, dst);
    case DType::bf16: return reduce_typed<bf16>(op, srcs, n, offset, count, dst);
  }
  TP_THROW(InvalidArgument, "{} cannot reduce {} buffers on the host", backend, name(dtype));
}

/// Whether the buffers of `dtype` are one of the 16-bit floating types, which MPI and Gloo cannot
/// reduce: those backends widen them to float around the reduction (widen_to_float, narrow_from_float).
constexpr bool is_float16(DType dtype) { return dtype == DType::f16 || dtype == DType::bf16; }

/// n 16-bit elements of `dtype` as floats (exact).
inline std::vector<float> widen_to_float(const void* src, std::size_t n, DType dtype) {
  std::vector<float> out(n);
  if (dtype == DType::bf16)
    for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<const bf16*>(src)[i];
  else
    for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<const f16*>(src)[i];
  return out;
}

/// n floats rounded (to nearest even) into 16-bit elements of `dtype`.
inline void narrow_from_float(const float* src, std::size_t n, DType dtype, void* dst) {
  if (dtype == DType::bf16)
    for (std::size_t i = 0; i < n; ++i) static_cast<bf16*>(dst)[i] = src[i];
  else
    for (std::size_t i = 0; i < n; ++i) static_cast<f16*>(dst)[i] = src[i];
}

}  // namespace tp::detail
