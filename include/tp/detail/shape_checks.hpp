#pragma once
/// Shape checks and shape records that the devices and the ops share.

#include <cstdint>
#include <functional>
#include <type_traits>

#include "tp/core/error.hpp"
#include "tp/core/tensor.hpp"

namespace tp::detail {

template <class T>
void check_same_shape(ConstView<T> a, ConstView<T> b, const char* op) {
  TP_CHECK(a.rows == b.rows && a.cols == b.cols, "{}: shapes {}x{} and {}x{} differ", op, a.rows, a.cols, b.rows,
           b.cols);
}

/// True when the elements a and b span (first to last, whatever the strides) share an address.
/// Pointers are compared with std::less, which orders unrelated pointers too.
template <class T>
bool overlaps(ConstView<T> a, ConstView<T> b) {
  if (a.empty() || b.empty()) return false;
  const T* a_end = a.data + (a.rows - 1) * a.ld + a.cols;
  const T* b_end = b.data + (b.rows - 1) * b.ld + b.cols;
  return std::less<const T*>{}(a.data, b_end) && std::less<const T*>{}(b.data, a_end);
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
