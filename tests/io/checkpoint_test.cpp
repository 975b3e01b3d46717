/// Checkpoints that cannot lose data or be redirected (issue 10, item 10): a save never follows a
/// symbolic link planted at a temporary name, and a step's files are committed as one directory,
/// so a save killed between two files leaves the previous complete checkpoint the one a resume
/// picks, and the next save clears what the killed one left.

#include "tp/io/checkpoint.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/harness.hpp"
#include "common/test_files.hpp"
#include "tp/io/resume.hpp"
#include "tp/io/safetensors.hpp"
#include "tp/tp.hpp"

namespace tp {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;

using test::test_dir;

std::string read_text(const fs::path& path) {
  std::stringstream s;
  s << std::ifstream(path).rdbuf();
  return s.str();
}

/// Every name in `dir`, sorted.
std::vector<std::string> names_in(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

/// A host "device" with the one call save_safetensors makes: used in a forked child, which must
/// not touch the BLAS thread pool of its parent.
struct HostCopy {
  void to_host(ConstView<float> src, MatrixView<float> dst) const {
    for (std::int64_t r = 0; r < src.rows; ++r)
      for (std::int64_t c = 0; c < src.cols; ++c) dst(r, c) = src(r, c);
  }
};

TEST(Checkpoint, SaveDoesNotFollowASymlinkPlantedAtATemporaryName) {
  TP_LOCAL_ONLY();
  const fs::path dir = test_dir();
  const fs::path victim = dir / "victim.txt";
  std::ofstream(victim) << "precious";
  // The name the writer used to write through: `<file>.tmp`.
  fs::create_symlink(victim, dir / "weights.safetensors.tmp");
  run_local(2, [&](std::shared_ptr<Communicator> comm) {
    ColumnParallelLinear<float> fc(Context<>(comm), 4, 6, {.name = "fc"});
    save_safetensors<float>(*comm, Cpu(), fc.parameters(), dir / "weights.safetensors");
  });
  EXPECT_EQ(read_text(victim), "precious");
  EXPECT_TRUE(fs::is_symlink(dir / "weights.safetensors.tmp"));
  EXPECT_EQ(SafetensorsFile(dir / "weights.safetensors").tensor("fc.weight").rows(), 6);
  EXPECT_EQ(names_in(dir), (std::vector<std::string>{"victim.txt", "weights.safetensors", "weights.safetensors.tmp"}));

  // The primitives: exclusive creation refuses any link at the name (to a file, or dangling), and
  // the other ranks' open for writing refuses a link swapped in after rank 0 created the file.
  fs::create_symlink(victim, dir / "link");
  fs::create_symlink(dir / "nothing", dir / "dangling");
  EXPECT_FALSE(detail::Fd::create_new((dir / "link").string()).has_value());
  EXPECT_FALSE(detail::Fd::create_new((dir / "dangling").string()).has_value());
  EXPECT_FALSE(fs::exists(dir / "nothing"));
  EXPECT_THAT([&] { detail::Fd::open_for_writing((dir / "link").string()); },
              ::testing::ThrowsMessage<IoError>(HasSubstr("link: cannot open")));
  EXPECT_EQ(read_text(victim), "precious");
  // A temporary name is fresh every time and beside its target.
  const auto [fd, suffix] = detail::create_temp_file(dir / "x.safetensors");
  EXPECT_EQ(fd.path(), detail::temp_name(dir / "x.safetensors", suffix).string());
  EXPECT_THAT(fd.path(), HasSubstr((dir / "x.safetensors.tmp-").string()));
  EXPECT_NE(detail::create_temp_file(dir / "x.safetensors").second, suffix);
}

/// A column-parallel layer and its optimizer: what a step's checkpoint holds.
struct Small {
  Context<> ctx;
  ColumnParallelLinear<float> fc;
  AdamW<float> opt;
  explicit Small(std::shared_ptr<Communicator> comm)
      : ctx(std::move(comm)), fc(ctx, 3, 4, {.name = "fc", .seed = 3}), opt(ctx, fc.parameters(), {.lr = 0.1}) {}
  void step() {
    for (auto& p : fc.parameters()) Cpu().fill(p.grad, 0.5f);
    opt.step();
  }
  fs::path save(const fs::path& root, int keep = 0) {
    return save_checkpoint(*ctx.comm, root, opt.step_count(),
                           [&](const fs::path& dir) {
                             save_safetensors<float>(*ctx.comm, *ctx.device, fc.parameters(),
                                                     dir / "model.safetensors");
                             save_resume(opt, dir / "resume.safetensors");
                           },
                           {.keep = keep});
  }
};

TEST(Checkpoint, AKillBetweenTwoFilesLeavesThePreviousCheckpointTheLatest) {
  TP_LOCAL_ONLY();
  const fs::path root = test_dir() / "ck";
  // Step 1, complete.
  run_local(2, [&](std::shared_ptr<Communicator> comm) {
    Small m(comm);
    m.step();
    EXPECT_EQ(m.save(root), root / "step-000001");
  });
  ASSERT_EQ(latest_checkpoint(root), root / "step-000001");

  // Step 2: a process that writes model.safetensors, then dies before resume.safetensors.
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto comm = LocalCommunicator::create(1)[0];
    std::vector<float> w(12, 2.f);
    const Parameter<float> p{.name = "fc.weight",
                             .value = MatrixView<float>(w.data(), 4, 3),
                             .grad = {},
                             .full_rows = 4,
                             .full_cols = 3,
                             .rows = {0, 4},
                             .cols = {0, 3}};
    try {
      save_checkpoint(*comm, root, 2, [&](const fs::path& dir) {
        save_safetensors<float>(*comm, HostCopy(), std::span<const Parameter<float>>(&p, 1), dir / "model.safetensors");
        ::_exit(fs::exists(dir / "model.safetensors") ? 42 : 1);  // killed between the two files
      });
    } catch (...) {
    }
    ::_exit(2);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 42) << "the child did not die between the two files";

  // What is left: step 1 whole, and step 2 only under a temporary name, which nothing picks.
  const auto left = names_in(root);
  ASSERT_EQ(left.size(), 2u);
  EXPECT_EQ(left[0], "step-000001");
  EXPECT_THAT(left[1], HasSubstr("step-000002.tmp-"));
  EXPECT_TRUE(fs::exists(root / left[1] / "model.safetensors"));
  EXPECT_FALSE(fs::exists(root / left[1] / "resume.safetensors"));
  EXPECT_EQ(latest_checkpoint(root), root / "step-000001");
  run_local(3, [&](std::shared_ptr<Communicator> comm) {
    Small m(comm);
    load_resume(m.opt, *latest_checkpoint(root) / "resume.safetensors");
    EXPECT_EQ(m.opt.step_count(), 1);
    // The next save clears the killed one's directory and commits its own.
    m.step();
    EXPECT_EQ(m.save(root), root / "step-000002");
  });
  EXPECT_EQ(names_in(root), (std::vector<std::string>{"step-000001", "step-000002"}));
  EXPECT_EQ(latest_checkpoint(root), root / "step-000002");
  EXPECT_EQ(names_in(root / "step-000002"), (std::vector<std::string>{"model.safetensors", "resume.safetensors"}));
}

TEST(Checkpoint, AFailedWriteLeavesNothingAndTheLatestUnchanged) {
  TP_LOCAL_ONLY();
  const fs::path root = test_dir();
  run_local(2, [&](std::shared_ptr<Communicator> comm) {
    Small m(comm);
    m.step();
    m.save(root);
    // Rank 1 fails after rank 0 wrote a file: every rank throws, naming the step.
    EXPECT_THAT(
        [&] {
          save_checkpoint(*comm, root, 5, [&](const fs::path& dir) {
            if (comm->rank() == 0) std::ofstream(dir / "part.bin") << "x";
            if (comm->rank() == 1) TP_THROW(IoError, "disk full");
          });
        },
        ::testing::ThrowsMessage<IoError>(AllOf(HasSubstr("step-000005"), HasSubstr("step 5"))));
  });
  EXPECT_EQ(names_in(root), (std::vector<std::string>{"step-000001"}));
}

TEST(Checkpoint, LatestIgnoresEverythingButCompleteStepDirectories) {
  TP_LOCAL_ONLY();
  const fs::path root = test_dir();
  EXPECT_EQ(latest_checkpoint(root / "absent"), std::nullopt);
  EXPECT_EQ(latest_checkpoint(root), std::nullopt);
  fs::create_directories(root / "step-000010");
  fs::create_directories(root / "step-000200.tmp-0123456789abcdef");
  fs::create_directories(root / "step-12a");
  fs::create_directories(root / "step-");
  fs::create_directories(root / "other");
  std::ofstream(root / "step-000300") << "a file";
  fs::create_directory_symlink(root / "step-000010", root / "step-000400");
  fs::create_directories(root / "step-9");
  EXPECT_EQ(latest_checkpoint(root), root / "step-000010");
  EXPECT_EQ(checkpoint_step("step-000300"), 300);
  EXPECT_EQ(checkpoint_step("step-1234567"), 1234567);
  EXPECT_EQ(checkpoint_step("step-000300.tmp-00"), std::nullopt);
  EXPECT_EQ(checkpoint_step("step-99999999999999999999"), std::nullopt);
  EXPECT_EQ(checkpoint_name(7), "step-000007");
}

TEST(Checkpoint, ResavingAStepReplacesItAndKeepPrunesTheOldest) {
  TP_LOCAL_ONLY();
  const fs::path root = test_dir();
  run_local(2, [&](std::shared_ptr<Communicator> comm) {
    auto write = [&](const char* text) {
      return [&comm, text](const fs::path& dir) {
        if (comm->rank() == 0) std::ofstream(dir / "f.txt") << text;
      };
    };
    save_checkpoint(*comm, root, 3, write("first"));
    save_checkpoint(*comm, root, 3, write("second"));
    EXPECT_EQ(read_text(root / "step-000003" / "f.txt"), "second");
    save_checkpoint(*comm, root, 4, write("four"), {.keep = 2});
    save_checkpoint(*comm, root, 5, write("five"), {.keep = 2});
  });
  EXPECT_EQ(names_in(root), (std::vector<std::string>{"step-000004", "step-000005"}));
  EXPECT_EQ(read_text(root / "step-000005" / "f.txt"), "five");
  // A replacement killed between its two renames: the old step sits under `.old-`; the next save
  // puts it back.
  fs::rename(root / "step-000005", root / "step-000005.old-00000000000000aa");
  EXPECT_EQ(latest_checkpoint(root), root / "step-000004");
  run_local(1, [&](std::shared_ptr<Communicator> comm) { save_checkpoint(*comm, root, 6, [](const fs::path&) {}); });
  EXPECT_EQ(names_in(root), (std::vector<std::string>{"step-000004", "step-000005", "step-000006"}));
  EXPECT_EQ(read_text(root / "step-000005" / "f.txt"), "five");
}

}  // namespace
}  // namespace tp
