#pragma once
/// The kernels of tp::Cuda's transformer-block members: SwiGLU, the masked embedding lookup and
/// its gradient, the vocabulary-parallel cross-entropy pieces and the attention softmax. Each
/// mirrors the tp::Cpu member of the same name (see cpu.hpp for the formulas); 16-bit data is
/// computed in float, and the sums the CPU keeps in double are double here too. No atomics on
/// values: every sum runs in a fixed order, so results are bitwise reproducible.

#include <cstdint>

#include "tp/device/kernels/block_reduce.cuh"
#include "tp/device/kernels/convert.cuh"
#include "tp/device/kernels/elementwise.cuh"

namespace tp::kernels {

#define TP_GRID_STRIDE(i, n)                                                                                   \
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < (n);           \
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
#define TP_BLOCK_PER_ROW(r, rows) for (std::int64_t r = blockIdx.x; r < (rows); r += gridDim.x)
#define TP_THREAD_PER_COL(c, cols) for (std::int64_t c = threadIdx.x; c < (cols); c += blockDim.x)

template <class A>
__device__ __forceinline__ A sigmoid(A x) {
  return A(1) / (A(1) + exp(-x));
}

/// y[:, j] = silu(g[:, j]) * g[:, n + j]; s = {rows, n}.
template <class T>
__global__ void swiglu(const T* gu, std::int64_t ldg, T* y, std::int64_t ldy, Shape2 s) {
  TP_GRID_STRIDE(i, s.rows * s.cols) {
    const std::int64_t r = i / s.cols, c = i % s.cols;
    const accum_t<T> x = load(gu[r * ldg + c]), up = load(gu[r * ldg + s.cols + c]);
    y[r * ldy + c] = store<T>(x * sigmoid(x) * up);
  }
}

template <class T>
__global__ void swiglu_backward(const T* gu, std::int64_t ldg, const T* dy, std::int64_t lddy, T* dgu,
                                std::int64_t lddg, Shape2 s) {
  TP_GRID_STRIDE(i, s.rows * s.cols) {
    const std::int64_t r = i / s.cols, c = i % s.cols;
    using A = accum_t<T>;
    const A x = load(gu[r * ldg + c]), up = load(gu[r * ldg + s.cols + c]), d = load(dy[r * lddy + c]);
    const A sg = sigmoid(x);
    dgu[r * lddg + c] = store<T>(d * up * (sg + x * sg * (A(1) - sg)));
    dgu[r * lddg + s.cols + c] = store<T>(d * x * sg);
  }
}

/// *first = min over positions i of ids outside [begin, end) and not `allowed`; it starts at
/// ~0ull ("none"). atomicMin on an index is order-independent, so the answer is deterministic.
template <class I>
__global__ void first_outside(const I* ids, std::int64_t n, I begin, I end, I allowed, unsigned long long* first) {
  TP_GRID_STRIDE(i, n) {
    const I id = ids[i];
    if ((id < begin || id >= end) && id != allowed) atomicMin(first, static_cast<unsigned long long>(i));
  }
}

/// out[i, :] = table[ids[i] - first, :] or zeros; s = {tokens, hidden}.
template <class T>
__global__ void embedding_forward(const std::int64_t* ids, const T* table, std::int64_t ldt, std::int64_t table_rows,
                                  std::int64_t first, T* out, std::int64_t ldo, Shape2 s) {
  TP_GRID_STRIDE(i, s.rows * s.cols) {
    const std::int64_t t = i / s.cols, c = i % s.cols, row = ids[t] - first;
    out[t * ldo + c] = row >= 0 && row < table_rows ? table[row * ldt + c] : store<T>(accum_t<T>(0));
  }
}

/// d_table[ids[i] - first, c] += dy[i, c]. One thread per column walks the tokens in order, so
/// repeated ids add up in token order, as on the CPU, with no atomics: deterministic, and parallel
/// over the hidden size (thousands of columns in real models). s = {tokens, hidden}.
template <class T>
__global__ void embedding_backward(const std::int64_t* ids, const T* dy, std::int64_t lddy, std::int64_t first,
                                   T* d_table, std::int64_t ldd, std::int64_t table_rows, Shape2 s) {
  TP_GRID_STRIDE(c, s.cols) {
    for (std::int64_t t = 0; t < s.rows; ++t) {
      const std::int64_t row = ids[t] - first;
      if (row < 0 || row >= table_rows) continue;
      T& d = d_table[row * ldd + c];
      d = store<T>(load(d) + load(dy[t * lddy + c]));
    }
  }
}

/// out[t] = max_j logits[t, j]; one block per row. The max of stored values is exact in T.
template <class T>
__global__ void row_max(const T* logits, std::int64_t ld, Shape2 s, T* out, std::int64_t ldo) {
  using A = accum_t<T>;
  __shared__ A scratch[kRowThreads];
  TP_BLOCK_PER_ROW(t, s.rows) {
    const T* x = logits + t * ld;
    A m = load(x[0]);
    TP_THREAD_PER_COL(j, s.cols) {
      const A v = load(x[j]);
      if (m < v) m = v;
    }
    m = block_max(m, scratch);
    if (threadIdx.x == 0) out[t * ldo] = store<T>(m);
  }
}

/// stats[t] = {sum_j exp(x_tj - m_t), x_t,target - m_t (0 unless the target is in this shard),
/// sum_j (x_tj - m_t)}, the sums in double; one block per row.
template <class T>
__global__ void cross_entropy_stats(const T* logits, std::int64_t ld, Shape2 s, const std::int64_t* targets,
                                    std::int64_t first, const T* max, std::int64_t ldm, double* stats,
                                    std::int64_t lds) {
  using A = accum_t<T>;
  __shared__ double scratch[kRowThreads];
  TP_BLOCK_PER_ROW(t, s.rows) {
    const T* x = logits + t * ld;
    const A m = load(max[t * ldm]);
    double sum_exp = 0, sum_shifted = 0;
    TP_THREAD_PER_COL(j, s.cols) {
      const A shifted = load(x[j]) - m;
      sum_exp += static_cast<double>(exp(shifted));
      sum_shifted += static_cast<double>(shifted);
    }
    sum_exp = block_sum(sum_exp, scratch);
    sum_shifted = block_sum(sum_shifted, scratch);
    if (threadIdx.x == 0) {
      const std::int64_t j = targets[t] - first;
      stats[t * lds + 0] = sum_exp;
      stats[t * lds + 1] = j >= 0 && j < s.cols ? static_cast<double>(load(x[j]) - m) : 0.0;
      stats[t * lds + 2] = sum_shifted;
    }
  }
}

template <class T>
__global__ void cross_entropy_loss(const double* stats, std::int64_t lds, const std::int64_t* targets,
                                   std::int64_t tokens, std::int64_t vocab, std::int64_t ignore_index,
                                   double smoothing, T* loss, std::int64_t ldl) {
  TP_GRID_STRIDE(t, tokens) {
    if (targets[t] == ignore_index) {
      loss[t * ldl] = store_double<T>(0.0);
      continue;
    }
    const double log_sum = log(stats[t * lds]), nll = log_sum - stats[t * lds + 1];
    loss[t * ldl] = store_double<T>(smoothing == 0 ? nll
                                                   : (1 - smoothing) * nll +
                                                         smoothing * (log_sum - stats[t * lds + 2] / static_cast<double>(vocab)));
  }
}

template <class T>
__global__ void cross_entropy_backward(const T* logits, std::int64_t ld, Shape2 s, const std::int64_t* targets,
                                       std::int64_t first, const T* max, std::int64_t ldm, const double* stats,
                                       std::int64_t lds, const T* grad_loss, std::int64_t ldgl, std::int64_t vocab,
                                       std::int64_t ignore_index, double smoothing, T* grad, std::int64_t ldg) {
  const double uniform = smoothing / static_cast<double>(vocab), on_target = 1 - smoothing;
  TP_GRID_STRIDE(i, s.rows * s.cols) {
    const std::int64_t t = i / s.cols, j = i % s.cols;
    if (targets[t] == ignore_index) {
      grad[t * ldg + j] = store_double<T>(0.0);
      continue;
    }
    const double p = static_cast<double>(exp(load(logits[t * ld + j]) - load(max[t * ldm]))) / stats[t * lds];
    const double g = static_cast<double>(load(grad_loss[t * ldgl]));
    grad[t * ldg + j] = store_double<T>(g * (p - uniform - (j == targets[t] - first ? on_target : 0.0)));
  }
}

/// In place on the scaled scores: each row i of block (b, h) (row r = (b hq + h) seq_len + i)
/// becomes softmax over its first i + 1 columns (causal) or all, zeros after; one block per row.
/// The sum is in double, as on the CPU; the exponentials are recomputed rather than stored
/// rounded, so 16-bit probabilities are rounded once.
template <class T>
__global__ void attention_softmax(T* probs, std::int64_t ld, std::int64_t rows, std::int64_t seq_len, bool causal) {
  using A = accum_t<T>;
  __shared__ A scratch[kRowThreads];
  __shared__ double wide[kRowThreads];
  TP_BLOCK_PER_ROW(r, rows) {
    T* row = probs + r * ld;
    const std::int64_t visible = causal ? r % seq_len + 1 : seq_len;
    A m = load(row[0]);
    TP_THREAD_PER_COL(j, visible) {
      const A v = load(row[j]);
      if (m < v) m = v;
    }
    m = block_max(m, scratch);
    double sum = 0;
    TP_THREAD_PER_COL(j, visible) sum += static_cast<double>(exp(load(row[j]) - m));
    const A inv = static_cast<A>(1.0 / block_sum(sum, wide));
    TP_THREAD_PER_COL(j, seq_len) row[j] = store<T>(j < visible ? exp(load(row[j]) - m) * inv : A(0));
  }
}

/// ds = p (dp - rowsum(p dp)) scale in place on dp, one block per row; rowsum in double.
template <class T>
__global__ void attention_softmax_backward(const T* probs, std::int64_t ldp, T* ds, std::int64_t ldd,
                                           std::int64_t rows, std::int64_t seq_len, accum_t<T> scale) {
  using A = accum_t<T>;
  __shared__ double wide[kRowThreads];
  TP_BLOCK_PER_ROW(r, rows) {
    const T* p = probs + r * ldp;
    T* d = ds + r * ldd;
    double dot = 0;
    TP_THREAD_PER_COL(j, seq_len) dot += static_cast<double>(load(p[j])) * static_cast<double>(load(d[j]));
    const A row_dot = static_cast<A>(block_sum(dot, wide));
    TP_THREAD_PER_COL(j, seq_len) d[j] = store<T>(load(p[j]) * (load(d[j]) - row_dot) * scale);
  }
}

#undef TP_GRID_STRIDE
#undef TP_BLOCK_PER_ROW
#undef TP_THREAD_PER_COL

}  // namespace tp::kernels
