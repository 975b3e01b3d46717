/// Hugging Face configs and checkpoints apart from the golden numbers: configs read and written
/// back; a sharded index; each rank reading only its slices; and what tp must refuse, each with a
/// tp error naming the file, the key or tensor and the sizes: another model_type, missing or
/// mistyped keys, configs that contradict themselves or the tensors, tensors of another
/// architecture, heads that cannot be split over the group, positions past the cache or the
/// learned positions.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/harness.hpp"
#include "common/test_files.hpp"
#include "tp/models/hugging_face.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::ThrowsMessage;

const fs::path golden_root = TP_GOLDEN_DIR;

nlohmann::json read_json(const fs::path& p) {
  std::ifstream in(p);
  return nlohmann::json::parse(in);
}

/// A model directory: `config` as config.json beside a copy of golden model `weights_of`'s tensors.
fs::path model_dir(const fs::path& root, const std::string& name, const nlohmann::json& config,
                   const std::string& weights_of) {
  const fs::path dir = root / name;
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << config.dump(2);
  fs::copy_file(golden_root / weights_of / "model.safetensors", dir / "model.safetensors",
                fs::copy_options::overwrite_existing);
  return dir;
}

TEST(HuggingFaceConfig, ReadsTheGoldenConfigs) {
  const auto gpt2 = models::read_hugging_face_config(golden_root / "gpt2" / "config.json");
  EXPECT_EQ(gpt2.arch, models::Architecture::gpt2);
  EXPECT_EQ(gpt2.hidden, 24);
  EXPECT_EQ(gpt2.heads, 12);
  EXPECT_EQ(gpt2.head_dim, 2);
  EXPECT_EQ(gpt2.ffn, 40);
  EXPECT_TRUE(gpt2.tie_embeddings);
  EXPECT_EQ(gpt2.activation, Activation::gelu_tanh);
  const auto llama = models::read_hugging_face_config(golden_root / "llama" / "config.json");
  EXPECT_EQ(llama.arch, models::Architecture::llama);
  EXPECT_EQ(llama.kv_heads, 2);
  EXPECT_EQ(llama.head_dim, 6);
  EXPECT_TRUE(llama.tie_embeddings);
  EXPECT_FALSE(llama.qkv_bias);
  EXPECT_EQ(llama.rope_theta, 10000.0);
  const auto qwen2 = models::read_hugging_face_config(golden_root / "qwen2" / "config.json");
  EXPECT_EQ(qwen2.model_type, "qwen2");
  EXPECT_TRUE(qwen2.qkv_bias);
  EXPECT_FALSE(qwen2.dense_bias);
  EXPECT_FALSE(qwen2.tie_embeddings);
  const auto bert = models::read_hugging_face_config(golden_root / "bert" / "config.json");
  EXPECT_EQ(bert.arch, models::Architecture::bert);
  EXPECT_EQ(bert.type_vocab, 2);
  EXPECT_EQ(bert.activation, Activation::gelu_exact);
  EXPECT_EQ(bert.norm_eps, 1e-12);
}

TEST(HuggingFaceConfig, MistralWithoutASlidingWindowIsLlama) {
  TP_LOCAL_ONLY();
  const fs::path dir = test::test_dir();
  auto config = read_json(golden_root / "llama" / "config.json");
  config["model_type"] = "mistral";
  config["sliding_window"] = nullptr;
  const fs::path mistral = model_dir(dir, "mistral", config, "llama");
  EXPECT_EQ(models::read_hugging_face_config(mistral / "config.json").arch, models::Architecture::llama);
  run_local(2, [&](std::shared_ptr<Communicator> comm) {
    const Context<Cpu> ctx(comm);
    auto a = models::open_hugging_face<float>(ctx, mistral);
    auto b = models::open_hugging_face<float>(ctx, golden_root / "llama");
    Tensor<std::int64_t, Cpu> ids(1, 6);
    for (std::int64_t i = 0; i < 6; ++i) ids(0, i) = 7 * i + 3;
    const auto& x = a->forward(ids.view(), AttentionBatch::uniform(1, 6));
    const auto& y = b->forward(ids.view(), AttentionBatch::uniform(1, 6));
    for (std::int64_t r = 0; r < x.rows(); ++r)
      for (std::int64_t c = 0; c < x.cols(); ++c) ASSERT_EQ(x(r, c), y(r, c));
  });
}

