/// Where a prefill's time goes: a prompt through the Llama-style model of tp_bench_decode (one
/// forward through the KV cache, the logits of the last position only, as tp::generate runs it),
/// timed whole, beside each of its parts run on their own through the same ops, on the model's own
/// weights (every layer's in turn, as the forward meets them, so the weights come from memory as
/// they do there), at the shapes the forward gives them:
///
///   RMSNorm (norm1 and norm2), the QKV projection, RoPE on q and k, the KV cache's writes, the
///   attention core, the output projection (O), gate/up, SwiGLU, down, the residual adds, the
///   copies the layers keep of their inputs, and the final norm and LM head on the last row.
///
/// What the whole prefill takes beyond the sum of the parts is the rest: the embedding, the
/// sampling's logits, calls and bookkeeping. Each GEMM's rate is set beside the rate of the
/// 1024^3 tp::Cpu GEMM (the prefill limit of tp_bench_decode) and beside the same GEMM repeated on
/// one weight (warm: its weight in cache). Prints a markdown table; every figure is the median over
/// --reps turns, each turn timing every part once in the same order, so a machine that slows down
/// slows them all alike. The model is packed for inference (Transformer::pack_for_inference) and the
/// GEMM parts run on the packed weights, as the prefill does; --no-pack runs everything unpacked.
///
///   OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 build/bench/tp_bench_prefill [--prompt 128] [--no-pack]

#include <CLI/CLI.hpp>
#include <tp/comm/launch.hpp>
#include <tp/device/cpu/simd.hpp>
#include <tp/tp.hpp>

#include <algorithm>
#include <chrono>
#include <functional>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "common/generation_model.hpp"
#include "common/stopwatch.hpp"
#include "train_tiny_lm/tiny_lm.hpp"

namespace {

using tp::bench::Clock;
using tp::bench::seconds_since;
using tp::bench::median;

/// One row of the table: a part of the prefill, timed by `run` (all layers), with `flops` per run
/// (0: not a GEMM-like part).
struct Part {
  std::string name;
  double flops = 0;
  std::function<void()> run;
  std::vector<double> seconds;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Where a prefill's time goes: the whole forward beside each of its parts on its own"};
  int reps = 21;
  std::int64_t prompt = 128;
  tiny_lm::ModelConfig model = tp::bench::generation_model();
  tp::bench::add_model_options(app, model);
  app.add_option("--prompt", prompt, "prompt tokens")->capture_default_str();
  app.add_option("--reps", reps, "turns (the median is reported)")->capture_default_str();
  bool whole_only = false, no_pack = false;
  app.add_flag("--whole-only", whole_only, "time the whole prefill alone (for perf record)");
  app.add_flag("--no-pack", no_pack, "leave the weights unpacked (Transformer::pack_for_inference), for before/after");
  CLI11_PARSE(app, argc, argv);
  model.seq_len = prompt;

