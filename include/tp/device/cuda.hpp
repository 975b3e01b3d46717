#pragma once
/// The GPU device policy: stream-ordered device memory, cuBLASLt GEMMs (with fused epilogues)
/// and small element-wise kernels, behind the same members as tp::Cpu, so the layers run
/// unchanged with `Device = tp::Cuda`. Every call is ordered on the device's stream; only
/// `to_host`, `from_host` and `synchronize` wait for it.
///
/// Compilers: host code that creates a tp::Cuda, moves memory or runs GEMMs compiles with any C++20
/// compiler (it calls the CUDA runtime and cuBLASLt only). The element-wise members launch kernels
/// from tp/device/kernels/*.cuh, so a translation unit that instantiates them must be a .cu file
/// compiled by nvcc; elsewhere they fail to compile with a message saying so.
///
/// Types: float (FP32, or TF32 tensor cores with `Options::tf32`), __half and __nv_bfloat16 with
/// float accumulation, and double.

#ifndef TP_HAS_CUDA
#error "tp/device/cuda.hpp needs the tp::cuda CMake component: target_link_libraries(... tp::cuda)"
#endif

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>

#include "tp/comm/communicator.hpp"
#include "tp/core/dtype.hpp"
#include "tp/core/ops.hpp"
#include "tp/core/tensor.hpp"
#include "tp/detail/block_checks.hpp"
#include "tp/device/cuda_error.hpp"
#include "tp/device/cuda_gemm.hpp"

#ifdef __CUDACC__
#include "tp/device/kernels/blocks.cuh"
#include "tp/device/kernels/elementwise.cuh"
#include "tp/device/kernels/train.cuh"
#endif

namespace tp {

template <> struct DTypeOf<__half> : std::integral_constant<DType, DType::f16> {};
template <> struct DTypeOf<__nv_bfloat16> : std::integral_constant<DType, DType::bf16> {};

namespace detail {

template <class T>
inline constexpr bool compiled_by_nvcc =
#ifdef __CUDACC__
    true;
#else
    false;
#endif

/// A host-side value of a 16-bit type as double (their many conversion operators make a plain
/// static_cast ambiguous).
template <class T>
double to_double(T x) {
  if constexpr (std::is_same_v<T, __half>) return __half2float(x);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __bfloat162float(x);
  else return static_cast<double>(x);
}

template <class T>
void check_same_shape_cuda(ConstView<T> a, ConstView<T> b, const char* op) {
  TP_CHECK(a.rows == b.rows && a.cols == b.cols, "{}: shapes {}x{} and {}x{} differ", op, a.rows, a.cols, b.rows,
           b.cols);
}

}  // namespace detail

struct CudaOptions {
  /// Device ordinal; -1 takes the calling thread's current device.
  int device = -1;
  /// Run float GEMMs on tensor cores in TF32 (10-bit mantissa inputs): several times faster, with
  /// errors near 1e-3 instead of 1e-6.
  bool tf32 = false;
  /// cuBLASLt workspace; 32 MiB is what cuBLAS itself uses on Hopper.
  std::size_t workspace_bytes = std::size_t{32} << 20;
  /// Borrow this stream instead of creating one (the device does not destroy it).
  Stream stream = nullptr;
};

class Cuda {
 public:
  static constexpr bool on_host = false;
  using Options = CudaOptions;

  /// Number of CUDA devices, 0 when there are none or the driver cannot be reached; `why` gets
  /// the reason in that case. Never throws: tests use it to decide whether to skip.
  static int device_count(std::string* why = nullptr) noexcept {
    int count = 0;
    const cudaError_t status = cudaGetDeviceCount(&count);
    if (status != cudaSuccess) {
      (void)cudaGetLastError();
      if (why) *why = fmt::format("cudaGetDeviceCount failed: {}", detail::cuda_status(status));
      return 0;
    }
    if (count == 0 && why) *why = "cudaGetDeviceCount found 0 devices";
    return count;
  }

  Cuda() : Cuda(Options{}) {}
  explicit Cuda(Options options) : options_(options) {
    std::string why;
    const int count = device_count(&why);
    if (count == 0) TP_THROW(CudaError, "tp::Cuda: no CUDA device: {}", why);
    device_ = options.device;
    if (device_ < 0) TP_CUDA_CHECK(cudaGetDevice(&device_), "reading the current device");
    TP_CHECK(device_ < count, "tp::Cuda: device {} requested, {} present", device_, count);
    TP_CUDA_CHECK(cudaSetDevice(device_), "selecting device {}", device_);
    if (options.stream != nullptr) {
      stream_ = options.stream;
    } else {
      TP_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "creating a stream on device {}",
                    device_);
      owns_stream_ = true;
    }
    try {
      gemm_ = std::make_unique<detail::LtGemm>(stream_, options.workspace_bytes);
    } catch (...) {
      if (owns_stream_) cudaStreamDestroy(stream_);
      throw;
    }
  }
  Cuda(const Cuda&) = delete;
  Cuda& operator=(const Cuda&) = delete;
  ~Cuda() {
    cudaSetDevice(device_);
    gemm_->release(stream_);
    if (owns_stream_) {
      cudaStreamSynchronize(stream_);
      cudaStreamDestroy(stream_);
    }
  }

