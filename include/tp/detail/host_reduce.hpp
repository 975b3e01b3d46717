#pragma once
/// Element-wise reduction of host buffers, shared by the host backends.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "tp/core/dtype.hpp"
#include "tp/core/error.hpp"

namespace tp::detail {

template <ReduceOp Op, class A>
constexpr A combine(A acc, A v) {
  if constexpr (Op == ReduceOp::sum) return acc + v;
  if constexpr (Op == ReduceOp::prod) return acc * v;
  if constexpr (Op == ReduceOp::min) return std::min(acc, v);
  if constexpr (Op == ReduceOp::max) return std::max(acc, v);
}

/// One block of M elements (a compile-time count, which -O2's cheap vectorizer asks for): every
/// source's block is read before dst's block is written.
template <class T, ReduceOp Op, std::size_t M>
void reduce_block(const void* const* srcs, int n, std::size_t offset, T* out) {
  using A = accum_t<T>;
  A acc[M];
  const T* first = static_cast<const T*>(srcs[0]) + offset;
  for (std::size_t i = 0; i < M; ++i) acc[i] = static_cast<A>(first[i]);
  for (int q = 1; q < n; ++q) {
    const T* src = static_cast<const T*>(srcs[q]) + offset;
    for (std::size_t i = 0; i < M; ++i) acc[i] = combine<Op>(acc[i], static_cast<A>(src[i]));
  }
  for (std::size_t i = 0; i < M; ++i) out[i] = static_cast<T>(acc[i]);
}

/// In blocks that fit the L1 cache, so that dst may alias srcs[q] + offset, and the loops
/// vectorize: the op is a template argument, not a switch per element. The last elements (fewer
/// than a block) go one at a time. Each element is reduced in rank order, whatever the path.
template <class T, ReduceOp Op>
void reduce_blocks(const void* const* srcs, int n, std::size_t offset, std::size_t count, T* out) {
  using A = accum_t<T>;
  constexpr std::size_t block = 256;
  std::size_t i = 0;
  for (; i + block <= count; i += block) reduce_block<T, Op, block>(srcs, n, offset + i, out + i);
  for (; i < count; ++i) {
    A acc = static_cast<const T*>(srcs[0])[offset + i];
    for (int q = 1; q < n; ++q) acc = combine<Op>(acc, static_cast<A>(static_cast<const T*>(srcs[q])[offset + i]));
    out[i] = static_cast<T>(acc);
  }
}

/// The 16-bit types accumulate in float and round once, so a sum over ranks is the correctly
/// rounded float sum, not a chain of 16-bit roundings.
template <class T>
void reduce_typed(ReduceOp op, const void* const* srcs, int n, std::size_t offset, std::size_t count, void* dst) {
  T* out = static_cast<T*>(dst);
  switch (op) {
    case ReduceOp::sum: return reduce_blocks<T, ReduceOp::sum>(srcs, n, offset, count, out);
    case ReduceOp::prod: return reduce_blocks<T, ReduceOp::prod>(srcs, n, offset, count, out);
    case ReduceOp::min: return reduce_blocks<T, ReduceOp::min>(srcs, n, offset, count, out);
    case ReduceOp::max: return reduce_blocks<T, ReduceOp::max>(srcs, n, offset, count, out);
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
