/// tp_bench_layers: ColumnParallelLinear (h -> 4h), RowParallelLinear (4h -> h) and the MLP pair
/// (column h -> 4h, exact GELU, row 4h -> h, no biases, as the PyTorch peer), forward and
/// forward+backward (input gradient and weight gradients: a training step), float32, and with
/// --dtypes=fp32,bf16 bf16 beside it (tp::bf16 weights and activations). GFLOP/s
/// counts the whole layer's FLOPs, so at world size n it is the rate summed over ranks. Bare
/// single-thread sgemm rows on every rank, one per GEMM library (OpenBLAS, oneDNN when built with
/// it), give the machine's GEMM rate in the same run, and a
/// STREAM-style triad on every rank at once (a = b + s c over arrays larger than the last-level
/// cache) its memory bandwidth, the limit of the layers at small token counts, where each step
/// streams the weights and weight gradients through memory and does little arithmetic per byte.
///
/// Opt-in (--layers=attention,embedding_ce): causal ParallelAttention over one sequence of `tokens`
/// (heads = hidden / 64, a quarter as many kv heads), and the vocabulary-parallel pair: embedding
/// lookup, an LM head (ColumnParallelLinear to --vocab, logits left split) and the cross-entropy.
///
///   tp_bench_layers --backend=local --world=2 --tokens=8,512 --hidden=1024
///   mpirun -np 2 tp_bench_layers --backend=mpi --benchmark_format=json
///   tp_bench_layers --world=1 --layers=mlp --modes=fwdbwd --tokens=512 --hidden=1024 --dtypes=fp32,bf16,bf16_fp32
#include <unistd.h>

#include <algorithm>
#include <optional>

#include "common/bench_world.hpp"
#include "tp/core/rng.hpp"
#include "tp/layers/column_parallel_linear.hpp"
#include "tp/layers/parallel_attention.hpp"
#include "tp/layers/row_parallel_linear.hpp"
#include "tp/layers/vocab_parallel_cross_entropy.hpp"
#include "tp/layers/vocab_parallel_embedding.hpp"