  try {
    tp::launch({.backend = "local", .world = 1}, argc, argv, [&](std::shared_ptr<tp::Communicator> comm) {
      auto cpu = std::make_shared<tp::Cpu>(tp::CpuOptions{.threads = 1});
      const tp::Context<> ctx(comm, cpu);
      const tp::Cpu& dev = *cpu;
      using Mat = tp::Tensor<float, tp::Cpu>;
      tp::models::Transformer<float> lm(ctx, model.transformer(), model.seed);
      const auto& c = lm.config();
      const std::int64_t n = prompt, layers = lm.num_layers(), hidden = c.hidden;
      auto& a0 = lm.layer(0).attention;
      const std::int64_t d = a0.head_dim(), q_width = a0.q_heads().size() * d, kv_width = a0.kv_heads().size() * d;
      const std::int64_t ffn = lm.layer(0).mlp.ffn_range().size();

      std::vector<std::int64_t> ids_host(static_cast<std::size_t>(n));
      for (std::size_t i = 0; i < ids_host.size(); ++i)
        ids_host[i] = static_cast<std::int64_t>((i * 7919) % static_cast<std::size_t>(c.vocab));
      tp::Tensor<std::int64_t, tp::Cpu> ids(cpu, 1, n), positions(cpu, 1, n);
      dev.from_host(tp::ConstView<std::int64_t>(ids_host.data(), 1, n), ids.view());
      for (std::int64_t i = 0; i < n; ++i) positions.view()(0, i) = i;
      auto cache = lm.make_cache(1, n);
      const tp::AttentionBatch batch{.lengths = {n}};

      // The parts' inputs and outputs: random activations of the forward's shapes.
      const auto random = [&](std::int64_t rows, std::int64_t cols, std::uint64_t seed) {
        Mat m(cpu, rows, cols);
        std::uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
        for (std::int64_t i = 0; i < rows * cols; ++i) {
          s = s * 6364136223846793005ull + 1442695040888963407ull;
          m.data()[i] = static_cast<float>(static_cast<double>(s >> 40) / static_cast<double>(1ull << 24) - 0.5);
        }
        return m;
      };
      Mat x = random(n, hidden, 1), qkv = random(n, q_width + 2 * kv_width, 2), ctx_out = random(n, q_width, 3),
          y = random(n, hidden, 4), gate_up = random(n, 2 * ffn, 5), act = random(n, ffn, 6), copy = random(n, hidden, 7),
          keys(cpu, n, kv_width), values(cpu, n, kv_width), head_in = random(1, hidden, 8);
      tp::Tensor<tp::ops::AttentionStat<float>, tp::Cpu> lse(cpu, a0.q_heads().size(), n);
      const tp::AttentionSequences seqs = tp::AttentionSequences::packed(batch.lengths);
      tp::ConstView<float> table;
      for (auto& p : lm.parameters())
        if (p.name == "embed.weight" || p.name == "lm_head.weight") table = p.value;
      const auto pack_start = Clock::now();
      if (!no_pack) lm.pack_for_inference();
      const double pack_seconds = seconds_since(pack_start);
      // A projection of the forward's: on its packed weight where the model is packed.
      using Packed = tp::PackedWeight<float, tp::Cpu>;
      const auto project = [&dev, no_pack](tp::ConstView<float> in, tp::ConstView<float> w, const Packed& packed, Mat& out) {
        if (no_pack)
          tp::ops::linear_forward<float>(dev, in, w, {}, out.view());
        else
          tp::ops::linear_forward<float>(dev, in, w, packed, {}, out.view());
      };
      // The weights read-only (the writable accessors refuse while packed).
      const auto& a0c = std::as_const(a0);
      const auto& mlp0 = std::as_const(lm.layer(0).mlp);
      Mat logits(cpu, 1, table.rows);
      const double m = static_cast<double>(n);
      const auto gemm_flops = [&](tp::ConstView<float> w) {
        return 2.0 * m * static_cast<double>(w.rows * w.cols) * static_cast<double>(layers);
      };
      const auto each_layer = [&](auto f) {
        return [&, f] {
          for (std::int64_t i = 0; i < layers; ++i) f(lm.layer(i));
        };
      };

      std::vector<Part> parts;
      parts.push_back({"RMSNorm (norm1, norm2)", 0, each_layer([&](auto& l) {
                         l.norm1.forward(x.view());
                         l.norm2.forward(x.view());
                       })});
      parts.push_back({"QKV GEMM", gemm_flops(a0c.qkv_weight()), each_layer([&](auto& l) {
                         project(x.view(), std::as_const(l.attention).qkv_weight(), l.attention.packed_qkv_weight(), qkv);
                       })});
      parts.push_back({"RoPE (q, k)", 0, each_layer([&](auto& l) {
                         const auto v = qkv.view();
                         tp::ops::rope(dev, v.cols_range(0, q_width), positions.view(), d, c.rope_theta, false);
                         tp::ops::rope(dev, v.cols_range(q_width, kv_width), positions.view(), d, c.rope_theta, false);
                         (void)l;
                       })});
      parts.push_back({"KV-cache writes", 0, each_layer([&](auto&) {
                         dev.copy(tp::ConstView<float>(qkv.view().cols_range(q_width, kv_width)), keys.view());
                         dev.copy(tp::ConstView<float>(qkv.view().cols_range(q_width + kv_width, kv_width)),
                                  values.view());
                       })});
      const double attention_flops =
          2.0 * 2.0 * static_cast<double>(a0.q_heads().size() * d) * (m * (m + 1) / 2) * static_cast<double>(layers);
      parts.push_back({"attention core", attention_flops, each_layer([&](auto&) {
                         const auto v = qkv.view();
                         tp::ops::attention_forward(dev, tp::ConstView<float>(v.cols_range(0, q_width)),
                                                    tp::ConstView<float>(v.cols_range(q_width, kv_width)),
                                                    tp::ConstView<float>(v.cols_range(q_width + kv_width, kv_width)),
                                                    seqs, d, true, lse.view(), ctx_out.view());
                       })});
      parts.push_back({"O GEMM", gemm_flops(a0c.dense().weight()), each_layer([&](auto& l) {
                         const auto& dense = std::as_const(l.attention).dense();
                         project(ctx_out.view(), dense.weight(), dense.packed_weight(), y);
                       })});
      parts.push_back({"gate/up GEMM", gemm_flops(mlp0.fc1().weight()), each_layer([&](auto& l) {
                         const auto& fc1 = std::as_const(l.mlp).fc1();
                         project(x.view(), fc1.weight(), fc1.packed_weight(), gate_up);
                       })});
      parts.push_back({"SwiGLU", 0, each_layer([&](auto&) { tp::ops::swiglu(dev, gate_up.view(), act.view()); })});
      parts.push_back({"down GEMM", gemm_flops(mlp0.fc2().weight()), each_layer([&](auto& l) {
                         const auto& fc2 = std::as_const(l.mlp).fc2();
                         project(act.view(), fc2.weight(), fc2.packed_weight(), y);
                       })});
      parts.push_back({"residual adds", 0, each_layer([&](auto&) {
                         tp::ops::add(dev, tp::ConstView<float>(y.view()), x.view());
                         tp::ops::add(dev, tp::ConstView<float>(y.view()), x.view());
                       })});
      // The layers' own copies of their inputs (attention's and fc1's for backward, dense's so that
      // it never multiplies its own output), beside the norms' (counted with the norms).
      parts.push_back({"input copies (attention, fc1, dense)", 0, each_layer([&](auto&) {
                         dev.copy(tp::ConstView<float>(x.view()), copy.view());
                         dev.copy(tp::ConstView<float>(x.view()), copy.view());
                         dev.copy(tp::ConstView<float>(ctx_out.view()), copy.view());
                       })});
      parts.push_back({"LM head (last row)", 2.0 * static_cast<double>(table.rows * table.cols), [&] {
                         tp::ops::linear_forward<float>(dev, head_in.view(), table, {}, logits.view());
                       }});

      // The same GEMMs repeated on layer 0's weight (in cache), and the limit's 1024^3 GEMM.
      std::vector<Part> warm;
      const auto warm_gemm = [&](const std::string& name, tp::ConstView<float> in, tp::ConstView<float> w,
                                 const Packed& packed, Mat& out) {
        warm.push_back({name, 2.0 * m * static_cast<double>(w.rows * w.cols), [&project, in, w, &packed, &out] {
                          project(in, w, packed, out);
                        }});
      };
      warm_gemm("QKV GEMM", x.view(), a0c.qkv_weight(), a0c.packed_qkv_weight(), qkv);
      warm_gemm("O GEMM", ctx_out.view(), a0c.dense().weight(), a0c.dense().packed_weight(), y);
      warm_gemm("gate/up GEMM", x.view(), mlp0.fc1().weight(), mlp0.fc1().packed_weight(), gate_up);
      warm_gemm("down GEMM", act.view(), mlp0.fc2().weight(), mlp0.fc2().packed_weight(), y);
      Mat sa = random(1024, 1024, 9), sb = random(1024, 1024, 10), sc(cpu, 1024, 1024);
      warm.push_back({"1024^3", 2.0 * 1024.0 * 1024.0 * 1024.0, [&] {
                        dev.gemm<float>(tp::Op::n, tp::Op::n, 1.0f, sa.view(), sb.view(), 0.0f, sc.view());
                      }});

      Part whole{"whole prefill", 0, [&] {
                   cache.reset();
                   lm.next_token_logits(ids.view(), batch, cache);
                 }};
      for (int r = 0; r < reps + 1; ++r) {  // the first turn warms up
        const auto time = [&](Part& p) {
          const auto t0 = Clock::now();
          p.run();
          if (r > 0) p.seconds.push_back(seconds_since(t0));
        };
        time(whole);
        if (whole_only) continue;
        for (auto& p : parts) time(p);
        for (auto& p : warm) time(p);
      }

      if (whole_only) {
        fmt::print("whole prefill: {:.2f} ms (median of {})\n", 1e3 * median(whole.seconds), reps);
        return;
      }
      const double total = median(whole.seconds), peak = warm.back().flops / median(warm.back().seconds);
      double sum = 0;
      fmt::print("prefill of {} tokens, hidden {}, {} layers, {} heads over {} kv heads, ffn {}, vocabulary {}; TP 1, "
                 "one thread, kernels {}, {}; weights {}; median of {} turns\n\n",
                 n, hidden, layers, c.heads, c.kv_heads, c.ffn, c.vocab,
                 tp::detail::simd::isa_name(tp::detail::simd::active_isa()), tp::Cpu::blas_name(),
                 no_pack ? "unpacked"
                         : fmt::format("packed for inference ({:.1f} MB more, packed in {:.2f} s)",
                                       1e-6 * static_cast<double>(lm.packed_bytes()), pack_seconds),
                 reps);
      fmt::print("| part | ms per prefill | share of the prefill | GFLOP/s | of the 1024^3 rate ({:.1f} GFLOP/s) | of the "
                 "same GEMM warm |\n|---|---|---|---|---|---|\n",
                 1e-9 * peak);
      for (auto& p : parts) {
        const double t = median(p.seconds);
        sum += t;
        std::string rate = "", eff = "", warm_eff = "";
        if (p.flops > 0) {
          rate = fmt::format("{:.1f}", 1e-9 * p.flops / t);
          eff = fmt::format("{:.2f}", p.flops / t / peak);
          for (auto& w : warm)
            if (w.name == p.name)
              warm_eff = fmt::format("{:.2f} ({:.1f} GFLOP/s warm)", (p.flops / t) / (w.flops / median(w.seconds)),
                                     1e-9 * w.flops / median(w.seconds));
        }
        fmt::print("| {} | {:.2f} | {:.3f} | {} | {} | {} |\n", p.name, 1e3 * t, t / total, rate, eff, warm_eff);
      }
      fmt::print("| rest (embedding, calls, bookkeeping) | {:.2f} | {:.3f} | | | |\n", 1e3 * (total - sum),
                 (total - sum) / total);
      fmt::print("| **whole prefill** | **{:.2f}** | 1 | {:.0f} tokens/s | | |\n", 1e3 * total, m / total);
      // The limits: every FLOP at the 1024^3 rate (tp_bench_decode's prefill limit; its causal
      // attention counts n^2 / 2 score rows, this one n (n + 1) / 2), and the shape-aware one, the GEMMs at the rate tp::Cpu::gemm reaches on their own
      // shapes (warm) and the rest at the 1024^3 rate.
      double flops = 0, shaped = 0;
      for (auto& p : parts) {
        flops += p.flops;
        double rate = peak;
        for (auto& w : warm)
          if (w.name == p.name) rate = w.flops / median(w.seconds);
        shaped += p.flops / rate;
      }
      fmt::print("\nlimit at the 1024^3 rate: {:.2f} ms, the prefill at {:.2f} of it; shape-aware limit (each GEMM at its "
                 "own shape's warm rate): {:.2f} ms, the prefill at {:.2f} of it\n",
                 1e3 * flops / peak, flops / peak / total, 1e3 * shaped, shaped / total);
    });
  } catch (const std::exception& e) {
    fmt::print(stderr, "tp_bench_prefill: {}\n", e.what());
    return 1;
  }
  return 0;
}
