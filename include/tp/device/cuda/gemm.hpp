#pragma once
/// GEMMs through cuBLASLt for row-major views, with the epilogues cuBLASLt fuses into the GEMM.
///
/// cuBLASLt is column-major. A row-major [m, n] matrix with leading dimension ld is, read
/// column-major, its [n, m] transpose with the same ld, so `C = op(A) op(B)` is computed as
/// `C^T = op(B)^T op(A)^T`: the operands swap, the transpose flags stay. Consequences for the
/// epilogues, in row-major terms: a bias vector has one entry per column of C (added to every
/// row), and the auxiliary GELU matrix has C's shape.
///
/// One plan (descriptors, layouts and the heuristic's algorithm) is cached per shape, operation,
/// epilogue, batch and the alignment of every pointer the heuristic sees (operands, bias, aux), so
/// a layer's steady state costs one cublasLtMatmul per GEMM. The epilogue's pointers and the aux
/// leading dimension are set before the heuristic runs: cublasLt.h says it reads them (for their
/// alignment), so an algorithm chosen without them may not accept them.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <type_traits>
#include <unordered_map>

#include "tp/core/dtype.hpp"
#include "tp/core/ops.hpp"
#include "tp/core/tensor.hpp"
#include "tp/device/cuda/error.hpp"
#include "tp/device/cuda/memory.hpp"

