/// tp's ColumnParallelLinear, RowParallelLinear and the column -> GELU -> row MLP on one GPU
/// (world size 1), forward and backward, against bare cuBLASLt calls doing the same GEMMs on the
/// same shapes, for bf16, fp16 and fp32 (TF32). Like with like: tp's layers add their bias and
/// accumulate its gradient, so the baselines do too (fused into the GEMMs, as hand-written cuBLASLt
/// code would: BIAS, BGRADB, and for the MLP GELU_AUX_BIAS / DGELU_BGRAD). Time is GPU time between
/// CUDA events on the layer's stream (manual time); TFLOP/s counts the GEMMs' 2mnk only. The
/// companion bench/gpu/torch_layers.py times PyTorch eager on the same shapes. Operands are filled
/// on the device; tp's layers are built once per (type, hidden) and shared (see TpLayers).
///
///   tp_bench_gpu_layers --benchmark_filter=bf16/mlp --benchmark_out=gpu_layers.json
///
/// Labels are "<type>/<what>/<tokens>/<hidden>" (what: gemm, column_forward, bare_column_forward,
/// ..., mlp_fwdbwd), the names torch_layers.py uses, so bench/gpu/summarize.py can pair them.
/// "fwdbwd" rows time a forward and its backward together: a layer differentiates only the
/// forward just before its backward (it refuses a second backward), so backward alone is not a
/// repeatable unit; forward-only rows run under tp::NoGrad.
/// The headline (issue 4): bf16 MLP at 4096 tokens, hidden 8192, ffn 4 x 8192, against the bare
/// bf16 GEMM of its first layer (label "bf16/gemm/4096/8192").

#include <benchmark/benchmark.h>

#include <cuda_runtime_api.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>

#include "tp/comm/local_communicator.hpp"
#include "tp/core/grad_mode.hpp"
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
  static Env* e = new Env;  // never destroyed: no CUDA teardown after the runtime has shut down
  return *e;
}

/// What a bare cuBLASLt call fuses after the product (cuBLASLt's own terms: column-major, so a
/// bias has one entry per row of D).
struct BareEpilogue {
  cublasLtEpilogue_t kind = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;  ///< read (BIAS, GELU_AUX_BIAS) or written (BGRADB, DGELU_BGRAD)
  void* aux = nullptr;         ///< GELU's pre-activation, written (GELU_AUX_BIAS) or read (DGELU_BGRAD)
  std::int64_t aux_ld = 0;
};

/// A column-major cuBLASLt GEMM planned once: D[m, n] = epilogue(op(A) op(B) + beta C). The
/// baseline: what a hand-written call to cuBLASLt costs, with no tp code in the way. The epilogue's
/// pointers are set before the heuristic, which reads them for their alignment.
template <class T>
class BareGemm {
 public:
  BareGemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, std::int64_t lda,
           std::int64_t ldb, std::int64_t ldc, float beta, BareEpilogue e = {})
      : beta_(beta) {
    const cudaDataType_t type = detail::cuda_type<T>();
    const auto compute = std::is_same_v<T, float> ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    TP_CUBLAS_CHECK(cublasLtCreate(&handle_), "bench");
    TP_CUDA_CHECK(cudaMalloc(&workspace_, kWorkspace), "bench workspace");
    TP_CUBLAS_CHECK(cublasLtMatmulDescCreate(&op_, compute, CUDA_R_32F), "bench");
    const cublasOperation_t ta = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, tb = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    set(CUBLASLT_MATMUL_DESC_TRANSA, ta);
    set(CUBLASLT_MATMUL_DESC_TRANSB, tb);
    set(CUBLASLT_MATMUL_DESC_EPILOGUE, e.kind);
    if (e.bias != nullptr) set(CUBLASLT_MATMUL_DESC_BIAS_POINTER, e.bias);
    if (e.aux != nullptr) {
      set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, static_cast<const void*>(e.aux));
      set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, e.aux_ld);
    }
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
    if (found == 0)
      TP_THROW(CudaError, "no cuBLASLt algorithm for the {}x{}x{} baseline with epilogue {}", m, n, k,
               static_cast<int>(e.kind));
    algo_ = result.algo;
  }
  BareGemm(const BareGemm&) = delete;
  BareGemm& operator=(const BareGemm&) = delete;
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
  template <class V>
  void set(cublasLtMatmulDescAttributes_t attr, const V& value) {
    TP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op_, attr, &value, sizeof(value)), "bench attribute {}",
                    static_cast<int>(attr));
  }

  static constexpr std::size_t kWorkspace = std::size_t{32} << 20;
  float beta_;
  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  cublasLtMatmulDesc_t op_ = nullptr;
  cublasLtMatrixLayout_t a_ = nullptr, b_ = nullptr, c_ = nullptr;
  cublasLtMatmulAlgo_t algo_{};
};

