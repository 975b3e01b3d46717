/// Resume files: training saved mid-way at one world size and resumed at another continues as if
/// uninterrupted (parameters, AdamW moments and step count all come back).

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "common/harness.hpp"
#include "common/test_files.hpp"
#include "common/reference.hpp"
#include "tp/io/resume.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

constexpr std::int64_t kTokens = 4, kIn = 6, kHidden = 10, kOut = 3;

/// A column -> row pair with its optimizer, trained on fixed random batches.
template <class T>
struct ModelOf {
  Context<> ctx;
  ColumnParallelLinear<T> fc1;
  RowParallelLinear<T> fc2;
  AdamW<T> opt;
  explicit ModelOf(std::shared_ptr<Communicator> comm)
      : ctx(std::move(comm)),
        fc1(ctx, kIn, kHidden, {.name = "fc1", .seed = 5}),
        fc2(ctx, kHidden, kOut, {.name = "fc2", .seed = 5}),
        opt(ctx, params(), {.lr = 3e-2, .weight_decay = 0.1}) {}
  std::vector<Parameter<T>> params() {
    auto ps = fc1.parameters();
    for (auto& p : fc2.parameters()) ps.push_back(p);
    return ps;
  }
  void train_step(int step) {
    const auto x = ref::to_tensor<T>(ref::random_matrix<T>(kTokens, kIn, 1000 + step));
    const auto& y = fc2.forward(fc1.forward(x.view()).view());
    Tensor<T, Cpu> dy(kTokens, kOut);
    Cpu().copy(y.view(), dy.view());  // loss 0.5 ||y||^2
    fc1.backward(fc2.backward(dy.view()).view());
    opt.step();
    opt.zero_grad();
  }
  /// The full parameters, gathered through a save. Collective: every rank saves and reads back,
  /// and each rank gets its own copy; callers keep rank 0's (one writer, no race between rank
  /// threads).
  std::vector<ref::Matrix> gathered(const fs::path& path) {
    save_safetensors<T>(*ctx.comm, *ctx.device, params(), path);
    std::vector<ref::Matrix> out;
    const SafetensorsFile file(path);
    for (const auto& p : params()) {
      Tensor<T, Cpu> m(p.full_rows, p.full_cols);
      file.read_block(p.name, 0, 0, m.view());
      out.push_back(ref::from_view<T>(m.view()));
    }
    return out;
  }
};

/// float for the file tests; double where trained weights are compared across world sizes: after
/// AdamW steps, float rounding that differs with the sharding (each rank sums its own shard's
/// products) is amplified past float's tolerance on gradients near zero, which would hide
/// nothing about resuming but make the comparison depend on the kernels' summation order.
using Model = ModelOf<float>;

using test::test_dir;

TEST(Resume, TrainingSavedAtOneWorldSizeResumesAtAnother) {
  const fs::path dir = test_dir();
  // Uninterrupted: 6 steps at world size 1.
  std::vector<ref::Matrix> want;
  run_local(1, [&](std::shared_ptr<Communicator> comm) {
    ModelOf<double> m(comm);
    for (int s = 0; s < 6; ++s) m.train_step(s);
    auto full = m.gathered(dir / "want.safetensors");
    if (comm->rank() == 0) want = std::move(full);
  });
  for (int save_world : {4, 3}) {
    const fs::path resume = dir / fmt::format("resume_{}.safetensors", save_world);
    run_local(save_world, [&](std::shared_ptr<Communicator> comm) {
      ModelOf<double> m(comm);
      for (int s = 0; s < 3; ++s) m.train_step(s);
      save_resume(m.opt, resume, {{"data.position", "3"}});
    });
    for (int load_world : {1, 2, 4}) {
      SCOPED_TRACE(fmt::format("saved at {} resumed at {}", save_world, load_world));
      std::vector<ref::Matrix> got;
      run_local(load_world, [&](std::shared_ptr<Communicator> comm) {
        ModelOf<double> m(comm);  // fresh moments and the initial weights
        const auto meta = load_resume(m.opt, resume);
        EXPECT_EQ(m.opt.step_count(), 3);
        EXPECT_EQ(meta.at("data.position"), "3");
        for (int s = 3; s < 6; ++s) m.train_step(s);
        auto full = m.gathered(dir / fmt::format("got_{}_{}.safetensors", save_world, load_world));
        if (comm->rank() == 0) got = std::move(full);
      });
      ASSERT_EQ(got.size(), want.size());
      for (std::size_t i = 0; i < want.size(); ++i) TP_EXPECT_CLOSE(double, got[i], want[i]);
    }
  }
}

