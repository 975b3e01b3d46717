// tp::text::Tokenizer against the `tokenizers` package: for each family of tests/text/golden/
// (written by tests/text/generate.py), every string's ids with and without special tokens, the
// decoded text with and without special tokens (which is the string itself wherever the
// reference's tokenizer is lossless), the decoding of id sequences no encoding produced, the
// vocabulary size and the special tokens.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <tp/text/tokenizer.hpp>
#include <vector>

namespace {

const std::string golden_dir = TP_TEXT_GOLDEN_DIR;

std::string from_hex(const std::string& hex) {
  std::string out;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2) out += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
  return out;
}

std::string ids_text(const std::vector<std::int64_t>& ids) { return fmt::format("[{}]", fmt::join(ids, ", ")); }

/// Checks every case of one family; reports the first few differences in full.
void check_family(const std::string& family) {
  const std::string dir = golden_dir + "/" + family;
  std::ifstream in(dir + "/cases.json");
  ASSERT_TRUE(in) << dir << "/cases.json";
  const nlohmann::json golden = nlohmann::json::parse(in);
  const tp::text::Tokenizer tok = tp::text::Tokenizer::from_directory(dir);

  EXPECT_EQ(tok.vocab_size(), golden["vocab_size"].get<std::int64_t>());
  const auto& specials = golden["special_tokens"];
  const auto check_role = [&](const char* name, const std::optional<tp::text::SpecialToken>& got) {
    if (!specials.contains(name)) {
      // Without a tokenizer_config.json tp knows only unk, from the model; transformers was not asked.
      if (!specials.empty() || std::string(name) != "unk") EXPECT_FALSE(got) << family << " " << name;
      return;
    }
    ASSERT_TRUE(got) << family << " " << name;
    EXPECT_EQ(got->content, specials[name][0].get<std::string>()) << family << " " << name;
    EXPECT_EQ(got->id, specials[name][1].get<std::int64_t>()) << family << " " << name;
  };
  check_role("bos", tok.special_tokens().bos);
  check_role("eos", tok.special_tokens().eos);
  check_role("pad", tok.special_tokens().pad);
  check_role("unk", tok.special_tokens().unk);

  std::set<std::int64_t> added;
  for (const auto& t : tok.added_tokens()) added.insert(t.id);
  int failures = 0, cases = 0, lossless = 0;
  for (std::size_t i = 0; i < golden["cases"].size(); ++i) {
    const auto& c = golden["cases"][i];
    const std::string text = c["text"].get<std::string>();
    const std::string input = c.contains("hex") ? from_hex(c["hex"].get<std::string>()) : text;
    if (c.contains("hex")) EXPECT_EQ(tp::text::unicode::to_valid_utf8(input), text) << family << " case " << i;
    const auto ids = c["ids"].get<std::vector<std::int64_t>>();
    const auto plain = c.contains("plain") ? c["plain"].get<std::vector<std::int64_t>>() : ids;
    const auto got = tok.encode(input, true);
    const auto got_plain = tok.encode(input, false);
    const std::string decoded = c.value("decoded", text), skipped = c.value("skipped", text);
    const std::string got_decoded = tok.decode(got_plain, false), got_skipped = tok.decode(got, true);
    bool ok = got == ids && got_plain == plain && got_decoded == decoded && got_skipped == skipped;
    const bool has_added = std::any_of(plain.begin(), plain.end(), [&](std::int64_t id) { return added.count(id) > 0; });
    if (i < 40 || has_added) ok = ok && tok.decode(got, false) == c.value("full", text);
    ++cases;
    lossless += !c.contains("decoded") && got_decoded == text;
    if (!ok && ++failures <= 5)
      ADD_FAILURE() << family << " case " << i << ": " << nlohmann::json(text).dump() << "\n  ids      " << ids_text(got)
                    << "\n  expected " << ids_text(ids) << "\n  plain    " << ids_text(got_plain) << "\n  expected "
                    << ids_text(plain) << "\n  decoded  " << nlohmann::json(got_decoded).dump() << "\n  expected "
                    << nlohmann::json(decoded).dump() << "\n  skipped  " << nlohmann::json(got_skipped).dump()
                    << "\n  expected " << nlohmann::json(skipped).dump();
  }
  EXPECT_EQ(failures, 0) << family << ": " << failures << " of " << cases << " cases differ from the reference";
  // Decoding alone, of ids no encoding produced (random ids, text cut in the middle of a character).
  for (const auto& c : golden["decode_cases"]) {
    const auto ids = c["ids"].get<std::vector<std::int64_t>>();
    EXPECT_EQ(tok.decode(ids, false), c["full"].get<std::string>()) << family << " decode " << ids_text(ids);
    EXPECT_EQ(tok.decode(ids, true), c["skipped"].get<std::string>()) << family << " decode " << ids_text(ids);
  }
  EXPECT_GE(golden["decode_cases"].size(), 20u) << family;
  EXPECT_GE(cases, 150) << family;
  std::printf("%s: %d cases, %d decode to the string itself\n", family.c_str(), cases, lossless);
}

