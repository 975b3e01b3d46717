/// tp_bench_layers: ColumnParallelLinear (h -> 4h), RowParallelLinear (4h -> h) and the MLP pair
/// (column h -> 4h, exact GELU, row 4h -> h, no biases, as the PyTorch peer), forward and
/// forward+backward (input gradient and weight gradients: a training step), float32. GFLOP/s
/// counts the whole layer's FLOPs, so at world size n it is the rate summed over ranks. Bare
/// single-thread sgemm rows on every rank give the machine's GEMM rate in the same run.
///
///   tp_bench_layers --backend=local --world=2 --tokens=8,512 --hidden=1024
///   mpirun -np 2 tp_bench_layers --backend=mpi --benchmark_format=json
#include "common/bench_world.hpp"
#include "tp/core/rng.hpp"
#include "tp/layers/column_parallel_linear.hpp"
#include "tp/layers/row_parallel_linear.hpp"

namespace tp::bench {
namespace {

/// Deterministic inputs in [-1, 1), the same on every rank.
inline void fill_input(Tensor<float, Cpu>& t, std::uint64_t key) {
  const Philox rng(key, name_key("bench.input"));
  for (std::int64_t i = 0; i < t.size(); ++i) t.data()[i] = 2.f * rng.uniform(static_cast<std::uint64_t>(i)) - 1.f;
}

class LayerRunner : public Runner {
 public:
  LayerRunner(const std::shared_ptr<Communicator>& comm, std::string layer, bool backward, std::int64_t tokens,
              std::int64_t hidden)
      : ctx_(comm), layer_(std::move(layer)), backward_(backward), tokens_(tokens), hidden_(hidden) {
    const std::int64_t ffn = 4 * hidden;
    if (layer_ == "mlp" || layer_ == "column")
      column_ = std::make_unique<ColumnParallelLinear<float>>(ctx_, hidden, ffn, ColumnParallelOptions{.bias = false, .name = "fc1", .seed = 1});
    if (layer_ == "mlp" || layer_ == "row")
      row_ = std::make_unique<RowParallelLinear<float>>(ctx_, ffn, hidden, RowParallelOptions{.bias = false, .name = "fc2", .seed = 1});
    const Range shard = partition(ffn, ctx_.world(), ctx_.rank());
    x_ = Tensor<float, Cpu>(tokens, layer_ == "row" ? shard.size() : hidden);
    fill_input(x_, 1);
    // The gradient arriving at the block's output: full width for row and mlp, the shard for column.
    dy_ = Tensor<float, Cpu>(tokens, layer_ == "column" ? shard.size() : hidden);
    fill_input(dy_, 2);
    flops_ = 2.0 * static_cast<double>(tokens) * static_cast<double>(hidden) * static_cast<double>(ffn) *
             (layer_ == "mlp" ? 2 : 1) * (backward_ ? 3 : 1);
  }

  double step() override {
    return seconds([&] {
      const Cpu& dev = *ctx_.device;
      if (layer_ == "column") {
        column_->forward(x_.view());
        if (backward_) column_->backward(dy_.view());
      } else if (layer_ == "row") {
        row_->forward(x_.view());
        if (backward_) row_->backward(dy_.view());
      } else {
        const auto& h = column_->forward(x_.view());
        act_.resize(h.rows(), h.cols());
        dev.gelu(h.view(), act_.view(), Gelu::exact);
        row_->forward(act_.view());
        if (backward_) {
          const auto& dact = row_->backward(dy_.view());
          dh_.resize(h.rows(), h.cols());
          dev.gelu_backward(h.view(), dact.view(), dh_.view(), Gelu::exact);
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
  std::unique_ptr<ColumnParallelLinear<float>> column_;
  std::unique_ptr<RowParallelLinear<float>> row_;
  Tensor<float, Cpu> x_, dy_, act_{0, 0}, dh_{0, 0};
  double flops_ = 0;
};

/// C = A B on every rank at once, single-thread BLAS; GFLOP/s summed over ranks.
class SgemmRunner : public Runner {
 public:
  SgemmRunner(const std::shared_ptr<Communicator>& comm, std::int64_t m, std::int64_t n, std::int64_t k)
      : comm_(comm), a_(m, k), b_(k, n), c_(m, n), flops_(2.0 * double(m) * double(n) * double(k)) {
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
  app.add_option("--layers", layers, "mlp, column, row")->delimiter(',');
  app.add_option("--modes", modes, "fwd, fwdbwd")->delimiter(',');
  app.add_option("--sgemm", gemms, "bare sgemm shapes MxNxK run on every rank (none: no sgemm rows)")->delimiter(',');
  try {
    return tp::bench::main(argc, argv, app, options, [&](const Options& o, int world) {
      std::vector<Case> cases;
      for (const auto& shape : gemms) {
        if (shape == "none") continue;
        std::int64_t m = 0, n = 0, k = 0;
        TP_CHECK(std::sscanf(shape.c_str(), "%ldx%ldx%ld", &m, &n, &k) == 3 && m > 0 && n > 0 && k > 0,
                 "--sgemm wants MxNxK, got '{}'", shape);
        cases.push_back({fmt::format("sgemm/{}/world:{}/m:{}/n:{}/k:{}", o.backend, world, m, n, k),
                         [=](const std::shared_ptr<tp::Communicator>& comm) {
                           return std::make_unique<SgemmRunner>(comm, m, n, k);
                         }});
      }
      for (const auto& layer : layers) {
        TP_CHECK(layer == "mlp" || layer == "column" || layer == "row", "unknown layer '{}'", layer);
        for (const auto& mode : modes) {
          TP_CHECK(mode == "fwd" || mode == "fwdbwd", "unknown mode '{}'", mode);
          for (std::int64_t h : hidden)
            for (std::int64_t t : tokens)
              cases.push_back({fmt::format("{}/{}/{}/world:{}/hidden:{}/tokens:{}", layer, mode, o.backend, world, h, t),
                               [=](const std::shared_ptr<tp::Communicator>& comm) {
                                 return std::make_unique<LayerRunner>(comm, layer, mode == "fwdbwd", t, h);
                               }});
        }
      }
      return cases;
    });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tp_bench_layers: %s\n", e.what());
    return 1;
  }
}
