#pragma once
/// Element-wise reduction of host buffers, shared by the host backends.

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "tp/core/dtype.hpp"
#include "tp/core/error.hpp"

namespace tp::detail {

template <class T>
void reduce_typed(ReduceOp op, const void* const* srcs, int n, std::size_t offset, std::size_t count, void* dst) {
  T* out = static_cast<T*>(dst);
  for (std::size_t i = 0; i < count; ++i) {
    T acc = static_cast<const T*>(srcs[0])[offset + i];
    for (int q = 1; q < n; ++q) {
      const T v = static_cast<const T*>(srcs[q])[offset + i];
      switch (op) {
        case ReduceOp::sum: acc = acc + v; break;
        case ReduceOp::prod: acc = acc * v; break;
        case ReduceOp::min: acc = std::min(acc, v); break;
        case ReduceOp::max: acc = std::max(acc, v); break;
      }
    }
    out[i] = acc;  // every source is read before the write, so dst may alias srcs[q] + offset
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
    case DType::f16:
    case DType::bf16: break;
  }
  TP_THROW(InvalidArgument, "{} cannot reduce {} buffers on the host; reduce in float32", backend, name(dtype));
}

}  // namespace tp::detail