namespace tp::bench {
namespace {

/// Deterministic inputs in [-1, 1), the same on every rank.
template <class T>
inline void fill_input(Tensor<T, Cpu>& t, std::uint64_t key) {
  const Philox rng(key, name_key("bench.input"));
  for (std::int64_t i = 0; i < t.size(); ++i)
    t.data()[i] = static_cast<T>(2.f * rng.uniform(static_cast<std::uint64_t>(i)) - 1.f);
}

/// The element types of --dtypes: fp32, bf16 (GEMMs as tp::Cpu chooses: oneDNN's bf16 matmul on a
/// CPU with AVX512_BF16 or AMX), bf16_fp32 (bf16 with the GEMMs forced onto the fallback).
template <class T>
class LayerRunner : public Runner {
 public:
  LayerRunner(const std::shared_ptr<Communicator>& comm, std::string layer, bool backward, std::int64_t tokens,
              std::int64_t hidden, std::int64_t vocab = 32000, bool streaming = true,
              CpuHalfGemm half_gemm = CpuHalfGemm::automatic, std::optional<tp::detail::simd::Isa> isa = std::nullopt)
      : ctx_(comm, std::make_shared<Cpu>(CpuOptions{.half_gemm = half_gemm, .streaming_linear = streaming})),
        layer_(std::move(layer)), backward_(backward), tokens_(tokens), hidden_(hidden), isa_(isa) {
    const std::int64_t ffn = 4 * hidden;
    if (layer_ == "mlp" || layer_ == "column")
      column_ = std::make_unique<ColumnParallelLinear<T>>(ctx_, hidden, ffn, ColumnParallelOptions{.bias = false, .name = "fc1", .seed = 1});
    if (layer_ == "mlp" || layer_ == "row")
      row_ = std::make_unique<RowParallelLinear<T>>(ctx_, ffn, hidden, RowParallelOptions{.bias = false, .name = "fc2", .seed = 1});
    if (layer_ == "attention") {
      const std::int64_t heads = hidden / 64, kv_heads = std::max<std::int64_t>(heads / 4, 1);
      attention_ = std::make_unique<ParallelAttention<T>>(
          ctx_, hidden, heads, kv_heads, ParallelAttentionOptions{.causal = true, .bias = false, .seed = 1});
      // projections (q, k, v, output) plus scores and context over the whole sequence
      flops_ = (2.0 * double(tokens) * double(hidden) * double(2 * hidden + 2 * kv_heads * 64) +
                4.0 * double(tokens) * double(tokens) * double(hidden)) *
               (backward_ ? 3 : 1);
    }
    if (layer_ == "embedding_ce") {
      embedding_ = std::make_unique<VocabParallelEmbedding<T>>(ctx_, vocab, hidden);
      head_ = std::make_unique<ColumnParallelLinear<T>>(ctx_, hidden, vocab,
                                                            ColumnParallelOptions{.bias = false, .name = "lm_head"});
      loss_ = std::make_unique<VocabParallelCrossEntropy<T>>(ctx_, vocab);
      ids_ = Tensor<std::int64_t, Cpu>(tokens, 1);
      targets_ = Tensor<std::int64_t, Cpu>(tokens, 1);
      const Philox rng(5, name_key("bench.ids"));
      for (std::int64_t i = 0; i < tokens; ++i) {
        ids_.data()[i] = static_cast<std::int64_t>(rng(2 * static_cast<std::uint64_t>(i))[0] % vocab);
        targets_.data()[i] = static_cast<std::int64_t>(rng(2 * static_cast<std::uint64_t>(i) + 1)[0] % vocab);
      }
      grad_loss_ = Tensor<T, Cpu>(tokens, 1);
      ctx_.device->fill(grad_loss_.view(), static_cast<T>(1.f / static_cast<float>(tokens)));
      flops_ = 2.0 * double(tokens) * double(hidden) * double(vocab) * (backward_ ? 3 : 1);
    }
    const Range shard = partition(ffn, ctx_.world(), ctx_.rank());
    x_ = Tensor<T, Cpu>(tokens, layer_ == "row" ? shard.size() : hidden);
    fill_input(x_, 1);
    // The gradient arriving at the block's output: full width for row and mlp, the shard for column.
    dy_ = Tensor<T, Cpu>(tokens, layer_ == "column" ? shard.size() : hidden);
    fill_input(dy_, 2);
    if (column_ || row_)
      flops_ = 2.0 * static_cast<double>(tokens) * static_cast<double>(hidden) * static_cast<double>(ffn) *
               (layer_ == "mlp" ? 2 : 1) * (backward_ ? 3 : 1);
  }

  double step() override {
    // tp's vectorized loops on the instruction set asked for (--isa), on the thread that runs them
    std::optional<tp::detail::simd::ScopedIsa> forced;
    if (isa_) forced.emplace(*isa_);
    return seconds([&] {
      const Cpu& dev = *ctx_.device;
      if (layer_ == "attention") {
        attention_->forward(x_.view(), tokens_);
        if (backward_) attention_->backward(dy_.view());
      } else if (layer_ == "embedding_ce") {
        const auto& h = embedding_->forward(ids_.view());
        const auto& logits = head_->forward(h.view());
        loss_->forward(logits.view(), targets_.view());
        if (backward_) {
          const auto& dlogits = loss_->backward(grad_loss_.view());
          embedding_->backward(head_->backward(dlogits.view()).view());
        }
      } else if (layer_ == "column") {
        column_->forward(x_.view());
        if (backward_) column_->backward(dy_.view());
      } else if (layer_ == "row") {
        row_->forward(x_.view());
        if (backward_) row_->backward(dy_.view());
      } else {
        const auto& h = column_->forward(x_.view());
        act_.resize(h.rows(), h.cols());
        tp::ops::gelu(dev, h.view(), act_.view(), Gelu::exact);
        row_->forward(act_.view());
        if (backward_) {
          const auto& dact = row_->backward(dy_.view());
          dh_.resize(h.rows(), h.cols());
          tp::ops::gelu_backward(dev, h.view(), dact.view(), dh_.view(), Gelu::exact);
          column_->backward(dh_.view());
        }
      }
    });
  }

