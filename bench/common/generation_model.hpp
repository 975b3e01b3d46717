#pragma once
/// The Llama-style model that tp_bench_decode and tp_bench_prefill generate with (100 M parameters:
/// hidden 768, 12 layers, 12 heads over 4 kv heads, SwiGLU 2048, vocabulary 32000, random weights)
/// and the command-line options that reshape it (e.g. SmolLM2-135M's shape).

#include <CLI/CLI.hpp>

#include "train_tiny_lm/tiny_lm.hpp"

namespace tp::bench {

inline tiny_lm::ModelConfig generation_model() {
  return {.arch = tiny_lm::Arch::llama, .vocab = 32000, .hidden = 768, .heads = 12, .kv_heads = 4,
          .layers = 12, .ffn = 2048, .seq_len = 0, .batch = 1, .seed = 1};
}

/// --hidden, --layers, --heads, --kv-heads, --ffn and --vocab into `model`.
inline void add_model_options(CLI::App& app, tiny_lm::ModelConfig& model) {
  app.add_option("--hidden", model.hidden)->capture_default_str();
  app.add_option("--layers", model.layers)->capture_default_str();
  app.add_option("--heads", model.heads)->capture_default_str();
  app.add_option("--kv-heads", model.kv_heads)->capture_default_str();
  app.add_option("--ffn", model.ffn)->capture_default_str();
  app.add_option("--vocab", model.vocab)->capture_default_str();
}

}  // namespace tp::bench
