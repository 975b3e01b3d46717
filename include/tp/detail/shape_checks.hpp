#pragma once
/// Shape checks and shape records that the devices and the ops share.

#include <cstdint>

#include "tp/core/error.hpp"
#include "tp/core/tensor.hpp"

namespace tp::detail {

template <class T>
void check_same_shape(ConstView<T> a, ConstView<T> b, const char* op) {
  TP_CHECK(a.rows == b.rows && a.cols == b.cols, "{}: shapes {}x{} and {}x{} differ", op, a.rows, a.cols, b.rows,
           b.cols);
}

}  // namespace tp::detail

namespace tp::detail {

/// Attention's shape in heads: `batch` sequences, `hq` query heads sharing `hk` kv heads in groups
/// of `group` (tp::ops::attention_forward checks it, the devices use it).
struct AttentionGeometry {
  std::int64_t batch, hq, hk, group;
};

}  // namespace tp::detail
