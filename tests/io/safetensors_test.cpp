/// Safetensors checkpoints: a file saved at one world size loads at every other and gives the
/// unsharded reference's outputs; each rank reads only its block; every kind of corrupt or hostile
/// file is refused with an error naming the file and the tensor.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "common/harness.hpp"
#include "common/test_files.hpp"
#include "common/reference.hpp"
#include "tp/io/safetensors.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;
using test::on_ranks;

/// A directory for this test (and harness and world size: tests of different harnesses may run
/// at once), emptied first. Every rank computes the same path.
fs::path test_dir(int world = 0) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const fs::path dir = fs::temp_directory_path() /
                       fmt::format("tp_{}_{}_{}_w{}", test::harness_backend(), info->test_suite_name(), info->name(), world);
  fs::create_directories(dir);
  return dir;
}

/// Writes a file by hand: 8-byte length, header text, then the data bytes.
void write_raw(const fs::path& path, const std::string& header, const std::string& data,
               std::optional<std::uint64_t> header_len = std::nullopt) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  const std::uint64_t len = header_len.value_or(header.size());
  out.write(reinterpret_cast<const char*>(&len), 8);
  out << header << data;
}

std::string bytes_of(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

/// A column-parallel / row-parallel pair, the shape of an MLP: 7 -> 10 -> 5, 10 splits unevenly.
struct Pair {
  static constexpr std::int64_t in = 7, hidden = 10, out = 5;
  ColumnParallelLinear<float> fc1;
  RowParallelLinear<float> fc2;
  Pair(std::shared_ptr<Communicator> comm, std::uint64_t seed)
      : fc1(Context<>(comm), in, hidden, {.name = "mlp.fc1", .seed = seed}),
        fc2(Context<>(comm), hidden, out, {.name = "mlp.fc2", .seed = seed}) {}
  std::vector<Parameter<float>> parameters() {
    auto ps = fc1.parameters();
    for (auto& p : fc2.parameters()) ps.push_back(p);
    return ps;
  }
  ref::Matrix forward(const Tensor<float, Cpu>& x) {
    const auto& h = fc1.forward(x.view());
    return ref::from_view<float>(fc2.forward(h.view()).view());
  }
};

/// The full tensors of a file, as the reference sees them.
ref::Matrix read_full(const SafetensorsFile& file, const std::string& name) {
  const auto& t = file.tensor(name);
  Tensor<float, Cpu> m(t.rows(), t.cols());
  file.read_block(name, 0, 0, m.view());
  return ref::from_view<float>(m.view());
}

ref::Matrix reference_forward(const fs::path& path, const ref::Matrix& x) {
  const SafetensorsCheckpoint ckpt(path);
  auto full = [&](const std::string& name) { return read_full(ckpt.file_of(name), name); };
  const auto h = ref::add_bias(ref::matmul(x, false, full("mlp.fc1.weight"), true), full("mlp.fc1.bias"));
  return ref::add_bias(ref::matmul(h, false, full("mlp.fc2.weight"), true), full("mlp.fc2.bias"));
}

/// Random, non-zero biases (the layers start them at zero).
void randomize_biases(Pair& pair, std::uint64_t seed) {
  for (auto& p : pair.parameters())
    if (p.full_rows == 1) init_normal(Cpu(), p, seed, 0.5);
}

TEST(Safetensors, SavedAtEveryWorldSizeLoadsAtEveryOtherWithTheSameOutputs) {
  TP_LOCAL_ONLY();
  const fs::path dir = test_dir();
  const auto x = ref::random_matrix<float>(6, Pair::in, ref::test_seed(1));
  const auto xt = ref::to_tensor<float>(x);
  for (int save_world = 1; save_world <= 4; ++save_world) {
    const fs::path path = dir / fmt::format("saved_at_{}.safetensors", save_world);
    ref::Matrix saved_y;
    run_local(save_world, [&](std::shared_ptr<Communicator> comm) {
      Pair pair(comm, 11 + save_world);  // a different model for each save
      randomize_biases(pair, 5 + save_world);
      const auto y = pair.forward(xt);
      save_safetensors<float>(*comm, Cpu(), pair.parameters(), path, {{"saved_at", std::to_string(save_world)}});
      if (comm->rank() == 0) saved_y = y;
    });
    const ref::Matrix want = reference_forward(path, x);
    EXPECT_LE(ref::rel_error(saved_y, want), ref::tolerance<float>);
    EXPECT_EQ(SafetensorsFile(path).metadata().at("saved_at"), std::to_string(save_world));
    for (int load_world = 1; load_world <= 4; ++load_world)
      run_local(load_world, [&](std::shared_ptr<Communicator> comm) {
        SCOPED_TRACE(fmt::format("saved at {} loaded at {} rank {}", save_world, load_world, comm->rank()));
        Pair pair(comm, 999);  // other weights, all replaced by the load
        load_safetensors<float>(Cpu(), pair.parameters(), path);
        TP_EXPECT_CLOSE(float, pair.forward(xt), want);
      });
  }
}

TEST(Safetensors, EveryRankSavesAndReadsBackExactlyItsBlock) {
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    const fs::path path = test_dir(comm->size()) / "pair.safetensors";
    Pair pair(comm, 3);
    randomize_biases(pair, 4);
    save_safetensors<float>(*comm, Cpu(), pair.parameters(), path);
    const SafetensorsFile file(path);
    EXPECT_EQ(file.header().data_start % 8, 0u);  // the data section is aligned
    for (const auto& p : pair.parameters()) {
      const auto full = read_full(file, p.name);
      EXPECT_EQ(full.rows, p.full_rows);
      EXPECT_EQ(full.cols, p.full_cols);
      // bitwise: float -> double -> float is exact
      EXPECT_EQ(full.block(p.rows.begin, p.cols.begin, p.rows.size(), p.cols.size()).data,
                ref::from_view<float>(ConstView<float>(p.value)).data)
          << p.name;
    }
    // What the file holds does not depend on the world size: the initializer's full tensor.
    Tensor<float, Cpu> whole(Pair::hidden, Pair::in), grad(Pair::hidden, Pair::in);
    init_uniform(Cpu(), Parameter<float>{"mlp.fc1.weight", whole.view(), grad.view(), Pair::hidden, Pair::in, {0, Pair::hidden}, {0, Pair::in}},
                 3, 1.0 / std::sqrt(7.0));
    EXPECT_EQ(read_full(file, "mlp.fc1.weight").data, ref::from_view<float>(whole.view()).data);
    comm->barrier();  // nobody loads the next test's file early
  });
}

