#pragma once
/// The GPU device: stream-ordered device memory (plain device allocations on GPUs without memory
/// pools, see tp/device/cuda/memory.hpp), copies and cuBLASLt GEMMs (with fused epilogues),
/// the members of the `Device` concept, so the layers run unchanged with `Device = tp::Cuda`. The
/// ops (tp::ops::gelu(cuda, ...)) launch kernels from tp/device/cuda/<family>.cuh. Every call is
/// ordered on the device's stream; only `to_host`, `from_host` and `synchronize` wait for it.
///
/// Compilers: host code that creates a tp::Cuda, moves memory or runs GEMMs compiles with any C++20
/// compiler (it calls the CUDA runtime and cuBLASLt only). `fill` and the ops launch kernels, so a
/// translation unit that instantiates them must be a .cu file compiled by nvcc; elsewhere they
/// fail to compile with a message saying so.
///
/// Types: float (FP32, or TF32 tensor cores with `Options::tf32`), __half and __nv_bfloat16 with
/// float accumulation, and double. The host's tp::f16 and tp::bf16 (tp/core/float16.hpp) hold the
/// same bits as __half and __nv_bfloat16 and run the same kernels and cuBLASLt types, so code
/// written for tp::Cpu in tp::bf16 runs unchanged on tp::Cuda.

#ifndef TP_HAS_CUDA
#error "tp/device/cuda/cuda.hpp needs the tp::cuda CMake component: target_link_libraries(... tp::cuda)"
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
#include "tp/detail/shape_checks.hpp"
#include "tp/device/cuda/error.hpp"
#include "tp/device/cuda/gemm.hpp"
#include "tp/device/cuda/memory.hpp"
#include "tp/device/device.hpp"

#ifdef __CUDACC__
#include "tp/device/cuda/fill.cuh"
#endif