  int device() const { return device_; }
  const Options& options() const { return options_; }
  Stream stream() const { return stream_; }
  void synchronize() const {
    activate();
    TP_CUDA_CHECK(cudaStreamSynchronize(stream_), "synchronizing the stream of device {}", device_);
  }
  /// "NVIDIA H100 80GB HBM3 (sm_90)", for benchmark labels.
  std::string name() const {
    cudaDeviceProp prop{};
    TP_CUDA_CHECK(cudaGetDeviceProperties(&prop, device_), "reading the properties of device {}", device_);
    return fmt::format("{} (sm_{}{})", prop.name, prop.major, prop.minor);
  }

  template <class T>
  T* allocate(std::int64_t n) const {
    if (n == 0) return nullptr;
    activate();
    void* p = nullptr;
    TP_CUDA_CHECK(cudaMallocAsync(&p, static_cast<std::size_t>(n) * sizeof(T), stream_),
                  "allocating {} elements ({} bytes) on device {}", n, static_cast<std::size_t>(n) * sizeof(T),
                  device_);
    return static_cast<T*>(p);
  }
  template <class T>
  void deallocate(T* p, std::int64_t) const noexcept {
    if (p == nullptr) return;
    cudaSetDevice(device_);
    cudaFreeAsync(p, stream_);  // a failure here cannot be reported from a destructor
  }

  /// dst = src within device memory (any mix of device, managed and pinned memory works: UVA).
  template <class T>
  void copy(In<T> src, MatrixView<T> dst) const {
    copy_2d(src, dst, "copy");
  }
  /// Both wait for the copy, so the host buffer may be read or freed on return.
  template <class T>
  void to_host(In<T> src, MatrixView<T> host) const {
    copy_2d(src, host, "to_host");
    synchronize();
  }
  template <class T>
  void from_host(In<T> host, MatrixView<T> dst) const {
    copy_2d(host, dst, "from_host");
    synchronize();
  }

  /// c = alpha op(a) op(b) + beta c, through cuBLASLt.
  template <class T>
  void gemm(Op op_a, Op op_b, std::type_identity_t<T> alpha, In<T> a, In<T> b, std::type_identity_t<T> beta,
            MatrixView<T> c) const {
    run_gemm<T>(op_a, op_b, alpha, a, b, beta, c, EpilogueArgs<T>{});
  }

  /// c = alpha op(a) op(b) + beta c + bias[0, :] in one cuBLASLt call (the bias epilogue). Layers
  /// use it instead of gemm + add_bias when the device offers it.
  template <class T>
    requires(!std::is_same_v<T, double>)
  void gemm_bias(Op op_a, Op op_b, std::type_identity_t<T> alpha, In<T> a, In<T> b, std::type_identity_t<T> beta,
                 MatrixView<T> c, In<T> bias) const {
    TP_CHECK(bias.rows == 1 && bias.cols == c.cols, "gemm_bias: bias is {}x{}, output has {} columns", bias.rows,
             bias.cols, c.cols);
    run_gemm<T>(op_a, op_b, alpha, a, b, beta, c, EpilogueArgs<T>{.kind = Epilogue::bias, .bias = bias.data});
  }

  /// Any cuBLASLt epilogue (see tp::Epilogue; GELU epilogues are the tanh approximation).
  template <class T>
    requires(!std::is_same_v<T, double>)
  void gemm_epilogue(Op op_a, Op op_b, std::type_identity_t<T> alpha, In<T> a, In<T> b, std::type_identity_t<T> beta,
                     MatrixView<T> c, const EpilogueArgs<T>& epilogue) const {
    const bool aux = epilogue.kind == Epilogue::gelu_aux_bias || epilogue.kind == Epilogue::dgelu ||
                     epilogue.kind == Epilogue::dgelu_bgrad;
    TP_CHECK(!aux || (epilogue.aux.rows == c.rows && epilogue.aux.cols == c.cols && epilogue.aux.ld % 8 == 0),
             "gemm_epilogue: aux is {}x{} with ld {}, expected {}x{} with ld a multiple of 8", epilogue.aux.rows,
             epilogue.aux.cols, epilogue.aux.ld, c.rows, c.cols);
    run_gemm<T>(op_a, op_b, alpha, a, b, beta, c, epilogue);
  }

  template <class T>
  void fill(MatrixView<T> x, std::type_identity_t<T> value) const {
    static_assert(detail::compiled_by_nvcc<T>, "tp::Cuda::fill launches a kernel: compile this file with nvcc (.cu)");
#ifdef __CUDACC__
    if (x.empty()) return;
    activate();
    kernels::fill<<<kernels::grid_for(x.size()), 256, 0, stream_>>>(x.data, {x.rows, x.cols}, x.ld, value);
    check_launch("fill", x.rows, x.cols);
#endif
  }

  /// y += x
  template <class T>
  void add(In<T> x, MatrixView<T> y) const {
    static_assert(detail::compiled_by_nvcc<T>, "tp::Cuda::add launches a kernel: compile this file with nvcc (.cu)");
    detail::check_same_shape_cuda<T>(x, y, "add");
#ifdef __CUDACC__
    if (x.empty()) return;
    activate();
    kernels::add<<<kernels::grid_for(x.size()), 256, 0, stream_>>>(x.data, x.ld, y.data, y.ld, {x.rows, x.cols});
    check_launch("add", x.rows, x.cols);
#endif
  }