TEST(Safetensors, LoadsBf16F16AndF64IntoFloatAndF32IntoDouble) {
  TP_LOCAL_ONLY();
  const fs::path path = test_dir() / "dtypes.safetensors";
  // 1.5, -2, 0.333984375 (bf16 0x3EAB), 65504 and a subnormal in f16, 1/3 in f64.
  const std::uint16_t bf16[] = {0x3FC0, 0xC000, 0x3EAB};
  const std::uint16_t f16[] = {0x3E00, 0xC000, 0x7BFF, 0x0001};
  const double f64[] = {1.0 / 3.0, -1e300};
  const float f32[] = {0.1f, 0.2f};
  std::string data(reinterpret_cast<const char*>(bf16), 6);
  data.append(reinterpret_cast<const char*>(f16), 8);
  data.append(reinterpret_cast<const char*>(f64), 16);
  data.append(reinterpret_cast<const char*>(f32), 8);
  write_raw(path,
            R"({"b":{"dtype":"BF16","shape":[3],"data_offsets":[0,6]},"h":{"dtype":"F16","shape":[1,4],"data_offsets":[6,14]},)"
            R"("d":{"dtype":"F64","shape":[2],"data_offsets":[14,30]},"f":{"dtype":"F32","shape":[1,2],"data_offsets":[30,38]}})",
            data);
  const SafetensorsFile file(path);
  float b[3], h[4], d[2];
  file.read_block("b", 0, 0, MatrixView<float>(b, 1, 3));
  file.read_block("h", 0, 0, MatrixView<float>(h, 1, 4));
  file.read_block("d", 0, 0, MatrixView<float>(d, 1, 2));
  EXPECT_EQ(b[0], 1.5f);
  EXPECT_EQ(b[1], -2.f);
  EXPECT_EQ(b[2], 0.333984375f);
  EXPECT_EQ(h[0], 1.5f);
  EXPECT_EQ(h[1], -2.f);
  EXPECT_EQ(h[2], 65504.f);
  EXPECT_EQ(h[3], 0x1p-24f);
  EXPECT_EQ(d[0], static_cast<float>(1.0 / 3.0));
  EXPECT_TRUE(std::isinf(d[1]));
  double f[2];
  file.read_block("f", 0, 0, MatrixView<double>(f, 1, 2));
  EXPECT_EQ(f[0], double(0.1f));
  EXPECT_EQ(f[1], double(0.2f));
}

