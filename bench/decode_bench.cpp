/// Generation speed of a Llama-style model on the CPU against what the machine allows:
///
/// - decode (batch 1, one token per forward through the KV cache) reads every weight once per
///   token, so its limit is the memory bandwidth: tokens/s <= triad bandwidth / weight bytes, with
///   the triad (a = b + s c, STREAM's kernel, 3 x 4 bytes per element) run by all ranks at once,
///   one thread each, as the ranks run;
/// - prefill (the prompt in one forward) is GEMMs, so its limit is the GEMM rate: tokens/s <=
///   sgemm FLOP/s (a 1024^3 tp::Cpu GEMM, all ranks at once) / FLOPs per prompt token, which
///   count the LM head once per prompt (only the last position's logits choose the next token).
///
/// The model is the llama architecture of examples/train_tiny_lm (RMSNorm, RoPE, SwiGLU, GQA, tied
/// embeddings) with random weights, ~100 M parameters by default, in float32, packed for inference
/// (Transformer::pack_for_inference; --no-pack leaves it unpacked, "(unpacked)" in the table). Prints one markdown
/// table row per run (scripts/bench.sh puts them into BENCHMARKS.md), naming the kernels' clone
/// (TP_CPU_ISA=avx2 runs the AVX2 one on an AVX-512 machine):
///
///   mpirun -np 2 build/bench/tp_bench_decode            # TP 2 over MPI
///   build/bench/tp_bench_decode --backend local --world 1

#include <CLI/CLI.hpp>
#include <tp/comm/launch.hpp>
#include <tp/device/cpu/simd.hpp>
#include <tp/inference/generate.hpp>
#include <tp/tp.hpp>

#include <algorithm>
#include <chrono>
#include <vector>

#include "common/generation_model.hpp"
#include "common/stopwatch.hpp"
#include "common/triad.hpp"
#include "train_tiny_lm/tiny_lm.hpp"

namespace {

using tp::bench::Clock;
using tp::bench::seconds_since;

/// This rank's sgemm rate in FLOP/s (best of `reps`, a 1024^3 product through tp::Cpu) while every
/// rank runs its own.
double gemm_rate(tp::Communicator& comm, const tp::Cpu& cpu, int reps) {
  const std::int64_t n = 1024;
  tp::Tensor<float, tp::Cpu> a(n, n), b(n, n), c(n, n);
  std::fill_n(a.data(), n * n, 0.5f);
  std::fill_n(b.data(), n * n, 0.25f);
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    comm.barrier();
    const auto t0 = Clock::now();
    cpu.gemm(tp::Op::n, tp::Op::n, 1.0f, a.view(), b.view(), 0.0f, c.view());
    best = std::min(best, seconds_since(t0));
  }
  return 2.0 * static_cast<double>(n * n * n) / best;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Decode and prefill tokens/s of a Llama-style model against the bandwidth and GEMM limits"};
  std::string backend = "mpi";
  int world = 1, threads = 1, reps = 5;
  std::int64_t prompt = 128, new_tokens = 32, triad_mb = 256;
  tiny_lm::ModelConfig model = tp::bench::generation_model();
  app.add_option("--backend", backend, "local, mpi or gloo")->capture_default_str();
  app.add_option("--world", world, "ranks in this process (local)")->capture_default_str();
  app.add_option("--threads", threads, "BLAS threads per rank")->capture_default_str();
  tp::bench::add_model_options(app, model);
  app.add_option("--prompt", prompt, "prompt tokens (prefill)")->capture_default_str();
  app.add_option("--new-tokens", new_tokens, "decoded tokens")->capture_default_str();
  app.add_option("--reps", reps, "generations timed (the best is reported)")->capture_default_str();
  app.add_option("--triad-mb", triad_mb, "MiB per triad array (well above the caches)")->capture_default_str();
  bool header = false, no_verify = false, no_pack = false;
  app.add_flag("--header", header, "print the table header first");
  app.add_flag("--no-pack", no_pack, "leave the weights unpacked (Transformer::pack_for_inference), for before/after");
  app.add_flag("--no-verify-collectives", no_verify, "switch collective verification off (to see what it costs)");
  CLI11_PARSE(app, argc, argv);
  model.seq_len = prompt + new_tokens;

