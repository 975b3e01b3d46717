/// Training checkpoints of tp::Trainer on tp::Cuda (tp/train/checkpoint.hpp: the model's weights
/// copied to the host to be written, the files' collectives staged through device buffers), under
/// the harnesses of trainer_cuda_test.cu; the CPU runs come from cpu_reference.cpp. The device
/// path itself (the same files, bit for bit the same resumes) is checked on the CPU by
/// staged_device_test.cpp; this checks it on the GPU's memory and communicators.
///
/// Verified here only as far as nvcc compiling and linking it (no GPU on the development
/// machines): every test reports skipped, with the reason, where there is no CUDA device.

#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "common/cuda_support.hpp"
#include "common/harness.hpp"
#include "tp/device/cuda.hpp"
#include "train/cpu_reference.hpp"

#define TP_CUDA_TRAINING_CHECKPOINTS
#include "train/cuda_checkpoint_instances.hpp"

namespace tp {
namespace {

using test::on_ranks;
using ::testing::HasSubstr;
using namespace tiny_training;

/// trainer_cuda_test.cu's float tolerance: a GPU run against a CPU run, or against a GPU run at
/// another mesh, within 1e-5 relative per loss (with AdamW's eps at 1e-6).
constexpr double kFloatTolerance = 1e-5;

/// A directory for all ranks of this world (threads of one process: the pid), emptied.
std::filesystem::path fresh_dir(Communicator& comm, const std::string& what) {
  const auto dir = std::filesystem::temp_directory_path() /
                   fmt::format("tp_cuda_{}_{}_{}_{}", what, comm.backend(), comm.size(), ::getpid());
  if (comm.rank() == 0) std::filesystem::remove_all(dir);
  comm.barrier();
  return dir;
}

/// Training checkpoints on the GPU (the model's weights copied to the host to be written, the
/// files' collectives staged through device buffers): saved at TP 2 x DP 2 with ZeRO-1 (at 4
/// ranks; elsewhere at the world's last mesh), resumed on every mesh of the world with the
/// uninterrupted GPU run's next losses, within kFloatTolerance (the meshes reorder the sums; the
/// StagedCpu tests show the path itself exact); at world 1, the GPU's checkpoint resumed on the CPU
/// and the CPU's on the GPU, within the same; another model's checkpoint refused by name.
TEST(TrainerCuda, CheckpointsResumeAtAnyMeshAndDevice) {
  TP_REQUIRE_CUDA();
  const double eps = kAdamW.eps;
  kAdamW.eps = 1e-6;
  on_ranks([&](std::shared_ptr<Communicator> comm) {
    const int n = comm->size();
    const auto dir = fresh_dir(*comm, "resume");
    const MeshDims saved = n == 4 ? MeshDims{.tp = 2, .dp = 2} : meshes(n).back();
    const auto config = tiny_config(true, n == 3);
    const TrainerOptions zero1{.zero = saved.dp > 1 ? 1 : 0, .bucket_size = 1500};
    const TrainRun full = train<float, Cuda>(Mesh<Cuda>(comm, saved), config, 6, zero1);
    train<float, Cuda>(Mesh<Cuda>(comm, saved), config, 3, zero1, {}, dir);
    const std::vector<double> tail(full.losses.begin() + 3, full.losses.end());
    const auto expect_tail = [&](const TrainRun& got, const std::string& where) {
      ASSERT_EQ(got.losses.size(), tail.size()) << where;
      for (std::size_t s = 0; s < tail.size(); ++s)
        EXPECT_NEAR(got.losses[s], tail[s], kFloatTolerance * std::abs(tail[s])) << where << ", step " << 3 + s;
    };
    for (const MeshDims dims : meshes(n))
      for (const int zero : {0, 1}) {
        if (zero == 1 && dims.dp == 1) continue;
        expect_tail(train<float, Cuda>(Mesh<Cuda>(comm, dims), config, 6, {.zero = zero, .bucket_size = 1500}, dir),
                    fmt::format("saved at TP {} x DP {}, resumed at TP {} x DP {}, zero {}", saved.tp, saved.dp,
                                dims.tp, dims.dp, zero));
      }
    if (n == 1) {  // the GPU's checkpoint on the CPU, and the CPU's on the GPU
      expect_tail(cpu_run(true, false, 6, false, dir), "saved on the GPU, resumed on the CPU");
      const auto cpu_dir = fresh_dir(*comm, "resume_cpu");
      cpu_run(true, false, 3, false, {}, cpu_dir);
      expect_tail(train<float, Cuda>(Mesh<Cuda>(comm, saved), config, 6, zero1, cpu_dir),
                  "saved on the CPU, resumed on the GPU");
      std::filesystem::remove_all(cpu_dir);
    }
    auto wider = config;
    wider.ffn += 12;
    const Mesh<Cuda> mesh(comm, saved);
    models::Transformer<float, Cuda> other(mesh.tp_context(), wider, 3);
    Trainer<float, Cuda> trainer(mesh, other, zero1);
    EXPECT_THAT([&] { load_training_checkpoint(trainer, dir); },
                ::testing::ThrowsMessage<Error>(HasSubstr("but the layer's parameter is")));
    EXPECT_EQ(trainer.steps_done(), 0);
    comm->barrier();
    if (comm->rank() == 0) std::filesystem::remove_all(dir);
  });
  kAdamW.eps = eps;
}

}  // namespace
}  // namespace tp