TEST(TokenizerGolden, Gpt2) { check_family("gpt2"); }
TEST(TokenizerGolden, Llama3) { check_family("llama3"); }
TEST(TokenizerGolden, Qwen2) { check_family("qwen2"); }
TEST(TokenizerGolden, SmolLM2) { check_family("smollm2"); }
TEST(TokenizerGolden, Llama2) { check_family("llama2"); }
TEST(TokenizerGolden, Mistral) { check_family("mistral"); }
TEST(TokenizerGolden, BertCased) { check_family("bert-cased"); }
TEST(TokenizerGolden, BertUncased) { check_family("bert-uncased"); }
TEST(TokenizerGolden, Roberta) { check_family("roberta"); }
// The components no real family above uses (tests/text/README.md).
TEST(TokenizerGolden, CompositeBpe) { check_family("composite-bpe"); }
TEST(TokenizerGolden, CompositeWordPiece) { check_family("composite-wordpiece"); }

// Byte-level BPE without a normalizer loses nothing: every valid string comes back whole.
TEST(TokenizerGolden, ByteLevelRoundTripsEveryValidString) {
  for (const std::string family : {"gpt2", "llama3", "smollm2"}) {
    const tp::text::Tokenizer tok = tp::text::Tokenizer::from_directory(golden_dir + "/" + family);
    std::ifstream in(golden_dir + "/" + family + "/cases.json");
    const nlohmann::json golden = nlohmann::json::parse(in);
    for (const auto& c : golden["cases"]) {
      const std::string text = c["text"].get<std::string>();
      EXPECT_EQ(tok.decode(tok.encode(text, false), false), text) << family;
    }
  }
}

TEST(TokenizerGolden, ChatTemplateAndItsTokens) {
  const auto qwen = tp::text::Tokenizer::from_directory(golden_dir + "/qwen2");
  ASSERT_TRUE(qwen.chat_template());
  EXPECT_NE(qwen.chat_template()->find("<|im_start|>"), std::string::npos);
  ASSERT_EQ(qwen.additional_special_tokens().size(), 2u);
  EXPECT_EQ(qwen.additional_special_tokens()[0].content, "<|im_start|>");
  EXPECT_EQ(qwen.additional_special_tokens()[0].id, qwen.token_to_id("<|im_start|>"));
  EXPECT_TRUE(qwen.is_special(*qwen.token_to_id("<|im_end|>")));
  const auto gpt2 = tp::text::Tokenizer::from_directory(golden_dir + "/gpt2");
  EXPECT_FALSE(gpt2.chat_template());
  EXPECT_EQ(gpt2.id_to_token(*gpt2.token_to_id("<|endoftext|>")), "<|endoftext|>");
}

}  // namespace
