// tp::text::ChatTemplate against transformers' apply_chat_template (tests/golden/chat/templates.json,
// written by tests/golden/chat/generate.py): the real templates of Qwen2, SmolLM2, Llama 3 and
// Mistral Instruct and the plain forms of each format render every conversation to the same text
// and, through tp::text::Tokenizer, the same ids. Templates tp does not know are refused by name.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <tp/text/chat_template.hpp>
#include <tp/text/tokenizer.hpp>
#include <vector>

namespace {

const std::string text_golden = TP_TEXT_GOLDEN_DIR;
const std::string chat_golden = TP_CHAT_GOLDEN_DIR;

std::vector<tp::text::ChatMessage> messages_of(const nlohmann::json& j) {
  std::vector<tp::text::ChatMessage> out;
  for (const auto& m : j) out.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  return out;
}

TEST(ChatTemplate, RendersAsTransformersDoes) {
  std::ifstream in(chat_golden + "/templates.json");
  ASSERT_TRUE(in) << chat_golden << "/templates.json";
  const nlohmann::json golden = nlohmann::json::parse(in);
  std::set<std::string> names;
  for (const auto& c : golden["cases"]) {
    const std::string name = c["name"].get<std::string>();
    SCOPED_TRACE(name + ": " + c["messages"].dump());
    const auto tok = tp::text::Tokenizer::from_directory(text_golden + "/" + c["family"].get<std::string>());
    const auto& s = tok.special_tokens();
    const auto chat = tp::text::ChatTemplate::recognise(c["template"].get<std::string>(),
                                                        s.bos ? std::optional(s.bos->content) : std::nullopt,
                                                        s.eos ? std::optional(s.eos->content) : std::nullopt, name);
    const auto messages = messages_of(c["messages"]);
    const std::string text = chat.render(messages, c["add_generation_prompt"].get<bool>());
    EXPECT_EQ(text, c["text"].get<std::string>());
    EXPECT_EQ(tok.encode(text, false), c["ids"].get<std::vector<std::int64_t>>());
    names.insert(name);
  }
  EXPECT_EQ(names.size(), 7u);
}

TEST(ChatTemplate, KnowsTheDefaultSystemTurnAndTheEndOfTurn) {
  const auto qwen = tp::text::Tokenizer::from_directory(chat_golden + "/qwen2-chat");
  const auto chat = tp::text::ChatTemplate::from_tokenizer(qwen, "qwen2-chat");
  EXPECT_EQ(chat.format(), tp::text::ChatFormat::chatml);
  EXPECT_EQ(chat.default_system(), "You are a helpful assistant.");
  EXPECT_EQ(chat.end_of_turn(), "<|im_end|>");
  EXPECT_EQ(chat.end_of_turn_id(qwen), *qwen.token_to_id("<|im_end|>"));
  const auto llama = tp::text::Tokenizer::from_directory(chat_golden + "/llama3-chat");
  EXPECT_EQ(tp::text::ChatTemplate::from_tokenizer(llama, "llama3-chat").end_of_turn(), "<|eot_id|>");
  const auto mistral = tp::text::Tokenizer::from_directory(chat_golden + "/mistral-chat");
  EXPECT_EQ(tp::text::ChatTemplate::from_tokenizer(mistral, "mistral-chat").end_of_turn(), "</s>");
}

TEST(ChatTemplate, RefusesTemplatesItDoesNotKnowByName) {
  const auto expect_refused = [](const std::string& jinja) {
    try {
      (void)tp::text::ChatTemplate::recognise(jinja, "<s>", "</s>", "dir/tokenizer_config.json");
      ADD_FAILURE() << "accepted: " << jinja;
    } catch (const tp::InvalidArgument& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("dir/tokenizer_config.json"), std::string::npos) << what;
      EXPECT_NE(what.find("not one tp renders"), std::string::npos) << what;
      EXPECT_NE(what.find("ChatML"), std::string::npos) << what;
    }
  };
  // Gemma's, a ChatML with a changed separator, a default system message that is Jinja, nothing.
  expect_refused("{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + message['role'] + '\\n' + "
                 "message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{"
                 "'<start_of_turn>model\\n'}}{% endif %}");
  expect_refused("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                 "'<|im_end|>' + ' '}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}");
  expect_refused("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ "
                 "'<|im_start|>system\\n' + date + '<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + "
                 "'\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ "
                 "'<|im_start|>assistant\\n' }}{% endif %}");
  expect_refused("");
  // A tokenizer without a template.
  const auto gpt2 = tp::text::Tokenizer::from_directory(text_golden + "/gpt2");
  EXPECT_THROW((void)tp::text::ChatTemplate::from_tokenizer(gpt2, "gpt2"), tp::InvalidArgument);
}

TEST(ChatTemplate, MistralRefusesWhatItsTemplateRaisesOn) {
  const auto tok = tp::text::Tokenizer::from_directory(chat_golden + "/mistral-chat");
  const auto chat = tp::text::ChatTemplate::from_tokenizer(tok, "mistral-chat");
  EXPECT_THROW((void)chat.render({{"system", "be brief"}, {"user", "hi"}}), tp::InvalidArgument);
  EXPECT_THROW((void)chat.render({{"user", "hi"}, {"user", "again"}}), tp::InvalidArgument);
}

}  // namespace
