/// Memory per rank, counted by tp::Cpu's allocation counter (memory_allocated,
/// max_memory_allocated): the counter itself; full recomputation's activation peak against no
/// recomputation's, by the arithmetic (one layer's buffers alive instead of all of them, plus the
/// kept inputs); `selective` keeping exactly what `none` keeps (tp's attention stores nothing
/// quadratic to recompute). ZeRO-1's 1/dp optimizer state: trainer_test.cpp
/// (ZeroOneShardsTheOptimizerState).

#include <gtest/gtest.h>

#include "common/harness.hpp"
#include "tp/train/trainer.hpp"
#include "train/tiny_training.hpp"

namespace tp {
namespace {

using test::on_ranks;

TEST(CpuMemory, CountsAllocationsAndThePeak) {
  const auto cpu = std::make_shared<Cpu>();
  EXPECT_EQ(cpu->memory_allocated(), 0);
  {
    Tensor<float, Cpu> a(cpu, 10, 3);
    Tensor<double, Cpu> b(cpu, 2, 2);
    EXPECT_EQ(cpu->memory_allocated(), 10 * 3 * 4 + 2 * 2 * 8);
    a.resize(2, 3);  // shrinking keeps the allocation
    EXPECT_EQ(cpu->memory_allocated(), 10 * 3 * 4 + 2 * 2 * 8);
    b.resize(4, 4);  // growing reallocates
    EXPECT_EQ(cpu->memory_allocated(), 10 * 3 * 4 + 4 * 4 * 8);
    EXPECT_EQ(cpu->max_memory_allocated(), 10 * 3 * 4 + 4 * 4 * 8);
  }
  EXPECT_EQ(cpu->memory_allocated(), 0);
  EXPECT_EQ(cpu->max_memory_allocated(), 10 * 3 * 4 + 4 * 4 * 8);
  cpu->reset_peak_memory_stats();
  EXPECT_EQ(cpu->max_memory_allocated(), 0);
  // Another instance counts its own.
  Tensor<float, Cpu> c(std::make_shared<Cpu>(), 5, 5);
  EXPECT_EQ(cpu->memory_allocated(), 0);
  EXPECT_EQ(c.device().memory_allocated(), 100);
}

/// The trainer tests' tiny Llama (GPT-2 when !llama), with 6 layers and room for 32 positions, so
/// that its activations outweigh its weights; uneven splits at TP 3.
models::TransformerConfig config(bool llama, bool uneven) {
  models::TransformerConfig c = tiny_training::tiny_config(llama, uneven);
  c.layers = 6;
  c.max_positions = 64;
  return c;
}

constexpr std::int64_t kRows = 4, kSeq = 32;

struct Memory {
  std::int64_t peak = 0;   ///< bytes above what model and trainer hold when built, at the most
  std::int64_t layer = 0;  ///< bytes a layer holds after the steps (what release_activations frees)
};

/// Two training steps at TP `comm->size()` on a Cpu of their own, counted.
Memory measure(const std::shared_ptr<Communicator>& comm, const models::TransformerConfig& c, models::Recompute r) {
  const auto cpu = std::make_shared<Cpu>();
  const Mesh<> mesh(comm, {.tp = comm->size()}, cpu);
  models::Transformer<float> model(mesh.tp_context(), c, 5);
  Trainer<float> trainer(mesh, model, {.recompute = r});
  std::vector<std::int64_t> ids(kRows * kSeq), targets(kRows * kSeq);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    ids[i] = static_cast<std::int64_t>((i * 7 + 3) % static_cast<std::size_t>(c.vocab));
    targets[i] = (ids[i] * 5 + 1) % c.vocab;
  }
  const std::int64_t built = cpu->memory_allocated();
  cpu->reset_peak_memory_stats();
  for (int s = 0; s < 2; ++s)
    trainer.step(ConstView<std::int64_t>(ids.data(), kRows, kSeq), ConstView<std::int64_t>(targets.data(), kRows, kSeq),
                 1e-3);
  Memory m{.peak = cpu->max_memory_allocated() - built};
  const std::int64_t before = cpu->memory_allocated();
  model.layer(0).release_activations();
  m.layer = before - cpu->memory_allocated();
  return m;
}

/// none: every layer's buffers (A bytes each) are alive at the end of backward. full: one layer's,
/// plus each layer's kept input and the rerun's input ((L + 1) x tokens x hidden floats). So
/// none's peak - full's = (L - 1) A - (L + 1) tokens hidden 4, to the byte (everything else, the
/// head's and the loss's buffers, is the same in both and alive at both peaks).
TEST(Recompute, FullKeepsOneLayersActivations) {
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    for (const bool llama : {true, false}) {
      const auto c = config(llama, comm->size() == 3);
      const Memory none = measure(comm, c, models::Recompute::none);
      const Memory selective = measure(comm, c, models::Recompute::selective);
      const Memory full = measure(comm, c, models::Recompute::full);
      const std::int64_t tokens = kRows * kSeq, L = c.layers, A = none.layer;
      const std::int64_t inputs = (L + 1) * tokens * c.hidden * 4;
      // A layer's buffers hold at least its input, q k v, the context and the MLP's hidden rows.
      EXPECT_GT(A, tokens * (c.hidden + c.ffn / comm->size()) * 4) << c.model_type;
      EXPECT_EQ(full.layer, 0) << c.model_type << ": full recomputation left a layer's buffers allocated";
      EXPECT_EQ(selective.peak, none.peak) << c.model_type;
      EXPECT_EQ(selective.layer, none.layer) << c.model_type;
      const std::int64_t want = (L - 1) * A - inputs, got = none.peak - full.peak;
      EXPECT_EQ(got, want)
          << c.model_type << " at TP " << comm->size() << ": peaks none " << none.peak << ", full " << full.peak
          << " bytes; one layer " << A << ", kept inputs " << inputs;
      EXPECT_LT(full.peak, none.peak / 2) << c.model_type;
    }
  });
}

}  // namespace
}  // namespace tp
