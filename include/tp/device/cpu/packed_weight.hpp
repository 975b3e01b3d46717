#pragma once
/// tp::Cpu's packed linear weight (tp::ops::pack_weight): a linear layer computes y = x w^T on
/// torch.nn.Linear's [out, in] weights, and the float GEMM libraries pay for that layout on every
/// call. Single thread, 128-token prefill shapes of the 100 M Llama-style model, GFLOP/s
/// (tp_bench_blas --benchmark_filter=prefill_gemm, BENCHMARKS.md):
///
///   oneDNN (AVX-512): dnnl_sgemm('N', 'T') repacks w on every call, 132-145 against 156-161 for
///     1024^3; its matmul primitive on w reordered once into the layout it chooses (brgemm,
///     "brg:avx512_core") ran 153-162, 0.98-1.04 of the 1024^3 rate on every shape;
///   OpenBLAS (Haswell kernels, the AVX2 clone): w stored [in, out] (sgemm('N', 'N')) 77-78
///     against 74-76 for 'N', 'T' (1.02-1.04x on every shape); Prescott kernels (the baseline
///     clone): 31.6-32.3 against 30.0-31.8 (1.02-1.05x).
///
/// So float weights are packed as the library that runs the Cpu's float GEMMs wants them: where
/// that is oneDNN, reordered into the matmul primitive's own layout (the primitives, one per
/// shape, kept per thread as the bf16 path keeps its own); where it is OpenBLAS, transposed to
/// [in, out]. Doubles and the 16-bit types are not packed (nothing measured pays): their packed
/// form is the plain weight and their forward today's.
///
/// oneDNN chooses the weights' layout per primitive, and a primitive is made for one row count
/// (a run-time row count gives up brgemm for its older gemm kernel). The layout chosen for M = 1,
/// 2, 7, 16, 17, 33, 128, 512 and 4096 rows was one and the same for every shape tried (oneDNN
/// 2.6.3, AVX-512; dnnl_memory_desc_equal on the queried weights), so a weight is packed once,
/// for kPackRows rows, and each row count's primitive checks that it reads that layout; one that
/// does not (never seen) runs today's GEMM on the plain weight instead, correct and no faster.

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <type_traits>

#include "tp/core/tensor.hpp"
#include "tp/device/cpu/cpu.hpp"
#include "tp/device/packed_weight.hpp"

namespace tp {

namespace detail {

#ifdef TP_HAS_DNNL
/// One packed matmul primitive's shape: y [m, n] (row stride ldc) = x [m, k] (row stride lda)
/// times w^T, plus a bias row or not.
struct DnnlPackedMatmulKey {
  std::int64_t m, n, k, lda, ldc;
  bool bias;
  auto operator<=>(const DnnlPackedMatmulKey&) const = default;
};

/// The float matmul primitive of one DnnlPackedMatmulKey, with the weights in the layout oneDNN
/// chose for it (format_tag_any); reads(packed) says whether that is the layout `packed` describes.
class DnnlPackedMatmul {
 public:
  DnnlPackedMatmul(dnnl_engine_t engine, const DnnlPackedMatmulKey& key) {
    dnnl_memory_desc_t x_md, w_md, b_md, y_md;
    const dnnl_dims_t x_dims = {key.m, key.k}, w_dims = {key.k, key.n}, b_dims = {1, key.n}, y_dims = {key.m, key.n};
    const dnnl_dims_t x_strides = {key.lda, 1}, y_strides = {key.ldc, 1};
    dnnl_check(dnnl_memory_desc_init_by_strides(&x_md, 2, x_dims, dnnl_f32, x_strides), "memory_desc (x)");
    dnnl_check(dnnl_memory_desc_init_by_tag(&w_md, 2, w_dims, dnnl_f32, dnnl_format_tag_any), "memory_desc (w)");
    dnnl_check(dnnl_memory_desc_init_by_tag(&b_md, 2, b_dims, dnnl_f32, dnnl_ab), "memory_desc (bias)");
    dnnl_check(dnnl_memory_desc_init_by_strides(&y_md, 2, y_dims, dnnl_f32, y_strides), "memory_desc (y)");
    dnnl_matmul_desc_t desc;
    dnnl_check(dnnl_matmul_desc_init(&desc, &x_md, &w_md, key.bias ? &b_md : nullptr, &y_md), "matmul_desc_init");
    dnnl_primitive_desc_t pd = nullptr;
    dnnl_check(dnnl_primitive_desc_create(&pd, &desc, nullptr, engine, nullptr), "packed matmul primitive_desc_create");
    weights_md_ = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    const dnnl_status_t created = dnnl_primitive_create(&primitive_, pd);
    dnnl_primitive_desc_destroy(pd);
    dnnl_check(created, "packed matmul primitive_create");
    dnnl_check(dnnl_memory_create(&x_, &x_md, engine, DNNL_MEMORY_NONE), "memory_create (x)");
    dnnl_check(dnnl_memory_create(&w_, &weights_md_, engine, DNNL_MEMORY_NONE), "memory_create (w)");
    dnnl_check(dnnl_memory_create(&b_, &b_md, engine, DNNL_MEMORY_NONE), "memory_create (bias)");
    dnnl_check(dnnl_memory_create(&y_, &y_md, engine, DNNL_MEMORY_NONE), "memory_create (y)");
  }
  DnnlPackedMatmul(const DnnlPackedMatmul&) = delete;
  DnnlPackedMatmul& operator=(const DnnlPackedMatmul&) = delete;
  ~DnnlPackedMatmul() {
    for (dnnl_memory_t mem : {x_, w_, b_, y_})
      if (mem) dnnl_memory_destroy(mem);
    if (primitive_) dnnl_primitive_destroy(primitive_);
  }

