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

#include <memory>
#include <string>
#include <vector>

#include "tp/device/cpu.hpp"
#include "tp/ops/linear.hpp"

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

/// The core's own arithmetic ceiling per instruction, one thread: a loop of independent multiply-adds
/// (14 accumulators, more than latency x ports needs) with nothing else in it. kind 0: float
/// vfmadd231ps on ymm (AVX2), 1: on zmm (AVX-512), 2: bf16 vdpbf16ps on zmm (AVX512_BF16: 32 bf16
/// pairs into 16 float lanes, 64 FLOPs). What tp_cpu_dtype's GEMMs can reach at most: the ratio of
/// kinds 2 and 1 bounds bf16 over fp32 on a CPU without AMX.
///
///   build/bench/tp_bench_blas --benchmark_filter=cpu_peak --benchmark_counters_tabular=true
#if defined(__x86_64__) && defined(__GNUC__)
constexpr int kPeakLoop = 1000, kPeakInstructions = 20;
const float kPeakOne = 1.f;  // the operands: accumulators start at zero and count up, never denormal

// One asm statement per kind (the registers are the loop's alone): zero the accumulators, broadcast
// 1.0 into the two operands, then kPeakLoop rounds of 20 independent multiply-adds.
#define TP_PEAK_ROUND(op, a, b, r)                                                                               \
  op " %%" a ", %%" b ", %%" r "0\n\t" op " %%" a ", %%" b ", %%" r "1\n\t" op " %%" a ", %%" b ", %%" r "2\n\t"   \
  op " %%" a ", %%" b ", %%" r "3\n\t" op " %%" a ", %%" b ", %%" r "4\n\t" op " %%" a ", %%" b ", %%" r "5\n\t"   \
  op " %%" a ", %%" b ", %%" r "6\n\t" op " %%" a ", %%" b ", %%" r "7\n\t" op " %%" a ", %%" b ", %%" r "8\n\t"   \
  op " %%" a ", %%" b ", %%" r "9\n\t" op " %%" a ", %%" b ", %%" r "10\n\t" op " %%" a ", %%" b ", %%" r "11\n\t" \
  op " %%" a ", %%" b ", %%" r "12\n\t" op " %%" a ", %%" b ", %%" r "13\n\t" op " %%" a ", %%" b ", %%" r "0\n\t"  \
  op " %%" a ", %%" b ", %%" r "1\n\t" op " %%" a ", %%" b ", %%" r "2\n\t" op " %%" a ", %%" b ", %%" r "3\n\t"    \
  op " %%" a ", %%" b ", %%" r "4\n\t" op " %%" a ", %%" b ", %%" r "5\n\t"
#define TP_PEAK_ZERO(r)                                                                                         \
  "vxorps %%" r "0, %%" r "0, %%" r "0\n\tvxorps %%" r "1, %%" r "1, %%" r "1\n\tvxorps %%" r "2, %%" r "2, %%" r \
  "2\n\tvxorps %%" r "3, %%" r "3, %%" r "3\n\tvxorps %%" r "4, %%" r "4, %%" r "4\n\tvxorps %%" r "5, %%" r "5, %%" \
  r "5\n\tvxorps %%" r "6, %%" r "6, %%" r "6\n\tvxorps %%" r "7, %%" r "7, %%" r "7\n\tvxorps %%" r "8, %%" r     \
  "8, %%" r "8\n\tvxorps %%" r "9, %%" r "9, %%" r "9\n\tvxorps %%" r "10, %%" r "10, %%" r "10\n\tvxorps %%" r    \
  "11, %%" r "11, %%" r "11\n\tvxorps %%" r "12, %%" r "12, %%" r "12\n\tvxorps %%" r "13, %%" r "13, %%" r "13\n\t"