TEST(Resume, ResumingWithoutTheMomentsWouldDiverge) {
  // The test above must be able to fail: restoring only the weights (fresh moments, step 0)
  // gives a different trajectory than an uninterrupted run.
  const fs::path dir = test_dir();
  std::vector<ref::Matrix> want, got;
  run_local(2, [&](std::shared_ptr<Communicator> comm) {
    Model m(comm);
    for (int s = 0; s < 4; ++s) m.train_step(s);
    auto full = m.gathered(dir / "want.safetensors");
    if (comm->rank() == 0) want = std::move(full);
  });
  run_local(2, [&](std::shared_ptr<Communicator> comm) {
    Model m(comm);
    for (int s = 0; s < 2; ++s) m.train_step(s);
    save_safetensors<float>(*m.ctx.comm, *m.ctx.device, m.params(), dir / "weights.safetensors");
  });
  run_local(2, [&](std::shared_ptr<Communicator> comm) {
    Model m(comm);
    load_safetensors<float>(*m.ctx.device, m.params(), dir / "weights.safetensors");
    for (int s = 2; s < 4; ++s) m.train_step(s);
    auto full = m.gathered(dir / "got.safetensors");
    if (comm->rank() == 0) got = std::move(full);
  });
  EXPECT_GT(ref::rel_error(got[0], want[0]), 1e-3);
}

TEST(Resume, RefusesAFileWithoutAStepCount) {
  const fs::path dir = test_dir();
  run_local(1, [&](std::shared_ptr<Communicator> comm) {
    Model m(comm);
    save_safetensors<float>(*m.ctx.comm, *m.ctx.device, m.params(), dir / "weights.safetensors");
    EXPECT_THAT([&] { load_resume(m.opt, dir / "weights.safetensors"); },
                ::testing::ThrowsMessage<IoError>(AllOf(HasSubstr("weights.safetensors"), HasSubstr("adamw.step"))));
  });
}

TEST(Resume, RefusesABitFlipAndNonFiniteState) {
  TP_LOCAL_ONLY();
  const fs::path dir = test_dir();
  // Saved at world 3 (each rank sums its blocks' checksum shares), verified and loaded at 1.
  run_local(3, [&](std::shared_ptr<Communicator> comm) {
    Model m(comm);
    for (int s = 0; s < 2; ++s) m.train_step(s);
    save_resume(m.opt, dir / "good.safetensors");
  });
  run_local(1, [&](std::shared_ptr<Communicator> comm) {
    Model m(comm);
    EXPECT_NO_THROW(load_resume(m.opt, dir / "good.safetensors"));
  });
  // One bit of one element of a moment flipped on disk.
  fs::copy_file(dir / "good.safetensors", dir / "flipped.safetensors");
  {
    const SafetensorsFile file(dir / "good.safetensors");
    const auto& t = file.header().tensors.at("adamw.exp_avg.fc2.weight");
    std::fstream io(dir / "flipped.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    const auto at = static_cast<std::streamoff>(file.header().data_start + t.begin + 4 * 5 + 1);
    char byte = 0;
    io.seekg(at);
    io.read(&byte, 1);
    byte = static_cast<char>(byte ^ 0x10);
    io.seekp(at);
    io.write(&byte, 1);
  }
  // A moment that went NaN before the save.
  run_local(2, [&](std::shared_ptr<Communicator> comm) {
    Model m(comm);
    m.train_step(0);
    const auto state = m.opt.state();
    for (const auto& p : state)
      if (p.name == "adamw.exp_avg_sq.fc1.weight" && comm->rank() == 0) p.value(0, 1) = std::nanf("");
    save_resume(m.opt, dir / "nan.safetensors");
  });
  run_local(2, [&](std::shared_ptr<Communicator> comm) {
    Model m(comm);
    // Rank 0 reads the file and names the tensor; every rank throws its message.
    EXPECT_THAT([&] { load_resume(m.opt, dir / "flipped.safetensors"); },
                ::testing::ThrowsMessage<IoError>(AllOf(HasSubstr("flipped.safetensors"),
                                                        HasSubstr("'adamw.exp_avg.fc2.weight' has checksum"))));
    EXPECT_THAT([&] { load_resume(m.opt, dir / "nan.safetensors"); },
                ::testing::ThrowsMessage<IoError>(AllOf(HasSubstr("nan.safetensors"),
                                                        HasSubstr("'adamw.exp_avg_sq.fc1.weight' holds a non-finite"))));
  });
}

}  // namespace
}  // namespace tp
