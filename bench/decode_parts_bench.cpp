/// Where a decoded token's time goes: the Llama-style model of tp_bench_decode generating after a
/// prompt (tp::generate, batch 1), its decode timed per token, beside each part of a token run on
/// its own through the same ops at the same shapes (one token), on this rank's own weights (every
/// layer's in turn, as the forward meets them, so they come from memory as they do there), by
/// every rank at once (a barrier before each part; a part's time is the slowest rank's):
///
///   RMSNorm (2 per layer and the final one), the QKV projection, RoPE on q and k, attention over
///   the cache (at the mean length of the generation), the output projection (O), the two
///   all-reduces of a layer's output (hidden floats each, with the collective verification
///   tp::generate runs with), gate/up, SwiGLU, down, the LM head on this rank's vocabulary shard,
///   and the sampling (its exchange of the ranks' candidates included).
///
/// What the whole token takes beyond the sum of the parts is the rest: the embedding, the KV
/// cache's writes, the residual adds and the layers' copies of their inputs, calls and
/// bookkeeping, and the noise of the medians. Each part that reads weights or the cache is set
/// against the triad bandwidth of all ranks at once (tp_bench_decode's limit), measured in the same
/// turns. Prints a markdown table; every figure is the median over --reps turns.
///
///   mpirun -np 2 --bind-to none build/bench/tp_bench_decode_parts   # TP 2 over MPI
///   build/bench/tp_bench_decode_parts --backend local --world 1

#include <CLI/CLI.hpp>
#include <tp/comm/launch.hpp>
#include <tp/device/cpu/simd.hpp>
#include <tp/inference/generate.hpp>
#include <tp/tp.hpp>

#include <algorithm>
#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "common/generation_model.hpp"
#include "common/stopwatch.hpp"
#include "common/triad.hpp"
#include "train_tiny_lm/tiny_lm.hpp"

namespace {

using tp::bench::Clock;
using tp::bench::seconds_since;
using tp::bench::median;

/// One row of the table: a part of a decoded token, timed by `run` (all layers), reading `bytes`
/// of weights or cache on this rank per run (0: not counted against the bandwidth).
struct Part {
  std::string name;
  double bytes = 0;
  std::function<void()> run;
  std::vector<double> seconds;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Where a decoded token's time goes: the whole token beside each of its parts on its own"};
  std::string backend = "mpi";
  int world = 1, reps = 11;
  std::int64_t prompt = 128, new_tokens = 32, triad_mb = 256;
  tiny_lm::ModelConfig model = tp::bench::generation_model();
  app.add_option("--backend", backend, "local, mpi or gloo")->capture_default_str();
  app.add_option("--world", world, "ranks in this process (local)")->capture_default_str();
  tp::bench::add_model_options(app, model);
  app.add_option("--prompt", prompt, "prompt tokens")->capture_default_str();
  app.add_option("--new-tokens", new_tokens, "decoded tokens per generation")->capture_default_str();
  app.add_option("--reps", reps, "turns (the median is reported)")->capture_default_str();
  app.add_option("--triad-mb", triad_mb, "MiB per triad array (well above the caches)")->capture_default_str();
  bool no_verify = false;
  app.add_flag("--no-verify-collectives", no_verify, "switch collective verification off (to see what it costs)");
  CLI11_PARSE(app, argc, argv);
  model.seq_len = prompt + new_tokens;

