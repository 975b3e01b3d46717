/// Text in, text out, against transformers (tests/golden/chat/, written by generate.py there): for
/// tiny checkpoints whose vocabulary is a real tokenizer family's (GPT-2 with a plain prompt; Qwen2,
/// Llama 3 and Mistral with their chat templates), the prompt text becomes transformers' ids
/// (tokenizer(prompt) / apply_chat_template), tp::generate at every TP degree the heads allow
/// produces transformers' greedy ids, stopping at the end-of-turn token for a chat, and the text
/// decoded, whole or streamed token by token, is transformers' decode; the same with the model packed
/// for inference (Transformer::pack_for_inference: the chat prompts, 23 to 41 tokens, prefill on the
/// packed weights).

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tp/comm/local_communicator.hpp"
#include "tp/inference/generate.hpp"
#include "tp/models/hugging_face.hpp"
#include "tp/text/chat_template.hpp"
#include "tp/text/text_stream.hpp"
#include "tp/text/tokenizer.hpp"

namespace tp {
namespace {

namespace fs = std::filesystem;

TEST(TextGenerateGolden, PromptTextToTransformersGreedyText) {
  for (const char* name : {"gpt2-text", "qwen2-chat", "llama3-chat", "mistral-chat"}) {
    SCOPED_TRACE(name);
    const fs::path dir = fs::path(TP_GOLDEN_DIR) / "chat" / name;
    std::ifstream in(dir / "golden.json");
    ASSERT_TRUE(in) << dir / "golden.json";
    const nlohmann::json golden = nlohmann::json::parse(in);
    const auto tok = text::Tokenizer::from_directory(dir);
    const std::string prompt = golden["prompt"].get<std::string>();
    std::vector<std::int64_t> ids;
    GenerateOptions options;
    if (golden["chat"].get<bool>()) {
      const auto chat = text::ChatTemplate::from_tokenizer(tok, dir.string());
      const std::string rendered = chat.render({{"user", prompt}});
      EXPECT_EQ(rendered, golden["rendered"].get<std::string>());
      ids = tok.encode(rendered, false);
      options.stop_tokens = {chat.end_of_turn_id(tok)};
      EXPECT_EQ(options.stop_tokens[0], golden["stop"].get<std::int64_t>());
    } else {
      ids = tok.encode(prompt);
    }
    ASSERT_EQ(ids, golden["prompt_ids"].get<std::vector<std::int64_t>>());
    const auto want = golden["generated"].get<std::vector<std::int64_t>>();
    const auto config = models::read_hugging_face_config(dir / "config.json");
    for (int world = 1; world <= 4; ++world)
      for (const bool pack : {false, true}) {
        if (config.heads % world != 0 || (config.kv_heads % world != 0 && world % config.kv_heads != 0)) continue;
        SCOPED_TRACE(fmt::format("world {}{}", world, pack ? ", packed for inference" : ""));
        std::vector<std::vector<std::int64_t>> got(static_cast<std::size_t>(world));
        std::string streamed;
        run_local(world, [&](std::shared_ptr<Communicator> comm) {
          const Context<Cpu> ctx(comm);
          auto model = models::open_hugging_face<float>(ctx, dir);
          if (pack) model->pack_for_inference();
          GenerateOptions run = options;
          text::TextStream stream(tok, ids);
          if (comm->rank() == 0) run.on_token = [&](std::int64_t t) { streamed += stream.push(t); };
          // Asked for more than transformers made: a chat stops at the end of the turn on its own.
          got[comm->rank()] =
              generate(*model, ids, golden["chat"].get<bool>() ? 64 : std::int64_t(want.size()), run).tokens;
          if (comm->rank() == 0) streamed += stream.finish();
        });
        for (int r = 0; r < world; ++r) EXPECT_EQ(got[r], want) << "rank " << r;
        EXPECT_EQ(tok.decode(got[0]), golden["text"].get<std::string>());
        EXPECT_EQ(tok.decode(got[0], true), golden["text_skip_special"].get<std::string>());
        // The stream, which decodes after the prompt, is the full text's growth past the prompt's.
        std::vector<std::int64_t> all = ids;
        all.insert(all.end(), got[0].begin(), got[0].end());
        const std::string whole = tok.decode(all), head = tok.decode(ids);
        ASSERT_TRUE(whole.starts_with(head));
        EXPECT_EQ(streamed, whole.substr(head.size()));
      }
  }
}

}  // namespace
}  // namespace tp
