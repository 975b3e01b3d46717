#pragma once
/// tp::PackedWeight<T, Device>: a linear layer's weight prepared for the device's GEMMs (see
/// tp::ops::pack_weight). Devices with a packed form specialize it (tp::Cpu:
/// tp/device/cpu/packed_weight.hpp).

#include <cstdint>

#include "tp/core/tensor.hpp"

namespace tp {

/// A linear layer's [out, in] weight prepared once for the device's GEMMs at prefill token counts
/// (tp::ops::pack_weight, which the layers' pack_for_inference calls). This primary template is
/// what a device without a packed form gets (tp::Cuda: cuBLASLt reads the weight as it is): it
/// holds no copy, only the shape and address of the weight it was made from, and the packed
/// forward is the plain one. tp::Cpu's (tp/device/cpu/packed_weight.hpp) holds a copy.
template <class T, class Device>
class PackedWeight {
 public:
  PackedWeight() = default;
  explicit PackedWeight(ConstView<T> w) : rows_(w.rows), cols_(w.cols), source_(w.data) {}
  /// True when the forward reads the plain weight (no copy held).
  bool empty() const { return true; }
  std::int64_t rows() const { return rows_; }
  std::int64_t cols() const { return cols_; }
  /// The weight it was packed from.
  const T* source() const { return source_; }
  /// Bytes held beside the plain weight.
  std::int64_t bytes() const { return 0; }

 private:
  std::int64_t rows_ = 0, cols_ = 0;
  const T* source_ = nullptr;
};

}  // namespace tp