  template <class T>
  void add_bias(MatrixView<T> y, In<T> bias) const {
    static_assert(detail::compiled_by_nvcc<T>, "tp::Cuda::add_bias launches a kernel: compile this file with nvcc");
    TP_CHECK(bias.rows == 1 && bias.cols == y.cols, "add_bias: bias is {}x{}, output has {} columns", bias.rows,
             bias.cols, y.cols);
#ifdef __CUDACC__
    if (y.empty()) return;
    activate();
    kernels::add_bias<<<kernels::grid_for(y.size()), 256, 0, stream_>>>(y.data, y.ld, {y.rows, y.cols}, bias.data);
    check_launch("add_bias", y.rows, y.cols);
#endif
  }

  template <class T>
  void add_bias_grad(In<T> dy, MatrixView<T> db) const {
    static_assert(detail::compiled_by_nvcc<T>, "tp::Cuda::add_bias_grad launches a kernel: compile with nvcc");
    TP_CHECK(db.rows == 1 && db.cols == dy.cols, "add_bias_grad: bias gradient is {}x{}, gradient has {} columns",
             db.rows, db.cols, dy.cols);
#ifdef __CUDACC__
    if (dy.cols == 0) return;
    activate();
    kernels::add_bias_grad<<<kernels::grid_for(dy.cols), 256, 0, stream_>>>(dy.data, dy.ld, {dy.rows, dy.cols},
                                                                            db.data);
    check_launch("add_bias_grad", dy.rows, dy.cols);
#endif
  }

  template <class T>
  void gelu(In<T> x, MatrixView<T> y, Gelu kind) const {
    static_assert(detail::compiled_by_nvcc<T>, "tp::Cuda::gelu launches a kernel: compile this file with nvcc");
    detail::check_same_shape_cuda<T>(x, y, "gelu");
#ifdef __CUDACC__
    if (x.empty()) return;
    activate();
    kernels::gelu<<<kernels::grid_for(x.size()), 256, 0, stream_>>>(x.data, x.ld, y.data, y.ld, {x.rows, x.cols},
                                                                    kind);
    check_launch("gelu", x.rows, x.cols);
#endif
  }

  template <class T>
  void gelu_backward(In<T> x, In<T> dy, MatrixView<T> dx, Gelu kind) const {
    static_assert(detail::compiled_by_nvcc<T>, "tp::Cuda::gelu_backward launches a kernel: compile with nvcc");
    detail::check_same_shape_cuda<T>(x, dx, "gelu_backward");
    detail::check_same_shape_cuda<T>(dy, dx, "gelu_backward");
#ifdef __CUDACC__
    if (x.empty()) return;
    activate();
    kernels::gelu_backward<<<kernels::grid_for(x.size()), 256, 0, stream_>>>(x.data, x.ld, dy.data, dy.ld, dx.data,
                                                                             dx.ld, {x.rows, x.cols}, kind);
    check_launch("gelu_backward", x.rows, x.cols);
#endif
  }

  template <class T>
  void scale(MatrixView<T> x, std::type_identity_t<T> factor) const {
    static_assert(detail::compiled_by_nvcc<T>, "tp::Cuda::scale launches a kernel: compile this file with nvcc");
#ifdef __CUDACC__
    if (x.empty()) return;
    activate();
    kernels::scale<<<kernels::grid_for(x.size()), 256, 0, stream_>>>(
        x.data, x.ld, {x.rows, x.cols}, static_cast<kernels::accum_t<T>>(detail::to_double(factor)));
    check_launch("scale", x.rows, x.cols);
#endif
  }

  // ---- The transformer-block members, twins of tp::Cpu's (same arguments, same formulas; see
  // cpu.hpp). Kernels in tp/device/kernels/blocks.cuh and train.cuh; sums in a fixed order (no
  // atomics on values), so two runs give the same bits.

  /// y[:, j] = silu(gate_up[:, j]) * gate_up[:, n + j], with y [rows, n].
  template <class T>
  void swiglu(In<T> gate_up, MatrixView<T> y) const {
    static_assert(detail::compiled_by_nvcc<T>, "tp::Cuda::swiglu launches a kernel: compile this file with nvcc");
    detail::check_swiglu<T>(gate_up, y.rows, y.cols, "swiglu");
#ifdef __CUDACC__
    if (y.empty()) return;
    activate();
    kernels::swiglu<<<kernels::grid_for(y.size()), 256, 0, stream_>>>(gate_up.data, gate_up.ld, y.data, y.ld,
                                                                       {y.rows, y.cols});
    check_launch("swiglu", y.rows, y.cols);
#endif
  }

  /// d gate_up from dy [rows, n]: d gate = dy * up * silu'(gate), d up = dy * silu(gate).
  template <class T>
  void swiglu_backward(In<T> gate_up, In<T> dy, MatrixView<T> d_gate_up) const {
    static_assert(detail::compiled_by_nvcc<T>, "tp::Cuda::swiglu_backward launches a kernel: compile with nvcc");
    detail::check_swiglu<T>(gate_up, dy.rows, dy.cols, "swiglu_backward");
    detail::check_same_shape_cuda<T>(gate_up, d_gate_up, "swiglu_backward");
#ifdef __CUDACC__
    if (dy.empty()) return;
    activate();
    kernels::swiglu_backward<<<kernels::grid_for(dy.size()), 256, 0, stream_>>>(
        gate_up.data, gate_up.ld, dy.data, dy.ld, d_gate_up.data, d_gate_up.ld, {dy.rows, dy.cols});
    check_launch("swiglu_backward", dy.rows, dy.cols);
#endif
  }