namespace tp {

namespace detail {

template <class T>
constexpr cudaDataType_t cuda_type() {
  if constexpr (std::is_same_v<T, float>) return CUDA_R_32F;
  else if constexpr (std::is_same_v<T, double>) return CUDA_R_64F;
  else if constexpr (std::is_same_v<T, __half> || std::is_same_v<T, f16>) return CUDA_R_16F;
  else if constexpr (std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, bf16>) return CUDA_R_16BF;
  else static_assert(sizeof(T) == 0, "tp::Cuda GEMMs support float, double, tp::f16 or __half, tp::bf16 or __nv_bfloat16");
}

inline cublasLtEpilogue_t lt_epilogue(Epilogue e) {
  switch (e) {
    case Epilogue::none: return CUBLASLT_EPILOGUE_DEFAULT;
    case Epilogue::bias: return CUBLASLT_EPILOGUE_BIAS;
    case Epilogue::gelu: return CUBLASLT_EPILOGUE_GELU;
    case Epilogue::gelu_bias: return CUBLASLT_EPILOGUE_GELU_BIAS;
    case Epilogue::gelu_aux_bias: return CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
    case Epilogue::dgelu: return CUBLASLT_EPILOGUE_DGELU;
    case Epilogue::dgelu_bgrad: return CUBLASLT_EPILOGUE_DGELU_BGRAD;
    case Epilogue::bgrad_a: return CUBLASLT_EPILOGUE_BGRADB;  // cuBLASLt's B is our A (operands swap)
  }
  return CUBLASLT_EPILOGUE_DEFAULT;
}

/// The largest power of two (up to 256) that divides the address: what the heuristic may assume.
inline std::uint32_t alignment_of(const void* p) {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  std::uint32_t align = 256;
  while (align > 1 && a % align != 0) align /= 2;
  return align;
}

/// The alignment every matrix of a strided batch has: the base's, and that of the stride in bytes.
inline std::uint32_t batch_alignment_of(const void* base, std::int64_t stride_bytes) {
  const std::uint32_t a = alignment_of(base), s = alignment_of(reinterpret_cast<const void*>(stride_bytes));
  return a < s ? a : s;
}

/// `count` GEMMs in one call, matrix i of each operand `stride_*` elements after matrix i - 1.
struct GemmBatch {
  std::int32_t count = 1;
  std::int64_t stride_a = 0, stride_b = 0, stride_c = 0;
  bool operator==(const GemmBatch&) const = default;
};

struct GemmKey {
  cudaDataType_t type;
  bool tf32;
  Op op_a, op_b;
  std::int64_t m, n, k, lda, ldb, ldc, ld_aux;
  Epilogue epilogue;
  std::uint32_t align_a, align_b, align_c, align_bias, align_aux;
  bool beta_zero;
  GemmBatch batch;
  bool operator==(const GemmKey&) const = default;
};

struct GemmKeyHash {
  std::size_t operator()(const GemmKey& k) const noexcept {
    std::size_t h = 1469598103934665603ull;
    auto mix = [&](std::uint64_t v) { h = (h ^ v) * 1099511628211ull; };
    mix(k.type), mix(k.tf32), mix(static_cast<int>(k.op_a)), mix(static_cast<int>(k.op_b)), mix(k.m), mix(k.n);
    mix(k.k), mix(k.lda), mix(k.ldb), mix(k.ldc), mix(k.ld_aux), mix(static_cast<int>(k.epilogue));
    mix(k.align_a), mix(k.align_b), mix(k.align_c), mix(k.align_bias), mix(k.align_aux), mix(k.beta_zero);
    mix(static_cast<std::uint64_t>(k.batch.count)), mix(k.batch.stride_a), mix(k.batch.stride_b);
    mix(k.batch.stride_c);
    return h;
  }
};

/// The pointers an epilogue hands cuBLASLt: the bias it reads or the bias gradient it writes, and
/// the aux matrix (GELU's pre-activation) when the epilogue has one.
template <class T>
const void* epilogue_bias(const EpilogueArgs<T>& e) {
  return e.kind == Epilogue::bgrad_a || e.kind == Epilogue::dgelu_bgrad ? static_cast<const void*>(e.bias_grad)
                                                                        : e.bias;
}
inline bool epilogue_has_aux(Epilogue e) {
  return e == Epilogue::gelu_aux_bias || e == Epilogue::dgelu || e == Epilogue::dgelu_bgrad;
}

/// Descriptors and the chosen algorithm for one GemmKey.
class GemmPlan {
 public:
  GemmPlan() = default;
  GemmPlan(const GemmPlan&) = delete;
  GemmPlan& operator=(const GemmPlan&) = delete;
  ~GemmPlan() {
    if (a_) cublasLtMatrixLayoutDestroy(a_);
    if (b_) cublasLtMatrixLayoutDestroy(b_);
    if (c_) cublasLtMatrixLayoutDestroy(c_);
    if (op_) cublasLtMatmulDescDestroy(op_);
  }
  cublasLtMatmulDesc_t op_ = nullptr;
  cublasLtMatrixLayout_t a_ = nullptr, b_ = nullptr, c_ = nullptr;
  cublasLtMatmulAlgo_t algo_{};
};

/// A cuBLASLt handle, its workspace (device memory as tp::Cuda allocates it: from the pool when
/// `pooled`, see memory.hpp) and the plan cache.
class LtGemm {
 public:
  LtGemm(cudaStream_t stream, std::size_t workspace_bytes, bool pooled)
      : workspace_bytes_(workspace_bytes), pooled_(pooled) {
    TP_CUBLAS_CHECK(cublasLtCreate(&handle_), "creating the cuBLASLt handle");
    if (workspace_bytes_ > 0) {
      const cudaError_t status = device_malloc(&workspace_, workspace_bytes_, stream, pooled_);
      if (status != cudaSuccess) {
        cublasLtDestroy(handle_);
        TP_CUDA_CHECK(status, "allocating a {} byte cuBLASLt workspace", workspace_bytes_);
      }
    }
  }
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;
  /// The workspace goes back on `stream`, after the GEMMs that used it.
  void release(cudaStream_t stream) noexcept {
    plans_.clear();
    device_free(workspace_, stream, pooled_);
    workspace_ = nullptr;
    if (handle_) cublasLtDestroy(handle_);
    handle_ = nullptr;
  }

  /// c = alpha op(a) op(b) + beta c, then the epilogue. Shapes are checked by the caller.
  template <class T>
  void run(cudaStream_t stream, bool tf32, Op op_a, Op op_b, std::int64_t m, std::int64_t n, std::int64_t k,
           double alpha, ConstView<T> a, ConstView<T> b, double beta, MatrixView<T> c, const EpilogueArgs<T>& e) {
    run_batch<T>(stream, tf32, op_a, op_b, m, n, k, alpha, a, b, beta, c, e, GemmBatch{});
  }