TEST(Safetensors, ReadsColumnBlocksAndRowBlocks) {
  TP_LOCAL_ONLY();
  const fs::path path = test_dir() / "blocks.safetensors";
  std::vector<float> v(5 * 7);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i) + 0.25f;
  write_raw(path, R"({"w":{"dtype":"F32","shape":[5,7],"data_offsets":[0,140]}})", bytes_of(v));
  const SafetensorsFile file(path);
  Tensor<float, Cpu> cols(5, 3), rows(2, 7), both(2, 2);
  file.read_block("w", 0, 4, cols.view());
  file.read_block("w", 3, 0, rows.view());
  file.read_block("w", 1, 5, both.view());
  EXPECT_EQ(cols(4, 2), v[4 * 7 + 6]);
  EXPECT_EQ(cols(0, 0), v[4]);
  EXPECT_EQ(rows(1, 6), v[34]);
  EXPECT_EQ(both(1, 1), v[2 * 7 + 6]);
  EXPECT_THROW(file.read_block("w", 4, 0, rows.view()), InvalidArgument);  // rows 4..6 of 5
}

/// Bytes this process has read through read(2)/pread(2) so far (Linux), or -1.
std::int64_t bytes_read() {
  std::ifstream io("/proc/self/io");
  std::string key;
  std::int64_t value = -1;
  while (io >> key >> value)
    if (key == "rchar:") return value;
  return -1;
}

TEST(Safetensors, EachRankReadsOnlyItsBlock) {
  TP_LOCAL_ONLY();
  const fs::path path = test_dir() / "big.safetensors";
  constexpr std::int64_t rows = 512, cols = 1024;  // 2 MiB of float32
  std::vector<float> v(rows * cols);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i % 1000) * 0.5f;
  write_raw(path, fmt::format(R"({{"w":{{"dtype":"F32","shape":[{},{}],"data_offsets":[0,{}]}}}})", rows, cols, v.size() * 4), bytes_of(v));
  if (bytes_read() < 0) GTEST_SKIP() << "no /proc/self/io";
  for (bool by_columns : {false, true}) {
    SCOPED_TRACE(by_columns ? "column block" : "row block");
    // A quarter of the tensor, as rank 2 of 4 holds it.
    const Range r = by_columns ? Range{0, rows} : partition(rows, 4, 2), c = by_columns ? partition(cols, 4, 2) : Range{0, cols};
    Tensor<float, Cpu> value(r.size(), c.size()), grad(r.size(), c.size());
    const Parameter<float> p{"w", value.view(), grad.view(), rows, cols, r, c};
    const SafetensorsCheckpoint checkpoint(path);
    const std::int64_t before = bytes_read();
    load_parameter(Cpu(), p, checkpoint);
    const std::int64_t read = bytes_read() - before;
    // the block's bytes, plus the few hundred that reading /proc/self/io itself costs
    EXPECT_GE(read, r.size() * c.size() * 4);
    EXPECT_LE(read, r.size() * c.size() * 4 + 1024) << "bytes read for a " << r.size() << "x" << c.size() << " block";
    EXPECT_EQ(value(r.size() - 1, c.size() - 1), v[(r.end - 1) * cols + c.end - 1]);
    EXPECT_EQ(value(0, 0), v[r.begin * cols + c.begin]);
  }
}

TEST(Safetensors, LoadsThroughAHuggingFaceIndex) {
  TP_LOCAL_ONLY();
  const fs::path dir = test_dir();
  run_local(2, [&](std::shared_ptr<Communicator> comm) {
    Pair pair(comm, 21);
    randomize_biases(pair, 22);
    auto ps = pair.parameters();
    // fc1 in one file, fc2 in another, as a sharded Hugging Face checkpoint splits a model.
    save_safetensors<float>(*comm, Cpu(), std::span<const Parameter<float>>(ps.data(), 2), dir / "part-1.safetensors");
    save_safetensors<float>(*comm, Cpu(), std::span<const Parameter<float>>(ps.data() + 2, 2), dir / "part-2.safetensors");
  });
  std::ofstream(dir / "model.safetensors.index.json")
      << R"({"metadata":{"total_size":0},"weight_map":{"mlp.fc1.weight":"part-1.safetensors","mlp.fc1.bias":"part-1.safetensors",)"
      << R"("mlp.fc2.weight":"part-2.safetensors","mlp.fc2.bias":"part-2.safetensors"}})";
  const auto x = ref::random_matrix<float>(3, Pair::in, ref::test_seed(1));
  const ref::Matrix want = reference_forward(dir / "model.safetensors.index.json", x);
  EXPECT_THROW(reference_forward(dir / "part-1.safetensors", x), IoError);  // fc2 is in the other file
  const auto xt = ref::to_tensor<float>(x);
  for (int world = 1; world <= 4; ++world)
    run_local(world, [&](std::shared_ptr<Communicator> comm) {
      Pair pair(comm, 999);
      load_safetensors<float>(Cpu(), pair.parameters(), dir / "model.safetensors.index.json");
      TP_EXPECT_CLOSE(float, pair.forward(xt), want);
    });
  // An index that sends a tensor out of its directory, or to a file without it, is refused.
  std::ofstream(dir / "escape.json") << R"({"weight_map":{"mlp.fc1.weight":"../part-1.safetensors"}})";
  EXPECT_THAT([&] { SafetensorsCheckpoint c(dir / "escape.json"); },
              ::testing::ThrowsMessage<IoError>(AllOf(HasSubstr("escape.json"), HasSubstr("mlp.fc1.weight"))));
  std::ofstream(dir / "wrong.json") << R"({"weight_map":{"mlp.fc1.weight":"part-2.safetensors"}})";
  EXPECT_THAT([&] { SafetensorsCheckpoint c(dir / "wrong.json"); },
              ::testing::ThrowsMessage<IoError>(AllOf(HasSubstr("wrong.json"), HasSubstr("mlp.fc1.weight"))));
  std::ofstream(dir / "broken.json") << R"({"weight_map":)";
  EXPECT_THROW(SafetensorsCheckpoint(dir / "broken.json"), IoError);
}