// 14 accumulators (registers 0-13; an AVX2-only CPU has 16), enough for two ports of 4-cycle FMAs.
#define TP_PEAK_LOOP(op, r)                                                                     \
  __asm__ volatile(TP_PEAK_ZERO("ymm") "vbroadcastss %0, %%" r "14\n\t"                        \
                   "vbroadcastss %0, %%" r "15\n\t"                                            \
                   "mov %1, %%ecx\n"                                                            \
                   "1:\n\t" TP_PEAK_ROUND(op, r "14", r "15", r) "dec %%ecx\n\t"                \
                   "jnz 1b\n\t"                                                                 \
                   "vzeroupper" ::"m"(kPeakOne),                                                \
                   "i"(kPeakLoop)                                                               \
                   : "ecx", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", \
                     "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15")

__attribute__((target("avx2,fma"))) void ymm_fma() { TP_PEAK_LOOP("vfmadd231ps", "ymm"); }
__attribute__((target("avx512f"))) void zmm_fma() { TP_PEAK_LOOP("vfmadd231ps", "zmm"); }
__attribute__((target("avx512f,avx512bf16"))) void zmm_dpbf16() { TP_PEAK_LOOP("vdpbf16ps", "zmm"); }
#undef TP_PEAK_LOOP
#undef TP_PEAK_ZERO
#undef TP_PEAK_ROUND

void cpu_peak(benchmark::State& state) {
  struct Kind {
    const char* label;
    bool runs;
    void (*loop)();
    double flops;  // per instruction
  };
  const Kind kinds[] = {
      {"vfmadd231ps ymm (fp32)", static_cast<bool>(__builtin_cpu_supports("fma")), ymm_fma, 16},
      {"vfmadd231ps zmm (fp32)", tp::detail::cpu_has_avx512(), zmm_fma, 32},
      {"vdpbf16ps zmm (bf16 pairs, fp32 sums)", static_cast<bool>(__builtin_cpu_supports("avx512bf16")), zmm_dpbf16, 64},
  };
  const Kind& kind = kinds[state.range(0)];
  if (!kind.runs) return state.SkipWithError((std::string("this CPU cannot run ") + kind.label).c_str());
  state.SetLabel(kind.label);
  for (auto _ : state) kind.loop();
  state.counters["GFLOP/s"] = benchmark::Counter(kind.flops * kPeakInstructions * kPeakLoop,
                                                 benchmark::Counter::kIsIterationInvariantRate,
                                                 benchmark::Counter::kIs1000);
}
BENCHMARK(cpu_peak)->DenseRange(0, 2)->ArgName("kind");
#endif

/// The prefill's GEMMs (tp_bench_prefill: a 128-token prompt through the 100 M Llama-style model,
/// hidden 768, ffn 2048, 12 heads over 4 kv heads; QKV, O, gate/up, down as {M, N, K}) beside the
/// 1024^3 product of the prefill limit, as the layers run them: y = x w^T with w [N, K]
/// (torch.nn.Linear's layout; kind 0, tp::Cpu::gemm(n, t), what tp::ops::linear_forward runs at
/// these token counts), beside the same product with w stored [K, N] (kind 1, gemm(n, n)) and, where
/// tp has oneDNN, beside oneDNN's matmul primitive with w reordered once into the layout oneDNN
/// chooses (kind 2: prepacked weights, the reorder outside the timing), and beside what the layers
/// run when packed for inference (kind 3: tp::ops::linear_forward on tp::ops::pack_weight's copy,
/// oneDNN's layout or w^T, whichever tp::Cpu's GEMM library takes). GFLOP/s from wall time.
///
///   build/bench/tp_bench_blas --benchmark_filter=prefill_gemm --benchmark_repetitions=5 \
///       --benchmark_enable_random_interleaving=true --benchmark_counters_tabular=true
void prefill_gemm(benchmark::State& state) {
  const std::int64_t m = state.range(0), n = state.range(1), k = state.range(2);
  const int kind = static_cast<int>(state.range(3));
  const tp::Cpu cpu({.threads = 1});
  std::vector<float> a(static_cast<std::size_t>(m * k), 0.5f), w(static_cast<std::size_t>(k * n), 0.25f),
      c(static_cast<std::size_t>(m * n));
  const auto count = [&] {
    state.counters["GFLOP/s"] = benchmark::Counter(2.0 * static_cast<double>(m * n * k),
                                                   benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
  };
  if (kind == 3) {
    const auto dev = std::make_shared<tp::Cpu>(tp::CpuOptions{.threads = 1});
    const tp::ConstView<float> wv(w.data(), n, k);
    const auto packed = tp::ops::pack_weight<float>(dev, wv);
    state.SetLabel(fmt::format("tp::ops::linear_forward, w packed ({})",
                               packed.form() == tp::PackedWeight<float, tp::Cpu>::Form::onednn ? "oneDNN's layout"
                               : packed.form() == tp::PackedWeight<float, tp::Cpu>::Form::transposed
                                   ? "w^T for " + tp::Cpu::blas_name(dev->gemm_library())
                                   : "not packed"));
    for (auto _ : state) {
      tp::ops::linear_forward<float>(*dev, tp::ConstView<float>(a.data(), m, k), wv, packed, {},
                                     tp::MatrixView<float>(c.data(), m, n));
      benchmark::DoNotOptimize(c.data());
    }
    return count();
  }
  if (kind < 2) {
    state.SetLabel(kind == 0 ? "x w^T, w [N, K]: " + tp::Cpu::blas_name(cpu.gemm_library()) : "x w, w [K, N]");
    for (auto _ : state) {
      cpu.gemm<float>(tp::Op::n, kind == 0 ? tp::Op::t : tp::Op::n, 1.f, tp::ConstView<float>(a.data(), m, k),
                      kind == 0 ? tp::ConstView<float>(w.data(), n, k) : tp::ConstView<float>(w.data(), k, n), 0.f,
                      tp::MatrixView<float>(c.data(), m, n));
      benchmark::DoNotOptimize(c.data());
    }
    return count();
  }
#ifdef TP_HAS_DNNL
  omp_set_num_threads(1);
  const auto desc = [](dnnl_memory_desc_t* md, std::int64_t rows, std::int64_t cols, dnnl_format_tag_t tag) {
    const dnnl_dims_t dims = {rows, cols};
    tp::detail::dnnl_check(dnnl_memory_desc_init_by_tag(md, 2, dims, dnnl_f32, tag), "memory_desc");
  };
  dnnl_memory_desc_t a_md, w_plain, w_any, c_md;
  desc(&a_md, m, k, dnnl_ab);
  desc(&w_plain, k, n, dnnl_ba);  // w stored [N, K]: the weights' own layout
  desc(&w_any, k, n, dnnl_format_tag_any);
  desc(&c_md, m, n, dnnl_ab);
  dnnl_matmul_desc_t md;
  tp::detail::dnnl_check(dnnl_matmul_desc_init(&md, &a_md, &w_any, nullptr, &c_md), "matmul_desc_init");
  const dnnl_engine_t engine = tp::detail::dnnl_cpu_engine();
  const dnnl_stream_t stream = tp::detail::dnnl_thread_stream();
  dnnl_primitive_desc_t pd = nullptr, reorder_pd = nullptr;
  tp::detail::dnnl_check(dnnl_primitive_desc_create(&pd, &md, nullptr, engine, nullptr), "matmul pd");
  const dnnl_memory_desc_t packed_md = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
  dnnl_primitive_t matmul = nullptr, reorder = nullptr;
  dnnl_memory_t am, wm, pm, cm;
  tp::detail::dnnl_check(dnnl_primitive_create(&matmul, pd), "matmul");
  tp::detail::dnnl_check(dnnl_memory_create(&am, &a_md, engine, a.data()), "memory a");
  tp::detail::dnnl_check(dnnl_memory_create(&wm, &w_plain, engine, w.data()), "memory w");
  tp::detail::dnnl_check(dnnl_memory_create(&pm, &packed_md, engine, DNNL_MEMORY_ALLOCATE), "memory packed w");
  tp::detail::dnnl_check(dnnl_memory_create(&cm, &c_md, engine, c.data()), "memory c");
  tp::detail::dnnl_check(dnnl_reorder_primitive_desc_create(&reorder_pd, &w_plain, engine, &packed_md, engine, nullptr),
                         "reorder pd");
  tp::detail::dnnl_check(dnnl_primitive_create(&reorder, reorder_pd), "reorder");
  const dnnl_exec_arg_t reorder_args[] = {{DNNL_ARG_FROM, wm}, {DNNL_ARG_TO, pm}};
  tp::detail::dnnl_check(dnnl_primitive_execute(reorder, stream, 2, reorder_args), "reorder execute");
  const dnnl_exec_arg_t args[] = {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, pm}, {DNNL_ARG_DST, cm}};
  const char* impl = nullptr;
  dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
  state.SetLabel(fmt::format("oneDNN matmul, w prepacked ({})", impl ? impl : "?"));
  for (auto _ : state) {
    tp::detail::dnnl_check(dnnl_primitive_execute(matmul, stream, 3, args), "matmul execute");
    tp::detail::dnnl_check(dnnl_stream_wait(stream), "stream_wait");
    benchmark::DoNotOptimize(c.data());
  }
  for (dnnl_memory_t mem : {am, wm, pm, cm}) dnnl_memory_destroy(mem);
  dnnl_primitive_destroy(reorder);
  dnnl_primitive_destroy(matmul);
  dnnl_primitive_desc_destroy(reorder_pd);
  dnnl_primitive_desc_destroy(pd);
  count();
#else
  state.SkipWithError("tp was built without oneDNN");
#endif
}
BENCHMARK(prefill_gemm)->Apply([](auto* b) {
  for (const std::vector<std::int64_t> s : {std::vector<std::int64_t>{1024, 1024, 1024}, {128, 1280, 768}, {128, 768, 768},
                                            {128, 4096, 768}, {128, 768, 2048}})
    for (const std::int64_t kind : {0, 1, 2, 3}) b->Args({s[0], s[1], s[2], kind});
})->ArgNames({"M", "N", "K", "kind"})->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