  /// The position (row-major index) of the first id outside [begin, end) and not equal to
  /// `allowed`, or -1. Returns to the host, so it waits for the stream.
  template <class I = std::int64_t>
  std::int64_t first_outside(In<I> ids, std::int64_t begin, std::int64_t end, std::int64_t allowed) const {
    static_assert(std::is_same_v<I, std::int64_t>, "tp::Cuda::first_outside: ids are std::int64_t");
    static_assert(detail::compiled_by_nvcc<I>, "tp::Cuda::first_outside launches a kernel: compile with nvcc");
    detail::check_ids(ids, ids.size(), "first_outside");
#ifdef __CUDACC__
    if (ids.empty()) return -1;
    activate();
    const Scratch<unsigned long long> first(*this, 1);
    TP_CUDA_CHECK(cudaMemsetAsync(first.data, 0xff, sizeof(unsigned long long), stream_),
                  "clearing first_outside's result on device {}", device_);
    kernels::first_outside<<<kernels::grid_for(ids.size()), 256, 0, stream_>>>(ids.data, ids.size(), begin, end,
                                                                                allowed, first.data);
    check_launch("first_outside", ids.rows, ids.cols);
    unsigned long long host = 0;
    TP_CUDA_CHECK(cudaMemcpyAsync(&host, first.data, sizeof host, cudaMemcpyDeviceToHost, stream_),
                  "reading first_outside's result for {}x{} ids on device {}", ids.rows, ids.cols, device_);
    synchronize();
    return host == ~0ull ? -1 : static_cast<std::int64_t>(host);
#else
    return -1;
#endif
  }

  /// out[i, :] = table[ids[i] - first, :] when that row of this vocabulary shard exists, else zeros.
  template <class T>
  void embedding_forward(In<std::int64_t> ids, In<T> table, std::int64_t first, MatrixView<T> out) const {
    static_assert(detail::compiled_by_nvcc<T>, "tp::Cuda::embedding_forward launches a kernel: compile with nvcc");
    detail::check_ids(ids, out.rows, "embedding_forward");
    TP_CHECK(table.cols == out.cols, "embedding_forward: table has {} columns, output {}", table.cols, out.cols);
#ifdef __CUDACC__
    if (out.empty()) return;
    activate();
    kernels::embedding_forward<<<kernels::grid_for(out.size()), 256, 0, stream_>>>(
        ids.data, table.data, table.ld, table.rows, first, out.data, out.ld, {out.rows, out.cols});
    check_launch("embedding_forward", out.rows, out.cols);
#endif
  }

  /// d_table[ids[i] - first, :] += dy[i, :] for the ids inside this shard. Deterministic without
  /// atomics or sorting: one thread per column adds the tokens in order (see the kernel).
  template <class T>
  void embedding_backward(In<std::int64_t> ids, In<T> dy, std::int64_t first, MatrixView<T> d_table) const {
    static_assert(detail::compiled_by_nvcc<T>, "tp::Cuda::embedding_backward launches a kernel: compile with nvcc");
    detail::check_ids(ids, dy.rows, "embedding_backward");
    TP_CHECK(d_table.cols == dy.cols, "embedding_backward: table gradient has {} columns, gradient {}", d_table.cols,
             dy.cols);
#ifdef __CUDACC__
    if (dy.empty()) return;
    activate();
    kernels::embedding_backward<<<kernels::grid_for(dy.cols), 256, 0, stream_>>>(
        ids.data, dy.data, dy.ld, first, d_table.data, d_table.ld, d_table.rows, {dy.rows, dy.cols});
    check_launch("embedding_backward", dy.rows, dy.cols);
#endif
  }

  /// out[t, 0] = max over this shard's columns of logits[t, :].
  template <class T>
  void row_max(In<T> logits, MatrixView<T> out) const {
    static_assert(detail::compiled_by_nvcc<T>, "tp::Cuda::row_max launches a kernel: compile with nvcc");
    TP_CHECK(out.rows == logits.rows && out.cols == 1 && logits.cols > 0, "row_max: logits are {}x{}, output {}x{}",
             logits.rows, logits.cols, out.rows, out.cols);
#ifdef __CUDACC__
    if (logits.rows == 0) return;
    activate();
    kernels::row_max<<<kernels::row_grid(logits.rows), kernels::kRowThreads, 0, stream_>>>(
        logits.data, logits.ld, {logits.rows, logits.cols}, out.data, out.ld);
    check_launch("row_max", logits.rows, logits.cols);
#endif
  }