  /// `batch.count` GEMMs c_i = alpha op(a_i) op(b_i) + beta c_i in one cuBLASLt call, where a_i is
  /// the view `a` moved by i * batch.stride_a elements (likewise b_i, c_i): attention's per-sequence
  /// products. Shapes are checked by the caller.
  template <class T>
  void run_batch(cudaStream_t stream, bool tf32, Op op_a, Op op_b, std::int64_t m, std::int64_t n, std::int64_t k,
                 double alpha, ConstView<T> a, ConstView<T> b, double beta, MatrixView<T> c, const EpilogueArgs<T>& e,
                 const GemmBatch& batch) {
    const bool batched = batch.count > 1;
    const auto align = [&](const void* p, std::int64_t stride) {
      return batched ? batch_alignment_of(p, stride * static_cast<std::int64_t>(sizeof(T))) : alignment_of(p);
    };
    const void* bias = epilogue_bias(e);
    const bool aux = epilogue_has_aux(e.kind);
    const GemmKey key{cuda_type<T>(), tf32 && std::is_same_v<T, float>, op_a, op_b, m, n, k, a.ld, b.ld, c.ld,
                      aux ? e.aux.ld : 0, e.kind, align(a.data, batch.stride_a), align(b.data, batch.stride_b),
                      align(c.data, batch.stride_c), alignment_of(bias), aux ? alignment_of(e.aux.data) : 256,
                      beta == 0.0, batched ? batch : GemmBatch{}};
    std::lock_guard lock(mutex_);
    auto it = plans_.find(key);
    if (it == plans_.end()) it = plans_.emplace(key, make_plan(key, bias, aux ? e.aux.data : nullptr)).first;
    GemmPlan& plan = *it->second;
    auto describe = [&] {
      return fmt::format(
          "computing {} {}x{}x{} {} GEMM(s) (op(a) {}x{} ld {}, op(b) {}x{} ld {}, c ld {}, epilogue {})", key.batch.count,
          m, n, k, name(dtype_of_cuda(key.type)), m, k, a.ld, k, n, b.ld, c.ld, static_cast<int>(e.kind));
    };
    // This call's pointers (the plan was made with pointers of the same alignment, part of the key).
    set(plan.op_, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
    if (aux) set(plan.op_, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, static_cast<const void*>(e.aux.data));
    if constexpr (std::is_same_v<T, double>) {
      TP_CUBLAS_CHECK(cublasLtMatmul(handle_, plan.op_, &alpha, b.data, plan.a_, a.data, plan.b_, &beta, c.data,
                                     plan.c_, c.data, plan.c_, &plan.algo_, workspace_, workspace_bytes_, stream),
                      "{}", describe());
    } else {
      const float alpha_f = static_cast<float>(alpha), beta_f = static_cast<float>(beta);
      TP_CUBLAS_CHECK(cublasLtMatmul(handle_, plan.op_, &alpha_f, b.data, plan.a_, a.data, plan.b_, &beta_f, c.data,
                                     plan.c_, c.data, plan.c_, &plan.algo_, workspace_, workspace_bytes_, stream),
                      "{}", describe());
    }
  }

  cublasLtHandle_t handle() const { return handle_; }

 private:
  static DType dtype_of_cuda(cudaDataType_t t) {
    switch (t) {
      case CUDA_R_64F: return DType::f64;
      case CUDA_R_16F: return DType::f16;
      case CUDA_R_16BF: return DType::bf16;
      default: return DType::f32;
    }
  }

  template <class V>
  static void set(cublasLtMatmulDesc_t op, cublasLtMatmulDescAttributes_t attr, const V& value) {
    TP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, attr, &value, sizeof(value)), "setting matmul attribute {}",
                    static_cast<int>(attr));
  }