// transformers 5 writes rope_theta inside rope_parameters (tests/golden/chat/'s configs).
TEST(HuggingFaceConfig, ReadsRopeThetaFromRopeParameters) {
  TP_LOCAL_ONLY();
  const fs::path dir = test::test_dir();
  auto config = read_json(golden_root / "llama" / "config.json");
  config.erase("rope_theta");
  config["rope_parameters"] = {{"rope_theta", 1000000.0}, {"rope_type", "default"}};
  std::ofstream(dir / "config.json") << config.dump();
  EXPECT_EQ(models::read_hugging_face_config(dir / "config.json").rope_theta, 1e6);
  EXPECT_EQ(models::read_hugging_face_config(golden_root / "chat" / "qwen2-chat" / "config.json").rope_theta, 10000.0);
}

TEST(HuggingFaceConfig, WrittenConfigsReadBackTheSame) {
  TP_LOCAL_ONLY();
  const fs::path dir = test::test_dir();
  for (const char* name : {"gpt2", "llama", "qwen2", "bert"}) {
    const auto c = models::read_hugging_face_config(golden_root / name / "config.json");
    models::write_hugging_face_config(c, dir / fmt::format("{}.json", name));
    const auto back = models::read_hugging_face_config(dir / fmt::format("{}.json", name));
    EXPECT_EQ(models::hugging_face_config_json(back), models::hugging_face_config_json(c)) << name;
  }
}

TEST(HuggingFaceConfig, RefusesUnknownMissingMistypedAndInconsistentConfigs) {
  TP_LOCAL_ONLY();
  const fs::path dir = test::test_dir();
  const auto llama = read_json(golden_root / "llama" / "config.json");
  struct Case {
    const char* what;
    nlohmann::json config;
    std::vector<std::string> message;
  };
  auto with = [&](auto edit) {
    nlohmann::json j = llama;
    edit(j);
    return j;
  };
  const Case cases[] = {
      {"unknown model_type", with([](auto& j) { j["model_type"] = "t5"; }), {"model_type \"t5\"", "gpt2, llama"}},
      {"missing key", with([](auto& j) { j.erase("hidden_size"); }), {"key 'hidden_size' is missing"}},
      {"mistyped key", with([](auto& j) { j["num_attention_heads"] = "4"; }), {"num_attention_heads: expected an integer, got string \"4\""}},
      {"heads over kv heads", with([](auto& j) { j["num_key_value_heads"] = 3; }), {"4 attention heads", "3 key/value heads"}},
      {"hidden over heads", with([](auto& j) { j["hidden_size"] = 26; }), {"hidden size 26", "4 attention heads"}},
      {"rope scaling", with([](auto& j) { j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}}; }), {"'rope_scaling'"}},
      {"activation", with([](auto& j) { j["hidden_act"] = "gelu"; }), {"'hidden_act'", "\"gelu\""}},
      {"negative size", with([](auto& j) { j["intermediate_size"] = -1; }), {"ffn must be positive, got -1"}},
      {"sliding window", with([](auto& j) { j["model_type"] = "mistral"; j["sliding_window"] = 16; }),
       {"'sliding_window' is 16", "max_position_embeddings 64"}},
      {"rope type", with([](auto& j) { j["rope_parameters"] = {{"rope_theta", 1e4}, {"rope_type", "linear"}}; }),
       {"rope_parameters: key 'rope_type' is \"linear\""}},
      {"two rope thetas", with([](auto& j) { j["rope_parameters"] = {{"rope_theta", 5e5}, {"rope_type", "default"}}; }),
       {"'rope_theta' and 'rope_parameters.rope_theta' disagree"}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    const fs::path path = dir / "config.json";
    std::ofstream(path) << c.config.dump();
    try {
      models::read_hugging_face_config(path);
      ADD_FAILURE() << "accepted";
    } catch (const InvalidArgument& e) {
      EXPECT_THAT(e.what(), HasSubstr(path.string()));
      for (const auto& m : c.message) EXPECT_THAT(e.what(), HasSubstr(m));
    }
  }
  std::ofstream(dir / "bad.json") << "{ not json";
  EXPECT_THAT([&] { models::read_hugging_face_config(dir / "bad.json"); },
              ThrowsMessage<IoError>(AllOf(HasSubstr("bad.json"), HasSubstr("not valid JSON"))));
  EXPECT_THAT([&] { models::read_hugging_face_config(dir / "none.json"); },
              ThrowsMessage<IoError>(HasSubstr("none.json")));
}