  Counters finish(double t) override {
    return {{"GFLOPs", flops_ / t / 1e9}, {"tokens", double(tokens_)}, {"hidden", double(hidden_)},
            {"world", double(ctx_.world())}};
  }

 private:
  Context<Cpu> ctx_;
  std::string layer_;
  bool backward_;
  std::int64_t tokens_, hidden_;
  std::optional<tp::detail::simd::Isa> isa_;
  std::unique_ptr<ColumnParallelLinear<T>> column_;
  std::unique_ptr<RowParallelLinear<T>> row_;
  std::unique_ptr<ParallelAttention<T>> attention_;
  std::unique_ptr<VocabParallelEmbedding<T>> embedding_;
  std::unique_ptr<ColumnParallelLinear<T>> head_;
  std::unique_ptr<VocabParallelCrossEntropy<T>> loss_;
  Tensor<std::int64_t, Cpu> ids_{0, 0}, targets_{0, 0};
  Tensor<T, Cpu> x_, dy_, act_{0, 0}, dh_{0, 0}, grad_loss_{0, 0};
  double flops_ = 0;
};

/// C = A B on every rank at once, single-thread, through tp::Cpu on the given library; GFLOP/s
/// summed over ranks.
class SgemmRunner : public Runner {
 public:
  SgemmRunner(const std::shared_ptr<Communicator>& comm, CpuGemm library, std::int64_t m, std::int64_t n,
              std::int64_t k)
      : comm_(comm), cpu_(CpuOptions{.gemm = library}), a_(m, k), b_(k, n), c_(m, n),
        flops_(2.0 * double(m) * double(n) * double(k)) {
    fill_input(a_, 3);
    fill_input(b_, 4);
  }
  double step() override {
    return seconds([&] { cpu_.gemm(Op::n, Op::n, 1.f, a_.view(), b_.view(), 0.f, c_.view()); });
  }
  Counters finish(double t) override {
    return {{"GFLOPs", flops_ * comm_->size() / t / 1e9}, {"GFLOPs_per_rank", flops_ / t / 1e9},
            {"world", double(comm_->size())}};
  }

 private:
  std::shared_ptr<Communicator> comm_;
  Cpu cpu_;
  Tensor<float, Cpu> a_, b_, c_;
  double flops_;
};

/// a = b + s c on every rank at once over float arrays of `bytes_per_array` each (STREAM's triad):
/// three arrays' bytes per step, reported summed over ranks (GBps) and per rank. Write-allocate
/// traffic is not counted, as STREAM does not count it.
class TriadRunner : public Runner {
 public:
  TriadRunner(const std::shared_ptr<Communicator>& comm, std::int64_t bytes_per_array)
      : comm_(comm), n_(bytes_per_array / static_cast<std::int64_t>(sizeof(float))), a_(1, n_), b_(1, n_), c_(1, n_) {
    fill_input(b_, 5);
    fill_input(c_, 6);
    cpu_.fill(a_.view(), 0.f);  // touch every page before timing
  }
  double step() override {
    float* __restrict a = a_.data();
    const float* __restrict b = b_.data();
    const float* __restrict c = c_.data();
    const float s = scale_;
    return seconds([&] {
      for (std::int64_t i = 0; i < n_; ++i) a[i] = b[i] + s * c[i];
      benchmark::DoNotOptimize(a);
      benchmark::ClobberMemory();
    });
  }
  Counters finish(double t) override {
    const double bytes = 3.0 * static_cast<double>(n_) * sizeof(float);
    return {{"GBps", bytes * comm_->size() / t / 1e9}, {"GBps_per_rank", bytes / t / 1e9},
            {"world", double(comm_->size())}};
  }

