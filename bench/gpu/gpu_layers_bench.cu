/// tp's ColumnParallelLinear, RowParallelLinear and the column -> GELU -> row MLP on one GPU
/// (world size 1), forward and backward, against bare cuBLASLt calls doing the same GEMMs on the
/// same shapes, for bf16, fp16 and fp32 (TF32). Time is GPU time between CUDA events on the
/// layer's stream (manual time); TFLOP/s counts the GEMMs' 2mnk only. The companion
/// bench/gpu/torch_layers.py times PyTorch eager on the same shapes.
///
///   tp_bench_gpu_layers --benchmark_filter=bf16 --benchmark_out=gpu_layers.json
///
/// Labels are "<type>/<what>/<tokens>/<hidden>" (what: gemm, column_forward, bare_column_forward,
/// ..., mlp_backward), the names torch_layers.py uses, so bench/gpu/summarize.py can pair them.
/// The headline (issue 4): bf16 MLP at 4096 tokens, hidden 8192, ffn 4 x 8192, against the bare
/// bf16 GEMM of its first layer (label "bf16/gemm/4096/8192").

#include <benchmark/benchmark.h>

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>

#include "tp/comm/local_communicator.hpp"
#include "tp/device/cuda.hpp"
#include "tp/device/cuda_local_memory.cuh"
#include "tp/layers/column_parallel_linear.hpp"
#include "tp/layers/row_parallel_linear.hpp"
#ifdef TP_HAS_NCCL
#include "tp/comm/nccl_communicator.hpp"
#endif

namespace {

using namespace tp;

/// Deterministic uniform(-scale, scale) fill on the device (a hash of the index), so that setting
/// up multi-GiB operands costs no host work.
template <class T>
__global__ void fill_uniform(T* x, std::int64_t n, std::uint32_t seed, float scale) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    std::uint32_t h = static_cast<std::uint32_t>(i) * 0x9E3779B1u ^ seed;
    h ^= h >> 16, h *= 0x85EBCA6Bu, h ^= h >> 13, h *= 0xC2B2AE35u, h ^= h >> 16;
    x[i] = kernels::store<T>(static_cast<kernels::accum_t<T>>(scale * (h * (2.0f / 4294967296.0f) - 1.0f)));
  }
}

template <class T>
void randomize(const Cuda& dev, MatrixView<T> m, std::uint32_t seed) {
  fill_uniform<T><<<kernels::grid_for(m.size()), 256, 0, dev.stream()>>>(m.data, m.size(), seed, 0.5f);
  TP_CUDA_CHECK(cudaGetLastError(), "filling a {}x{} benchmark operand", m.rows, m.cols);
}

template <class T> const char* type_name();
template <> const char* type_name<__nv_bfloat16>() { return "bf16"; }
template <> const char* type_name<__half>() { return "fp16"; }
template <> const char* type_name<float>() { return "fp32-tf32"; }

std::string& no_device_reason() {
  static std::string why;
  return why;
}

/// One device (TF32 on for float: the fair comparison with tensor-core bf16 and with PyTorch's
/// allow_tf32) and a world-1 communicator, shared by all benchmarks.
struct Env {
  std::shared_ptr<Cuda> dev = std::make_shared<Cuda>(CudaOptions{.tf32 = true});
  std::shared_ptr<Communicator> comm =
      LocalCommunicator::create(1, {.memory = std::make_shared<CudaLocalMemory>()}).front();
};
Env& env() {
  static Env e;
  return e;
}