  /// The weights' layout this primitive reads.
  const dnnl_memory_desc_t& weights_md() const { return weights_md_; }
  /// Whether it reads weights packed as `packed` describes.
  bool reads(const dnnl_memory_desc_t& packed) const { return dnnl_memory_desc_equal(&weights_md_, &packed) != 0; }

  void run(const float* x, const void* w, const float* bias, float* y) const {
    dnnl_check(dnnl_memory_set_data_handle(x_, const_cast<float*>(x)), "set_data_handle (x)");
    dnnl_check(dnnl_memory_set_data_handle(w_, const_cast<void*>(w)), "set_data_handle (w)");
    dnnl_check(dnnl_memory_set_data_handle(y_, y), "set_data_handle (y)");
    int n = 3;
    dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, x_}, {DNNL_ARG_WEIGHTS, w_}, {DNNL_ARG_DST, y_}, {DNNL_ARG_BIAS, b_}};
    if (bias != nullptr) {
      dnnl_check(dnnl_memory_set_data_handle(b_, const_cast<float*>(bias)), "set_data_handle (bias)");
      n = 4;
    }
    dnnl_check(dnnl_primitive_execute(primitive_, dnnl_thread_stream(), n, args), "packed matmul execute");
    dnnl_check(dnnl_stream_wait(dnnl_thread_stream()), "stream_wait");
  }

 private:
  dnnl_memory_desc_t weights_md_{};
  dnnl_primitive_t primitive_ = nullptr;
  dnnl_memory_t x_ = nullptr, w_ = nullptr, b_ = nullptr, y_ = nullptr;
};

/// The packed matmul primitives one thread has made (ranks run as threads in tests; a primitive's
/// memory objects are not shared between threads), one per shape, as DnnlMatmulCache keeps the
/// bf16 ones. A prefill makes one per projection shape and prompt length.
class DnnlPackedMatmulCache {
 public:
  static DnnlPackedMatmulCache& for_this_thread() {
    thread_local DnnlPackedMatmulCache cache;
    return cache;
  }
  const DnnlPackedMatmul& get(const DnnlPackedMatmulKey& key) {
    auto it = primitives_.find(key);
    if (it == primitives_.end() && primitives_.size() >= kMaxPrimitives) primitives_.clear();  // shapes that vary
    if (it == primitives_.end())
      it = primitives_.emplace(key, std::make_unique<DnnlPackedMatmul>(dnnl_cpu_engine(), key)).first;
    return *it->second;
  }

 private:
  static constexpr std::size_t kMaxPrimitives = 256;
  std::map<DnnlPackedMatmulKey, std::unique_ptr<DnnlPackedMatmul>> primitives_;
};
#endif

/// w^T into t ([in, out] from [out, in]), in tiles that stay in cache on both sides.
template <class T>
void transpose_into(ConstView<T> w, MatrixView<T> t) {
  constexpr std::int64_t tile = 32;
  for (std::int64_t r0 = 0; r0 < w.rows; r0 += tile)
    for (std::int64_t c0 = 0; c0 < w.cols; c0 += tile)
      for (std::int64_t c = c0; c < std::min(c0 + tile, w.cols); ++c)
        for (std::int64_t r = r0; r < std::min(r0 + tile, w.rows); ++r) t(c, r) = w(r, c);
}

}  // namespace detail

/// tp::Cpu's packed [out, in] weight (see the top of this file): oneDNN's layout, w^T, or, for the
/// types that are not packed, nothing (form() plain: the forward reads the plain weight).
template <class T>
class PackedWeight<T, Cpu> {
 public:
  enum class Form { plain, transposed, onednn };
  /// Rows the layout is chosen for (see the top of the file: the same for every row count tried).
  static constexpr std::int64_t kPackRows = 128;

  PackedWeight() = default;
  /// w packed for `device`'s float GEMMs; the copy is `device`'s memory (memory_allocated counts it).
  PackedWeight(const std::shared_ptr<Cpu>& device, ConstView<T> w) : rows_(w.rows), cols_(w.cols), source_(w.data) {
    if constexpr (std::is_same_v<T, float>) {
#ifdef TP_HAS_DNNL
      if (device->gemm_library() == CpuGemm::onednn) {
        pack_onednn(device, w);
        return;
      }
#endif
      form_ = Form::transposed;
      data_ = Tensor<T, Cpu>(device, w.cols, w.rows);
      detail::transpose_into<T>(w, data_.view());
    }
  }

