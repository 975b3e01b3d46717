/// tp::generate (tp/inference/generate.hpp) on the tiny language model of examples/train_tiny_lm:
/// decoding through the KV cache gives the logits of recomputing the whole sequence, the tokens
/// are the same at TP 1 to 4 (greedy and sampled), and the llama architecture saves as a Hugging
/// Face Llama checkpoint that tp::models::Transformer loads to the same logits.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "common/reference.hpp"
#include "tp/comm/local_communicator.hpp"
#include "tp/device/cpu.hpp"
#include "tp/inference/generate.hpp"
#include "tp/models/hugging_face.hpp"
#include "train_tiny_lm/tiny_lm.hpp"

namespace tiny_lm {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

/// The model at `world` ranks: 4 heads over 2 kv heads (sharded at TP 2, replicated at TP 4), and at
/// TP 3, where 4 heads do not split, 6 heads over 3 kv heads and 257 ids (86, 86, 85 per rank).
ModelConfig model_for(Arch arch, int world) {
  if (world == 3) return {.arch = arch, .vocab = 257, .hidden = 36, .heads = 6, .kv_heads = 3, .layers = 2, .ffn = 50,
                          .seq_len = 32, .batch = 2, .seed = 11};
  return {.arch = arch, .vocab = 256, .hidden = 32, .heads = 4, .kv_heads = 2, .layers = 2, .ffn = 48, .seq_len = 32,
          .batch = 2, .seed = 11};
}

const std::vector<std::int64_t> kPrompt{'I', 'n', ' ', 't', 'h', 'e', ' '};

/// Generation on `world` ranks (double, so that TP degrees agree to 1e-15 and no argmax can flip);
/// returns rank 0's tokens and checks that every rank has the same.
std::vector<std::int64_t> generate_at(const ModelConfig& config, int world, std::int64_t count,
                                      const tp::SamplingOptions& sampling) {
  std::vector<std::vector<std::int64_t>> tokens(static_cast<std::size_t>(world));
  tp::run_local(world, [&](std::shared_ptr<tp::Communicator> comm) {
    tp::models::Transformer<double> model(tp::Context<>(comm), config.transformer(), config.seed);
    const auto out = tp::generate(model, kPrompt, count, {.sampling = sampling});
    EXPECT_EQ(out.prompt_tokens, static_cast<std::int64_t>(kPrompt.size()));
    EXPECT_GT(out.prefill_seconds, 0);
    EXPECT_GT(out.decode_seconds, 0);
    tokens[comm->rank()] = out.tokens;
  });
  for (int r = 1; r < world; ++r) EXPECT_EQ(tokens[r], tokens[0]) << "rank " << r << " of " << world;
  return tokens[0];
}

class TinyLmGenerate : public ::testing::TestWithParam<Arch> {};
INSTANTIATE_TEST_SUITE_P(Arch, TinyLmGenerate, ::testing::Values(Arch::gpt2, Arch::llama),
                         [](const auto& info) { return std::string(arch_name(info.param)); });

/// Every decoding step's logits through the cache equal the last row of a forward over the whole
/// sequence so far (no cache): the cache holds the right keys and values at the right positions.
TEST_P(TinyLmGenerate, CachedLogitsEqualRecomputation) {
  for (const int world : {1, 2, 3, 4}) {
    SCOPED_TRACE(fmt::format("world {}", world));
    const ModelConfig config = model_for(GetParam(), world);
    tp::run_local(world, [&](std::shared_ptr<tp::Communicator> comm) {
      const tp::Context<> ctx(comm);
      tp::models::Transformer<double> model(ctx, config.transformer(), config.seed);
      const tp::Range v = model.vocab_range();
      auto cache = model.make_cache(1, 16);
      std::vector<std::int64_t> seq = kPrompt;
      tp::Tensor<std::int64_t, tp::Cpu> ids(1, static_cast<std::int64_t>(seq.size()));
      std::copy(seq.begin(), seq.end(), ids.data());
      // Prefill, then 6 single tokens.
      const tp::Tensor<double, tp::Cpu>* logits = &model.forward(ids.view(), {.lengths = {ids.cols()}}, cache);
      for (int step = 0; step < 7; ++step) {
        const auto n = static_cast<std::int64_t>(seq.size());
        std::vector<double> got(logits->data() + (logits->rows() - 1) * v.size(), logits->data() + logits->rows() * v.size());
        tp::Tensor<std::int64_t, tp::Cpu> all(1, n);
        std::copy(seq.begin(), seq.end(), all.data());
        const auto& full = model.forward(all.view(), tp::AttentionBatch{.lengths = {n}});
        ASSERT_EQ(full.rows(), n);
        const std::vector<double> want(full.data() + (n - 1) * v.size(), full.data() + n * v.size());
        double scale = 0, err = 0;
        for (std::size_t j = 0; j < want.size(); ++j) {
          scale = std::max(scale, std::abs(want[j]));
          err = std::max(err, std::abs(got[j] - want[j]));
        }
        EXPECT_LE(err, 1e-12 * scale) << "step " << step << " of " << n << " tokens, rank " << comm->rank();
        if (step == 6) break;
        const std::int64_t next = 'a' + step;
        seq.push_back(next);
        tp::Tensor<std::int64_t, tp::Cpu> one(1, 1);
        one.data()[0] = next;
        logits = &model.forward(one.view(), {.lengths = {1}}, cache);
      }
      EXPECT_EQ(cache.length(0), static_cast<std::int64_t>(seq.size()));
    });
  }
}

/// Greedy and sampled generations are the same tokens at every TP degree, and greedy is the
/// argmax of the recomputed logits at each step.
TEST_P(TinyLmGenerate, SameTokensAtEveryTpDegree) {
  const Arch arch = GetParam();
  for (const tp::SamplingOptions sampling :
       {tp::SamplingOptions{}, tp::SamplingOptions{.temperature = 1.0, .top_k = 20, .top_p = 0.95, .seed = 5}}) {
    SCOPED_TRACE(fmt::format("temperature {}", sampling.temperature));
    const auto tp1 = generate_at(model_for(arch, 1), 1, 12, sampling);
    ASSERT_EQ(tp1.size(), 12u);
    EXPECT_EQ(generate_at(model_for(arch, 2), 2, 12, sampling), tp1);
    EXPECT_EQ(generate_at(model_for(arch, 4), 4, 12, sampling), tp1);
    // TP 3 is another model (257 ids, 6 heads): compare with its own TP 1.
    EXPECT_EQ(generate_at(model_for(arch, 3), 3, 12, sampling), generate_at(model_for(arch, 3), 1, 12, sampling));
  }
  // Greedy = the argmax of the whole-sequence logits, step by step.
  const auto greedy = generate_at(model_for(arch, 1), 1, 6, {});
  tp::run_local(1, [&](std::shared_ptr<tp::Communicator> comm) {
    tp::models::Transformer<double> model(tp::Context<>(comm), model_for(arch, 1).transformer(), 11);
    std::vector<std::int64_t> seq = kPrompt;
    for (const std::int64_t token : greedy) {
      tp::Tensor<std::int64_t, tp::Cpu> ids(1, static_cast<std::int64_t>(seq.size()));
      std::copy(seq.begin(), seq.end(), ids.data());
      const auto& logits = model.forward(ids.view(), tp::AttentionBatch{.lengths = {ids.cols()}});
      const double* last = logits.data() + (logits.rows() - 1) * logits.cols();
      EXPECT_EQ(std::max_element(last, last + logits.cols()) - last, token);
      seq.push_back(token);
    }
  });
}

TEST_P(TinyLmGenerate, StopsAndRefusesBadInput) {
  const ModelConfig config = model_for(GetParam(), 1);
  const auto greedy = generate_at(config, 1, 8, {});
  tp::run_local(2, [&](std::shared_ptr<tp::Communicator> comm) {
    tp::models::Transformer<double> model(tp::Context<>(comm), config.transformer(), config.seed);
    // A stop token ends the generation with it.
    const auto stopped = tp::generate(model, kPrompt, 8, {.stop_tokens = {greedy[2]}});
    const auto first = std::find(greedy.begin(), greedy.end(), greedy[2]) - greedy.begin();
    EXPECT_EQ(stopped.tokens, std::vector<std::int64_t>(greedy.begin(), greedy.begin() + first + 1));
    EXPECT_TRUE(tp::generate(model, kPrompt, 0).tokens.empty());
    EXPECT_THAT([&] { tp::generate(model, std::span<const std::int64_t>(), 4); },
                ::testing::ThrowsMessage<tp::InvalidArgument>(HasSubstr("the prompt is empty")));
    EXPECT_THAT([&] { tp::generate(model, kPrompt, -1); },
                ::testing::ThrowsMessage<tp::InvalidArgument>(HasSubstr("max_new_tokens must be >= 0, got -1")));
    EXPECT_THAT([&] { tp::generate(model, kPrompt, 4, {.sampling = {.temperature = -1}}); },
                ::testing::ThrowsMessage<tp::InvalidArgument>(HasSubstr("got -1")));
    const std::vector<std::int64_t> bad{'a', 300};
    EXPECT_THAT([&] { tp::generate(model, bad, 4); },
                ::testing::ThrowsMessage<tp::InvalidArgument>(HasSubstr("token id 300")));
    if (!config.llama()) {  // learned positions end at seq_len
      EXPECT_THAT([&] { tp::generate(model, kPrompt, 30); },
                  ::testing::ThrowsMessage<tp::InvalidArgument>(HasSubstr("a prompt of 7 tokens plus max_new_tokens 30 is past the model's context of 32 positions")));
    }
  });
}

/// The llama architecture's weights file is a Hugging Face LlamaForCausalLM checkpoint: Llama's
/// tensor names and shapes, no lm_head (tied), plus config.json.
TEST(TinyLmHuggingFace, LlamaSavesInHuggingFaceLayout) {
  const fs::path dir = fs::temp_directory_path() / fmt::format("tp_tiny_lm_hf_{}", ::getpid());
  fs::remove_all(dir);
  const ModelConfig config = model_for(Arch::llama, 1);
  tp::run_local(2, [&](std::shared_ptr<tp::Communicator> comm) {
    tp::models::Transformer<float> model(tp::Context<>(comm), config.transformer(), config.seed);
    tp::models::save_hugging_face(*comm, model, dir);
  });
  const tp::SafetensorsFile file(dir / "model.safetensors");
  const std::int64_t h = config.hidden, kv = config.kv_heads * (config.hidden / config.heads), f = config.ffn_size();
  const std::map<std::string, std::vector<std::int64_t>> want{
      {"model.embed_tokens.weight", {config.vocab, h}},
      {"model.norm.weight", {1, h}},
      {"model.layers.1.input_layernorm.weight", {1, h}},
      {"model.layers.1.post_attention_layernorm.weight", {1, h}},
      {"model.layers.1.self_attn.q_proj.weight", {h, h}},
      {"model.layers.1.self_attn.k_proj.weight", {kv, h}},
      {"model.layers.1.self_attn.v_proj.weight", {kv, h}},
      {"model.layers.1.self_attn.o_proj.weight", {h, h}},
      {"model.layers.1.mlp.gate_proj.weight", {f, h}},
      {"model.layers.1.mlp.up_proj.weight", {f, h}},
      {"model.layers.1.mlp.down_proj.weight", {h, f}}};
  for (const auto& [name, shape] : want) {
    ASSERT_TRUE(file.contains(name)) << name;
    // Norm weights are vectors, as in Hugging Face's files.
    EXPECT_EQ(file.tensor(name).shape, name.ends_with("norm.weight") ? std::vector<std::int64_t>{h} : shape) << name;
  }
  EXPECT_FALSE(file.contains("lm_head.weight"));
  EXPECT_EQ(file.header().tensors.size(), 2 + 9 * static_cast<std::size_t>(config.layers));
  EXPECT_EQ(file.metadata().at("format"), "pt");
  std::ifstream in(dir / "config.json");
  const auto json = nlohmann::json::parse(in);
  EXPECT_EQ(json.at("model_type"), "llama");
  EXPECT_EQ(json.at("num_key_value_heads"), config.kv_heads);
  EXPECT_EQ(json.at("intermediate_size"), f);
  EXPECT_EQ(json.at("tie_word_embeddings"), true);
  fs::remove_all(dir);
}

/// What save_hugging_face writes, tp::models::open_hugging_face reads back into a Transformer that
/// computes the same logits, at every TP degree (double: the same layers in the same order).
TEST(TinyLmHuggingFace, TransformerLoadsWhatTinyLmSaves) {
  for (const int world : {1, 2, 3, 4}) {
    SCOPED_TRACE(fmt::format("world {}", world));
    const fs::path dir = fs::temp_directory_path() / fmt::format("tp_tiny_lm_hf_load_{}_{}", world, ::getpid());
    fs::remove_all(dir);
    tp::run_local(world, [&](std::shared_ptr<tp::Communicator> comm) {
      const tp::Context<> ctx(comm);
      tp::models::Transformer<double> tiny(ctx, model_for(Arch::llama, world).transformer(), 11);
      tp::models::save_hugging_face(*comm, tiny, dir);
      const auto loaded = tp::models::open_hugging_face<double>(ctx, dir);
      ASSERT_EQ(loaded->vocab_range(), tiny.vocab_range());
      tp::Tensor<std::int64_t, tp::Cpu> ids(1, static_cast<std::int64_t>(kPrompt.size()));
      std::copy(kPrompt.begin(), kPrompt.end(), ids.data());
      const tp::AttentionBatch batch{.lengths = {ids.cols()}};
      const auto& want = tiny.forward(ids.view(), batch);
      const auto& got = loaded->forward(ids.view(), batch);
      ASSERT_EQ(got.rows(), want.rows());
      ASSERT_EQ(got.cols(), want.cols());
      double scale = 0, err = 0;
      for (std::int64_t i = 0; i < want.size(); ++i) {
        scale = std::max(scale, std::abs(want.data()[i]));
        err = std::max(err, std::abs(got.data()[i] - want.data()[i]));
      }
      EXPECT_LE(err, 1e-12 * scale) << "rank " << comm->rank();
    });
    fs::remove_all(dir);
  }
}

}  // namespace
}  // namespace tiny_lm
