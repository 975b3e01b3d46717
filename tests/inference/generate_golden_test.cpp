/// tp::generate (greedy, through the KV cache) on the golden checkpoints of tests/golden/ reproduces
/// the 32 tokens transformers generated, at every TP degree the heads allow, the same on every rank.

#include <gtest/gtest.h>

#include <filesystem>

#include "tp/comm/local_communicator.hpp"
#include "tp/inference/generate.hpp"
#include "tp/models/hugging_face.hpp"

namespace tp {
namespace {

namespace fs = std::filesystem;

std::vector<std::int64_t> read_ids(const SafetensorsFile& file, const std::string& name) {
  const auto& t = file.tensor(name);
  std::vector<std::int64_t> ids(static_cast<std::size_t>(t.rows() * t.cols()));
  file.read_block(name, 0, 0, MatrixView<std::int64_t>(ids.data(), t.rows(), t.cols()));
  return ids;
}

TEST(GenerateGolden, GreedyTokensMatchTransformers) {
  for (const char* name : {"gpt2", "llama", "qwen2"}) {
    const fs::path dir = fs::path(TP_GOLDEN_DIR) / name;
    const auto config = models::read_hugging_face_config(dir / "config.json");
    const SafetensorsFile golden(dir / "golden.safetensors");
    const auto prompt = read_ids(golden, "prompt");
    const auto want = read_ids(golden, "generated");
    for (int world = 1; world <= 4; ++world) {
      if (config.heads % world != 0 || (config.kv_heads % world != 0 && world % config.kv_heads != 0)) continue;
      SCOPED_TRACE(fmt::format("{} at world {}", name, world));
      std::vector<std::vector<std::int64_t>> got(static_cast<std::size_t>(world));
      run_local(world, [&](std::shared_ptr<Communicator> comm) {
        const Context<Cpu> ctx(comm);
        auto model = models::open_hugging_face<double>(ctx, dir);
        got[comm->rank()] = generate(*model, prompt, static_cast<std::int64_t>(want.size())).tokens;
      });
      for (int r = 0; r < world; ++r) EXPECT_EQ(got[r], want) << "rank " << r;
    }
  }
}

}  // namespace
}  // namespace tp
