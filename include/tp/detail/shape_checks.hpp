#pragma once
/// Shape checks and shape records that the devices and the ops share.

#include <cstdint>
#include <type_traits>

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

/// The type of attention's saved per-row log-sum-exp: float for the 16- and 32-bit types (a 16-bit
/// one would round the probabilities rebuilt from it by about 1%), double for double.
template <class T>
using attention_stat_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

}  // namespace tp::detail
