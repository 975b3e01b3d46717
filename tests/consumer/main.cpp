// The seed's product through a column-parallel layer on two in-process ranks; exits 1 if it is wrong.
#include <tp/tp.hpp>

#include <cstdio>
#include <filesystem>
#ifdef TP_HAS_IO
#include <tp/io/safetensors.hpp>
#endif
#ifdef TP_HAS_TEXT
#include <tp/text/tokenizer.hpp>
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
#ifdef TP_HAS_TEXT
  // A two-merge byte-level BPE: "abab" is one token, then the text comes back whole.
  const auto tok = tp::text::Tokenizer::from_json(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2,
      "abab": 3}, "merges": ["a b", "ab ab"]}, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false},
      "decoder": {"type": "ByteLevel"}})");
  if (tok.encode("abab") != std::vector<std::int64_t>{3} || tok.decode(tok.encode("abab")) != "abab") ok = false;
#endif
  std::puts(ok ? "tp consumer: ok" : "tp consumer: wrong product");
  return ok ? 0 : 1;
}