/// A column-major cuBLASLt GEMM planned once: C[m, n] = op(A) op(B) + beta C. The baseline: what a
/// hand-written call to cuBLASLt costs, with no tp code in the way.
template <class T>
class BareGemm {
 public:
  BareGemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, std::int64_t lda,
           std::int64_t ldb, std::int64_t ldc, float beta)
      : beta_(beta) {
    const cudaDataType_t type = detail::cuda_type<T>();
    const auto compute = std::is_same_v<T, float> ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    TP_CUBLAS_CHECK(cublasLtCreate(&handle_), "bench");
    TP_CUDA_CHECK(cudaMalloc(&workspace_, kWorkspace), "bench workspace");
    TP_CUBLAS_CHECK(cublasLtMatmulDescCreate(&op_, compute, CUDA_R_32F), "bench");
    const cublasOperation_t ta = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, tb = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta));
    cublasLtMatmulDescSetAttribute(op_, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb));
    TP_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&a_, type, trans_a ? k : m, trans_a ? m : k, lda), "bench");
    TP_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&b_, type, trans_b ? n : k, trans_b ? k : n, ldb), "bench");
    TP_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&c_, type, m, n, ldc), "bench");
    cublasLtMatmulPreference_t pref = nullptr;
    cublasLtMatmulPreferenceCreate(&pref);
    const std::uint64_t ws = kWorkspace;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    TP_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(handle_, op_, a_, b_, c_, c_, pref, 1, &result, &found), "bench");
    cublasLtMatmulPreferenceDestroy(pref);
    if (found == 0) TP_THROW(CudaError, "no cuBLASLt algorithm for the {}x{}x{} baseline", m, n, k);
    algo_ = result.algo;
  }
  ~BareGemm() {
    cublasLtMatrixLayoutDestroy(a_), cublasLtMatrixLayoutDestroy(b_), cublasLtMatrixLayoutDestroy(c_);
    cublasLtMatmulDescDestroy(op_);
    cudaFree(workspace_);
    cublasLtDestroy(handle_);
  }
  void run(const T* a, const T* b, T* c, cudaStream_t stream) const {
    const float alpha = 1.f;
    TP_CUBLAS_CHECK(cublasLtMatmul(handle_, op_, &alpha, a, a_, b, b_, &beta_, c, c_, c, c_, &algo_, workspace_,
                                   kWorkspace, stream),
                    "bench");
  }

 private:
  static constexpr std::size_t kWorkspace = std::size_t{32} << 20;
  float beta_;
  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  cublasLtMatmulDesc_t op_ = nullptr;
  cublasLtMatrixLayout_t a_ = nullptr, b_ = nullptr, c_ = nullptr;
  cublasLtMatmulAlgo_t algo_{};
};

/// The three GEMMs of a linear layer y[t, o] = x[t, i] w[o, i]^T + b, as column-major cuBLASLt calls
/// on the same row-major buffers tp uses.
template <class T>
struct BareLinear {
  std::int64_t t, i, o;
  BareGemm<T> fwd{true, false, o, t, i, i, i, o, 0.f};    // y^T[o, t] = (w^T)^T x^T
  BareGemm<T> dgrad{false, false, i, t, o, i, o, i, 0.f};  // dx^T[i, t] = w^T dy^T
  BareGemm<T> wgrad{false, true, i, o, t, i, o, i, 1.f};   // dw^T[i, o] += x^T dy
  BareLinear(std::int64_t tokens, std::int64_t in, std::int64_t out) : t(tokens), i(in), o(out) {}
};

