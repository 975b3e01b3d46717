/// Hostile and careless Hugging Face directories through open_hugging_face (issue 27), made here
/// at test time from the golden Llama checkpoint: files that are not regular files (a FIFO, a
/// directory, a device), JSON over the size or nesting bound, mistyped and absurd sizes, a config
/// whose layer count the tensors contradict, tensors the config leaves unused; and the writes:
/// config.json and save_hugging_face never write through a planted link, and a save replaces the
/// directory as one unit. Each case must end in a tp error naming the file and the key, in
/// seconds (a case that would hang is given 20 s and then unblocked and failed).
/// tests/io/hostile_directories_test.sh runs the same kind of directories through examples/generate.

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "common/harness.hpp"
#include "common/test_files.hpp"
#include "tp/models/hugging_face.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;

const fs::path golden = fs::path(TP_GOLDEN_DIR) / "llama";

nlohmann::json golden_config() {
  std::ifstream in(golden / "config.json");
  return nlohmann::json::parse(in);
}

/// A copy of the golden Llama directory; config.json left for the caller unless `config` is given.
fs::path llama_dir(const fs::path& root, const std::string& name, const nlohmann::json* config = nullptr) {
  const fs::path dir = root / name;
  fs::create_directories(dir);
  fs::copy_file(golden / "model.safetensors", dir / "model.safetensors");
  if (config) std::ofstream(dir / "config.json") << config->dump(1);
  return dir;
}

/// Copies the safetensors file `from` to `to` with one more F32 tensor of shape [1], `name`.
void with_extra_tensor(const fs::path& from, const fs::path& to, const std::string& name) {
  std::ifstream in(from, std::ios::binary);
  std::uint64_t length = 0;
  in.read(reinterpret_cast<char*>(&length), 8);
  std::string header(length, '\0');
  in.read(header.data(), static_cast<std::streamsize>(length));
  const std::string data(std::istreambuf_iterator<char>(in), {});
  nlohmann::json j = nlohmann::json::parse(header);
  j[name] = {{"dtype", "F32"}, {"shape", {1}}, {"data_offsets", {data.size(), data.size() + 4}}};
  const std::string text = j.dump();
  length = text.size();
  fs::remove(to);
  std::ofstream out(to, std::ios::binary);
  out.write(reinterpret_cast<const char*>(&length), 8);
  out << text << data;
  out.write("\0\0\0\0", 4);
}

/// Opens `dir` at world 1 on another thread and returns the error's message ("" if it loaded).
/// Gives it 20 s: past that, `unblock` runs (it opens a FIFO's other end) and the case fails.
std::string open_error(const fs::path& dir, const std::function<void()>& unblock = {}) {
  auto result = std::async(std::launch::async, [dir]() -> std::string {
    try {
      run_local(1, [&](std::shared_ptr<Communicator> comm) {
        const Context<Cpu> ctx(comm);
        models::open_hugging_face<float>(ctx, dir);
      });
    } catch (const Error& e) {
      return e.what();
    } catch (const std::exception& e) {
      return std::string("not a tp::Error: ") + e.what();
    }
    return "";
  });
  if (result.wait_for(std::chrono::seconds(20)) != std::future_status::ready) {
    if (unblock) unblock();
    ADD_FAILURE() << dir << ": still running after 20 s";
  }
  return result.get();
}

TEST(HuggingFaceHostile, FilesThatAreNotRegularFilesAreRefusedByName) {
  TP_LOCAL_ONLY();
  const fs::path root = test::test_dir();
  const fs::path fifo = llama_dir(root, "fifo");
  ASSERT_EQ(::mkfifo((fifo / "config.json").c_str(), 0644), 0);
  EXPECT_THAT(open_error(fifo, [&] { std::ofstream((fifo / "config.json").string()) << "{}"; }),
              AllOf(HasSubstr("fifo/config.json"), HasSubstr("is a FIFO")));
  const fs::path directory = llama_dir(root, "directory");
  fs::create_directory(directory / "config.json");
  EXPECT_THAT(open_error(directory), AllOf(HasSubstr("directory/config.json"), HasSubstr("is a directory")));
  const fs::path device = llama_dir(root, "device");
  fs::create_symlink("/dev/zero", device / "config.json");
  EXPECT_THAT(open_error(device), AllOf(HasSubstr("device/config.json"), HasSubstr("character device")));
  const fs::path missing = llama_dir(root, "missing");
  EXPECT_THAT(open_error(missing), AllOf(HasSubstr("missing/config.json"), HasSubstr("cannot open")));
}