namespace tp {

template <>
struct DTypeOf<__half> : std::integral_constant<DType, DType::f16> {};
template <>
struct DTypeOf<__nv_bfloat16> : std::integral_constant<DType, DType::bf16> {};

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
  if constexpr (std::is_same_v<T, __half>)
    return __half2float(x);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return __bfloat162float(x);
  else
    return static_cast<double>(x);
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
  /// Allocate from the device's stream-ordered memory pool when the device has pools; false, or a
  /// device without them, allocates with cudaMalloc and frees with cudaFree (which waits for the device).
  bool memory_pool = true;
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
    pooled_ = options.memory_pool && detail::memory_pools_supported(device_);
    try {
      if (pooled_) configure_pool(count);
      gemm_ = std::make_unique<detail::LtGemm>(stream_, options.workspace_bytes, pooled_);
    } catch (...) {
      if (owns_stream_) cudaStreamDestroy(stream_);
      throw;
    }
  }
  Cuda(const Cuda&) = delete;
  Cuda& operator=(const Cuda&) = delete;
  ~Cuda() {
    detail::discard_cuda_status(cudaSetDevice(device_));
    gemm_->release(stream_);
    if (owns_stream_) {
      detail::discard_cuda_status(cudaStreamSynchronize(stream_));
      detail::discard_cuda_status(cudaStreamDestroy(stream_));
    }
  }

  int device() const { return device_; }
  const Options& options() const { return options_; }
  Stream stream() const { return stream_; }
  /// Whether allocate() draws from the stream-ordered pool (else cudaMalloc; see Options::memory_pool).
  bool uses_memory_pool() const { return pooled_; }
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
    TP_CUDA_CHECK(detail::device_malloc(&p, static_cast<std::size_t>(n) * sizeof(T), stream_, pooled_),
                  "allocating {} elements ({} bytes) on device {}{}", n, static_cast<std::size_t>(n) * sizeof(T),
                  device_, pooled_ ? "" : " (cudaMalloc: no memory pool)");
    return static_cast<T*>(p);
  }
  template <class T>
  void deallocate(T* p, std::int64_t) const noexcept {
    if (p == nullptr) return;
    detail::discard_cuda_status(cudaSetDevice(device_));
    detail::device_free(p, stream_, pooled_);
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
    gemm_ex<T>(op_a, op_b, detail::to_double(alpha), a, b, detail::to_double(beta), c);
  }

  /// c = alpha op(a) op(b) + beta c with any cuBLASLt epilogue, alpha and beta in double (so that
  /// 1/sqrt(head_dim) is not rounded to a 16-bit T first): what the GEMM ops in tp/ops build on.
  template <class T>
  void gemm_ex(Op op_a, Op op_b, double alpha, In<T> a, In<T> b, double beta, MatrixView<T> c,
               const EpilogueArgs<T>& epilogue = {}) const {
    TP_CHECK(valid(op_a) && valid(op_b), "gemm: op_a {} and op_b {} must be tp::Op::n or tp::Op::t",
             static_cast<unsigned>(op_a), static_cast<unsigned>(op_b));
    const std::int64_t m = op_a == Op::n ? a.rows : a.cols, k = op_a == Op::n ? a.cols : a.rows;
    const std::int64_t kb = op_b == Op::n ? b.rows : b.cols, n = op_b == Op::n ? b.cols : b.rows;
    TP_CHECK(k == kb && c.rows == m && c.cols == n, "gemm: op(a) is {}x{}, op(b) is {}x{}, c is {}x{}", m, k, kb, n,
             c.rows, c.cols);
    if (m == 0 || n == 0) return;
    if (k == 0) {
      // Nothing to multiply: c = beta c, which without kernels we can offer for beta 0 and 1.
      TP_CHECK(epilogue.kind == Epilogue::none && (beta == 0.0 || beta == 1.0),
               "gemm: k = 0 with beta {} or an epilogue is not supported by tp::Cuda (c is {}x{})", beta, m, n);
      if (beta == 0.0) {
        activate();
        TP_CUDA_CHECK(cudaMemset2DAsync(c.data, static_cast<std::size_t>(c.ld) * sizeof(T), 0,
                                        static_cast<std::size_t>(n) * sizeof(T), static_cast<std::size_t>(m), stream_),
                      "zeroing a {}x{} GEMM output", m, n);
      }
      return;
    }
    activate();
    gemm_->run<T>(stream_, options_.tf32, op_a, op_b, m, n, k, alpha, a, b, beta, c, epilogue);
  }

  /// `batch.count` GEMMs in one cuBLASLt call: c_i = alpha op(a_i) op(b_i) + beta c_i, where a_i is
  /// the view `a` moved by i * batch.stride_a elements (likewise b_i, c_i); the views are the first
  /// matrices. What attention's per-sequence products use instead of one call per sequence.
  template <class T>
  void gemm_batched(Op op_a, Op op_b, double alpha, In<T> a, In<T> b, double beta, MatrixView<T> c,
                    const detail::GemmBatch& batch) const {
    TP_CHECK(batch.count >= 1, "gemm_batched: batch count {} must be positive", batch.count);
    if (batch.count == 1) return gemm_ex<T>(op_a, op_b, alpha, a, b, beta, c);
    const std::int64_t m = op_a == Op::n ? a.rows : a.cols, k = op_a == Op::n ? a.cols : a.rows;
    const std::int64_t kb = op_b == Op::n ? b.rows : b.cols, n = op_b == Op::n ? b.cols : b.rows;
    TP_CHECK(k == kb && c.rows == m && c.cols == n && k > 0,
             "gemm_batched: op(a) is {}x{}, op(b) is {}x{}, c is {}x{} ({} matrices)", m, k, kb, n, c.rows, c.cols,
             batch.count);
    if (m == 0 || n == 0) return;
    activate();
    gemm_->run_batch<T>(stream_, options_.tf32, op_a, op_b, m, n, k, alpha, a, b, beta, c, EpilogueArgs<T>{}, batch);
  }

  template <class T>
  void fill(MatrixView<T> x, std::type_identity_t<T> value) const {
    static_assert(detail::compiled_by_nvcc<T>, "tp::Cuda::fill launches a kernel: compile this file with nvcc (.cu)");
#ifdef __CUDACC__
    if (x.empty()) return;
    kernels::launch(*this, "fill", x.rows, x.cols, kernels::grid_for(x.size()), kernels::kThreads, &kernels::fill<T>,
                    x.data, kernels::Shape2{x.rows, x.cols}, x.ld, static_cast<T>(value));
#endif
  }

  /// Makes this device current for the calling thread (ranks run as threads in tests).
  void activate() const {
    int current = -1;
    if (cudaGetDevice(&current) == cudaSuccess && current == device_) return;
    TP_CUDA_CHECK(cudaSetDevice(device_), "selecting device {}", device_);
  }

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

 private:
  /// The device's default memory pool, which allocate() draws from: it keeps what it holds when
  /// the stream synchronizes (the default release threshold, 0, hands all free memory back to the
  /// driver at every synchronization, and each step then maps it again), and, on a machine with
  /// several GPUs, lets every peer that can reach this one read and write it: a LocalCommunicator
  /// over device memory (CudaLocalMemory) reduces straight from the other ranks' buffers, and pool
  /// allocations are visible to other devices only when granted (peer access is not enough).
  void configure_pool(int device_count) const {
    cudaMemPool_t pool = nullptr;
    TP_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device_), "reading the memory pool of device {}", device_);
    std::uint64_t keep = UINT64_MAX;
    TP_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep),
                  "setting the release threshold of device {}'s memory pool", device_);
    for (int peer = 0; peer < device_count; ++peer) {
      int can = 0;
      if (peer == device_ || cudaDeviceCanAccessPeer(&can, peer, device_) != cudaSuccess || can == 0) continue;
      cudaMemAccessDesc access{};
      access.location.type = cudaMemLocationTypeDevice;
      access.location.id = peer;
      access.flags = cudaMemAccessFlagsProtReadWrite;
      TP_CUDA_CHECK(cudaMemPoolSetAccess(pool, &access, 1), "granting device {} access to device {}'s memory pool",
                    peer, device_);
    }
  }

  template <class T>
  void copy_2d(ConstView<T> src, MatrixView<T> dst, const char* op) const {
    detail::check_same_shape<T>(src, dst, op);
    if (src.empty() || src.data == dst.data) return;
    activate();
    const std::size_t width = static_cast<std::size_t>(src.cols) * sizeof(T);
    TP_CUDA_CHECK(cudaMemcpy2DAsync(dst.data, static_cast<std::size_t>(dst.ld) * sizeof(T), src.data,
                                    static_cast<std::size_t>(src.ld) * sizeof(T), width,
                                    static_cast<std::size_t>(src.rows), cudaMemcpyDefault, stream_),
                  "{} of a {}x{} matrix (source ld {}, destination ld {}) on device {}", op, src.rows, src.cols, src.ld,
                  dst.ld, device_);
  }

  Options options_;
  int device_ = 0;
  Stream stream_ = nullptr;
  bool owns_stream_ = false;
  bool pooled_ = true;
  std::unique_ptr<detail::LtGemm> gemm_;
};
static_assert(Device<Cuda>);

}  // namespace tp