  /// This shard's partial sums {sum exp(x - m), x_target - m, sum (x - m)} in double, given the
  /// global row max m (see Cpu::cross_entropy_stats).
  template <class T>
  void cross_entropy_stats(In<T> logits, In<std::int64_t> targets, std::int64_t first, In<T> max,
                           MatrixView<double> stats) const {
    static_assert(detail::compiled_by_nvcc<T>, "tp::Cuda::cross_entropy_stats launches a kernel: compile with nvcc");
    detail::check_ce<T>(logits, targets, max, stats, "cross_entropy_stats");
#ifdef __CUDACC__
    if (logits.rows == 0) return;
    activate();
    kernels::cross_entropy_stats<<<kernels::row_grid(logits.rows), kernels::kRowThreads, 0, stream_>>>(
        logits.data, logits.ld, {logits.rows, logits.cols}, targets.data, first, max.data, max.ld, stats.data,
        stats.ld);
    check_launch("cross_entropy_stats", logits.rows, logits.cols);
#endif
  }

  /// Per-token loss from the summed statistics; zero where the target is `ignore_index`.
  template <class T>
  void cross_entropy_loss(In<double> stats, In<std::int64_t> targets, std::int64_t vocab, std::int64_t ignore_index,
                          double smoothing, MatrixView<T> loss) const {
    static_assert(detail::compiled_by_nvcc<T>, "tp::Cuda::cross_entropy_loss launches a kernel: compile with nvcc");
    TP_CHECK(stats.cols == 3 && loss.rows == stats.rows && loss.cols == 1 && targets.size() == stats.rows &&
                 targets.contiguous(),
             "cross_entropy_loss: stats {}x{}, {} targets, loss {}x{}", stats.rows, stats.cols, targets.size(),
             loss.rows, loss.cols);
#ifdef __CUDACC__
    if (stats.rows == 0) return;
    activate();
    kernels::cross_entropy_loss<<<kernels::grid_for(stats.rows), 256, 0, stream_>>>(
        stats.data, stats.ld, targets.data, stats.rows, vocab, ignore_index, smoothing, loss.data, loss.ld);
    check_launch("cross_entropy_loss", stats.rows, stats.cols);
#endif
  }

  /// d logits = grad_loss (softmax - (1 - s) onehot(target) - s / vocab), zero rows for ignore_index.
  template <class T>
  void cross_entropy_backward(In<T> logits, In<std::int64_t> targets, std::int64_t first, In<T> max, In<double> stats,
                              In<T> grad_loss, std::int64_t vocab, std::int64_t ignore_index, double smoothing,
                              MatrixView<T> grad_logits) const {
    static_assert(detail::compiled_by_nvcc<T>, "tp::Cuda::cross_entropy_backward launches a kernel: compile with nvcc");
    detail::check_ce<T>(logits, targets, max, stats, "cross_entropy_backward");
    detail::check_same_shape_cuda<T>(logits, grad_logits, "cross_entropy_backward");
    TP_CHECK(grad_loss.rows == logits.rows && grad_loss.cols == 1,
             "cross_entropy_backward: loss gradient is {}x{}, expected {}x1", grad_loss.rows, grad_loss.cols,
             logits.rows);
#ifdef __CUDACC__
    if (logits.empty()) return;
    activate();
    kernels::cross_entropy_backward<<<kernels::grid_for(logits.size()), 256, 0, stream_>>>(
        logits.data, logits.ld, {logits.rows, logits.cols}, targets.data, first, max.data, max.ld, stats.data,
        stats.ld, grad_loss.data, grad_loss.ld, vocab, ignore_index, smoothing, grad_logits.data, grad_logits.ld);
    check_launch("cross_entropy_backward", logits.rows, logits.cols);
#endif
  }

  /// Scaled dot-product attention per sequence and head, as Cpu::attention_forward (q [tokens,
  /// hq d], k and v [tokens, hk d], query head h reads kv head h / (hq / hk)); probs keeps the
  /// softmax, block (b, h) at rows (b hq + h) seq_len. One cuBLASLt GEMM per (sequence, head) for
  /// the scores and one for the output, with a single softmax kernel over all heads between them.
  template <class T>
  void attention_forward(In<T> q, In<T> k, In<T> v, std::int64_t seq_len, std::int64_t head_dim, bool causal,
                         MatrixView<T> probs, MatrixView<T> out) const {
    static_assert(detail::compiled_by_nvcc<T>, "tp::Cuda::attention_forward launches a kernel: compile with nvcc");
    const auto g = detail::attention_geometry<T>(q, k, v, seq_len, head_dim, probs.rows, probs.cols, out.rows, out.cols,
                                         "attention_forward");
#ifdef __CUDACC__
    if (g.batch == 0) return;
    const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
    for (std::int64_t b = 0; b < g.batch; ++b)
      for (std::int64_t h = 0; h < g.hq; ++h) {
        const std::int64_t kv = h / g.group, r0 = b * seq_len;
        head_gemm<T>(Op::n, Op::t, scale, q.block(r0, h * head_dim, seq_len, head_dim),
                     k.block(r0, kv * head_dim, seq_len, head_dim), 0.0,
                     probs.rows_range((b * g.hq + h) * seq_len, seq_len));
      }
    kernels::attention_softmax<<<kernels::row_grid(probs.rows), kernels::kRowThreads, 0, stream_>>>(
        probs.data, probs.ld, probs.rows, seq_len, causal);
    check_launch("attention_softmax", probs.rows, probs.cols);
    for (std::int64_t b = 0; b < g.batch; ++b)
      for (std::int64_t h = 0; h < g.hq; ++h) {
        const std::int64_t kv = h / g.group, r0 = b * seq_len;
        head_gemm<T>(Op::n, Op::n, 1.0, ConstView<T>(probs.rows_range((b * g.hq + h) * seq_len, seq_len)),
                     v.block(r0, kv * head_dim, seq_len, head_dim), 0.0, out.block(r0, h * head_dim, seq_len, head_dim));
      }
#endif
  }