TEST(HuggingFaceHostile, JsonPastItsBoundsIsRefusedBeforeItIsParsed) {
  TP_LOCAL_ONLY();
  const fs::path root = test::test_dir();
  const fs::path big = llama_dir(root, "big");
  {
    std::ofstream(big / "config.json") << golden_config().dump();
  }
  fs::resize_file(big / "config.json", max_json_file_bytes + 1);  // sparse: no disk used
  EXPECT_THAT(open_error(big), AllOf(HasSubstr("big/config.json"), HasSubstr("over the limit of 67108864 bytes")));
  // 10 MB of '[': 5M levels, accepted after 8.5 s at 1 GB before the bound.
  const fs::path deep = llama_dir(root, "deep");
  std::ofstream(deep / "config.json") << std::string(10'000'000, '[');
  EXPECT_THAT(open_error(deep), AllOf(HasSubstr("deep/config.json"), HasSubstr("deeper than 32 levels")));
  const fs::path twice = llama_dir(root, "twice");
  std::ofstream(twice / "config.json") << R"({"model_type": "llama", "hidden_size": 24, "hidden_size": 48})";
  EXPECT_THAT(open_error(twice), AllOf(HasSubstr("twice/config.json"), HasSubstr("'hidden_size' appears twice")));
  const fs::path garbage = llama_dir(root, "garbage");
  std::ofstream(garbage / "config.json") << "{ not json";
  EXPECT_THAT(open_error(garbage), AllOf(HasSubstr("garbage/config.json"), HasSubstr("not valid JSON")));
  const fs::path array = llama_dir(root, "array");
  std::ofstream(array / "config.json") << "[1, 2]";
  EXPECT_THAT(open_error(array), AllOf(HasSubstr("array/config.json"), HasSubstr("expected a JSON object"),
                                       HasSubstr("got array")));
}