/// A hostile or corrupt file: the header (or the length prefix) and the data, and what the error
/// must name.
struct BadFile {
  const char* what;
  std::string header;
  std::size_t data_bytes;
  std::optional<std::uint64_t> header_len;
  std::vector<std::string> message;  ///< substrings besides the file name
};

TEST(Safetensors, RefusesCorruptTruncatedAndHostileFiles) {
  TP_LOCAL_ONLY();
  const fs::path dir = test_dir();
  const std::string ok_w = R"("w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]})";
  const std::vector<BadFile> cases = {
      {"header length past the end", "{" + ok_w + "}", 24, 1000, {"header length 1000 runs past the end"}},
      {"huge header length", "{" + ok_w + "}", 24, std::uint64_t{1} << 62, {"runs past the end"}},
      {"truncated data", "{" + ok_w + "}", 20, std::nullopt, {"'w'", "outside the 20 data bytes"}},
      {"offset past the end", R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[24,48]}})", 24, std::nullopt, {"'w'", "[24, 48]"}},
      {"offsets reversed", R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", 24, std::nullopt, {"'w'", "[8, 0]"}},
      {"overlapping tensors", "{" + ok_w + R"(,"v":{"dtype":"F32","shape":[2],"data_offsets":[16,24]}})", 24, std::nullopt, {"'w'", "'v'", "overlap"}},
      {"overlap hidden behind an empty tensor", R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", 16, std::nullopt, {"'a'", "'b'", "overlap"}},
      {"unknown dtype", R"({"w":{"dtype":"F33","shape":[2,3],"data_offsets":[0,24]}})", 24, std::nullopt, {"'w'", "unknown dtype 'F33'"}},
      {"bytes not matching the shape", R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,24]}})", 24, std::nullopt, {"'w'", "shape [2, 2]", "span 24 bytes"}},
      {"shape overflows", R"({"w":{"dtype":"F64","shape":[4294967296,4294967296,16],"data_offsets":[0,24]}})", 24, std::nullopt, {"'w'", "span 24 bytes"}},
      {"negative dimension", R"({"w":{"dtype":"F32","shape":[-2,3],"data_offsets":[0,24]}})", 24, std::nullopt, {"'w'", "-2"}},
      {"fractional offset", R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24.0]}})", 24, std::nullopt, {"'w'", "data offset 24.0"}},
      {"missing offsets", R"({"w":{"dtype":"F32","shape":[2,3]}})", 24, std::nullopt, {"'w'", "data_offsets"}},
      {"dtype not a string", R"({"w":{"dtype":4,"shape":[2,3],"data_offsets":[0,24]}})", 24, std::nullopt, {"'w'", "dtype"}},
      {"duplicate tensor", "{" + ok_w + "," + ok_w + "}", 24, std::nullopt, {"'w' appears twice"}},
      {"not JSON", "{\"w\": [1, 2", 24, std::nullopt, {"not valid JSON"}},
      {"not an object", "[1, 2, 3]", 24, std::nullopt, {"not a JSON object"}},
      {"deeply nested", std::string(500, '[') + std::string(500, ']'), 0, std::nullopt, {"deeper"}},
      {"metadata not strings", "{" + ok_w + R"(,"__metadata__":{"step":3}})", 24, std::nullopt, {"'step'", "not a string"}},
      {"tensor not an object", R"({"w":[1,2]})", 24, std::nullopt, {"'w'", "not an object"}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    const fs::path path = dir / "bad.safetensors";
    write_raw(path, c.header, std::string(c.data_bytes, '\x01'), c.header_len);
    try {
      SafetensorsFile file(path);
      ADD_FAILURE() << "no error";
    } catch (const IoError& e) {
      EXPECT_THAT(e.what(), HasSubstr(path.string()));
      for (const auto& m : c.message) EXPECT_THAT(e.what(), HasSubstr(m));
    }
  }
  // Shorter than the length prefix, and no file at all.
  {
    std::ofstream(dir / "short.safetensors") << "abc";
    EXPECT_THAT([&] { SafetensorsFile f(dir / "short.safetensors"); },
                ::testing::ThrowsMessage<IoError>(AllOf(HasSubstr("short.safetensors"), HasSubstr("too short"))));
    EXPECT_THAT([&] { SafetensorsFile f(dir / "absent.safetensors"); },
                ::testing::ThrowsMessage<IoError>(HasSubstr("absent.safetensors: cannot open")));
  }
}

