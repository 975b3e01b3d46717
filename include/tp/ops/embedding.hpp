#pragma once
/// Vocabulary-parallel embedding: the id range check, the masked lookup into a rank's shard of
/// the table and its gradient. `ids` is any contiguous matrix of token ids, read in row-major order.

#include <cstdint>

#include "tp/detail/shape_checks.hpp"
#include "tp/device/device.hpp"
#include "tp/ops/dispatch.hpp"

TP_OPS_DECLARE(first_outside)
TP_OPS_DECLARE(embedding_forward)
TP_OPS_DECLARE(embedding_backward)

#ifdef TP_HAS_BLAS
#include "tp/device/cpu/embedding.hpp"
#endif
#if defined(TP_HAS_CUDA) && defined(__CUDACC__)
#include "tp/device/cuda/embedding.cuh"
#endif

namespace tp::ops {

namespace detail {
inline void check_ids(ConstView<std::int64_t> ids, std::int64_t tokens, const char* op) {
  TP_CHECK(ids.contiguous() && ids.size() == tokens, "{}: {}x{} ids (ld {}) for {} tokens; ids must be contiguous", op,
           ids.rows, ids.cols, ids.ld, tokens);
}
}  // namespace detail

/// The position (row-major index) of the first id outside [begin, end) and not equal to `allowed`
/// (cross-entropy's ignore_index), or -1 if there is none. Returns to the host, so a device
/// implementation waits for its stream.
template <Device D>
std::int64_t first_outside(const D& dev, In<std::int64_t> ids, std::int64_t begin, std::int64_t end,
                           std::int64_t allowed) {
  detail::check_ids(ids, ids.size(), "first_outside");
  if (ids.empty()) return -1;
  TP_OPS_DISPATCH(first_outside, dev, ids, begin, end, allowed);
}

/// out[i, :] = table[ids[i] - first, :] when row ids[i] - first of the table exists, else zeros:
/// a rank's masked lookup into its shard [first, first + table.rows) of the vocabulary.
template <class T, Device D>
void embedding_forward(const D& dev, In<std::int64_t> ids, In<T> table, std::int64_t first, MatrixView<T> out) {
  detail::check_ids(ids, out.rows, "embedding_forward");
  TP_CHECK(table.cols == out.cols, "embedding_forward: table has {} columns, output {}", table.cols, out.cols);
  if (out.empty()) return;
  TP_OPS_DISPATCH(embedding_forward, dev, ids, table, first, out);
}

/// d_table[ids[i] - first, :] += dy[i, :] for every id inside this shard of the vocabulary, in token
/// order (deterministic on every device).
template <class T, Device D>
void embedding_backward(const D& dev, In<std::int64_t> ids, In<T> dy, std::int64_t first, MatrixView<T> d_table) {
  detail::check_ids(ids, dy.rows, "embedding_backward");
  TP_CHECK(d_table.cols == dy.cols, "embedding_backward: table gradient has {} columns, gradient {}", d_table.cols,
           dy.cols);
  if (dy.empty()) return;
  TP_OPS_DISPATCH(embedding_backward, dev, ids, dy, first, d_table);
}

}  // namespace tp::ops