  try {
    tp::launch({.backend = backend, .world = world}, argc, argv, [&](std::shared_ptr<tp::Communicator> comm) {
      auto cpu = std::make_shared<tp::Cpu>(tp::CpuOptions{.threads = threads});
      const tp::Context<> ctx(comm, cpu);
      const bool lead = comm->rank() == 0;
      if (no_verify) comm->set_verify_collectives(false);
      tp::bench::Triad triad(triad_mb << 20);

      tp::models::Transformer<float> lm(ctx, model.transformer(), model.seed);
      const std::int64_t params = tiny_lm::parameter_count(lm);
      // The prefill's GEMMs on weights packed once (an inference server's setup, not timed).
      if (!no_pack) lm.pack_for_inference();
      // Bytes a decoded token reads: every weight (the tied table once, by the LM head; the
      // embedding lookup reads one row) and the KV cache, at its mean length.
      const std::int64_t head_dim = model.hidden / model.heads;
      const double kv_bytes = 2.0 * 4.0 * static_cast<double>(model.layers * model.kv_heads * head_dim) *
                              (static_cast<double>(prompt) + 0.5 * static_cast<double>(new_tokens));
      const double weight_bytes = 4.0 * static_cast<double>(params);
      // FLOPs per prompt token: 2 per weight of the blocks, plus causal attention (q k^T and p v
      // over on average prompt / 2 keys), plus the LM head's 2 per weight once per prompt: the
      // next token needs the logits of the last position only (tp::generate computes no others).
      const double head_weights = static_cast<double>(model.vocab * model.hidden);
      const double block_weights = static_cast<double>(params) - head_weights - static_cast<double>(model.hidden);
      const double prefill_flops = 2.0 * block_weights +
                                   2.0 * 2.0 * static_cast<double>(model.layers * model.hidden) * (0.5 * static_cast<double>(prompt)) +
                                   2.0 * head_weights / static_cast<double>(prompt);
      std::vector<std::int64_t> ids(static_cast<std::size_t>(prompt));
      for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int64_t>((i * 7919) % static_cast<std::size_t>(model.vocab));

      // The limits and the generation measured in turns, each the best of `reps`, so that both see
      // the same machine (other load on a shared machine slows them alike).
      double prefill = 1e30, decode = 1e30, bw = 0, flops = 0;  // best seconds (slowest rank), best rates
      for (int r = 0; r < reps + 1; ++r) {  // the first run warms the caches and allocations
        double rates[2] = {triad.run(*comm), gemm_rate(*comm, *cpu, 2)};
        comm->all_reduce(std::span<double>(rates, 2), tp::ReduceOp::sum);
        const auto out = tp::generate(lm, ids, new_tokens);
        double t[2] = {out.prefill_seconds, out.decode_seconds};
        comm->all_reduce(std::span<double>(t, 2), tp::ReduceOp::max);
        if (r == 0) continue;
        bw = std::max(bw, rates[0]);
        flops = std::max(flops, rates[1]);
        prefill = std::min(prefill, t[0]);
        decode = std::min(decode, t[1]);
      }
      const double decode_tps = static_cast<double>(new_tokens - 1) / decode;
      const double prefill_tps = static_cast<double>(prompt) / prefill;
      const double decode_limit = bw / (weight_bytes + kv_bytes), prefill_limit = flops / prefill_flops;
      if (lead) {
        if (header) {
          fmt::print("| TP | backend | clone | parameters | weights | triad GB/s (all ranks) | decode tok/s | limit | ratio | "
                     "sgemm GFLOP/s (all ranks) | prefill tok/s ({} tokens) | limit | ratio |\n",
                     prompt);
          fmt::print("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        }
        fmt::print("| {} | {}{} | {} | {:.1f} M | {:.0f} MB | {:.1f} | {:.1f} | {:.1f} | {:.2f} | {:.1f} | {:.0f} | {:.0f} | {:.2f} |\n",
                   comm->size(), std::string(comm->backend()) + (no_pack ? " (unpacked)" : ""),
                   no_verify ? " (no verification)" : "",
                   tp::detail::simd::isa_name(tp::detail::simd::active_isa()), 1e-6 * static_cast<double>(params), 1e-6 * weight_bytes, 1e-9 * bw,
                   decode_tps, decode_limit, decode_tps / decode_limit, 1e-9 * flops, prefill_tps, prefill_limit,
                   prefill_tps / prefill_limit);
      }
    });
  } catch (const std::exception& e) {
    fmt::print(stderr, "tp_bench_decode: {}\n", e.what());
    return 1;
  }
  return 0;
}