TEST(Safetensors, RefusesMissingTensorsAndShapesThatDoNotFitTheLayer) {
  TP_LOCAL_ONLY();
  const fs::path dir = test_dir();
  run_local(2, [&](std::shared_ptr<Communicator> comm) {
    Pair pair(comm, 1);
    save_safetensors<float>(*comm, Cpu(), pair.parameters(), dir / "pair.safetensors");
    // A layer with another hidden size: fc1.weight is 10x7 in the file, 12x7 in the layer.
    ColumnParallelLinear<float> wide(Context<>(comm), Pair::in, 12, {.name = "mlp.fc1"});
    EXPECT_THAT([&] { load_safetensors<float>(Cpu(), wide.parameters(), dir / "pair.safetensors"); },
                ::testing::ThrowsMessage<InvalidArgument>(AllOf(HasSubstr("pair.safetensors"), HasSubstr("'mlp.fc1.weight'"),
                                                                HasSubstr("[10, 7]"), HasSubstr("12x7"))));
    ColumnParallelLinear<float> other(Context<>(comm), Pair::in, Pair::hidden, {.name = "attn.qkv"});
    EXPECT_THAT([&] { load_safetensors<float>(Cpu(), other.parameters(), dir / "pair.safetensors"); },
                ::testing::ThrowsMessage<IoError>(AllOf(HasSubstr("pair.safetensors"), HasSubstr("no tensor 'attn.qkv.weight'"))));
  });
  // A 1-D [n] vector fits a [1, n] bias, as Hugging Face stores biases.
  write_raw(dir / "vec.safetensors", R"({"x.bias":{"dtype":"F32","shape":[10],"data_offsets":[0,40]},"x.weight":{"dtype":"F32","shape":[10,1],"data_offsets":[40,80]}})",
            bytes_of(std::vector<float>(20, 0.5f)));
  run_local(3, [&](std::shared_ptr<Communicator> comm) {
    ColumnParallelLinear<float> x(Context<>(comm), 1, 10, {.name = "x"});
    load_safetensors<float>(Cpu(), x.parameters(), dir / "vec.safetensors");
    for (std::int64_t c = 0; c < x.bias().cols; ++c) EXPECT_EQ(x.bias()(0, c), 0.5f);
  });
}

TEST(Safetensors, SaveRefusesParameterListsThatDifferAcrossRanks) {
  TP_LOCAL_ONLY();
  const fs::path dir = test_dir();
  EXPECT_THROW(run_local(2, [&](std::shared_ptr<Communicator> comm) {
    ColumnParallelLinear<float> fc(Context<>(comm), 4, 6, {.name = comm->rank() == 0 ? "a" : "b"});
    try {
      save_safetensors<float>(*comm, Cpu(), fc.parameters(), dir / "x.safetensors");
    } catch (const InvalidArgument& e) {
      EXPECT_THAT(e.what(), HasSubstr("different parameter lists"));
      throw;
    }
  }), InvalidArgument);
  EXPECT_FALSE(fs::exists(dir / "x.safetensors"));
  run_local(1, [&](std::shared_ptr<Communicator> comm) {
    ColumnParallelLinear<float> fc(Context<>(comm), 4, 6);
    EXPECT_THAT([&] { save_safetensors<float>(*comm, Cpu(), fc.parameters(), dir / "no" / "such" / "dir.safetensors"); },
                ::testing::ThrowsMessage<IoError>(HasSubstr("dir.safetensors")));
  });
}

}  // namespace
}  // namespace tp