  try {
    tp::launch({.backend = backend, .world = world}, argc, argv, [&](std::shared_ptr<tp::Communicator> comm) {
      auto cpu = std::make_shared<tp::Cpu>(tp::CpuOptions{.threads = 1});
      const tp::Context<> ctx(comm, cpu);
      const tp::Cpu& dev = *cpu;
      const tp::NoGrad no_grad;  // as tp::generate runs the model
      if (no_verify) comm->set_verify_collectives(false);
      using Mat = tp::Tensor<float, tp::Cpu>;
      tp::bench::Triad triad(triad_mb << 20);
      tp::models::Transformer<float> lm(ctx, model.transformer(), model.seed);
      const auto& c = lm.config();
      const std::int64_t layers = lm.num_layers(), hidden = c.hidden;
      auto& a0 = lm.layer(0).attention;
      const std::int64_t d = a0.head_dim(), q_width = a0.q_heads().size() * d, kv_width = a0.kv_heads().size() * d;
      const std::int64_t ffn = lm.layer(0).mlp.ffn_range().size();
      // The cache's mean length over the decoded tokens (as tp_bench_decode counts its KV bytes).
      const std::int64_t keys_len = prompt + new_tokens / 2;

      std::vector<std::int64_t> ids(static_cast<std::size_t>(prompt));
      for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int64_t>((i * 7919) % static_cast<std::size_t>(c.vocab));

      // The parts' inputs and outputs: random activations of the decode's shapes (one token).
      const auto random = [&](std::int64_t rows, std::int64_t cols, std::uint64_t seed) {
        Mat m(cpu, rows, cols);
        std::uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
        for (std::int64_t i = 0; i < rows * cols; ++i) {
          s = s * 6364136223846793005ull + 1442695040888963407ull;
          m.data()[i] = static_cast<float>(static_cast<double>(s >> 40) / static_cast<double>(1ull << 24) - 0.5);
        }
        return m;
      };
      Mat x = random(1, hidden, 1), qkv = random(1, q_width + 2 * kv_width, 2), ctx_out = random(1, q_width, 3),
          y = random(1, hidden, 4), gate_up = random(1, 2 * ffn, 5), act = random(1, ffn, 6);
      std::vector<Mat> keys, values;  // every layer's cache, as the forward reads them
      for (std::int64_t i = 0; i < layers; ++i) {
        keys.push_back(random(keys_len, kv_width, 10 + 2 * static_cast<std::uint64_t>(i)));
        values.push_back(random(keys_len, kv_width, 11 + 2 * static_cast<std::uint64_t>(i)));
      }
      tp::Tensor<std::int64_t, tp::Cpu> positions(cpu, 1, 1);
      positions.view()(0, 0) = keys_len - 1;
      tp::Tensor<tp::ops::AttentionStat<float>, tp::Cpu> lse(cpu, a0.q_heads().size(), 1);
      tp::AttentionSequences seqs;
      seqs.q_begin = {0};
      seqs.q_length = {1};
      seqs.k_begin = {0};
      seqs.k_length = {keys_len};
      tp::ConstView<float> table;  // this rank's vocabulary shard of the tied embedding, the LM head
      for (auto& p : lm.parameters())
        if (p.name == "embed.weight" || p.name == "lm_head.weight") table = p.value;
      Mat logits = random(1, table.rows, 12);
      const auto weight_bytes = [&](tp::ConstView<float> w) {
        return 4.0 * static_cast<double>(w.rows * w.cols) * static_cast<double>(layers);
      };
      const auto each_layer = [&](auto f) {
        return [&, f] {
          for (std::int64_t i = 0; i < layers; ++i) f(i, lm.layer(i));
        };
      };

      std::vector<Part> parts;
      parts.push_back({"RMSNorm (norm1, norm2, final)", 0, [&] {
                         for (std::int64_t i = 0; i < layers; ++i) {
                           lm.layer(i).norm1.forward(x.view());
                           lm.layer(i).norm2.forward(x.view());
                         }
                         lm.layer(0).norm1.forward(x.view());  // the final norm's op and shape
                       }});
      parts.push_back({"QKV GEMV", weight_bytes(a0.qkv_weight()), each_layer([&](std::int64_t, auto& l) {
                         tp::ops::linear_forward<float>(dev, x.view(), l.attention.qkv_weight(), {}, qkv.view());
                       })});
      parts.push_back({"RoPE (q, k)", 0, each_layer([&](std::int64_t, auto&) {
                         const auto v = qkv.view();
                         tp::ops::rope(dev, v.cols_range(0, q_width), positions.view(), d, c.rope_theta, false);
                         tp::ops::rope(dev, v.cols_range(q_width, kv_width), positions.view(), d, c.rope_theta, false);
                       })});
      parts.push_back({fmt::format("attention over the cache ({} keys)", keys_len),
                       2.0 * 4.0 * static_cast<double>(keys_len * kv_width * layers), each_layer([&](std::int64_t i, auto&) {
                         tp::ops::attention_forward(dev, tp::ConstView<float>(qkv.view().cols_range(0, q_width)),
                                                    tp::ConstView<float>(keys[static_cast<std::size_t>(i)].view()),
                                                    tp::ConstView<float>(values[static_cast<std::size_t>(i)].view()),
                                                    seqs, d, true, lse.view(), ctx_out.view());
                       })});
      parts.push_back({"O GEMV", weight_bytes(a0.dense().weight()), each_layer([&](std::int64_t, auto& l) {
                         tp::ops::linear_forward<float>(dev, ctx_out.view(), l.attention.dense().weight(), {}, y.view());
                       })});
      parts.push_back({fmt::format("all-reduces (2 per layer, {} bytes each)", 4 * hidden), 0,
                       each_layer([&](std::int64_t, auto&) {
                         comm->all_reduce(y.data(), y.data(), static_cast<std::size_t>(hidden), tp::DType::f32);
                         comm->all_reduce(y.data(), y.data(), static_cast<std::size_t>(hidden), tp::DType::f32);
                       })});
      parts.push_back({"gate/up GEMV", weight_bytes(lm.layer(0).mlp.fc1().weight()), each_layer([&](std::int64_t, auto& l) {
                         tp::ops::linear_forward<float>(dev, x.view(), l.mlp.fc1().weight(), {}, gate_up.view());
                       })});
      parts.push_back({"SwiGLU", 0, each_layer([&](std::int64_t, auto&) { tp::ops::swiglu(dev, gate_up.view(), act.view()); })});
      parts.push_back({"down GEMV", weight_bytes(lm.layer(0).mlp.fc2().weight()), each_layer([&](std::int64_t, auto& l) {
                         tp::ops::linear_forward<float>(dev, act.view(), l.mlp.fc2().weight(), {}, y.view());
                       })});
      parts.push_back({fmt::format("LM head GEMV ({} x {})", table.rows, table.cols),
                       4.0 * static_cast<double>(table.rows * table.cols),
                       [&] { tp::ops::linear_forward<float>(dev, x.view(), table, {}, logits.view()); }});
      parts.push_back({"sampling (greedy, across ranks)", 0, [&] {
                         tp::sample<float>(ctx, tp::ConstView<float>(logits.view()), lm.vocab_range(), c.vocab, {}, 0);
                       }});

      // Turns: the triad, then a generation (its decode per token is the whole), then every part
      // once, each started by all ranks at once; the slowest rank's time counts.
      std::vector<double> whole, bandwidth;
      for (int r = 0; r < reps + 1; ++r) {  // the first turn warms up
        std::vector<double> t;
        double bw = triad.run(*comm);
        comm->all_reduce(&bw, &bw, 1, tp::DType::f64, tp::ReduceOp::sum);
        const auto out = tp::generate(lm, ids, new_tokens);
        t.push_back(out.decode_seconds / static_cast<double>(new_tokens - 1));
        for (auto& p : parts) {
          comm->barrier();
          const auto t0 = Clock::now();
          p.run();
          t.push_back(seconds_since(t0));
        }
        comm->all_reduce(t.data(), t.data(), t.size(), tp::DType::f64, tp::ReduceOp::max);
        if (r == 0) continue;
        bandwidth.push_back(bw);
        whole.push_back(t[0]);
        for (std::size_t i = 0; i < parts.size(); ++i) parts[i].seconds.push_back(t[i + 1]);
      }
      if (comm->rank() != 0) return;

      const double total = median(whole), bw = median(bandwidth), ranks = static_cast<double>(comm->size());
      double sum = 0, bytes = 0;
      fmt::print("decode after a {}-token prompt ({} new tokens), hidden {}, {} layers, {} heads over {} kv heads, ffn {}, "
                 "vocabulary {}; TP {} ({}{}), one thread per rank, kernels {}; median of {} turns; triad {:.1f} GB/s "
                 "(all ranks)\n\n",
                 prompt, new_tokens, hidden, layers, c.heads, c.kv_heads, c.ffn, c.vocab, comm->size(), comm->backend(),
                 no_verify ? ", no verification" : "",
                 tp::detail::simd::isa_name(tp::detail::simd::active_isa()), reps, 1e-9 * bw);
      fmt::print("| part ({} layers) | ms per token | share of the token | MB read (all ranks) | GB/s (all ranks) | of "
                 "the triad |\n|---|---|---|---|---|---|\n",
                 layers);
      for (auto& p : parts) {
        const double t = median(p.seconds), b = p.bytes * ranks;
        sum += t;
        bytes += b;
        fmt::print("| {} | {:.3f} | {:.3f} | {} | {} | {} |\n", p.name, 1e3 * t, t / total,
                   b > 0 ? fmt::format("{:.1f}", 1e-6 * b) : "", b > 0 ? fmt::format("{:.1f}", 1e-9 * b / t) : "",
                   b > 0 ? fmt::format("{:.2f}", b / t / bw) : "");
      }
      fmt::print("| rest (embedding, cache writes, adds, copies, calls) | {:.3f} | {:.3f} | | | |\n", 1e3 * (total - sum),
                 (total - sum) / total);
      fmt::print("| **whole token** | **{:.3f}** | 1 | {:.1f} | {:.1f} | {:.2f} |\n", 1e3 * total, 1e-6 * bytes,
                 1e-9 * bytes / total, bytes / total / bw);
    });
  } catch (const std::exception& e) {
    fmt::print(stderr, "tp_bench_decode_parts: {}\n", e.what());
    return 1;
  }
  return 0;
}
