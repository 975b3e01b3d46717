#pragma once
/// How an op function in tp::ops reaches its device: after checking the arguments it calls the
/// overload of tp::impl::NAME for the device's type, declared by tp/device/cpu/<family>.hpp
/// (const Cpu&) or tp/device/cuda/<family>.cuh (const Cuda&, only under nvcc). A device without
/// one stops the build with a message naming the op, not with a link or run-time error.

namespace tp::detail {
template <class>
inline constexpr bool always_false = false;
}  // namespace tp::detail

/// return tp::impl::op(dev, args...), or a static_assert naming tp::ops::op.
#define TP_OPS_DISPATCH(op, dev, ...)                                                          \
  if constexpr (requires { ::tp::impl::op(dev, __VA_ARGS__); })                                \
    return ::tp::impl::op(dev, __VA_ARGS__);                                                   \
  else                                                                                         \
    static_assert(::tp::detail::always_false<decltype(dev)>,                                   \
                  "tp::ops::" #op                                                              \
                  ": no implementation for this device (CUDA ops need a .cu translation unit " \
                  "compiled by nvcc)")

/// Declares tp::impl::op for ops whose devices may all be absent from a translation unit, so that
/// TP_OPS_DISPATCH reports the missing device instead of an unknown name. Never callable.
#define TP_OPS_DECLARE(op) \
  namespace tp::impl {     \
  void op() = delete;      \
  }