/// Time is GPU time between CUDA events on the stream; every iteration waits for its own end, so
/// no iteration overlaps the next. Errors (a missing cuBLASLt algorithm, say) end this benchmark
/// with the message instead of the whole run.
template <class F>
void time_gpu(benchmark::State& state, cudaStream_t stream, double flops, F&& body) {
  cudaEvent_t start = nullptr, stop = nullptr;
  try {
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
    state.counters["TFLOP/s"] = benchmark::Counter(flops * 1e-12 * static_cast<double>(state.iterations()),
                                                   benchmark::Counter::kIsRate);
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
  if (start) cudaEventDestroy(start);
  if (stop) cudaEventDestroy(stop);
}

/// TP_BENCH_DEADLINE_S (seconds from the start): benchmarks that would start later report an
/// error instead of running, so a run with a time budget still ends by itself and writes its JSON.
bool past_deadline() {
  static const auto deadline = [] {
    const char* s = std::getenv("TP_BENCH_DEADLINE_S");
    const double seconds = s != nullptr ? std::atof(s) : 0.0;
    return seconds > 0 ? std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                                 std::chrono::duration<double>(seconds))
                       : std::chrono::steady_clock::time_point::max();
  }();
  return std::chrono::steady_clock::now() > deadline;
}

bool skip_without_device(benchmark::State& state) {
  if (!no_device_reason().empty()) {
    state.SkipWithError(("no CUDA device: " + no_device_reason()).c_str());
    return true;
  }
  if (past_deadline()) {
    state.SkipWithError("not run: TP_BENCH_DEADLINE_S passed");
    return true;
  }
  return false;
}

/// Runs a benchmark's setup; an exception ends that benchmark with the message.
template <class F>
bool setup(benchmark::State& state, F&& f) {
  try {
    f();
    return true;
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
    return false;
  }
}

template <class T>
Tensor<T, Cuda> random_tensor(std::int64_t rows, std::int64_t cols, std::uint32_t seed) {
  Tensor<T, Cuda> t(env().dev, rows, cols);
  randomize<T>(*env().dev, t.view(), seed);
  return t;
}

/// tp's layers for one (type, hidden), made once and shared by every benchmark of that hidden
/// size: a layer initializes its weights on the host (keyed by global index, as training needs),
/// ~10 ns an element, which for hidden 8192 is seconds per layer; Google Benchmark calls each
/// benchmark several times while it sizes the iteration count, and layers built per call would
/// spend minutes there. Bias on, as the layers default to, and as the baselines below compute.
template <class T>
struct TpLayers {
  ColumnParallelLinear<T, Cuda> column;  // hidden -> ffn (the MLP's fc1)
  RowParallelLinear<T, Cuda> row;        // ffn -> hidden (the MLP's fc2)
  explicit TpLayers(std::int64_t h)
      : column(Context<Cuda>(env().comm, env().dev), h, 4 * h, {.name = "fc1"}),
        row(Context<Cuda>(env().comm, env().dev), 4 * h, h, {.name = "fc2"}) {}
};
template <class T>
TpLayers<T>& tp_layers(std::int64_t h) {
  static auto* cache = new std::map<std::int64_t, std::unique_ptr<TpLayers<T>>>();  // never destroyed, like env()
  auto& slot = (*cache)[h];
  if (!slot) slot = std::make_unique<TpLayers<T>>(h);
  return *slot;
}

/// Args: tokens, hidden; ffn is 4 x hidden. Column is hidden -> ffn, Row ffn -> hidden.
enum class Which { column, row };

template <class T>
void BM_BareGemm(benchmark::State& state) {
  if (skip_without_device(state)) return;
  const std::int64_t t = state.range(0), h = state.range(1), f = 4 * h;
  auto& dev = *env().dev;
  state.SetLabel(fmt::format("{}/gemm/{}/{}", type_name<T>(), t, h));
  std::unique_ptr<BareGemm<T>> gemm;
  Tensor<T, Cuda> x, w, y;
  if (!setup(state, [&] {
        x = random_tensor<T>(t, h, 1), w = random_tensor<T>(f, h, 2), y = Tensor<T, Cuda>(env().dev, t, f);
        gemm = std::make_unique<BareGemm<T>>(true, false, f, t, h, h, h, f, 0.f);  // y^T[f, t] = (w^T)^T x^T
      }))
    return;
  time_gpu(state, dev.stream(), 2.0 * t * h * f, [&] { gemm->run(w.data(), x.data(), y.data(), dev.stream()); });
}