/// Times `body` with CUDA events on `stream`; every iteration waits for its own end, so no
/// iteration overlaps the next.
template <class F>
void time_gpu(benchmark::State& state, cudaStream_t stream, double flops, F&& body) {
  cudaEvent_t start = nullptr, stop = nullptr;
  TP_CUDA_CHECK(cudaEventCreate(&start), "bench event");
  TP_CUDA_CHECK(cudaEventCreate(&stop), "bench event");
  for (int w = 0; w < 3; ++w) body();  // warm-up: plans, heuristics, allocations
  TP_CUDA_CHECK(cudaStreamSynchronize(stream), "bench warm-up");
  for (auto _ : state) {
    cudaEventRecord(start, stream);
    body();
    cudaEventRecord(stop, stream);
    TP_CUDA_CHECK(cudaEventSynchronize(stop), "bench iteration");
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    state.SetIterationTime(ms * 1e-3);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  state.counters["TFLOP/s"] = benchmark::Counter(flops * 1e-12 * static_cast<double>(state.iterations()),
                                                 benchmark::Counter::kIsRate);
}

bool skip_without_device(benchmark::State& state) {
  if (no_device_reason().empty()) return false;
  state.SkipWithError(("no CUDA device: " + no_device_reason()).c_str());
  return true;
}

/// Args: tokens, hidden; the MLP's ffn is 4 x hidden. Column is hidden -> ffn, Row ffn -> hidden.
enum class Which { column, row };

template <class T>
Tensor<T, Cuda> random_tensor(std::int64_t rows, std::int64_t cols, std::uint32_t seed) {
  Tensor<T, Cuda> t(env().dev, rows, cols);
  randomize<T>(*env().dev, t.view(), seed);
  return t;
}

template <class T>
void BM_BareGemm(benchmark::State& state) {
  if (skip_without_device(state)) return;
  const std::int64_t t = state.range(0), h = state.range(1), f = 4 * h;
  auto& dev = *env().dev;
  const auto x = random_tensor<T>(t, h, 1), w = random_tensor<T>(f, h, 2);
  Tensor<T, Cuda> y(env().dev, t, f);
  BareLinear<T> bare(t, h, f);
  state.SetLabel(fmt::format("{}/gemm/{}/{}", type_name<T>(), t, h));
  time_gpu(state, dev.stream(), 2.0 * t * h * f, [&] { bare.fwd.run(w.data(), x.data(), y.data(), dev.stream()); });
}

template <class T, Which which, bool backward>
void BM_Layer(benchmark::State& state) {
  if (skip_without_device(state)) return;
  const std::int64_t t = state.range(0), h = state.range(1), f = 4 * h;
  const std::int64_t in = which == Which::column ? h : f, out = which == Which::column ? f : h;
  auto& dev = *env().dev;
  Context<Cuda> ctx(env().comm, env().dev);
  const auto x = random_tensor<T>(t, in, 1), dy = random_tensor<T>(t, out, 3);
  const double flops = (backward ? 4.0 : 2.0) * t * in * out;
  state.SetLabel(fmt::format("{}/{}_{}/{}/{}", type_name<T>(), which == Which::column ? "column" : "row",
                             backward ? "backward" : "forward", t, h));
  if constexpr (which == Which::column) {
    ColumnParallelLinear<T, Cuda> layer(ctx, in, out);
    layer.forward(x.view());
    if (backward) time_gpu(state, dev.stream(), flops, [&] { layer.backward(dy.view()); });
    else time_gpu(state, dev.stream(), flops, [&] { layer.forward(x.view()); });
  } else {
    RowParallelLinear<T, Cuda> layer(ctx, in, out);
    layer.forward(x.view());
    if (backward) time_gpu(state, dev.stream(), flops, [&] { layer.backward(dy.view()); });
    else time_gpu(state, dev.stream(), flops, [&] { layer.forward(x.view()); });
  }
}

template <class T, bool backward>
void BM_BareLayer(benchmark::State& state, Which which) {
  if (skip_without_device(state)) return;
  const std::int64_t t = state.range(0), h = state.range(1), f = 4 * h;
  const std::int64_t in = which == Which::column ? h : f, out = which == Which::column ? f : h;
  auto& dev = *env().dev;
  const auto x = random_tensor<T>(t, in, 1), w = random_tensor<T>(out, in, 2), dy = random_tensor<T>(t, out, 3);
  Tensor<T, Cuda> y(env().dev, t, out), dx(env().dev, t, in), dw(env().dev, out, in);
  BareLinear<T> bare(t, in, out);
  state.SetLabel(fmt::format("{}/bare_{}_{}/{}/{}", type_name<T>(), which == Which::column ? "column" : "row",
                             backward ? "backward" : "forward", t, h));
  if (backward)
    time_gpu(state, dev.stream(), 4.0 * t * in * out, [&] {
      bare.dgrad.run(w.data(), dy.data(), dx.data(), dev.stream());
      bare.wgrad.run(x.data(), dy.data(), dw.data(), dev.stream());
    });
  else
    time_gpu(state, dev.stream(), 2.0 * t * in * out, [&] { bare.fwd.run(w.data(), x.data(), y.data(), dev.stream()); });
}
template <class T, bool backward>
void BM_BareColumn(benchmark::State& state) {
  BM_BareLayer<T, backward>(state, Which::column);
}
template <class T, bool backward>
void BM_BareRow(benchmark::State& state) {
  BM_BareLayer<T, backward>(state, Which::row);
}

/// Column (bias) -> GELU (tanh) -> Row (bias), tp's layers; backward includes gelu_backward.
template <class T, bool backward>
void BM_Mlp(benchmark::State& state) {
  if (skip_without_device(state)) return;
  const std::int64_t t = state.range(0), h = state.range(1), f = 4 * h;
  auto& dev = *env().dev;
  Context<Cuda> ctx(env().comm, env().dev);
  ColumnParallelLinear<T, Cuda> fc1(ctx, h, f, {.name = "fc1"});
  RowParallelLinear<T, Cuda> fc2(ctx, f, h, {.name = "fc2"});
  const auto x = random_tensor<T>(t, h, 1), dy = random_tensor<T>(t, h, 3);
  Tensor<T, Cuda> a(env().dev, t, f), da(env().dev, t, f);
  const Tensor<T, Cuda>* hidden = nullptr;  // fc1's output, valid until its next forward
  auto forward = [&] {
    hidden = &fc1.forward(x.view());
    tp::ops::gelu(dev, hidden->view(), a.view(), Gelu::tanh);
    fc2.forward(a.view());
  };
  auto backward_pass = [&] {
    const auto& dga = fc2.backward(dy.view());
    tp::ops::gelu_backward(dev, hidden->view(), dga.view(), da.view(), Gelu::tanh);
    fc1.backward(da.view());
  };
  forward();
  state.SetLabel(fmt::format("{}/mlp_{}/{}/{}", type_name<T>(), backward ? "backward" : "forward", t, h));
  if (backward) {
    time_gpu(state, dev.stream(), 2.0 * 4.0 * t * h * f, backward_pass);
  } else {
    time_gpu(state, dev.stream(), 2.0 * 2.0 * t * h * f, forward);
  }
}

/// The MLP's GEMMs alone, through bare cuBLASLt: 2 forward, 4 backward.
template <class T, bool backward>
void BM_BareMlp(benchmark::State& state) {
  if (skip_without_device(state)) return;
  const std::int64_t t = state.range(0), h = state.range(1), f = 4 * h;
  auto& dev = *env().dev;
  const auto x = random_tensor<T>(t, h, 1), w1 = random_tensor<T>(f, h, 2), w2 = random_tensor<T>(h, f, 4);
  const auto dy = random_tensor<T>(t, h, 3);
  Tensor<T, Cuda> a(env().dev, t, f), y(env().dev, t, h), da(env().dev, t, f), dx(env().dev, t, h);
  Tensor<T, Cuda> dw1(env().dev, f, h), dw2(env().dev, h, f);
  BareLinear<T> l1(t, h, f), l2(t, f, h);
  state.SetLabel(fmt::format("{}/bare_mlp_{}/{}/{}", type_name<T>(), backward ? "backward" : "forward", t, h));
  if (backward)
    time_gpu(state, dev.stream(), 2.0 * 4.0 * t * h * f, [&] {
      l2.dgrad.run(w2.data(), dy.data(), da.data(), dev.stream());
      l2.wgrad.run(a.data(), dy.data(), dw2.data(), dev.stream());
      l1.dgrad.run(w1.data(), da.data(), dx.data(), dev.stream());
      l1.wgrad.run(x.data(), da.data(), dw1.data(), dev.stream());
    });
  else
    time_gpu(state, dev.stream(), 2.0 * 2.0 * t * h * f, [&] {
      l1.fwd.run(w1.data(), x.data(), a.data(), dev.stream());
      l2.fwd.run(w2.data(), a.data(), y.data(), dev.stream());
    });
}

#ifdef TP_HAS_NCCL
/// NCCL all-reduce at world size 1 (one GPU: NCCL refuses two ranks on it), in nccl-tests'
/// vocabulary: algbw = bytes / time; busbw = algbw * 2(n-1)/n, which is 0 at n = 1, so this
/// measures the launch and local-copy cost of the path tp's layers take through NCCL.
template <class T>
void BM_NcclAllReduce(benchmark::State& state) {
  if (skip_without_device(state)) return;
  static const auto nccl = NcclCommunicator::create_single();
  auto& dev = *env().dev;
  const std::int64_t n = state.range(0) / static_cast<std::int64_t>(sizeof(T));
  auto buf = random_tensor<T>(1, n, 5);
  state.SetLabel(fmt::format("{}/nccl_all_reduce/{}", type_name<T>(), state.range(0)));
  time_gpu(state, dev.stream(), 0.0, [&] {
    nccl->all_reduce(buf.data(), buf.data(), static_cast<std::size_t>(n), dtype_of<T>, ReduceOp::sum, dev.stream());
  });
  state.counters["algbw GB/s"] = benchmark::Counter(static_cast<double>(state.range(0)) * 1e-9 *
                                                        static_cast<double>(state.iterations()),
                                                    benchmark::Counter::kIsRate);
  state.counters["busbw GB/s"] = 0.0;
}
BENCHMARK(BM_NcclAllReduce<__nv_bfloat16>)
    ->RangeMultiplier(32)->Range(1 << 10, 1 << 28)->UseManualTime()->Unit(benchmark::kMicrosecond);
#endif

void shapes(benchmark::internal::Benchmark* b) {
  b->Args({4096, 8192})->Args({2048, 4096})->Args({512, 4096})->UseManualTime()->Unit(benchmark::kMillisecond);
}
void small_shapes(benchmark::internal::Benchmark* b) {
  b->Args({2048, 4096})->UseManualTime()->Unit(benchmark::kMillisecond);
}

#define TP_GPU_BENCH(T, apply)                                   \
  BENCHMARK(BM_BareGemm<T>)->Apply(apply);                       \
  BENCHMARK(BM_Layer<T, Which::column, false>)->Apply(apply);    \
  BENCHMARK(BM_BareColumn<T, false>)->Apply(apply);              \
  BENCHMARK(BM_Layer<T, Which::column, true>)->Apply(apply);     \
  BENCHMARK(BM_BareColumn<T, true>)->Apply(apply);               \
  BENCHMARK(BM_Layer<T, Which::row, false>)->Apply(apply);       \
  BENCHMARK(BM_BareRow<T, false>)->Apply(apply);                 \
  BENCHMARK(BM_Layer<T, Which::row, true>)->Apply(apply);        \
  BENCHMARK(BM_BareRow<T, true>)->Apply(apply);                  \
  BENCHMARK(BM_Mlp<T, false>)->Apply(apply);                     \
  BENCHMARK(BM_BareMlp<T, false>)->Apply(apply);                 \
  BENCHMARK(BM_Mlp<T, true>)->Apply(apply);                      \
  BENCHMARK(BM_BareMlp<T, true>)->Apply(apply)

TP_GPU_BENCH(__nv_bfloat16, shapes);
TP_GPU_BENCH(__half, small_shapes);
TP_GPU_BENCH(float, small_shapes);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  std::string why;
  if (tp::Cuda::device_count(&why) == 0) {
    no_device_reason() = why;
    benchmark::AddCustomContext("gpu", "none (" + why + ")");
  } else {
    benchmark::AddCustomContext("gpu", env().dev->name());
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
