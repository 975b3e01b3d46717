/// save_safetensors takes any layer's own parameters(): a fused QKV weight's q, k and v records
/// (grouped-query attention with kv heads replicated over ranks included) and SwiGLU's stacked
/// gate/up records are written as blocks of one full tensor, each block once. The file does not
/// depend on the world size it was saved at and loads at every other. Overlapping or missing
/// blocks are refused before anything is written.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "common/harness.hpp"
#include "common/reference.hpp"
#include "common/test_files.hpp"
#include "tp/io/safetensors.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;

/// Attention (hidden 12, 12 query heads of head_dim 2 over `kv_heads` kv heads, replicated when
/// the world exceeds them) followed by a SwiGLU MLP whose ffn 5 splits unevenly.
struct Block {
  ParallelAttention<float> attention;
  ParallelMLP<float> mlp;
  Block(std::shared_ptr<Communicator> comm, std::int64_t kv_heads)
      : attention(Context<>(comm), 12, 12, kv_heads, {.head_dim = 2, .name = "attn"}),
        mlp(Context<>(comm), 12, 5, {.activation = Activation::swiglu, .name = "mlp"}) {}
  std::vector<Parameter<float>> parameters() {
    auto ps = attention.parameters();
    for (auto& p : mlp.parameters()) ps.push_back(p);
    return ps;
  }
  /// Every element set from its index in the full tensor (biases included), under `seed`.
  void fill(std::uint64_t seed) {
    for (const auto& p : parameters()) init_normal(Cpu(), p, seed, 1.0);
  }
};

bool splits(std::int64_t kv_heads, int world) { return kv_heads % world == 0 || world % kv_heads == 0; }

ref::Matrix read_full(const SafetensorsFile& file, const std::string& name) {
  const auto& t = file.tensor(name);
  Tensor<float, Cpu> m(t.rows(), t.cols());
  file.read_block(name, 0, 0, m.view());
  return ref::from_view<float>(m.view());
}

/// The full tensor init_normal gives `name` at every world size.
ref::Matrix full_init(const std::string& name, std::int64_t rows, std::int64_t cols, std::uint64_t seed) {
  Tensor<float, Cpu> whole(rows, cols), grad(rows, cols);
  init_normal(Cpu(), Parameter<float>{name, whole.view(), grad.view(), rows, cols, {0, rows}, {0, cols}}, seed, 1.0);
  return ref::from_view<float>(whole.view());
}

TEST(SaveLayers, AttentionAndSwiGluSavedAtEveryWorldSizeLoadAtEveryOther) {
  TP_LOCAL_ONLY();
  const fs::path dir = test::test_dir();
  // 12 kv heads split at every world size; 3 at 1 and 3; 2 at 1, 2 and 4 (replicated at 4); 1 is
  // replicated at 2 to 4.
  for (const std::int64_t kv_heads : {12, 3, 2, 1})
    for (int save_world = 1; save_world <= 4; ++save_world) {
      if (!splits(kv_heads, save_world)) continue;
      SCOPED_TRACE(fmt::format("kv_heads {} saved at world {}", kv_heads, save_world));
      const fs::path path = dir / fmt::format("kv{}_w{}.safetensors", kv_heads, save_world);
      const std::uint64_t seed = 40 + save_world;
      run_local(save_world, [&](std::shared_ptr<Communicator> comm) {
        Block block(comm, kv_heads);
        block.fill(seed);
        save_safetensors<float>(*comm, Cpu(), block.parameters(), path);
      });
      // The file holds the full tensors, whatever the world size it was saved at.
      const SafetensorsFile file(path);
      EXPECT_EQ(file.header().tensors.size(), 8u);  // weight and bias of attn.qkv, attn.dense, mlp.fc1, mlp.fc2
      for (const auto& [name, t] : file.header().tensors)
        EXPECT_EQ(read_full(file, name).data, full_init(name, t.rows(), t.cols(), seed).data) << name;
      for (int load_world = 1; load_world <= 4; ++load_world) {
        if (!splits(kv_heads, load_world)) continue;
        run_local(load_world, [&](std::shared_ptr<Communicator> comm) {
          SCOPED_TRACE(fmt::format("loaded at world {} rank {}", load_world, comm->rank()));
          Block block(comm, kv_heads);
          block.fill(seed + 100);  // other values, all replaced by the load
          load_safetensors<float>(Cpu(), block.parameters(), path);
          for (const auto& p : block.parameters()) {
            const auto full = full_init(p.name, p.full_rows, p.full_cols, seed);
            EXPECT_EQ(ref::from_view<float>(ConstView<float>(p.value)).data,
                      full.block(p.rows.begin, p.cols.begin, p.rows.size(), p.cols.size()).data)
                << p.name;
          }
        });
      }
    }
}

TEST(SaveLayers, RefusesOverlappingAndMissingBlocks) {
  TP_LOCAL_ONLY();
  const fs::path dir = test::test_dir();
  // The same record twice: genuinely listed twice.
  run_local(2, [&](std::shared_ptr<Communicator> comm) {
    ColumnParallelLinear<float> fc(Context<>(comm), 4, 6, {.name = "fc"});
    auto ps = fc.parameters();
    ps.push_back(ps.front());
    EXPECT_THAT([&] { save_safetensors<float>(*comm, Cpu(), ps, dir / "twice.safetensors"); },
                ::testing::ThrowsMessage<InvalidArgument>(
                    AllOf(HasSubstr("twice.safetensors"), HasSubstr("'fc.weight' is listed twice"))));
  });
  // A replicated kv head whose every replica claims copy 0.
  run_local(4, [&](std::shared_ptr<Communicator> comm) {
    ParallelAttention<float> attention(Context<>(comm), 12, 4, 2, {.head_dim = 3, .name = "attn"});
    auto ps = attention.parameters();
    for (auto& p : ps) p.copy = 0;
    EXPECT_THAT([&] { save_safetensors<float>(*comm, Cpu(), ps, dir / "copies.safetensors"); },
                ::testing::ThrowsMessage<InvalidArgument>(
                    AllOf(HasSubstr("'attn.qkv.weight' is listed twice"), HasSubstr("rows [12, 15)"))));
  });
  // The v block left out: part of the tensor would stay unwritten.
  run_local(2, [&](std::shared_ptr<Communicator> comm) {
    ParallelAttention<float> attention(Context<>(comm), 12, 4, 2, {.bias = false, .head_dim = 3, .name = "attn"});
    auto ps = attention.parameters();
    ps.erase(ps.begin() + 2);
    EXPECT_THAT([&] { save_safetensors<float>(*comm, Cpu(), ps, dir / "gap.safetensors"); },
                ::testing::ThrowsMessage<InvalidArgument>(
                    AllOf(HasSubstr("'attn.qkv.weight'"), HasSubstr("cover 216 of its 24x12 = 288 elements"))));
  });
  for (const char* name : {"twice", "copies", "gap"}) EXPECT_FALSE(fs::exists(dir / fmt::format("{}.safetensors", name)));
}

}  // namespace
}  // namespace tp