template <class T, Which which, bool backward>
void BM_Layer(benchmark::State& state) {
  if (skip_without_device(state)) return;
  const std::int64_t t = state.range(0), h = state.range(1), f = 4 * h;
  const std::int64_t in = which == Which::column ? h : f, out = which == Which::column ? f : h;
  auto& dev = *env().dev;
  const double flops = (backward ? 6.0 : 2.0) * t * in * out;
  state.SetLabel(fmt::format("{}/{}_{}/{}/{}", type_name<T>(), which == Which::column ? "column" : "row",
                             backward ? "fwdbwd" : "forward", t, h));
  TpLayers<T>* layers = nullptr;
  Tensor<T, Cuda> x, dy;
  if (!setup(state, [&] {
        layers = &tp_layers<T>(h);
        x = random_tensor<T>(t, in, 1), dy = random_tensor<T>(t, out, 3);
      }))
    return;
  auto run = [&](auto& layer) {
    if (backward) {
      const auto step = [&] {
        layer.forward(x.view());
        layer.backward(dy.view());
      };
      if (setup(state, step)) time_gpu(state, dev.stream(), flops, step);
    } else {
      NoGrad no_grad;
      const auto step = [&] { layer.forward(x.view()); };
      if (setup(state, step)) time_gpu(state, dev.stream(), flops, step);
    }
  };
  if constexpr (which == Which::column) run(layers->column);
  else run(layers->row);
}

/// The three GEMMs of a linear layer y[t, o] = x[t, i] w[o, i]^T + b with its gradients dx, dw and
/// db, as column-major cuBLASLt calls on the same row-major buffers tp uses: the bias fused into
/// the forward GEMM (BIAS), its gradient into the weight-gradient GEMM (BGRADB: column sums of dy).
template <class T>
struct BareLinear {
  std::int64_t t, i, o;
  Tensor<T, Cuda> x, w, b, dy, y, dx, dw, db;
  BareGemm<T> fwd, dgrad, wgrad;
  BareLinear(std::int64_t tokens, std::int64_t in, std::int64_t out)
      : t(tokens), i(in), o(out), x(random_tensor<T>(t, i, 1)), w(random_tensor<T>(o, i, 2)),
        b(random_tensor<T>(1, o, 5)), dy(random_tensor<T>(t, o, 3)), y(env().dev, t, o), dx(env().dev, t, i),
        dw(env().dev, o, i), db(env().dev, 1, o),
        fwd(true, false, o, t, i, i, i, o, 0.f, {CUBLASLT_EPILOGUE_BIAS, b.data()}),  // y^T = (w^T)^T x^T + b
        dgrad(false, false, i, t, o, i, o, i, 0.f),                                    // dx^T[i, t] = w^T dy^T
        wgrad(false, true, i, o, t, i, o, i, 1.f, {CUBLASLT_EPILOGUE_BGRADB, db.data()}) {}  // dw^T += x^T dy
  void forward(cudaStream_t s) { fwd.run(w.data(), x.data(), y.data(), s); }
  void backward(cudaStream_t s) {
    dgrad.run(w.data(), dy.data(), dx.data(), s);
    wgrad.run(x.data(), dy.data(), dw.data(), s);
  }
};