  std::unique_ptr<GemmPlan> make_plan(const GemmKey& key, const void* bias, const void* aux) {
    auto plan = std::make_unique<GemmPlan>();
    const bool fp64 = key.type == CUDA_R_64F;
    const cublasComputeType_t compute =
        fp64 ? CUBLAS_COMPUTE_64F : (key.tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F);
    const auto shape = fmt::format("planning a {}x{}x{} GEMM", key.m, key.n, key.k);
    TP_CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan->op_, compute, fp64 ? CUDA_R_64F : CUDA_R_32F), "{}", shape);
    // Operands swap (see the file comment): cuBLASLt's A is our b, its B our a.
    const cublasOperation_t ta = key.op_b == Op::n ? CUBLAS_OP_N : CUBLAS_OP_T;
    const cublasOperation_t tb = key.op_a == Op::n ? CUBLAS_OP_N : CUBLAS_OP_T;
    set(plan->op_, CUBLASLT_MATMUL_DESC_TRANSA, ta);
    set(plan->op_, CUBLASLT_MATMUL_DESC_TRANSB, tb);
    set(plan->op_, CUBLASLT_MATMUL_DESC_EPILOGUE, lt_epilogue(key.epilogue));
    set(plan->op_, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
    if (aux != nullptr) {
      set(plan->op_, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, aux);
      set(plan->op_, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, key.ld_aux);
    }
    // Column-major stored shapes: our b is op_b == n ? [k, n] : [n, k] row-major, i.e. [n, k] or [k, n] column-major.
    const std::uint64_t lt_a_rows = key.op_b == Op::n ? key.n : key.k, lt_a_cols = key.op_b == Op::n ? key.k : key.n;
    const std::uint64_t lt_b_rows = key.op_a == Op::n ? key.k : key.m, lt_b_cols = key.op_a == Op::n ? key.m : key.k;
    TP_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->a_, key.type, lt_a_rows, lt_a_cols, key.ldb), "{}", shape);
    TP_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->b_, key.type, lt_b_rows, lt_b_cols, key.lda), "{}", shape);
    TP_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->c_, key.type, key.n, key.m, key.ldc), "{}", shape);
    if (key.batch.count > 1) {
      const auto batch = [&](cublasLtMatrixLayout_t layout, std::int64_t stride) {
        TP_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &key.batch.count,
                                                         sizeof(key.batch.count)),
                        "{} x {}", key.batch.count, shape);
        TP_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                                         sizeof(stride)),
                        "{} x {}", key.batch.count, shape);
      };
      batch(plan->a_, key.batch.stride_b), batch(plan->b_, key.batch.stride_a), batch(plan->c_, key.batch.stride_c);
    }

    cublasLtMatmulPreference_t pref = nullptr;
    TP_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref), "{}", shape);
    const std::uint64_t ws = workspace_bytes_;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &key.align_b,
                                         sizeof(key.align_b));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &key.align_a,
                                         sizeof(key.align_a));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &key.align_c,
                                         sizeof(key.align_c));
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &key.align_c,
                                         sizeof(key.align_c));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(handle_, plan->op_, plan->a_, plan->b_, plan->c_,
                                                                  plan->c_, pref, 1, &result, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    TP_CUBLAS_CHECK(status, "{}", shape);
    if (found == 0)
      TP_THROW(CudaError,
               "cuBLASLt has no algorithm for {} {}x{}x{} GEMM(s) of type {} with epilogue {} (ld a {}, b {}, c {}, "
               "aux {}; alignment a {}, b {}, c {}, bias {}, aux {} bytes)",
               key.batch.count, key.m, key.n, key.k, static_cast<int>(key.type), static_cast<int>(key.epilogue),
               key.lda, key.ldb, key.ldc, key.ld_aux, key.align_a, key.align_b, key.align_c, key.align_bias,
               key.align_aux);
    plan->algo_ = result.algo;
    return plan;
  }

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  std::size_t workspace_bytes_ = 0;
  bool pooled_ = true;
  std::mutex mutex_;
  std::unordered_map<GemmKey, std::unique_ptr<GemmPlan>, GemmKeyHash> plans_;
};

}  // namespace detail
}  // namespace tp