TEST(HuggingFaceCheckpoint, RefusesAnotherArchitectureAndShapesThatContradictTheConfig) {
  TP_LOCAL_ONLY();
  const fs::path root = test::test_dir();
  // GPT-2's config over Llama's tensors.
  const fs::path swapped = model_dir(root, "swapped", read_json(golden_root / "gpt2" / "config.json"), "llama");
  // Llama's config with another ffn size than its tensors.
  auto wide = read_json(golden_root / "llama" / "config.json");
  wide["intermediate_size"] = 48;
  const fs::path mismatched = model_dir(root, "mismatched", wide, "llama");
  // An untied config over a tied checkpoint, which has no lm_head.weight.
  auto untied = read_json(golden_root / "llama" / "config.json");
  untied["tie_word_embeddings"] = false;
  const fs::path no_head = model_dir(root, "no_head", untied, "llama");
  fs::create_directories(root / "empty");
  std::ofstream(root / "empty" / "config.json") << read_json(golden_root / "llama" / "config.json").dump();
  run_local(2, [&](std::shared_ptr<Communicator> comm) {
    const Context<Cpu> ctx(comm);
    EXPECT_THAT([&] { models::open_hugging_face<float>(ctx, swapped); },
                ThrowsMessage<InvalidArgument>(AllOf(HasSubstr("swapped/model.safetensors"), HasSubstr("gpt2 model"),
                                                     HasSubstr("a llama checkpoint's"))));
    EXPECT_THAT([&] { models::open_hugging_face<float>(ctx, mismatched); },
                ThrowsMessage<InvalidArgument>(AllOf(HasSubstr("mismatched/model.safetensors"),
                                                     HasSubstr("'model.layers.0.mlp.gate_proj.weight'"),
                                                     HasSubstr("[40, 24]"), HasSubstr("gives [48, 24]"))));
    EXPECT_THAT([&] { models::open_hugging_face<float>(ctx, no_head); },
                ThrowsMessage<IoError>(AllOf(HasSubstr("no_head/model.safetensors"), HasSubstr("'lm_head.weight'"))));
    EXPECT_THAT([&] { models::open_hugging_face<float>(ctx, root / "empty"); },
                ThrowsMessage<IoError>(AllOf(HasSubstr("empty"), HasSubstr("model.safetensors.index.json"))));
  });
}

TEST(HuggingFaceCheckpoint, LoadsThroughAShardedIndex) {
  TP_LOCAL_ONLY();
  // The Llama checkpoint split over two files by an index, as from_pretrained writes big models.
  const fs::path dir = test::test_dir();
  fs::copy_file(golden_root / "llama" / "config.json", dir / "config.json");
  const SafetensorsFile whole(golden_root / "llama" / "model.safetensors");
  nlohmann::json map;
  run_local(1, [&](std::shared_ptr<Communicator> comm) {
    std::vector<Tensor<float, Cpu>> tensors;
    std::vector<Parameter<float>> parts[2];
    std::map<std::string, std::vector<std::int64_t>, std::less<>> shapes;
    int i = 0;
    for (const auto& [name, t] : whole.header().tensors) {
      tensors.emplace_back(t.rows(), t.cols());
      whole.read_block(name, 0, 0, tensors.back().view());
      const int part = i++ % 2;
      parts[part].push_back({name, tensors.back().view(), tensors.back().view(), t.rows(), t.cols(), {0, t.rows()}, {0, t.cols()}});
      shapes[name] = t.shape;
      map[name] = fmt::format("model-0000{}-of-00002.safetensors", part + 1);
    }
    for (int p = 0; p < 2; ++p)
      save_safetensors<float>(*comm, Cpu(), parts[p], dir / fmt::format("model-0000{}-of-00002.safetensors", p + 1), {}, shapes);
  });
  std::ofstream(dir / "model.safetensors.index.json") << nlohmann::json{{"metadata", nlohmann::json::object()}, {"weight_map", map}}.dump();
  for (int world : {1, 2, 4})
    run_local(world, [&](std::shared_ptr<Communicator> comm) {
      const Context<Cpu> ctx(comm);
      auto sharded = models::open_hugging_face<float>(ctx, dir);
      auto single = models::open_hugging_face<float>(ctx, golden_root / "llama");
      const auto a = sharded->parameters(), b = single->parameters();
      ASSERT_EQ(a.size(), b.size());
      for (std::size_t k = 0; k < a.size(); ++k)
        for (std::int64_t r = 0; r < a[k].value.rows; ++r)
          for (std::int64_t c = 0; c < a[k].value.cols; ++c) ASSERT_EQ(a[k].value(r, c), b[k].value(r, c)) << a[k].name;
    });
}