template <class T, bool backward>
void BM_BareLayer(benchmark::State& state, Which which) {
  if (skip_without_device(state)) return;
  const std::int64_t t = state.range(0), h = state.range(1), f = 4 * h;
  const std::int64_t in = which == Which::column ? h : f, out = which == Which::column ? f : h;
  auto& dev = *env().dev;
  state.SetLabel(fmt::format("{}/bare_{}_{}/{}/{}", type_name<T>(), which == Which::column ? "column" : "row",
                             backward ? "fwdbwd" : "forward", t, h));
  std::unique_ptr<BareLinear<T>> bare;
  if (!setup(state, [&] { bare = std::make_unique<BareLinear<T>>(t, in, out); })) return;
  if (backward)
    time_gpu(state, dev.stream(), 6.0 * t * in * out, [&] {
      bare->forward(dev.stream());
      bare->backward(dev.stream());
    });
  else
    time_gpu(state, dev.stream(), 2.0 * t * in * out, [&] { bare->forward(dev.stream()); });
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
  TpLayers<T>* layers = nullptr;
  Tensor<T, Cuda> x, dy, a, da;
  if (!setup(state, [&] {
        layers = &tp_layers<T>(h);
        x = random_tensor<T>(t, h, 1), dy = random_tensor<T>(t, h, 3);
        a = Tensor<T, Cuda>(env().dev, t, f), da = Tensor<T, Cuda>(env().dev, t, f);
      }))
    return;
  auto& fc1 = layers->column;
  auto& fc2 = layers->row;
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
  if (!backward) {
    NoGrad no_grad;
    if (setup(state, forward)) time_gpu(state, dev.stream(), 2.0 * 2.0 * t * h * f, forward);
  } else {
    const auto step = [&] {
      forward();
      backward_pass();
    };
    if (setup(state, step)) time_gpu(state, dev.stream(), 2.0 * 6.0 * t * h * f, step);
  }
  state.SetLabel(fmt::format("{}/mlp_{}/{}/{}", type_name<T>(), backward ? "fwdbwd" : "forward", t, h));
}

/// The same MLP through bare cuBLASLt, each element-wise step fused into a GEMM as hand-written
/// code would: forward fc1 with GELU_AUX_BIAS (bias, GELU, pre-activation kept), fc2 with BIAS;
/// backward fc2's data gradient with DGELU_BGRAD (GELU's slope and fc1's bias gradient), fc2's
/// weight gradient with BGRADB (fc2's bias gradient), and fc1's two gradient GEMMs.
template <class T>
struct BareMlp {
  std::int64_t t, h, f;
  Tensor<T, Cuda> x, w1, b1, w2, b2, dy, pre, a, y, da, dx, dw1, db1, dw2, db2;
  BareGemm<T> fwd1, fwd2, dgrad2, wgrad2, dgrad1, wgrad1;
  BareMlp(std::int64_t tokens, std::int64_t hidden)
      : t(tokens), h(hidden), f(4 * hidden), x(random_tensor<T>(t, h, 1)), w1(random_tensor<T>(f, h, 2)),
        b1(random_tensor<T>(1, f, 5)), w2(random_tensor<T>(h, f, 4)), b2(random_tensor<T>(1, h, 6)),
        dy(random_tensor<T>(t, h, 3)), pre(env().dev, t, f), a(env().dev, t, f), y(env().dev, t, h),
        da(env().dev, t, f), dx(env().dev, t, h), dw1(env().dev, f, h), db1(env().dev, 1, f), dw2(env().dev, h, f),
        db2(env().dev, 1, h),
        fwd1(true, false, f, t, h, h, h, f, 0.f, {CUBLASLT_EPILOGUE_GELU_AUX_BIAS, b1.data(), pre.data(), f}),
        fwd2(true, false, h, t, f, f, f, h, 0.f, {CUBLASLT_EPILOGUE_BIAS, b2.data()}),
        dgrad2(false, false, f, t, h, f, h, f, 0.f, {CUBLASLT_EPILOGUE_DGELU_BGRAD, db1.data(), pre.data(), f}),
        wgrad2(false, true, f, h, t, f, h, f, 1.f, {CUBLASLT_EPILOGUE_BGRADB, db2.data()}),
        dgrad1(false, false, h, t, f, h, f, h, 0.f),
        wgrad1(false, true, h, f, t, h, f, h, 1.f) {}
  void forward(cudaStream_t s) {
    fwd1.run(w1.data(), x.data(), a.data(), s);
    fwd2.run(w2.data(), a.data(), y.data(), s);
  }
  void backward(cudaStream_t s) {
    dgrad2.run(w2.data(), dy.data(), da.data(), s);  // da = (dy w2) * gelu'(pre), db1 = sum over tokens
    wgrad2.run(a.data(), dy.data(), dw2.data(), s);  // dw2 += dy^T a, db2 = sum over tokens of dy
    dgrad1.run(w1.data(), da.data(), dx.data(), s);
    wgrad1.run(x.data(), da.data(), dw1.data(), s);
  }
};

