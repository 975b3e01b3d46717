/// A transformer MLP block across ranks: column-parallel h -> 4h, GELU, row-parallel 4h -> h,
/// forward and backward, checked against the unsharded computation and timed.
///
///   mpirun -np 2 mlp --tokens 64 --hidden 512
///   mlp --backend local --world 3

#include <CLI/CLI.hpp>
#include <tp/comm/launch.hpp>
#include <tp/tp.hpp>

#include <chrono>
#include <cmath>


namespace {

/// ||a - b|| / ||b|| over two host matrices of the same shape.
template <class A, class B>
double rel_error(tp::ConstView<A> a, tp::ConstView<B> b) {
  double num = 0, den = 0;
  for (std::int64_t r = 0; r < a.rows; ++r)
    for (std::int64_t c = 0; c < a.cols; ++c) {
      const double d = static_cast<double>(a(r, c)) - static_cast<double>(b(r, c));
      num += d * d;
      den += static_cast<double>(b(r, c)) * static_cast<double>(b(r, c));
    }
  return std::sqrt(num / den);
}

/// A full [rows, cols] parameter as the layers initialize it, in double, for the unsharded check.
tp::Tensor<double, tp::Cpu> full_parameter(const std::string& name, std::int64_t rows, std::int64_t cols,
                                           std::uint64_t seed, double bound) {
  tp::Tensor<double, tp::Cpu> t(rows, cols);
  tp::init_uniform(tp::Cpu(), tp::Parameter<double>{name, t.view(), {}, rows, cols, {0, rows}, {0, cols}}, seed, bound);
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Column-parallel h->4h, GELU, row-parallel 4h->h, checked against the unsharded MLP"};
  std::string backend = "mpi";
  int world = 2, iters = 10;
  std::int64_t tokens = 64, hidden = 512;
  std::uint64_t seed = 1;
  app.add_option("--backend", backend, "local, mpi or gloo")->check(CLI::IsMember({"local", "mpi", "gloo"}));
  app.add_option("--world", world, "ranks in this process (local, or gloo without mpirun)")->check(CLI::PositiveNumber);
  app.add_option("--tokens", tokens, "rows of the input")->check(CLI::PositiveNumber);
  app.add_option("--hidden", hidden, "model width h; the MLP is h -> 4h -> h")->check(CLI::PositiveNumber);
  app.add_option("--iters", iters, "timed iterations")->check(CLI::PositiveNumber);
  app.add_option("--seed", seed, "weight and input seed");
  CLI11_PARSE(app, argc, argv);

  const std::int64_t ffn = 4 * hidden;
  bool ok = true;
  try {
    tp::launch({.backend = backend, .world = world}, argc, argv, [&](std::shared_ptr<tp::Communicator> comm) {
      tp::Context<> ctx(comm, std::make_shared<tp::Cpu>(tp::CpuOptions{.threads = 1}));  // one BLAS thread per rank
      const tp::Cpu& dev = *ctx.device;
      tp::ColumnParallelLinear<float> fc1(ctx, hidden, ffn, {.name = "fc1", .seed = seed});
      tp::RowParallelLinear<float> fc2(ctx, ffn, hidden, {.name = "fc2", .seed = seed});
      // Inputs and output gradient: the same on every rank, from the counter-based generator.
      tp::Tensor<float, tp::Cpu> x(tokens, hidden), dy(tokens, hidden);
      const tp::Philox rng(seed, tp::name_key("input"));
      for (std::int64_t i = 0; i < x.size(); ++i) {
        x.data()[i] = rng.normal(2 * static_cast<std::uint64_t>(i));
        dy.data()[i] = rng.normal(2 * static_cast<std::uint64_t>(i) + 1);
      }
      tp::Tensor<float, tp::Cpu> h(tokens, fc1.output_range().size()), dh(tokens, fc1.output_range().size());

      const tp::Tensor<float, tp::Cpu>* pre = nullptr;  // fc1's output, kept for the GELU backward
      auto forward = [&]() -> const tp::Tensor<float, tp::Cpu>& {
        pre = &fc1.forward(x);
        tp::ops::gelu(dev, pre->view(), h.view(), tp::Gelu::exact);
        return fc2.forward(h);
      };
      auto backward = [&]() -> const tp::Tensor<float, tp::Cpu>& {
        const auto& dact = fc2.backward(dy);
        tp::ops::gelu_backward(dev, pre->view(), dact.view(), dh.view(), tp::Gelu::exact);
        return fc1.backward(dh);
      };

      // The unsharded computation in double, from the same full weights (biases start at zero).
      const auto w1 = full_parameter("fc1.weight", ffn, hidden, seed, 1 / std::sqrt(double(hidden)));
      const auto w2 = full_parameter("fc2.weight", hidden, ffn, seed, 1 / std::sqrt(double(ffn)));
      tp::Tensor<double, tp::Cpu> xd(tokens, hidden), dyd(tokens, hidden), pre_d(tokens, ffn), act(tokens, ffn),
          yd(tokens, hidden), dact(tokens, ffn), dpre(tokens, ffn), dxd(tokens, hidden), dw1(ffn, hidden);
      std::copy_n(x.data(), x.size(), xd.data());
      std::copy_n(dy.data(), dy.size(), dyd.data());
      const tp::Cpu cpu;
      cpu.gemm(tp::Op::n, tp::Op::t, 1.0, xd.view(), w1.view(), 0.0, pre_d.view());
      tp::ops::gelu(cpu, pre_d.view(), act.view(), tp::Gelu::exact);
      cpu.gemm(tp::Op::n, tp::Op::t, 1.0, act.view(), w2.view(), 0.0, yd.view());
      cpu.gemm(tp::Op::n, tp::Op::n, 1.0, dyd.view(), w2.view(), 0.0, dact.view());
      tp::ops::gelu_backward(cpu, pre_d.view(), dact.view(), dpre.view(), tp::Gelu::exact);
      cpu.gemm(tp::Op::n, tp::Op::n, 1.0, dpre.view(), w1.view(), 0.0, dxd.view());
      cpu.gemm(tp::Op::t, tp::Op::n, 1.0, dpre.view(), xd.view(), 0.0, dw1.view());

      const double err_y = rel_error<float, double>(forward().view(), yd.view());
      const double err_dx = rel_error<float, double>(backward().view(), dxd.view());
      const tp::Range mine = fc1.output_range();
      const double err_dw = rel_error<float, double>(fc1.weight_grad(), dw1.view().rows_range(mine.begin, mine.size()));
      // float32 GEMMs over a few thousand terms: a few 1e-7 relative; 1e-5 leaves room but catches any bug
      const bool close = err_y < 1e-5 && err_dx < 1e-5 && err_dw < 1e-5;

      // Each iteration's time is the slowest rank's, as a step of the whole group would see it.
      auto time_ms = [&](auto&& step) {
        step();
        double total = 0;
        for (int i = 0; i < iters; ++i) {
          comm->barrier();
          const auto t0 = std::chrono::steady_clock::now();
          step();
          double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
          comm->all_reduce(std::span<double>(&ms, 1), tp::ReduceOp::max);
          total += ms;
        }
        return total / iters;
      };
      double fwd_ms = 0;
      {
        tp::NoGrad no_grad;  // forwards with no backward after them
        fwd_ms = time_ms(forward);
      }
      const double fwdbwd_ms = time_ms([&] {
        forward();
        backward();
      });
      int all_close = close;
      comm->all_reduce(std::span<int>(&all_close, 1), tp::ReduceOp::min);
      if (!all_close) ok = false;
      if (comm->rank() == 0) {
        const double flops = 2.0 * 2.0 * double(tokens) * double(hidden) * double(ffn);
        fmt::print("mlp {} world={} tokens={} hidden={} ffn={} (fc1 rows split {})\n", comm->backend(), comm->size(),
                   tokens, hidden, ffn, tp::partition_sizes(ffn, comm->size()));
        fmt::print("  vs unsharded: rel_err y={:.2e} dx={:.2e} dW1={:.2e} -> {}\n", err_y, err_dx, err_dw,
                   all_close ? "match" : "MISMATCH");
        fmt::print("  forward {:.3f} ms ({:.1f} GFLOP/s), forward+backward {:.3f} ms ({:.1f} GFLOP/s), {}\n", fwd_ms,
                   flops / fwd_ms / 1e6, fwdbwd_ms, 3 * flops / fwdbwd_ms / 1e6, tp::Cpu::blas_name());
      }
    });
  } catch (const std::exception& e) {
    fmt::print(stderr, "mlp: {}\n", e.what());
    return 1;
  }
  return ok ? 0 : 1;
}