/// Bytes this process has read (/proc/self/io's rchar), -1 where there is none.
std::int64_t bytes_read() {
  std::ifstream io("/proc/self/io");
  std::string key;
  std::int64_t value = -1;
  while (io >> key >> value)
    if (key == "rchar:") return value;
  return -1;
}

TEST(HuggingFaceCheckpoint, EachRankReadsOnlyItsSlices) {
  TP_LOCAL_ONLY();
  if (bytes_read() < 0) GTEST_SKIP() << "no /proc/self/io";
  // At world 4 every rank reads its blocks (row blocks of q/k/v and gate/up, column blocks of
  // GPT-2's transposed Conv1D weights), the replicated ones (norms, Llama's kv heads shared by 2
  // ranks) once per holder, and nothing else but the header and config.json.
  for (const char* name : {"llama", "gpt2"}) {
    SCOPED_TRACE(name);
    const fs::path dir = golden_root / name;
    const SafetensorsFile file(dir / "model.safetensors");
    const std::int64_t overhead = static_cast<std::int64_t>(file.header().data_start + fs::file_size(dir / "config.json"));
    std::atomic<std::int64_t> blocks{0};
    const std::int64_t before = bytes_read();
    run_local(4, [&](std::shared_ptr<Communicator> comm) {
      auto model = models::open_hugging_face<float>(Context<Cpu>(comm), dir);
      for (const auto& p : model->parameters()) blocks += p.rows.size() * p.cols.size() * 4;  // F32 in the file
    });
    const std::int64_t read = bytes_read() - before;
    EXPECT_GE(read, blocks.load());
    // the blocks, each rank's header and config, and what reading /proc/self/io costs
    EXPECT_LE(read, blocks.load() + 4 * overhead + 4096) << "of a file of " << fs::file_size(dir / "model.safetensors");
    EXPECT_LT(blocks.load(), 2 * static_cast<std::int64_t>(fs::file_size(dir / "model.safetensors")));
  }
}

TEST(HuggingFaceCheckpoint, RefusesHeadsThatCannotBeSplitAndPositionsPastTheEnd) {
  TP_LOCAL_ONLY();
  // Llama's 4 query heads over 3 ranks.
  run_local(3, [&](std::shared_ptr<Communicator> comm) {
    const Context<Cpu> ctx(comm);
    EXPECT_THAT([&] { models::open_hugging_face<float>(ctx, golden_root / "llama"); },
                ThrowsMessage<InvalidArgument>(AllOf(HasSubstr("heads = 4"), HasSubstr("world size 3"))));
  });
  run_local(2, [&](std::shared_ptr<Communicator> comm) {
    const Context<Cpu> ctx(comm);
    // A KV cache of 6 tokens, then 4 + 3.
    auto llama = models::open_hugging_face<float>(ctx, golden_root / "llama");
    auto cache = llama->make_cache(1, 6);
    Tensor<std::int64_t, Cpu> ids(1, 4);
    ctx.device->fill(ids.view(), std::int64_t{1});
    llama->forward(ids.view(), AttentionBatch{.lengths = {4}}, cache);
    Tensor<std::int64_t, Cpu> more(1, 3);
    ctx.device->fill(more.view(), std::int64_t{1});
    EXPECT_THAT([&] { llama->forward(more.view(), AttentionBatch{.lengths = {3}}, cache); },
                ThrowsMessage<InvalidArgument>(AllOf(HasSubstr("layers.0.attention"), HasSubstr("4 cached tokens"),
                                                     HasSubstr("max_len 6"))));
    // GPT-2 has 48 learned positions.
    auto gpt2 = models::open_hugging_face<float>(ctx, golden_root / "gpt2");
    Tensor<std::int64_t, Cpu> long_ids(1, 49);
    ctx.device->fill(long_ids.view(), std::int64_t{1});
    EXPECT_THAT([&] { gpt2->forward(long_ids.view(), AttentionBatch::uniform(1, 49)); },
                ThrowsMessage<InvalidArgument>(AllOf(HasSubstr("position 48"), HasSubstr("48 learned positions"))));
    EXPECT_THAT([&] { gpt2->make_cache(1, 60); }, ThrowsMessage<InvalidArgument>(HasSubstr("60 tokens")));
    // ids that do not add up to the batch's lengths.
    EXPECT_THAT([&] { gpt2->forward(long_ids.view(), AttentionBatch::uniform(2, 8)); },
                ThrowsMessage<InvalidArgument>(AllOf(HasSubstr("16"), HasSubstr("49 ids"))));
  });
}

}  // namespace
}  // namespace tp
