/// Hostile safetensors files and indexes (issue 10, item 11): a header of many tensors parses in
/// linear time, a FIFO is refused without blocking, a zero last dimension does not divide by zero,
/// a deeply nested index is refused as it is parsed, and integer tensors do not load into float
/// weights unless the caller asks.

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>

#include "common/harness.hpp"
#include "common/test_files.hpp"
#include "tp/io/safetensors.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;

using test::test_dir;

/// A whole file in memory: 8-byte length, header, data.
std::vector<unsigned char> file_bytes(const std::string& header, const std::string& data) {
  std::vector<unsigned char> bytes(8 + header.size() + data.size());
  const std::uint64_t len = header.size();
  std::memcpy(bytes.data(), &len, 8);
  std::memcpy(bytes.data() + 8, header.data(), header.size());
  std::memcpy(bytes.data() + 8 + header.size(), data.data(), data.size());
  return bytes;
}

void write_file(const fs::path& path, const std::vector<unsigned char>& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc)
      .write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

TEST(SafetensorsHostile, ParsesAQuarterMillionTensorsInLinearTime) {
  TP_LOCAL_ONLY();
  // The parser once rescanned the whole header object at every tensor's closing brace: 40K
  // tensors took 19 s, 250K would take about an hour, far past the test's timeout. Linear, they
  // take under a second (the time is printed, not asserted).
  constexpr int n = 250'000;
  std::string header = "{";
  for (int i = 0; i < n; ++i)
    header +=
        fmt::format(R"({}"layer.{}.w":{{"dtype":"U8","shape":[1],"data_offsets":[{},{}]}})", i ? "," : "", i, i, i + 1);
  header += "}";
  const auto bytes = file_bytes(header, std::string(n, '\x07'));
  const auto t0 = std::chrono::steady_clock::now();
  const SafetensorsHeader parsed = parse_safetensors_header(bytes, bytes.size(), "many.safetensors");
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(parsed.tensors.size(), std::size_t{n});
  EXPECT_EQ(parsed.tensors.at("layer.123456.w").begin, 123456u);
  std::printf("parsed %d tensors (%zu header bytes) in %.3f s\n", n, header.size(), seconds);
  RecordProperty("parse_seconds", fmt::format("{:.3f}", seconds));
}

TEST(SafetensorsHostile, RefusesAFifoWithoutBlocking) {
  TP_LOCAL_ONLY();
  const fs::path dir = test_dir();
  for (const char* name : {"pipe.safetensors", "pipe.index.json"}) {
    SCOPED_TRACE(name);
    const fs::path fifo = dir / name;
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0) << std::strerror(errno);
    auto opening = std::async(std::launch::async, [&] {
      try {
        SafetensorsCheckpoint checkpoint(fifo);
        return std::string("opened");
      } catch (const IoError& e) {
        return std::string(e.what());
      }
    });
    if (opening.wait_for(std::chrono::seconds(10)) == std::future_status::timeout) {
      ADD_FAILURE() << "opening a FIFO blocked for 10 s";
      // Release the reader: a writer that opens and closes gives it end-of-file.
      const int fd = ::open(fifo.c_str(), O_WRONLY);
      if (fd >= 0) ::close(fd);
    }
    EXPECT_THAT(opening.get(), AllOf(HasSubstr(fifo.string()), HasSubstr("a FIFO, not a regular file")));
  }
  // A directory is refused by name too, instead of failing on the first read.
  EXPECT_THAT([&] { SafetensorsFile f(dir); }, ::testing::ThrowsMessage<IoError>(HasSubstr("a directory")));
}

TEST(SafetensorsHostile, ZeroLastDimensionReadsAsAnEmptyMatrix) {
  TP_LOCAL_ONLY();
  const fs::path path = test_dir() / "zero.safetensors";
  write_file(path, file_bytes(R"({"z":{"dtype":"F32","shape":[3,0],"data_offsets":[0,0]},)"
                              R"("y":{"dtype":"F32","shape":[2,0,5],"data_offsets":[0,0]},)"
                              R"("x":{"dtype":"F32","shape":[9007199254740992,0],"data_offsets":[0,0]},)"
                              R"("w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                              std::string(8, '\0')));
  const SafetensorsFile file(path);
  const SafetensorsTensor& z = file.tensor("z");
  EXPECT_EQ(z.rows(), 3);
  EXPECT_EQ(z.cols(), 0);
  EXPECT_EQ(z.numel(), 0);
  EXPECT_EQ(file.tensor("y").rows(), 0);
  EXPECT_EQ(file.tensor("y").cols(), 5);
  EXPECT_EQ(file.tensor("x").rows(), std::int64_t{1} << 53);
  float none = 0;
  file.read_block("z", 0, 0, MatrixView<float>(&none, 3, 0));
  file.read_block("y", 0, 0, MatrixView<float>(&none, 0, 5));
  // An empty tensor whose other dimensions multiply past int64 is refused: rows() would overflow.
  write_file(path, file_bytes(R"({"big":{"dtype":"F32","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}})", ""));
  EXPECT_THAT([&] { SafetensorsFile f(path); }, ::testing::ThrowsMessage<IoError>(AllOf(
                                                    HasSubstr(path.string()), HasSubstr("'big'"), HasSubstr("2^63"))));
  write_file(path,
             file_bytes(R"({"big":{"dtype":"U8","shape":[2097152,2097152,2097152,0],"data_offsets":[0,0]}})", ""));
  EXPECT_THAT([&] { SafetensorsFile f(path); },
              ::testing::ThrowsMessage<IoError>(AllOf(HasSubstr("'big'"), HasSubstr("2^63"))));
}