  /// Gradients of attention_forward (dk and dv summed over the query heads of each group) from
  /// dout and the saved probs; `d_scores` (probs' shape) holds every head's score gradient, so one
  /// kernel does the softmax backward of all heads.
  template <class T>
  void attention_backward(In<T> q, In<T> k, In<T> v, In<T> probs, In<T> dout, std::int64_t seq_len,
                          std::int64_t head_dim, MatrixView<T> d_scores, MatrixView<T> dq, MatrixView<T> dk,
                          MatrixView<T> dv) const {
    static_assert(detail::compiled_by_nvcc<T>, "tp::Cuda::attention_backward launches a kernel: compile with nvcc");
    const auto g = detail::attention_geometry<T>(q, k, v, seq_len, head_dim, probs.rows, probs.cols, dout.rows, dout.cols,
                                         "attention_backward");
    detail::check_same_shape_cuda<T>(q, dq, "attention_backward dq");
    detail::check_same_shape_cuda<T>(k, dk, "attention_backward dk");
    detail::check_same_shape_cuda<T>(v, dv, "attention_backward dv");
    detail::check_same_shape_cuda<T>(probs, d_scores, "attention_backward d_scores");
#ifdef __CUDACC__
    if (g.batch == 0) return;
    fill(dk, T(0));
    fill(dv, T(0));
    const auto head = [&](ConstView<T> m, std::int64_t b, std::int64_t h) {
      return m.rows_range((b * g.hq + h) * seq_len, seq_len);
    };
    // dv += p^T do; dp = do v^T; ds = p (dp - rowsum(p dp)) scale; dq = ds k; dk += ds^T q.
    for (std::int64_t b = 0; b < g.batch; ++b)
      for (std::int64_t h = 0; h < g.hq; ++h) {
        const std::int64_t kv = h / g.group, r0 = b * seq_len;
        const ConstView<T> d_o = dout.block(r0, h * head_dim, seq_len, head_dim);
        head_gemm<T>(Op::t, Op::n, 1.0, head(probs, b, h), d_o, 1.0, dv.block(r0, kv * head_dim, seq_len, head_dim));
        head_gemm<T>(Op::n, Op::t, 1.0, d_o, v.block(r0, kv * head_dim, seq_len, head_dim), 0.0,
                     d_scores.rows_range((b * g.hq + h) * seq_len, seq_len));
      }
    kernels::attention_softmax_backward<<<kernels::row_grid(probs.rows), kernels::kRowThreads, 0, stream_>>>(
        probs.data, probs.ld, d_scores.data, d_scores.ld, probs.rows, seq_len,
        static_cast<kernels::accum_t<T>>(1.0 / std::sqrt(static_cast<double>(head_dim))));
    check_launch("attention_softmax_backward", probs.rows, probs.cols);
    for (std::int64_t b = 0; b < g.batch; ++b)
      for (std::int64_t h = 0; h < g.hq; ++h) {
        const std::int64_t kv = h / g.group, r0 = b * seq_len;
        const ConstView<T> ds = head(ConstView<T>(d_scores), b, h);
        head_gemm<T>(Op::n, Op::n, 1.0, ds, k.block(r0, kv * head_dim, seq_len, head_dim), 0.0,
                     dq.block(r0, h * head_dim, seq_len, head_dim));
        head_gemm<T>(Op::t, Op::n, 1.0, ds, q.block(r0, h * head_dim, seq_len, head_dim), 1.0,
                     dk.block(r0, kv * head_dim, seq_len, head_dim));
      }
#endif
  }

