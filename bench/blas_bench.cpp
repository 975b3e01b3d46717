/// The measurements behind tp::Cpu's GEMM library rule (tp/device/cpu/cpu.hpp): single-thread sgemm
/// of the shapes the layers run, through CBLAS (OpenBLAS), oneDNN's dnnl_sgemm when the build has it,
/// and tp::Cpu::gemm with its automatic choice, side by side in one run; and tp::Cpu::gemm in bf16
/// (oneDNN's bf16 matmul and the fallback) beside fp32 (tp_cpu_dtype, below).
///
///   build/bench/tp_bench_blas --benchmark_counters_tabular=true

#include <benchmark/benchmark.h>
#include <cblas.h>
#ifdef TP_HAS_DNNL
#include <dnnl.h>
#include <omp.h>
#endif

#include <vector>

#include "tp/device/cpu.hpp"

namespace {

/// {M, N, K}: C[M, N] = A[M, K] B[K, N]; the MLP's fc1 at 512 and 8 tokens, a square one, the CPU
/// attention's score tile (128 queries, 128 keys, head_dim 64), and small ones (call overhead).
const std::vector<std::vector<std::int64_t>> kShapes = {{2048, 2048, 2048}, {512, 4096, 1024}, {8, 4096, 1024},
                                                        {512, 1024, 4096},  {128, 128, 64},    {32, 32, 32},
                                                        {8, 16, 8}};

template <class Gemm>
void run(benchmark::State& state, Gemm gemm) {
  const int m = static_cast<int>(state.range(0)), n = static_cast<int>(state.range(1)), k = static_cast<int>(state.range(2));
  std::vector<float> a(static_cast<std::size_t>(m) * k, 0.5f), b(static_cast<std::size_t>(k) * n, 0.25f),
      c(static_cast<std::size_t>(m) * n);
  for (auto _ : state) {
    gemm(m, n, k, a.data(), b.data(), c.data());
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * m * n * k, benchmark::Counter::kIsIterationInvariantRate,
                                                 benchmark::Counter::kIs1000);
}

void openblas(benchmark::State& state) {
  tp::Cpu cpu;  // one thread
  state.SetLabel(tp::Cpu::blas_name(tp::CpuGemm::openblas));
  run(state, [](int m, int n, int k, const float* a, const float* b, float* c) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.f, a, k, b, n, 0.f, c, n);
  });
}
BENCHMARK(openblas)->Apply([](auto* b) {
  for (const auto& s : kShapes) b->Args(s);
})->ArgNames({"M", "N", "K"})->Unit(benchmark::kMillisecond);

#ifdef TP_HAS_DNNL
void onednn(benchmark::State& state) {
  omp_set_num_threads(1);  // oneDNN threads through OpenMP; one thread, like tp::Cpu
  (void)tp::Cpu{};         // and OpenBLAS one thread too
  state.SetLabel("oneDNN dnnl_sgemm");
  run(state, [](int m, int n, int k, const float* a, const float* b, float* c) {
    dnnl_sgemm('N', 'N', m, n, k, 1.f, a, k, b, n, 0.f, c, n);
  });
}
BENCHMARK(onednn)->Apply([](auto* b) {
  for (const auto& s : kShapes) b->Args(s);
})->ArgNames({"M", "N", "K"})->Unit(benchmark::kMillisecond);
#endif

/// What the layers get: Cpu::gemm with the automatic choice (the label says which library).
void tp_cpu(benchmark::State& state) {
  const tp::Cpu cpu;
  state.SetLabel(tp::Cpu::blas_name());
  run(state, [&](int m, int n, int k, const float* a, const float* b, float* c) {
    cpu.gemm<float>(tp::Op::n, tp::Op::n, 1.f, tp::ConstView<float>(a, m, k), tp::ConstView<float>(b, k, n), 0.f,
                    tp::MatrixView<float>(c, m, n));
  });
}
BENCHMARK(tp_cpu)->Apply([](auto* b) {
  for (const auto& s : kShapes) b->Args(s);
})->ArgNames({"M", "N", "K"})->Unit(benchmark::kMillisecond);

/// bf16 against fp32 through tp::Cpu::gemm, side by side per shape (kind 0: float; 1: bf16 on
/// oneDNN's bf16 matmul, where tp has oneDNN; 2: bf16 on the fallback, widened to fp32), one thread:
///
///   build/bench/tp_bench_blas --benchmark_filter=tp_cpu_dtype --benchmark_repetitions=3 \
///       --benchmark_enable_random_interleaving=true --benchmark_counters_tabular=true
void tp_cpu_dtype(benchmark::State& state) {
  const int m = static_cast<int>(state.range(0)), n = static_cast<int>(state.range(1)), k = static_cast<int>(state.range(2));
  const int kind = static_cast<int>(state.range(3));
  if (kind == 1 && !tp::detail::has_dnnl) return state.SkipWithError("tp was built without oneDNN");
  const tp::Cpu cpu({.threads = 1, .half_gemm = kind == 1 ? tp::CpuHalfGemm::onednn : tp::CpuHalfGemm::fp32});
  if (kind == 0) {
    state.SetLabel("fp32: " + tp::Cpu::blas_name(cpu.gemm_library()));
    return run(state, [&](int m, int n, int k, const float* a, const float* b, float* c) {
      cpu.gemm<float>(tp::Op::n, tp::Op::n, 1.f, tp::ConstView<float>(a, m, k), tp::ConstView<float>(b, k, n), 0.f,
                      tp::MatrixView<float>(c, m, n));
    });
  }
  state.SetLabel("bf16: " + tp::Cpu::half_gemm_name(cpu.half_gemm()));
  std::vector<tp::bf16> a(static_cast<std::size_t>(m) * k, 0.5f), b(static_cast<std::size_t>(k) * n, 0.25f),
      c(static_cast<std::size_t>(m) * n);
  for (auto _ : state) {
    cpu.gemm<tp::bf16>(tp::Op::n, tp::Op::n, 1.f, tp::ConstView<tp::bf16>(a.data(), m, k),
                       tp::ConstView<tp::bf16>(b.data(), k, n), 0.f, tp::MatrixView<tp::bf16>(c.data(), m, n));
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * m * n * k, benchmark::Counter::kIsIterationInvariantRate,
                                                 benchmark::Counter::kIs1000);
}
BENCHMARK(tp_cpu_dtype)->Apply([](auto* b) {
  for (const auto& s : kShapes)
    if (s[0] * s[1] * s[2] >= 128 * 128 * 64)  // the small shapes measure call overhead, not arithmetic
      for (const std::int64_t kind : {0, 1, 2}) b->Args({s[0], s[1], s[2], kind});
})->ArgNames({"M", "N", "K", "kind"})->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
