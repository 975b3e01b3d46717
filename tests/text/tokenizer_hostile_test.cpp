// Tokenizer files that are broken or hostile, and components tp does not have: each refused with a
// tp::IoError naming the file, the place in it and what was wrong, never a crash, a hang or
// garbage ids.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <tp/text/tokenizer.hpp>

namespace {

using nlohmann::json;
using tp::text::Tokenizer;

/// A small valid byte-level BPE tokenizer: "a", "b", "ab", merges a+b.
json base() {
  return json::parse(R"({
    "version": "1.0", "truncation": null, "padding": null,
    "added_tokens": [{"id": 3, "content": "<eos>", "single_word": false, "lstrip": false, "rstrip": false,
                      "normalized": false, "special": true}],
    "normalizer": null,
    "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Isolated", "invert": false},
    "post_processor": null, "decoder": null,
    "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
              "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
              "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"]]}})");
}

/// Expects the text to be refused with an IoError whose message holds every one of `parts`.
void expect_text_refused(const std::string& text, std::initializer_list<std::string> parts) {
  try {
    Tokenizer::from_json(text, "hostile.json");
    ADD_FAILURE() << "accepted: " << text.substr(0, 300);
  } catch (const tp::IoError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("hostile.json"), std::string::npos) << what;
    for (const std::string& p : parts) EXPECT_NE(what.find(p), std::string::npos) << "missing \"" << p << "\" in: " << what;
  }
}
void expect_refused(const json& j, std::initializer_list<std::string> parts) { expect_text_refused(j.dump(), parts); }

TEST(TokenizerHostile, TheBaseIsAccepted) {
  const Tokenizer tok = Tokenizer::from_json(base().dump());
  EXPECT_EQ(tok.encode("ab ba<eos>"), (std::vector<std::int64_t>{2, 1, 0, 3}));  // the space is no token: dropped
}

TEST(TokenizerHostile, NotJsonOrWrongTypes) {
  expect_text_refused("{\"model\": ", {"not valid JSON"});
  expect_text_refused("[1, 2]", {"expected an object", "array"});
  expect_text_refused("{}", {"has no \"model\""});
  json j = base();
  j["model"]["vocab"] = json::array();
  expect_refused(j, {"model.vocab", "expected an object"});
  j = base();
  j["model"]["vocab"]["a"] = "zero";
  expect_refused(j, {"model.vocab[\"a\"]", "expected an integer"});
  j = base();
  j["model"]["byte_fallback"] = "yes";
  expect_refused(j, {"model.byte_fallback", "expected true or false"});
  j = base();
  j["version"] = "2.0";
  expect_refused(j, {"version", "2.0"});
  expect_text_refused(R"({"a": 1, "a": 2})", {"'a' appears twice"});
  expect_text_refused(std::string(100, '[') + std::string(100, ']'), {"deeper than 32"});
}

TEST(TokenizerHostile, IdsOutOfRangeOrDuplicated) {
  json j = base();
  j["model"]["vocab"]["b"] = -1;
  expect_refused(j, {"model.vocab[\"b\"]", "outside"});
  j = base();
  j["model"]["vocab"]["b"] = 1ll << 40;
  expect_refused(j, {"model.vocab[\"b\"]", "outside"});
  j = base();
  j["model"]["vocab"]["b"] = 0;
  expect_refused(j, {"both have id 0"});
  j = base();
  j["added_tokens"][0]["id"] = 7;
  expect_refused(j, {"added_tokens[0]", "\"<eos>\" has id 7", "3"});
  j = base();
  j["added_tokens"].push_back(j["added_tokens"][0]);
  expect_refused(j, {"added_tokens[1]", "appears twice"});
  j = base();
  j["added_tokens"][0]["content"] = std::string(5000, 'x');
  expect_refused(j, {"over the limit"});
}

TEST(TokenizerHostile, MergesNamingUnknownTokens) {
  json j = base();
  j["model"]["merges"].push_back({"a", "zz"});
  expect_refused(j, {"model.merges[1]", "\"zz\"", "not in the vocabulary"});
  j = base();
  j["model"]["merges"] = {"b a"};  // "ba" is no token
  expect_refused(j, {"model.merges[0]", "\"ba\""});
  j = base();
  j["model"]["merges"] = {"a b c"};
  expect_refused(j, {"model.merges[0]", "not two tokens"});
  j = base();
  j["model"]["merges"] = {json::array({"a"})};
  expect_refused(j, {"model.merges[0]", "pair"});
  j = base();
  j["model"]["dropout"] = 0.1;
  expect_refused(j, {"model.dropout", "deterministically"});
}