TEST(HuggingFaceHostile, MistypedAndAbsurdSizesNameTheKey) {
  TP_LOCAL_ONLY();
  const fs::path root = test::test_dir();
  struct Case {
    const char* name;
    const char* key;
    nlohmann::json value;
    std::vector<std::string> message;
  };
  const Case cases[] = {
      {"string", "num_attention_heads", "4", {"num_attention_heads: expected an integer, got string \"4\""}},
      {"float", "hidden_size", 24.5, {"hidden_size: expected an integer, got number 24.5"}},
      {"hidden", "hidden_size", std::int64_t{1} << 40, {"hidden_size: 1099511627776 is above 2147483647"}},
      {"vocab", "vocab_size", std::int64_t{1} << 40, {"vocab_size: 1099511627776 is above 2147483647"}},
      {"ffn", "intermediate_size", std::int64_t{1} << 62, {"intermediate_size: 4611686018427387904 is above 2147483647"}},
      {"head_dim", "head_dim", std::int64_t{1} << 40, {"head_dim: 1099511627776 is above 2147483647"}},
      {"huge", "hidden_size", std::uint64_t{1} << 63, {"hidden_size: 9223372036854775808 is above 2147483647"}},
      // Within the bound, but not what the tensors hold: refused before the model is built.
      {"layers", "num_hidden_layers", 100000, {"gives 100000 layers", "the checkpoint holds 2"}},
      {"wide", "hidden_size", 1 << 20, {"model.embed_tokens.weight", "[67, 24]", "gives [67, 1048576]"}},
      {"positions", "max_position_embeddings", 2'000'000'000, {}},  // rotary: nothing is sized by it
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    nlohmann::json config = golden_config();
    config[c.key] = c.value;
    if (std::string(c.name) == "wide") config["head_dim"] = 6;
    const fs::path dir = llama_dir(root, c.name, &config);
    const auto start = std::chrono::steady_clock::now();
    const std::string error = open_error(dir);
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
    if (c.message.empty()) {
      EXPECT_EQ(error, "");
      continue;
    }
    EXPECT_THAT(error, HasSubstr(c.name == std::string("layers") || c.name == std::string("wide")
                                     ? (dir / "model.safetensors").string()
                                     : (dir / "config.json").string()));
    for (const auto& m : c.message) EXPECT_THAT(error, HasSubstr(m));
  }
}

TEST(HuggingFaceHostile, TensorsTheConfigDoesNotUseAreRefusedUnlessAllowed) {
  TP_LOCAL_ONLY();
  const fs::path root = test::test_dir();
  nlohmann::json config = golden_config();
  config["num_hidden_layers"] = 1;  // the file holds 2
  const fs::path dir = llama_dir(root, "fewer", &config);
  EXPECT_THAT(open_error(dir), AllOf(HasSubstr("fewer/model.safetensors"), HasSubstr("gives 1 layers"),
                                     HasSubstr("holds 2"), HasSubstr("allow_unused_tensors")));
  run_local(1, [&](std::shared_ptr<Communicator> comm) {
    const Context<Cpu> ctx(comm);
    const auto model = models::open_hugging_face<float>(ctx, dir, {.allow_unused_tensors = true});
    EXPECT_EQ(model->config().layers, 1);
  });
  // The right layer count, but one tensor more in the file than the config uses: named.
  const nlohmann::json same = golden_config();
  const fs::path extra = llama_dir(root, "extra", &same);
  with_extra_tensor(golden / "model.safetensors", extra / "model.safetensors", "model.layers.0.mlp.extra.weight");
  EXPECT_THAT(open_error(extra), AllOf(HasSubstr("extra/model.safetensors"),
                                       HasSubstr("tensor 'model.layers.0.mlp.extra.weight' is not used")));
}

TEST(HuggingFaceHostile, WritesNeverGoThroughAPlantedLink) {
  TP_LOCAL_ONLY();
  const fs::path root = test::test_dir();
  const fs::path victim = root / "victim.txt";
  std::ofstream(victim) << "precious";
  auto victim_text = [&] {
    std::ifstream in(victim);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  // write_hugging_face_config over a link.
  const auto config = models::read_hugging_face_config(golden / "config.json");
  fs::create_directories(root / "cfg");
  fs::create_symlink(victim, root / "cfg" / "config.json");
  models::write_hugging_face_config(config, root / "cfg" / "config.json");
  EXPECT_EQ(victim_text(), "precious");
  EXPECT_FALSE(fs::is_symlink(root / "cfg" / "config.json"));
  EXPECT_EQ(models::read_hugging_face_config(root / "cfg" / "config.json").hidden, config.hidden);

  // save_hugging_face into a directory whose config.json and model.safetensors are links, with a
  // tokenizer.json of the user's: the links are replaced, the victim untouched, the tokenizer kept.
  const fs::path out = root / "out";
  fs::create_directories(out);
  fs::create_symlink(victim, out / "config.json");
  fs::create_symlink(victim, out / "model.safetensors");
  std::ofstream(out / "tokenizer.json") << "{}";
  const fs::path nested = root / "nested";
  fs::create_directories(nested / "sub");
  run_local(2, [&](std::shared_ptr<Communicator> comm) {
    const Context<Cpu> ctx(comm);
    auto model = models::open_hugging_face<float>(ctx, golden);
    models::save_hugging_face(*comm, *model, out);
    // Caught here rather than by EXPECT_THAT, which calls a failing callable again to explain it
    // (a collective call on one rank only).
    std::string error;
    try {
      models::save_hugging_face(*comm, *model, nested);
    } catch (const IoError& e) {
      error = e.what();
    }
    EXPECT_THAT(error, AllOf(HasSubstr("nested"), HasSubstr(comm->rank() == 0 ? "'sub'" : "rank 0 could not start")));
  });
  EXPECT_EQ(victim_text(), "precious");
  EXPECT_FALSE(fs::is_symlink(out / "config.json"));
  EXPECT_FALSE(fs::is_symlink(out / "model.safetensors"));
  EXPECT_TRUE(fs::exists(out / "tokenizer.json"));
  EXPECT_TRUE(fs::exists(nested / "sub"));
  for (const auto& entry : fs::directory_iterator(root))
    EXPECT_EQ(entry.path().filename().string().find(".tmp-"), std::string::npos) << entry.path();
  run_local(1, [&](std::shared_ptr<Communicator> comm) {
    const Context<Cpu> ctx(comm);
    EXPECT_EQ(models::open_hugging_face<float>(ctx, out)->config().hidden, config.hidden);
  });
}

}  // namespace
}  // namespace tp