  /// True for the plain form (no copy: the forward is today's).
  bool empty() const { return form_ == Form::plain; }
  Form form() const { return form_; }
  std::int64_t rows() const { return rows_; }
  std::int64_t cols() const { return cols_; }
  const T* source() const { return source_; }
  /// Bytes of the copy, beside the plain weight.
  std::int64_t bytes() const { return data_.size() * static_cast<std::int64_t>(sizeof(T)); }

  /// The transposed copy w^T [in, out] (Form::transposed).
  ConstView<T> transposed() const { return data_.view(); }

  /// y = x w^T (+ bias) on oneDNN's packed copy (Form::onednn); false, doing nothing, where this
  /// row count's primitive reads another layout (never seen) or the form is another.
  bool run_onednn(const Cpu& dev, ConstView<T> x, ConstView<T> bias, MatrixView<T> y) const {
#ifdef TP_HAS_DNNL
    if constexpr (std::is_same_v<T, float>) {
      if (form_ != Form::onednn) return false;
      const int threads = dev.gemm_threads();
      if (omp_get_max_threads() != threads) omp_set_num_threads(threads);
      const detail::DnnlPackedMatmulKey key{
          x.rows, y.cols, x.cols, std::max<std::int64_t>(x.ld, 1), std::max<std::int64_t>(y.ld, 1), !bias.empty()};
      const auto& mm = detail::DnnlPackedMatmulCache::for_this_thread().get(key);
      if (!mm.reads(md_)) return false;
      mm.run(x.data, data_.data(), bias.empty() ? nullptr : bias.data, y.data);
      return true;
    }
#endif
    (void)dev, (void)x, (void)bias, (void)y;
    return false;
  }

 private:
#ifdef TP_HAS_DNNL
  /// w reordered into the layout oneDNN's matmul chooses for kPackRows rows.
  void pack_onednn(const std::shared_ptr<Cpu>& device, ConstView<T> w) {
    const dnnl_engine_t engine = detail::dnnl_cpu_engine();
    const detail::DnnlPackedMatmulKey key{kPackRows, w.rows, w.cols, w.cols, w.rows, false};
    md_ = detail::DnnlPackedMatmulCache::for_this_thread().get(key).weights_md();
    const auto bytes = static_cast<std::int64_t>(dnnl_memory_desc_get_size(&md_));
    data_ = Tensor<T, Cpu>(device, 1,
                           (bytes + static_cast<std::int64_t>(sizeof(T)) - 1) / static_cast<std::int64_t>(sizeof(T)));
    // w [out, in] with row stride ld is the [in, out] matrix x w^T multiplies, with strides {1, ld}.
    dnnl_memory_desc_t plain_md;
    const dnnl_dims_t dims = {w.cols, w.rows}, strides = {1, std::max<std::int64_t>(w.ld, 1)};
    detail::dnnl_check(dnnl_memory_desc_init_by_strides(&plain_md, 2, dims, dnnl_f32, strides),
                       "memory_desc (plain w)");
    dnnl_memory_t from = nullptr, to = nullptr;
    dnnl_primitive_desc_t reorder_pd = nullptr;
    dnnl_primitive_t reorder = nullptr;
    const auto cleanup = [&] {
      if (reorder) dnnl_primitive_destroy(reorder);
      if (reorder_pd) dnnl_primitive_desc_destroy(reorder_pd);
      if (from) dnnl_memory_destroy(from);
      if (to) dnnl_memory_destroy(to);
    };
    try {
      detail::dnnl_check(dnnl_memory_create(&from, &plain_md, engine, const_cast<T*>(w.data)),
                         "memory_create (plain w)");
      detail::dnnl_check(dnnl_memory_create(&to, &md_, engine, data_.data()), "memory_create (packed w)");
      detail::dnnl_check(dnnl_reorder_primitive_desc_create(&reorder_pd, &plain_md, engine, &md_, engine, nullptr),
                         "reorder primitive_desc_create");
      detail::dnnl_check(dnnl_primitive_create(&reorder, reorder_pd), "reorder primitive_create");
      const dnnl_exec_arg_t args[] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}};
      detail::dnnl_check(dnnl_primitive_execute(reorder, detail::dnnl_thread_stream(), 2, args), "reorder execute");
      detail::dnnl_check(dnnl_stream_wait(detail::dnnl_thread_stream()), "stream_wait");
    } catch (...) {
      cleanup();
      throw;
    }
    cleanup();
    form_ = Form::onednn;
  }
  dnnl_memory_desc_t md_{};
#endif

  Form form_ = Form::plain;
  std::int64_t rows_ = 0, cols_ = 0;
  const T* source_ = nullptr;
  Tensor<T, Cpu> data_;
};

}  // namespace tp