TEST(TokenizerHostile, UnsupportedComponentsByName) {
  json j = base();
  j["model"]["type"] = "Unigram";
  expect_refused(j, {"model", "\"Unigram\" is not supported"});
  j = base();
  j["normalizer"] = {{"type", "Precompiled"}, {"precompiled_charsmap", ""}};
  expect_refused(j, {"normalizer", "\"Precompiled\" is not supported"});
  j = base();
  j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", {{{"type", "UnicodeScripts"}}}}};
  expect_refused(j, {"pre_tokenizer.pretokenizers[0]", "\"UnicodeScripts\" is not supported"});
  j = base();
  j["decoder"] = {{"type", "CTC"}};
  expect_refused(j, {"decoder", "\"CTC\" is not supported"});
  j = base();
  j["post_processor"] = {{"type", "Mystery"}};
  expect_refused(j, {"post_processor", "\"Mystery\" is not supported"});
  j = base();
  j["post_processor"] = json::parse(R"({"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
      {"Sequence": {"id": "A", "type_id": 0}}], "pair": [], "special_tokens": {}})");
  expect_refused(j, {"post_processor.single[0].SpecialToken", "\"<s>\""});
  j = base();
  j["pre_tokenizer"]["behavior"] = "Sideways";
  expect_refused(j, {"pre_tokenizer.behavior", "Sideways"});
}

TEST(TokenizerHostile, PatternsThatDoNotCompileOrNeverEnd) {
  json j = base();
  j["pre_tokenizer"]["pattern"] = {{"Regex", "(unclosed"}};
  expect_refused(j, {"pre_tokenizer.pattern", "(unclosed", "does not compile"});
  // Catastrophic backtracking: the match limit ends it with an error, promptly.
  j = base();
  j["pre_tokenizer"]["pattern"] = {{"Regex", "(a|a)+$"}};
  const Tokenizer tok = Tokenizer::from_json(j.dump(), "hostile.json");
  const auto start = std::chrono::steady_clock::now();
  EXPECT_THROW(tok.encode(std::string(40, 'a') + "b"), tp::IoError);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(20));
}

TEST(TokenizerHostile, UnknownIdsAndMissingUnkToken) {
  const Tokenizer tok = Tokenizer::from_json(base().dump());
  EXPECT_THROW(tok.decode(std::vector<std::int64_t>{0, 99}), tp::InvalidArgument);
  EXPECT_THROW(tok.decode(std::vector<std::int64_t>{-1}), tp::InvalidArgument);
  json j = base();
  j["model"]["unk_token"] = "<unk>";  // not in the vocabulary: an error when first needed, as the reference
  const Tokenizer unk = Tokenizer::from_json(j.dump());
  EXPECT_EQ(unk.encode("ab"), (std::vector<std::int64_t>{2}));
  EXPECT_THROW(unk.encode("abc"), tp::IoError);
}

TEST(TokenizerHostile, ConfigNamingAMissingToken) {
  try {
    Tokenizer::from_json(base().dump(), "tokenizer.json", R"({"eos_token": "</s>"})", "cfg.json");
    ADD_FAILURE() << "accepted";
  } catch (const tp::IoError& e) {
    EXPECT_NE(std::string(e.what()).find("cfg.json: eos_token \"</s>\" is not a token"), std::string::npos) << e.what();
  }
  const Tokenizer ok = Tokenizer::from_json(base().dump(), "tokenizer.json",
                                            R"({"eos_token": {"content": "<eos>", "__type": "AddedToken"}})");
  ASSERT_TRUE(ok.special_tokens().eos);
  EXPECT_EQ(ok.special_tokens().eos->id, 3);
}

TEST(TokenizerHostile, FilesThatAreNotRegularOrTooLarge) {
  const auto dir = std::filesystem::temp_directory_path() / fmt::format("tp_tokenizer_hostile_{}", ::getpid());
  std::filesystem::create_directories(dir);
  const auto fifo = dir / "fifo.json";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_THROW(Tokenizer::from_file(fifo), tp::IoError);  // returns at once: no writer is waited for
  const auto big = dir / "big.json";
  { std::ofstream(big) << "{}"; }
  std::filesystem::resize_file(big, tp::max_json_file_bytes + 1);  // sparse: no disk used
  try {
    Tokenizer::from_file(big);
    ADD_FAILURE() << "accepted";
  } catch (const tp::IoError& e) {
    EXPECT_NE(std::string(e.what()).find("over the limit"), std::string::npos) << e.what();
  }
  EXPECT_THROW(Tokenizer::from_directory(dir / "missing"), tp::IoError);
  std::filesystem::remove_all(dir);
}

}  // namespace