  /// One AdamW update (torch.optim.AdamW) of a parameter shard; the constants in double on the
  /// host, the update in float for float and 16-bit T (in T for double), as Cpu::adamw_step.
  template <class T>
  void adamw_step(MatrixView<T> param, In<T> grad, MatrixView<T> exp_avg, MatrixView<T> exp_avg_sq, double lr,
                  double beta1, double beta2, double eps, double weight_decay, std::int64_t step) const {
    static_assert(detail::compiled_by_nvcc<T>, "tp::Cuda::adamw_step launches a kernel: compile with nvcc");
    detail::check_same_shape_cuda<T>(grad, param, "adamw_step");
    detail::check_same_shape_cuda<T>(exp_avg, param, "adamw_step");
    detail::check_same_shape_cuda<T>(exp_avg_sq, param, "adamw_step");
    TP_CHECK(step >= 1, "adamw_step: step must count from 1, got {}", step);
#ifdef __CUDACC__
    if (param.empty()) return;
    using A = kernels::accum_t<T>;
    const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(step)),
                 bc2 = 1.0 - std::pow(beta2, static_cast<double>(step));
    const kernels::AdamWConstants<A> constants{A(1.0 - lr * weight_decay), A(beta1), A(beta2), A(1.0 - beta1),
                                               A(1.0 - beta2), A(lr / bc1), A(1.0 / std::sqrt(bc2)), A(eps)};
    activate();
    kernels::adamw_step<<<kernels::grid_for(param.size()), 256, 0, stream_>>>(
        param.data, param.ld, grad.data, grad.ld, exp_avg.data, exp_avg.ld, exp_avg_sq.data, exp_avg_sq.ld,
        {param.rows, param.cols}, constants);
    check_launch("adamw_step", param.rows, param.cols);
#endif
  }

  /// LayerNorm over each row (biased variance, as torch.nn.LayerNorm); saves mean and rstd
  /// ([rows, 1], in T as on the CPU) for the backward. Statistics in double.
  template <class T>
  void layer_norm(In<T> x, In<T> gamma, In<T> beta, MatrixView<T> y, MatrixView<T> mean, MatrixView<T> rstd,
                  double eps) const {
    static_assert(detail::compiled_by_nvcc<T>, "tp::Cuda::layer_norm launches a kernel: compile with nvcc");
    detail::check_same_shape_cuda<T>(x, y, "layer_norm");
    TP_CHECK(gamma.rows == 1 && gamma.cols == x.cols && beta.rows == 1 && beta.cols == x.cols,
             "layer_norm: gamma is {}x{} and beta {}x{}, input has {} columns", gamma.rows, gamma.cols, beta.rows,
             beta.cols, x.cols);
    TP_CHECK(mean.rows == x.rows && mean.cols == 1 && rstd.rows == x.rows && rstd.cols == 1,
             "layer_norm: mean is {}x{} and rstd {}x{}, expected {}x1", mean.rows, mean.cols, rstd.rows, rstd.cols,
             x.rows);
    TP_CHECK(x.cols > 0, "layer_norm: input has no columns");
#ifdef __CUDACC__
    if (x.rows == 0) return;
    activate();
    kernels::layer_norm<<<kernels::row_grid(x.rows), kernels::kRowThreads, 0, stream_>>>(
        x.data, x.ld, {x.rows, x.cols}, gamma.data, beta.data, y.data, y.ld, mean.data, mean.ld, rstd.data, rstd.ld,
        eps);
    check_launch("layer_norm", x.rows, x.cols);
#endif
  }

  /// The LayerNorm backward from the saved mean and rstd: dx, and dgamma += sum_rows(dy xhat),
  /// dbeta += sum_rows(dy) (one thread per column over the rows in order: deterministic).
  template <class T>
  void layer_norm_backward(In<T> x, In<T> gamma, In<T> mean, In<T> rstd, In<T> dy, MatrixView<T> dx,
                           MatrixView<T> dgamma, MatrixView<T> dbeta) const {
    static_assert(detail::compiled_by_nvcc<T>, "tp::Cuda::layer_norm_backward launches a kernel: compile with nvcc");
    detail::check_same_shape_cuda<T>(x, dx, "layer_norm_backward");
    detail::check_same_shape_cuda<T>(dy, dx, "layer_norm_backward");
    TP_CHECK(gamma.rows == 1 && gamma.cols == x.cols && dgamma.rows == 1 && dgamma.cols == x.cols &&
                 dbeta.rows == 1 && dbeta.cols == x.cols,
             "layer_norm_backward: gamma {}x{}, dgamma {}x{}, dbeta {}x{}, input has {} columns", gamma.rows,
             gamma.cols, dgamma.rows, dgamma.cols, dbeta.rows, dbeta.cols, x.cols);
    TP_CHECK(mean.rows == x.rows && mean.cols == 1 && rstd.rows == x.rows && rstd.cols == 1,
             "layer_norm_backward: mean is {}x{} and rstd {}x{}, expected {}x1", mean.rows, mean.cols, rstd.rows,
             rstd.cols, x.rows);
#ifdef __CUDACC__
    if (x.empty()) return;
    activate();
    kernels::layer_norm_backward_dx<<<kernels::row_grid(x.rows), kernels::kRowThreads, 0, stream_>>>(
        x.data, x.ld, {x.rows, x.cols}, gamma.data, mean.data, mean.ld, rstd.data, rstd.ld, dy.data, dy.ld, dx.data,
        dx.ld);
    check_launch("layer_norm_backward_dx", x.rows, x.cols);
    kernels::layer_norm_backward_params<<<kernels::grid_for(x.cols), 256, 0, stream_>>>(
        x.data, x.ld, {x.rows, x.cols}, mean.data, mean.ld, rstd.data, rstd.ld, dy.data, dy.ld, dgamma.data,
        dbeta.data);
    check_launch("layer_norm_backward_params", x.rows, x.cols);
#endif
  }

  /// Sum of squares of the elements in double (gradient norms). Returns to the host, so it waits
  /// for the stream. Two fixed-shape passes (block partials, then one block over them): the same
  /// bits on every run.
  template <class T>
  double sum_squares(In<T> x) const {
    static_assert(detail::compiled_by_nvcc<T>, "tp::Cuda::sum_squares launches a kernel: compile with nvcc");
#ifdef __CUDACC__
    if (x.empty()) return 0.0;
    activate();
    const unsigned blocks = std::min(kernels::grid_for(x.size()), 1024u);
    const Scratch<double> partial(*this, blocks);
    kernels::sum_squares_partial<<<blocks, kernels::kRowThreads, 0, stream_>>>(x.data, x.ld, {x.rows, x.cols},
                                                                              partial.data);
    check_launch("sum_squares_partial", x.rows, x.cols);
    kernels::sum_partials<<<1, kernels::kRowThreads, 0, stream_>>>(partial.data, static_cast<int>(blocks));
    check_launch("sum_partials", x.rows, x.cols);
    double host = 0;
    TP_CUDA_CHECK(cudaMemcpyAsync(&host, partial.data, sizeof host, cudaMemcpyDeviceToHost, stream_),
                  "reading the sum of squares of a {}x{} matrix on device {}", x.rows, x.cols, device_);
    synchronize();
    return host;
#else
    return 0.0;
#endif
  }

 private:
  /// Stream-ordered device scratch for one call, freed on every path out of it.
  template <class T>
  struct Scratch {
    Scratch(const Cuda& dev, std::int64_t n) : device(dev), data(dev.allocate<T>(n)) {}
    Scratch(const Scratch&) = delete;
    Scratch& operator=(const Scratch&) = delete;
    ~Scratch() { device.deallocate(data, 0); }
    const Cuda& device;
    T* data;
  };

  /// c = alpha op(a) op(b) + beta c with alpha and beta in double, so that 1/sqrt(head_dim) is
  /// not rounded to a 16-bit T first; k > 0 (a head has head_dim and seq_len > 0).
  template <class T>
  void head_gemm(Op op_a, Op op_b, double alpha, ConstView<T> a, ConstView<T> b, double beta, MatrixView<T> c) const {
    const std::int64_t m = op_a == Op::n ? a.rows : a.cols, k = op_a == Op::n ? a.cols : a.rows;
    const std::int64_t n = op_b == Op::n ? b.cols : b.rows;
    activate();
    gemm_->run<T>(stream_, options_.tf32, op_a, op_b, m, n, k, alpha, a, b, beta, c, EpilogueArgs<T>{});
  }

  /// Makes this device current for the calling thread (ranks run as threads in tests).
  void activate() const {
    int current = -1;
    if (cudaGetDevice(&current) == cudaSuccess && current == device_) return;
    TP_CUDA_CHECK(cudaSetDevice(device_), "selecting device {}", device_);
  }

  void check_launch(const char* kernel, std::int64_t rows, std::int64_t cols) const {
    TP_CUDA_CHECK(cudaGetLastError(), "launching the {} kernel on a {}x{} matrix on device {}", kernel, rows, cols,
                  device_);
  }

  template <class T>
  void copy_2d(ConstView<T> src, MatrixView<T> dst, const char* op) const {
    detail::check_same_shape_cuda<T>(src, dst, op);
    if (src.empty() || src.data == dst.data) return;
    activate();
    const std::size_t width = static_cast<std::size_t>(src.cols) * sizeof(T);
    TP_CUDA_CHECK(cudaMemcpy2DAsync(dst.data, static_cast<std::size_t>(dst.ld) * sizeof(T), src.data,
                                    static_cast<std::size_t>(src.ld) * sizeof(T), width,
                                    static_cast<std::size_t>(src.rows), cudaMemcpyDefault, stream_),
                  "{} of a {}x{} matrix (source ld {}, destination ld {}) on device {}", op, src.rows, src.cols,
                  src.ld, dst.ld, device_);
  }

  template <class T>
  void run_gemm(Op op_a, Op op_b, T alpha, ConstView<T> a, ConstView<T> b, T beta, MatrixView<T> c,
                const EpilogueArgs<T>& epilogue) const {
    const std::int64_t m = op_a == Op::n ? a.rows : a.cols, k = op_a == Op::n ? a.cols : a.rows;
    const std::int64_t kb = op_b == Op::n ? b.rows : b.cols, n = op_b == Op::n ? b.cols : b.rows;
    TP_CHECK(k == kb && c.rows == m && c.cols == n, "gemm: op(a) is {}x{}, op(b) is {}x{}, c is {}x{}", m, k, kb, n,
             c.rows, c.cols);
    if (m == 0 || n == 0) return;
    const double alpha_d = detail::to_double(alpha), beta_d = detail::to_double(beta);
    if (k == 0) {
      // Nothing to multiply: c = beta c, which without kernels we can offer for beta 0 and 1.
      TP_CHECK(epilogue.kind == Epilogue::none && (beta_d == 0.0 || beta_d == 1.0),
               "gemm: k = 0 with beta {} or an epilogue is not supported by tp::Cuda (c is {}x{})", beta_d, m, n);
      if (beta_d == 0.0) {
        activate();
        TP_CUDA_CHECK(cudaMemset2DAsync(c.data, static_cast<std::size_t>(c.ld) * sizeof(T), 0,
                                        static_cast<std::size_t>(n) * sizeof(T), static_cast<std::size_t>(m), stream_),
                      "zeroing a {}x{} GEMM output", m, n);
      }
      return;
    }
    activate();
    gemm_->run<T>(stream_, options_.tf32, op_a, op_b, m, n, k, alpha_d, a, b, beta_d, c, epilogue);
  }

  Options options_;
  int device_ = 0;
  Stream stream_ = nullptr;
  bool owns_stream_ = false;
  std::unique_ptr<detail::LtGemm> gemm_;
};

}  // namespace tp