 private:
  std::shared_ptr<Communicator> comm_;
  Cpu cpu_;
  std::int64_t n_;
  Tensor<float, Cpu> a_, b_, c_;
  float scale_ = 0.5f;
};

/// MiB per triad array for --triad=auto: the last-level cache's size (so the three arrays are three
/// times it and every step comes from memory), at least 64 MiB where the cache size is unknown.
inline std::int64_t auto_triad_mib() {
  long llc = 0;
#ifdef _SC_LEVEL3_CACHE_SIZE
  llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
  if (llc <= 0) llc = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
  return std::max<std::int64_t>(64, (static_cast<std::int64_t>(std::max(llc, 0L)) + (1 << 20) - 1) >> 20);
}

}  // namespace
}  // namespace tp::bench

int main(int argc, char** argv) {
  using namespace tp::bench;
  CLI::App app{"tp_bench_layers: tensor-parallel layers on the CPU"};
  Options options;
  std::vector<std::int64_t> tokens{1, 8, 64, 512, 2048}, hidden{1024, 2048, 4096};
  std::vector<std::string> layers{"mlp", "column", "row"}, modes{"fwd", "fwdbwd"};
  std::vector<std::string> gemms{"512x4096x1024", "2048x2048x2048"};
  app.add_option("--tokens", tokens, "token counts (rows of the input)")->delimiter(',');
  app.add_option("--hidden", hidden, "hidden sizes (the MLP's inner size is 4x)")->delimiter(',');
  std::int64_t vocab = 32000;
  app.add_option("--layers", layers, "mlp, column, row, attention, embedding_ce")->delimiter(',');
  app.add_option("--vocab", vocab, "vocabulary of embedding_ce")->check(CLI::PositiveNumber);
  app.add_option("--modes", modes, "fwd, fwdbwd")->delimiter(',');
  std::vector<std::string> dtypes{"fp32"};
  app.add_option("--dtypes", dtypes,
                 "fp32, bf16 (GEMMs as tp::Cpu chooses), bf16_fp32 (bf16, GEMMs forced onto the fallback widened to "
                 "fp32); rows of several dtypes side by side, named .../dtype:D")
      ->delimiter(',');
  bool compare_gemm = false;
  app.add_flag("--compare-gemm", compare_gemm,
               "also run every layer case with the linear layers on GEMMs only (CpuOptions::streaming_linear = "
               "false), rows named .../streaming:0, for before/after ratios at few tokens in one run");
  std::vector<std::string> isas;
  app.add_option("--isa", isas,
                 "run the layer cases with tp's vectorized loops on each of these instruction sets (avx512, avx2, "
                 "baseline; all: every one this CPU runs), rows named .../isa:<name>; the GEMMs are the BLAS's "
                 "whatever the name (TP_CPU_ISA=avx2 with OPENBLAS_CORETYPE=Haswell and ONEDNN_MAX_CPU_ISA=AVX2 "
                 "stands in for a whole AVX2 CPU instead)")
      ->delimiter(',');
  std::vector<std::string> triads{"auto"};
  app.add_option("--triad", triads,
                 "memory-bandwidth triads on every rank: MiB per array (auto: the last-level cache's size; none: no "
                 "triad rows)")
      ->delimiter(',');
  app.add_option("--sgemm", gemms, "bare sgemm shapes MxNxK run on every rank (none: no sgemm rows)")->delimiter(',');
  try {
    return tp::bench::main(argc, argv, app, options, [&](const Options& o, int world) {
      std::vector<Case> cases;
      // no --isa: one row per case, on the process's instruction set, named as before
      std::vector<std::optional<tp::detail::simd::Isa>> chosen;
      for (const auto& name : isas)
        if (name == "all")
          for (const auto isa : tp::detail::simd::runnable_isas()) chosen.emplace_back(isa);
        else
          chosen.emplace_back(tp::detail::simd::parse_isa(name, "--isa"));
      if (chosen.empty()) chosen.emplace_back(std::nullopt);
      for (const auto& shape : gemms) {
        if (shape == "none") continue;
        std::int64_t m = 0, n = 0, k = 0;
        TP_CHECK(std::sscanf(shape.c_str(), "%ldx%ldx%ld", &m, &n, &k) == 3 && m > 0 && n > 0 && k > 0,
                 "--sgemm wants MxNxK, got '{}'", shape);
        // Every library tp::Cpu can use, so that the limit is the machine's best rate, not tp's choice.
        for (const auto library : {tp::CpuGemm::openblas, tp::CpuGemm::onednn}) {
          if (library == tp::CpuGemm::onednn && !tp::detail::has_dnnl) continue;
          cases.push_back({fmt::format("sgemm/{}/{}/world:{}/m:{}/n:{}/k:{}", o.backend,
                                       library == tp::CpuGemm::onednn ? "onednn" : "openblas", world, m, n, k),
                           [=](const std::shared_ptr<tp::Communicator>& comm) {
                             return std::make_unique<SgemmRunner>(comm, library, m, n, k);
                           }});
        }
      }
      for (const auto& triad : triads) {
        if (triad == "none") continue;
        std::int64_t mib = 0;
        if (triad == "auto")
          mib = auto_triad_mib();
        else
          TP_CHECK(std::sscanf(triad.c_str(), "%ld", &mib) == 1 && mib > 0, "--triad wants MiB per array, got '{}'",
                   triad);
        cases.push_back({fmt::format("triad/{}/world:{}/mib:{}", o.backend, world, mib),
                         [=](const std::shared_ptr<tp::Communicator>& comm) {
                           return std::make_unique<TriadRunner>(comm, mib << 20);
                         }});
      }
      for (const auto& layer : layers) {
        TP_CHECK(layer == "mlp" || layer == "column" || layer == "row" || layer == "attention" ||
                     layer == "embedding_ce",
                 "unknown layer '{}'", layer);
        for (const auto& mode : modes) {
          TP_CHECK(mode == "fwd" || mode == "fwdbwd", "unknown mode '{}'", mode);
          for (std::int64_t h : hidden)
            for (std::int64_t t : tokens)
              for (const auto& isa : chosen)
                for (const bool streaming : {true, false})
                  for (const auto& dtype : dtypes) {
                    TP_CHECK(dtype == "fp32" || dtype == "bf16" || dtype == "bf16_fp32", "unknown dtype '{}'", dtype);
                    if (!streaming && !compare_gemm) continue;
                    cases.push_back(
                        {fmt::format("{}/{}/{}/world:{}/hidden:{}/tokens:{}{}{}{}", layer, mode, o.backend, world, h,
                                     t, streaming ? "" : "/streaming:0", dtypes.size() > 1 ? "/dtype:" + dtype : "",
                                     isa ? fmt::format("/isa:{}", tp::detail::simd::isa_name(*isa)) : ""),
                         [=](const std::shared_ptr<tp::Communicator>& comm) -> std::unique_ptr<Runner> {
                           if (dtype == "fp32")
                             return std::make_unique<LayerRunner<float>>(comm, layer, mode == "fwdbwd", t, h, vocab,
                                                                         streaming, tp::CpuHalfGemm::automatic, isa);
                           return std::make_unique<LayerRunner<tp::bf16>>(
                               comm, layer, mode == "fwdbwd", t, h, vocab, streaming,
                               dtype == "bf16" ? tp::CpuHalfGemm::automatic : tp::CpuHalfGemm::fp32, isa);
                         }});
                }
        }
      }
      return cases;
    });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tp_bench_layers: %s\n", e.what());
    return 1;
  }
}