template <class T, bool backward>
void BM_BareMlp(benchmark::State& state) {
  if (skip_without_device(state)) return;
  const std::int64_t t = state.range(0), h = state.range(1), f = 4 * h;
  auto& dev = *env().dev;
  state.SetLabel(fmt::format("{}/bare_mlp_{}/{}/{}", type_name<T>(), backward ? "fwdbwd" : "forward", t, h));
  std::unique_ptr<BareMlp<T>> bare;
  if (!setup(state, [&] { bare = std::make_unique<BareMlp<T>>(t, h); })) return;
  if (backward)
    time_gpu(state, dev.stream(), 2.0 * 6.0 * t * h * f, [&] {
      bare->forward(dev.stream());
      bare->backward(dev.stream());
    });
  else
    time_gpu(state, dev.stream(), 2.0 * 2.0 * t * h * f, [&] { bare->forward(dev.stream()); });
}

#ifdef TP_HAS_NCCL
/// NCCL all-reduce at world size 1 (one GPU: NCCL refuses two ranks on it), in nccl-tests'
/// vocabulary: algbw = bytes / time; busbw = algbw * 2(n-1)/n, which is 0 at n = 1, so this
/// measures the launch and local-copy cost of the path tp's layers take through NCCL.
template <class T>
void BM_NcclAllReduce(benchmark::State& state) {
  if (skip_without_device(state)) return;
  // One per process (creating one costs more than the benchmark), never destroyed, like env().
  static auto& nccl = *new std::shared_ptr<NcclCommunicator>();
  auto& dev = *env().dev;
  const std::int64_t n = state.range(0) / static_cast<std::int64_t>(sizeof(T));
  state.SetLabel(fmt::format("{}/nccl_all_reduce/{}", type_name<T>(), state.range(0)));
  Tensor<T, Cuda> buf;
  if (!setup(state, [&] {
        if (!nccl) nccl = NcclCommunicator::create_single();
        buf = random_tensor<T>(1, n, 5);
      }))
    return;
  time_gpu(state, dev.stream(), 0.0, [&] {
    nccl->all_reduce(buf.data(), buf.data(), static_cast<std::size_t>(n), dtype_of<T>, ReduceOp::sum, dev.stream());
  });
  state.counters["algbw GB/s"] = benchmark::Counter(static_cast<double>(state.range(0)) * 1e-9 *
                                                        static_cast<double>(state.iterations()),
                                                    benchmark::Counter::kIsRate);
  state.counters["busbw GB/s"] = 0.0;
}
#endif

/// Benchmarks are named like their labels, "<type>/<what>" plus "/<tokens>/<hidden>" (Google
/// Benchmark appends the arguments and "/manual_time"), so --benchmark_filter selects by type,
/// operation or shape: "bf16", "mlp", "bf16/mlp_forward/4096/8192", "^fp32-tf32/".
template <class T>
void register_type(bool all_shapes) {
  auto add = [&](const std::string& what, void (*fn)(benchmark::State&)) {
    auto* b = benchmark::RegisterBenchmark((std::string(type_name<T>()) + "/" + what).c_str(), fn);
    if (all_shapes) b->Args({4096, 8192})->Args({2048, 4096})->Args({512, 4096});
    else b->Args({2048, 4096});
    b->UseManualTime()->Unit(benchmark::kMillisecond);
  };
  add("gemm", BM_BareGemm<T>);
  add("column_forward", BM_Layer<T, Which::column, false>);
  add("bare_column_forward", BM_BareColumn<T, false>);
  add("column_fwdbwd", BM_Layer<T, Which::column, true>);
  add("bare_column_fwdbwd", BM_BareColumn<T, true>);
  add("row_forward", BM_Layer<T, Which::row, false>);
  add("bare_row_forward", BM_BareRow<T, false>);
  add("row_fwdbwd", BM_Layer<T, Which::row, true>);
  add("bare_row_fwdbwd", BM_BareRow<T, true>);
  add("mlp_forward", BM_Mlp<T, false>);
  add("bare_mlp_forward", BM_BareMlp<T, false>);
  add("mlp_fwdbwd", BM_Mlp<T, true>);
  add("bare_mlp_fwdbwd", BM_BareMlp<T, true>);
}

void register_all() {
  register_type<__nv_bfloat16>(true);
  register_type<__half>(false);
  register_type<float>(false);
#ifdef TP_HAS_NCCL
  benchmark::RegisterBenchmark("bf16/nccl_all_reduce", BM_NcclAllReduce<__nv_bfloat16>)
      ->RangeMultiplier(32)->Range(1 << 10, 1 << 28)->UseManualTime()->Unit(benchmark::kMicrosecond);
#endif
}

}  // namespace

int main(int argc, char** argv) {
  past_deadline();  // starts the clock
  register_all();
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