TEST(SafetensorsHostile, RefusesADeeplyNestedIndexAsItParses) {
  TP_LOCAL_ONLY();
  const fs::path dir = test_dir();
  // A million levels: refused at the fourth, long before the parser has built anything big.
  std::ofstream(dir / "deep.json") << R"({"weight_map":{"w":)" << std::string(1'000'000, '[');
  EXPECT_THAT([&] { SafetensorsCheckpoint c(dir / "deep.json"); },
              ::testing::ThrowsMessage<IoError>(AllOf(HasSubstr("deep.json"), HasSubstr("deeper than 3 levels"))));
  std::ofstream(dir / "deep_metadata.json") << R"({"metadata":{"a":{"b":{"c":1}}},"weight_map":{}})";
  EXPECT_THAT([&] { SafetensorsCheckpoint c(dir / "deep_metadata.json"); },
              ::testing::ThrowsMessage<IoError>(HasSubstr("deeper than 3 levels")));
  // A tensor listed twice in the weight map is refused instead of resolving to the last entry.
  std::ofstream(dir / "twice.json") << R"({"weight_map":{"w":"a.safetensors","w":"b.safetensors"}})";
  EXPECT_THAT([&] { SafetensorsCheckpoint c(dir / "twice.json"); },
              ::testing::ThrowsMessage<IoError>(AllOf(HasSubstr("twice.json"), HasSubstr("'w' appears twice"))));
  // The same parser, from bytes.
  EXPECT_EQ(
      parse_safetensors_index(R"({"metadata":{"total_size":8},"weight_map":{"w":"a.safetensors"}})", "i.json").at("w"),
      "a.safetensors");
}

TEST(SafetensorsHostile, IntegerTensorsLoadIntoFloatWeightsOnlyWhenAsked) {
  TP_LOCAL_ONLY();
  const fs::path path = test_dir() / "ints.safetensors";
  const std::int64_t i64[] = {-3, 7};
  const std::int32_t i32[] = {5, -6};
  const std::uint8_t u8[] = {255, 1};
  const float f32[] = {0.5f, 1.5f};
  std::string data(reinterpret_cast<const char*>(i64), 16);
  data.append(reinterpret_cast<const char*>(i32), 8);
  data.append(reinterpret_cast<const char*>(u8), 2);
  data.append(reinterpret_cast<const char*>(f32), 8);
  write_file(path, file_bytes(R"({"l":{"dtype":"I64","shape":[2],"data_offsets":[0,16]},)"
                              R"("i":{"dtype":"I32","shape":[2],"data_offsets":[16,24]},)"
                              R"("u":{"dtype":"U8","shape":[2],"data_offsets":[24,26]},)"
                              R"("f":{"dtype":"F32","shape":[2],"data_offsets":[26,34]}})",
                              data));
  const SafetensorsFile file(path);
  float out[2] = {0, 0};
  for (const auto& [name, dtype] : {std::pair{"l", "I64"}, {"i", "I32"}, {"u", "U8"}}) {
    SCOPED_TRACE(name);
    EXPECT_THAT([&] { file.read_block(name, 0, 0, MatrixView<float>(out, 1, 2)); },
                ::testing::ThrowsMessage<IoError>(AllOf(HasSubstr(path.string()), HasSubstr(fmt::format("'{}'", name)),
                                                        HasSubstr(dtype), HasSubstr("allow_integer_conversion"))));
  }
  // A float tensor into integers is refused the same way.
  std::int32_t ints[2] = {0, 0};
  EXPECT_THAT([&] { file.read_block("f", 0, 0, MatrixView<std::int32_t>(ints, 1, 2)); },
              ::testing::ThrowsMessage<IoError>(AllOf(HasSubstr("'f'"), HasSubstr("F32"))));
  // Asked for, the conversions happen.
  const SafetensorsReadOptions convert{.allow_integer_conversion = true};
  file.read_block("l", 0, 0, MatrixView<float>(out, 1, 2), convert);
  EXPECT_EQ(out[0], -3.f);
  EXPECT_EQ(out[1], 7.f);
  file.read_block("u", 0, 0, MatrixView<float>(out, 1, 2), convert);
  EXPECT_EQ(out[0], 255.f);
  file.read_block("i", 0, 0, MatrixView<std::int32_t>(ints, 1, 2));  // integers into integers need no option
  EXPECT_EQ(ints[1], -6);
  // Through a layer: a [2] integer tensor under a bias's name.
  run_local(2, [&](std::shared_ptr<Communicator> comm) {
    ColumnParallelLinear<float> fc(Context<>(comm), 1, 2, {.name = "fc"});
    std::vector<Parameter<float>> bias{fc.parameters()[1]};
    bias[0].name = "i";
    EXPECT_THAT([&] { load_safetensors<float>(Cpu(), bias, path); },
                ::testing::ThrowsMessage<IoError>(AllOf(HasSubstr("'i'"), HasSubstr("I32"))));
    load_safetensors<float>(Cpu(), bias, path, convert);
    for (std::int64_t c = 0; c < fc.bias().cols; ++c)
      EXPECT_EQ(fc.bias()(0, c), c + bias[0].cols.begin == 0 ? 5.f : -6.f);
  });
}

}  // namespace
}  // namespace tp
