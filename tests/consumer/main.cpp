// The seed's product through a column-parallel layer on two in-process ranks; exits 1 if it is wrong.
#include <tp/tp.hpp>

#include <cstdio>
#include <filesystem>
#ifdef TP_HAS_IO
#include <tp/io/safetensors.hpp>
#endif

int main() {
  bool ok = true;
  tp::run_local(2, [&](std::shared_ptr<tp::Communicator> comm) {
    tp::Tensor<float, tp::Cpu> x(2, 4), w(2, 4);
    for (int r = 0; r < 2; ++r)
      for (int c = 0; c < 4; ++c) {
        x(r, c) = static_cast<float>(4 * r + c);
        w(r, c) = static_cast<float>(10 + c + 4 * r);
      }
    tp::ColumnParallelLinear<float> layer(tp::Context<>(comm), 4, 2, {.bias = false, .gather_output = true});
    layer.load_full(w);
    const auto& y = layer.forward(x);
    if (y(0, 0) != 74 || y(0, 1) != 98 || y(1, 0) != 258 || y(1, 1) != 346) ok = false;
#ifdef TP_HAS_IO
    // The weight through a checkpoint: saved by both ranks, loaded back by both.
    const auto path = std::filesystem::temp_directory_path() / "tp_consumer.safetensors";
    tp::save_safetensors<float>(*comm, tp::Cpu(), layer.parameters(), path);
    tp::ColumnParallelLinear<float> loaded(tp::Context<>(comm), 4, 2, {.bias = false, .gather_output = true});
    tp::load_safetensors<float>(tp::Cpu(), loaded.parameters(), path);
    const auto& z = loaded.forward(x);
    if (z(0, 0) != 74 || z(1, 1) != 346) ok = false;
#endif
  });
  std::puts(ok ? "tp consumer: ok" : "tp consumer: wrong product");
  return ok ? 0 : 1;
}
